"""`move worker`: advance the hub's moves, safely from several workers on several machines.

A worker claims one row with `SELECT … FOR UPDATE SKIP LOCKED` *and* a lease (`lease_owner`,
`lease_until`), and holds the lease for the whole run of steps, renewing it from a heartbeat
thread. Every transition is written with `WHERE lease_owner = me AND state = <expected>`, so a worker
that lost its lease (or a move cancelled meanwhile) changes nothing. A dead worker's lease expires
and another worker resumes the move from its last recorded state; every step is idempotent on the
hosts (send skips what the destination holds, finalize resumes, cleanup/abort are repeatable).
In backup mode the sending step backs the project up on the source and records the backup id in
the row (with the move to finalizing); finalizing restores exactly that id on the destination.
Each claim of an unfinished move counts one attempt; after `move.max_attempts` it ends `failing`
and the destination is rolled back, leaving the source intact; then the source drops that move's own
snapshot and stream files (`move release`), which a failing or cancelled move would otherwise leave.

Every host step that changes state carries a move ticket (tickets.py) signed with this machine's hub
key (`hub keys ensure`; during a rotation with both keys, re-read for every ticket): move id,
attempt, project, source, destination, mode, snapshot, the verbs of this step, lifetime
`move.ticket_minutes`. The hosts check it; without it nothing moves, is deleted or rolled back.

Waiting: a listener thread holds one dedicated session that LISTENs on `hub_db.MOVE_CHANNEL` (a
trigger notifies when a move becomes claimable) and wakes the idle worker threads, which claim at
once. They also wake when a move released with a retry delay (or a live worker's lease) comes due,
and otherwise poll only every `move.poll_seconds` as a fallback; after the listener (re)connects they
claim too, so nothing queued while it was away waits for the poll. Statements go through a
psycopg_pool pool; each claim reads its two hosts' `ssh_server`s once and builds its transport once.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

from cocalc_ctl import errors, ids
from cocalc_ctl.actions.move import common
from cocalc_ctl.actions.move.hub import ACTIVE, COLUMNS, MIRROR_SQL, Move, row_to_move
from cocalc_ctl.actions.move.transport import HostTransport, host_transport
from cocalc_ctl.config import Config
from cocalc_ctl.errors import CocalcError, CommandFailed, PreconditionFailed
from cocalc_ctl.state import hub_db

CLAIMABLE_STATE = f"""(state = ANY(ARRAY{list(ACTIVE)!r}::text[])
                 OR (state IN ('done', 'failing', 'cancelled') AND cleaned_at IS NULL))"""
CLAIMABLE = f"""{CLAIMABLE_STATE}
                AND (lease_until IS NULL OR lease_until < now())"""

# seconds until the next lease (a retry delay, or a live worker's lease that might lapse) comes due
NEXT_DUE_SQL = f"""SELECT extract(epoch FROM min(lease_until) - now())::float8 FROM project_moves
                    WHERE {CLAIMABLE_STATE} AND lease_until > now()"""

CLAIM_SQL = f"""
UPDATE project_moves m
   SET lease_owner = %(owner)s, lease_until = now() + make_interval(secs => %(lease)s), updated_at = now(),
       attempt = CASE WHEN m.state = ANY(ARRAY{list(ACTIVE)!r}::text[]) THEN m.attempt + 1 ELSE m.attempt END,
       -- a lease still owned is one that lapsed: its worker died (or lost the hub) without a word, so say
       -- that, or a move that runs out of attempts this way would give up with no cause at all
       status_reason = CASE WHEN m.lease_owner IS NOT NULL AND m.state = ANY(ARRAY{list(ACTIVE)!r}::text[])
                            THEN 'attempt ' || m.attempt || ' ended in ' || m.state || ': worker ' || m.lease_owner
                                 || ' stopped renewing its lease (it died or lost the hub)'
                            ELSE m.status_reason END
 WHERE m.project_id = (SELECT project_id FROM project_moves WHERE {CLAIMABLE}
                       ORDER BY created_at, project_id FOR UPDATE SKIP LOCKED LIMIT 1)
