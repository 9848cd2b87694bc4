"""`move recv --from <src-host-uuid>`: the destination's forced command.

sshd runs it for the source host's key with the client's command in `SSH_ORIGINAL_COMMAND`. Only
this grammar is accepted, every word validated, anything else refused (logged, non-zero exit,
nothing touched). Every command starts with `ticket <T> `: a move ticket signed by the hub that
names this host as the destination, the logged-in peer (`--from`) as the source, and `send` among
its verbs (see tickets.py); without one nothing runs, not even `list`:

    list <project>                                   JSON inventory of _incoming/<project>
    receive <project> <name> snapshot|move none|lz4|zstd <src-uuid> [<parent-src-uuid>]
                                                     a btrfs send stream on stdin
    receive-file <project> <move-id> <file>          receive a staged stream file
    persist <project>                                a tar of the persist store on stdin
    abort <project>                                  drop _incoming/<project> and _streams/<project>
    rsync --server <flags> . _streams/<project>/<move-id>/     (what our rsync client sends, with
                                                     `--rsync-path="ticket <T> rsync"`)

Receives land in `<btrfs_root>/_incoming/<project>/`; each one is verified (read-only,
received_uuid equal to the announced source uuid, parent as announced) and a garbled one is deleted
at once. A project that already exists here is never received into. The first receiving step claims
`_incoming/<project>` for its source host (`.source`); a receive that fails and leaves nothing there
releases the claim again, so a failed attempt never blocks moves of the project from other hosts.
`abort` of a project that lives here (and has nothing incoming) is refused, never reported as done.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tarfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cocalc_ctl import ids, layout, proc
from cocalc_ctl.actions.host.identity import host_id as own_host_id
from cocalc_ctl.actions.move import common
from cocalc_ctl.config import Config
from cocalc_ctl.errors import CocalcError, InvalidInput, NotFound, OperationFailed
from cocalc_ctl.state import host_db
from cocalc_ctl.tools import btrfs, compress
from cocalc_ctl.tools import rsync as rsync_tool

MAX_COMMAND = 2048
_SAFE_COMMAND = re.compile(r"[A-Za-z0-9._:+@/= -]+", re.ASCII)
_STREAM_FILE = re.compile(r"(\d{4})-(.+)\.btrfs(\.lz4|\.zst)?", re.ASCII)
MANIFEST = "manifest.json"


class Refused(InvalidInput):
    """A command outside the grammar, or one this host will not run for this peer."""


@dataclass
class Request:
    verb: str
    project_id: str
    args: list[str]
    ticket: str | None = None
    admitted: object = None  # the checked tickets.Ticket


def parse(command: str | None) -> Request:
    """Validate SSH_ORIGINAL_COMMAND against the grammar; raise Refused otherwise."""
    if not command:
        raise Refused("no command given", hint="this key only runs the move receiver")
    if len(command) > MAX_COMMAND or not _SAFE_COMMAND.fullmatch(command) or "  " in command \
            or command != command.strip():
        raise Refused(f"refused command {ids.quoted(command)}: characters outside the grammar")
    words = command.split(" ")
    ticket = None
    if len(words) >= 3 and words[0] == "ticket":
        ticket, words = words[1], words[2:]
    verb, rest = words[0], words[1:]
    if verb == "rsync":
        req = _parse_rsync(rest)
        req.ticket = ticket
        return req
    if verb not in ("list", "receive", "receive-file", "persist", "abort") or not rest:
        raise Refused(f"refused command {ids.quoted(command)}: unknown verb")
    try:
        pid = ids.project_id(rest[0])
    except InvalidInput:
        raise Refused(f"refused command: invalid project id {ids.quoted(rest[0])}") from None
    args = rest[1:]
    try:
        if verb in ("list", "persist", "abort"):
            if args:
                raise Refused(f"refused command: {verb} takes only a project id")
        elif verb == "receive":
            if len(args) not in (4, 5):
                raise Refused("refused command: receive <project> <name> snapshot|move <codec> <uuid> [<parent>]")
            ids.snapshot_name(args[0])
            if args[1] not in ("snapshot", "move") or args[2] not in compress.CODECS:
                raise Refused("refused command: bad receive kind or codec")
            for u in args[3:]:
                if not ids.is_uuid(u):
                    raise Refused(f"refused command: invalid uuid {ids.quoted(u)}")
        elif verb == "receive-file":
            if len(args) != 2:
                raise Refused("refused command: receive-file <project> <move-id> <file>")
            ids.snapshot_name(args[0])
            m = _STREAM_FILE.fullmatch(args[1])
            if not m:
                raise Refused(f"refused command: invalid stream file name {ids.quoted(args[1])}")
            ids.snapshot_name(m.group(2))
    except InvalidInput as exc:
        if isinstance(exc, Refused):
            raise
        raise Refused(f"refused command: {exc.message}") from None
    return Request(verb, pid, args, ticket)


def _parse_rsync(words: list[str]) -> Request:
    """Accept exactly what our own `rsync --partial` push sends; never `--sender` (a read)."""
    if len(words) < 4 or words[0] != "--server" or words[-2] != ".":
        raise Refused("refused command: unexpected rsync invocation")
    for w in words[1:-2]:
        if w in rsync_tool.SERVER_LONG_OPTIONS or re.fullmatch(r"--bwlimit=\d+", w):
            continue
        if re.fullmatch(rsync_tool.SERVER_SHORT_BUNDLE, w, re.ASCII):
            continue
        raise Refused(f"refused command: rsync option {ids.quoted(w)} is not allowed")
    m = re.fullmatch(r"_streams/([0-9a-f-]{36})/([^/]+)/", words[-1], re.ASCII)
    if not m or not ids.is_uuid(m.group(1)):
        raise Refused(f"refused command: rsync target {ids.quoted(words[-1])} is not a stream directory")
    try:
        ids.snapshot_name(m.group(2))
    except InvalidInput:
        raise Refused(f"refused command: invalid move id {ids.quoted(m.group(2))}") from None
    return Request("rsync", m.group(1), [*words[1:-2], m.group(2)])


# -- the receiver ----------------------------------------------------------------------------------

def serve(cfg: Config, source_host: str, command: str | None) -> int:
    """Run one forced-command request. Returns the exit code; refusals are logged to stderr and sqlite."""
    try:
        src = ids.host_id(source_host)
    except InvalidInput:
        return _refuse(cfg, None, f"invalid --from {ids.quoted(source_host)}", command)
    try:
        req = parse(command)
        _check_ticket(cfg, src, req)  # first: without the hub's ticket nothing here is told, not even what exists
        _check_peer(cfg, src, req)
    except InvalidInput as exc:  # Refused, TicketRefused
        return _refuse(cfg, None, exc.message, command)
    try:
        handler = {"list": _list, "receive": _receive, "receive-file": _receive_file, "persist": _persist,
                   "abort": _abort, "rsync": _rsync}[req.verb]
        handler(cfg, src, req)
    except Refused as exc:
        return _refuse(cfg, req.project_id, exc.message, command)
    except CocalcError as exc:
        common.log(cfg, req.project_id, "recv", req.verb, "failed", detail=exc.one_line())
        print(f"cocalc-ctl: error: {exc.one_line()}", file=sys.stderr, flush=True)
        return exc.exit_code
    return 0


def _refuse(cfg: Config, pid: str | None, message: str, command: str | None) -> int:
    shown = ids.quoted(command)
    print(f"cocalc-ctl: error: {message}", file=sys.stderr, flush=True)
    common.log(cfg, pid or "-", "recv", "refused", "refused", detail=f"{message}; command={shown}")
    return Refused.exit_code


def _check_peer(cfg: Config, src: str, req: Request) -> None:
    me = own_host_id(cfg)
    if me and src == me:
        raise Refused("refused: a host does not move projects to itself")
    if host_db.db_path(cfg.data_dir).exists():
        with host_db.connect(cfg.data_dir) as conn:
            row = conn.execute("SELECT trusted FROM project_hosts WHERE host_id=?", (src,)).fetchone()
        if row is not None and not row["trusted"]:
            raise Refused(f"refused: host {src} is not trusted")
    if req.verb in ("receive", "receive-file", "persist", "rsync") and \
            os.path.lexists(layout.project_subvolume(cfg, req.project_id)):
        raise Refused(f"refused: project {req.project_id} already exists on this host")
    marker = layout.incoming_dir(cfg, req.project_id) / common.SOURCE_MARKER
    try:
        owner = marker.read_text().strip()
    except OSError:
        owner = None
    if owner and owner != src:
        raise Refused(f"refused: incoming project {req.project_id} belongs to another source host")


def _check_ticket(cfg: Config, src: str, req: Request) -> None:
    """The hub authorised this push: a `send` ticket for this project from the logged-in peer to this
    host; a staged move's stream directory is the ticket's move snapshot."""
    from cocalc_ctl.actions.move import authority

    if req.ticket is None:
        raise Refused("refused: the receiver needs `ticket <T>` before every command",
                      hint="only a move the hub scheduled can push streams here")
    snapshot = None
    if req.verb == "rsync":
        snapshot = req.args[-1]
    elif req.verb == "receive-file":
        snapshot = req.args[0]
    req.admitted = authority.check(cfg, req.ticket, verb="send", project_id=req.project_id, peer=src,
                                   snapshot=snapshot)
    if req.admitted.mode not in ("pipe", "staged"):  # a backup-mode move pushes nothing to this host
        raise Refused(f"refused: the ticket is for a {req.admitted.mode}-mode move, which sends no streams here")


def _still_open(cfg: Config, req: Request) -> None:
    """Under the receive lock, again: a finalize or abort may have ended the move here while this
    command waited for the lock (its ticket was admitted before); then nothing is received."""
    from contextlib import closing

    from cocalc_ctl.state import hub_keys as hub_keys_db

    if req.verb != "list" and os.path.lexists(layout.project_subvolume(cfg, req.project_id)):
        raise Refused(f"refused: project {req.project_id} already exists on this host")
    t = req.admitted
    if t is None or proc.DRY_RUN or not host_db.db_path(cfg.data_dir).exists():
        return
    with closing(host_db.connect(cfg.data_dir)) as conn:
        row = hub_keys_db.ledger(conn, t.move_id)
    if row is not None and row.finished_by:
        raise Refused(f"refused: the move of {req.project_id} ended here ({row.finished_by})")


def _claim_incoming(cfg: Config, src: str, req: Request) -> Path:
    """Under the receive lock: the incoming dir of this source's move (created on first use)."""
    _still_open(cfg, req)
    pid = req.project_id
    incoming = layout.incoming_dir(cfg, pid)
    incoming.mkdir(parents=True, exist_ok=True)
    os.chmod(incoming.parent, 0o700)
    marker = incoming / common.SOURCE_MARKER
    if not marker.exists():
        marker.write_text(src + "\n")
    return incoming


