"""This host's SSH keypairs: create (`keys ensure`), show, rotate.

Four ed25519 keypairs live under `secrets_dir`, each private file 0600 in a 0700 directory with its
`.pub` beside it (0644):
  host-to-host/id_ed25519   outbound ssh/rsync to peers (peers accept it for `btrfs-<this host>`)
  sshpiperd/host_key        the ingress host key (sshpiperd and the move receiver's sshd present it)
  sshpiper/upstream_key     the key sshpiperd logs into project containers with (nothing else accepts it)
  sshpiper/relay_key        the key sshpiperd relays peers' `btrfs-<uuid>` logins to the receiver with
plus the REST token `sshpiper/token`. An existing key is never rewritten; a wrong mode on an existing
secret is an error (a key that others could read must be treated as leaked, not silently fixed).
Rotation renames the current key to `<name>.previous` and makes a new one; both are published until
`keys rotate --finish` removes the previous one.
"""

from __future__ import annotations

import os
import secrets
from contextlib import closing
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cocalc_ctl import proc
from cocalc_ctl.config import Config
from cocalc_ctl.errors import InvalidInput, PreconditionFailed
from cocalc_ctl.tools import ssh

# which -> (directory under secrets_dir, file name, comment label)
KEYS: dict[str, tuple[str, str, str]] = {
    "host": ("host-to-host", "id_ed25519", "host-to-host"),
    "sshpiperd": ("sshpiperd", "host_key", "sshpiperd"),
    "upstream": ("sshpiper", "upstream_key", "sshpiper-upstream"),
    "relay": ("sshpiper", "relay_key", "sshpiper-relay"),
}
PREVIOUS_SUFFIX = ".previous"
TOKEN_DIR, TOKEN_FILE = "sshpiper", "token"


@dataclass
class KeyInfo:
    which: str
    path: str
    exists: bool
    public_key: str | None = None
    fingerprint: str | None = None
    previous_public_key: str | None = None
    previous_fingerprint: str | None = None


@dataclass
class EnsureResult:
    host_id: str
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    keys: list[KeyInfo] = field(default_factory=list)


@dataclass
class RotateResult:
    which: str
    action: str  # "rotated" | "finished" | "nothing to finish"
    public_key: str | None
    fingerprint: str | None
    previous_fingerprint: str | None
    hint: str


def key_path(cfg: Config, which: str) -> Path:
    if which not in KEYS:
        raise InvalidInput(f"unknown key {which!r}", hint=f"use one of {', '.join(KEYS)}")
    d, name, _ = KEYS[which]
    return cfg.secrets_dir / d / name


def previous_path(cfg: Config, which: str) -> Path:
    p = key_path(cfg, which)
    return p.with_name(p.name + PREVIOUS_SUFFIX)


def token_path(cfg: Config) -> Path:
    return cfg.secrets_dir / TOKEN_DIR / TOKEN_FILE


def _pub(path: Path) -> Path:
    return path.with_name(path.name + ".pub")


# -- modes ------------------------------------------------------------------------------------

# (file-type test, what it must be, what to do otherwise, label, mode, who could reach it, the
# consequence to mention)
_SECRET_KINDS = {
    "dir": (stat.S_ISDIR, "a directory", "move it away; it must be a 0700 directory", "secrets directory",
            0o700, "others can reach it", "and consider the keys in it leaked"),
    "file": (stat.S_ISREG, "a regular file", "remove it; cocalc-ctl will not follow links", "secret",
             0o600, "others can read it", "and rotate it if others may have read it"),
}


def _check_secret(path: Path, kind: str) -> None:
    is_kind, what, replace_hint, label, mode, reach, consequence = _SECRET_KINDS[kind]
    st = path.lstat()
    if not is_kind(st.st_mode):
        raise PreconditionFailed(f"{path} is not {what}", hint=replace_hint)
    if st.st_mode & 0o077:
        raise PreconditionFailed(f"{label} {path} has mode {st.st_mode & 0o777:04o}, {reach}",
                                 hint=f"fix it with: chmod {mode:o} {path} ({consequence})")
    if st.st_uid != os.geteuid():
        raise PreconditionFailed(f"{label} {path} is owned by uid {st.st_uid}, not {os.geteuid()}",
                                 hint=f"fix it with: chown {os.geteuid()} {path}")


