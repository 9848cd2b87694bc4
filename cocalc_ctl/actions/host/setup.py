"""The host's btrfs pool and directories: `host init`, `host status`, `host teardown`."""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from cocalc_ctl import layout, proc
from cocalc_ctl.actions.host.identity import host_id
from cocalc_ctl.actions.project import isolation
from cocalc_ctl.config import Config, parse_size
from cocalc_ctl.errors import Busy, OperationFailed, PreconditionFailed
from cocalc_ctl.ids import is_uuid
from cocalc_ctl.state import host_db
from cocalc_ctl.tools import btrfs, mounts


@dataclass
class InitResult:
    btrfs_root: str
    created_pool: bool
    image: str | None
    quotas: bool
    data_dir: str
    secrets_dir: str
    host_id: str | None
    actions: list[str] = field(default_factory=list)


@dataclass
class HostStatus:
    host_id: str | None
    btrfs_root: str
    mounted: bool
    fstype: str | None
    loopback_image: str | None
    size_bytes: int | None
    used_bytes: int | None
    free_bytes: int | None
    quotas: bool
    projects: int
    snapshots: int


def _mkdir(path: Path, mode: int) -> bool:
    if path.is_dir():
        if (path.stat().st_mode & 0o777) != mode and mode == 0o700:
            if not proc.plan_only(f"chmod 0700 {path}"):
                os.chmod(path, 0o700)
        return False
    if proc.plan_only(f"mkdir -p -m {mode:o} {path}"):
        return True
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    return True


def init(cfg: Config, *, loopback: str | None = None, image: str | None = None) -> InitResult:
    root = cfg.btrfs_root
    actions: list[str] = []
    created_pool = False
    image_path: str | None = None
    size = parse_size(loopback) if loopback else None
    if size is not None and size < 128 << 20:
        raise OperationFailed(f"--loopback {loopback} is too small", hint="btrfs needs at least 128M; use e.g. 2G")
    if image and not os.path.isabs(image):
        raise OperationFailed(f"--image must be an absolute path, got {image!r}")

    fstype = mounts.fstype_of(str(root)) if root.exists() else None
    if root.exists() and not root.is_dir():
        raise PreconditionFailed(f"{root} exists and is not a directory", hint="set btrfs_root to another path")
    if fstype == "btrfs":
        pass  # an existing pool: only make sure quotas and directories are there
    elif root.exists() and any(root.iterdir()):
        raise PreconditionFailed(f"{root} exists, is not empty and is not btrfs ({fstype}); refusing to touch it",
                                 hint="empty it, mount a btrfs filesystem there, or choose another btrfs_root")
    elif size is None:
        raise PreconditionFailed(f"no btrfs pool at {root}",
                                 hint="mount one there, or create a loopback pool with `host init --loopback 10G`")
    else:
        image_path = image or str(cfg.data_dir / "pool.img")
        _create_loopback_pool(cfg, image_path, size)
        created_pool = True
        actions.append(f"created loopback pool {image_path} ({size} bytes) mounted at {root}")

    proc.run(btrfs.quota_enable(str(root)))
    actions += isolation.harden_pool(cfg)  # nosuid,nodev and 0700: the pool is no launch pad
    for d, mode in ((cfg.data_dir, 0o755), (cfg.secrets_dir, 0o700), (cfg.data_dir / "locks", 0o700),
                    (cfg.data_dir / "sync" / "projects", 0o700)):
        if _mkdir(d, mode):
            actions.append(f"created {d}")
    hid = _ensure_host_id(cfg, actions)
    if not proc.DRY_RUN:
        host_db.connect(cfg.data_dir).close()
    return InitResult(str(root), created_pool, image_path, True, str(cfg.data_dir), str(cfg.secrets_dir),
                      hid, actions)


def _create_loopback_pool(cfg: Config, image_path: str, size: int) -> None:
    """A btrfs image file mounted at btrfs_root (removed again if any step fails), and its record."""
    root = cfg.btrfs_root
    _mkdir(cfg.data_dir, 0o755)
    _mkdir(Path(image_path).parent, 0o755)
    if os.path.exists(image_path):
        raise PreconditionFailed(f"pool image {image_path} already exists",
                                 hint="remove it, or mount it at btrfs_root yourself and rerun `host init`")
    _mkdir(root, 0o755)
    try:
        proc.run(mounts.truncate(image_path, size))
        proc.run(btrfs.mkfs(image_path, label="cocalc"))
        proc.run(mounts.mount_loop(image_path, str(root), options=",".join(isolation.POOL_MOUNT_OPTIONS)))
    except BaseException:
        if not proc.DRY_RUN:
            if mounts.mount_at(str(root)):
                proc.run(mounts.umount(str(root)), check=False)
            if os.path.exists(image_path):
                os.unlink(image_path)
        raise
    if not proc.DRY_RUN:
        m = mounts.mount_at(str(root))
        record = {"image": image_path, "mountpoint": str(root), "loop_device": m.source if m else None,
                  "size": size, "created_by": "cocalc-ctl host init"}
        layout.pool_record(cfg).write_text(json.dumps(record, indent=2) + "\n")
    else:
        proc.plan_only(f"# record the pool in {layout.pool_record(cfg)}")


def _ensure_host_id(cfg: Config, actions: list[str]) -> str:
    """The host id, generated and stored in data_dir the first time."""
    hid = host_id(cfg)
    if hid is None:
        hid = str(uuid.uuid4())
        if not proc.plan_only(f"echo {hid} > {layout.host_id_file(cfg)}"):
            layout.host_id_file(cfg).write_text(hid + "\n")
            actions.append(f"generated host id {hid}")
    return hid


