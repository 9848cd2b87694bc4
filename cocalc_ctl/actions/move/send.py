"""`move send`: stream a project and all its snapshots to a peer's receiver.

Order: every snapshot oldest first by creation generation, then the final `move-<time>` snapshot.
Each is sent incrementally against the newest earlier sibling the receiver already holds (asked with
`list`), full only when there is none, and skipped when the receiver has it (so a rerun resumes).

Pipe mode: `btrfs send [-p P] SNAP | [lz4|zstd] | ssh … receive …`, kernel to kernel, with a splice
relay counting the bytes that go onto the wire. Staged mode: stream files `NNNN-<name>.btrfs[.lz4|.zst]`
plus `manifest.json` under `_streams/<uuid>/<move-id>/` (manifest written incomplete first, each file
marked complete once verified non-empty), `rsync --partial` to the same place on the peer, then one
`receive-file` per stream.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cocalc_ctl import ids, layout, locks, proc, safepath
from cocalc_ctl.actions.host.identity import host_id as own_host_id
from cocalc_ctl.actions.move import common, transport
from cocalc_ctl.actions.move.release import release
from cocalc_ctl.actions.move.source import stop_if_running, take_move_snapshot
from cocalc_ctl.actions.project.subvolume import existing_project, snapshot_names
from cocalc_ctl.config import Config, parse_size
from cocalc_ctl.errors import CocalcError, InvalidInput, OperationFailed, PreconditionFailed
from cocalc_ctl.state import host_db
from cocalc_ctl.tools import btrfs, compress
from cocalc_ctl.tools import rsync as rsync_tool

Progress = Callable[[dict], None]


@dataclass
class SentSnapshot:
    name: str
    kind: str
    parent: str | None
    bytes: int
    seconds: float
    skipped: bool = False


@dataclass
class SendResult:
    project_id: str
    destination: str
    mode: str
    compress: str
    move_snapshot: str
    snapshots: list[SentSnapshot] = field(default_factory=list)
    bytes_total: int = 0
    seconds: float = 0.0
    persist: bool = False


@dataclass
class _Snap:
    name: str
    uuid: str
    cgen: int
    kind: str


def _ordered_snapshots(cfg: Config, pid: str, move_name: str) -> list[_Snap]:
    listed = btrfs.list_below(str(layout.snapshots_dir(cfg, pid)))
    present = set(snapshot_names(cfg, pid)[0])
    out, move = [], None
    for s in listed:
        if "/" in s.path.split(".snapshots/", 1)[-1]:
            continue  # something nested inside a snapshot: not a snapshot of ours
        if s.name not in present:
            continue
        # btrfs send names a stream by the snapshot's received_uuid when it has one (a snapshot that
        # itself arrived by a move), else by its uuid: that is what the receiver will record
        snap = _Snap(s.name, s.received_uuid or s.uuid, s.cgen, "move" if s.name == move_name else "snapshot")
        if snap.kind == "move":
            move = snap
        else:
            out.append(snap)
    out.sort(key=lambda s: (s.cgen, s.name))
    if move is None and proc.DRY_RUN:  # not taken under --dry-run: plan with a placeholder uuid
        move = _Snap(move_name, "00000000-0000-0000-0000-000000000000", 1 << 62, "move")
    if move is None:
        raise OperationFailed(f"move snapshot {move_name} is missing")
    return [*out, move]


def _remote(cfg: Config, sess: transport.PeerSession, words: list[str]) -> list[str]:
    """The receiver command line: `ticket <T>` first (the hub's authority for this move), then `words`."""
    return sess.command([*(["ticket", sess.ticket] if sess.ticket else []), *words])


def remote_list(cfg: Config, sess: transport.PeerSession, pid: str) -> dict:
    res = proc.run(_remote(cfg, sess, ["list", pid]), mutates=False)
    try:
        return json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise OperationFailed(f"the receiver at {sess.peer.host}:{sess.peer.port} gave no inventory",
                              hint="check that its forced command is `cocalc-ctl move recv`") from None


def _throttle(rate: int | None, start: float) -> Callable[[int], None] | None:
    if not rate:
        return None

    def on_bytes(total: int) -> None:  # runs in the splice relay thread: sleeping there paces the pipe
        ahead = total / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)

    return on_bytes


