"""The backup engine: one interface over two command dialects, rustic and restic. No policy.

Both speak the same repository format. The repository and its password reach the engine through
the environment (restic: `RESTIC_REPOSITORY` / `RESTIC_PASSWORD_FILE`) or through a profile file
(rustic: `-P /abs/profile.toml`, written 0600 by the caller), never on a command line. Builders
return argument lists; parsers turn the engine's JSON into dataclasses; `classify` turns a
failed run's stderr into a typed error with a one-line message.

Dialect differences handled here:
- restic 0.14 exits 0 ok, 1 error, 3 "snapshot made but some files were unreadable"; rustic
  exits 0 or 1 only.
- restic stores absolute paths unless run from inside the source directory (`cd snap && backup .`);
  rustic the same, so both are run from inside the snapshot with `.`.
- rustic's `snapshots --json` is grouped unless `--group-by ''`; `restore SNAP[:PATH] DEST` is
  positional; filters are `--filter-tags`; its config profile is a TOML file given with `-P`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from cocalc_ctl.errors import CocalcError, CommandFailed, OperationFailed, PreconditionFailed

ENGINES = ("rustic", "restic")
# restic exit code: the snapshot was written but some source files could not be read.
RESTIC_INCOMPLETE = 3
RESTIC_SPARSE_SINCE = (0, 15, 0)  # `restore --sparse`


@dataclass(frozen=True)
class Engine:
    """Which program, and how to reach the repository. `profile` is rustic's TOML profile path."""

    name: str
    repo: str
    password_file: str | None = None
    profile: str | None = None
    version: tuple[int, ...] = ()
    cache_dir: str | None = None
    timeout: float | None = None  # for the long runs: backup, restore, prune (None: command_timeout)

    # -- environment and common prefix -------------------------------------------------------
    def env(self) -> dict[str, str]:
        if self.name == "restic":
            env = {"RESTIC_REPOSITORY": self.repo, "RESTIC_PROGRESS_FPS": "1"}
            if self.password_file:
                env["RESTIC_PASSWORD_FILE"] = self.password_file
            if self.cache_dir:
                env["RESTIC_CACHE_DIR"] = self.cache_dir
            return env
        return {}

    def _base(self) -> list[str]:
        if self.name == "rustic":
            if not self.profile:
                raise ValueError("rustic needs a profile file")
            return ["rustic", "-P", self.profile]
        return ["restic"]

    @property
    def ok_codes_backup(self) -> tuple[int, ...]:
        return (0, RESTIC_INCOMPLETE) if self.name == "restic" else (0,)

    # -- command lines -----------------------------------------------------------------------
    def init(self) -> list[str]:
        return [*self._base(), "init"]

    def probe(self) -> list[str]:
        """Read-only command that fails when the repository is missing or the password is wrong."""
        if self.name == "rustic":
            return [*self._base(), "repoinfo", "--only-files"]
        return [*self._base(), "cat", "config"]

    def backup(self, *, host: str, tags: list[str], json_output: bool = True) -> list[str]:
        """Back up the current directory (the caller runs it from inside the snapshot)."""
        argv = [*self._base(), "backup"]
        if json_output:
            argv.append("--json")
        argv += ["--host", host]
        for t in tags:
            argv += ["--tag", t]
        argv.append(".")
        return argv

    def snapshots(self, *, tags: list[str]) -> list[str]:
        if self.name == "rustic":
            return [*self._base(), "snapshots", "--json", "--group-by", "",
                    *(["--filter-tags", ",".join(tags)] if tags else [])]
        argv = [*self._base(), "snapshots", "--json"]
        if tags:
            argv += ["--tag", ",".join(tags)]
        return argv

    def restore(self, snapshot_id: str, target: str, *, path: str | None = None, verify: bool = True) -> list[str]:
        """Restore a snapshot (or only `path`, project-relative with a leading `/`) into `target`."""
        if self.name == "rustic":  # rustic checks each blob's hash while restoring: no flag needed
            source = f"{snapshot_id}:{path}" if path else snapshot_id
            return [*self._base(), "restore", source, target]
        argv = [*self._base(), "restore", snapshot_id, "--target", target]
        if path:
            argv += ["--include", path]
        if verify:
            argv.append("--verify")
        if self.version >= RESTIC_SPARSE_SINCE:
            argv.append("--sparse")  # keep sparse files sparse (restic 0.15+)
        return argv

    def restore_size(self, snapshot_id: str) -> list[str] | None:
        """`restic stats --mode restore-size`: bytes and files a full restore writes (rustic: not offered)."""
        if self.name == "rustic":
            return None
        return [*self._base(), "stats", "--json", "--mode", "restore-size", snapshot_id]

    def forget(self, *, tags: list[str], keep: dict[str, int], prune: bool, dry_run: bool = False) -> list[str]:
        """Apply a retention policy to the snapshots carrying `tags`, grouped as one set."""
        if self.name == "rustic":
            argv = [*self._base(), "forget", "--json", "--group-by", "", "--filter-tags", ",".join(tags)]
        else:
            argv = [*self._base(), "forget", "--json", "--group-by", "", "--tag", ",".join(tags)]
        for kind in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
            n = keep.get(kind)
            if n:
                argv += [f"--keep-{kind}", str(n)]
        if dry_run:
            argv.append("--dry-run")
        if prune:
            argv.append("--prune")
        return argv

    def prune(self) -> list[str]:
        return [*self._base(), "prune"]

    def unlock(self) -> list[str]:
        """Remove stale repository locks (ones whose process is gone)."""
        if self.name == "rustic":
            return []  # rustic is lock-free
        return [*self._base(), "unlock"]

    def check(self) -> list[str]:
        return [*self._base(), "check"]

    def version_cmd(self) -> list[str]:
        return [self.name, "--version"] if self.name == "rustic" else ["restic", "version"]