def _pool_record(cfg: Config) -> dict | None:
    try:
        return json.loads(layout.pool_record(cfg).read_text())
    except (OSError, ValueError):
        return None


def count_projects_and_snapshots(cfg: Config) -> tuple[int, int]:
    from cocalc_ctl.ids import PROJECT_PREFIX

    projects = snapshots = 0
    root = cfg.btrfs_root
    try:
        entries = list(os.scandir(root))
    except OSError:
        return 0, 0
    for e in entries:
        if e.name.startswith(PROJECT_PREFIX) and is_uuid(e.name[len(PROJECT_PREFIX):]) and e.is_dir(follow_symlinks=False):
            projects += 1
            try:
                snapshots += sum(1 for s in os.scandir(os.path.join(e.path, layout.SNAPSHOTS))
                                 if not s.name.startswith(".") and s.is_dir(follow_symlinks=False))
            except OSError:
                pass
    return projects, snapshots


def status(cfg: Config) -> HostStatus:
    root = str(cfg.btrfs_root)
    fstype = mounts.fstype_of(root) if os.path.isdir(root) else None
    m = mounts.mount_at(root)
    record = _pool_record(cfg)
    size = used = free = None
    quotas = False
    if fstype == "btrfs":
        u = btrfs.usage(root)
        size, used, free = u.device_size, u.used, u.free_estimated
        quotas = proc.run(btrfs.qgroup_show(root), mutates=False, check=False).returncode == 0
    projects, snapshots = count_projects_and_snapshots(cfg) if fstype == "btrfs" else (0, 0)
    return HostStatus(host_id(cfg), root, m is not None, fstype, record.get("image") if record else None,
                      size, used, free, quotas, projects, snapshots)


@dataclass
class TeardownResult:
    btrfs_root: str
    unmounted: bool
    detached: str | None
    image_deleted: bool


def _running_projects(cfg: Config) -> list[str]:
    """Projects host sqlite records as running (or on the way), plus any container of ours podman has."""
    found: list[str] = []
    if host_db.db_path(cfg.data_dir).exists():
        with host_db.connect(cfg.data_dir) as conn:
            found += [r["project_id"] for r in host_db.list_projects(conn)
                      if r["state"] in ("running", "starting", "stopping")]
    if proc.have("podman"):
        from cocalc_ctl.actions.project import containers

        found += [pid for pid in containers.managed_containers(cfg) if pid not in found]
    return found


def pool_users(cfg: Config) -> list[str]:
    """Mounts that hold the pool: anything mounted below it, and any mount whose options name a path in
    it (an overlay root's upper dir lives in its project) or whose mount point is a project root."""
    root = os.path.realpath(cfg.btrfs_root).rstrip("/") + "/"
    roots = os.path.realpath(cfg.data_dir / "project-roots").rstrip("/") + "/"
    return [m.mountpoint for m in mounts.mounts()
            if m.mountpoint.startswith(root) or m.mountpoint.startswith(roots) or f"={root}" in m.options
            or f":{root}" in m.options]


def refuse_if_pool_in_use(cfg: Config) -> None:
    """`host teardown` must not pull the pool from under a project: its container (in its own mount
    namespace, where our unmount does not reach) and overlay root would keep the loop device."""
    running = _running_projects(cfg)
    if running:
        more = f" and {len(running) - 1} more" if len(running) > 1 else ""
        raise Busy(f"project {running[0]}{more} is running on this pool; refusing to tear it down",
                   hint="stop every project first (`cocalc-ctl project stop PROJECT`)")
    users = pool_users(cfg)
    if users:
        more = f" and {len(users) - 1} more" if len(users) > 1 else ""
        raise Busy(f"{users[0]}{more} is mounted on or from the pool; refusing to tear it down",
                   hint="stop the projects or unmount it first (`cocalc-ctl rootfs umount PROJECT`)")


def teardown(cfg: Config, *, delete_image: bool = False) -> TeardownResult:
    record = _pool_record(cfg)
    root = str(cfg.btrfs_root)
    if not record or record.get("mountpoint") != root:
        raise PreconditionFailed(f"the pool at {root} was not made by `host init --loopback`; refusing to tear it down",
                                 hint="unmount it yourself if that is what you want")
    m = mounts.mount_at(root)
    unmounted = False
    if m is not None:
        if m.fstype != "btrfs":
            raise PreconditionFailed(f"{root} is mounted with {m.fstype}, not the pool", hint="unmount it first")
        refuse_if_pool_in_use(cfg)
        proc.run(mounts.umount(root))
        unmounted = True
    detached = None
    image = record.get("image")
    # `mount -o loop` sets autoclear, but a loop device can outlive the mount if something held it.
    if image and not proc.DRY_RUN:
        res = proc.run(["losetup", "-j", image, "-O", "NAME", "-n"], mutates=False, check=False)
        for dev in res.stdout.split():
            proc.run(mounts.losetup_detach(dev), check=False)
            detached = dev
    deleted = False
    if delete_image and image:
        if not proc.plan_only(f"rm -f {image} {layout.pool_record(cfg)}"):
            if os.path.exists(image):
                os.unlink(image)
            layout.pool_record(cfg).unlink(missing_ok=True)
        deleted = True
    return TeardownResult(root, unmounted, detached, deleted)
