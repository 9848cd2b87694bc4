"""No secret in any argv, and `sshpiper serve` answers only sshpiperd's user.

The sshpiperd unit is run the way systemd would run it: its EnvironmentFile= is parsed into the
environment and its ExecStart= word list is executed, with stand-ins for sshpiperd (not installable
here) and its REST plugin. The stand-in plugin does what the real one does with REST_AUTH_URL: asks the
real `sshpiper serve` about a login. Meanwhile every /proc/*/cmdline is read: the token must be in none.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cocalc_ctl import config as config_mod
from cocalc_ctl.actions.ops import doctor
from tests.support.keys import KeyHost, PluginClient, free_port, rest_server, write_script

pytestmark = pytest.mark.integration

P = "0b1c8a36-7f0e-4d2a-9a57-3c2b1e0f9d11"
USER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@laptop"

STAND_IN_SSHPIPERD = """#!{python}
# stand-in for sshpiperd: start the plugin named last on the command line with our environment, wait
import subprocess, sys
sys.exit(subprocess.call([sys.argv[-1]]))
"""

STAND_IN_PLUGIN = """#!{python}
# stand-in for sshpiperd-rest: what the real plugin does with REST_AUTH_URL (no --url given)
import os, sys, time, urllib.request
if "--url" in sys.argv:
    sys.exit("stand-in plugin: --url must not be used")
url = os.environ["REST_AUTH_URL"]
with urllib.request.urlopen(url + "/project-{pid}", timeout=20) as r:
    body = r.read()
with open({out!r} + ".tmp", "wb") as f:
    f.write(body)