RETURNING {', '.join('m.' + c.strip() for c in COLUMNS.split(','))}"""


class LeaseLost(Exception):
    pass


@dataclass
class WorkerResult:
    owner: str
    processed: list[dict] = field(default_factory=list)


class Worker:
    def __init__(self, cfg: Config, *, transport: HostTransport | None = None, owner: str | None = None,
                 pool: hub_db.HubPool | None = None):
        self.cfg = cfg
        self.dsn = cfg["hub_dsn"]
        self.lease = cfg["move.lease_seconds"]
        self.max_attempts = cfg["move.max_attempts"]
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.pool = pool
        self._transport = transport
        self._claim_transport: HostTransport | None = None  # built once per claim (process)
        self._servers: dict[str, str] = {}  # ssh_server of the claimed move's two hosts
        self._live: dict | None = None  # latest progress event of the running step

    # -- database ---------------------------------------------------------------------------------
    def _conn(self):
        """An autocommit hub connection: from the pool when there is one, else a new one."""
        return self.pool.connection() if self.pool is not None else hub_db.connect(self.dsn)

    def claim(self) -> Move | None:
        with self._conn() as conn:
            row = conn.execute(CLAIM_SQL, {"owner": self.owner, "lease": self.lease}).fetchone()
            if row:
                conn.execute(MIRROR_SQL, (row[0],))
        return row_to_move(row) if row else None

    def next_due(self) -> float | None:
        """Seconds until a leased or retry-delayed move can be claimed (None: no such move)."""
        with self._conn() as conn:
            row = conn.execute(NEXT_DUE_SQL).fetchone()
        return None if row is None or row[0] is None else max(0.0, float(row[0]))

    def _update(self, move: Move, *, expect: str | None = None, **fields) -> Move:
        """Write fields (and a state) iff we still hold the lease and the state is as expected.

        A new state clears the reason of an earlier failed attempt (unless one is given)."""
        if "state" in fields and "status_reason" not in fields:
            fields["status_reason"] = None
        sets = ", ".join(f"{k} = %({k})s" for k in fields)
        params = {**fields, "p": move.project_id, "owner": self.owner, "expect": expect or move.state}
        if "progress" in params and params["progress"] is not None:
            from psycopg.types.json import Jsonb

            params["progress"] = Jsonb(params["progress"])
        with self._conn() as conn:
            with conn.transaction():
                row = conn.execute(f"UPDATE project_moves SET {sets}, updated_at = now() WHERE project_id = %(p)s "
                                   f"AND lease_owner = %(owner)s AND state = %(expect)s RETURNING {COLUMNS}",
                                   params).fetchone()
                if row is None:
                    raise LeaseLost(move.project_id)
                if fields.get("state") == "done":
                    conn.execute("UPDATE projects SET host_id = %s WHERE project_id = %s",
                                 (move.dest_host_id, move.project_id))
                conn.execute(MIRROR_SQL, (move.project_id,))
        return row_to_move(row)

    def _release(self, move: Move, reason: str | None, delay: float = 0.0) -> None:
        with self._conn() as conn:
            conn.execute("UPDATE project_moves SET lease_owner = NULL, lease_until = now() + make_interval(secs => %s),"
                         " status_reason = coalesce(%s, status_reason), updated_at = now() "
                         "WHERE project_id = %s AND lease_owner = %s", (delay, reason, move.project_id, self.owner))
            conn.execute(MIRROR_SQL, (move.project_id,))

    def _heartbeat(self, pid: str, stop: threading.Event, lost: threading.Event) -> None:
        while not stop.wait(max(self.lease / 3, 0.2)):
            try:
                from psycopg.types.json import Jsonb

                live = self._live
                with self._conn() as conn:
                    row = conn.execute("UPDATE project_moves SET lease_until = now() + make_interval(secs => %s), "
                                       "progress = coalesce(%s, progress) "
                                       "WHERE project_id = %s AND lease_owner = %s RETURNING state",
                                       (self.lease, Jsonb(live) if live else None, pid, self.owner)).fetchone()
                    if live:
                        conn.execute(MIRROR_SQL, (pid,))
                if row is None:
                    lost.set()
                    return
            except CocalcError:
                pass  # the hub is briefly unreachable: the lease may lapse, transitions will then refuse

    # -- hosts ------------------------------------------------------------------------------------
    def _load_hosts(self, move: Move) -> None:
        """Once per claim: the two hosts' ssh_server (not the whole fleet) and the transport."""
        hosts = sorted({h for h in (move.source_host_id, move.dest_host_id) if h})
        with self._conn() as conn:
            self._servers = {r[0]: r[1] for r in conn.execute(
                "SELECT id::text, ssh_server FROM project_hosts WHERE id = ANY(%s::uuid[])", (hosts,))}
        self._claim_transport = self._transport or host_transport(self.cfg, self._servers)

    def transport(self) -> HostTransport:
        if self._claim_transport is None:
            raise RuntimeError("transport() outside of a claimed move")
        return self._claim_transport

    def _ssh_server(self, host: str) -> str:
        server = self._servers.get(host)
        if not server:
            raise PreconditionFailed(f"host {host} has no ssh_server in the hub", hint="run `keys register` on it")
        return server

    # -- the state machine ------------------------------------------------------------------------
    def process(self, move: Move) -> Move:
        stop, lost = threading.Event(), threading.Event()
        hb = threading.Thread(target=self._heartbeat, args=(move.project_id, stop, lost), daemon=True)
        hb.start()
        try:
            self._load_hosts(move)
            return self._advance(move, lost)
        except LeaseLost:  # lease expired or the move was cancelled meanwhile: let the next claim decide
            self._release(move, None)
            return move
        except CocalcError as exc:  # the hosts could not be read: retry this move later
            self._release(move, f"attempt {move.attempt} failed in {move.state}: {errors.describe(exc)}",
                          delay=min(2.0 * max(move.attempt, 1), 30.0))
            return move
        finally:
            stop.set()
            hb.join()
            self._claim_transport, self._servers = None, {}

    def _advance(self, move: Move, lost: threading.Event) -> Move:
        if move.state in ACTIVE and move.attempt > self.max_attempts:
            move = self._update(move, state="failing",
                                status_reason=f"gave up after {move.attempt - 1} attempts: {move.status_reason or ''}"
                                .strip().rstrip(":"))
        while True:
            if lost.is_set():
                raise LeaseLost(move.project_id)
            try:
                nxt = self._step(move)
            except LeaseLost:
                raise
            except Exception as exc:  # any failure of a step: retry later, or give up → failing
                reason = errors.describe(exc)
                if move.state in ACTIVE and move.attempt < self.max_attempts:
                    self._release(move, f"attempt {move.attempt} failed in {move.state}: {reason}",
                                  delay=min(2.0 * move.attempt, 30.0))
                    return move
                if move.state in ACTIVE:
                    move = self._update(move, state="failing", status_reason=f"{move.state} failed: {reason}")
                    continue
                self._release(move, _with_cleanup_failure(move.status_reason, reason),
                              delay=min(5.0 * max(move.attempt, 1), 60.0))
                return move
            if nxt is None:
                self._release(move, None)
                return move
            move = nxt

    def _step(self, m: Move) -> Move | None:
        """Take the move one state further (None: nothing left to do for it)."""
        pid = m.project_id
        if m.state == "queued":
            return self._update(m, state="preparing", snapshot_name=m.snapshot_name or common.now_name(),
                                move_id=m.move_id or str(uuid.uuid4()), status_reason=None)
        if m.state == "preparing":
            self.transport().run(m.source_host_id, ["project", "show", pid])
            return self._update(m, state="sending")
        if m.state == "sending" and m.mode == "backup":
            return self._send_backup(m)
        if m.state == "sending":
            return self._send_stream(m)
        if m.state == "finalizing":
            return self._finalize(m)
        if m.state == "done" and m.cleaned_at is None:
            if m.source_host_id != m.dest_host_id:
                m, ticket = self._ticket(m, "cleanup")
                self.transport().run(m.source_host_id, ["move", "cleanup", pid, "--force", "--ticket", ticket])
            return self._update(m, cleaned_at=_now(), status_reason=None)  # an old clean-up failure is over
        if m.state in ("failing", "cancelled") and m.cleaned_at is None:
            return self._roll_back(m)
        return None

    def _send_stream(self, m: Move) -> Move:
        """`sending` (pipe or staged): the source pushes to the destination's receiver."""
        user = self.cfg["move.receiver_user"] or f"btrfs-{m.source_host_id}"
        args = ["move", "send", m.project_id, "--to", f"{user}@{self._ssh_server(m.dest_host_id)}", "--mode",
                m.mode, "--compress", m.compress, "--snapshot", ids.snapshot_name(m.snapshot_name)]
        if self.cfg["move.bwlimit"]:
            args += ["--bwlimit", self.cfg["move.bwlimit"]]
        m, ticket = self._ticket(m, "send")
        args += ["--ticket", ticket]
        t0 = time.monotonic()

        def on_event(ev: dict) -> None:  # the heartbeat publishes the latest one into `progress`
            if ev.get("event") in ("progress", "sent", "staged", "copied"):
                self._live = {"event": ev["event"], "snapshot": ev.get("snapshot"), "bytes": ev.get("bytes"),
                              "rate": ev.get("rate"), "seconds": round(time.monotonic() - t0, 1)}

        res = self.transport().run(m.source_host_id, args, on_event=on_event)
        self._live = None
        progress = {"bytes": res.get("bytes_total"), "seconds": round(time.monotonic() - t0, 3),
                    "streams": len([s for s in res.get("snapshots", []) if not s.get("skipped")])}
        return self._update(m, state="finalizing", progress=progress)

    def _finalize(self, m: Move) -> Move:
        """`finalizing`: the destination makes the project live (with the source's quota)."""
        pid = m.project_id
        args = ["move", "finalize", pid]
        if m.mode == "backup":
            if not m.backup_id:
                raise PreconditionFailed(f"backup-mode move of {pid} reached finalizing without a backup id")
            args += ["--from-backup", m.backup_id]
        # the project keeps its qgroup limit (the source still holds it until `done`)
        quota = self.transport().run(m.source_host_id, ["project", "show", pid]).get("quota_bytes")
        if isinstance(quota, int) and quota > 0:
            args += ["--quota", str(quota)]
        m, ticket = self._ticket(m, "finalize")
        self.transport().run(m.dest_host_id, [*args, "--ticket", ticket])
        return self._update(m, state="done", status_reason=None)

    def _roll_back(self, m: Move) -> Move:
        """A failed or cancelled move: the destination drops what it received, then the source releases
        this move's own snapshot and stream files (the project stays)."""
        pid = m.project_id
        if m.dest_host_id and m.dest_host_id != m.source_host_id:
            m, ticket = self._ticket(m, "abort")
            live_at_dest = False
            try:
                self.transport().run(m.dest_host_id, ["move", "abort", pid, "--ticket", ticket])
            except CommandFailed as exc:
                # exit 3 "live project": the destination has its own project with this id and nothing
                # of this move (the collision the move failed on): there is nothing to roll back
                if exc.returncode != 3 or "live project" not in exc.stderr_tail:
                    raise
                live_at_dest = True
            # then the source: this move's own snapshot (the name in this row, nothing else) and staged
            # stream files go, the project stays. Not when a project lives on the destination: what
            # the source holds of the move is then left for an operator to judge.
            if m.source_host_id and m.snapshot_name and not live_at_dest:
                m, ticket = self._ticket(m, "release")
                self.transport().run(m.source_host_id, ["move", "release", pid, "--ticket", ticket])
        return self._update(m, cleaned_at=_now(), status_reason=_without_cleanup_failure(m.status_reason))

    def _ticket(self, m: Move, verb: str) -> tuple[Move, str]:
        """Sign the ticket for one step (a move from before move ids gets one first)."""
        from cocalc_ctl import tickets
        from cocalc_ctl.actions.keys import hub_keys

        if not m.move_id:
            m = self._update(m, move_id=str(uuid.uuid4()))
        t = tickets.make(move_id=m.move_id, attempt=m.attempt, project_id=m.project_id, source=m.source_host_id,
                         dest=m.dest_host_id, mode=m.mode, snapshot=m.snapshot_name or "move-not-started",
                         verbs=[verb], minutes=self.cfg["move.ticket_minutes"])
        return m, tickets.sign(t, hub_keys.signing_keys(self.cfg))

    def _send_backup(self, m: Move) -> Move:
        """Backup mode's sending step: `backup create` of the final snapshot on the source. The backup
        id and the state change are written together; a rerun after a crash in between (same move
        snapshot name) finds that backup in the repository and reuses it."""
        if m.backup_id:
            return self._update(m, state="finalizing")
        m, ticket = self._ticket(m, "send")
        args = ["move", "send", m.project_id, "--mode", "backup", "--snapshot", ids.snapshot_name(m.snapshot_name),
                "--ticket", ticket]
        t0 = time.monotonic()

        def on_event(ev: dict) -> None:
            if ev.get("event") == "progress":
                self._live = {"event": "progress", "snapshot": ev.get("snapshot"), "bytes": ev.get("bytes"),
                              "rate": ev.get("rate"), "seconds": round(time.monotonic() - t0, 1)}

        res = self.transport().run(m.source_host_id, args, on_event=on_event)
        self._live = None
        backup_id = res.get("backup_id")
        if not isinstance(backup_id, str) or not re.fullmatch(r"[0-9a-f]{8,64}", backup_id):
            raise PreconditionFailed(f"the source reported no valid backup id for {m.project_id}")
        progress = {"bytes": res.get("bytes_total"), "seconds": round(time.monotonic() - t0, 3),
                    "backup_id": backup_id, "reused": bool(res.get("reused"))}
        return self._update(m, state="finalizing", backup_id=backup_id, progress=progress)


