"""Project isolation: a private host uid/gid range per project, files owned by it, guarded ports, a hard pool.

- **Ranges.** Each project gets `base .. base+65535` (base = `isolation.uid_base` + n*65536, the
  smallest free n), recorded in host sqlite and kept while the project exists on this host. Its
  container runs in a user namespace mapping container ids 0..65535 onto that range, so container
  root is an unprivileged host uid that owns nothing outside the project.
- **Ownership.** The project's files are stored with the mapped ids; the subvolume's top directory
  is owned by the project's mapped root. When that owner is outside the project's range here (a
  restore or move from a host that gave it another range, a tree from before isolation owned by
  host ids, a top directory made by root), `shift_ownership` moves every id that is not in the range
  by its offset inside its own 65536-aligned range (`base + id % 65536`: ranges are aligned, so
  container uid k stays k, whichever range or host it came from, and no id ever lands outside the
  project's range), never following a symlink, top directory last, so an interrupted shift is redone
  at the next start. `.snapshots` is left alone (read-only subvolumes).
- **Image.** The cached image (owned by host root) is the overlay's lower layer through an
  id-mapped bind mount, so the container sees it owned by its own root and copy-ups land in the
  upper dir with mapped ids.
- **Ports.** A project's published loopback ports and its container's MAC go into nft sets: only
  sockets of `isolation.port_users` (the proxies, sshpiperd) may connect to the ports or to the
  container's address, nothing the host routes in from outside opens a connection to a project
  container (replies to its own connections pass), and no frame passes between a project container
  and another container on the bridge.
- **Pool.** Mounted `nosuid,nodev`, top directory 0700; merged roots under `project-roots/` (0700)
  are reachable only by the ranges of projects that run (an ACL entry --x per running project).
"""

from __future__ import annotations

import errno
import grp
import hashlib
import os
import pwd
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from cocalc_ctl import layout, locks, proc, safepath
from cocalc_ctl.config import Config
from cocalc_ctl.errors import InvalidInput, OperationFailed, PreconditionFailed
from cocalc_ctl.state import host_db
from cocalc_ctl.tools import idmap, mounts, nft, podman

SIZE = 65536
POOL_MOUNT_OPTIONS = ("nosuid", "nodev")
_CAP_RE = re.compile(r"[A-Z][A-Z_]*", re.ASCII)


@dataclass(frozen=True)
class IdRange:
    base: int
    size: int = SIZE

    def contains(self, n: int) -> bool:
        return self.base <= n < self.base + self.size


def enabled(cfg: Config) -> bool:
    return bool(cfg["isolation.enabled"])


def _first_base(cfg: Config) -> int:
    first = cfg["isolation.uid_base"]
    if first % SIZE or first < SIZE:
        raise InvalidInput(f"isolation.uid_base {first} must be a multiple of {SIZE} and at least {SIZE}",
                           hint="use e.g. 1048576 (= 16 * 65536)")
    return first


def capabilities(cfg: Config) -> list[str]:
    caps = []
    for word in re.split(r"[,\s]+", cfg["isolation.capabilities"].strip()):
        if not word:
            continue
        name = word.upper().removeprefix("CAP_")
        if not _CAP_RE.fullmatch(name) or name in ("ALL", "SYS_ADMIN"):
            raise InvalidInput(f"isolation.capabilities: {word!r} is not a capability a project may keep",
                               hint="list names like CHOWN,SETUID (never ALL or SYS_ADMIN)")
        caps.append(name)
    return caps


def port_uids(cfg: Config) -> list[int]:
    uids = []
    for word in re.split(r"[,\s]+", cfg["isolation.port_users"].strip()):
        if not word:
            continue
        if word.isdigit():
            uids.append(int(word))
            continue
        try:
            uids.append(pwd.getpwnam(word).pw_uid)
        except KeyError:
            raise InvalidInput(f"isolation.port_users: no user {word!r} on this host",
                               hint="list the users the proxies and sshpiperd run as") from None
    return uids or [0]


# -- ranges ---------------------------------------------------------------------------------------

def get_range(cfg: Config, pid: str) -> IdRange | None:
    if not host_db.db_path(cfg.data_dir).exists():
        return None
    with host_db.connect(cfg.data_dir) as conn:
        row = conn.execute("SELECT base, size FROM project_idmaps WHERE project_id=?", (pid,)).fetchone()
    return IdRange(row["base"], row["size"]) if row else None


SUBID_FILES = ("/etc/subuid", "/etc/subgid")