def _list(cfg: Config, src: str, req: Request) -> None:
    incoming = layout.incoming_dir(cfg, req.project_id)
    with common.receive_lock(cfg, req.project_id):
        _still_open(cfg, req)
        have = common.inventory(incoming)
        for r in have:
            if not r.complete:  # a receive that died half way: never a parent, never finalized
                proc.run(btrfs.subvolume_delete(str(incoming / r.name)), check=False)
        have = [r for r in have if r.complete]
    move = (incoming / common.MOVE_MARKER)
    doc = {"project_id": req.project_id,
           "project_exists": os.path.lexists(layout.project_subvolume(cfg, req.project_id)),
           "received": [{"name": r.name, "received_uuid": r.received_uuid} for r in have],
           "move_snapshot": move.read_text().strip() if move.exists() else None,
           "persist": (incoming / common.PERSIST_DIR).is_dir(),
           "free_bytes": _free_bytes(cfg)}
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def _free_bytes(cfg: Config) -> int | None:
    try:
        return btrfs.usage(str(cfg.btrfs_root)).free_estimated
    except CocalcError:
        return None


def _receive(cfg: Config, src: str, req: Request) -> None:
    name, kind, codec, src_uuid = req.args[:4]
    parent = req.args[4] if len(req.args) > 4 else None
    with _release_on_failure(cfg, req.project_id, layout.incoming_dir(cfg, req.project_id)):
        _receive_stream(cfg, src, req, name, kind, codec, src_uuid, parent, stdin_path=None)


