"""The SSH auth decision: who may log in where, for sshpiperd's REST plugin and OpenSSH.

One decision, three outputs: the REST answer `{"user","host","authorizedKeys","privateKey"}`
(`sshpiper serve` / `sshpiper auth`), and the key lines for OpenSSH's `AuthorizedKeysCommand`
(`sshpiper authorized-keys`). The login name is parsed by `ids.parse_ssh_user` (one parser):
- project users -> the project's container sshd at `127.0.0.1:<ssh_port>` (only while running),
  keys = host sqlite + `<project>/.ssh/.cocalc/authorized_keys` + `<project>/.ssh/authorized_keys`;
- `btrfs-<uuid>` -> this host's move receiver sshd, keys = exactly that trusted peer's host-to-host
  key(s); OpenSSH gets them as `restrict,command="… move recv --from <uuid>"`;
- `cocalc-hub` -> the same receiver sshd, keys = exactly the hub keys this host pinned (`keys sync`),
  forced command `… move host-step` (the hub's move worker; every step needs a hub ticket).
sshpiperd relays these receiver logins with the *relay* key (`sshpiper/relay_key`), which the receiver
accepts for `btrfs-<uuid>` and `cocalc-hub` only; the *upstream* key (project containers) is accepted by
no receiver login. The receiver's logins are one list (`receiver_logins`): the AuthorizedKeysCommand
answers from it and `write_receiver_keys` writes it as static per-login authorized_keys files (no
process per login).
Every failure is a deny. This module stays import-light (no typer/rich/psycopg): the
AuthorizedKeysCommand path imports it directly and must answer in a few tens of milliseconds.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from cocalc_ctl import ids, layout, safepath
from cocalc_ctl.config import Config
from cocalc_ctl.errors import NotFound, PreconditionFailed
from cocalc_ctl.tools import ssh

MAX_KEYS_FILE = 256 << 10  # an authorized_keys file bigger than this is skipped, not read
MANAGED_KEYS = (".ssh", ".cocalc", "authorized_keys")
USER_KEYS = (".ssh", "authorized_keys")


@dataclass
class Answer:
    """Exactly the REST plugin's fields (camelCase on purpose); all empty = deny."""

    user: str = ""
    host: str = ""
    authorizedKeys: str = ""
    privateKey: str = ""

    @property
    def allowed(self) -> bool:
        return bool(self.user and self.host and self.authorizedKeys and self.privateKey)

    def as_dict(self) -> dict[str, str]:
        return {"user": self.user, "host": self.host, "authorizedKeys": self.authorizedKeys,
                "privateKey": self.privateKey}


DENY = Answer()


@dataclass
class Decision:
    """An answer plus why (for `sshpiper auth` and logs; never contains the private key)."""

    login: str
    kind: str | None
    target_id: str | None
    allowed: bool
    reason: str
    upstream_user: str = ""
    upstream_host: str = ""
    authorized_keys: list[str] | None = None


def _log(msg: str) -> None:
    try:
        sys.stderr.write(f"cocalc-ctl: sshauth: {msg}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def read_file_below(root: Path | str, parts: tuple[str, ...], *, limit: int = MAX_KEYS_FILE,
                    log=_log) -> bytes | None:
    """Read root/parts… without following any symlink the project owner may have planted (safepath)."""
    return safepath.read_file(root, parts, limit=limit, log=log)


def key_lines(text: str | bytes | None) -> list[str]:
    """Usable authorized_keys lines of a text (comments, blanks and junk dropped)."""
    if not text:
        return []
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and ssh.authorized_key_line_ok(line):
            out.append(line)
    return out


def _dedupe(lines: list[str]) -> list[str]:
    seen, out = set(), []
    for line in lines:
        if line not in seen:
            seen.add(line)
            out.append(line)
    return out


def forced_command(cfg: Config, peer_id: str | None, kind: str = "btrfs") -> str:
    """The forced command of a login: `<cocalc-ctl> [--config F] move recv --from <uuid>` for the
    move receiver (`btrfs-<uuid>`), `<cocalc-ctl> [--config F] move host-step` for the hub's move worker
    (`cocalc-hub`, kind "hub")."""
    import shlex

    exe = cfg["sshpiper.cocalc_ctl"]
    verb = ["move", "host-step"] if kind == "hub" else ["move", "recv", "--from", ids.host_id(peer_id)]
    argv = [exe] + (["--config", cfg.file] if cfg.file else []) + verb
    text = shlex.join(argv)
    if any(c in text for c in '"\\\n\r'):
        raise PreconditionFailed("the cocalc-ctl or config path contains a quote, backslash or newline",
                                 hint="install cocalc-ctl and its config at plain paths")
    return text


