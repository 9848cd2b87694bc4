"""Backup-mode moves: the source backs the project up, the destination restores that backup.

For hosts that must not talk to each other: both use the same repository (their config's
`backup.repo`), the hub's worker carries only the backup id between them.

- `move send PROJECT --mode backup [--snapshot NAME]` (source): stop the project, take (or reuse) the
  final read-only move snapshot, then `backup create` of that snapshot, tagged `move:<snapshot uuid>`.
  A rerun whose move snapshot is unchanged finds that backup in the repository (and a succeeded job
  for it in host sqlite) and reuses it instead of backing up twice.
- `move finalize PROJECT --from-backup ID` (destination): a full restore of that backup through
  restore staging (crash-safe), under the marker `_incoming/<uuid>/.finalizing` (JSON naming the
  backup and the phase), so a rerun after a crash resumes and `move abort` can roll it back. It refuses
  a project that already exists here, unless this host's move log says it was finalized from this
  very backup (then it reports "already finalized", like the other modes).

The project's btrfs snapshots are not carried: restored snapshots would not share extents, so each
would cost the project's full size on the destination. Older backups of the project stay in the
repository.
"""

from __future__ import annotations

import contextlib

import json
import os
import re
import time
from dataclasses import dataclass

from cocalc_ctl import ids, layout, locks, proc, safepath
from cocalc_ctl.actions.backup import common as backup_common
from cocalc_ctl.actions.backup import jobs, repository
from cocalc_ctl.actions.project import projects
from cocalc_ctl.actions.project.subvolume import existing_project
from cocalc_ctl.actions.move import common
from cocalc_ctl.actions.move.common import FinalizeResult
from cocalc_ctl.actions.move.recv import drop_incoming_keep_marker
from cocalc_ctl.actions.host.pool import require_pool
from cocalc_ctl.config import Config
from cocalc_ctl.errors import CocalcError, InvalidInput, NotFound, OperationFailed, PreconditionFailed
from cocalc_ctl.state import backup_jobs, host_db
from cocalc_ctl.tools import backup_engine, btrfs

BACKUP_ID_RE = re.compile(r"[0-9a-f]{8,64}", re.ASCII)
SAME_REPO_HINT = "both hosts must use the same backup.repo; see `backup list PROJECT`"
FINALIZE_STEP = "from-backup"  # move_log step of a finished finalize from a backup (move_id = backup id)


@dataclass
class BackupSendResult:
    project_id: str
    mode: str
    move_snapshot: str
    backup_id: str | None
    reused: bool
    bytes_total: int | None
    data_added: int | None
    seconds: float
    engine: str
    persist: bool = False


def move_tag(snapshot_uuid: str) -> str:
    return f"move:{snapshot_uuid}"


def _previous_backup(cfg: Config, eng, pid: str, tag: str) -> str | None:
    """The backup an earlier run made of this very move snapshot, if it is in the repository and
    its job succeeded here (an incomplete backup is never reused)."""
    res = repository.run_engine(eng, eng.snapshots(tags=[f"project:{pid}", tag]), mutates=False)
    found = backup_engine.parse_snapshots(res.stdout)
    if not found or not host_db.db_path(cfg.data_dir).exists():
        return None
    with host_db.connect(cfg.data_dir) as conn:
        ok = {k for k, r in backup_jobs.by_backup_id(conn, pid).items() if r["state"] == "succeeded"}
    for snap in reversed(found):
        if any(snap.id.startswith(k) for k in ok):  # (restic 0.14 reports the short id)
            return snap.id
    return None


