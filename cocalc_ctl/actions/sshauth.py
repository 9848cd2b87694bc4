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
`receiver_logins()` lists every receiver login with its keys and forced command.
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


class Resolver:
    """Holds the config, a read-only sqlite connection per thread and the cached upstream key."""

    def __init__(self, cfg: Config, *, log=_log):
        self.cfg = cfg
        self.log = log
        self.db_path = Path(cfg.data_dir) / "host.sqlite"
        self.upstream_key_path = Path(cfg.secrets_dir) / "sshpiper" / "upstream_key"
        self.upstream_user = cfg["sshpiper.upstream_user"]
        self.pool = str(layout.project_subvolume(cfg, "x").parent)
        self.receiver = ssh.listen_address(*ssh.parse_host_port(cfg["sshpiper.receiver_listen"]))
        self._local = threading.local()
        self._key_cache: tuple[tuple[int, int, int], str] | None = None

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

    def upstream_private_key(self) -> str:
        """The proxy's upstream key, re-read only when the file changes (rotation)."""
        st = os.lstat(self.upstream_key_path)
        sig = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._key_cache
        if cached and cached[0] == sig:
            return cached[1]
        if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o077 or st.st_uid != os.geteuid():
            raise PreconditionFailed(f"upstream key {self.upstream_key_path} has unsafe mode or owner")
        text = self.upstream_key_path.read_text()
        self._key_cache = (sig, text)
        return text

    def upstream_public_key(self) -> str | None:
        try:
            text = Path(str(self.upstream_key_path) + ".pub").read_text()
        except OSError:
            return None
        k = ssh.parse_public_key(text.strip())
        return k.bare if k else None

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
            private = self.upstream_private_key()
        except (OSError, PreconditionFailed) as exc:
            self.log(f"cannot use the upstream key: {exc}")
            return DENY, Decision(login, u.kind, u.id, False, "upstream key unavailable (run `keys ensure`)")
        answer = Answer(user, host, "\n".join(keys) + "\n", private)
        return answer, Decision(login, u.kind, u.id, True, "allowed", user, host, keys)

    def authorized_keys(self, login: str) -> list[str]:
        """Key lines for OpenSSH's AuthorizedKeysCommand (empty list = deny)."""
        u = ids.parse_ssh_user(login)
        if u is None:
            return []
        answer, decision = self.decide(login)
        if not decision.allowed:
            # the receiver trusts its own sshpiperd's relayed login even when no peer key matched here
            return []
        if u.kind == "project":
            return list(decision.authorized_keys or [])
        prefix = f'restrict,command="{forced_command(self.cfg, u.id, u.kind)}" '
        lines = [prefix + k for k in decision.authorized_keys or []]
        own = self.upstream_public_key()
        if own:
            # sshpiperd already checked the peer's key and relays the login with the upstream key
            lines.append(prefix + own + " cocalc-ctl-sshpiper-upstream")
        return lines


def _hub_key_lines(db: sqlite3.Connection) -> list[str]:
    from cocalc_ctl.state import hub_keys

    try:
        rows = hub_keys.list_keys(db)
    except sqlite3.OperationalError:  # a database from before the hub_keys table: no hub key pinned
        return []
    return [k.line for r in rows for k in ssh.parse_public_keys(r.line)]


@dataclass
class LoginGrant:
    """One login of the receiver sshd: the keys it accepts and the forced command they run."""

    login: str
    kind: str            # "hub" | "btrfs"
    peer_id: str | None  # btrfs: the trusted peer
    keys: list[str]      # OpenSSH public key lines
    command: str         # forced command (safe inside command="…")


def receiver_logins(cfg: Config, db: sqlite3.Connection | None = None) -> list[LoginGrant]:
    """Every login the receiver accepts: `cocalc-hub` for the pinned hub keys (if any), and
    `btrfs-<peer>` for each trusted peer's host-to-host keys. A peer's key is never in the hub grant."""
    from contextlib import closing, nullcontext

    from cocalc_ctl.state import host_db, peers

    if db is None and not host_db.db_path(cfg.data_dir).exists():
        return []
    with (nullcontext(db) if db is not None else closing(host_db.connect(cfg.data_dir))) as conn:
        out = []
        hub = _dedupe(_hub_key_lines(conn))
        if hub:
            out.append(LoginGrant(ids.HUB_LOGIN, "hub", None, hub, forced_command(cfg, None, "hub")))
        for p in peers.list_peers(conn):
            if not p.trusted or not ids.is_uuid(p.host_id):
                continue
            keys = [k.line for k in ssh.parse_public_keys(p.host_to_host_public_key)]
            if keys:
                out.append(LoginGrant(f"btrfs-{p.host_id}", "btrfs", p.host_id, keys,
                                      forced_command(cfg, p.host_id, "btrfs")))
    return out


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