_CLEANUP_FAILED = "; clean-up failed: "


def _with_cleanup_failure(reason: str | None, failure: str) -> str:
    """Why the move ended (kept) plus the latest clean-up failure (replaced on each retry)."""
    return f"{_without_cleanup_failure(reason) or ''}{_CLEANUP_FAILED}{failure}".lstrip("; ")


def _without_cleanup_failure(reason: str | None) -> str | None:
    if reason is None:
        return None
    if reason.startswith(_CLEANUP_FAILED.lstrip("; ")):
        return None
    return reason.split(_CLEANUP_FAILED, 1)[0] or None


def _now():
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc)


class Wakeup:
    """Where idle worker threads wait: a NOTIFY, a (re)connect of the listener, or stop wakes them.

    A generation counter closes the race between a claim that found nothing and the wait after it:
    a thread waits only while the generation is still the one it saw before claiming."""

    def __init__(self):
        self._cond = threading.Condition()
        self.generation = 0

    def kick(self) -> None:
        with self._cond:
            self.generation += 1
            self._cond.notify_all()

    def wait(self, seen: int, timeout: float) -> bool:
        """Wait until the generation moves past `seen` or `timeout` passes; True when kicked."""
        with self._cond:
            return self._cond.wait_for(lambda: self.generation != seen, timeout=max(0.0, timeout))


