"""Hub schema management (the hub's PostgreSQL)."""

from __future__ import annotations

from cocalc_ctl import proc
from cocalc_ctl.config import Config
from cocalc_ctl.state import hub_db


def migrate(cfg: Config) -> hub_db.MigrateResult | None:
    """Apply pending hub migrations; under --dry-run only say so (returns None)."""
    if proc.plan_only("# apply pending hub migrations to hub_dsn"):
        return None
    return hub_db.migrate(cfg["hub_dsn"])