def relay_key_path(cfg: Config) -> Path:
    return Path(cfg.secrets_dir) / "sshpiper" / "relay_key"


def relay_public_keys(cfg: Config) -> list[str]:
    """The relay key's public line(s): current, and the previous one during a rotation."""
    out = []
    base = relay_key_path(cfg)
    for p in (Path(str(base) + ".pub"), Path(str(base) + ".previous.pub")):
        try:
            k = ssh.parse_public_key(p.read_text().strip())
        except OSError:
            continue
        if k:
            out.append(k.bare + " cocalc-ctl-sshpiper-relay")
    return out


# receiver logins sshpiperd relays (with the relay key): a peer's `btrfs-<peer>`, and the hub's login
RELAYED_KINDS = ("btrfs", "hub")


@dataclass
class LoginGrant:
    """One login of the move receiver's sshd: who may log in (OpenSSH key lines) and what runs (forced)."""

    login: str
    kind: str  # "hub" | "btrfs"
    peer_id: str | None
    keys: list[str]
    command: str

    def lines(self) -> list[str]:
        return [f'restrict,command="{self.command}" {k}' for k in self.keys]


def receiver_logins(cfg: Config, db: sqlite3.Connection | None = None) -> list[LoginGrant]:
    """Every login the receiver sshd accepts, with its keys and forced command: the one decision both the
    AuthorizedKeysCommand (`Resolver.authorized_keys`) and the static files (`write_receiver_keys`) use.

    `cocalc-hub` -> `move host-step`, accepting the hub keys this host pinned (only if any is pinned);
    per trusted peer: `btrfs-<peer>` -> `move recv --from <peer>`, accepting the peer's host-to-host key(s).
    A peer's key is never in the hub grant. Grants of a kind in RELAYED_KINDS also accept this host's
    relay key (sshpiperd relays those logins with it); the upstream key (project containers) is accepted
    by no receiver login."""
    from cocalc_ctl.state import peers

    if db is None:
        from cocalc_ctl.state import host_db

        if not host_db.db_path(cfg.data_dir).exists():
            return []
        from contextlib import closing

        with closing(host_db.connect(cfg.data_dir)) as conn:
            return receiver_logins(cfg, conn)
    out = []
    hub = _dedupe(_hub_key_lines(db))
    if hub:
        out.append(LoginGrant(ids.HUB_LOGIN, "hub", None, hub, forced_command(cfg, None, "hub")))
    for p in peers.list_peers(db):
        if not p.trusted or not ids.is_uuid(p.host_id):
            continue
        keys = [k.line for k in ssh.parse_public_keys(p.host_to_host_public_key)]
        if not keys:
            continue
        out.append(LoginGrant(f"btrfs-{p.host_id}", "btrfs", p.host_id, keys,
                              forced_command(cfg, p.host_id, "btrfs")))
    # sshpiperd authenticates these logins downstream and relays them with the relay key
    relay = relay_public_keys(cfg)
    return [LoginGrant(g.login, g.kind, g.peer_id, _dedupe(g.keys + (relay if g.kind in RELAYED_KINDS else [])),
                       g.command) for g in out]


