"""`proxy serve --workers N`: N share-nothing proxy processes on one address, and their supervisor.

The parent binds N listening sockets to the address with SO_REUSEPORT (one per worker slot; the
kernel spreads new connections over them by a hash of the 4-tuple) and forks one worker per slot
before any event loop or thread exists. A worker is a complete `serve()` on its slot's socket with
its own event loop, route table, caches, upstream pools and (hub mode) NOTIFY listener; workers
share nothing but the listen address and a small shared-memory board for /metrics.

The parent stays a small supervisor with no event loop: it waits (select on a signal wake-up pipe
and a status pipe the workers write one-line messages to) and

- restarts a worker whose process ended, with backoff (0.1 s, then 1, 2, 4 s while it keeps dying
  within STABLE_SECONDS of its start); the 5th such death in a row ends the command with exit 1 and
  one line naming the worker and how it died. A slot's socket stays open in the parent while its
  worker is replaced, so connections the kernel queued there wait for the new worker instead of
  being reset, and the other workers' sockets keep answering meanwhile;
- on SIGTERM/SIGINT closes its copies of the sockets and sends SIGTERM to every worker, which stops
  accepting, closes idle keep-alive connections and WebSocket tunnels, lets requests in flight
  finish (each connection closes after its answer) for up to `proxy.drain_timeout` seconds, then
  exits 0; a worker still alive 5 s after that is killed. A second SIGTERM/SIGINT kills at once;
- ignores SIGHUP (the proxy writes no log files, so there is nothing to reopen).

A worker that fails before it is listening during start-up (no host database, hub unreachable, ...)
reports its one-line error on the status pipe and the command ends with that error and exit code,
as a single process would. Why fork and not spawn: the config is already loaded and checked, the
sockets are simply inherited, and a fork costs milliseconds where a fresh interpreter costs the
CLI's import time per restart; the parent forks before it has threads or a loop, and each child
builds its routes (database handles) itself.

/metrics: each worker renders its own counters with a `worker="<slot>"` label into its slot of the
board every second (and at once when it answers /metrics); whichever worker answers a scrape
returns every worker's series, its own fresh, the others at most a second old, plus the
supervisor's `cocalc_proxy_workers` and `cocalc_proxy_worker_restarts_total{worker}`. Counters are
per worker (a restarted worker starts again from 0), so they stay monotonic per series.
"""

from __future__ import annotations

import asyncio
import mmap
import os
import selectors
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from cocalc_ctl.errors import CocalcError, OperationFailed

STABLE_SECONDS = 10.0    # a worker that lived this long was healthy: its next death starts a new count
CRASH_LOOP = 5           # this many quick deaths in a row of one worker end the command (exit 1)
KILL_MARGIN = 5.0        # seconds after the drain timeout before a worker still alive is killed
PUBLISH_EVERY = 1.0      # seconds between a worker's metric snapshots on the board
SLOT_BYTES = 64 << 10    # board space per worker (a worker's /metrics text is about 3 KiB)
_HDR = 16                # seq u64, length u32, restarts u32
_WATCHED = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # the supervisor's signals


def restart_delay(failures: int) -> float:
    """Seconds before restarting a worker that died for the `failures`-th time in a row."""
    return 0.1 if failures <= 1 else min(2.0 ** (failures - 2), 10.0)


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


# -- the metrics board: one seqlocked slot per worker in shared anonymous memory ----------------

class Board:
    """Shared memory made before the forks; only the parent and its workers map it (no file)."""

    def __init__(self, workers: int):
        self.workers = workers
        self.mem = mmap.mmap(-1, workers * SLOT_BYTES, flags=mmap.MAP_SHARED)

    def publish(self, slot: int, data: bytes) -> None:
        base = slot * SLOT_BYTES
        data = data[:SLOT_BYTES - _HDR]
        seq = struct.unpack_from("<Q", self.mem, base)[0]
        struct.pack_into("<Q", self.mem, base, seq + 1)  # odd: a write is in progress
        self.mem[base + _HDR:base + _HDR + len(data)] = data
        struct.pack_into("<I", self.mem, base + 8, len(data))
        struct.pack_into("<Q", self.mem, base, seq + 2)

    def read(self, slot: int) -> bytes:
        base = slot * SLOT_BYTES
        for _ in range(1000):
            seq = struct.unpack_from("<Q", self.mem, base)[0]
            if seq & 1:
                continue
            n = struct.unpack_from("<I", self.mem, base + 8)[0]
            data = bytes(self.mem[base + _HDR:base + _HDR + n])
            if struct.unpack_from("<Q", self.mem, base)[0] == seq:
                return data
        return b""

    def restarts(self, slot: int) -> int:
        return struct.unpack_from("<I", self.mem, slot * SLOT_BYTES + 12)[0]

    def count_restart(self, slot: int) -> None:
        struct.pack_into("<I", self.mem, slot * SLOT_BYTES + 12, self.restarts(slot) + 1)