def send(cfg: Config, project_id: str, *, snapshot: str | None = None, progress=None,
         by_hand: bool = False) -> BackupSendResult:
    """Back the project's final snapshot up for a move. `by_hand` (no hub ticket): a failed backup
    removes the move snapshot it took (the worker's sends keep it for their next attempt)."""
    from cocalc_ctl.actions.move.source import stop_if_running, take_move_snapshot

    pid = existing_project(cfg, project_id)
    name = ids.snapshot_name(snapshot) if snapshot else common.now_name()
    emit = progress or (lambda ev: None)
    eng = repository.engine_for(cfg)
    start = time.monotonic()
    with locks.hold(cfg.data_dir, f"project-{pid}.move", what=f"move of project {pid}"):
        stop_if_running(cfg, pid)
        snap_path = layout.snapshot_path(cfg, pid, name)
        before = btrfs.show(str(snap_path)).uuid if snap_path.is_dir() and not proc.DRY_RUN else None
        take_move_snapshot(cfg, pid, name)
        uuid = "$MOVE_SNAPSHOT_UUID" if proc.DRY_RUN else btrfs.show(str(snap_path)).uuid
        tag = move_tag(uuid)
        # only a snapshot an earlier run left (and kept: the project did not change) can have a backup
        reuse = _previous_backup(cfg, eng, pid, tag) if before and before == uuid else None
        if reuse:
            common.log(cfg, pid, "send", "backup", "ok", move_id=name, snapshot=name, detail=f"reused {reuse}")
            emit({"event": "done", "project_id": pid, "backup_id": reuse, "reused": True})
            return BackupSendResult(pid, "backup", name, reuse, True, None, None,
                                    round(time.monotonic() - start, 3), eng.name)
        common.log(cfg, pid, "send", "start", "ok", move_id=name, detail="backup")
        last = [0.0]

        def on_progress(p) -> None:
            now = time.monotonic()
            if now - last[0] >= 0.5:
                last[0] = now
                emit({"event": "progress", "snapshot": name, "bytes": p.bytes_done or 0, "total": p.bytes_total,
                      "rate": round((p.bytes_done or 0) / max(now - start, 1e-6))})

        try:
            res = jobs.create(cfg, pid, wait=True, progress=on_progress, snapshot=snap_path, tags=[tag])
        except CocalcError as exc:
            common.log(cfg, pid, "send", "failed", "failed", move_id=name, detail=exc.one_line())
            if by_hand and not proc.DRY_RUN:
                from cocalc_ctl.actions.move.release import release

                with contextlib.suppress(CocalcError):
                    release(cfg, pid, name, locked=True)
            raise
        # the full id: unambiguous in the hub row and on the destination's command line
        full_id = res.backup_id
        if not proc.DRY_RUN and len(full_id) < 64:  # restic 0.14 reports the short id
            full_id = repository.resolve_backup_id(cfg, eng, pid, res.backup_id)
        result = BackupSendResult(pid, "backup", name, full_id, False, res.bytes, res.data_added,
                                  round(time.monotonic() - start, 3), res.engine, res.persist_included)
        if proc.DRY_RUN:
            return result
        common.log(cfg, pid, "send", "backup", "ok", move_id=name, snapshot=name, nbytes=res.bytes,
                   detail=f"backup {full_id}")
        emit({"event": "done", "project_id": pid, "backup_id": full_id, "reused": False,
              "bytes": res.bytes, "seconds": result.seconds})
        return result


# -- destination ----------------------------------------------------------------------------------

def read_marker(path) -> dict | None:
    """Our JSON marker; a pipe/staged finalize's plain-text one reads as {} (not ours)."""
    try:
        text = path.read_text()
    except OSError:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _write_marker(incoming, doc: dict) -> None:
    path = incoming / common.FINALIZING_MARKER
    if proc.plan_only(f"# write {path} phase={doc['phase']} backup={doc['backup_id']}"):
        return
    incoming.mkdir(parents=True, exist_ok=True)
    os.chmod(incoming, 0o700)
    safepath.write_atomic(path, json.dumps(doc), mode=0o644)


def _finalized_here(cfg: Config, pid: str, backup_id: str) -> bool:
    if not host_db.db_path(cfg.data_dir).exists():
        return False
    with host_db.connect(cfg.data_dir) as conn:
        rows = conn.execute("SELECT move_id FROM move_log WHERE project_id=? AND role='finalize' AND step=? "
                            "AND status='ok'", (pid, FINALIZE_STEP)).fetchall()
    return any((r[0] or "").startswith(backup_id) for r in rows)  # an id or a prefix of it, as given


def _record_finalized(cfg: Config, pid: str, backup_id: str) -> None:
    """Not best effort (unlike common.log): a rerun decides "already finalized" from this row."""
    if proc.plan_only(f"# record in {host_db.db_path(cfg.data_dir)}: {pid} finalized from backup {backup_id}"):
        return
    with host_db.connect(cfg.data_dir) as conn:
        conn.execute("INSERT INTO move_log(project_id, move_id, role, step, status, detail, at) "
                     "VALUES (?,?,?,?,?,?,?)", (pid, backup_id, "finalize", FINALIZE_STEP, "ok",
                                                f"restored backup {backup_id}", host_db.now_iso()))


