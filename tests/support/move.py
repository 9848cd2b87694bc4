"""Move test rig: a project host pair with real OpenSSH sshd receivers on 127.0.0.2 / 127.0.0.3.

Each receiving host gets its own sshd (own host key, config, pid file, random port) whose only key
is the sending host's host-to-host key, restricted to `cocalc-ctl move recv --from <src-uuid>`
(run as root with PermitRootLogin forced-commands-only). The forced command's config reaches it
through `environment=` key options (PermitUserEnvironment). Everything is stopped and removed by
`close()`, which the fixtures call even when a test fails.

The rig also plays the hub's signing role: `RigHub` holds a hub key (pinned on both hosts, as `keys
sync` would) and signs move tickets. A host's `cli()` gets a `--ticket` for every `move send … --to`
that carries none (a send ticket for exactly that project, source, destination, mode and snapshot),
because a destination receives only for a move the hub authorised; every other verb runs as a
root operator at the host's shell, which needs no ticket. Tests of refusals sign their own tickets.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.support.hosts import REPO, Host
from tests.support.ports import bind_failed, free_port, wait_listening


def ensure_host_key(host: Host) -> Path:
    """The agreed host-to-host key path: <secrets_dir>/host-to-host/id_ed25519 (0600 in 0700 dirs)."""
    secrets = host.data / "secrets"
    d = secrets / "host-to-host"
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(secrets, 0o700)
    os.chmod(d, 0o700)
    key = d / "id_ed25519"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"host-to-host {host.host_id}",
                        "-f", str(key)], check=True)
    return key


@dataclass
class Receiver:
    """One sshd in front of a destination host."""

    host: Host
    addr: str
    dir: Path
    port: int = 0
    proc: subprocess.Popen | None = None
    sources: list[Host] = field(default_factory=list)

    def start(self) -> "Receiver":
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        hk = self.dir / "ssh_host_ed25519_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(hk)], check=True)
        (self.dir / "authorized_keys").write_text("")
        os.chmod(self.dir / "authorized_keys", 0o600)
        for attempt in range(5):
            self.port = free_port(self.addr)
            self._write_config(hk)
            log = self.dir / "sshd.log"
            self.proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(self.dir / "sshd_config")],
                                         stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
            try:
                wait_listening(self.proc, self.port, timeout=60, what="sshd")
                return self
            except RuntimeError:
                text = log.read_text(errors="replace")
                if attempt < 4 and bind_failed(text):
                    continue  # someone took the port between picking and binding it: pick another
                raise RuntimeError(f"sshd exited: {text}") from None
            except TimeoutError:
                self.close()
                raise
        raise AssertionError("unreachable")

    def _write_config(self, hk: Path) -> None:
        (self.dir / "sshd_config").write_text(f"""\
ListenAddress {self.addr}
Port {self.port}
HostKey {hk}
PidFile {self.dir}/sshd.pid
AuthorizedKeysFile {self.dir}/authorized_keys
PermitRootLogin forced-commands-only
PermitUserEnvironment COCALC_CTL_CONFIG,PYTHONPATH
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowUsers root
MaxStartups 50:30:100
MaxSessions 50
LogLevel VERBOSE
""")

    def allow(self, source: Host) -> None:
        """Trust `source`: its host-to-host key may run the receiver; pin our host key on its side."""
        pub = (ensure_host_key(source).with_suffix(".pub")).read_text().split()
        line = (f'restrict,environment="COCALC_CTL_CONFIG={self.host.config_path}",'
                f'environment="PYTHONPATH={REPO}",'
                f'command="{sys.executable} -m cocalc_ctl move recv --from {source.host_id}" {pub[0]} {pub[1]}\n')
        with open(self.dir / "authorized_keys", "a") as fh:
            fh.write(line)
        hostpub = (self.dir / "ssh_host_ed25519_key.pub").read_text().split()
        kh = source.data / "ssh" / "known_hosts"
        kh.parent.mkdir(parents=True, exist_ok=True)
        with open(kh, "a") as fh:
            fh.write(f"[{self.addr}]:{self.port} {hostpub[0]} {hostpub[1]}\n")
        self.sources.append(source)

    def allow_worker(self, data_dir: Path) -> None:
        """Let the hub worker whose hub key (`hub keys ensure`) is in `data_dir` run `move host-step` here
        (ssh transport), as the receiver's `cocalc-hub` login does."""
        key = data_dir / "secrets" / "hub" / "hub_key"
        pub = key.with_name("hub_key.pub").read_text().split()
        with open(self.dir / "authorized_keys", "a") as fh:
            fh.write(f'restrict,environment="COCALC_CTL_CONFIG={self.host.config_path}",'
                     f'environment="PYTHONPATH={REPO}",'
                     f'command="{sys.executable} -m cocalc_ctl move host-step" {pub[0]} {pub[1]}\n')
        hostpub = (self.dir / "ssh_host_ed25519_key.pub").read_text().split()
        kh = data_dir / "ssh" / "known_hosts"
        kh.parent.mkdir(parents=True, exist_ok=True)
        with open(kh, "a") as fh:
            fh.write(f"[{self.addr}]:{self.port} {hostpub[0]} {hostpub[1]}\n")

    def spec(self, source: Host | None = None) -> str:
        return f"root@{self.addr}:{self.port}"

    def log(self) -> str:
        try:
            return (self.dir / "sshd.log").read_text()
        except OSError:
            return ""

    def close(self) -> None:
        if self.proc and self.proc.poll() is None:
            # per-connection sshd processes outlive the listener's SIGTERM: end them too
            out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True, text=True)
            for child in out.stdout.split():
                try:
                    os.kill(int(child), signal.SIGTERM)
                except ProcessLookupError:
                    pass
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def ssh_to(source: Host, rcv: Receiver, command: str, *, input: bytes | None = None,
           ticket: str | None = None, key: Path | None = None) -> subprocess.CompletedProcess:
    """Log in like a peer would (source's key, or `key`; pinned known_hosts) and send `command`
    verbatim (after `ticket <T> ` when a ticket is given)."""
    if ticket is not None:
        command = f"ticket {ticket} {command}"
    key = key or source.data / "secrets" / "host-to-host" / "id_ed25519"
    return subprocess.run(["ssh", "-p", str(rcv.port), "-i", str(key), "-o", "IdentitiesOnly=yes",
                           "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                           "-o", f"UserKnownHostsFile={source.data / 'ssh' / 'known_hosts'}",
                           "-o", "GlobalKnownHostsFile=/dev/null", "-T", f"root@{rcv.addr}", command],
                          input=input, capture_output=True, timeout=60)


