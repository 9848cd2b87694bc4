"""The sshpiperd unit and the receiver sshd_config in examples/ are what `sshpiper config` prints
for a host with default paths, so they cannot drift from the code."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def sshpiper_config(tmp_path, *flags):
    env = {k: v for k, v in os.environ.items() if not k.startswith("COCALC_CTL_")}
    # the examples show the installed path (set explicitly: by default an absent one is refused)
    env["COCALC_CTL_SSHPIPER_COCALC_CTL"] = "/usr/local/bin/cocalc-ctl"
    res = subprocess.run([sys.executable, "-m", "cocalc_ctl", "sshpiper", "config", *flags], capture_output=True,
                         text=True, env=env, cwd=REPO, check=True)
    return res.stdout


def test_receiver_sshd_config_example_matches_the_generator(tmp_path):
    if Path("/etc/cocalc-ctl/config.yaml").exists():
        import pytest

        pytest.skip("a real config on this machine changes the defaults")
    assert sshpiper_config(tmp_path, "--sshd") == (REPO / "examples/sshd/receiver_sshd_config").read_text()


def test_sshpiperd_unit_example_is_the_generated_unit_and_carries_no_token(tmp_path):
    if Path("/etc/cocalc-ctl/config.yaml").exists():
        import pytest

        pytest.skip("a real config on this machine changes the defaults")
    unit = (REPO / "examples/sshpiperd/cocalc-sshpiperd.service").read_text()
    assert sshpiper_config(tmp_path, "--sshpiperd") == unit
    lines = unit.splitlines()
    assert "EnvironmentFile=/var/lib/cocalc-ctl/secrets/sshpiper/sshpiperd.env" in lines
    execstart = next(line for line in lines if line.startswith("ExecStart="))
    # the plugin gets no --url (it reads REST_AUTH_URL), and nothing runs through a shell
    assert "--url" not in execstart and "$(" not in execstart and "/bin/sh" not in execstart
    assert execstart.split()[-1] == "/usr/local/bin/sshpiperd-rest"


def test_sshpiper_config_never_writes_a_missing_program(tmp_path):
    """Defaults (receiver_auth: command), /usr/local/bin/cocalc-ctl absent: the running program is written
    into the AuthorizedKeysCommand, or a hint if unknown."""
    if Path("/usr/local/bin/cocalc-ctl").exists() or Path("/etc/cocalc-ctl/config.yaml").exists():
        pytest.skip("an installed cocalc-ctl or a real config on this machine changes the defaults")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COCALC_CTL_")}
    env["COCALC_CTL_SSHPIPER_RECEIVER_AUTH"] = "command"  # the mode whose sshd_config names the program
    res = subprocess.run([sys.executable, "-m", "cocalc_ctl", "sshpiper", "config", "--sshd"], capture_output=True,
                         text=True, env=env, cwd=tmp_path)
    beside = Path(sys.executable).with_name("cocalc-ctl")
    if beside.exists():  # python -m cocalc_ctl: the console script beside that python
        assert f"AuthorizedKeysCommand {beside} sshpiper" in res.stdout, res.stderr
    else:
        assert res.returncode == 5 and "sshpiper.cocalc_ctl" in res.stderr and res.stdout == ""
    prog = str(REPO / "bin" / "cocalc-ctl")
    res = subprocess.run([prog, "sshpiper", "config", "--sshd"], capture_output=True, text=True, env=env,
                         cwd=tmp_path, check=True)
    assert f"AuthorizedKeysCommand {prog} sshpiper authorized-keys %u" in res.stdout
    assert "/usr/local/bin/cocalc-ctl" not in res.stdout