def label_samples(text: str, worker: int) -> str:
    """Add `worker="<n>"` to every sample line of Prometheus text."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            out.append(line)
            continue
        cut = min((i for i in (line.find("{"), line.find(" ")) if i >= 0), default=len(line))
        if line[cut:cut + 1] == "{":
            out.append(f'{line[:cut]}{{worker="{worker}",{line[cut + 1:]}')
        else:
            out.append(f'{line[:cut]}{{worker="{worker}"}}{line[cut:]}')
    return "\n".join(out) + "\n"


def merge_families(texts: list[str]) -> str:
    """Several exposition texts as one: each family's HELP and TYPE once, then all its samples."""
    families: dict[str, tuple[dict[str, str], list[str]]] = {}
    for text in texts:
        for line in text.splitlines():
            if line.startswith(("# HELP ", "# TYPE ")):
                parts = line.split(" ", 3)
                meta, _ = families.setdefault(parts[2], ({}, []))
                meta.setdefault(parts[1], line)
            elif line and not line.startswith("#"):
                cut = min((i for i in (line.find("{"), line.find(" ")) if i >= 0), default=len(line))
                families.setdefault(line[:cut], ({}, []))[1].append(line)
    out = []
    for meta, samples in families.values():
        out += [meta[k] for k in ("HELP", "TYPE") if k in meta] + samples
    return "\n".join(out) + "\n"


# -- the worker side ------------------------------------------------------------------------------

class Worker:
    """What `server.serve(worker=...)` needs in a worker process: its socket, metrics, drain."""

    def __init__(self, slot: int, sock: socket.socket, board: Board, status_fd: int, drain_timeout: float):
        self.slot = slot
        self.sock = sock
        self.board = board
        self.status_fd = status_fd
        self.drain_timeout = drain_timeout
        self.is_ready = False
        self._publisher = None

    def tell(self, kind: str, text: str = "") -> None:
        """One line to the supervisor (short enough for an atomic pipe write)."""
        line = f"{kind} {self.slot} {' '.join(text.split())}"[:3000] + "\n"
        try:
            os.write(self.status_fd, line.encode("utf-8", "replace"))
        except OSError:
            pass

    def ready(self, host: str, port: int) -> None:
        self.is_ready = True
        self.tell("R", type(asyncio.get_running_loop()).__module__.split(".")[0])

    def attach(self, proxy) -> None:
        proxy.metrics_text = lambda: self.metrics_text(proxy)

        async def publish_forever():
            while True:
                self._own(proxy)
                await asyncio.sleep(PUBLISH_EVERY)

        self._publisher = asyncio.create_task(publish_forever())

    def _own(self, proxy) -> str:
        from cocalc_ctl.proxy.server import Proxy

        text = label_samples(Proxy.metrics_text(proxy).decode(), self.slot)  # the one-process answer, labelled
        self.board.publish(self.slot, text.encode())
        return text

    def metrics_text(self, proxy) -> bytes:
        texts = [self._own(proxy) if i == self.slot else self.board.read(i).decode("utf-8", "replace")
                 for i in range(self.board.workers)]
        b = self.board
        texts.append("\n".join([
            "# HELP cocalc_proxy_workers Worker processes the supervisor keeps running.",
            "# TYPE cocalc_proxy_workers gauge",
            f"cocalc_proxy_workers {b.workers}",
            "# HELP cocalc_proxy_worker_restarts_total Times a worker was started again after its process ended.",
            "# TYPE cocalc_proxy_worker_restarts_total counter",
            *(f'cocalc_proxy_worker_restarts_total{{worker="{i}"}} {b.restarts(i)}' for i in range(b.workers)),
        ]))
        return merge_families(texts).encode()

    async def drain(self, proxy) -> None:
        """Let the requests in flight finish (bounded by the drain timeout); idle connections go now."""
        if self._publisher is not None:
            self._publisher.cancel()
        proxy.draining = True
        for tunnel in list(proxy.tunnels):
            tunnel.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_timeout
        while proxy.metrics.active_connections > 0 and loop.time() < deadline:
            for writer in list(proxy.waiting):
                writer.close()
            for client in list(proxy.clients):
                protocol = client.get_protocol() if isinstance(client, asyncio.BaseTransport) else None
                if protocol is not None and not getattr(protocol, "busy", True) and not getattr(protocol, "buf", b""):
                    client.close()  # a fast-path connection between requests
            await asyncio.sleep(0.05)


@dataclass
class Spec:
    """How a worker builds and runs its proxy (everything already validated by the parent)."""
    build: Callable[[], tuple]  # -> (routes, settings, access), called in the worker after the fork
    host: str
    port: int
    access_log: bool
    json_log: bool
    event_loop: str
    drain_timeout: float


