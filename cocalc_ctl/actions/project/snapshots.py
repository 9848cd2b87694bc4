"""Read-only btrfs snapshots of a project under `.snapshots/`: create, list, delete, lock, prune, auto.

A lock is a file `.snapshots/.<name>.lock`; a locked snapshot survives `delete` and `prune` (and
blocks `project delete` without --force). Only timestamp-named snapshots (UTC `YYYY-MM-DDTHH:MM:SSZ`,
or CoCalc's `YYYY-MM-DDTHH:MM:SS.mmmZ`) are managed by retention.
"""

from __future__ import annotations

import datetime as dt
import os
import stat
from dataclasses import dataclass, field

from cocalc_ctl import ids, layout, locks, proc, safepath
from cocalc_ctl.actions.project import retention
from cocalc_ctl.actions.project.subvolume import existing_project, snapshot_names
from cocalc_ctl.config import Config
from cocalc_ctl.errors import Busy, NotFound, OperationFailed, PreconditionFailed
from cocalc_ctl.tools import btrfs


@dataclass
class SnapshotInfo:
    name: str
    path: str
    created: str | None
    generation: int | None
    gen_at_creation: int | None
    uuid: str | None
    locked: bool
    referenced_bytes: int | None = None
    exclusive_bytes: int | None = None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _require_real_snapshots_dir(cfg: Config, pid: str) -> None:
    """`.snapshots` sits in the project's home, which its root owns: a symlink there (planted while
    the project ran without `.snapshots` pinned by a mount) must not send root's btrfs commands
    elsewhere. While the project runs the mount keeps it in place; while stopped nothing swaps it."""
    d = layout.snapshots_dir(cfg, pid)
    try:
        st = os.lstat(d)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise PreconditionFailed(f"{d} is a symlink or not a directory; refusing to use it",
                                 hint="move it aside and restore the project's snapshots directory")


def create(cfg: Config, project_id: str, name: str | None = None, *, now: dt.datetime | None = None) -> SnapshotInfo:
    if name is not None:
        name = ids.snapshot_name(name)
    pid = existing_project(cfg, project_id)
    _require_real_snapshots_dir(cfg, pid)
    name = name or retention.timestamp_name(now or _now())
    dest = layout.snapshot_path(cfg, pid, name)
    if os.path.lexists(dest):
        raise OperationFailed(f"snapshot {name} of project {pid} already exists",
                              hint="choose another name, or wait a second for a new timestamp")
    _require_plain_snapshots_dir(cfg, pid)
    proc.run(btrfs.snapshot(str(layout.project_subvolume(cfg, pid)), str(dest), readonly=True))
    made = SnapshotInfo(name, str(dest), retention.timestamp_name(now or _now()), None, None, None, False)
    if proc.DRY_RUN or not dest.is_dir():
        return made
    # the same fields as `snapshot list` (uuid, generations, sizes)
    return next((s for s in list_snapshots(cfg, pid) if s.name == name), made)


def list_snapshots(cfg: Config, project_id: str) -> list[SnapshotInfo]:
    pid = existing_project(cfg, project_id)
    snaps_dir = layout.snapshots_dir(cfg, pid)
    names, locked = snapshot_names(cfg, pid)
    if not names:
        return []
    listed = {s.name: s for s in btrfs.list_below(str(snaps_dir))}
    created = _creation_times(str(snaps_dir))
    qg = btrfs.qgroups(str(snaps_dir))
    out = []
    for name in names:
        s = listed.get(name)
        when = retention.parse_timestamp_name(name)
        info = SnapshotInfo(name, str(snaps_dir / name), when.isoformat() if when else created.get(name),
                            s.generation if s else None, s.cgen if s else None, s.uuid if s else None,
                            name in locked)
        if s and (q := qg.get(f"0/{s.subvolume_id}")):
            info.referenced_bytes, info.exclusive_bytes = q.referenced, q.exclusive
        out.append(info)
    out.sort(key=lambda i: (i.gen_at_creation or 0, i.name))
    return out


def _creation_times(path: str) -> dict[str, str]:
    """Creation time of each snapshot below `path` (`subvolume list -s` prints otime)."""
    res = proc.run(["btrfs", "subvolume", "list", "-o", "-s", path], mutates=False, check=False)
    out = {}
    for line in res.stdout.splitlines():
        parts = line.split()
        if "otime" in parts and "path" in parts:
            i = parts.index("otime")
            name = line.split(" path ", 1)[1].rsplit("/", 1)[-1]
            out[name] = f"{parts[i + 1]}T{parts[i + 2]}+00:00"
    return out


def _existing_snapshot(cfg: Config, project_id: str, name: str) -> tuple[str, str]:
    name = ids.snapshot_name(name)
    pid = existing_project(cfg, project_id)
    _require_real_snapshots_dir(cfg, pid)
    if not layout.snapshot_path(cfg, pid, name).is_dir():
        raise NotFound(f"snapshot {name} of project {pid} does not exist", hint="see `cocalc-ctl snapshot list`")
    return pid, name


def _require_plain_snapshots_dir(cfg: Config, pid: str) -> None:
    """Refuse to run btrfs on a `.snapshots` entry when the project has made `.snapshots` a symlink (btrfs
    takes paths: it would create or delete a subvolume wherever the link points). btrfs-progs resolves
    the path again itself, so a swap in the instant between this check and its open is not covered."""
    with safepath.open_dir(layout.project_subvolume(cfg, pid), (layout.SNAPSHOTS,)):
        pass


