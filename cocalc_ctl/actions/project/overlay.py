"""A project's root filesystem: overlayfs of a cached image (lower) and the project's own upper dir.

upper/work live in the project subvolume at `.local/share/overlay/<image-key>/{upper,work}`, so what
a user changes in `/` is snapshotted, backed up and moved with the project, and each image has its
own upper (switching images leaves the old one intact). The merged root is mounted at
`<data_dir>/project-roots/<uuid>`; `.local/share/overlay/current-image` names the image in use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cocalc_ctl import layout, proc, safepath
from cocalc_ctl.actions.project import isolation, rootfs
from cocalc_ctl.actions.project.subvolume import existing_project
from cocalc_ctl.config import Config
from cocalc_ctl.errors import Busy, PreconditionFailed
from cocalc_ctl.tools import mounts, overlay

OVERLAY_DIR = ".local/share/overlay"
CURRENT_IMAGE = "current-image"


def overlay_dir(cfg: Config, pid: str) -> Path:
    return layout.project_subvolume(cfg, pid) / OVERLAY_DIR


def upper_dir(cfg: Config, pid: str, key: str) -> Path:
    return overlay_dir(cfg, pid) / key / "upper"


def work_dir(cfg: Config, pid: str, key: str) -> Path:
    return overlay_dir(cfg, pid) / key / "work"


def current_image(cfg: Config, pid: str) -> str | None:
    data = safepath.read_file(layout.project_subvolume(cfg, pid), (*OVERLAY_DIR.split("/"), CURRENT_IMAGE),
                              limit=4096)
    return (data or b"").decode("utf-8", "replace").strip() or None


def _real_dir(base: Path, rel: str, owner: "isolation.IdRange | None" = None) -> Path:
    """`base/rel` as a chain of real directories, creating what is missing.

    The project tree belongs to its user, who could plant a symlink (`.local -> /etc`) to make us
    create, empty or mount directories outside the project: every component is made and opened by
    dir fd with O_NOFOLLOW (safepath), a symlink or non-directory anywhere is refused. The path
    returned is for the overlay mount options; only called while the project is stopped.
    """
    try:
        with safepath.open_dir(base, Path(rel).parts, create=True,
                               owner=(owner.base, owner.base) if owner is not None and not proc.DRY_RUN else None):
            pass
    except safepath.UnsafePath as exc:
        raise PreconditionFailed(exc.message, hint=exc.hint) from None
    path = base / rel
    return path


def _write_current_image(cfg: Config, pid: str, ref: str, owner: "isolation.IdRange | None" = None) -> None:
    safepath.write_file(layout.project_subvolume(cfg, pid), (*OVERLAY_DIR.split("/"), CURRENT_IMAGE),
                        (ref + "\n").encode(), owner=(owner.base, owner.base) if owner is not None else None)


def mounted_lower(cfg: Config, pid: str) -> str | None:
    """The escaped lowerdir of the overlay mounted at the project's root, or None if not mounted."""
    m = mounts.mount_at(str(layout.project_root_mount(cfg, pid)))
    if m is None or m.fstype != "overlay":
        return None
    return overlay.lowerdir_of(m.options) or ""


def is_mounted(cfg: Config, pid: str) -> bool:
    return mounted_lower(cfg, pid) is not None


@dataclass
class MountResult:
    project_id: str
    image: str
    merged: str
    upper: str
    lower: str
    already_mounted: bool


def recorded_running(cfg: Config, pid: str) -> bool:
    """Host sqlite says the project's container is running (set by `project start`, cleared by stop)."""
    from cocalc_ctl.state import host_db

    if not host_db.db_path(cfg.data_dir).exists():
        return False
    with host_db.connect(cfg.data_dir) as conn:
        row = host_db.get_project(conn, pid)
    return bool(row and row["state"] == "running")


