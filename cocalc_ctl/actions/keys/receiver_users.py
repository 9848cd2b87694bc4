"""Login users for the move receiver's sshd: one `btrfs-<uuid>` per trusted peer, and `cocalc-hub` (the
hub's move worker) once a hub key is pinned.

sshd refuses a login whose user NSS does not know, and these names (42+ characters) are longer
than `useradd` accepts. They are uid-0 aliases (btrfs receive needs root) with a locked password
and `/bin/sh` (sshd runs the forced command through the login shell); the receiver's
`PermitRootLogin forced-commands-only` and the `restrict,command=` key lines mean they can never get a
shell. `sshpiper receiver-users` prints the passwd lines, or rewrites exactly the lines it owns
(marked by their GECOS field) in a passwd-format file — /etc/passwd under the shadow-utils lock, or
a libnss-extrausers file — atomically, leaving every other line alone.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cocalc_ctl import ids, proc, safepath
from cocalc_ctl.config import Config
from cocalc_ctl.errors import InvalidInput, OperationFailed

GECOS = "cocalc-ctl move receiver"
PWD_LOCK = "/etc/.pwd.lock"


@dataclass
class ReceiverUsers:
    users: list[str]
    lines: list[str]
    file: str | None = None
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def passwd_line(name: str) -> str:
    u = ids.parse_ssh_user(name)
    if u is None or u.kind not in ("btrfs", "hub"):
        raise InvalidInput(f"not a receiver user: {name!r}")
    return f"{name}:*:0:0:{GECOS}:/:/bin/sh"


def wanted_users(cfg: Config) -> list[str]:
    from cocalc_ctl.actions.keys.sshauth import receiver_logins

    return sorted(g.login for g in receiver_logins(cfg))


@contextmanager
def _passwd_lock(path: Path):
    """For files in /etc the fcntl lock lckpwdf(3) takes (so useradd/vipw and we never interleave);
    for any other file a lock file beside it."""
    lock = PWD_LOCK if str(path.resolve()).startswith("/etc/") else str(path) + ".lock"
    fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def apply(cfg: Config, out: str | None = None) -> ReceiverUsers:
    users = wanted_users(cfg)
    lines = [passwd_line(u) for u in users]
    result = ReceiverUsers(users, lines)
    if not out:
        return result
    path = Path(out)
    result.file = str(path)
    if proc.plan_only(f"# rewrite the {GECOS!r} lines of {path}: {len(lines)} user(s)"):
        return result
    with _passwd_lock(path):
        try:
            old = path.read_text().splitlines()
            st = path.stat()
            mode, uid, gid = st.st_mode & 0o777, st.st_uid, st.st_gid
        except FileNotFoundError:
            old, mode, uid, gid = [], 0o644, 0, 0
        ours = {ln.split(":", 1)[0] for ln in old if ln.split(":")[4:5] == [GECOS]}
        kept = [ln for ln in old if ln.split(":")[4:5] != [GECOS]]
        taken = {ln.split(":", 1)[0] for ln in kept}
        clash = sorted(set(users) & taken)
        if clash:
            raise OperationFailed(f"{path} already has a user {clash[0]} not made by cocalc-ctl",
                                  hint="remove or rename that entry first")
        result.added = sorted(set(users) - ours)
        result.removed = sorted(ours - set(users))
        safepath.write_atomic(path, "".join(ln + "\n" for ln in kept + lines), mode=mode, owner=(uid, gid))
    return result
