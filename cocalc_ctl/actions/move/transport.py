"""How a move reaches other machines: the outbound ssh command line to a peer's receiver, and how the
hub's worker runs host-side steps (`move send|finalize|cleanup|abort`) on a host.

Outbound ssh always uses the pinned known_hosts (`<data_dir>/ssh/known_hosts`) and this host's
host-to-host key (`<secrets_dir>/host-to-host/id_ed25519`), with StrictHostKeyChecking=yes,
IdentitiesOnly=yes and BatchMode=yes. The worker's host transport is either `local` (run
`cocalc-ctl --config <move.host_configs>/<host-uuid>.yaml …` on this machine: single-machine setups
and tests) or `ssh` (log in as `cocalc-hub` on the host's ssh_server with the hub key, whose forced
command `cocalc-ctl move host-step` runs the same verbs, see host_step.py).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cocalc_ctl import ids, proc
from cocalc_ctl.config import Config
from cocalc_ctl.errors import InvalidInput, PreconditionFailed

_HOSTNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}|\[[0-9A-Fa-f:.]+\]", re.ASCII)


@dataclass(frozen=True)
class Peer:
    """`btrfs-<host-uuid>@HOST:PORT` — who we log in as on the destination, and where."""

    user: str
    host: str
    port: int

    @property
    def spec(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


def parse_peer(text: str) -> Peer:
    """Parse and validate `USER@HOST[:PORT]` (normally USER is `btrfs-<uuid>` or `cocalc-hub`)."""
    m = re.fullmatch(r"([a-z_][a-z0-9_-]{0,63})@([^@:\[\]]+|\[[0-9A-Fa-f:.]+\])(?::(\d{1,5}))?", text or "",
                     re.ASCII)
    if not m:
        raise InvalidInput(f"invalid destination {ids.quoted(text)}", hint="use btrfs-<source-host-uuid>@HOST:PORT")
    user, host, port = m.group(1), m.group(2), int(m.group(3) or 22)
    for prefix in ("btrfs-", "project-host-"):
        # sshpiperd routes these names; anything else is a plain sshd account (single-machine setups)
        if user.startswith(prefix) and not ids.is_uuid(user[len(prefix):]):
            raise InvalidInput(f"invalid ssh user {ids.quoted(user)}", hint=f"use {prefix}<host-uuid>")
    if not _HOSTNAME_RE.fullmatch(host) or not 0 < port < 65536:
        raise InvalidInput(f"invalid host or port in {ids.quoted(text)}")
    return Peer(user, host, port)


def host_key_file(cfg: Config) -> Path:
    from cocalc_ctl.tools import ssh as ssh_tool

    return ssh_tool.paths_for(cfg).identity


def ssh_options(cfg: Config, *, port: int, control_path: str | None = None, identity: Path | None = None) -> list[str]:
    """ssh with pinned host keys and only our key (the host-to-host key, or `identity`: the hub key
    for the worker's ssh transport); everything after this is `user@host command`."""
    key = identity or host_key_file(cfg)
    if not proc.DRY_RUN and not key.exists():
        hint = "run `cocalc-ctl hub keys ensure`" if identity else "run `cocalc-ctl keys ensure`"
        raise PreconditionFailed(f"ssh key {key} does not exist", hint=hint)
    from cocalc_ctl.tools import ssh as ssh_tool  # the one place outbound ssh policy lives

    paths = ssh_tool.paths_for(cfg)
    if identity:
        paths = ssh_tool.SshPaths(paths.known_hosts, identity)
    mux = ["-o", f"ControlPath={control_path}", "-o", "ControlMaster=no"] if control_path else []
    return ["ssh", "-p", str(port), *ssh_tool.outbound_options(paths),
            "-o", "LogLevel=ERROR", *mux, "-T", "-x", "-a"]


def _check_words(remote: list[str]) -> None:
    for word in remote:
        if not re.fullmatch(r"[A-Za-z0-9._:+@/=-]+", word, re.ASCII):
            raise InvalidInput(f"refusing to send unsafe word {ids.quoted(word)} to a peer")


def ssh_command(cfg: Config, peer: Peer, remote: list[str], *, control_path: str | None = None,
                identity: Path | None = None) -> list[str]:
    """Full ssh argv running `remote` (validated words only: it becomes SSH_ORIGINAL_COMMAND)."""
    _check_words(remote)
    return [*ssh_options(cfg, port=peer.port, control_path=control_path, identity=identity),
            f"{peer.user}@{peer.host}",
            " ".join(remote)]


def _drop_stale_sockets(mux_dir: Path) -> None:
    """Remove control sockets left by dead processes (their masters exit on the idle timeout)."""
    for e in os.scandir(mux_dir):
        owner = e.name.split("-", 1)[0]
        if not owner.isdigit() or int(owner) == os.getpid():
            continue
        try:
            os.kill(int(owner), 0)
        except ProcessLookupError:
            try:
                os.unlink(e.path)
            except FileNotFoundError:
                pass
        except PermissionError:
            pass


class PeerSession:
    """All ssh of one move to one peer, multiplexed over one authenticated master connection.

    The handshake costs far more than a small incremental stream, so a move opens it once
    (`ssh -M -N -f`, idle timeout 120 s, its control socket in `<data_dir>/ssh/mux/`, private to this host's key) and
    closes it at the end. Without a usable socket path every command simply connects on its own.
    """

    def __init__(self, cfg: Config, peer: Peer, *, ticket: str | None = None):
        self.cfg, self.peer, self.ticket = cfg, peer, ticket
        self.control_path: str | None = None

    def __enter__(self) -> "PeerSession":
        mux_dir = self.cfg.data_dir / "ssh" / "mux"
        # one socket per process: concurrent moves to one peer never share (or close) a master
        path = str(mux_dir / f"{os.getpid()}-{self.peer.host}-{self.peer.port}")
        if proc.DRY_RUN or len(path) > 100:
            return self
        mux_dir.mkdir(parents=True, exist_ok=True)
        mux_dir.chmod(0o700)
        _drop_stale_sockets(mux_dir)
        opts = ssh_options(self.cfg, port=self.peer.port)
        proc.run([*opts[:-3], "-o", f"ControlPath={path}", "-o", "ControlMaster=yes", "-o", "ControlPersist=120",
                  "-N", "-f", f"{self.peer.user}@{self.peer.host}"], mutates=False, timeout=60)
        self.control_path = path
        return self

    def __exit__(self, *exc) -> None:
        if self.control_path:
            proc.run(["ssh", "-o", f"ControlPath={self.control_path}", "-O", "exit", "x"], check=False,
                     mutates=False, timeout=30)
            self.control_path = None

    def options(self) -> list[str]:
        return ssh_options(self.cfg, port=self.peer.port, control_path=self.control_path)

    def command(self, remote: list[str]) -> list[str]:
        return ssh_command(self.cfg, self.peer, remote, control_path=self.control_path)


# -- the worker's host transport --------------------------------------------------------------------

def parse_result(stdout: str) -> dict:
    """A verb's `--json` answer: one document, or JSON lines (progress) ending with the result."""
    text = stdout.strip()
    if not text:
        return {}
    try:
        return json.loads(text)
    except ValueError:
        return json.loads(text.splitlines()[-1])


class HostTransport:
    """Runs one `cocalc-ctl move …` verb on a host and returns its JSON result; `on_event` receives
    the JSON progress lines a long verb (send) prints on the way."""

    def run(self, host_id: str, args: list[str], *, timeout: float | None = None,
            on_event: Callable[[dict], None] | None = None) -> dict:
        raise NotImplementedError


def _run_reporting(argv: list[str], timeout: float | None, on_event: Callable[[dict], None] | None) -> dict:
    if on_event is None:
        return parse_result(proc.run(argv, timeout=timeout).stdout)

    def line(text: str) -> None:
        if text.startswith("{"):
            try:
                ev = json.loads(text)
            except ValueError:
                return
            if isinstance(ev, dict) and "event" in ev:
                on_event(ev)

    return parse_result(proc.run_lines(argv, line, timeout=timeout).stdout)


class LocalTransport(HostTransport):
    """Every host's config is a file `<dir>/<host-uuid>.yaml` on this machine."""

    def __init__(self, configs_dir: Path):
        self.configs_dir = Path(configs_dir)

    def argv(self, host_id: str, args: list[str]) -> list[str]:
        cfg_file = self.configs_dir / f"{ids.host_id(host_id)}.yaml"
        if not cfg_file.exists():
            raise PreconditionFailed(f"no config for host {host_id} in {self.configs_dir}",
                                     hint="write <move.host_configs>/<host-uuid>.yaml or use move.transport=ssh")
        return [*proc.self_command(), "--config", str(cfg_file), "--json", *args]

    def run(self, host_id: str, args: list[str], *, timeout: float | None = None,
            on_event: Callable[[dict], None] | None = None) -> dict:
        return _run_reporting(self.argv(host_id, args), timeout, on_event)


class SshTransport(HostTransport):
    """Log in as `cocalc-hub` (config move.host_user) with the hub key on the host's ssh_server (looked
    up by the caller)."""

    def __init__(self, cfg: Config, servers: dict[str, str]):
        self.cfg, self.servers = cfg, servers

    def run(self, host_id: str, args: list[str], *, timeout: float | None = None,
            on_event: Callable[[dict], None] | None = None) -> dict:
        server = self.servers.get(ids.host_id(host_id))
        if not server:
            raise PreconditionFailed(f"host {host_id} has no ssh_server in the hub", hint="run `keys register` there")
        from cocalc_ctl.actions.keys import hub_keys

        user = self.cfg["move.host_user"] or ids.HUB_LOGIN
        peer = parse_peer(f"{user}@{server}")
        return _run_reporting(ssh_command(self.cfg, peer, list(args), identity=hub_keys.key_path(self.cfg)),
                              timeout, on_event)


def host_transport(cfg: Config, servers: dict[str, str]) -> HostTransport:
    kind = cfg["move.transport"]
    if kind == "local":
        if not cfg["move.host_configs"]:
            raise PreconditionFailed("move.transport is local but move.host_configs is not set",
                                     hint="set move.host_configs to a directory of <host-uuid>.yaml configs")
        return LocalTransport(Path(cfg["move.host_configs"]))
    return SshTransport(cfg, servers)
