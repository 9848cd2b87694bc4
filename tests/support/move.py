"""Move test rig: a project host pair with real OpenSSH sshd receivers on 127.0.0.2 / 127.0.0.3.

Each receiving host gets its own sshd (own host key, config, pid file, random port) whose only key
is the sending host's host-to-host key, restricted to `cocalc-ctl move recv --from <src-uuid>`
(run as root with PermitRootLogin forced-commands-only). The forced command's config reaches it
through `environment=` key options (PermitUserEnvironment). Everything is stopped and removed by
`close()`, which the fixtures call even when a test fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

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
        """Let the hub worker whose key is in `data_dir` run `move host-step` here (ssh transport)."""
        key = data_dir / "secrets" / "host-to-host" / "id_ed25519"
        if not key.exists():
            key.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(key.parent.parent, 0o700)
            os.chmod(key.parent, 0o700)
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        pub = key.with_suffix(".pub").read_text().split()
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


def ssh_to(source: Host, rcv: Receiver, command: str, *, input: bytes | None = None) -> subprocess.CompletedProcess:
    """Log in like a peer would (source's key, pinned known_hosts) and send `command` verbatim."""
    key = source.data / "secrets" / "host-to-host" / "id_ed25519"
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