def host_id_ranges() -> list[tuple[int, int]]:
    """(start, count) of host ids someone else may act as: /etc/subuid and /etc/subgid entries (any
    user can map them with newuidmap) and the users and groups the host knows. A project range
    overlapping one would let that user signal, ptrace and (through /proc/PID/root) read the project."""
    out = []
    for name in SUBID_FILES:
        try:
            text = Path(name).read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            parts = line.strip().split(":")
            if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                out.append((int(parts[1]), int(parts[2])))
    out += [(p.pw_uid, 1) for p in pwd.getpwall()] + [(g.gr_gid, 1) for g in grp.getgrall()]
    return out


def _overlaps(base: int, ranges: list[tuple[int, int]]) -> bool:
    return any(start < base + SIZE and base < start + count for start, count in ranges)


def ensure_range(cfg: Config, pid: str) -> IdRange:
    """The project's range, allocating the lowest free one on first use (one transaction), never one
    that overlaps host ids another user may hold (`host_id_ranges`)."""
    first = _first_base(cfg)
    reserved = host_id_ranges()
    with host_db.connect(cfg.data_dir) as conn:
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT base, size FROM project_idmaps WHERE project_id=?", (pid,)).fetchone()
            if row is None:
                used = {r[0] for r in conn.execute("SELECT base FROM project_idmaps")}
                base = first
                while base in used or _overlaps(base, reserved):
                    base += SIZE
                if base + SIZE > 1 << 32:
                    raise OperationFailed("no free uid range left for another project",
                                          hint="lower isolation.uid_base or delete unused projects")
                conn.execute("INSERT INTO project_idmaps(project_id, base, size, updated_at) VALUES (?,?,?,?)",
                             (pid, base, SIZE, host_db.now_iso()))
                row = (base, SIZE)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return IdRange(row[0], row[1])


def release(conn, pid: str) -> None:
    """Forget a deleted project's range (only then may another project get it)."""
    conn.execute("DELETE FROM project_idmaps WHERE project_id=?", (pid,))


def _record_owner(cfg: Config, pid: str, base: int) -> None:
    with host_db.connect(cfg.data_dir) as conn:
        conn.execute("UPDATE project_idmaps SET owner_base=?, updated_at=? WHERE project_id=?",
                     (base, host_db.now_iso(), pid))


# -- ownership ------------------------------------------------------------------------------------

def tree_base(uid: int) -> int:
    """The range a tree belongs to, from the owner of its top directory (0 = host ids, no range)."""
    return uid - uid % SIZE


def shifted(n: int, new: IdRange) -> int:
    """Container id k of any range (or host id k of a tree from before isolation) -> new.base + k."""
    return n if new.contains(n) else new.base + n % SIZE


def _shift_entry(dir_fd: int, name: str, new: IdRange) -> None:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        uid, gid = shifted(st.st_uid, new), shifted(st.st_gid, new)
        if (uid, gid) == (st.st_uid, st.st_gid):
            return
        os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o6000:
            # chown clears setuid/setgid; the mapped owner gets them back (the pool is nosuid anyway)
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
            try:
                os.fchmod(fd, stat.S_IMODE(st.st_mode))
            finally:
                os.close(fd)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.EROFS):  # read-only nested subvolumes keep their ids
            raise


def shift_ownership(path: Path, new: IdRange) -> int:
    """Move every id below `path` into range `new` (by offset, `chown -h`), top directory
    last. The walk opens directories relative to their parent's fd and never follows symlinks."""
    count = 0
    top = str(path)
    for root, dirs, files, root_fd in os.fwalk(top, follow_symlinks=False):
        if root == top:
            dirs[:] = [d for d in dirs if d != layout.SNAPSHOTS]
        for name in dirs + files:
            _shift_entry(root_fd, name, new)
            count += 1
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        os.fchown(fd, new.base, new.base)  # mapped root owns the top (container home)
        os.fchmod(fd, stat.S_IMODE(st.st_mode))
    finally:
        os.close(fd)
    return count + 1


@dataclass
class Prepared:
    range: IdRange
    shifted_from: int | None  # base of the range the tree was owned by, when it had to be shifted
    entries: int = 0


def prepare(cfg: Config, pid: str) -> Prepared | None:
    """Allocate the project's range and make its files owned by it. Only while the project is stopped."""
    if not enabled(cfg) or proc.DRY_RUN:
        if enabled(cfg):
            proc.plan_only(f"# give project {pid} its uid range and shift its files' owners into it if needed")
        return None
    rng = ensure_range(cfg, pid)
    path = layout.project_subvolume(cfg, pid)
    owner = os.lstat(path).st_uid
    if rng.contains(owner):
        _record_owner(cfg, pid, rng.base)
        return Prepared(rng, None)
    old = tree_base(owner)
    n = shift_ownership(path, rng)
    _record_owner(cfg, pid, rng.base)
    return Prepared(rng, old, n)


