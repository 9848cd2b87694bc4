#!/usr/bin/env python3
"""SSH into a project against plain OpenSSH to the host, in the same run, interleaved.

The project leg is what sshpiperd does after the auth hook: `ssh` with the upstream key to the
project's published port, where the project's own sshd (the bundled dropbear, in its container, in its
user namespace) answers. The baseline is the host's OpenSSH `sshd` (a private instance on 127.0.0.1)
logging in a throwaway user whose shell is /bin/sh (root's shell may source a heavy ~/.bashrc for
every ssh command, which would flatter the project), writing into the same btrfs pool. Both use the
client's default cipher negotiation.

- latency: login to the first byte of `echo x` output (median of --logins, default 20), alternating
  which target goes first each round;
- throughput: `rsync -a` of --mib MiB (default 500, 5 files of random data) into a fresh directory,
  rounds alternating (--rounds, default 3); MiB/s of the median time.

Targets (the issue's): project throughput >= 0.8x and latency < 1.5x the baseline's.
Run as root from the repository root:  .venv/bin/python benchmarks/project_ssh/bench_project_ssh.py
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
import benchenv  # noqa: E402

CLI = [sys.executable, "-m", "cocalc_ctl"]
BUSYBOX = shutil.which("busybox") or "/bin/busybox"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def busybox_tree(dest: Path) -> Path:
    for d in ("bin", "etc", "tmp", "home/user"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    os.chmod(dest / "tmp", 0o1777)
    shutil.copy2(BUSYBOX, dest / "bin" / "busybox")
    for applet in ("sh", "sleep", "echo", "rm", "true"):
        os.link(dest / "bin" / "busybox", dest / "bin" / applet)
    return dest


def first_byte(argv: list[str]) -> float:
    t = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    b = p.stdout.read(1)
    dt = time.perf_counter() - t
    p.communicate()
    if p.returncode or b != b"x":
        raise SystemExit(f"{' '.join(argv)}: exit {p.returncode}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--logins", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mib", type=int, default=500)
    ap.add_argument("--cipher", default=None, help="ssh -c for both targets (default: the client's negotiation)")
    args = ap.parse_args()
    for line in benchenv.environment():
        print(line)
    base = Path(tempfile.mkdtemp(prefix="cbs-", dir="/var/tmp"))
    os.chmod(base, 0o711)
    podman = {"root": base / "podman" / "root", "runroot": base / "podman" / "run", "tmpdir": base / "podman" / "tmp"}
    (base / "config.yaml").write_text(
        f"btrfs_root: {base / 'pool'}\ndata_dir: {base / 'data'}\n"
        + "".join(f"podman.{k}: {v}\n" for k, v in podman.items())
        + "podman.runtime: runc\npodman.ulimits: nofile=1024:1024,nproc=1024:1024\npodman.memory: 4G\n"
        + f"podman.command: /bin/sleep 100000\nrootfs.local_roots: {base}\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "COCALC_CTL_CONFIG": str(base / "config.yaml")}

    def cli(*argv: str) -> str:
        res = subprocess.run([*CLI, "--json", *argv], env=env, capture_output=True, text=True, cwd=str(REPO))
        if res.returncode:
            raise SystemExit(f"cocalc-ctl {' '.join(argv)}: {res.stderr.strip()}")
        return res.stdout

    import json

    pid = str(uuid.uuid4())
    sshd = None
    user = f"cbs{uuid.uuid4().hex[:8]}"
    made_user = False
    try:
        cli("host", "init", "--loopback", f"{max(2, (args.mib * 3) // 1024 + 1)}G")
        cli("keys", "ensure")
        cli("project", "create", pid)
        started = json.loads(cli("project", "start", pid, "--image", f"dir:{busybox_tree(base / 'tree')}"))
        assert started["sshd"] == "running", started
        st = json.loads(cli("project", "status", pid))
        kh = base / "known_hosts"
        key = base / "data" / "secrets" / "sshpiper" / "upstream_key"

        # the baseline: OpenSSH sshd on 127.0.0.1 as root with its own key, writing into the same pool
        sd = base / "sshd"
        sd.mkdir(mode=0o700)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(sd / "host_key")], check=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(sd / "client_key")], check=True)
        shutil.copy(sd / "client_key.pub", sd / "authorized_keys")
        os.chmod(sd, 0o755)
        subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", str(sd), "--shell", "/bin/sh", user],
                       check=True)
        made_user = True
        subprocess.run(["usermod", "-p", "*", user], check=True)
        os.chmod(base / "pool", 0o711)  # the bench's own pool: let the baseline user reach its directory
        (base / "pool" / "baseline").mkdir()
        shutil.chown(base / "pool" / "baseline", user, user)
        bport = free_port()
        (sd / "sshd_config").write_text(
            f"ListenAddress 127.0.0.1:{bport}\nHostKey {sd / 'host_key'}\nPidFile {sd / 'pid'}\n"
            f"AuthorizedKeysFile {sd / 'authorized_keys'}\nPermitRootLogin no\nAllowUsers {user}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            "Subsystem sftp internal-sftp\n")
        os.makedirs("/run/sshd", exist_ok=True)
        sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(sd / "sshd_config")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        hostpub = " ".join((sd / "host_key.pub").read_text().split()[:2])
        kh.write_text(f"[127.0.0.1]:{st['ssh_port']} {st['ssh_host_key']}\n[127.0.0.1]:{bport} {hostpub}\n")
        common = ["-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", "BatchMode=yes",
                  "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={kh}"]
        if args.cipher:
            common += ["-c", args.cipher]
        targets = {
            "project": (["ssh", "-i", str(key), *common, "-p", str(st["ssh_port"])], "user@127.0.0.1", "bench"),
            "openssh": (["ssh", "-i", str(sd / "client_key"), *common, "-p", str(bport)], f"{user}@127.0.0.1",
                        str(base / "pool" / "baseline" / "data")),
        }
        deadline = time.monotonic() + 20
        while subprocess.run([*targets["openssh"][0], targets["openssh"][1], "true"], capture_output=True).returncode:
            if time.monotonic() > deadline:
                raise SystemExit("the baseline sshd did not come up")
            time.sleep(0.2)

        lat: dict[str, list[float]] = {n: [] for n in targets}
        for i in range(args.logins):
            for name in (("project", "openssh") if i % 2 == 0 else ("openssh", "project")):
                argv, login, _ = targets[name]
                lat[name].append(first_byte([*argv, login, "echo x"]))

        src = base / "src"
        src.mkdir()
        per = args.mib // 5
        for i in range(5):
            with open(src / f"data{i}.bin", "wb") as fh:
                for _ in range(per):
                    fh.write(os.urandom(1 << 20))
        total = per * 5
        rs: dict[str, list[float]] = {n: [] for n in targets}
        for i in range(args.rounds):
            for name in (("project", "openssh") if i % 2 == 0 else ("openssh", "project")):
                argv, login, dest = targets[name]
                subprocess.run([*argv, login, f"rm -rf {dest}"], check=True, capture_output=True)
                t = time.perf_counter()
                subprocess.run(["rsync", "-a", "-e", " ".join(argv), f"{src}/", f"{login}:{dest}/"], check=True,
                               capture_output=True)
                rs[name].append(time.perf_counter() - t)
        load = os.getloadavg()
        default = ("the client's default negotiation (its first choice, chacha20-poly1305@openssh.com, is offered "
                   "by both servers)")
        print(f"cipher: {args.cipher or default}")
        print(f"load average after the run {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
        print(f"| measure | OpenSSH to the host | project sshd | project / OpenSSH | target |")
        print("|---|---:|---:|---:|---|")
        lo, lp = statistics.median(lat["openssh"]), statistics.median(lat["project"])
        print(f"| login to first byte, median of {args.logins} | {lo * 1000:.0f} ms | {lp * 1000:.0f} ms | "
              f"{lp / lo:.2f}x | < 1.5x: {'met' if lp / lo < 1.5 else 'NOT met'} |")
        to, tp = total / statistics.median(rs["openssh"]), total / statistics.median(rs["project"])
        print(f"| rsync -a {total} MiB, median of {args.rounds} | {to:.0f} MiB/s | {tp:.0f} MiB/s | {tp / to:.2f}x | "
              f">= 0.8x: {'met' if tp / to >= 0.8 else 'NOT met'} |")
        for name in targets:
            print(f"{name} logins (ms): " + " ".join(f"{v * 1000:.0f}" for v in lat[name]))
            print(f"{name} rsync (s): " + " ".join(f"{v:.2f}" for v in rs[name]))
    finally:
        if sshd is not None:
            sshd.terminate()
            sshd.wait(10)
        if made_user:
            subprocess.run(["userdel", user], capture_output=True)
        subprocess.run([*CLI, "project", "stop", pid], env=env, capture_output=True, cwd=str(REPO))
        subprocess.run(["podman", *sum((["--" + k, str(v)] for k, v in podman.items()), []), "rm", "--all", "--force",
                        "--time", "0"], capture_output=True)
        with open("/proc/self/mountinfo") as fh:
            points = [ln.split()[4] for ln in fh if ln.split()[4].startswith(str(base) + "/")]
        for mp in sorted(points, key=len, reverse=True):
            subprocess.run(["umount", "-l", mp], capture_output=True)
        out = subprocess.run(["losetup", "-a", "-O", "NAME,BACK-FILE", "-n", "--raw"], capture_output=True,
                             text=True).stdout
        for line in out.splitlines():
            parts = line.split(None, 1)
            if len(parts) == 2 and parts[1].startswith(str(base)):
                subprocess.run(["losetup", "-d", parts[0]], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
