"""project and snapshot commands against a real btrfs pool."""

import os
import subprocess

import pytest

from tests.support.hosts import tree_digest

pytestmark = pytest.mark.integration

PID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
PID2 = "2c4e28ba-2fa1-11d2-883f-0016d3cca427"


def subvolumes(host):
    out = subprocess.run(["btrfs", "subvolume", "list", "-a", str(host.pool)], capture_output=True, text=True)
    return sorted(line.split(" path ", 1)[1] for line in out.stdout.splitlines())


def pool_state(host):
    return subvolumes(host), tree_digest(host.pool)


def test_project_lifecycle(host):
    host.cli("project", "create", PID, "--quota", "100M")
    path = host.project_path(PID)
    (path / "hello.txt").write_text("hi")
    show = host.json("project", "show", PID)
    assert show["state"] == "stopped" and show["quota_bytes"] == 100 << 20
    assert show["generation"] > 0
    listed = host.json("project", "list")
    assert [p["project_id"] for p in listed] == [PID]
    host.cli("project", "delete", PID)
    assert not path.exists()
    assert host.json("project", "list") == []


def test_json_one_schema_per_noun_and_one_time_format(host):
    """create, list and show describe the same object with the same fields and values."""
    import re

    created = host.json("project", "create", PID, "--quota", "100M")
    shown = host.json("project", "show", PID)
    [listed] = host.json("project", "list")
    assert set(created) == set(shown) == set(listed)
    for key in ("project_id", "path", "state", "quota_bytes", "generation", "snapshots", "locked_snapshots"):
        assert created[key] == shown[key] == listed[key], key
    assert shown["quota_bytes"] == 100 << 20 and shown["generation"] > 0

    snap = host.json("snapshot", "create", PID, "first")
    [snap_listed] = host.json("snapshot", "list", PID)
    assert snap == snap_listed
    assert snap["uuid"] and snap["gen_at_creation"] and snap["referenced_bytes"] is not None
    stamp = host.json("snapshot", "create", PID)  # a timestamp name
    for s in (snap, stamp, *host.json("snapshot", "list", PID)):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", s["created"]), s["created"]
    assert "+00:00" not in host.cli("snapshot", "list", PID).stdout


def test_create_twice_is_refused(host):
    host.cli("project", "create", PID)
    res = host.cli("project", "create", PID, check=False)
    assert res.returncode == 1 and "already exists" in res.stderr


@pytest.mark.parametrize("bad", ["../etc", "project-x", "/abs", "", "1b4e28ba-2fa1-11d2-883f-0016d3cca4270",
                                 ".hidden", "a/b"])
def test_invalid_ids_are_refused_and_nothing_is_created(host, bad):
    before = pool_state(host)
    data_before = sorted(os.listdir(host.data))
    for args in (["project", "create", bad], ["snapshot", "create", bad], ["project", "delete", bad]):
        res = host.cli(*args, check=False)
        assert res.returncode == 2, res.stderr
        assert res.stderr.startswith("cocalc-ctl: error: ") and res.stderr.count("\n") == 1
        assert "Traceback" not in res.stderr
    assert pool_state(host) == before
    assert sorted(os.listdir(host.data)) == data_before


@pytest.mark.parametrize("bad", [".hidden", "a/b", "../x", ".snapshots", ""])
def test_invalid_snapshot_names_are_refused(host, bad):
    host.cli("project", "create", PID)
    before = pool_state(host)
    res = host.cli("snapshot", "create", PID, bad, check=False)
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert pool_state(host) == before


def test_unknown_project_is_not_found(host):
    res = host.cli("project", "show", PID2, check=False)
    assert res.returncode == 3 and "does not exist" in res.stderr


def test_snapshots_are_read_only_and_listed_with_generations(host):
    host.cli("project", "create", PID)
    path = host.project_path(PID)
    (path / "a").write_text("1")
    host.cli("snapshot", "create", PID, "first")
    (path / "a").write_text("2")
    host.cli("snapshot", "create", PID)
    snaps = host.json("snapshot", "list", PID)
    assert [s["name"] for s in snaps][0] == "first" and len(snaps) == 2
    assert snaps[0]["gen_at_creation"] < snaps[1]["gen_at_creation"]
    assert (path / ".snapshots" / "first" / "a").read_text() == "1"
    with pytest.raises(OSError):
        (path / ".snapshots" / "first" / "b").write_text("x")


def test_locked_snapshot_survives_delete_prune_and_blocks_project_delete(host):
    host.cli("project", "create", PID)
    for day in ("01", "02", "03"):
        host.cli("snapshot", "create", PID, f"2026-01-{day}T00:00:00Z")
    host.cli("snapshot", "lock", PID, "2026-01-01T00:00:00Z", "--reason", "legal hold")
    res = host.cli("snapshot", "delete", PID, "2026-01-01T00:00:00Z", check=False)
    assert res.returncode == 4 and "locked" in res.stderr
    pruned = host.json("snapshot", "prune", PID, "--keep-daily", "1")
    assert pruned["removed"] == ["2026-01-02T00:00:00Z"]
    names = [s["name"] for s in host.json("snapshot", "list", PID)]
    assert names == ["2026-01-01T00:00:00Z", "2026-01-03T00:00:00Z"]
    res = host.cli("project", "delete", PID, check=False)
    assert res.returncode == 4 and host.project_path(PID).exists()
    host.cli("snapshot", "unlock", PID, "2026-01-01T00:00:00Z")
    host.cli("snapshot", "delete", PID, "2026-01-01T00:00:00Z")
    host.cli("project", "delete", PID)
    assert not host.project_path(PID).exists()