def listen(cfg: Config, wake: Wakeup, stop: threading.Event, *, listening: threading.Event | None = None,
           poll: float = 60.0) -> None:
    """LISTEN on the moves channel in one dedicated session and kick `wake` on every notification and
    after every (re)connect; reconnect with backoff. After each LISTEN it checks with a probe NOTIFY
    that notifications reach it, and warns if not. Idle, it only waits on its socket (no queries)."""
    from cocalc_ctl import output

    try:
        _listen(cfg, wake, stop, listening, output, poll)
    finally:
        wake.kick()  # stop is set: no idle thread waits out its poll


def _listen(cfg: Config, wake: Wakeup, stop: threading.Event, listening: threading.Event | None, output,
            poll: float) -> None:
    import random

    import psycopg

    backoff = 1.0
    while not stop.is_set():
        try:
            # its own session, never a pooled one: LISTEN belongs to the session that ran it
            with hub_db.connect(cfg["hub_dsn"], listen=True) as conn:
                conn.execute(f"LISTEN {hub_db.MOVE_CHANNEL}")
                wake.kick()  # claim whatever became claimable while nobody listened
                if not hub_db.probe_listen(conn, cfg["hub_dsn"], hub_db.MOVE_CHANNEL, on_other=lambda n: wake.kick()):
                    output.warn(f"move worker: a NOTIFY on {hub_db.MOVE_CHANNEL} does not reach this worker's LISTEN "
                                "session (a transaction-pooling proxy in front of PostgreSQL?); queued moves wait "
                                f"for the fallback poll (every {poll:g} s)")
                if listening is not None:
                    listening.set()
                backoff = 1.0
                while not stop.is_set():
                    # the timeout only bounds how late `stop` is seen; it sends nothing to the hub
                    for n in conn.notifies(timeout=1.0, stop_after=1):
                        if not n.payload.startswith(hub_db.PROBE_PREFIX):
                            wake.kick()
        except (psycopg.Error, CocalcError) as exc:
            if listening is not None:
                listening.clear()
            if stop.is_set():
                return
            msg = " ".join(str(exc).split())[:200]
            output.warn(f"move worker: hub listener lost ({msg}); reconnecting in {backoff:.0f}s")
            stop.wait(backoff + random.uniform(0, 0.2))
            backoff = min(backoff * 2, 30.0)