def send(cfg: Config, project_id: str, to: str | None, *, mode: str | None = None, codec: str | None = None,
         bwlimit: str | None = None, snapshot: str | None = None, progress: Progress | None = None,
         ticket: str | None = None):
    """Send a project to a peer (pipe, staged) or back it up for one (backup). With `ticket` (always
    over ssh: `move host-step` requires it) the hub's ticket must name this host as the source of a
    `send` of this project, mode and snapshot, and it is passed on to the destination, which checks
    it again; without one (a root operator here) the destination refuses the push."""
    mode = mode or cfg["move.mode"]
    if ticket is not None:
        snapshot = _ticket_snapshot(cfg, ticket, project_id, mode, snapshot)
    if mode == "backup":  # no peer: the destination restores from the shared repository
        return _send_backup(cfg, project_id, to, codec, bwlimit, snapshot, progress, by_hand=ticket is None)
    if not to:
        raise InvalidInput(f"--mode {mode} needs --to btrfs-<this-host-uuid>@HOST:PORT")
    pid = existing_project(cfg, project_id)
    peer = _receiver_peer(cfg, to)
    codec = codec or cfg["move.compress"]
    if mode not in ("pipe", "staged") or codec not in compress.CODECS:
        raise InvalidInput(f"invalid mode/compression {mode}/{codec}", hint="mode pipe|staged|backup, compress none|lz4|zstd")
    rate = parse_size(bwlimit) if bwlimit else None
    name = ids.snapshot_name(snapshot) if snapshot else common.now_name()
    emit = progress or (lambda ev: None)
    start = time.monotonic()
    with locks.hold(cfg.data_dir, f"project-{pid}.move", what=f"move of project {pid}"), \
            transport.PeerSession(cfg, peer, ticket=ticket) as sess:
        stop_if_running(cfg, pid)
        inv = remote_list(cfg, sess, pid)
        _begin(cfg, pid, peer, inv, name, f"{mode}/{codec}")
        if proc.DRY_RUN and mode == "staged":
            proc.plan_only(f"# staged: btrfs send each snapshot into {layout.streams_dir(cfg, pid) / name}/, "
                           f"rsync --partial it to {peer.spec}, then receive-file each")
            return SendResult(pid, peer.spec, mode, codec, name)
        result = SendResult(pid, peer.spec, mode, codec, name)
        try:
            _check_space(cfg, pid, inv)
            snaps = _ordered_snapshots(cfg, pid, name)
            held = {r["received_uuid"] for r in inv.get("received", [])}
            _transfer(cfg, sess, pid, name, snaps, held, codec, rate, bwlimit, result, emit, inv)
            if proc.DRY_RUN:
                return result
            _check_received(cfg, sess, pid, snaps, name)
        except CocalcError:
            _release_by_hand(cfg, pid, name, ticket)
            raise
        result.seconds = time.monotonic() - start
        common.log(cfg, pid, "send", "done", "ok", move_id=name, nbytes=result.bytes_total)
        emit({"event": "done", "project_id": pid, "bytes": result.bytes_total, "seconds": round(result.seconds, 3)})
        return result


def _release_by_hand(cfg: Config, pid: str, name: str, ticket: str | None) -> None:
    """A send run by hand (no hub ticket) that fails removes its own move snapshot and stream files
    (a rerun takes them again; what the destination holds is still skipped). A send of the hub's worker
    keeps them for its next attempt: the worker releases them once it marks the move failed."""
    if ticket is not None or proc.DRY_RUN:
        return
    try:
        release(cfg, pid, name, locked=True)
    except CocalcError:
        pass  # the send's own error is the one to report; the next send drops what is left


def _ticket_snapshot(cfg: Config, ticket: str, project_id: str, mode: str, snapshot: str | None) -> str | None:
    """Check the hub's ticket for this send; the move snapshot it names."""
    from cocalc_ctl.actions.move import authority

    t = authority.check(cfg, ticket, verb="send", project_id=ids.project_id(project_id), mode=mode,
                        snapshot=ids.snapshot_name(snapshot) if snapshot else None)
    return t.snapshot


def _send_backup(cfg: Config, project_id: str, to, codec, bwlimit, snapshot: str | None, progress, *,
                 by_hand: bool):
    if to or codec or bwlimit:
        raise InvalidInput("--mode backup takes no --to, --compress or --bwlimit",
                           hint="the destination restores the backup with `move finalize PROJECT --from-backup ID`")
    from cocalc_ctl.actions.move import backup_mode

    return backup_mode.send(cfg, project_id, snapshot=snapshot, progress=progress, by_hand=by_hand)


