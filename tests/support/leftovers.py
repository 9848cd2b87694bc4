"""Run a demo script in its own process group and check (or force) that it left nothing behind:
no directory, mount, loop device or process that mentions its working directory."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.hosts import REPO, cleanup_mounts_under


def processes_mentioning(*needles: str) -> list[tuple[int, str]]:
    """(pid, command line) of every process whose command line or environment contains a needle."""
    found = []
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
            with open(f"/proc/{entry.name}/environ", "rb") as fh:
                environ = fh.read().decode(errors="replace")
        except OSError:  # gone meanwhile, or a kernel thread
            continue
        if any(n in cmdline or n in environ for n in needles):
            found.append((int(entry.name), cmdline))
    return found


def processes_left(*needles: str, settle: float = 5) -> list[tuple[int, str]]:
    """processes_mentioning(), after giving processes that are still exiting `settle` seconds to go."""
    deadline = time.monotonic() + settle
    while True:
        found = processes_mentioning(*needles)
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def leftovers(base: Path, settle: float = 5) -> list[str]:
    """What is still there of `base`: the directory, mounts, loop devices, processes."""
    b = str(base)
    procs = processes_left(b, settle=settle)
    out = []
    if base.exists():
        out.append(f"directory {b}")
    with open("/proc/self/mountinfo") as fh:
        out += [f"mount {line.split()[4]}" for line in fh if b in line]
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    out += [f"loop device {line}" for line in loops.splitlines() if b in line]
    out += [f"process {pid}: {args}" for pid, args in procs]
    return out


def kill_processes_mentioning(*needles: str) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        procs = processes_mentioning(*needles)
        if not procs:
            return
        for pid, _ in procs:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and processes_mentioning(*needles):
            time.sleep(0.1)


def force_cleanup(base: Path) -> None:
    """Remove whatever a demo left of `base`, whether it failed, hung or was killed."""
    kill_processes_mentioning(str(base))
    if base.exists():
        cleanup_mounts_under(base)
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class DemoRun:
    """One run of a demo in its own session; its output goes to a file (daemons cannot block a pipe).

    `prefix` is the demo's temp-dir prefix under /var/tmp; its directory is taken from the
    `demo directory DIR` line it prints first, or else from the directories with that prefix that
    appeared while it ran. `stop()` ends the whole process group."""

    argv: list[str]
    prefix: str
    log: Path
    env: dict | None = None
    proc: subprocess.Popen | None = None
    before: set[str] = field(default_factory=set)

    def start(self) -> "DemoRun":
        self.before = {str(p) for p in Path("/var/tmp").glob(self.prefix + "*")}
        with open(self.log, "wb") as fh:
            self.proc = subprocess.Popen(self.argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=self.env, cwd=str(REPO), start_new_session=True)
        return self

    @property
    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"{self.argv} did not finish in {timeout:.0f}s:\n{self.output[-3000:]}") from None

    def wait_for_line(self, pattern: str, timeout: float) -> re.Match:
        """Wait until the output has a line matching `pattern` (the demo must still be running)."""
        rx = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = rx.search(self.output)
            if m:
                return m
            if self.proc.poll() is not None:
                raise AssertionError(f"demo exited {self.proc.returncode} before {pattern!r}:\n{self.output[-3000:]}")
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} within {timeout:.0f}s:\n{self.output[-3000:]}")

    def bases(self) -> list[Path]:
        m = re.search(r"^#? ?demo directory (/var/tmp/\S+)$", self.output, re.M)
        if m:
            return [Path(m.group(1))]
        now = {str(p) for p in Path("/var/tmp").glob(self.prefix + "*")}
        return [Path(p) for p in sorted(now - self.before)]

    def stop(self) -> None:
        """End the demo's process group: SIGTERM, then SIGKILL after a grace period."""
        if self.proc is None:
            return
        for sig, grace in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                continue
            # the leader is gone; make sure the rest of its group is too
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            break