def rustic_profile(repo: str, password_file: str | None, cache_dir: str | None = None) -> str:
    """TOML for rustic's `-P` profile: repository, password file, cache (JSON strings are valid TOML)."""
    lines = ["[repository]", f"repository = {json.dumps(repo)}"]
    if password_file:
        lines.append(f"password-file = {json.dumps(password_file)}")
    if cache_dir:
        lines.append(f"cache-dir = {json.dumps(cache_dir)}")
    return "\n".join(lines) + "\n"


def parse_version(text: str) -> tuple[int, ...]:
    m = re.search(r"(?:restic|rustic)\s+v?(\d+)\.(\d+)\.(\d+)", text)
    return tuple(int(x) for x in m.groups()) if m else ()


# -- output parsers -----------------------------------------------------------------------------

@dataclass
class Progress:
    percent: float | None
    bytes_done: int | None
    bytes_total: int | None
    files_done: int | None
    files_total: int | None


@dataclass
class BackupSummary:
    snapshot_id: str | None
    bytes_processed: int | None
    data_added: int | None
    files_new: int | None = None
    files_changed: int | None = None
    files_unmodified: int | None = None
    duration: float | None = None


def parse_json_line(line: str) -> dict[str, Any] | None:
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def progress_of(obj: dict[str, Any]) -> Progress | None:
    if obj.get("message_type") != "status":
        return None
    return Progress(obj.get("percent_done"), obj.get("bytes_done"), obj.get("total_bytes"),
                    obj.get("files_done"), obj.get("total_files"))


def summary_of(obj: dict[str, Any]) -> BackupSummary | None:
    """restic's `{"message_type":"summary",...}` line, or rustic's snapshot JSON with `summary`."""
    if obj.get("message_type") == "summary":
        return BackupSummary(obj.get("snapshot_id"), obj.get("total_bytes_processed"), obj.get("data_added"),
                             obj.get("files_new"), obj.get("files_changed"), obj.get("files_unmodified"),
                             obj.get("total_duration"))
    if "summary" in obj and "id" in obj:  # rustic prints the saved snapshot
        s = obj["summary"] or {}
        return BackupSummary(obj["id"], s.get("total_bytes_processed"), s.get("data_added"), s.get("files_new"),
                             s.get("files_changed"), s.get("files_unmodified"), s.get("backup_duration"))
    return None


@dataclass
class EngineSnapshot:
    id: str
    short_id: str
    time: str
    hostname: str | None
    tags: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)


def parse_snapshots(text: str) -> list[EngineSnapshot]:
    """`snapshots --json` of either engine (rustic's grouped form is flattened), oldest first."""
    data = json.loads(text or "[]") or []
    items: list[dict] = []
    for entry in data:
        if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], list):
            items.extend(entry[1])  # rustic grouped: [[group, [snap...]], ...]
        elif isinstance(entry, dict) and "snapshots" in entry:
            items.extend(entry["snapshots"])
        elif isinstance(entry, dict):
            items.append(entry)
    out = []
    for s in items:
        sid = s.get("id", "")
        out.append(EngineSnapshot(sid, s.get("short_id") or sid[:8], s.get("time", ""), s.get("hostname"),
                                  list(s.get("tags") or []), list(s.get("paths") or [])))
    out.sort(key=lambda s: s.time)
    return out


def parse_forget(text: str) -> tuple[list[EngineSnapshot], list[EngineSnapshot]]:
    """(kept, removed) from `forget --json` (a list of groups with `keep` / `remove`)."""
    keep: list[EngineSnapshot] = []
    remove: list[EngineSnapshot] = []
    start = text.find("[")
    if start < 0:
        return keep, remove
    try:
        groups = json.JSONDecoder().raw_decode(text[start:])[0]
    except ValueError:
        return keep, remove
    for g in groups or []:
        keep += parse_snapshots(json.dumps(g.get("keep") or []))
        remove += parse_snapshots(json.dumps(g.get("remove") or []))
    return keep, remove


# -- errors -------------------------------------------------------------------------------------

def classify(exc: CommandFailed, repo_display: str) -> CocalcError:
    """A one-line typed error for a failed engine run (exit codes: see errors.py)."""
    text = exc.stderr_tail
    low = text.lower()
    if "wrong password" in low or "no key found" in low or "incorrect password" in low:
        return PreconditionFailed(f"wrong password for backup repository {repo_display}",
                                  hint="check the file named by backup.password_file")
    if any(s in low for s in ("connection refused", "no such host", "dial tcp", "i/o timeout",
                              "connection reset", "network is unreachable", "tls handshake")):
        return OperationFailed(f"backup repository {repo_display} is unreachable",
                               hint="check that the repository server is up and the URL in backup.repo")
    if "is there a repository at the following location" in low or "repository does not exist" in low \
            or ("unable to open config file" in low and ("no such file" in low or "404" in low)) \
            or "config file does not exist" in low:
        return PreconditionFailed(f"no backup repository at {repo_display}", hint="run `cocalc-ctl backup init`")
    if "already initialized" in low or "config file already exists" in low:
        return OperationFailed(f"backup repository {repo_display} already exists")
    if "no space left on device" in low:
        return OperationFailed("no space left on device", hint="free space on the target filesystem and retry")
    if "unable to create lock" in low or "repository is already locked" in low:
        from cocalc_ctl.errors import Busy

        return Busy(f"backup repository {repo_display} is locked by another run",
                    hint="retry later; `restic unlock` removes locks of dead processes")
    return exc