def _begin(cfg: Config, pid: str, peer: transport.Peer, inv: dict, name: str, how: str) -> None:
    """Refuse a project the peer has already, log the start and take the move snapshot `name`."""
    if inv.get("project_exists"):
        raise PreconditionFailed(f"project {pid} already exists on {peer.host}",
                                 hint="it was moved already; run `move cleanup` here if the hub says done")
    # logged before the snapshot exists: a move that fails from here on is known by its name
    common.log(cfg, pid, "send", "start", "ok", move_id=name, detail=f"{how} to {peer.spec}")
    drop_earlier_move_snapshots(cfg, pid, keep=name)
    take_move_snapshot(cfg, pid, name)


def _transfer(cfg, sess, pid, name, snaps, held, codec, rate, bwlimit, result, emit, inv) -> None:
    """Stream the persist store and every snapshot the peer lacks (pipe), or stage them (staged); a
    failure is logged, and a pipe that ran the peer out of space is aborted there."""
    try:
        if result.mode == "pipe":
            _send_persist(cfg, sess, pid, result, inv)
            for snap in snaps:
                _send_pipe(cfg, sess, pid, snap, snaps, held, codec, rate, result, emit)
        else:
            _send_staged(cfg, sess, pid, name, snaps, held, codec, bwlimit, result, emit, inv)
    except CocalcError as exc:
        common.log(cfg, pid, "send", "failed", "failed", move_id=name, detail=exc.one_line())
        if result.mode == "pipe" and _out_of_space(exc):
            _remote_abort(cfg, sess, pid)
        raise


def _receiver_peer(cfg: Config, to: str) -> transport.Peer:
    """The destination of a push: the receiver login `btrfs-<this host>` at HOST:PORT."""
    peer = transport.parse_peer(to)
    me = own_host_id(cfg)
    if peer.user.startswith("project-host-"):
        raise InvalidInput("a move goes to the receiver user btrfs-<this-host-uuid>, not project-host-…")
    if me and peer.user.startswith("btrfs-") and peer.user != f"btrfs-{me}":
        raise InvalidInput(f"destination user {peer.user} does not name this host ({me})",
                           hint=f"use btrfs-{me}@HOST:PORT")
    return peer


def _check_received(cfg: Config, sess: transport.PeerSession, pid: str, snaps: list, name: str) -> None:
    """After the send, the receiver must hold every snapshot sent and the move snapshot."""
    final = remote_list(cfg, sess, pid)
    missing = [s.name for s in snaps if s.uuid not in {r["received_uuid"] for r in final.get("received", [])}]
    if missing or final.get("move_snapshot") != name:
        raise OperationFailed(f"the receiver does not hold {', '.join(missing) or name} after the send")


def drop_earlier_move_snapshots(cfg: Config, pid: str, *, keep: str) -> list[str]:
    """Delete the move snapshots (and staged stream files) that earlier sends of this project left
    here when they failed or were cancelled: they are not snapshots of the project, and the next
    move would send them as ordinary ones. A send retried under its own name (`keep`) reuses its
    snapshot and stream files instead. A locked snapshot is left alone."""
    try:
        with host_db.connect(cfg.data_dir) as conn:
            earlier = {r[0] for r in conn.execute(
                "SELECT DISTINCT move_id FROM move_log WHERE project_id=? AND role='send' AND move_id IS NOT NULL",
                (pid,))}
    except sqlite3.Error:
        return []
    earlier.discard(keep)
    names, locked = snapshot_names(cfg, pid)
    dropped = []
    for old in sorted(earlier & set(names) - set(locked)):
        proc.run(btrfs.subvolume_delete(str(layout.snapshot_path(cfg, pid, old))))
        dropped.append(old)
        common.log(cfg, pid, "send", "drop-old-move-snapshot", "ok", move_id=keep, snapshot=old)
    for old in earlier:
        stale = layout.streams_dir(cfg, pid) / old
        if os.path.isdir(stale) and not os.path.islink(stale) and not proc.plan_only(f"rm -rf {stale}"):
            shutil.rmtree(stale, ignore_errors=True)
    return dropped


def _out_of_space(exc: CocalcError) -> bool:
    text = (getattr(exc, "stderr_tail", "") or "") + exc.message
    return "No space left" in text or "ENOSPC" in text or "too small" in text


def _remote_abort(cfg: Config, sess: transport.PeerSession, pid: str) -> None:
    proc.run(_remote(cfg, sess, ["abort", pid]), check=False)


