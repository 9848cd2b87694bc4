"""Prune old host records at the end of the timers' runs (`backup due`, `snapshot auto`)."""

from __future__ import annotations

import sqlite3

from cocalc_ctl import output, proc
from cocalc_ctl.config import Config
from cocalc_ctl.state import host_db, host_records


def prune(cfg: Config) -> dict[str, int]:
    """Rows deleted per table ({} when there is no host database yet, or with --dry-run)."""
    if not host_db.db_path(cfg.data_dir).exists():
        return {}
    days = cfg["retention.host_records_days"]
    if proc.plan_only(f"# prune host records (backup_jobs, move_log, move_tickets) older than {days} days "
                      "in host sqlite, keeping the newest per project"):
        return {}
    try:
        with host_db.connect(cfg.data_dir) as conn:
            deleted = host_records.prune(conn, days=days, ticket_minutes=cfg["move.ticket_minutes"])
    except sqlite3.Error as exc:  # never fail the timer's own work for its housekeeping
        output.warn(f"pruning host records failed: {exc}")
        return {}
    if any(deleted.values()) and output.VERBOSE:
        output.note("pruned host records older than %d days: %s" % (
            days, ", ".join(f"{n} {table}" for table, n in deleted.items() if n)))
    return deleted
