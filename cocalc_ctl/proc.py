"""The one place a process starts.

Commands are argument lists (never a shell string) run with `LC_ALL=C`, a timeout and captured
stderr. Pipelines connect their stages kernel to kernel: stage N's stdout pipe is stage N+1's stdin,
and when byte counting is asked for, a thread moves the bytes between two pipes with `os.splice`
so they never enter Python's memory. Every stage's exit status is checked.

`--dry-run` is enforced here: a command marked `mutates=True` is printed (shell-quoted, ready to
paste) and recorded in `PLAN` instead of being run. Read-only commands still run so plans are real.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from cocalc_ctl.errors import CommandFailed, CommandTimeout, ToolMissing

# Settings the CLI sets once per invocation.
DRY_RUN = False
VERBOSE = False
ECHO_PLAN = True  # print planned commands to stdout in dry-run (off for --json)
DEFAULT_TIMEOUT: float | None = 3600.0
PLAN: list[str] = []

DEBIAN_PACKAGES = {
    "btrfs": "btrfs-progs", "mkfs.btrfs": "btrfs-progs", "restic": "restic", "rclone": "rclone",
    "podman": "podman", "runc": "runc", "skopeo": "skopeo", "ssh": "openssh-client",
    "ssh-keygen": "openssh-client", "sshd": "openssh-server", "rsync": "rsync", "lz4": "lz4",
    "zstd": "zstd", "mount": "mount", "umount": "mount", "losetup": "mount", "findmnt": "util-linux",
    "truncate": "coreutils", "tar": "tar", "initdb": "postgresql", "pg_ctl": "postgresql",
    "nginx": "nginx-light", "nft": "nftables", "unshare": "util-linux", "wrk": "wrk", "hyperfine": "hyperfine", "bats": "bats",
    "dropbearkey": "dropbear-bin", "patchelf": "patchelf", "ldd": "libc-bin",
}

STDERR_TAIL_BYTES = 4096


@dataclass
class Result:
    argv: list[str]
    returncode: int
    stdout: str | bytes = ""
    stderr: str = ""
    duration: float = 0.0
    dry_run: bool = False


@dataclass
class Stage:
    """One process of a pipeline. `stdin_path`/`stdout_path` apply to the first/last stage only."""

    argv: list[str]
    stdin_path: str | None = None
    stdout_path: str | None = None
    ok_codes: tuple[int, ...] = (0,)
    env: dict[str, str] | None = None
    cwd: str | None = None
    stdin_fd: int | None = None  # first stage: read this inherited fd (e.g. 0) instead of stdin_path/DEVNULL
    stdout_fd: int | None = None  # last stage: write this inherited fd (e.g. 1) instead of stdout_path/DEVNULL


@dataclass
class PipelineResult:
    stages: list[Result]
    bytes_counted: list[int] = field(default_factory=list)
    duration: float = 0.0
    dry_run: bool = False


def display(argv: Sequence[str]) -> str:
    return shlex.join(str(a) for a in argv)


def display_pipeline(stages: Sequence[Stage]) -> str:
    parts = []
    for i, st in enumerate(stages):
        text = display(st.argv)
        if i == 0 and st.stdin_path:
            text += f" < {shlex.quote(st.stdin_path)}"
        if i == len(stages) - 1 and st.stdout_path:
            text += f" > {shlex.quote(st.stdout_path)}"
        parts.append(text)
    return " | ".join(parts)


def record_plan(text: str) -> None:
    PLAN.append(text)
    if ECHO_PLAN:
        print(text, flush=True)


def _log(text: str) -> None:
    if VERBOSE:
        print(f"+ {text}", file=sys.stderr, flush=True)


def _environment(extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    if extra:
        env.update(extra)
    env["LC_ALL"] = "C"
    env["TZ"] = "UTC"  # tools print times (btrfs otime, …) in UTC, like everything we print
    env.pop("LANGUAGE", None)
    return env


def which(program: str, env: dict[str, str] | None = None) -> str:
    """Absolute path of `program`, or ToolMissing naming the Debian package that has it."""
    if "/" in program:
        if os.access(program, os.X_OK):
            return program
        found = None
    else:
        found = shutil.which(program, path=(env or os.environ).get("PATH"))
    if not found:
        base = os.path.basename(program)
        pkg = DEBIAN_PACKAGES.get(base)
        hint = f"install it: apt-get install {pkg}" if pkg else "install it and make sure it is on PATH"
        raise ToolMissing(f"required program {base!r} not found", hint=hint)
    return found


def have(program: str) -> bool:
    try:
        which(program)
        return True
    except ToolMissing:
        return False


def _tail(path_or_bytes) -> str:
    if isinstance(path_or_bytes, (bytes, bytearray)):
        data = bytes(path_or_bytes[-STDERR_TAIL_BYTES:])
    else:
        with open(path_or_bytes, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - STDERR_TAIL_BYTES))
            data = fh.read()
    return data.decode("utf-8", "replace")


def run(argv: Sequence[str], *, mutates: bool = True, check: bool = True, timeout: float | None = None,
        input: bytes | str | None = None, cwd: str | None = None, env: dict[str, str] | None = None,
        text: bool = True, capture: bool = True, ok_codes: Sequence[int] = (0,),
        stdout_path: str | None = None) -> Result:
    """Run one command. With `mutates` and --dry-run it is only printed."""
    argv = [str(a) for a in argv]
    shown = display(argv) + (f" > {shlex.quote(stdout_path)}" if stdout_path else "")
    if mutates and DRY_RUN:
        record_plan(shown)
        return Result(argv, 0, "" if text else b"", "", 0.0, dry_run=True)
    full_env = _environment(env)
    exe = which(argv[0], full_env)
    _log(shown)
    start = time.monotonic()
    out_fh = open(stdout_path, "wb") if stdout_path else None
    try:
        proc = subprocess.run(
            argv, executable=exe, input=input.encode() if isinstance(input, str) else input,
            stdout=out_fh if out_fh else (subprocess.PIPE if capture else None),
            stderr=subprocess.PIPE, stdin=None if input is not None else subprocess.DEVNULL,
            cwd=cwd, env=full_env, timeout=timeout if timeout is not None else DEFAULT_TIMEOUT,
            start_new_session=False, preexec_fn=_death_signal_setter())
    except subprocess.TimeoutExpired:
        raise CommandTimeout(f"{argv[0]} timed out after {timeout or DEFAULT_TIMEOUT:.0f}s",
                             hint="raise command_timeout or check the target") from None
    finally:
        if out_fh:
            out_fh.close()
    stdout = proc.stdout if proc.stdout is not None else b""
    stderr = _tail(proc.stderr or b"")
    result = Result(argv, proc.returncode, stdout.decode("utf-8", "surrogateescape") if text else stdout,
                    stderr, time.monotonic() - start)
    if check and proc.returncode not in ok_codes:
        raise CommandFailed(argv, proc.returncode, stderr)
    return result


def run_lines(argv: Sequence[str], on_line: Callable[[str], None], *, mutates: bool = True,
              timeout: float | None = None, env: dict[str, str] | None = None) -> Result:
    """Like `run`, but hand each stdout line to `on_line` as it arrives; the whole stdout is returned too."""
    return stream(argv, on_line, mutates=mutates, timeout=timeout, env=env, keep_output=True)


def _splice_relay(src_fd: int, dst_fd: int, counter: list[int], idx: int,
                  on_progress: Callable[[int], None] | None, errors: list[BaseException]) -> None:
    """Move bytes pipe→pipe inside the kernel, counting them; closes both ends when done."""
    chunk = 1 << 20
    try:
        while True:
            try:
                n = os.splice(src_fd, dst_fd, chunk)
            except BrokenPipeError:
                break
            if n == 0:
                break
            counter[idx] += n
            if on_progress:
                on_progress(counter[idx])
    except BaseException as exc:  # recorded and re-raised by the pipeline
        errors.append(exc)
    finally:
        os.close(src_fd)
        os.close(dst_fd)


def _enlarge_pipe(fd: int) -> None:
    try:
        import fcntl

        fcntl.fcntl(fd, 1031, 1 << 20)  # F_SETPIPE_SZ: fewer context switches for bulk streams
    except OSError:
        pass


def _first_stdin(st: Stage, opened: list[int]):
    """The first stage's stdin: its file (opened here, closed by the caller), a given fd, or nothing."""
    stdin = os.open(st.stdin_path, os.O_RDONLY) if st.stdin_path else subprocess.DEVNULL
    if st.stdin_fd is not None and not st.stdin_path:
        stdin = st.stdin_fd
    if st.stdin_path:
        opened.append(stdin)
    return stdin