os.rename({out!r} + ".tmp", {out!r})
time.sleep(120)
"""


def parse_unit(text: str) -> tuple[Path, list[str]]:
    env_file, execstart = None, None
    for line in text.splitlines():
        if line.startswith("EnvironmentFile="):
            env_file = Path(line.split("=", 1)[1])
        elif line.startswith("ExecStart="):
            execstart = line.split("=", 1)[1]
    assert env_file and execstart
    # systemd's quoting is shell-like; %% and $$ are its escapes of % and $
    argv = [w.replace("%%", "%").replace("$$", "$") for w in shlex.split(execstart)]
    return env_file, argv


def parse_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            k, _, v = line.partition("=")
            env[k.strip()] = v.strip()
    return env


def argv_holding(secret: str) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            data = Path(f"/proc/{name}/cmdline").read_bytes()
        except OSError:
            continue
        if secret.encode() in data:
            pids.append(int(name))
    return pids


def kill(p: subprocess.Popen) -> None:
    if p.poll() is None:
        os.killpg(p.pid, 9)
    p.wait(timeout=10)


@pytest.fixture
def kh(tmp_path):
    port = free_port()
    h = KeyHost(tmp_path / "r", extra={"sshpiper.rest_listen": f"127.0.0.1:{port}"})
    h.cli("keys", "ensure")
    h.set_project(P, keys=USER_KEY)
    h.rest_port = port
    return h


def test_generated_unit_keeps_the_token_out_of_every_argv_and_doctor_notices_one(kh, tmp_path):
    token = (kh.secrets / "sshpiper" / "token").read_text().strip()
    res = kh.cli("sshpiper", "config", "--sshpiperd", "--write-env")
    assert token not in res.stdout and token not in res.stderr
    env_file, argv = parse_unit(res.stdout)
    assert env_file == kh.secrets / "sshpiper" / "sshpiperd.env"
    st = env_file.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
    assert stat.S_IMODE(env_file.parent.stat().st_mode) == 0o700
    env = parse_env_file(env_file)
    assert env == {"REST_AUTH_URL": f"http://127.0.0.1:{kh.rest_port}/{token}"}
    assert not any(token in w for w in argv)
    # run ExecStart with stand-ins for the two binaries, in the environment systemd would give it
    bindir = tmp_path / "bin"
    bindir.mkdir()
    out = tmp_path / "plugin-answer.json"
    write_script(bindir / "sshpiperd", STAND_IN_SSHPIPERD.format(python=sys.executable))
    write_script(bindir / "sshpiperd-rest", STAND_IN_PLUGIN.format(python=sys.executable, pid=P, out=str(out)))
    assert argv[0] == "/usr/local/bin/sshpiperd" and argv[-1] == "/usr/local/bin/sshpiperd-rest"
    argv = [str(bindir / "sshpiperd"), *argv[1:-1], str(bindir / "sshpiperd-rest")]
    cfg = config_mod.load(str(kh.config_path))
    with rest_server(kh, kh.rest_port):
        p = subprocess.Popen(argv, env={"PATH": os.environ["PATH"], **env}, start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while not out.exists():
                assert p.poll() is None, "the stand-in sshpiperd ended early"
                assert time.monotonic() < deadline, "the plugin never asked sshpiper serve"
                time.sleep(0.1)
            answer = json.loads(out.read_text())
            # the URL from the environment works: the real endpoint allowed the project login
            assert answer["host"] == f"127.0.0.1:{kh.held_port}" and answer["authorizedKeys"] == USER_KEY + "\n"
            assert argv_holding(token) == []  # while both stand-ins run with the token in their environment
            assert doctor.check_argv_secrets(cfg).status == "ok"
        finally:
            kill(p)
    # a process that does carry the token in its argv is found (and the report never repeats the token)
    leak = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "--url",
                             f"http://127.0.0.1:{kh.rest_port}/{token}"], start_new_session=True)
    try:
        time.sleep(0.3)
        check = doctor.check_argv_secrets(cfg)
        assert check.status == "fail", check
        assert leak.pid in [p["pid"] for p in check.data["processes"]]
        assert "REST token" in check.detail and token not in json.dumps(check.__dict__)
        assert "--write-env" in check.hint
    finally:
        kill(leak)
    assert doctor.check_argv_secrets(cfg).status == "ok"


CLIENT = r"""
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=20)
s.sendall(("GET /%s/project-%s HTTP/1.1\r\nHost: x\r\n\r\n" % (sys.argv[2], sys.argv[3])).encode())
data = b""
while True:
    try:
        chunk = s.recv(65536)
    except ConnectionResetError:
        break
    if not chunk:
        break
    data += chunk
    if b"\r\n\r\n" in data:
        head, _, body = data.partition(b"\r\n\r\n")
        n = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
        if len(body) >= n:
            break
print("ANSWER " + data.partition(b"\r\n\r\n")[2].decode() if data else "CLOSED")
"""


def ask_as(user: str | None, port: int, token: str) -> str:
    argv = ["/usr/bin/python3", "-c", CLIENT, str(port), token, P]
    if user:
        argv = ["runuser", "-u", user, "--", *argv]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd="/")
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_serve_answers_only_the_configured_user(kh):
    token = (kh.secrets / "sshpiper" / "token").read_text().strip()
    with rest_server(kh, kh.rest_port) as (port, proc):
        # default sshpiper.rest_client_user = root: root is served, nobody (with the right token) is not
        assert json.loads(ask_as(None, port, token)[len("ANSWER "):])["host"] == f"127.0.0.1:{kh.held_port}"
        assert ask_as("nobody", port, token) == "CLOSED"
        c = PluginClient("127.0.0.1", port)  # and root's keep-alive connection keeps working
        assert c.lookup(token, f"project-{P}")[1]["host"] == f"127.0.0.1:{kh.held_port}"
        c.close()
    log = proc.stderr.read()
    assert "closed a connection from uid 65534" in log and "1 other-user connections" in log
    assert token not in log
    # configured for another user: that user is served, root is not
    kh.extra["sshpiper.rest_client_user"] = "nobody"
    kh.write_config()
    with rest_server(kh, kh.rest_port) as (port, _):
        assert json.loads(ask_as("nobody", port, token)[len("ANSWER "):])["host"] == f"127.0.0.1:{kh.held_port}"
        assert ask_as(None, port, token) == "CLOSED"