def mount(cfg: Config, project_id: str, *, image: str | None = None, remount: bool = False) -> MountResult:
    pid = existing_project(cfg, project_id)
    resolved = rootfs.resolve(cfg, pid, image=image)
    ref = rootfs.normalize(resolved.image, cfg["rootfs.default_image"])
    merged = layout.project_root_mount(cfg, pid)
    rootfs.require_project_root_path_ok(merged)
    if not remount and is_mounted(cfg, pid) and current_image(cfg, pid) not in (None, ref.ref):
        raise Busy(f"project {pid} has its root mounted with another image ({current_image(cfg, pid)})",
                   hint="pass --remount to switch images (the old upper dir is kept)")
    rootfs.ensure_cached(cfg, ref)
    lower = rootfs.lower_dir(cfg, ref.key)
    upper, work = upper_dir(cfg, pid, ref.key), work_dir(cfg, pid, ref.key)
    result = MountResult(pid, ref.ref, str(merged), str(upper), str(lower), False)
    # with isolation the overlay's lower is the image seen through the project's id map
    rng = isolation.get_range(cfg, pid) if isolation.enabled(cfg) else None
    expected_lower = isolation.mapped_lower(cfg, pid, str(lower), rng) if rng else lower
    current = mounted_lower(cfg, pid)
    if current is not None:
        if current == overlay.escape_path(str(expected_lower)):
            result.already_mounted = True
            return result
        if not remount:
            raise Busy(f"project {pid} has its root mounted with another image ({current_image(cfg, pid) or current})",
                       hint="pass --remount to switch images (the old upper dir is kept)")
        if recorded_running(cfg, pid):
            raise Busy(f"project {pid} is running", hint="stop it first with `project stop`")
        proc.run(mounts.umount(str(merged)))
    isolation.umount_mapped_lowers(cfg, pid)
    prepared = isolation.prepare(cfg, pid)  # the project is stopped: its files move into its range if needed
    rng = prepared.range if prepared else None
    if proc.plan_only(f"mkdir -p {upper} {merged} && rm -rf {work} && mkdir {work}"):
        proc.run(overlay.mount(str(lower), str(upper), str(work), str(merged)))
        return result
    project = layout.project_subvolume(cfg, pid)
    image_dir = _real_dir(project, f"{OVERLAY_DIR}/{ref.key}", rng)
    # overlayfs needs an empty workdir; a crash can leave `work/work` behind.
    safepath.rmtree(project, (*OVERLAY_DIR.split("/"), *ref.key.split("/"), "work"))  # by fd, no symlink followed
    _real_dir(image_dir, "upper", rng)
    _real_dir(image_dir, "work", rng)
    if rng is not None:
        isolation.grant_root_traversal(cfg, rng)  # makes project-roots/ 0700 + this range's --x
    merged.mkdir(parents=True, exist_ok=True)
    mount_lower = isolation.mount_mapped_lower(cfg, pid, str(lower), rng) if rng else str(lower)
    try:
        proc.run(overlay.mount(mount_lower, str(upper), str(work), str(merged)))
    except BaseException:
        isolation.umount_mapped_lowers(cfg, pid)
        raise
    _write_current_image(cfg, pid, ref.ref, rng)
    return result


@dataclass
class UmountResult:
    project_id: str
    merged: str
    was_mounted: bool


def umount(cfg: Config, project_id: str, *, stopping: bool = False) -> UmountResult:
    pid = existing_project(cfg, project_id)
    merged = layout.project_root_mount(cfg, pid)
    if not is_mounted(cfg, pid):
        return UmountResult(pid, str(merged), False)
    if not stopping and recorded_running(cfg, pid):
        # the container keeps its own view of the root; unmounting here would orphan it
        raise Busy(f"project {pid} is running", hint="stop it with `project stop` (that unmounts its root too)")
    try:
        proc.run(mounts.umount(str(merged)))
    except Exception as exc:
        if "busy" in str(exc).lower():
            raise Busy(f"the root of project {pid} is busy", hint="stop the project first with `project stop`") from None
        raise
    if not proc.DRY_RUN:
        try:
            merged.rmdir()
        except OSError:
            pass
    isolation.umount_mapped_lowers(cfg, pid)
    rng = isolation.get_range(cfg, pid) if isolation.enabled(cfg) else None
    if rng is not None:
        isolation.revoke_root_traversal(cfg, rng)
    return UmountResult(pid, str(merged), True)