def _check_space(cfg: Config, pid: str, inv: dict) -> None:
    free = inv.get("free_bytes")
    if not free:
        return
    sub = btrfs.show(str(layout.project_subvolume(cfg, pid)))
    q = btrfs.qgroups(str(layout.project_subvolume(cfg, pid))).get(f"0/{sub.subvolume_id}")
    if q and q.referenced > free:
        raise PreconditionFailed(f"destination has {free} bytes free, project {pid} needs at least {q.referenced}",
                                 hint="choose a bigger destination or free space there")


def _parent_for(snap: _Snap, snaps: list[_Snap], held: set[str]) -> _Snap | None:
    idx = snaps.index(snap)
    for earlier in reversed(snaps[:idx]):
        if earlier.uuid in held:
            return earlier
    return None


def _snap_path(cfg: Config, pid: str, snap: _Snap) -> str:
    return str(layout.snapshot_path(cfg, pid, snap.name))


def _send_argv(cfg: Config, pid: str, snap: _Snap, parent: _Snap | None) -> list[str]:
    return ["btrfs", "send", "-q", *(["-p", _snap_path(cfg, pid, parent)] if parent else []), _snap_path(cfg, pid, snap)]


def _send_pipe(cfg, sess, pid, snap, snaps, held, codec, rate, result, emit) -> None:
    if snap.uuid in held:
        result.snapshots.append(SentSnapshot(snap.name, snap.kind, None, 0, 0.0, skipped=True))
        return
    parent = _parent_for(snap, snaps, held)
    words = ["receive", pid, snap.name, snap.kind, codec, snap.uuid, *([parent.uuid] if parent else [])]
    stages = [proc.Stage(_send_argv(cfg, pid, snap, parent))]
    comp = compress.compressor(codec)
    if comp:
        stages.append(proc.Stage(comp))
    stages.append(proc.Stage(_remote(cfg, sess, words)))
    t0 = time.monotonic()
    throttle = _throttle(rate, t0)
    last = [0.0]

    def on_bytes(total: int) -> None:
        if throttle:
            throttle(total)
        now = time.monotonic()
        if now - last[0] >= 0.5:
            last[0] = now
            emit({"event": "progress", "snapshot": snap.name, "bytes": total,
                  "rate": round(total / max(now - t0, 1e-6))})

    res = proc.pipeline(stages, count_after=[len(stages) - 2], on_progress=on_bytes)
    n = res.bytes_counted[0] if res.bytes_counted else 0
    held.add(snap.uuid)
    sent = SentSnapshot(snap.name, snap.kind, parent.name if parent else None, n, time.monotonic() - t0)
    result.snapshots.append(sent)
    result.bytes_total += n
    common.log(cfg, pid, "send", "snapshot", "ok", move_id=result.move_snapshot, snapshot=snap.name,
               parent=sent.parent, nbytes=n)
    emit({"event": "sent", "snapshot": snap.name, "parent": sent.parent, "bytes": n,
          "seconds": round(sent.seconds, 3)})


def _send_persist(cfg, sess, pid, result, inv) -> None:
    pdir = layout.persist_dir(cfg, pid)
    if not pdir.is_dir() or inv.get("persist"):
        result.persist = pdir.is_dir()
        return
    proc.pipeline([proc.Stage(["tar", "-C", str(pdir), "--numeric-owner", "-cf", "-", "."]),
                   proc.Stage(_remote(cfg, sess, ["persist", pid]))])
    result.persist = True


# -- staged mode ---------------------------------------------------------------------------------

def _write_manifest(path: Path, doc: dict) -> None:
    safepath.write_atomic(path, json.dumps(doc, indent=2), mode=0o644)


def _send_staged(cfg, sess, pid, move_id, snaps, held, codec, bwlimit, result, emit, inv) -> None:
    """Staged mode: stream files + manifest under `_streams/`, rsync them over, receive each there."""
    sdir = layout.streams_dir(cfg, pid) / move_id
    sdir.mkdir(parents=True, exist_ok=True)
    os.chmod(layout.streams_dir(cfg, pid).parent, 0o700)
    mpath = sdir / "manifest.json"
    manifest = _plan_stream_files(cfg, pid, move_id, mpath, snaps, held, codec, result)
    _write_stream_files(cfg, pid, sdir, mpath, manifest, snaps, codec, emit)
    files = manifest["files"]
    remote_dir = f"_streams/{pid}/{move_id}/"
    t0 = time.monotonic()
    proc.run(rsync_tool.push_dir(str(sdir), f"{sess.peer.user}@{sess.peer.host}:{remote_dir}",
                                 sess.options(), bwlimit=_rsync_bwlimit(bwlimit),
                                 rsync_path=f"ticket {sess.ticket} rsync" if sess.ticket else None))
    emit({"event": "copied", "files": len(files), "seconds": round(time.monotonic() - t0, 3)})
    _send_persist(cfg, sess, pid, result, inv)
    _receive_stream_files(cfg, sess, pid, move_id, files, held, result, emit)
    shutil.rmtree(sdir, ignore_errors=True)
    try:
        layout.streams_dir(cfg, pid).rmdir()
    except OSError:
        pass


