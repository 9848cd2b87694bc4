"""Golden --dry-run plans of snapshot create and prune: the exact commands, compared byte for byte.

Paths of the throwaway host are replaced by $HOST. UPDATE_GOLDEN=1 rewrites the files.
"""

from __future__ import annotations

import json

import pytest

from tests.support.ops import check_golden

pytestmark = pytest.mark.integration

PID = "44444444-4444-4444-8444-444444444444"
NAMES = ["2026-01-01T00:00:00Z", "2026-01-01T12:00:00Z", "2026-01-02T00:00:00Z", "2026-01-02T06:00:00Z",
         "2026-01-03T00:00:00Z", "manual"]


@pytest.fixture
def planned(host):
    host.cli("project", "create", PID)
    for n in NAMES:
        host.cli("snapshot", "create", PID, n)
    host.cli("snapshot", "lock", PID, "2026-01-01T12:00:00Z")
    return host


def _norm(host, text: str) -> str:
    return text.replace(str(host.base), "$HOST")


def test_snapshot_create_plan(planned):
    res = planned.cli("--dry-run", "snapshot", "create", PID, "before-upgrade")
    check_golden("plans/snapshot-create.txt", _norm(planned, res.stdout))
    assert not (planned.project_path(PID) / ".snapshots" / "before-upgrade").exists()


def test_snapshot_prune_plan(planned):
    res = planned.cli("--dry-run", "snapshot", "prune", PID, "--keep-daily", "2")
    check_golden("plans/snapshot-prune.txt", _norm(planned, res.stdout))
    res = planned.cli("--json", "--dry-run", "snapshot", "prune", PID, "--keep-daily", "2")
    data = json.loads(res.stdout)
    check_golden("plans/snapshot-prune.json", _norm(planned, json.dumps(data, indent=2, sort_keys=True) + "\n"))
    assert len(planned.json("snapshot", "list", PID)) == len(NAMES)  # nothing was deleted