def _check_backup_id(backup_id: str) -> str:
    if backup_id != "latest" and not BACKUP_ID_RE.fullmatch(backup_id or ""):
        raise InvalidInput(f"invalid backup id {ids.quoted(backup_id)}",
                           hint="give the id `move send --mode backup` printed (or `latest`)")
    return backup_id


def _resolve(cfg: Config, eng, pid: str, backup_id: str) -> str:
    try:
        return repository.resolve_backup_id(cfg, eng, pid, backup_id)
    except NotFound as exc:
        raise NotFound(exc.message, hint=SAME_REPO_HINT) from None


def finalize(cfg: Config, project_id: str, backup_id: str, *, quota: int | None = None) -> FinalizeResult:
    from cocalc_ctl.actions.backup import restore

    pid = ids.project_id(project_id)
    backup_id = _check_backup_id(backup_id)
    require_pool(cfg)
    eng = repository.engine_for(cfg)
    incoming = layout.incoming_dir(cfg, pid)
    proj = layout.project_subvolume(cfg, pid)
    marker_path = incoming / common.FINALIZING_MARKER
    with common.receive_lock(cfg, pid):
        mark = read_marker(marker_path)
        if os.path.lexists(proj) and mark is None:
            if BACKUP_ID_RE.fullmatch(backup_id or "") and _finalized_here(cfg, pid, backup_id):
                return FinalizeResult(pid, str(proj), True, backup_id=backup_id)
            raise projects.AlreadyExists(f"project {pid} already exists on this host; refusing to restore over it",
                                         hint="it was moved here already, or delete it first")
        if mark == {} or common.inventory(incoming) or (incoming / common.MOVE_MARKER).exists():
            raise PreconditionFailed(f"a btrfs move of {pid} into this host is in progress (_incoming/{pid})",
                                     hint="finish it with `move finalize` or roll it back with `move abort`")
        # a full id is checked by the restore's own lookup (one repository open fewer)
        snap_id = backup_id if len(backup_id) == 64 else _resolve(cfg, eng, pid, backup_id)
        if mark and mark.get("backup_id") != snap_id:
            raise PreconditionFailed(f"an interrupted finalize of {pid} from backup {str(mark.get('backup_id'))[:8]} "
                                     "is here", hint="roll it back with `move abort` first")
        if mark and mark.get("phase") == "restoring" and eng.unlock():
            # the interrupted run's engine may have died holding a repository lock: drop stale ones
            proc.run(eng.unlock(), check=False, env=eng.env())
        if not mark or mark.get("phase") != "restored":
            _write_marker(incoming, {"backup_id": snap_id, "phase": "restoring"})
            # a half-restored project of ours (marker present) is simply restored again
            try:
                res = restore.restore(cfg, pid, snap_id, quota=quota)
            except NotFound as exc:  # the id is not in this host's repository: nothing was started
                if not mark and not proc.DRY_RUN:
                    drop_incoming_keep_marker(cfg, pid)
                raise NotFound(exc.message, hint=SAME_REPO_HINT) from None
            persist = res.persist_restored
            _write_marker(incoming, {"backup_id": snap_id, "phase": "restored"})
        else:
            persist = layout.persist_dir(cfg, pid).is_dir()
        if not proc.DRY_RUN and not backup_common.is_subvolume(proj):
            raise OperationFailed(f"project {pid} is missing after the restore of {snap_id[:8]}")
        if not proc.plan_only(f"# record project {pid} (stopped) in {host_db.db_path(cfg.data_dir)}"):
            with host_db.connect(cfg.data_dir) as conn:
                host_db.upsert_project(conn, pid, state="stopped", http_port=None, ssh_port=None)
        _record_finalized(cfg, pid, snap_id)
        drop_incoming_keep_marker(cfg, pid)
        proc.plan_only(f"rm -rf {incoming}")
        return FinalizeResult(pid, str(proj), False, None, [], persist, backup_id=snap_id)


def recover_restore(cfg: Config, pid: str) -> list[str]:
    """Finish or undo a restore a crash left (for `move abort` of a backup-mode finalize)."""
    from cocalc_ctl.actions.backup import restore

    with locks.hold(cfg.data_dir, backup_common.project_lock(pid), what=f"project {pid} (backup or restore running)"):
        return restore.recover(cfg, pid)
