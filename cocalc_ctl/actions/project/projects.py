"""Projects as btrfs subvolumes: create, list, show, delete.

A project is `<btrfs_root>/project-<uuid>` with a nested subvolume `.snapshots/` for its read-only
snapshots (nested, so taking a snapshot or a lock does not change the project's own generation and
snapshots never contain each other).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field

from cocalc_ctl import ids, layout, proc
from cocalc_ctl.actions.host.pool import require_pool
from cocalc_ctl.actions.project.subvolume import existing_project, snapshot_names
from cocalc_ctl.config import Config, parse_size
from cocalc_ctl.errors import Busy, OperationFailed
from cocalc_ctl.state import host_db
from cocalc_ctl.tools import btrfs, mounts


DELETING = "_deleting"  # top-level pool dir: projects being taken apart by `project delete`


class AlreadyExists(OperationFailed):
    pass


@dataclass
class ProjectInfo:
    project_id: str
    path: str
    state: str
    exists: bool
    referenced_bytes: int | None = None
    exclusive_bytes: int | None = None
    quota_bytes: int | None = None
    generation: int | None = None
    snapshots: list[str] = field(default_factory=list)
    locked_snapshots: list[str] = field(default_factory=list)
    image: str | None = None
    http_port: int | None = None
    ssh_port: int | None = None


def create(cfg: Config, project_id: str, *, quota: str | None = None) -> ProjectInfo:
    pid = ids.project_id(project_id)
    quota = quota or cfg["project.quota"]
    quota_bytes = parse_size(quota) if quota else None
    require_pool(cfg)
    path = layout.project_subvolume(cfg, pid)
    if os.path.lexists(path):
        raise AlreadyExists(f"project {pid} already exists at {path}")
    snaps = layout.snapshots_dir(cfg, pid)
    try:
        proc.run(btrfs.subvolume_create(str(path)))
        proc.run(btrfs.subvolume_create(str(snaps)))
        if quota_bytes:
            proc.run(btrfs.qgroup_limit(quota_bytes, str(path)))
    except BaseException:
        if not proc.DRY_RUN:  # leave nothing half made
            if snaps.is_dir():
                proc.run(btrfs.subvolume_delete(str(snaps)), check=False)
            if path.is_dir():
                proc.run(btrfs.subvolume_delete(str(path)), check=False)
        raise
    if not proc.plan_only(f"# record project {pid} in {host_db.db_path(cfg.data_dir)}"):
        with host_db.connect(cfg.data_dir) as conn:
            host_db.upsert_project(conn, pid, state="stopped")
    if proc.DRY_RUN or not path.is_dir():
        return ProjectInfo(pid, str(path), "stopped", True, quota_bytes=quota_bytes)
    return show(cfg, pid)  # what `project show` and `project list` say about it


def list_projects(cfg: Config) -> list[ProjectInfo]:
    require_pool(cfg)
    on_disk = {}
    for e in os.scandir(cfg.btrfs_root):
        if e.name.startswith(ids.PROJECT_PREFIX) and ids.is_uuid(e.name[len(ids.PROJECT_PREFIX):]):
            on_disk[e.name[len(ids.PROJECT_PREFIX):]] = e.path
    rows = {}
    if host_db.db_path(cfg.data_dir).exists():
        with host_db.connect(cfg.data_dir) as conn:
            rows = {r["project_id"]: r for r in host_db.list_projects(conn)}
    qg = btrfs.qgroups(str(cfg.btrfs_root)) if on_disk else {}
    # one `subvolume list` maps every project to its subvolume id (= its qgroup 0/<id>) and generation
    subvols = {s.name: s for s in btrfs.list_below(str(cfg.btrfs_root))} if on_disk else {}
    out = []
    for pid in sorted(set(on_disk) | set(rows)):
        row = rows.get(pid)
        exists = pid in on_disk
        info = ProjectInfo(pid, str(layout.project_subvolume(cfg, pid)),
                           (row["state"] if row else "unregistered") if exists else "missing", exists)
        if exists:
            info.snapshots, info.locked_snapshots = snapshot_names(cfg, pid)
            sub = subvols.get(f"project-{pid}")
            if sub is not None:  # the same fields as `project show` (one schema per noun)
                info.generation = sub.generation
                q = qg.get(f"0/{sub.subvolume_id}")
                if q:
                    info.referenced_bytes, info.exclusive_bytes, info.quota_bytes = (q.referenced, q.exclusive,
                                                                                     q.max_referenced)
        if row:
            info.image, info.http_port, info.ssh_port = row["image"], row["http_port"], row["ssh_port"]
        out.append(info)
    return out


def show(cfg: Config, project_id: str) -> ProjectInfo:
    pid = existing_project(cfg, project_id)
    path = layout.project_subvolume(cfg, pid)
    sub = btrfs.show(str(path))
    info = ProjectInfo(pid, str(path), "unregistered", True, generation=sub.generation)
    q = btrfs.qgroups(str(path)).get(f"0/{sub.subvolume_id}")
    if q:
        info.referenced_bytes, info.exclusive_bytes, info.quota_bytes = q.referenced, q.exclusive, q.max_referenced
    info.snapshots, info.locked_snapshots = snapshot_names(cfg, pid)
    if host_db.db_path(cfg.data_dir).exists():
        with host_db.connect(cfg.data_dir) as conn:
            row = host_db.get_project(conn, pid)
        if row:
            info.state, info.image, info.http_port, info.ssh_port = (row["state"], row["image"], row["http_port"],
                                                                     row["ssh_port"])
    return info


@dataclass
class DeleteResult:
    project_id: str
    deleted_snapshots: list[str]
    deleted: bool


def deleting_dir(cfg: Config, pid: str):
    """Where `project delete` moves a project before taking it apart (so it vanishes in one rename)."""
    return cfg.btrfs_root / DELETING / f"project-{pid}"


def _nested_subvolumes(path) -> list[str]:
    """Paths of every subvolume below `path` (at any depth), deepest first."""
    out: list[str] = []
    marker = f"{path.name}/"
    for sub in btrfs.list_below(str(path)):
        child = path / sub.path.split(marker, 1)[-1]
        out += _nested_subvolumes(child) + [str(child)]
    return out


def _lift_limits(paths: list[str]) -> None:
    """Remove the qgroup limits of `paths`: btrfs needs room in a subvolume's qgroup to delete it, so a
    project (or a snapshot, which inherits its limit) that filled its quota would refuse to go."""
    for p in paths:
        proc.run(btrfs.qgroup_limit("none", p), check=False)  # quotas off: nothing to lift


def _take_apart(cfg: Config, pid: str) -> None:
    trash = deleting_dir(cfg, pid)
    if proc.DRY_RUN:
        proc.plan_only(f"btrfs subvolume delete <every subvolume below {trash}, deepest first> {trash}")
        return
    nested = _nested_subvolumes(trash)
    _lift_limits(nested + [str(trash)])
    for sub in nested:
        proc.run(btrfs.subvolume_delete(sub))
    proc.run(btrfs.subvolume_delete(str(trash)))
    try:
        os.rmdir(trash.parent)
    except OSError:
        pass  # another delete is under way, or it was never there


def _is_running(cfg: Config, pid: str) -> bool:
    """Host sqlite has the project running (or starting, stopping)."""
    if not host_db.db_path(cfg.data_dir).exists():
        return False
    with host_db.connect(cfg.data_dir) as conn:
        row = host_db.get_project(conn, pid)
    return bool(row) and row["state"] in ("running", "starting", "stopping")


def _rename_aside(pid: str, path, trash) -> None:
    """Lift the subvolume's qgroup limit and rename it to `trash`: from then on the project is gone.
    On failure the limit is put back and the project is as it was."""
    sub = btrfs.show(str(path))
    limit = (btrfs.qgroups(str(path)).get(f"0/{sub.subvolume_id}") or None)
    _lift_limits([str(path)])
    try:
        trash.parent.mkdir(mode=0o700, exist_ok=True)
        if os.path.lexists(trash):
            raise OperationFailed(f"{trash} is in the way of deleting project {pid}",
                                  hint="remove it (an earlier delete of this project left it)")
        os.rename(path, trash)
    except BaseException:
        if limit is not None and limit.max_referenced:
            proc.run(btrfs.qgroup_limit(limit.max_referenced, str(path)), check=False)
        raise


def _forget(cfg: Config, pid: str) -> None:
    """Drop a renamed-aside project's host sqlite row (freeing its uid range) and its persist store."""
    if host_db.db_path(cfg.data_dir).exists():
        with host_db.connect(cfg.data_dir) as conn:
            host_db.delete_project(conn, pid)
            from cocalc_ctl.actions.project import isolation

            isolation.release(conn, pid)  # its uid range is free again only now
    persist = layout.persist_dir(cfg, pid)
    if persist.exists():
        shutil.rmtree(persist)


