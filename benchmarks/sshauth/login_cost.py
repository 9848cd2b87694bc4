#!/usr/bin/env python3
"""What a login costs the move receiver: static per-login key files vs the AuthorizedKeysCommand.

Two real OpenSSH receivers for the same host and the same trusted peers, both configured by
`sshpiper config --sshd`: one with `sshpiper.receiver_auth: file` (the default: `AuthorizedKeysFile
<dir>/%u`, written by `sshpiper receiver-keys`), one with `command` (sshd starts `cocalc-ctl sshpiper
authorized-keys %u` per login). A peer logs in as `btrfs-<peer>` again and again; the forced command is
a stub that exits at once, so the difference is the key lookup. Rounds alternate between the two
(interleaved, order flipped every round); prints the median login time of each and the ratio.

The machine is shared: figures are "under load" unless you know otherwise; compare the ratio.
Usage (root): .venv/bin/python benchmarks/sshauth/login_cost.py [--logins 20] [--rounds 5] [--peers 50]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from cocalc_ctl.tools import ssh as ssh_tools  # noqa: E402
from tests.support.keys import KeyHost, Sshd, free_port, passwd_users, root_owned_dir, tmpdir, write_script  # noqa: E402

WRAPPER = """#!/bin/sh
# the real auth hook for `sshpiper …`, a stub that exits at once for the forced `move recv`
for a in "$@"; do
  if [ "$a" = "sshpiper" ]; then
    PYTHONPATH={repo} exec {python} -m cocalc_ctl "$@"
  fi
done
exit 0
"""


class _Cfg:
    def __init__(self, h: KeyHost):
        self.data_dir, self.secrets_dir = h.data, h.secrets


def one_login(argv: list[str]) -> float:
    t = time.perf_counter()
    res = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    dt = time.perf_counter() - t
    if res.returncode != 0:
        raise SystemExit(f"login failed: {res.stderr.decode()[-300:]}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--logins", type=int, default=20, help="logins per side per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--peers", type=int, default=50, help="trusted peers in host sqlite (the lookup's table)")
    args = ap.parse_args()
    base = tmpdir()
    with contextlib.ExitStack() as stack:
        rundir = stack.enter_context(root_owned_dir())
        wrapper = write_script(rundir / "cocalc-ctl", WRAPPER.format(repo=REPO, python=sys.executable))
        a = KeyHost(base / "a")
        a.cli("keys", "ensure")
        hosts = {}
        for mode in ("file", "command"):
            port = free_port("127.0.0.2")
            r = KeyHost(base / f"r-{mode}", extra={"sshpiper.cocalc_ctl": str(wrapper),
                                                   "sshpiper.receiver_listen": f"127.0.0.2:{port}",
                                                   "sshpiper.receiver_auth": mode,
                                                   "sshpiper.receiver_keys_dir": str(rundir / f"keys-{mode}")})
            r.cli("keys", "ensure")
            r.add_peer(a.host_id, a.pub("host-to-host/id_ed25519"))
            for _ in range(args.peers - 1):
                r.add_peer(str(uuid.uuid4()), a.pub("sshpiperd/host_key"))  # other peers: any valid key
            r.cli("sshpiper", "receiver-keys")
            hosts[mode] = (r, port)
        stack.enter_context(passwd_users([f"btrfs-{a.host_id}"]))
        argvs = {}
        for mode, (r, port) in hosts.items():
            sshd = Sshd(r.cli("sshpiper", "config", "--sshd").stdout, base, f"sshd-{mode}")
            stack.callback(sshd.stop)
            sshd.start("127.0.0.2", port)
            a.add_peer(r.host_id, r.pub("host-to-host/id_ed25519"), ssh_server=f"127.0.0.2:{port}",
                       sshpiperd=r.pub("sshpiperd/host_key"))
        a.cli("keys", "known-hosts")
        for mode, (r, port) in hosts.items():
            argvs[mode] = ssh_tools.ssh_command(ssh_tools.paths_for(_Cfg(a)), f"btrfs-{a.host_id}", "127.0.0.2",
                                                port, ["list"])
            one_login(argvs[mode])  # warm up (and prove the login works)
        times: dict[str, list[float]] = {"file": [], "command": []}
        per_round = []
        for rnd in range(args.rounds):
            order = ["file", "command"] if rnd % 2 == 0 else ["command", "file"]
            med = {}
            for mode in order:
                ts = [one_login(argvs[mode]) for _ in range(args.logins)]
                times[mode] += ts
                med[mode] = statistics.median(ts)
            per_round.append(med["command"] / med["file"])
            print(f"round {rnd + 1}: file {med['file'] * 1000:.1f} ms, command {med['command'] * 1000:.1f} ms, "
                  f"ratio {per_round[-1]:.2f}", flush=True)
        f, c = statistics.median(times["file"]), statistics.median(times["command"])
        load = os.getloadavg()[0]
        print(f"\nmedian login (ssh client start to exit), {args.rounds} rounds x {args.logins} logins, "
              f"{args.peers} trusted peers, load average {load:.1f} (under load):")
        print(f"  AuthorizedKeysFile (static, default): {f * 1000:.1f} ms")
        print(f"  AuthorizedKeysCommand:                {c * 1000:.1f} ms")
        print(f"  ratio command/file: {c / f:.2f} (median of per-round ratios {statistics.median(per_round):.2f}); "
              f"a login saves {(c - f) * 1000:.1f} ms")
    subprocess.run(["rm", "-rf", str(base)], check=False)


if __name__ == "__main__":
    main()