def check_secret_dir(path: Path) -> None:
    _check_secret(path, "dir")


def check_secret_file(path: Path) -> None:
    _check_secret(path, "file")


def _ensure_dir(path: Path) -> bool:
    """Create a 0700 directory (and a 0700 secrets_dir above it); check an existing one."""
    made = False
    for d in (path.parent, path) if path.parent.name and path.parent != Path("/") else (path,):
        if os.path.lexists(d):
            check_secret_dir(d)
            continue
        if proc.plan_only(f"mkdir -m 700 {d}"):
            made = True
            continue
        d.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(d, 0o700)
        os.chmod(d, 0o700)
        made = True
    return made


def write_new_file(path: Path, data: bytes, mode: int) -> None:
    """Create `path` with `mode`; fail if it exists (O_EXCL: never overwrite, never follow a link)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)


def read_secret(path: Path, limit: int = 64 << 10) -> bytes:
    check_secret_file(path)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return os.read(fd, limit)
    finally:
        os.close(fd)


# -- generation -------------------------------------------------------------------------------

def _generate(comment: str) -> tuple[bytes, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, f"{public.decode()} {comment}"


def _public_from_private(data: bytes) -> str:
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise PreconditionFailed(f"cannot read private key: {exc}",
                                 hint="restore it from backup or move it away and run `keys ensure`") from None
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH).decode()


def _comment(cfg: Config, which: str, host_id: str | None) -> str:
    return f"cocalc-ctl-{KEYS[which][2]}@{host_id or cfg.host_name}"


def _create_pair(path: Path, comment: str, pair: tuple[bytes, str] | None = None) -> None:
    private, public = pair or _generate(comment)
    write_new_file(path, private, 0o600)
    write_new_file(_pub(path), (public + "\n").encode(), 0o644)


def _check_pair(path: Path, comment: str) -> bool:
    """Validate an existing pair; rewrite only a missing `.pub` (derived from the private key).
    Returns True when something was written."""
    data = read_secret(path)
    derived = _public_from_private(data)
    pub = _pub(path)
    if not os.path.lexists(pub):
        if not proc.plan_only(f"# derive {pub} from {path}"):
            write_new_file(pub, (derived + f" {comment}\n").encode(), 0o644)
        return True
    on_disk = ssh.parse_public_key(pub.read_text(errors="replace").strip())
    if on_disk is None or on_disk.bare != " ".join(derived.split()[:2]):
        raise PreconditionFailed(f"{pub} does not match the private key {path}",
                                 hint=f"remove {pub}; `keys ensure` derives it again from the private key")
    return False


def ensure_token(cfg: Config) -> tuple[Path, bool]:
    path = token_path(cfg)
    _ensure_dir(path.parent)
    if os.path.lexists(path):
        read_secret(path)
        return path, False
    if not proc.plan_only(f"# generate a random REST token at {path} (mode 0600)"):
        write_new_file(path, (secrets.token_urlsafe(32) + "\n").encode(), 0o600)
    return path, True


def read_token(cfg: Config) -> str:
    path = token_path(cfg)
    if not os.path.lexists(path):
        raise PreconditionFailed(f"the sshpiper REST token {path} does not exist", hint="run `cocalc-ctl keys ensure`")
    token = read_secret(path).decode("ascii", "replace").strip()
    if len(token) < 16:
        raise PreconditionFailed(f"the sshpiper REST token in {path} is too short",
                                 hint="remove it and run `cocalc-ctl keys ensure`")
    return token


def require_host_id(cfg: Config) -> str:
    from cocalc_ctl.actions.host.identity import host_id

    hid = host_id(cfg)
    if hid is None:
        raise PreconditionFailed("this host has no id yet", hint="run `cocalc-ctl host init` or set host_id in the config")
    return hid


def _keys_lock(cfg: Config):
    """Serialise ensure/rotate (two boots' `keys ensure` racing must not half-make a pair)."""
    from contextlib import nullcontext

    from cocalc_ctl import locks

    if proc.DRY_RUN and not cfg.data_dir.exists():
        return nullcontext()
    return locks.hold(cfg.data_dir, "keys", wait=True, timeout=60, what="key management")


def ensure(cfg: Config) -> EnsureResult:
    with _keys_lock(cfg):
        return _ensure(cfg)


def _ensure(cfg: Config) -> EnsureResult:
    hid = require_host_id(cfg)
    result = EnsureResult(host_id=hid)
    if os.path.lexists(cfg.secrets_dir):
        check_secret_dir(cfg.secrets_dir)
    for which in KEYS:
        path = key_path(cfg, which)
        _ensure_dir(path.parent)
        if os.path.lexists(path):
            if _check_pair(path, _comment(cfg, which, hid)):
                result.created.append(str(_pub(path)))
            result.existing.append(str(path))
            prev = previous_path(cfg, which)
            if os.path.lexists(prev):
                _check_pair(prev, _comment(cfg, which, hid) + "-previous")
            continue
        if os.path.lexists(_pub(path)):
            raise PreconditionFailed(f"{_pub(path)} exists without its private key {path}",
                                     hint=f"remove {_pub(path)} (or restore the private key) and rerun")
        if not proc.plan_only(f"# generate an ed25519 key {path} (0600) and {_pub(path)}"):
            _create_pair(path, _comment(cfg, which, hid))
            _key_changed(cfg, which)
        result.created.append(str(path))
    tpath, made = ensure_token(cfg)
    (result.created if made else result.existing).append(str(tpath))
    if not proc.DRY_RUN:
        record_self(cfg, hid)
        result.keys = show(cfg)
    return result


# -- reading ----------------------------------------------------------------------------------

def _public_line(path: Path) -> str | None:
    try:
        text = _pub(path).read_text(errors="replace").strip()
    except FileNotFoundError:
        return None
    k = ssh.parse_public_key(text)
    return k.line if k else None


def public_lines(cfg: Config, which: str) -> list[str]:
    """Current key line first, then the previous one during a rotation."""
    out = []
    for p in (key_path(cfg, which), previous_path(cfg, which)):
        line = _public_line(p)
        if line:
            out.append(line)
    return out


def show(cfg: Config) -> list[KeyInfo]:
    out = []
    for which in KEYS:
        path = key_path(cfg, which)
        cur, prev = _public_line(path), _public_line(previous_path(cfg, which))
        info = KeyInfo(which, str(path), os.path.lexists(path))
        if cur:
            k = ssh.parse_public_key(cur)
            info.public_key, info.fingerprint = cur, k.fingerprint
        if prev:
            k = ssh.parse_public_key(prev)
            info.previous_public_key, info.previous_fingerprint = prev, k.fingerprint
        out.append(info)
    return out


def record_self(cfg: Config, hid: str | None = None) -> None:
    """Store this host's public keys in host sqlite (its own project_hosts row)."""
    from cocalc_ctl.state import host_db, peers

    hid = hid or require_host_id(cfg)
    with closing(host_db.connect(cfg.data_dir)) as conn:
        peers.upsert_self(conn, hid, name=cfg.host_name, ssh_server=cfg["ssh_server"],
                          host_to_host_public_key="\n".join(public_lines(cfg, "host")) or None,
                          sshpiperd_public_key="\n".join(public_lines(cfg, "sshpiperd")) or None,
                          private_key_ref=str(key_path(cfg, "host")), now=host_db.now_iso())


# -- rotation ---------------------------------------------------------------------------------

def rotate(cfg: Config, which: str, *, finish: bool = False) -> RotateResult:
    with _keys_lock(cfg):
        return _rotate(cfg, which, finish=finish)


def _key_changed(cfg: Config, which: str) -> None:
    """The receiver's static authorized_keys files carry the relay key: rewrite them when it changes.
    Running projects' sshds accept exactly the upstream key(s): rewrite their key lists when it changes
    (during a rotation both keys, after the finish only the new one)."""
    if which == "relay":
        from cocalc_ctl.actions.keys import sshauth

        sshauth.write_receiver_keys(cfg)
    elif which == "upstream":
        from cocalc_ctl.actions.project import ssh_state

        ssh_state.refresh_upstream_keys(cfg, public_lines(cfg, which))


def _rotate(cfg: Config, which: str, *, finish: bool = False) -> RotateResult:
    hid = require_host_id(cfg)
    path, prev = key_path(cfg, which), previous_path(cfg, which)
    if not os.path.lexists(path):
        raise PreconditionFailed(f"there is no {which} key to rotate at {path}", hint="run `cocalc-ctl keys ensure`")
    check_secret_dir(path.parent)
    read_secret(path)
    if finish:
        if not os.path.lexists(prev) and not os.path.lexists(_pub(prev)):
            cur = ssh.parse_public_key(_public_line(path) or "")
            return RotateResult(which, "nothing to finish", cur.line if cur else None,
                                cur.fingerprint if cur else None, None, "no rotation is in progress")
        old = ssh.parse_public_key(_public_line(prev) or "")
        if not proc.plan_only(f"rm -f {prev} {_pub(prev)}"):
            for p in (prev, _pub(prev)):
                if os.path.lexists(p):
                    os.unlink(p)
            record_self(cfg, hid)
            _key_changed(cfg, which)
        cur = ssh.parse_public_key(_public_line(path) or "")
        return RotateResult(which, "finished", cur.line if cur else None, cur.fingerprint if cur else None,
                            old.fingerprint if old else None,
                            "run `cocalc-ctl keys register` so peers stop accepting the old key")
    if os.path.lexists(prev) or os.path.lexists(_pub(prev)):
        raise PreconditionFailed(f"a rotation of the {which} key is already in progress ({prev} exists)",
                                 hint=f"finish it first: cocalc-ctl keys rotate --which {which} --finish")
    old = ssh.parse_public_key(_public_line(path) or "")
    if not proc.plan_only(f"mv {path} {prev}; mv {_pub(path)} {_pub(prev)}; "
                          f"# generate a new ed25519 key {path}"):
        pair = _generate(_comment(cfg, which, hid))
        if which == "upstream":  # running projects accept the new key before sshpiperd can hand it out
            from cocalc_ctl.actions.project import ssh_state

            ssh_state.refresh_upstream_keys(cfg, [ssh.parse_public_key(pair[1]).line] + public_lines(cfg, which))
        # link+unlink instead of rename: link fails if the target exists, so nothing is overwritten
        for src, dst in ((path, prev), (_pub(path), _pub(prev))):
            if os.path.lexists(src):
                os.link(src, dst, follow_symlinks=False)
                os.unlink(src)
        _create_pair(path, _comment(cfg, which, hid), pair)
        record_self(cfg, hid)
        _key_changed(cfg, which)
    cur = ssh.parse_public_key(_public_line(path) or "")
    return RotateResult(which, "rotated", cur.line if cur else None, cur.fingerprint if cur else None,
                        old.fingerprint if old else None,
                        "run `cocalc-ctl keys register`; both keys are accepted until "
                        f"`cocalc-ctl keys rotate --which {which} --finish`")


# -- shared with the hub principal (actions/keys/hub_keys.py) --------------------------------------

keys_lock = _keys_lock
ensure_dir = _ensure_dir
check_pair = _check_pair
create_pair = _create_pair
pub_path = _pub


def public_lines_at(paths: list[Path]) -> list[str]:
    """The public key lines of these private key paths (their `.pub` files), in order; missing ones skipped."""
    return [line for line in (_public_line(p) for p in paths) if line]