def _lock_parts(name: str) -> tuple[str, str]:
    return (layout.SNAPSHOTS, layout.snapshot_lock_file_name(name))


def is_locked(cfg: Config, pid: str, name: str) -> bool:
    return safepath.lexists(layout.project_subvolume(cfg, pid), _lock_parts(name))


def delete(cfg: Config, project_id: str, name: str) -> str:
    pid, name = _existing_snapshot(cfg, project_id, name)
    if is_locked(cfg, pid, name):
        raise Busy(f"snapshot {name} is locked", hint=f"unlock it first: cocalc-ctl snapshot unlock {pid} {name}")
    _require_plain_snapshots_dir(cfg, pid)
    proc.run(btrfs.subvolume_delete(str(layout.snapshot_path(cfg, pid, name))))
    return name


def lock(cfg: Config, project_id: str, name: str, *, reason: str = "") -> str:
    pid, name = _existing_snapshot(cfg, project_id, name)
    path = layout.snapshot_lock_file(cfg, pid, name)
    if not proc.plan_only(f"touch {path}"):
        text = f"locked_at={retention.timestamp_name(_now())}\n" + (f"reason={' '.join(reason.split())}\n" if reason else "")
        # the project controls every name under .snapshots: write by dir fd, never by path
        safepath.write_file(layout.project_subvolume(cfg, pid), _lock_parts(name), text.encode())
    return name


def unlock(cfg: Config, project_id: str, name: str) -> str:
    pid, name = _existing_snapshot(cfg, project_id, name)
    path = layout.snapshot_lock_file(cfg, pid, name)
    if not proc.plan_only(f"rm -f {path}"):
        safepath.unlink(layout.project_subvolume(cfg, pid), _lock_parts(name))
    return name


@dataclass
class PruneResult:
    project_id: str
    kept: list[retention.Decision] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def prune(cfg: Config, project_id: str, policy: retention.Policy) -> PruneResult:
    pid = existing_project(cfg, project_id)
    _require_real_snapshots_dir(cfg, pid)
    names, locked = snapshot_names(cfg, pid)
    decisions = retention.plan(names, policy, set(locked))
    result = PruneResult(pid, kept=[d for d in decisions if d.keep])
    for d in decisions:
        if d.keep:
            continue
        # re-check the lock right before deleting: someone may have locked it meanwhile
        if is_locked(cfg, pid, d.name):
            result.kept.append(retention.Decision(d.name, True, ["locked"]))
            continue
        _require_plain_snapshots_dir(cfg, pid)
        proc.run(btrfs.subvolume_delete(str(layout.snapshot_path(cfg, pid, d.name))))
        result.removed.append(d.name)
    return result


@dataclass
class AutoResult:
    project_id: str
    created: str | None
    reason: str
    removed: list[str] = field(default_factory=list)


def policy_from_config(cfg: Config) -> retention.Policy:
    return retention.Policy(**{k: cfg[f"snapshot.keep_{k}"] for k in retention.BUCKETS})


def changed_since_newest_snapshot(cfg: Config, pid: str) -> tuple[bool, str]:
    """Has the project's generation advanced past the newest snapshot's creation generation?"""
    listed = btrfs.list_below(str(layout.snapshots_dir(cfg, pid)))
    if not listed:
        return True, "no snapshot yet"
    # commit pending writes first, or changes from the last ~30 s would not show in the generation
    proc.run(btrfs.filesystem_sync(str(layout.project_subvolume(cfg, pid))), mutates=False)
    newest = max(s.cgen for s in listed)
    gen = btrfs.show(str(layout.project_subvolume(cfg, pid))).generation
    if gen > newest:
        return True, f"generation {gen} > {newest}"
    return False, f"unchanged since generation {newest}"


def auto_one(cfg: Config, pid: str, policy: retention.Policy, *, now: dt.datetime | None = None) -> AutoResult:
    changed, why = changed_since_newest_snapshot(cfg, pid)
    created = None
    if changed:
        name = retention.timestamp_name(now or _now())
        if not layout.snapshot_path(cfg, pid, name).exists():
            created = create(cfg, pid, name).name
    removed = prune(cfg, pid, policy).removed if not policy.empty() else []
    return AutoResult(pid, created, why, removed)


def auto(cfg: Config, project_id: str | None = None, *, now: dt.datetime | None = None) -> list[AutoResult]:
    """The timer's entry point: snapshot changed projects and prune, one run at a time per host."""
    from cocalc_ctl.actions.project.projects import list_projects

    pid = ids.project_id(project_id) if project_id else None
    policy = policy_from_config(cfg)
    with locks.hold(cfg.data_dir, "snapshot-auto", what="snapshot auto"):
        targets = [pid] if pid else [p.project_id for p in list_projects(cfg) if p.exists]
        results = []
        for t in targets:
            existing_project(cfg, t)
            results.append(auto_one(cfg, t, policy, now=now))
    if pid is None:  # the timer's run: its housekeeping too
        from cocalc_ctl.actions.ops import host_records

        host_records.prune(cfg)
    return results