def _receive_stream(cfg: Config, src: str, req: Request, name: str, kind: str, codec: str, src_uuid: str,
                    parent: str | None, *, stdin_path: str | None) -> None:
    pid = req.project_id
    with common.receive_lock(cfg, pid):
        incoming = _claim_incoming(cfg, src, req)
        before = {r.name: r for r in common.inventory(incoming)}
        done = before.get(name)
        if done and done.complete and done.received_uuid == src_uuid:
            _drain_stdin(stdin_path)
            return  # already here (a resent stream after a lost reply)
        for r in before.values():
            if not r.complete:
                proc.run(btrfs.subvolume_delete(str(incoming / r.name)), check=False)
        if done and kind == "move" and done.complete:
            # an earlier attempt's move snapshot, superseded because the project changed since
            proc.run(btrfs.subvolume_delete(str(incoming / name)))
            (incoming / common.MOVE_MARKER).unlink(missing_ok=True)
            before.pop(name)
        if os.path.lexists(incoming / name):
            raise Refused(f"refused: {name} already exists in incoming with another source")
        parent_local = None
        if parent:
            parent_local = next((r for r in before.values() if r.complete and r.received_uuid == parent), None)
            if parent_local is None:
                raise Refused(f"refused: parent {parent} of {name} has not been received here")
        stages = []
        dec = compress.decompressor(codec)
        if dec:
            stages.append(proc.Stage(dec, stdin_path=stdin_path, stdin_fd=None if stdin_path else 0))
        recv_argv = ["btrfs", "receive", str(incoming)]
        if stages:
            stages.append(proc.Stage(recv_argv))
        else:
            stages.append(proc.Stage(recv_argv, stdin_path=stdin_path, stdin_fd=None if stdin_path else 0))
        try:
            proc.pipeline(stages)
            got = common.inventory(incoming)
            new = [r for r in got if r.name not in before]
            mine = next((r for r in new if r.name == name), None)
            if mine is None or not mine.complete:
                raise OperationFailed(f"received stream did not produce a complete subvolume {name}")
            if mine.received_uuid != src_uuid:
                raise OperationFailed(f"received {name} has received_uuid {mine.received_uuid}, expected {src_uuid}")
            if (mine.parent_uuid != parent_local.uuid) if parent_local is not None else mine.parent_uuid:
                raise OperationFailed(f"received {name} is not based on the announced parent")
            if len(new) != 1:
                raise OperationFailed("the stream created unexpected subvolumes")
        except BaseException as exc:
            # a garbled or partial receive is deleted at once: nothing half-received stays behind
            for r in common.inventory(incoming):
                if r.name not in before or not r.complete:
                    proc.run(btrfs.subvolume_delete(str(incoming / r.name)), check=False)
            common.log(cfg, pid, "recv", "receive", "failed", snapshot=name, parent=parent,
                       detail=getattr(exc, "message", str(exc)))
            raise
        if kind == "move":
            (incoming / common.MOVE_MARKER).write_text(name + "\n")
        common.log(cfg, pid, "recv", "receive", "ok", snapshot=name, parent=parent)