def _plan_stream_files(cfg, pid, move_id, mpath, snaps, held, codec, result) -> dict:
    """The manifest of the stream files to make (each with its parent), written incomplete first as a
    raw target would; files an earlier, interrupted run completed are kept. Snapshots the receiver
    already holds are skipped (and reported so)."""
    sdir = mpath.parent
    try:
        old = json.loads(mpath.read_text())
    except (OSError, ValueError):
        old = {}
    old_files = {e["file"]: e for e in old.get("files", [])}
    plan_held = set(held)
    files = []
    for i, snap in enumerate(snaps, start=1):
        if snap.uuid in held:
            result.snapshots.append(SentSnapshot(snap.name, snap.kind, None, 0, 0.0, skipped=True))
            continue
        parent = _parent_for(snap, snaps, plan_held)
        plan_held.add(snap.uuid)
        fname = f"{i:04d}-{snap.name}.btrfs{compress.SUFFIX[codec]}"
        entry = {"file": fname, "name": snap.name, "kind": snap.kind, "codec": codec, "uuid": snap.uuid,
                 "parent_uuid": parent.uuid if parent else None, "parent": parent.name if parent else None,
                 "size": None, "complete": False}
        prev = old_files.get(fname)
        if prev and prev.get("complete") and prev.get("uuid") == snap.uuid and \
                prev.get("parent_uuid") == entry["parent_uuid"] and (sdir / fname).is_file() and \
                (sdir / fname).stat().st_size == prev.get("size"):
            entry.update(size=prev["size"], complete=True)  # made by an earlier, interrupted run
        files.append(entry)
    manifest = {"version": 1, "project_id": pid, "move_id": move_id, "source_host": own_host_id(cfg),
                "complete": False, "files": files}
    _write_manifest(mpath, manifest)  # incomplete first, as a raw target would
    return manifest


def _write_stream_files(cfg, pid, sdir, mpath, manifest, snaps, codec, emit) -> None:
    """`btrfs send -f` (through the compressor) each file the manifest still lacks; the manifest is
    rewritten after each one and marked complete at the end."""
    for entry in manifest["files"]:
        if entry["complete"]:
            continue
        snap = next(s for s in snaps if s.name == entry["name"])
        parent = next((s for s in snaps if s.name == entry["parent"]), None)
        stages = [proc.Stage(_send_argv(cfg, pid, snap, parent))]
        comp = compress.compressor(codec)
        if comp:
            stages.append(proc.Stage(comp))
        stages[-1].stdout_path = str(sdir / entry["file"])
        t0 = time.monotonic()
        proc.pipeline(stages)
        size = (sdir / entry["file"]).stat().st_size
        if size == 0:
            raise OperationFailed(f"stream file {entry['file']} is empty")
        entry.update(size=size, complete=True)
        _write_manifest(mpath, manifest)
        emit({"event": "staged", "snapshot": snap.name, "file": entry["file"], "bytes": size,
              "seconds": round(time.monotonic() - t0, 3)})
    manifest["complete"] = True
    _write_manifest(mpath, manifest)


def _receive_stream_files(cfg, sess, pid, move_id, files, held, result, emit) -> None:
    """Have the receiver receive each copied stream file, oldest first."""
    for entry in files:
        t1 = time.monotonic()
        proc.run(_remote(cfg, sess, ["receive-file", pid, move_id, entry["file"]]))
        result.snapshots.append(SentSnapshot(entry["name"], entry["kind"], entry["parent"], entry["size"],
                                             time.monotonic() - t1))
        result.bytes_total += entry["size"]
        held.add(entry["uuid"])
        common.log(cfg, pid, "send", "snapshot", "ok", move_id=move_id, snapshot=entry["name"],
                   parent=entry["parent"], nbytes=entry["size"])
        emit({"event": "sent", "snapshot": entry["name"], "parent": entry["parent"], "bytes": entry["size"]})


def _rsync_bwlimit(bwlimit: str | None) -> str | None:
    if not bwlimit:
        return None
    return str(max(1, parse_size(bwlimit) // 1024))  # rsync counts KiB/s