def chown_new_dir(path: Path, rng: IdRange | None) -> None:
    """Directories root makes inside the project (overlay upper/work) belong to its mapped root."""
    if rng is not None and not proc.DRY_RUN:
        os.chown(path, rng.base, rng.base, follow_symlinks=False)


# -- the image through an id-mapped lower layer ---------------------------------------------------

def _lowers_dir(cfg: Config, pid: str) -> Path:
    return cfg.data_dir / "project-lowers" / pid


def mapped_lower(cfg: Config, pid: str, lower: str, rng: IdRange) -> Path:
    digest = hashlib.sha256(f"{lower}\0{rng.base}".encode()).hexdigest()[:16]
    return _lowers_dir(cfg, pid) / digest


def _userns_holder(rng: IdRange):
    holder = proc.background(["unshare", "--user", "sleep", "60"])
    mine = os.stat("/proc/self/ns/user").st_ino
    deadline = time.monotonic() + 10
    while True:
        try:
            if os.stat(f"/proc/{holder.pid}/ns/user").st_ino != mine:
                break
        except FileNotFoundError:
            pass
        if holder.poll() is not None or time.monotonic() > deadline:
            holder.kill()
            holder.wait()
            raise OperationFailed("could not create a user namespace for the id-mapped image",
                                  hint="check that unshare(1) works and user namespaces are enabled")
        time.sleep(0.002)
    idmap.write_id_maps(holder.pid, 0, rng.base, rng.size)
    return holder