class Resolver:
    """Holds the config, a read-only sqlite connection per thread and the cached upstream key."""

    def __init__(self, cfg: Config, *, log=_log):
        self.cfg = cfg
        self.log = log
        self.db_path = Path(cfg.data_dir) / "host.sqlite"
        self.upstream_key_path = Path(cfg.secrets_dir) / "sshpiper" / "upstream_key"
        self.relay_key_path = relay_key_path(cfg)
        self.upstream_user = cfg["sshpiper.upstream_user"]
        self.pool = str(layout.project_subvolume(cfg, "x").parent)
        self.receiver = ssh.listen_address(*ssh.parse_host_port(cfg["sshpiper.receiver_listen"]))
        self._local = threading.local()
        self._key_cache: dict[str, tuple[tuple[int, int, int], str]] = {}

    # -- state access -----------------------------------------------------------------------
    def _db(self) -> sqlite3.Connection | None:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if not self.db_path.exists():
                return None
            conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=5, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
        return conn

    def _private_key(self, path: Path) -> str:
        """A private key sshpiperd logs in with, re-read only when the file changes (rotation)."""
        st = os.lstat(path)
        sig = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._key_cache.get(str(path))
        if cached and cached[0] == sig:
            return cached[1]
        if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o077 or st.st_uid != os.geteuid():
            raise PreconditionFailed(f"key {path} has unsafe mode or owner")
        text = path.read_text()
        self._key_cache[str(path)] = (sig, text)
        return text

    def upstream_private_key(self) -> str:
        """The key sshpiperd logs into project containers with (never accepted by the receiver)."""
        return self._private_key(self.upstream_key_path)

    def relay_private_key(self) -> str:
        """The key sshpiperd relays receiver logins (`btrfs-<uuid>`, `cocalc-hub`) to the receiver with."""
        return self._private_key(self.relay_key_path)

    def project_keys(self, project_id: str, db_keys: str | None) -> list[str]:
        root = f"{self.pool}/project-{project_id}"  # = layout.project_subvolume, without pathlib per request
        lines = key_lines(db_keys)
        for parts in (MANAGED_KEYS, USER_KEYS):
            lines += key_lines(read_file_below(root, parts, log=self.log))
        return _dedupe(lines)

    # -- decisions --------------------------------------------------------------------------
    def decide(self, login: str) -> tuple[Answer, Decision]:
        u = ids.parse_ssh_user(login)
        if u is None:
            return DENY, Decision(str(login)[:80], None, None, False, "invalid user name")
        db = self._db()
        if db is None:
            return DENY, Decision(login, u.kind, u.id, False, "host database does not exist")
        if u.kind == "project":
            row = db.execute("SELECT state, ssh_port, authorized_keys FROM projects WHERE project_id=?",
                             (u.id,)).fetchone()
            if row is None:
                return DENY, Decision(login, u.kind, u.id, False, "project is not on this host")
            port = row["ssh_port"]
            if row["state"] != "running" or not isinstance(port, int) or not 1 <= port <= 65535:
                return DENY, Decision(login, u.kind, u.id, False, "project is not running")
            if not port_held_by_root(port):
                # the container died (its monitor held the port): whoever binds the port now would get
                # sshpiperd's login with the upstream key and sit between the project's users and nothing
                return DENY, Decision(login, u.kind, u.id, False, "project's ssh port is not held by its container")
            keys = self.project_keys(u.id, row["authorized_keys"])
            user, host = self.upstream_user, f"127.0.0.1:{port}"
        elif u.kind == "hub":
            keys = _hub_key_lines(db)
            user, host = login, self.receiver
        else:
            from cocalc_ctl.state import peers

            peer = peers.trusted_peer(db, u.id)
            if peer is None:
                return DENY, Decision(login, u.kind, u.id, False, "not a trusted peer")
            keys = [k.line for k in ssh.parse_public_keys(peer.host_to_host_public_key)]
            user, host = login, self.receiver
        if not keys:
            return DENY, Decision(login, u.kind, u.id, False, "no authorized keys")
        try:
            private = self.upstream_private_key() if u.kind == "project" else self.relay_private_key()
        except (OSError, PreconditionFailed) as exc:
            self.log(f"cannot use the {'upstream' if u.kind == 'project' else 'relay'} key: {exc}")
            return DENY, Decision(login, u.kind, u.id, False, "upstream key unavailable (run `keys ensure`)")
        answer = Answer(user, host, "\n".join(keys) + "\n", private)
        return answer, Decision(login, u.kind, u.id, True, "allowed", user, host, keys)

    def authorized_keys(self, login: str) -> list[str]:
        """Key lines for OpenSSH's AuthorizedKeysCommand (empty list = deny)."""
        u = ids.parse_ssh_user(login)
        if u is None:
            return []
        if u.kind == "project":
            _, decision = self.decide(login)
            return list(decision.authorized_keys or []) if decision.allowed else []
        # receiver logins: the same list the static files are written from
        db = self._db()
        if db is None:
            return []
        return [line for g in receiver_logins(self.cfg, db) if g.login == login for line in g.lines()]


TCP_TABLE = "/proc/net/tcp"  # this network namespace's IPv4 TCP sockets (the hook runs in the host's)
_LISTEN = "0A"
_LOOPBACK_OR_ANY = (b"\x7f\x00\x00\x01", b"\x00\x00\x00\x00")