def make_project(host: Host, pid: str, files: dict[str, bytes]) -> None:
    host.cli("project", "create", pid)
    write_files(host, pid, files)


def write_files(host: Host, pid: str, files: dict[str, bytes]) -> None:
    root = host.project_path(pid)
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


# -- the rig's hub: a hub key pinned on the hosts, and move tickets signed with it ------------------

def pub_line(key: Ed25519PrivateKey, comment: str = "rig-hub") -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return f"{raw.decode()} {comment}"


def pin_hub_keys(host: Host, lines: list[str]) -> None:
    """What `keys sync` does with the hub's published keys: pin exactly `lines` on `host`."""
    from contextlib import closing

    from cocalc_ctl.state import host_db, hub_keys

    with closing(host_db.connect(host.data)) as db:
        hub_keys.replace_keys(db, [hub_keys.HubKey("00000000-0000-4000-8000-00000000a0b1", ln) for ln in lines],
                              host_db.now_iso())


def pinned_hub_keys(host: Host) -> list[str]:
    from contextlib import closing

    from cocalc_ctl.state import host_db, hub_keys

    with closing(host_db.connect(host.data)) as db:
        return [k.line for k in hub_keys.list_keys(db)]


@dataclass
class RigHub:
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    @property
    def public(self) -> str:
        return pub_line(self.key)

    def ticket(self, pid: str, source: Host | str, dest: Host | str, *, verbs=("send",), mode: str = "pipe",
               snapshot: str = "move-rig", attempt: int = 1, move_id: str | None = None, minutes: int = 60,
               now: float | None = None, key: Ed25519PrivateKey | None = None) -> str:
        import uuid

        from cocalc_ctl import tickets

        src = source if isinstance(source, str) else source.host_id
        dst = dest if isinstance(dest, str) else dest.host_id
        mid = move_id or str(uuid.uuid5(uuid.NAMESPACE_URL, f"{pid}/{src}/{dst}/{snapshot}"))
        t = tickets.make(move_id=mid, attempt=attempt, project_id=pid, source=src, dest=dst,
                         mode=mode, snapshot=snapshot, verbs=verbs, minutes=minutes, now=now)
        return tickets.sign(t, [key or self.key])


def install_rig_hub(hosts: list[Host], receivers: dict[str, Host]) -> RigHub:
    """Pin a fresh hub key on `hosts`; their `move send --to` gets a ticket (receivers: address -> host)."""
    hub = RigHub()
    for h in hosts:
        pin_hub_keys(h, [hub.public])
        plain = h.cli

        def cli(*args: str, _h=h, _plain=plain, **kw):
            return _plain(*_with_ticket(hub, _h, receivers, list(args)), **kw)

        h.cli = cli  # type: ignore[method-assign]
        h.hub = hub  # type: ignore[attr-defined]
    return hub


def _with_ticket(hub: RigHub, host: Host, receivers: dict[str, Host], args: list[str]) -> list[str]:
    try:
        i = args.index("send")
    except ValueError:
        return args
    if i == 0 or args[i - 1] != "move" or "--ticket" in args or "--to" not in args or i + 1 >= len(args):
        return args
    to = args[args.index("--to") + 1] if args.index("--to") + 1 < len(args) else ""
    addr = to.split("@", 1)[-1].rsplit(":", 1)[0]
    dest = receivers.get(addr)
    if dest is None:
        return args
    opt = {args[j]: args[j + 1] for j in range(i + 2, len(args) - 1) if args[j].startswith("--")}
    mode = opt.get("--mode", "pipe")
    snapshot = opt.get("--snapshot", "move-rig")
    if mode not in ("pipe", "staged"):
        return args
    return [*args, "--ticket", hub.ticket(args[i + 1], host, dest, mode=mode, snapshot=snapshot)]