def _release_if_empty(cfg: Config, pid: str, incoming: Path) -> bool:
    """After a failed receive (under the receive lock): when `_incoming/<pid>` holds nothing of value —
    no received subvolume, no persist store, no move or finalize marker, no staged streams — remove it,
    releasing the source's claim so that a failed attempt never blocks moves of the project from other
    hosts. Returns whether it was released."""
    try:
        names = set(os.listdir(incoming))
    except FileNotFoundError:
        return False
    if names - {common.SOURCE_MARKER} or os.path.lexists(layout.streams_dir(cfg, pid)):
        return False
    try:
        (incoming / common.SOURCE_MARKER).unlink(missing_ok=True)
        incoming.rmdir()
    except OSError:
        return False
    return True


@contextmanager
def _release_on_failure(cfg: Config, pid: str, incoming: Path):
    """A receive that fails (refused, garbled, interrupted) releases the claim it made, if nothing else
    holds it."""
    try:
        yield
    except BaseException:
        with common.receive_lock(cfg, pid):
            if _release_if_empty(cfg, pid, incoming):
                common.log(cfg, pid, "recv", "release", "ok", detail="failed receive: claim released")
        raise


def refuse_live_project(cfg: Config, pid: str) -> None:
    """`abort` rolls back an incoming move; a project that lives here with nothing incoming is no such
    thing, and saying "aborted" for it would hide a wrong host or a wrong id."""
    incoming = layout.incoming_dir(cfg, pid)
    if os.path.lexists(layout.project_subvolume(cfg, pid)) and not os.path.lexists(incoming):
        raise NotFound(f"project {pid} is a live project on this host, not an incoming move: nothing to abort",
                       hint="check the project id and the host; `project delete` removes a project")


def _drain_stdin(stdin_path: str | None) -> None:
    if stdin_path is None:
        while os.read(0, 1 << 20):
            pass


def _stream_dir(cfg: Config, pid: str, move_id: str) -> Path:
    return layout.streams_dir(cfg, pid) / move_id