class _Workers:
    """The claim loops `run` starts: threads sharing one hub pool, one wake-up and one result."""

    def __init__(self, cfg: Config, *, base: str, threads_n: int, once: bool, poll: float,
                 transport: HostTransport | None, stop: threading.Event, on_claim):
        self.cfg, self.base, self.once, self.poll = cfg, base, once, poll
        self.transport, self.stop, self.on_claim = transport, stop, on_claim
        self.result = WorkerResult(base)
        self.lock = threading.Lock()
        self.wake = Wakeup()
        self.failures: list[BaseException] = []
        # each thread: one connection at a time for its statements, one for its move's heartbeat
        self.pool = hub_db.HubPool(cfg["hub_dsn"], max_size=2 * threads_n, name="move-worker")

    def guarded(self, n: int) -> None:
        try:
            self.loop(n)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            self.failures.append(exc)
            self.stop.set()

    def loop(self, n: int) -> None:
        import psycopg

        from cocalc_ctl import output

        w = Worker(self.cfg, transport=self.transport, owner=f"{self.base}:{n}", pool=self.pool)
        backoff = 1.0
        while not self.stop.is_set():
            seen = self.wake.generation
            try:
                move = w.claim()
                due = None if move is not None or self.once else w.next_due()
            except (CocalcError, psycopg.Error) as exc:
                if self.once:
                    raise
                output.warn(f"move worker: claim failed ({' '.join(str(exc).split())[:200]}); "
                            f"retrying in {backoff:.0f}s")
                backoff = self._back_off(backoff)
                continue
            backoff = 1.0
            if move is None:
                if self.once:
                    return
                self.wake.wait(seen, self.poll if due is None else min(self.poll, due + 0.05))
                continue
            if not self._advance(w, move):
                backoff = self._back_off(backoff)

    def _back_off(self, backoff: float) -> float:
        self.stop.wait(backoff)
        return min(backoff * 2, 30.0)

    def _advance(self, w: Worker, move: Move) -> bool:
        """Process a claimed move and record where it ended; False if the hub went away meanwhile."""
        import psycopg

        from cocalc_ctl import output

        if self.on_claim is not None:
            self.on_claim(move)
        try:
            final = w.process(move)
        except (CocalcError, psycopg.OperationalError, psycopg.InterfaceError) as exc:
            # the hub went away while the move ran (not even its failure could be recorded): the move
            # resumes when its lease lapses; a long-running worker goes on, `--once` reports it
            if self.once:
                raise
            output.warn(f"move worker: {errors.describe(exc)}; the move of {move.project_id} resumes when "
                        f"its lease lapses")
            return False
        with self.lock:
            self.result.processed.append({"project_id": final.project_id, "state": final.state,
                                          "attempt": final.attempt, "reason": final.status_reason})
        return True