def _stage_stdout(st: Stage, last: bool, opened: list[int]):
    """(stdout for a stage, read end for the next one): a new pipe, or the last stage's file/fd/nothing."""
    if not last:
        r, w = os.pipe()
        _enlarge_pipe(w)
        return w, r
    if st.stdout_path:
        stdout = os.open(st.stdout_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        opened.append(stdout)
        return stdout, None
    if st.stdout_fd is not None:
        return st.stdout_fd, None
    return subprocess.DEVNULL, None


def _start_relay(read_fd: int, counters: list[int], idx: int, on_progress, relay_errors: list) -> tuple:
    """A counting splice relay between two stages: (its thread, the read end the next stage gets)."""
    r2, w2 = os.pipe()
    _enlarge_pipe(w2)
    t = threading.Thread(target=_splice_relay, daemon=True,
                         args=(read_fd, w2, counters, idx, on_progress if idx == 0 else None, relay_errors))
    t.start()
    return t, r2


def _wait_all(procs: list[subprocess.Popen], deadline: float, shown: str) -> None:
    """Wait for every stage until the deadline; past it, kill them all and raise CommandTimeout."""
    timed_out = False
    for p in procs:
        remaining = deadline - time.monotonic()
        try:
            p.wait(timeout=max(remaining, 0.001))
        except subprocess.TimeoutExpired:
            timed_out = True
            break
    if timed_out:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            p.wait()
        raise CommandTimeout(f"pipeline timed out: {shown[:200]}", hint="raise command_timeout or check the target")


def _stderr_tail(ef) -> str:
    """The last STDERR_TAIL_BYTES of a child's stderr file, decoded; the file is closed."""
    ef.seek(0, os.SEEK_END)
    size = ef.tell()
    ef.seek(max(0, size - STDERR_TAIL_BYTES))
    text = ef.read().decode("utf-8", "replace")
    ef.close()
    return text


def _stage_results(stages: Sequence[Stage], procs: list[subprocess.Popen], err_files: list) -> list[Result]:
    return [Result(list(st.argv), p.returncode, "", _stderr_tail(ef)) for st, p, ef in zip(stages, procs, err_files)]


def _raise_for_failed_stage(stages: Sequence[Stage], results: list[Result], shown: str) -> None:
    failed = [(st, r) for st, r in zip(stages, results) if r.returncode not in st.ok_codes]
    if not failed:
        return
    # A downstream failure makes upstream stages die of SIGPIPE, and an upstream failure starves
    # the stages after it: blame the first stage that failed for a reason of its own.
    def is_sigpipe(r: Result) -> bool:
        return r.returncode in (-signal.SIGPIPE, 128 + signal.SIGPIPE) or "Broken pipe" in r.stderr

    real = [f for f in failed if not is_sigpipe(f[1])]
    st, r = (real[0] if real else failed[0])
    raise CommandFailed(r.argv, r.returncode, r.stderr,
                        hint=f"stage {stages.index(st) + 1} of {len(stages)} in: {shown[:160]}")


@dataclass
class _Started:
    """What a pipeline has started so far: its children and their stderr files, the relays, fds to close."""
    counters: list[int]
    procs: list[subprocess.Popen] = field(default_factory=list)
    err_files: list = field(default_factory=list)
    relays: list[threading.Thread] = field(default_factory=list)
    relay_errors: list[BaseException] = field(default_factory=list)
    opened: list[int] = field(default_factory=list)


def _spawn_stages(stages: Sequence[Stage], run: _Started, count_after: Sequence[int], on_progress) -> None:
    """Start every stage, each reading the previous one's pipe (through a counting relay where asked)."""
    prev_read: int | None = None
    for i, st in enumerate(stages):
        stdin = _first_stdin(st, run.opened) if i == 0 else prev_read
        last = i == len(stages) - 1
        stdout, next_read = _stage_stdout(st, last, run.opened)
        ef = tempfile.TemporaryFile()
        run.err_files.append(ef)
        p = subprocess.Popen(list(st.argv), executable=which(st.argv[0], _environment(st.env)), stdin=stdin,
                             stdout=stdout, stderr=ef, env=_environment(st.env), cwd=st.cwd,
                             preexec_fn=_death_signal_setter())
        run.procs.append(p)
        # The parent must not hold pipe ends, or EOF/EPIPE never propagate.
        if i > 0 and prev_read is not None:
            os.close(prev_read)
        if not last:
            os.close(stdout)
        if not last and i in count_after:
            t, next_read = _start_relay(next_read, run.counters, list(count_after).index(i), on_progress,
                                        run.relay_errors)
            run.relays.append(t)
        prev_read = next_read


def _kill_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def pipeline(stages: Sequence[Stage], *, mutates: bool = True, timeout: float | None = None,
             count_after: Sequence[int] = (), on_progress: Callable[[int], None] | None = None) -> PipelineResult:
    """Run `a | b | c`, kernel to kernel, checking every stage's exit status.

    `count_after=[i]` inserts a splice relay after stage i that counts the bytes flowing to stage
    i+1; `on_progress(total)` is called with the running count of the first counted link.
    """
    if not stages:
        raise ValueError("empty pipeline")
    shown = display_pipeline(stages)
    if mutates and DRY_RUN:
        record_plan(shown)
        return PipelineResult([Result(list(s.argv), 0, dry_run=True) for s in stages], dry_run=True)
    for st in stages:
        which(st.argv[0], _environment(st.env))
    _log(shown)
    deadline = time.monotonic() + (timeout if timeout is not None else (DEFAULT_TIMEOUT or 1e12))
    start = time.monotonic()
    run = _Started([0] * len(count_after))
    try:
        _spawn_stages(stages, run, count_after, on_progress)
        for fd in run.opened:
            os.close(fd)
        run.opened.clear()
        _wait_all(run.procs, deadline, shown)
        for t in run.relays:
            t.join()
    except BaseException:
        _kill_all(run.procs)
        raise
    finally:
        for fd in run.opened:
            try:
                os.close(fd)
            except OSError:
                pass
    results = _stage_results(stages, run.procs, run.err_files)
    _raise_for_failed_stage(stages, results, shown)
    if run.relay_errors:
        raise run.relay_errors[0]
    return PipelineResult(results, run.counters, time.monotonic() - start)


def plan_only(text: str) -> bool:
    """For changes made in Python (mkdir, chmod, file writes): under --dry-run print the equivalent
    shell command and return True so the caller skips the change."""
    if DRY_RUN:
        record_plan(text)
        return True
    return False


_PRCTL: list = []


def _death_signal_setter() -> Callable[[], None] | None:
    """A preexec function making the child get SIGKILL when this process dies (even by SIGKILL),
    so no engine run, `send | ssh` stage or host step outlives the job that owns its lock and its
    temporary snapshot. Every child gets it (run, stream, pipeline). Resolved in the parent: the
    child of a threaded process must not import anything. (The kernel ties the signal to the
    thread that started the child; each function here waits for its children in that thread.)"""
    if not _PRCTL:
        try:
            import ctypes

            _PRCTL.append(ctypes.CDLL("libc.so.6", use_errno=True).prctl)
        except (OSError, AttributeError):
            _PRCTL.append(None)
    prctl = _PRCTL[0]
    if prctl is None:
        return None

    parent = os.getpid()

    def set_pdeathsig() -> None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the signal was armed: follow it now
            os.kill(os.getpid(), signal.SIGKILL)

    return set_pdeathsig


def _kill_after(limit: float, p: subprocess.Popen, timed_out: list[bool]) -> threading.Timer:
    """A started timer that kills `p` after `limit` seconds and notes it in `timed_out`."""
    def kill() -> None:
        timed_out.append(True)
        p.kill()

    timer = threading.Timer(limit, kill)
    timer.daemon = True
    timer.start()
    return timer


def _read_lines(p: subprocess.Popen, on_line, keep_output: bool) -> tuple[str, list[str]]:
    """Read `p`'s stdout to its end, `on_line` for each non-empty line: (the last such line, every line
    if `keep_output`)."""
    last = ""
    kept: list[str] = []
    assert p.stdout is not None
    for raw in p.stdout:
        text = raw.decode("utf-8", "surrogateescape")
        if keep_output:
            kept.append(text)
        line = text.rstrip("\n")
        if line:
            last = line
            if on_line:
                on_line(line)
    return last, kept


def stream(argv: Sequence[str], on_line: Callable[[str], None] | None = None, *, mutates: bool = True,
           cwd: str | None = None, env: dict[str, str] | None = None, timeout: float | None = None,
           ok_codes: Sequence[int] = (0,), check: bool = True, keep_output: bool = False) -> Result:
    """Run one command, calling `on_line` for each non-empty stdout line as it arrives (JSON progress).

    The child dies with this process. Unless `keep_output`, stdout lines are not kept (they may be
    many) and the result's stdout holds the last line; stderr holds its tail. A timeout kills it.
    """
    argv = [str(a) for a in argv]
    if mutates and DRY_RUN:
        record_plan(display(argv))
        return Result(argv, 0, "", "", 0.0, dry_run=True)
    full_env = _environment(env)
    exe = which(argv[0], full_env)
    _log(display(argv))
    start = time.monotonic()
    limit = timeout if timeout is not None else DEFAULT_TIMEOUT
    err = tempfile.TemporaryFile()
    p = subprocess.Popen(argv, executable=exe, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                         cwd=cwd, env=full_env, preexec_fn=_death_signal_setter())
    timed_out: list[bool] = []
    timer = _kill_after(limit, p, timed_out) if limit else None
    try:
        last, kept = _read_lines(p, on_line, keep_output)
        p.wait()
    except BaseException:
        _kill_all([p])
        raise
    finally:
        if timer:
            timer.cancel()
    stderr = _stderr_tail(err)
    if timed_out:
        raise CommandTimeout(f"{argv[0]} timed out after {limit:.0f}s", hint="raise command_timeout or check the target")
    result = Result(argv, p.returncode, "".join(kept) if keep_output else last, stderr, time.monotonic() - start)
    if check and p.returncode not in ok_codes:
        raise CommandFailed(argv, p.returncode, stderr)
    return result


def background(argv: Sequence[str]) -> subprocess.Popen:
    """Start a helper that must live while the caller works (e.g. a process holding a namespace);
    it dies with this process. The caller ends it with `p.kill(); p.wait()`. Never in --dry-run."""
    argv = [str(a) for a in argv]
    full_env = _environment(None)
    exe = which(argv[0], full_env)
    _log(display(argv))
    return subprocess.Popen(argv, executable=exe, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=full_env, preexec_fn=_death_signal_setter())


def interactive(argv: Sequence[str]) -> int:
    """Run a command on this process's own terminal/stdio (an admin's `ssh` session) and return its
    exit status. With --dry-run it is only printed."""
    argv = [str(a) for a in argv]
    if DRY_RUN:
        record_plan(display(argv))
        return 0
    full_env = _environment(None)
    exe = which(argv[0], full_env)
    _log(display(argv))
    return subprocess.run(argv, executable=exe, env=full_env).returncode


def self_command() -> list[str]:
    """The command that runs this same cocalc-ctl again (a move's host steps on this machine):
    the script the user ran when that was a cocalc-ctl program (`bin/cocalc-ctl`, which sets up
    its checkout's venv in-process, or an installed entry point), else this interpreter with
    `-m cocalc_ctl`. `sys.executable -m cocalc_ctl` alone fails when `bin/cocalc-ctl` runs under
    a system python3 that only gains the venv's packages in-process."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name in ("cocalc_ctl", "cocalc_ctl.__main__"):
        return [sys.executable, "-m", "cocalc_ctl"]
    from cocalc_ctl import program

    running = program.running_program()  # the one answer to "which program is this" (units use it too)
    if running is not None and os.path.basename(running).startswith("cocalc-ctl"):
        return [running]
    return [sys.executable, "-m", "cocalc_ctl"]


def fork(child: Callable[[], int], *, death_signal: int = signal.SIGTERM) -> int:
    """Fork this interpreter (no exec): the child runs `child()` and exits with its return value, never
    returning here; the parent gets the child's pid. The child gets `death_signal` when this process
    dies, even by SIGKILL. For long-lived workers of a single-threaded parent that must share its
    sockets (`proxy serve --workers`); call it before any event loop or thread exists."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()  # or the child would write the parent's buffered text a second time
        except (OSError, ValueError):
            pass
    _death_signal_setter()  # resolve prctl in the parent, as for the other children
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        if _PRCTL and _PRCTL[0] is not None:
            _PRCTL[0](1, death_signal)  # PR_SET_PDEATHSIG
            if os.getppid() != parent:
                os._exit(1)
        code = child()
    except BaseException:  # a child never returns into the parent's code
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code if isinstance(code, int) else 1)
    return 0  # unreachable