def delete(cfg: Config, project_id: str, *, force: bool = False) -> DeleteResult:
    """All or nothing as far as btrfs allows: every check first, then the project's qgroup limit is
    lifted and the subvolume renamed aside in one step (from then on the project is gone), then taken
    apart. A failure before the rename restores the limit and leaves the project as it was; a failure
    after it is finished by the next `project delete` of the same id."""
    pid = ids.project_id(project_id)
    require_pool(cfg)
    path = layout.project_subvolume(cfg, pid)
    if not path.is_dir() and os.path.isdir(deleting_dir(cfg, pid)):
        _take_apart(cfg, pid)  # the rest of an interrupted delete
        return DeleteResult(pid, [], True)
    pid = existing_project(cfg, pid)
    names, locked = snapshot_names(cfg, pid)
    if locked and not force:
        raise Busy(f"project {pid} has locked snapshots: {', '.join(locked)}",
                   hint="unlock them with `snapshot unlock` or pass --force")
    running = _is_running(cfg, pid)
    if running and not force:
        raise Busy(f"project {pid} is running", hint="stop it first with `project stop` or pass --force")
    if running or mounts.mount_at(str(layout.project_root_mount(cfg, pid))) is not None:
        # its container and overlay root hold the subvolume: stop them first (ports cleared too)
        from cocalc_ctl.actions.project import containers

        containers.stop(cfg, pid)
    trash = deleting_dir(cfg, pid)
    if proc.plan_only(f"btrfs qgroup limit none {path}; mv {path} {trash}"):
        _take_apart(cfg, pid)
        proc.plan_only(f"rm -rf {layout.persist_dir(cfg, pid)}; # remove project {pid} from host sqlite")
        return DeleteResult(pid, names, True)
    _rename_aside(pid, path, trash)
    _forget(cfg, pid)
    try:
        _take_apart(cfg, pid)
    except OperationFailed as exc:
        raise OperationFailed(f"project {pid} is deleted but not all of its subvolumes are gone yet: {exc.message}",
                              hint=f"run `cocalc-ctl project delete {pid}` again to finish") from None
    return DeleteResult(pid, names, True)