def _worker_main(slot: int, sock: socket.socket, board: Board, status_fd: int, spec: Spec,
                 close_fds: list[int]) -> int:
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _WATCHED)  # blocked across the fork (Supervisor.start)
    for fd in close_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    from cocalc_ctl.errors import from_exception
    from cocalc_ctl.proxy import server
    from cocalc_ctl.proxy.metrics import AccessLog

    worker = Worker(slot, sock, board, status_fd, spec.drain_timeout)
    try:
        routes, settings, access = spec.build()
        server.run(routes, settings, spec.host, spec.port, AccessLog(spec.access_log, spec.json_log, worker=slot),
                   worker.ready, event_loop=spec.event_loop, worker=worker, access=access)
        return 0
    except Exception as exc:
        err = exc if isinstance(exc, CocalcError) else from_exception(exc)
        if err is None:
            if worker.is_ready:
                raise  # a bug: the traceback goes to stderr, the supervisor restarts the worker
            err = OperationFailed(f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}",
                                  hint="rerun with -v for a traceback")
            from cocalc_ctl import proc

            if proc.VERBOSE:  # -v, as for one process
                import traceback

                traceback.print_exc()
        worker.tell("E", f"{err.exit_code} {err.one_line()}")
        return err.exit_code or 1


# -- the supervisor -------------------------------------------------------------------------------

class WorkerStartFailed(CocalcError):
    """A worker's own start-up error, passed on with its exit code."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def bind_sockets(host: str, port: int, n: int) -> list[socket.socket]:
    """N listening sockets on one address with SO_REUSEPORT (port 0: the first one picks it)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, addr = infos[0]
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(family, socket.SOCK_STREAM)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind(addr)
            addr = s.getsockname()
            s.listen(1024)
            s.setblocking(False)
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


@dataclass
class _Slot:
    index: int
    pid: int | None = None
    started: float = 0.0
    ready: bool = False
    failures: int = 0
    restart_at: float | None = None