def mount_mapped_lower(cfg: Config, pid: str, lower: str, rng: IdRange) -> str:
    """Bind the cached image at a per-project path with its ids mapped into the project's range."""
    target = mapped_lower(cfg, pid, lower, rng)
    if proc.plan_only(f"# id-mapped bind mount {lower} -> {target} (ids +{rng.base})"):
        return str(target)
    if mounts.mount_at(str(target)) is not None:
        return str(target)
    parent = target.parent.parent
    parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(parent, 0o700)
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    # which cache entry this is, for `rootfs list`/`gc` (the mount table shows only the mapped path)
    source = Path(f"{target}.source")
    source.write_text(lower + "\n")
    holder = _userns_holder(rng)
    try:
        fd = os.open(f"/proc/{holder.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        try:
            idmap.idmapped_bind(lower, str(target), fd)
        except OSError as exc:
            source.unlink(missing_ok=True)
            target.rmdir()
            raise OperationFailed(f"cannot id-map the image at {lower}: {exc.strerror}",
                                  hint="the rootfs cache must be on a filesystem with id-mapped mounts "
                                       "(ext4, btrfs, xfs, tmpfs on Linux >= 6.3)") from None
        finally:
            os.close(fd)
    finally:
        holder.kill()
        holder.wait()
    return str(target)


def mapped_lower_source(cfg: Config, lower: str) -> str | None:
    """The cache directory an id-mapped lower (a path below `project-lowers/`) shows, or None."""
    if not lower.startswith(str(cfg.data_dir / "project-lowers") + "/"):
        return None
    try:
        return Path(f"{lower}.source").read_text().strip() or None
    except OSError:
        return None


def umount_mapped_lowers(cfg: Config, pid: str) -> None:
    d = str(_lowers_dir(cfg, pid))
    for m in sorted((m for m in mounts.mounts() if m.mountpoint.startswith(d + "/")),
                    key=lambda m: -len(m.mountpoint)):
        proc.run(mounts.umount(m.mountpoint), check=False)
        if not proc.DRY_RUN:
            try:
                os.rmdir(m.mountpoint)
                os.unlink(f"{m.mountpoint}.source")
            except OSError:
                pass


# -- who may reach the merged roots ---------------------------------------------------------------

def _roots_dir(cfg: Config) -> Path:
    return layout.project_root_mount(cfg, "x").parent


def grant_root_traversal(cfg: Config, rng: IdRange) -> None:
    """`project-roots/` is 0700; the runtime, acting as the project's mapped root, must pass through it
    to reach the container's root, so each running project's range gets an --x ACL entry."""
    d = _roots_dir(cfg)
    if proc.plan_only(f"setfacl -m u:{rng.base}:x {d} && chmod 0710 {d}"):
        return
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    for up in d.parents:
        if not stat.S_IMODE(os.stat(up).st_mode) & 0o001:
            raise PreconditionFailed(f"{up} is closed to other users, so a project's mapped root cannot reach "
                                     f"its root filesystem below {d}",
                                     hint=f"chmod o+x {up} (0711 lets others pass through, not list it), "
                                          "or move data_dir")
    with locks.hold(cfg.data_dir, "project-roots-acl", wait=True, timeout=60, what="the project-roots ACL"):
        idmap.set_exec_acl(str(d), idmap.exec_acl_users(str(d)) | {rng.base})


def revoke_root_traversal(cfg: Config, rng: IdRange) -> None:
    d = _roots_dir(cfg)
    if not d.is_dir() or proc.plan_only(f"setfacl -x u:{rng.base} {d}"):
        return
    with locks.hold(cfg.data_dir, "project-roots-acl", wait=True, timeout=60, what="the project-roots ACL"):
        idmap.set_exec_acl(str(d), idmap.exec_acl_users(str(d)) - {rng.base})


# -- container arguments and the port guard -------------------------------------------------------

def mac_address(cfg: Config, pid: str) -> str:
    """A fixed, locally administered MAC for the project's container on this host (a project
    container has no CAP_NET_ADMIN, so it cannot change it and escape the bridge rule)."""
    h = hashlib.sha256(f"{cfg.data_dir}\0{pid}".encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in h[:5])


def uses_bridge(cfg: Config) -> bool:
    net = (cfg["podman.network"] or "").strip()
    return net.split(":", 1)[0] not in ("host", "none", "ns", "container", "slirp4netns", "pasta")


# podman's default seccomp profile, the base of ours (first found)
SECCOMP_DEFAULTS = ("/etc/containers/seccomp.json", "/usr/share/containers/seccomp.json")
# btrfs ioctls that make a subvolume or a snapshot (BTRFS_IOC_SNAP_CREATE 0x50009401, SUBVOL_CREATE
# 0x5000940e, their _V2 0x50009417/0x50009418): any user may call them on a directory it can write, and
# a nested subvolume is a qgroup of its own (outside the project's quota, its snapshots, btrfs send).
# Refused as the whole block 0x500094xx (_IOW(0x94, n, 4096-byte args): those and admin-only ones).
BTRFS_IOCTL_MASK, BTRFS_IOCTL_BLOCK = 0xFFFFFF00, 0x50009400


def _ioctl_rules() -> list[dict]:
    """ioctl allowed unless its request's low 32 bits (all the kernel reads) fall in the btrfs block:
    one rule per bit of the mask, each allowing requests whose bit differs from the block's."""
    rules = []
    for bit in range(32):
        m = 1 << bit
        if BTRFS_IOCTL_MASK & m:
            rules.append({"names": ["ioctl"], "action": "SCMP_ACT_ALLOW", "comment": "ioctl but btrfs subvolumes",
                          "args": [{"index": 1, "value": m, "valueTwo": m & ~BTRFS_IOCTL_BLOCK,
                                    "op": "SCMP_CMP_MASKED_EQ"}]})
    return rules


def seccomp_profile(cfg: Config) -> str:
    """podman's default seccomp profile with ioctl refused (EPERM, the profile's default) for the btrfs
    subvolume/snapshot ioctls, written to `<data_dir>/isolation/seccomp.json` (rewritten when
    podman's default changes); returns its path."""
    import json

    for name in SECCOMP_DEFAULTS:
        try:
            base = json.loads(Path(name).read_text())
            break
        except (OSError, ValueError):
            continue
    else:
        raise PreconditionFailed("no seccomp profile of podman's to build the project containers' profile on",
                                 hint=f"install containers-common (it ships {SECCOMP_DEFAULTS[-1]})")
    if base.get("defaultAction") not in ("SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS"):
        raise PreconditionFailed(f"{name} does not refuse by default; cannot build a profile on it",
                                 hint="restore podman's default seccomp profile")
    for rule in base.get("syscalls") or []:  # an unconditional allow would override conditional rules
        if "ioctl" in (rule.get("names") or []) and not rule.get("args"):
            rule["names"] = [n for n in rule["names"] if n != "ioctl"]
    base["syscalls"] = [r for r in base.get("syscalls") or [] if r.get("names")] + _ioctl_rules()
    text = json.dumps(base, indent=1, sort_keys=True) + "\n"
    d = cfg.data_dir / "isolation"
    path = d / "seccomp.json"
    if proc.plan_only(f"# write {path} (podman's seccomp profile, btrfs subvolume ioctls refused)"):
        return str(path)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        if path.read_text() == text:
            return str(path)
    except OSError:
        pass
    safepath.write_atomic(path, text, mode=0o644)
    return str(path)


def container_args(cfg: Config, pid: str, rng: IdRange) -> list[str]:
    mac = mac_address(cfg, pid) if uses_bridge(cfg) else None
    return podman.isolation_args(rng.base, rng.size, capabilities(cfg), mac, seccomp_profile(cfg))


def _ensure_tables(cfg: Config) -> None:
    uids = port_uids(cfg)
    with locks.hold(cfg.data_dir, "nft", wait=True, timeout=60, what="the nft port guard"):
        # always the whole ruleset: it reloads over itself keeping the sets' elements, so tables an
        # earlier version made get every current rule (e.g. the bridge output guard)
        proc.run(nft.load(), input=nft.ruleset(uids))


def guard_ports(cfg: Config, pid: str, ports: list[int]) -> None:
    """Before the ports are published: only the port users may connect to them, and the project's
    container exchanges no frames with other containers."""
    if not enabled(cfg):
        return
    proc.which("nft")
    _ensure_tables(cfg)
    mac = mac_address(cfg, pid) if uses_bridge(cfg) else None
    proc.run(nft.load(), input=nft.elements("add", ports, mac))


def unguard_ports(cfg: Config, pid: str, ports: list[int]) -> None:
    if not enabled(cfg) or not proc.have("nft"):
        return
    mac = mac_address(cfg, pid) if uses_bridge(cfg) else None
    for p in ports:  # one by one: a missing element must not keep the others
        proc.run(nft.load(), input=nft.elements("delete", [p], None), check=False)
    if mac:
        proc.run(nft.load(), input=nft.elements("delete", [], mac), check=False)


# -- the pool -------------------------------------------------------------------------------------

def pool_problems(cfg: Config) -> list[tuple[str, str]]:
    """(problem, fix) for the pool: mount flags and the mode of its top directory."""
    root = str(cfg.btrfs_root)
    m = mounts.mount_at(root)
    if m is None:
        return []
    out = []
    flags = m.mount_options.split(",")
    missing = [o for o in POOL_MOUNT_OPTIONS if o not in flags]
    if missing:
        out.append((f"{root} is mounted without {','.join(missing)}",
                    f"mount -o remount,{','.join(POOL_MOUNT_OPTIONS)} {root} (or: cocalc-ctl host init)"))
    mode = stat.S_IMODE(os.stat(root).st_mode)
    if mode & 0o077:
        out.append((f"{root} is mode {mode:04o}: other users can enter the pool",
                    f"chmod 0700 {root} (or: cocalc-ctl host init)"))
    roots = _roots_dir(cfg)
    if enabled(cfg) and roots.is_dir() and stat.S_IMODE(os.stat(roots).st_mode) & 0o007:
        out.append((f"{roots} is mode {stat.S_IMODE(os.stat(roots).st_mode):04o}: other users can enter "
                    "the projects' root filesystems", f"chmod 0700 {roots} (the next project start sets its ACL)"))
    return out


def harden_pool(cfg: Config) -> list[str]:
    """Remount the pool nosuid,nodev if needed and make its top directory 0700; returns what it did."""
    root = str(cfg.btrfs_root)
    done = []
    m = mounts.mount_at(root)
    if m is None:
        return done
    flags = m.mount_options.split(",")
    if any(o not in flags for o in POOL_MOUNT_OPTIONS):
        proc.run(mounts.remount(root, ",".join(POOL_MOUNT_OPTIONS)))
        done.append(f"remounted {root} {','.join(POOL_MOUNT_OPTIONS)}")
    if not proc.DRY_RUN and stat.S_IMODE(os.stat(root).st_mode) != 0o700:
        os.chmod(root, 0o700)
        done.append(f"chmod 0700 {root}")
    elif proc.DRY_RUN:
        proc.plan_only(f"chmod 0700 {root}")
    roots = _roots_dir(cfg)
    if enabled(cfg) and roots.is_dir() and stat.S_IMODE(os.stat(roots).st_mode) & 0o007:
        mode = stat.S_IMODE(os.stat(roots).st_mode) & 0o770  # keeps an ACL's mask (the group bits)
        if not proc.plan_only(f"chmod {mode:04o} {roots}"):
            os.chmod(roots, mode)
            done.append(f"chmod {mode:04o} {roots}")
    return done
