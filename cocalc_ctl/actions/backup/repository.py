"""The repository side of backups: which engine, with what repository and password; init, list,
resolve a backup id, forget + prune. Nothing here touches a project's files.

The repository and password never reach a command line: restic gets them in its environment,
rustic in a 0600 profile file under `<data_dir>/backup/`. The engine's cache lives in
`<data_dir>/cache/<engine>` (the timer's unit has a read-only /root).
"""

from __future__ import annotations

import os
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from cocalc_ctl import ids, proc, safepath
from cocalc_ctl.config import Config, redact_dsn
from cocalc_ctl.errors import CommandFailed, InvalidInput, NotFound, PreconditionFailed
from cocalc_ctl.state import backup_jobs, host_db
from cocalc_ctl.tools import backup_engine
from cocalc_ctl.tools.backup_engine import Engine

_BACKUP_ID_RE = re.compile(r"[0-9a-f]{8,64}", re.ASCII)
_REPO_SCHEME_RE = re.compile(r"[a-z][a-z0-9]*:\S+", re.ASCII)
NO_LIMIT = 10 ** 6  # "no timeout": ~11 days (poll() takes milliseconds in a C int)


def repo_display(repo: str) -> str:
    return redact_dsn(repo)


def engine_for(cfg: Config) -> Engine:
    """The configured engine, with the repository and password checked (never put on argv)."""
    repo = cfg["backup.repo"]
    if not repo:
        raise PreconditionFailed("no backup repository configured", hint="set backup.repo in the config")
    if "\n" in repo or "\x00" in repo or not (repo.startswith("/") or _REPO_SCHEME_RE.fullmatch(repo)):
        raise InvalidInput(f"backup.repo {repo_display(repo)!r} is not a repository",
                           hint="use an absolute path, rest:http://host:port/, s3:..., sftp:...")
    pw = cfg["backup.password_file"]
    if pw:
        try:
            st = os.stat(pw)
        except OSError:
            raise PreconditionFailed(f"backup password file {pw} does not exist",
                                     hint="create it (mode 0600) or fix backup.password_file") from None
        if st.st_mode & 0o077:
            raise PreconditionFailed(f"backup password file {pw} is readable by others",
                                     hint=f"chmod 600 {pw}")
    elif not (os.environ.get("RESTIC_PASSWORD_FILE") or os.environ.get("RESTIC_PASSWORD")
              or os.environ.get("RUSTIC_PASSWORD_FILE") or os.environ.get("RUSTIC_PASSWORD")):
        raise PreconditionFailed("no backup repository password configured",
                                 hint="set backup.password_file to a 0600 file holding it")
    name = cfg["backup.engine"]
    if name == "auto":
        name = "rustic" if proc.have("rustic") else "restic"
    proc.which(name)
    # the engine's cache lives in data_dir: the timer's unit has a read-only /root
    cache = cfg.data_dir / "cache" / name
    if not proc.DRY_RUN:
        cache.mkdir(mode=0o700, parents=True, exist_ok=True)
    profile = None
    if name == "rustic":
        profile = str(_write_rustic_profile(cfg, repo, pw, str(cache)))
    # a big project's first backup can take hours: not bound by command_timeout
    return Engine(name, repo, pw, profile, cache_dir=str(cache), timeout=float(cfg["backup.timeout"] or NO_LIMIT))


def _write_rustic_profile(cfg: Config, repo: str, pw: str | None, cache: str) -> Path:
    d = cfg.data_dir / "backup"
    path = d / "rustic-profile.toml"
    text = backup_engine.rustic_profile(repo, pw, cache)
    if proc.DRY_RUN:
        return path
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    if not path.exists() or path.read_text() != text:
        safepath.write_atomic(path, text, mode=0o600)
    return path


def with_version(eng: Engine) -> Engine:
    """The engine with its version filled in (gates newer command-line features)."""
    import dataclasses

    res = proc.run(eng.version_cmd(), mutates=False, check=False)
    return dataclasses.replace(eng, version=backup_engine.parse_version(res.stdout))


def run_engine(eng: Engine, argv: list[str], *, mutates: bool = True, ok_codes=(0,), **kw) -> proc.Result:
    try:
        return proc.run(argv, mutates=mutates, env=eng.env(), ok_codes=ok_codes, **kw)
    except CommandFailed as exc:
        raise backup_engine.classify(exc, repo_display(eng.repo)) from None


@dataclass
class InitResult:
    repo: str
    engine: str
    created: bool