def test_project_delete_force_removes_locked_snapshots_too(host):
    host.cli("project", "create", PID)
    host.cli("snapshot", "create", PID, "keep")
    host.cli("snapshot", "lock", PID, "keep")
    host.cli("project", "delete", PID, "--force")
    assert subvolumes(host) == []


def test_dry_run_changes_nothing(host):
    host.cli("project", "create", PID)
    for day in ("01", "02"):
        host.cli("snapshot", "create", PID, f"2026-01-{day}T00:00:00Z")
    before = pool_state(host)
    res = host.cli("--dry-run", "project", "create", PID2)
    assert f"btrfs subvolume create {host.pool}/project-{PID2}" in res.stdout
    res = host.cli("snapshot", "create", PID, "x", "--dry-run")
    assert res.stdout.startswith(f"btrfs subvolume snapshot -r {host.pool}/project-{PID} ")
    res = host.cli("snapshot", "prune", PID, "--keep-daily", "1", "--dry-run")
    assert res.stdout.strip() == f"btrfs subvolume delete {host.pool}/project-{PID}/.snapshots/2026-01-01T00:00:00Z"
    doc = host.json("--dry-run", "snapshot", "prune", PID, "--keep-daily", "1")
    assert doc["dry_run"] and len(doc["commands"]) == 1
    assert pool_state(host) == before


def test_auto_snapshots_only_when_the_generation_advanced(host):
    host.cli("project", "create", PID)
    first = host.json("snapshot", "auto")
    assert first[0]["created"]
    again = host.json("snapshot", "auto", PID)
    assert again[0]["created"] is None and "unchanged" in again[0]["reason"]
    # locking a snapshot does not count as a change to the project
    host.cli("snapshot", "lock", PID, first[0]["created"])
    assert host.json("snapshot", "auto", PID)[0]["created"] is None
    (host.project_path(PID) / "new").write_text("data")
    import time

    time.sleep(1.1)  # timestamp names have one-second resolution
    third = host.json("snapshot", "auto", PID)
    assert third[0]["created"] and third[0]["created"] != first[0]["created"]


def test_auto_prunes_with_configured_counts(host):
    host.write_config(**{"snapshot": {"keep_frequent": 0, "keep_daily": 1, "keep_weekly": 0, "keep_monthly": 0}})
    host.cli("project", "create", PID)
    for day in ("01", "02", "03"):
        host.cli("snapshot", "create", PID, f"2026-01-{day}T00:00:00Z")
    (host.project_path(PID) / "f").write_text("x")
    res = host.json("snapshot", "auto", PID)
    assert sorted(res[0]["removed"]) == ["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", "2026-01-03T00:00:00Z"]
    assert len(host.json("snapshot", "list", PID)) == 1


def test_concurrent_auto_runs_are_refused_by_the_lock(host):
    import fcntl

    host.cli("project", "create", PID)
    lockdir = host.data / "locks"
    lockdir.mkdir(exist_ok=True)
    with open(lockdir / "snapshot-auto.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        res = host.cli("snapshot", "auto", check=False)
    assert res.returncode == 4 and "busy" in res.stderr


def test_auto_dry_run_says_skipped_when_nothing_is_due(host):
    host.cli("project", "create", PID)
    host.cli("snapshot", "auto", PID)
    before = subvolumes(host)  # (reading the files would update atimes: a change to the project)
    res = host.cli("--dry-run", "snapshot", "auto", PID)
    assert f"# {PID}: skipped (unchanged since generation" in res.stdout, res.stdout
    (host.project_path(PID) / "new").write_text("data")
    import time

    time.sleep(1.1)  # timestamp names have one-second resolution
    res = host.cli("--dry-run", "snapshot", "auto", PID)
    assert f"btrfs subvolume snapshot -r {host.pool}/project-{PID} " in res.stdout
    assert f"# {PID}: would create 20" in res.stdout, res.stdout
    assert subvolumes(host) == before


def test_cocalc_millisecond_snapshots_are_pruned(host):
    host.cli("project", "create", PID)
    for day in ("01", "02", "03"):
        host.cli("snapshot", "create", PID, f"2026-01-{day}T10:57:55.123Z")
    res = host.json("snapshot", "prune", PID, "--keep-daily", "1")
    assert sorted(res["removed"]) == ["2026-01-01T10:57:55.123Z", "2026-01-02T10:57:55.123Z"], res
    assert [s["name"] for s in host.json("snapshot", "list", PID)] == ["2026-01-03T10:57:55.123Z"]