def port_held_by_root(port: int, table: str | None = None) -> bool:
    """Is 127.0.0.1:<port> held by a root-owned listening socket (or one of the hook's own user), and by
    no other user's? A running project's published port is: podman's monitor (conmon, host root) holds
    it for the container's life, and the kernel's NAT sends connections on to the container. When the
    container is gone the port is free and any local user may bind it; only root (and so no local user)
    can make a root-owned socket, and no other project is given the port while host sqlite records it
    for this one. Cheap enough for every login: one sock_diag query for the listening sockets only (tens
    of microseconds; reading `table`, /proc/net/tcp, walks every connection of the host: milliseconds),
    falling back to the table where netlink is unavailable."""
    listeners = None
    if table is None:
        try:
            listeners = _listeners_netlink(port)
        except OSError:
            table = TCP_TABLE
    if listeners is None:
        listeners = _listeners_table(port, table)
    trusted = {0, os.geteuid()}
    return bool(listeners) and all(uid in trusted for uid in listeners)


def _listeners_table(port: int, table: str) -> list[int] | None:
    """Owners (uids) of the IPv4 listeners on 127.0.0.1/0.0.0.0:<port>, from a /proc/net/tcp table."""
    local = {f"0100007F:{port:04X}", f"00000000:{port:04X}"}  # little-endian hex address, port
    try:
        with open(table, "rb") as fh:
            data = fh.read()
    except OSError:
        return []
    out = []
    for line in data.decode("ascii", "replace").splitlines()[1:]:
        f = line.split()
        if len(f) >= 8 and f[1] in local and f[3] == _LISTEN:
            out.append(int(f[7]) if f[7].isdigit() else -1)
    return out


def _listeners_netlink(port: int) -> list[int]:
    """The same from the kernel's sock_diag (NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY, TCP, LISTEN only)."""
    import socket
    import struct

    nl_sock_diag, by_family, dump = 4, 20, 0x1 | 0x300  # NLM_F_REQUEST | NLM_F_DUMP
    req = struct.pack("=BBBxI", socket.AF_INET, socket.IPPROTO_TCP, 0, 1 << 10) + bytes(48)  # states: TCP_LISTEN
    msg = struct.pack("=IHHII", 16 + len(req), by_family, dump, 1, 0) + req
    out: list[int] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, nl_sock_diag) as s:
        s.settimeout(2)
        s.sendall(msg)
        while True:
            data = s.recv(65536)
            off = 0
            while off + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, off)
                if length < 16:
                    raise OSError("sock_diag: bad message")
                if kind == 3:  # NLMSG_DONE
                    return out
                if kind == 2:  # NLMSG_ERROR
                    raise OSError("sock_diag: error")
                body = off + 16
                if length >= 16 + 72:
                    sport = struct.unpack_from("!H", data, body + 4)[0]
                    src = data[body + 8:body + 12]
                    uid = struct.unpack_from("=I", data, body + 64)[0]
                    if sport == port and src in _LOOPBACK_OR_ANY:
                        out.append(uid)
                off += (length + 3) & ~3


def _hub_key_lines(db: sqlite3.Connection) -> list[str]:
    from cocalc_ctl.state import hub_keys

    try:
        rows = hub_keys.list_keys(db)
    except sqlite3.OperationalError:  # a database from before the hub_keys table: no hub key pinned
        return []
    return [k.line for r in rows for k in ssh.parse_public_keys(r.line)]


def authorized_keys_fast(argv_user: str, config_path: str | None) -> int:
    """The AuthorizedKeysCommand entry point (no typer): print allowed lines, exit 0 (deny = no output)."""
    from cocalc_ctl import config as config_mod

    try:
        cfg = config_mod.load(config_path)
    except Exception as exc:  # noqa: BLE001 - a broken config must deny, loudly, never crash sshd's helper
        _log(f"config: {' '.join(str(exc).split())[:200]}")
        return 1
    try:
        lines = Resolver(cfg).authorized_keys(argv_user)
    except Exception as exc:  # noqa: BLE001
        _log(f"denied {str(argv_user)[:80]!r}: {type(exc).__name__}")
        return 0
    if lines:
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
    return 0


# -- managed authorized_keys file ------------------------------------------------------------

@dataclass
class RefreshResult:
    project_id: str
    path: str
    keys: int