def init(cfg: Config) -> InitResult:
    """Create the repository if it does not exist yet (idempotent)."""
    eng = engine_for(cfg)
    shown = repo_display(eng.repo)
    probe = proc.run(eng.probe(), mutates=False, check=False, env=eng.env())
    if probe.returncode == 0:
        return InitResult(shown, eng.name, False)
    err = backup_engine.classify(CommandFailed(probe.argv, probe.returncode, probe.stderr), shown)
    if not (isinstance(err, PreconditionFailed) and "no backup repository" in err.message):
        raise err
    run_engine(eng, eng.init())
    return InitResult(shown, eng.name, True)


# -- list -----------------------------------------------------------------------------------------

@dataclass
class BackupInfo:
    id: str
    short_id: str
    time: str
    host: str | None
    bytes: int | None
    tags: list[str]


def made_by_cocalc_ctl(snap: backup_engine.EngineSnapshot, pid: str) -> bool:
    """`backup create` tags a project's backup `project:<pid>` and `host:<label>` and sets the
    engine's host to that same label. A snapshot someone made by hand with the engine and a
    `project:` tag does not follow that, and must never become the project's `latest` (a full
    restore would replace the whole project with it)."""
    hosts = [t.split(":", 1)[1] for t in snap.tags if t.startswith("host:")]
    return f"project:{pid}" in snap.tags and len(hosts) == 1 and bool(hosts[0]) and snap.hostname == hosts[0]


def project_backups(eng: Engine, pid: str) -> tuple[list[backup_engine.EngineSnapshot],
                                                  list[backup_engine.EngineSnapshot]]:
    """(the project's backups made by cocalc-ctl, other snapshots carrying its tag), oldest first."""
    res = run_engine(eng, eng.snapshots(tags=[f"project:{pid}"]), mutates=False)
    snaps = backup_engine.parse_snapshots(res.stdout)
    ours = [s for s in snaps if made_by_cocalc_ctl(s, pid)]
    return ours, [s for s in snaps if not made_by_cocalc_ctl(s, pid)]


def _note_ignored(pid: str, foreign: list) -> None:
    if foreign:
        from cocalc_ctl import output

        output.note(f"ignored {len(foreign)} snapshot(s) tagged project:{pid} that cocalc-ctl did not make "
                    "(no matching host: tag and host); list them with the engine's `snapshots` command")


def list_backups(cfg: Config, project_id: str) -> list[BackupInfo]:
    """Backups of a project in the repository made by cocalc-ctl, oldest first (the project need
    not be on this host)."""
    pid = ids.project_id(project_id)
    eng = engine_for(cfg)
    ours, foreign = project_backups(eng, pid)
    _note_ignored(pid, foreign)
    known: dict[str, sqlite3.Row] = {}
    if host_db.db_path(cfg.data_dir).exists():
        with host_db.connect(cfg.data_dir) as conn:
            known = backup_jobs.by_backup_id(conn, pid)
    out = []
    for s in ours:
        row = known.get(s.id) or known.get(s.short_id) or next(
            (r for k, r in known.items() if s.id.startswith(k)), None)
        host = next((t.split(":", 1)[1] for t in s.tags if t.startswith("host:")), s.hostname)
        out.append(BackupInfo(s.id, s.short_id, s.time, host, row["bytes"] if row else None, s.tags))
    return out


def resolve_backup_id(cfg: Config, eng: Engine, pid: str, backup_id: str) -> str:
    """`latest` → the newest backup of the project; otherwise a validated id that must exist."""
    if backup_id != "latest" and not _BACKUP_ID_RE.fullmatch(backup_id or ""):
        raise InvalidInput(f"invalid backup id {ids.quoted(backup_id)}",
                           hint="give `latest` or an id from `cocalc-ctl backup list PROJECT`")
    snaps, foreign = project_backups(eng, pid)
    ignored = f" ({len(foreign)} snapshot(s) not made by cocalc-ctl ignored)" if foreign else ""
    if backup_id == "latest":
        if not snaps:
            raise NotFound(f"project {pid} has no backups in {repo_display(eng.repo)}{ignored}",
                           hint="run `cocalc-ctl backup create PROJECT` first")
        _note_ignored(pid, foreign)
        return snaps[-1].id
    matches = [s for s in snaps if s.id.startswith(backup_id)]
    if not matches:
        if any(s.id.startswith(backup_id) for s in foreign):
            raise NotFound(f"backup {backup_id} was not made by cocalc-ctl for project {pid}: ignored",
                           hint="restore it with the engine itself if you really mean it")
        raise NotFound(f"backup {backup_id} of project {pid} not found{ignored}",
                       hint="see `cocalc-ctl backup list PROJECT`")
    if len(matches) > 1:
        raise InvalidInput(f"backup id {backup_id} is ambiguous", hint="give more of the id")
    return matches[0].id