@dataclass
class Supervisor:
    spec: Spec
    socks: list
    on_ready: Callable[[str], None]
    board: Board = None
    slots: list = field(default_factory=list)
    stopping: bool = False
    stop_deadline: float | None = None
    error: CocalcError | None = None
    announced: bool = False
    loop_name: str = "asyncio"

    def __post_init__(self):
        self.board = Board(len(self.socks))
        self.slots = [_Slot(i) for i in range(len(self.socks))]

    def say(self, text: str) -> None:
        print(f"cocalc-ctl proxy: {text}", file=sys.stderr, flush=True)

    def start(self, slot: _Slot) -> None:
        from cocalc_ctl import proc

        sock = self.socks[slot.index]
        others = [s.fileno() for s in self.socks if s is not sock and s.fileno() >= 0]
        close_fds = others + [self.wake_r, self.wake_w, self.status_r]
        # Blocked across the fork: a signal in the child before it resets the supervisor's handlers
        # would run them there (and write to the supervisor's wake-up pipe).
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _WATCHED)
        try:
            slot.pid = proc.fork(lambda: _worker_main(slot.index, sock, self.board, self.status_w, self.spec,
                                                      close_fds))
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        slot.started = time.monotonic()
        slot.ready = False
        slot.restart_at = None

    def run(self) -> str:
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.status_r, self.status_w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self.status_r, False)
        previous = {sig: signal.signal(sig, lambda *_: None) for sig in _WATCHED}
        old_wakeup = signal.set_wakeup_fd(self.wake_w)
        sel = selectors.DefaultSelector()
        sel.register(self.wake_r, selectors.EVENT_READ)
        sel.register(self.status_r, selectors.EVENT_READ)
        pending = b""
        try:
            for slot in self.slots:
                self.start(slot)
            while not (self.stopping and all(s.pid is None for s in self.slots)):
                signals, lines = [], []
                for key, _ in sel.select(self._timeout()):
                    if key.fd == self.wake_r:
                        signals += list(_read_all(self.wake_r))
                    else:
                        pending += _read_all(self.status_r)
                        *done, pending = pending.split(b"\n")
                        lines += done
                for sig in signals:  # a stop first: a worker ending on the same Ctrl-C is not a crash
                    if sig in (signal.SIGTERM, signal.SIGINT):
                        self.begin_stop(force=self.stopping)
                for line in lines:
                    self.on_status(line.decode("utf-8", "replace"))
                self.reap()
                self.tick()
        finally:
            for slot in self.slots:  # only after an exception here: never leave a worker behind
                if slot.pid is not None:
                    _signal(slot.pid, signal.SIGKILL)
                    _wait(slot.pid)
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            sel.close()
            for fd in (self.wake_r, self.wake_w, self.status_r, self.status_w):
                os.close(fd)
            for s in self.socks:
                s.close()
        if self.error is not None:
            raise self.error
        return self.loop_name

    def _timeout(self) -> float | None:
        due = [s.restart_at for s in self.slots if s.restart_at is not None]
        if self.stop_deadline is not None:
            due.append(self.stop_deadline)
        due.append(time.monotonic() + 1.0)  # reap even if a SIGCHLD was coalesced away
        return max(0.0, min(due) - time.monotonic())

    def on_status(self, line: str) -> None:
        kind, _, rest = line.partition(" ")
        index, _, text = rest.partition(" ")
        if not index.isdigit() or int(index) >= len(self.slots):
            return
        slot = self.slots[int(index)]
        if kind == "R":
            slot.ready = True
            self.loop_name = text or self.loop_name
            if not self.announced and all(s.ready for s in self.slots):
                self.announced = True
                self.on_ready(self.loop_name)
        elif kind == "E":
            code, _, message = text.partition(" ")
            if not self.announced and not self.stopping:  # start-up: the command fails as one process would
                self.error = WorkerStartFailed(message, int(code) if code.isdigit() else 1)
                self.begin_stop()
            elif not self.stopping:
                self.say(f"worker {slot.index}: {message}")

    def reap(self) -> None:
        for slot in self.slots:
            if slot.pid is None:
                continue
            status = _wait(slot.pid, os.WNOHANG)
            if status is None:
                continue
            pid, slot.pid = slot.pid, None
            self.board.publish(slot.index, b"")  # its series leave /metrics until the new worker's arrive
            if self.stopping:
                continue
            now = time.monotonic()
            lived = now - slot.started
            how = _how(status)
            if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
                # it was asked to stop on its own (SIGTERM to that one pid): a replacement, not a crash
                self.say(f"worker {slot.index} (pid {pid}) stopped; starting a new one")
                slot.restart_at = now
                continue
            slot.failures = slot.failures + 1 if (lived < STABLE_SECONDS or not slot.ready) else 1
            if slot.failures >= CRASH_LOOP:
                self.error = OperationFailed(
                    f"proxy worker {slot.index} died {slot.failures} times in a row within {STABLE_SECONDS:g} s "
                    f"of starting (last: {how}); stopping",
                    hint="see the lines above for its errors; fix the cause, then start the proxy again")
                self.begin_stop()
                return
            delay = restart_delay(slot.failures)
            self.say(f"worker {slot.index} (pid {pid}) {how} after {lived:.1f} s; restarting in {delay:g} s")
            slot.restart_at = now + delay

    def tick(self) -> None:
        now = time.monotonic()
        if self.stopping:
            if self.stop_deadline is not None and now >= self.stop_deadline:
                self.stop_deadline = None
                for slot in self.slots:
                    if slot.pid is not None:
                        self.say(f"worker {slot.index} (pid {slot.pid}) did not finish draining; killing it")
                        _signal(slot.pid, signal.SIGKILL)
            return
        for slot in self.slots:
            if slot.restart_at is not None and now >= slot.restart_at:
                self.board.count_restart(slot.index)
                self.start(slot)

    def begin_stop(self, force: bool = False) -> None:
        if force:
            for slot in self.slots:
                if slot.pid is not None:
                    _signal(slot.pid, signal.SIGKILL)
            return
        if self.stopping:
            return
        self.stopping = True
        for s in self.socks:  # the workers' copies stay open until each stops accepting
            s.close()
        for slot in self.slots:
            slot.restart_at = None
            if slot.pid is not None:
                _signal(slot.pid, signal.SIGTERM)
        self.stop_deadline = time.monotonic() + self.spec.drain_timeout + KILL_MARGIN


def _read_all(fd: int) -> bytes:
    out = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return out
        except InterruptedError:
            continue
        if not chunk:
            return out
        out += chunk


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _wait(pid: int, flags: int = 0) -> int | None:
    try:
        got, status = os.waitpid(pid, flags)
    except ChildProcessError:
        return 0
    except InterruptedError:
        return None
    return status if got == pid else None


def _how(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            return f"was killed by {signal.Signals(sig).name}"
        except ValueError:
            return f"was killed by signal {sig}"
    return f"exited with {os.WEXITSTATUS(status)}"


def serve_workers(spec: Spec, workers: int, on_ready: Callable[[str], None]) -> str:
    """Bind, fork `workers` workers and supervise them until stopped; returns the workers' event loop."""
    socks = bind_sockets(spec.host, spec.port, workers)  # OSError: the caller says it cannot listen
    bound = socks[0].getsockname()
    spec.host, spec.port = bound[0], bound[1]
    return Supervisor(spec, socks, on_ready).run()
