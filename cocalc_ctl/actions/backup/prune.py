"""`backup prune`: forget a project's backups outside a retention policy, then prune the repository."""

from __future__ import annotations

from dataclasses import dataclass

from cocalc_ctl import ids, proc
from cocalc_ctl.actions.backup.repository import engine_for, run_engine
from cocalc_ctl.actions.backup.jobs import sweep_stale
from cocalc_ctl.config import Config
from cocalc_ctl.errors import InvalidInput
from cocalc_ctl.tools import backup_engine


@dataclass
class PruneResult:
    project_id: str
    kept: list[str]
    removed: list[str]
    dry_run: bool


def prune(cfg: Config, project_id: str, keep: dict[str, int]) -> PruneResult:
    """Engine forget (grouped as one set per project) then prune; under --dry-run only show."""
    pid = ids.project_id(project_id)
    if not any(keep.values()):
        raise InvalidInput("no retention given", hint="pass at least one of --keep-last/--keep-hourly/--keep-daily/--keep-weekly/--keep-monthly/--keep-yearly")
    eng = engine_for(cfg)
    sweep_stale(cfg, eng)
    tags = [f"project:{pid}"]
    dry = proc.DRY_RUN
    if dry:
        for argv in (eng.forget(tags=tags, keep=keep, prune=False), eng.prune()):
            proc.record_plan(proc.display(argv))
    res = run_engine(eng, eng.forget(tags=tags, keep=keep, prune=False, dry_run=dry), mutates=False)
    kept, removed = backup_engine.parse_forget(res.stdout)
    if removed and not dry:
        run_engine(eng, eng.prune(), timeout=eng.timeout)
    return PruneResult(pid, [s.id for s in kept], [s.id for s in removed], dry)