def _join_all(threads: list[threading.Thread]) -> None:
    for t in threads:
        while t.is_alive():
            t.join(0.5)


def run(cfg: Config, *, once: bool = False, concurrency: int = 1, poll: float | None = None,
        transport: HostTransport | None = None, stop: threading.Event | None = None,
        on_claim=None, listening: threading.Event | None = None) -> WorkerResult:
    """Claim and advance moves with `concurrency` threads; with `once`, return when nothing is claimable.

    Without `once` the threads wait for the listener's wake-ups (NOTIFY), for the next lease to come
    due, or at most `poll` seconds (default `move.poll_seconds`). `on_claim(move)` is called right
    after each claim (measurements, tests); `listening` is set while the listener holds its LISTEN."""
    poll = float(cfg["move.poll_seconds"]) if poll is None else poll
    base = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    stop = stop or threading.Event()
    threads_n = max(1, concurrency)
    workers = _Workers(cfg, base=base, threads_n=threads_n, once=once, poll=poll, transport=transport,
                       stop=stop, on_claim=on_claim)
    listener = None
    if not once:
        listener = threading.Thread(target=listen, args=(cfg, workers.wake, stop),
                                    kwargs={"listening": listening, "poll": poll}, daemon=True, name="move-listener")
        listener.start()
    threads = [threading.Thread(target=workers.guarded, args=(n,), daemon=True) for n in range(threads_n)]
    for t in threads:
        t.start()
    try:
        _join_all(threads)
    except KeyboardInterrupt:
        stop.set()
        workers.wake.kick()
        raise
    finally:
        if listener is not None:
            stop.set()
            listener.join(5.0)
        workers.pool.close()
    if workers.failures:
        raise workers.failures[0]
    return workers.result
