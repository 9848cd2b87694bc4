"""The last host-side steps of a move: `finalize` on the destination, `cleanup` on the source, and
`abort` (the worker's roll-back of a destination).

finalize is idempotent after a crash at any point: it writes `_incoming/<uuid>/.finalizing` before
creating `project-<uuid>`, so a rerun that finds both continues where the crash left off, and a rerun
that finds the project and no `_incoming/<uuid>` reports that the project is already finalized. A
project that exists without that marker is never touched.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field

from cocalc_ctl import ids, layout, locks, proc
from cocalc_ctl.actions.project import projects
from cocalc_ctl.actions.host.identity import host_id as own_host_id
from cocalc_ctl.actions.move import common
from cocalc_ctl.actions.move.common import FinalizeResult
from cocalc_ctl.actions.move.recv import drop_incoming, drop_incoming_keep_marker, refuse_live_project
from cocalc_ctl.actions.host.pool import require_pool
from cocalc_ctl.config import Config, parse_size
from cocalc_ctl.errors import NotFound, OperationFailed, PreconditionFailed
from cocalc_ctl.state import host_db
from cocalc_ctl.tools import btrfs


def finalize(cfg: Config, project_id: str, *, quota: int | None = None) -> FinalizeResult:
    """`quota`: the qgroup limit in bytes the project had on its source (default `project.quota`)."""
    pid = ids.project_id(project_id)
    require_pool(cfg)
    incoming = layout.incoming_dir(cfg, pid)
    proj = layout.project_subvolume(cfg, pid)
    marker = incoming / common.FINALIZING_MARKER
    with common.receive_lock(cfg, pid):
        if os.path.lexists(proj) and not incoming.exists():
            return FinalizeResult(pid, str(proj), True)
        if marker.exists():
            from cocalc_ctl.actions.move import backup_mode

            mark = backup_mode.read_marker(marker)
            if mark:
                raise PreconditionFailed(f"an interrupted finalize of {pid} from backup {str(mark.get('backup_id'))[:8]} "
                                         "is here", hint="rerun `move finalize PROJECT --from-backup ID`, or `move abort`")
        if os.path.lexists(proj) and not marker.exists():
            raise projects.AlreadyExists(f"project {pid} already exists on this host; refusing to finalize over it",
                                         hint="delete the received data with `cocalc-ctl move abort` if it is stale")
        received = [r for r in common.inventory(incoming) if r.complete]
        try:
            move_name = (incoming / common.MOVE_MARKER).read_text().strip()
        except OSError:
            move_name = None
        if not os.path.lexists(proj):
            if not move_name or move_name not in {r.name for r in received}:
                raise PreconditionFailed(f"nothing to finalize for {pid}: the move snapshot has not been received",
                                         hint="run `move send` on the source first")
            if not proc.plan_only(f"touch {marker}"):
                marker.write_text("finalizing\n")
            proc.run(btrfs.snapshot(str(incoming / move_name), str(proj), readonly=False))
        snaps_dir = layout.snapshots_dir(cfg, pid)
        if not common.is_subvolume(snaps_dir) and not proc.DRY_RUN:
            if snaps_dir.is_dir():
                snaps_dir.rmdir()  # the empty placeholder a nested subvolume leaves in a snapshot
            proc.run(btrfs.subvolume_create(str(snaps_dir)))
        elif proc.DRY_RUN:
            proc.run(btrfs.subvolume_create(str(snaps_dir)))
        rehomed = []
        for r in received:
            if r.name == move_name:
                continue
            if not (snaps_dir / r.name).exists():
                proc.run(btrfs.snapshot(str(incoming / r.name), str(snaps_dir / r.name), readonly=True))
            rehomed.append(r.name)
        limit = quota or (parse_size(cfg["project.quota"]) if cfg["project.quota"] else None)
        if limit:
            proc.run(btrfs.qgroup_limit(limit, str(proj)))
        restored = _restore_persist(cfg, pid, incoming)
        if not proc.plan_only(f"# record project {pid} (stopped) in {host_db.db_path(cfg.data_dir)}"):
            with host_db.connect(cfg.data_dir) as conn:
                host_db.upsert_project(conn, pid, state="stopped", http_port=None, ssh_port=None)
        drop_incoming_keep_marker(cfg, pid)
        common.log(cfg, pid, "finalize", "done", "ok", snapshot=move_name, detail=f"{len(rehomed)} snapshots")
        return FinalizeResult(pid, str(proj), False, move_name, rehomed, restored)


def _restore_persist(cfg: Config, pid: str, incoming) -> bool:
    src = incoming / common.PERSIST_DIR
    if not src.is_dir():
        return layout.persist_dir(cfg, pid).is_dir()
    dest = layout.persist_dir(cfg, pid)
    if proc.plan_only(f"mv {src} {dest}"):
        return True
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(src), str(dest))
    os.chmod(dest, 0o700)
    return True


@dataclass
class AbortResult:
    project_id: str
    deleted_received: list[str]
    deleted_partial_project: bool


def incoming_present(cfg: Config, project_id: str) -> bool:
    """Whether `abort` has anything to roll back here (received data or staged streams)."""
    pid = ids.project_id(project_id)
    return any(os.path.lexists(p) for p in (layout.incoming_dir(cfg, pid), layout.streams_dir(cfg, pid)))


def present(cfg: Config, project_id: str) -> bool:
    """Whether the project (or its staged streams) is on this host, i.e. `cleanup` would delete something."""
    pid = ids.project_id(project_id)
    return any(os.path.lexists(p) for p in (layout.project_subvolume(cfg, pid), layout.streams_dir(cfg, pid)))


def abort(cfg: Config, project_id: str) -> AbortResult:
    """Roll back a destination: received data, staged streams, and a project finalize had begun. A project
    that lives here with nothing incoming is refused (NotFound, exit 3), never reported as aborted."""
    pid = ids.project_id(project_id)
    require_pool(cfg)
    incoming = layout.incoming_dir(cfg, pid)
    partial = False
    with common.receive_lock(cfg, pid):
        refuse_live_project(cfg, pid)
        if (incoming / common.FINALIZING_MARKER).exists():
            from cocalc_ctl.actions.move import backup_mode

            if backup_mode.read_marker(incoming / common.FINALIZING_MARKER):
                backup_mode.recover_restore(cfg, pid)  # a backup-mode restore a crash cut short
            if layout.project_subvolume(cfg, pid).exists():
                projects.delete(cfg, pid, force=True)
                partial = True
        gone = drop_incoming(cfg, pid)
    common.log(cfg, pid, "recv", "abort", "ok", detail=f"{len(gone)} received, partial project {partial}")
    return AbortResult(pid, gone, partial)


@dataclass
class CleanupResult:
    project_id: str
    deleted: bool
    deleted_snapshots: list[str] = field(default_factory=list)
    reason: str = ""


def cleanup(cfg: Config, project_id: str, *, force: bool = False) -> CleanupResult:
    """Delete the source copy, only once the hub says the destination finalized (or with --force)."""
    pid = ids.project_id(project_id)
    require_pool(cfg)
    if not layout.project_subvolume(cfg, pid).exists():
        return CleanupResult(pid, False, reason="not on this host (already cleaned)")
    reason = "forced"
    if not force:
        reason = _confirmed_by_hub(cfg, pid)
    with locks.hold(cfg.data_dir, f"project-{pid}.move", what=f"move of project {pid}"):
        res = projects.delete(cfg, pid, force=True)
        streams = layout.streams_dir(cfg, pid)
        if streams.exists() and not proc.plan_only(f"rm -rf {streams}"):
            shutil.rmtree(streams)
    common.log(cfg, pid, "cleanup", "done", "ok", detail=reason)
    return CleanupResult(pid, True, res.deleted_snapshots, reason)


def _confirmed_by_hub(cfg: Config, pid: str) -> str:
    from cocalc_ctl.state import hub_db

    me = own_host_id(cfg)
    if not cfg["hub_dsn"]:
        raise PreconditionFailed(f"cannot confirm that project {pid} was finalized elsewhere: no hub_dsn",
                                 hint="configure hub_dsn, or pass --force once you checked the destination")
    with hub_db.connect(cfg["hub_dsn"]) as conn:
        row = conn.execute("SELECT m.state, m.source_host_id::text, m.dest_host_id::text, p.host_id::text "
                           "FROM project_moves m LEFT JOIN projects p USING (project_id) WHERE m.project_id = %s",
                           (pid,)).fetchone()
    if row is None:
        raise NotFound(f"the hub has no move of project {pid}", hint="pass --force if you moved it by hand")
    state, source, dest, current = row
    if state != "done" or current != dest or (me and source != me) or (me and current == me):
        raise OperationFailed(f"the hub does not confirm that {pid} was finalized on another host (state {state})",
                              hint="wait for the move to finish, or pass --force")
    return f"hub: done on {dest}"
