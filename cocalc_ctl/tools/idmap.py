"""Kernel id-mapping primitives: user namespace maps, id-mapped bind mounts, exec-only ACLs.

No policy here: which ids, which paths and when come from the caller. The mount calls are the new
mount API (open_tree, mount_setattr with MOUNT_ATTR_IDMAP, move_mount), made through libc's
syscall() because Python has no wrappers for them.
"""

from __future__ import annotations

import ctypes
import os
import struct

_SYS_OPEN_TREE, _SYS_MOVE_MOUNT, _SYS_MOUNT_SETATTR = 428, 429, 442  # x86_64 and aarch64 share these
_OPEN_TREE_CLONE, _OPEN_TREE_CLOEXEC = 1, 0o2000000
_AT_FDCWD, _AT_EMPTY_PATH, _AT_RECURSIVE = -100, 0x1000, 0x8000
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOUNT_ATTR_IDMAP = 0x100000


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def write_id_maps(pid: int, inside: int, outside: int, count: int) -> None:
    """Give the user namespace of process `pid` the map `inside outside count` for uids and gids."""
    line = f"{inside} {outside} {count}\n".encode()
    for name in ("uid_map", "gid_map"):
        fd = os.open(f"/proc/{pid}/{name}", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


def idmapped_bind(source: str, target: str, userns_fd: int) -> None:
    """Bind `source` at `target` with its ids shown through the map of the user namespace `userns_fd`
    (a file owned by uid u appears owned by map(u); writes through it store the unmapped id)."""
    libc = _libc()
    tree = _check(libc.syscall(_SYS_OPEN_TREE, _AT_FDCWD, os.fsencode(source),
                               _OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC), f"open_tree {source}")
    try:
        attr = _MountAttr(_MOUNT_ATTR_IDMAP, 0, 0, userns_fd)
        _check(libc.syscall(_SYS_MOUNT_SETATTR, tree, b"", _AT_EMPTY_PATH, ctypes.byref(attr),
                            ctypes.sizeof(attr)), f"mount_setattr (idmap) {source}")
        _check(libc.syscall(_SYS_MOVE_MOUNT, tree, b"", _AT_FDCWD, os.fsencode(target),
                            _MOVE_MOUNT_F_EMPTY_PATH), f"move_mount {target}")
    finally:
        os.close(tree)


# -- POSIX ACLs (system.posix_acl_access), only the shape we need: owner rwx + named users --x ---------

_ACL_XATTR = "system.posix_acl_access"
_ACL_VERSION = 2
_USER_OBJ, _USER, _GROUP_OBJ, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
_UNDEFINED = 0xFFFFFFFF


def exec_acl_users(path: str) -> set[int]:
    """Users named in `path`'s access ACL (empty when it has none)."""
    try:
        raw = os.getxattr(path, _ACL_XATTR, follow_symlinks=False)
    except OSError:
        return set()
    users = set()
    for off in range(4, len(raw) - 7, 8):
        tag, _perm, uid = struct.unpack_from("<HHI", raw, off)
        if tag == _USER:
            users.add(uid)
    return users


def set_exec_acl(path: str, users: set[int]) -> None:
    """Make `path` owner-only (0700) except that each uid in `users` may traverse it (--x)."""
    if not users:
        try:
            os.removexattr(path, _ACL_XATTR, follow_symlinks=False)
        except OSError:
            pass
        os.chmod(path, 0o700)
        return
    entries = [(_USER_OBJ, 7, _UNDEFINED)] + [(_USER, 1, u) for u in sorted(users)] + [
        (_GROUP_OBJ, 0, _UNDEFINED), (_MASK, 1, _UNDEFINED), (_OTHER, 0, _UNDEFINED)]
    raw = struct.pack("<I", _ACL_VERSION) + b"".join(struct.pack("<HHI", *e) for e in entries)
    os.setxattr(path, _ACL_XATTR, raw, follow_symlinks=False)