def refresh_managed_keys(cfg: Config, project: str) -> RefreshResult:
    """Rewrite `<project>/.ssh/.cocalc/authorized_keys` from host sqlite (0600, dirs 0700, owned by the
    project's owner); an empty key set writes an empty file. Never follows links inside the project."""
    from contextlib import closing

    from cocalc_ctl import proc
    from cocalc_ctl.state import host_db

    pid = ids.project_id(project)
    root = layout.project_subvolume(cfg, pid)
    if not root.is_dir():
        raise NotFound(f"project {pid} does not exist on this host", hint="see `cocalc-ctl project list`")
    db_keys = None
    if host_db.db_path(cfg.data_dir).exists():
        with closing(host_db.connect(cfg.data_dir)) as conn:
            row = host_db.get_project(conn, pid)
        db_keys = row["authorized_keys"] if row else None
    lines = _dedupe(key_lines(db_keys))
    target = root.joinpath(*MANAGED_KEYS)
    if proc.plan_only(f"# write {len(lines)} key(s) to {target} (0600, dirs 0700)"):
        return RefreshResult(pid, str(target), len(lines))
    st = os.stat(root)
    owner = (st.st_uid, st.st_gid)
    data = ("\n".join(lines) + "\n").encode() if lines else b""
    dirs = MANAGED_KEYS[:-1]
    try:
        with safepath.open_dir(root, dirs, create=True, mode=0o700, owner=owner) as fd:
            os.fchown(fd, *owner)  # the managed dir is ours: keep it private whoever made it
            os.fchmod(fd, 0o700)
        safepath.write_file(root, MANAGED_KEYS, data, mode=0o600, owner=owner)
    except safepath.UnsafePath as exc:
        raise PreconditionFailed(exc.message, hint=exc.hint) from None
    return RefreshResult(pid, str(target), len(lines))


# -- the receiver's static authorized_keys files ---------------------------------------------

@dataclass
class ReceiverKeysResult:
    dir: str
    logins: list[str]
    written: list[str]
    removed: list[str]


def receiver_keys_dir(cfg: Config) -> Path:
    d = cfg["sshpiper.receiver_keys_dir"]
    return Path(d) if d else Path(cfg.data_dir) / "ssh" / "receiver_keys"


def _open_keys_dir(path: Path) -> int:
    """Open (creating 0755) the receiver keys dir; it must be a plain directory owned by us, writable by
    nobody else (sshd's StrictModes refuses anything else, and so do we)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        pass
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise PreconditionFailed(f"{path} is not a plain directory ({os.strerror(exc.errno or 0)})",
                                 hint="remove the link or file there and rerun") from None
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        os.close(fd)
        raise PreconditionFailed(f"{path} is owned by uid {st.st_uid} or writable by others",
                                 hint=f"fix it with: chown {os.geteuid()} {path}; chmod 755 {path}")
    return fd


def write_receiver_keys(cfg: Config) -> ReceiverKeysResult:
    """Write `receiver_logins` as one authorized_keys file per login (`<dir>/<login>`, 0644, lines
    `restrict,command="…" <key>`), each atomically (tmp + fsync + rename, then the dir fsynced), and delete
    the files of logins that are gone. Only changed files are rewritten."""
    from cocalc_ctl import proc

    d = receiver_keys_dir(cfg)
    entries = receiver_logins(cfg)
    want = {}
    for e in entries:
        if not e.lines() or "/" in e.login or e.login.startswith("."):
            continue
        want[e.login] = ("# cocalc-ctl move receiver: " + e.login + "\n" + "\n".join(e.lines()) + "\n").encode()
    res = ReceiverKeysResult(str(d), sorted(want), [], [])
    if proc.plan_only(f"# write {len(want)} receiver authorized_keys file(s) to {d} (0644)"):
        return res
    fd = _open_keys_dir(d)
    try:
        for name in sorted(os.listdir(fd)):
            if name.startswith(".") and name.endswith(".tmp"):
                os.unlink(name, dir_fd=fd)  # a crash between write and rename
            elif name not in want and not name.startswith("."):
                os.unlink(name, dir_fd=fd)
                res.removed.append(name)
        for login, data in want.items():
            try:
                rfd = os.open(login, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                try:
                    st = os.fstat(rfd)
                    same = (stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o644
                            and st.st_uid == os.geteuid() and os.read(rfd, len(data) + 1) == data)
                finally:
                    os.close(rfd)
                if same:
                    continue
            except OSError:
                pass
            safepath.write_atomic(login, data, mode=0o644, dir_fd=fd)
            res.written.append(login)
        os.fsync(fd)
    finally:
        os.close(fd)
    return res