def _receive_file(cfg: Config, src: str, req: Request) -> None:
    move_id, fname = req.args
    sdir = _stream_dir(cfg, req.project_id, move_id)
    try:
        manifest = json.loads((sdir / MANIFEST).read_text())
    except (OSError, ValueError):
        raise NotFound(f"no readable manifest for move {move_id} of {req.project_id}") from None
    entry = next((e for e in manifest.get("files", []) if e.get("file") == fname), None)
    if entry is None or not entry.get("complete"):
        raise Refused(f"refused: {fname} is not a complete file of the manifest")
    path = sdir / fname
    if not path.is_file() or path.stat().st_size != entry.get("size"):
        raise OperationFailed(f"stream file {fname} is missing or has the wrong size (copy incomplete)",
                              hint="rerun the send: rsync --partial resumes")
    name, kind, codec = entry["name"], entry["kind"], entry["codec"]
    ids.snapshot_name(name)
    if codec not in compress.CODECS or kind not in ("snapshot", "move") or not ids.is_uuid(entry.get("uuid")):
        raise Refused("refused: manifest entry is malformed")
    parent = entry.get("parent_uuid")
    if parent is not None and not ids.is_uuid(parent):
        raise Refused("refused: manifest entry is malformed")
    with _release_on_failure(cfg, req.project_id, layout.incoming_dir(cfg, req.project_id)):
        _receive_stream(cfg, src, req, name, kind, codec, entry["uuid"], parent, stdin_path=str(path))


def _persist(cfg: Config, src: str, req: Request) -> None:
    with common.receive_lock(cfg, req.project_id):
        incoming = _claim_incoming(cfg, src, req)
        tmp = incoming / (common.PERSIST_DIR + ".tmp")
        final = incoming / common.PERSIST_DIR
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o700)
        try:
            with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as tar:
                tar.extractall(tmp, filter="data")  # no absolute paths, no .., no devices, no links out
        except (tarfile.TarError, OSError) as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            _release_if_empty(cfg, req.project_id, incoming)
            raise OperationFailed(f"persist store archive is invalid: {exc}") from None
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
    common.log(cfg, req.project_id, "recv", "persist", "ok")


def _abort(cfg: Config, src: str, req: Request) -> None:
    with common.receive_lock(cfg, req.project_id):
        refuse_live_project(cfg, req.project_id)
        drop_incoming(cfg, req.project_id)
    common.log(cfg, req.project_id, "recv", "abort", "ok")


def drop_incoming(cfg: Config, pid: str) -> list[str]:
    """Delete `_incoming/<pid>` (its subvolumes first) and `_streams/<pid>`; returns what was deleted."""
    incoming = layout.incoming_dir(cfg, pid)
    gone = []
    for r in common.inventory(incoming):
        proc.run(btrfs.subvolume_delete(str(incoming / r.name)))
        gone.append(r.name)
    for d in (incoming, layout.streams_dir(cfg, pid)):
        if d.exists() and not proc.plan_only(f"rm -rf {d}"):
            shutil.rmtree(d)
    return gone


def drop_incoming_keep_marker(cfg: Config, pid: str) -> None:
    """Delete `_incoming/<pid>` with the finalizing marker last, so a crash here is resumed, not refused."""
    incoming = layout.incoming_dir(cfg, pid)
    if proc.DRY_RUN:
        drop_incoming(cfg, pid)
        return
    for r in common.inventory(incoming):
        proc.run(btrfs.subvolume_delete(str(incoming / r.name)))
    shutil.rmtree(layout.streams_dir(cfg, pid), ignore_errors=True)
    if incoming.exists():
        for e in os.scandir(incoming):
            if e.name == common.FINALIZING_MARKER:
                continue
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(e.path)
            else:
                os.unlink(e.path)
        (incoming / common.FINALIZING_MARKER).unlink(missing_ok=True)
        incoming.rmdir()


def _rsync(cfg: Config, src: str, req: Request) -> None:
    *flags, move_id = req.args
    # under the receive lock: a server left over from a killed send must not write the same
    # partial files as the rerun's (it ends once its connection is gone; the rerun waits for it)
    with common.receive_lock(cfg, req.project_id):
        _claim_incoming(cfg, src, req)
        sdir = _stream_dir(cfg, req.project_id, move_id)
        sdir.mkdir(parents=True, exist_ok=True)
        os.chmod(layout.streams_dir(cfg, req.project_id).parent, 0o700)
        # stdin/stdout are the rsync protocol: the server reads and writes them directly
        proc.pipeline([proc.Stage(["rsync", "--server", *flags, ".", str(sdir) + "/"], stdin_fd=0, stdout_fd=1)])
