"""Backup and restore against real restic and real btrfs: round trip, persist store, path and
cross-project restores, job rows, list/status/prune/due, and a `rest:` repository over rclone."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.support.backup import PID_A, PID_B, PID_C, backup_host, jobs, make_rich_tree, rclone_rest_server, restic, \
    tree_digest

pytestmark = pytest.mark.integration


def _last_json_line(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def test_round_trip_of_rich_tree_is_identical(make_host, workdir):
    h = backup_host(make_host, workdir)
    h.cli("project", "create", PID_A)
    live = h.project_path(PID_A)
    make_rich_tree(live, 2000)
    h.cli("snapshot", "create", PID_A, "keepme")
    persist = h.data / "sync" / "projects" / PID_A
    persist.mkdir(parents=True)
    (persist / "state.db").write_bytes(b"persist store v1")
    before = tree_digest(live)
    assert len(before) >= 2000

    res = _last_json_line(h.cli("--json", "backup", "create", PID_A).stdout)
    assert res["event"] == "result" and res["backup_id"] and res["persist_included"] is True
    assert res["source"] == "snapshot"
    # the temporary snapshot is gone, the user's snapshot untouched
    assert sorted(os.listdir(live / ".snapshots")) == ["keepme"]
    # stored paths are project-relative: `/dir00`, not the snapshot's absolute path
    listing = [ln for ln in restic(h, "ls", res["backup_id"]).stdout.splitlines() if ln.startswith("/")]
    assert "/dir00" in listing and "/.cocalc-ctl-persist/state.db" in listing
    assert not any(".snapshots" in line for line in listing)

    # wipe the project (and its persist store), then restore it
    h.cli("project", "delete", PID_A, "--force")
    assert not live.exists() and not persist.exists()
    lines = [json.loads(ln) for ln in h.cli("--json", "restore", PID_A, "latest").stdout.splitlines()]
    out = lines[-1]
    assert out["event"] == "result" and out["created_project"] is True and out["persist_restored"] is True
    # the same JSON progress lines as backup create: bytes written so far, against restic's restore size
    prog = [ln for ln in lines if ln["event"] == "progress"]
    assert prog and all(p["operation"] == "restore" for p in prog)
    assert all(p["bytes_total"] is None or p["bytes_done"] <= p["bytes_total"] for p in prog)
    assert tree_digest(live) == before
    assert (persist / "state.db").read_bytes() == b"persist store v1"
    assert os.listdir(h.pool / ".restore-staging") == []
    assert (live / ".snapshots").is_dir()

    # any host with the repository can restore it: a host that never had the project creates it
    other = backup_host(make_host, workdir, "b", init_repo=False)
    assert [b["host"] for b in other.json("backup", "list", PID_A)] == [h.host_id]
    out = _last_json_line(other.cli("--json", "restore", PID_A, res["backup_id"]).stdout)
    assert out["created_project"] is True
    assert tree_digest(other.project_path(PID_A)) == before
    assert (other.data / "sync" / "projects" / PID_A / "state.db").read_bytes() == b"persist store v1"
    assert [p["project_id"] for p in other.json("project", "list")] == [PID_A]


def test_full_restore_keeps_snapshots_and_replaces_content(make_host, workdir):
    h = backup_host(make_host, workdir)
    h.cli("project", "create", PID_A, "--quota", "300M")
    live = h.project_path(PID_A)
    (live / "doc.txt").write_text("version 1")
    (live / "docs").mkdir()
    (live / "docs" / "a.txt").write_text("inside")
    persist = h.data / "sync" / "projects" / PID_A
    persist.mkdir(parents=True)
    (persist / "p").write_text("p1")
    (persist / "ssh").mkdir(mode=0o700)  # the project sshd's host key: A's identity
    (persist / "ssh" / "ssh_host_ed25519_key").write_text("host key of A")
    assert h.json("backup", "list", PID_A) == []
    bid = _last_json_line(h.cli("--json", "backup", "create", PID_A).stdout)["backup_id"]
    before = tree_digest(live)
    (live / "doc.txt").write_text("version 2")
    (live / "extra").write_text("new file")
    (persist / "p").write_text("p2")
    h.cli("snapshot", "create", PID_A, "after")
    _last_json_line(h.cli("--json", "backup", "create", PID_A).stdout)

    out = _last_json_line(h.cli("--json", "restore", PID_A, bid).stdout)
    assert out["backup_id"].startswith(bid) and out["created_project"] is False
    assert out["unshared_snapshots"] == 1  # "after" no longer shares extents with the restored files
    assert tree_digest(live) == before
    assert (persist / "p").read_text() == "p1"
    assert (persist / "ssh" / "ssh_host_ed25519_key").read_text() == "host key of A"
    assert os.listdir(live / ".snapshots") == ["after"]
    assert h.json("project", "show", PID_A)["quota_bytes"] == 300 << 20  # the qgroup limit survives the swap
    said = h.cli("restore", PID_A, bid).stdout
    assert said.count("\n") == 2 and "share" in said and "the project's 1 snapshot(s)" in said, said

    # --path restores just that path into the live project
    (live / "doc.txt").write_text("edited")
    (live / "other").write_text("untouched")
    h.cli("restore", PID_A, "latest", "--path", "doc.txt")
    assert (live / "doc.txt").read_text() == "version 2"
    assert (live / "other").read_text() == "untouched"
    assert not [n for n in os.listdir(live) if n.startswith(".cocalc-ctl-restore-")]
    bad = h.cli("restore", PID_A, "latest", "--path", "../etc", check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    missing = h.cli("restore", PID_A, "latest", "--path", "no/such", check=False)
    assert missing.returncode == 3
    # a symlinked directory in the live project must not send the restore outside it
    outside = workdir / "outside"
    outside.mkdir()
    shutil.rmtree(live / "docs")
    os.symlink(outside, live / "docs")
    r = h.cli("restore", PID_A, "latest", "--path", "docs/a.txt", check=False)
    assert r.returncode == 1 and "symlink" in r.stderr
    assert os.listdir(outside) == [] and not [n for n in os.listdir(live) if n.startswith(".cocalc-ctl-restore-")]
    os.unlink(live / "docs")

    # --to-project restores into another project, which is created
    out = _last_json_line(h.cli("--json", "restore", PID_A, bid, "--to-project", PID_B).stdout)
    assert out["project_id"] == PID_B and out["created_project"] is True and out["unshared_snapshots"] == 0
    assert tree_digest(h.project_path(PID_B)) == before
    assert PID_B in {p["project_id"] for p in h.json("project", "list")}
    # ... with the rest of A's persist store but never A's sshd host key (B's root could then pose as A's sshd)
    persist_b = h.data / "sync" / "projects" / PID_B
    assert (persist_b / "p").read_text() == "p1" and not (persist_b / "ssh").exists()

    # a backup whose tags say one project and whose manifest says another is refused, untouched
    restic(h, "tag", "--remove", f"project:{PID_A}", "--add", f"project:{PID_C}", bid)
    r = h.cli("restore", PID_C, "latest", check=False)
    assert r.returncode == 1 and f"holds project {PID_A}" in r.stderr
    assert not h.project_path(PID_C).exists() and os.listdir(h.pool / ".restore-staging") == []


def test_jobs_list_status_prune_and_due(make_host, workdir):
    h = backup_host(make_host, workdir)
    h.cli("project", "create", PID_A)
    h.cli("project", "create", PID_B)
    (h.project_path(PID_A) / "f").write_text("a")
    due = h.json("backup", "due")
    assert sorted(b["project_id"] for b in due["backed_up"]) == sorted([PID_A, PID_B])
    assert h.json("backup", "due")["backed_up"] == []  # nothing changed
    (h.project_path(PID_B) / "g").write_text("b")
    assert [b["project_id"] for b in h.json("backup", "due")["backed_up"]] == [PID_B]

    rows = jobs(h)
    assert [r["state"] for r in rows] == ["succeeded"] * 3
    assert all(r["backup_id"] and r["bytes"] is not None and r["duration"] > 0 for r in rows)
    assert all(r["heartbeat_at"] and r["finished_at"] for r in rows)

    listed = h.json("backup", "list", PID_B)
    assert len(listed) == 2 and all(b["host"] == h.host_id for b in listed)
    assert listed[0]["time"] < listed[1]["time"]
    st = h.json("backup", "status")
    assert {p["project_id"] for p in st["projects"]} == {PID_A, PID_B}
    assert all(p["age_seconds"] is not None for p in st["projects"])
    text = h.cli("backup", "status").stdout
    assert "succeeded" in text and PID_A in text

    dry = h.json("--dry-run", "backup", "prune", PID_B, "--keep-last", "1")
    assert dry["result"]["removed"] == [listed[0]["id"]]
    assert len(h.json("backup", "list", PID_B)) == 2  # dry run changed nothing
    done = h.json("backup", "prune", PID_B, "--keep-last", "1")
    assert done["removed"] == [listed[0]["id"]]
    assert [b["id"] for b in h.json("backup", "list", PID_B)] == [listed[1]["id"]]
    assert len(h.json("backup", "list", PID_A)) == 1  # other projects untouched
    assert restic(h, "check").returncode == 0
    noarg = h.cli("backup", "prune", PID_B, check=False)
    assert noarg.returncode == 2


def test_rest_repository_over_rclone(make_host, workdir):
    with rclone_rest_server(workdir / "rest-repo") as (url, _server):
        h = backup_host(make_host, workdir, repo=url)
        assert "already exists" in h.cli("backup", "init").stdout
        h.cli("project", "create", PID_A)
        live = h.project_path(PID_A)
        make_rich_tree(live, 300)
        before = tree_digest(live)
        _last_json_line(h.cli("--json", "backup", "create", PID_A).stdout)
        shutil.rmtree(live / "dir00")
        h.cli("restore", PID_A, "latest")
        assert tree_digest(live) == before
        assert (workdir / "rest-repo" / "config").exists()
    # the server is gone: one-line error, exit 1, project untouched
    r = h.cli("backup", "create", PID_A, check=False)
    assert r.returncode == 1 and "unreachable" in r.stderr and r.stderr.count("\n") == 1
    r = h.cli("restore", PID_A, "latest", check=False)
    assert r.returncode == 1 and "unreachable" in r.stderr
    assert tree_digest(live) == before


def test_plain_directory_project_is_backed_up_live_with_a_warning(make_host, workdir):
    h = backup_host(make_host, workdir)
    live = h.project_path(PID_C)
    live.mkdir()
    (live / "notes").write_text("plain dir")
    r = h.cli("--json", "backup", "create", PID_C)
    assert "backing up the live tree" in r.stderr
    assert _last_json_line(r.stdout)["source"] == "live"
    before = tree_digest(live)
    (live / "notes").write_text("changed")
    h.cli("restore", PID_C, "latest")
    assert tree_digest(live) == before


def test_successful_backup_sets_last_backup_on_the_hub(make_host, workdir, hub_dsn):
    import psycopg

    h = backup_host(make_host, workdir, hub_dsn=hub_dsn)
    h.cli("hub", "migrate")
    h.cli("project", "create", PID_A)
    with psycopg.connect(hub_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO projects (project_id) VALUES (%s)", (PID_A,))
    h.cli("backup", "create", PID_A)
    with psycopg.connect(hub_dsn) as conn:
        (last,) = conn.execute("SELECT last_backup FROM projects WHERE project_id=%s", (PID_A,)).fetchone()
    assert last is not None
    # an unreachable hub only warns: the backup itself succeeded
    h.write_config(hub_dsn="host=/nonexistent-socket-dir dbname=x user=postgres")
    r = h.cli("backup", "create", PID_A)
    assert "last_backup was not updated" in r.stderr
    assert [j["state"] for j in jobs(h)] == ["succeeded", "succeeded"]


def test_failure_before_init_is_resolved_by_the_next_success_in_status(make_host, workdir):
    h = backup_host(make_host, workdir, init_repo=False)
    h.cli("project", "create", PID_A)
    assert h.cli("backup", "create", PID_A, check=False).returncode == 5
    st = h.json("backup", "status")
    (proj,) = [p for p in st["projects"] if p["project_id"] == PID_A]
    assert "backup init" in proj["failing"] and proj["last_success"] is None
    assert st["jobs"][0]["state"] == "failed" and st["jobs"][0]["resolved_by"] is None
    h.cli("backup", "init")
    h.cli("backup", "create", PID_A)
    st = h.json("backup", "status")
    (proj,) = [p for p in st["projects"] if p["project_id"] == PID_A]
    assert proj["failing"] is None and proj["last_success"]
    ok, failed = st["jobs"]
    assert ok["state"] == "succeeded" and failed["state"] == "failed" and failed["resolved_by"] == ok["id"]
    assert f"resolved by job {ok['id']}" in h.cli("backup", "status").stdout


def test_a_snapshot_cocalc_ctl_did_not_make_never_becomes_latest(make_host, workdir):
    h = backup_host(make_host, workdir)
    h.cli("project", "create", PID_A)
    live = h.project_path(PID_A)
    (live / "mine.txt").write_text("made by cocalc-ctl")
    ours = _last_json_line(h.cli("--json", "backup", "create", PID_A).stdout)["backup_id"]
    before = tree_digest(live)
    stranger = workdir / "stranger"
    stranger.mkdir()
    (stranger / "evil.txt").write_text("not this project")
    cfg = h.extra_config["backup"]
    env = {**os.environ, "RESTIC_REPOSITORY": cfg["repo"], "RESTIC_PASSWORD_FILE": cfg["password_file"]}
    import subprocess

    subprocess.run(["restic", "backup", "--tag", f"project:{PID_A}", "."], cwd=str(stranger), env=env, check=True,
                   capture_output=True)
    foreign = [s["id"] for s in json.loads(restic(h, "snapshots", "--json").stdout) if s["id"][:8] != ours[:8]]
    assert len(foreign) == 1

    listed = h.cli("--json", "backup", "list", PID_A)
    assert [b["id"][:8] for b in json.loads(listed.stdout)] == [ours[:8]]
    assert "ignored 1 snapshot(s)" in listed.stderr
    (live / "mine.txt").write_text("changed")
    r = h.cli("restore", PID_A, "latest")
    assert "ignored 1 snapshot(s)" in r.stderr and ours[:8] in r.stdout
    assert tree_digest(live) == before and not (live / "evil.txt").exists()
    r = h.cli("restore", PID_A, foreign[0][:12], check=False)
    assert r.returncode == 3 and "not made by cocalc-ctl" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert tree_digest(live) == before


def test_full_restore_shares_unchanged_files_with_the_newest_snapshot(make_host, workdir):
    h = backup_host(make_host, workdir)
    h.cli("project", "create", PID_A)
    live = h.project_path(PID_A)
    (live / "same.bin").write_bytes(os.urandom(8 << 20))
    (live / "sub").mkdir()
    (live / "sub" / "also.bin").write_bytes(os.urandom(1 << 20))
    (live / "changes.bin").write_bytes(os.urandom(1 << 20))
    linked = os.urandom(1 << 20)
    (live / "link.bin").write_bytes(linked)
    bid = _last_json_line(h.cli("--json", "backup", "create", PID_A).stdout)["backup_id"]
    before = tree_digest(live)
    (live / "changes.bin").write_bytes(os.urandom(1 << 20))
    h.cli("snapshot", "create", PID_A, "old")
    (live / "changes.bin").write_bytes(os.urandom(1 << 20))
    # a symlink the project placed, to identical bytes outside it: never followed
    outside = h.pool / "outside.bin"
    outside.write_bytes(linked)
    (live / "link.bin").unlink()
    os.symlink(outside, live / "link.bin")
    h.cli("snapshot", "create", PID_A, "newest")
    out = _last_json_line(h.cli("--json", "restore", PID_A, bid).stdout)
    assert tree_digest(live) == before
    # same.bin and sub/also.bin are unchanged since "newest": shared again; changes.bin and the
    # symlinked link.bin are not
    assert out["shared_snapshot"] == "newest" and out["shared_bytes"] == (9 << 20), out
    said = h.cli("restore", PID_A, bid).stdout
    assert "9.0 MiB of the restored files, unchanged since snapshot newest, share disk space" in said, said
    assert tree_digest(live) == before
