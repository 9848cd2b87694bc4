"""The engine interface: exact command lines of both dialects, output parsers, error mapping."""

from __future__ import annotations

import json

import pytest

from cocalc_ctl.errors import Busy, CommandFailed, OperationFailed, PreconditionFailed
from cocalc_ctl.tools import backup_engine as be

PID = "0a0a0a0a-1111-4222-8333-444444444444"
HOST = "5b5b5b5b-1111-4222-8333-444444444444"
RESTIC = be.Engine("restic", "/srv/repo", "/etc/cocalc/pw")
RUSTIC = be.Engine("rustic", "/srv/repo", "/etc/cocalc/pw", profile="/var/lib/cocalc-ctl/backup/rustic-profile.toml")


def test_restic_command_lines():
    assert RESTIC.init() == ["restic", "init"]
    assert RESTIC.backup(host=HOST, tags=[f"project:{PID}", f"host:{HOST}"]) == [
        "restic", "backup", "--json", "--host", HOST, "--tag", f"project:{PID}", "--tag", f"host:{HOST}", "."]
    assert RESTIC.snapshots(tags=[f"project:{PID}"]) == ["restic", "snapshots", "--json", "--tag", f"project:{PID}"]
    assert RESTIC.restore("abcdef12", "/pool/.restore-staging/p") == [
        "restic", "restore", "abcdef12", "--target", "/pool/.restore-staging/p", "--verify"]
    assert RESTIC.restore("abcdef12", "/t", path="/a b/c") == [
        "restic", "restore", "abcdef12", "--target", "/t", "--include", "/a b/c", "--verify"]
    assert RESTIC.forget(tags=[f"project:{PID}"], keep={"daily": 7, "weekly": 4, "monthly": 0}, prune=False,
                         dry_run=True) == [
        "restic", "forget", "--json", "--group-by", "", "--tag", f"project:{PID}",
        "--keep-daily", "7", "--keep-weekly", "4", "--dry-run"]
    assert RESTIC.prune() == ["restic", "prune"]
    # newer restic: restore keeps sparse files sparse
    import dataclasses

    new = dataclasses.replace(RESTIC, version=(0, 16, 4))
    assert new.restore("abcdef12", "/t") == ["restic", "restore", "abcdef12", "--target", "/t", "--verify", "--sparse"]
    assert RESTIC.ok_codes_backup == (0, 3)


def test_restic_secrets_only_in_environment():
    env = RESTIC.env()
    assert env["RESTIC_REPOSITORY"] == "/srv/repo" and env["RESTIC_PASSWORD_FILE"] == "/etc/cocalc/pw"
    for argv in (RESTIC.init(), RESTIC.backup(host="h", tags=[]), RESTIC.snapshots(tags=[]), RESTIC.prune()):
        assert "/srv/repo" not in argv and "/etc/cocalc/pw" not in argv


def test_rustic_golden_command_lines():
    P = ["rustic", "-P", "/var/lib/cocalc-ctl/backup/rustic-profile.toml"]
    assert RUSTIC.init() == [*P, "init"]
    assert RUSTIC.backup(host=HOST, tags=[f"project:{PID}", f"host:{HOST}"]) == [
        *P, "backup", "--json", "--host", HOST, "--tag", f"project:{PID}", "--tag", f"host:{HOST}", "."]
    assert RUSTIC.snapshots(tags=[f"project:{PID}"]) == [
        *P, "snapshots", "--json", "--group-by", "", "--filter-tags", f"project:{PID}"]
    assert RUSTIC.restore("abcdef12", "/pool/.restore-staging/p") == [
        *P, "restore", "abcdef12", "/pool/.restore-staging/p"]
    assert RUSTIC.restore("abcdef12", "/t/doc", path="/doc", verify=False) == [*P, "restore", "abcdef12:/doc", "/t/doc"]
    assert RUSTIC.forget(tags=[f"project:{PID}"], keep={"daily": 7, "monthly": 6}, prune=True) == [
        *P, "forget", "--json", "--group-by", "", "--filter-tags", f"project:{PID}",
        "--keep-daily", "7", "--keep-monthly", "6", "--prune"]
    assert RUSTIC.ok_codes_backup == (0,)
    assert RUSTIC.env() == {} and RUSTIC.unlock() == []


def test_rustic_profile_is_toml_with_repo_and_password_file():
    import tomllib

    text = be.rustic_profile('rest:http://u:p@127.0.0.1:8000/"x"', "/etc/cocalc/pw")
    data = tomllib.loads(text)
    assert data == {"repository": {"repository": 'rest:http://u:p@127.0.0.1:8000/"x"',
                                   "password-file": "/etc/cocalc/pw"}}


def test_parse_restic_snapshots_and_rustic_grouped_snapshots():
    restic_out = json.dumps([
        {"time": "2026-11-27T10:59:29Z", "id": "b" * 64, "short_id": "bbbbbbbb", "hostname": "h", "tags": ["x"],
         "paths": ["/p"]},
        {"time": "2026-11-27T10:59:27Z", "id": "a" * 64, "short_id": "aaaaaaaa", "hostname": "h", "tags": None}])
    snaps = be.parse_snapshots(restic_out)
    assert [s.short_id for s in snaps] == ["aaaaaaaa", "bbbbbbbb"] and snaps[0].tags == []
    rustic_out = json.dumps([[{"hostname": "h"}, [{"time": "2026-11-27T10:00:00Z", "id": "c" * 64, "tags": ["t"]}]]])
    (s,) = be.parse_snapshots(rustic_out)
    assert s.id == "c" * 64 and s.short_id == "cccccccc"
    assert be.parse_snapshots("") == [] and be.parse_snapshots("null") == []


def test_backup_status_and_summary_lines():
    status = be.parse_json_line('{"message_type":"status","percent_done":0.5,"total_files":4,"files_done":2,'
                                '"total_bytes":100,"bytes_done":50}')
    p = be.progress_of(status)
    assert (p.percent, p.bytes_done, p.bytes_total, p.files_done, p.files_total) == (0.5, 50, 100, 2, 4)
    summary = be.summary_of(be.parse_json_line(
        '{"message_type":"summary","files_new":2,"files_changed":0,"files_unmodified":1,"data_added":1045,'
        '"total_bytes_processed":5,"total_duration":0.2,"snapshot_id":"c3a0a2c0"}'))
    assert (summary.snapshot_id, summary.bytes_processed, summary.data_added, summary.files_new) == (
        "c3a0a2c0", 5, 1045, 2)
    rustic = be.summary_of({"id": "d" * 64, "summary": {"total_bytes_processed": 9, "data_added": 3}})
    assert rustic.snapshot_id == "d" * 64 and rustic.bytes_processed == 9
    assert be.parse_json_line("not json") is None and be.parse_json_line("[1]") is None


def test_parse_forget_groups():
    out = json.dumps([{"tags": ["project:x"], "keep": [{"id": "a" * 64, "time": "2"}],
                       "remove": [{"id": "b" * 64, "time": "1"}], "reasons": []}])
    kept, removed = be.parse_forget("some text\n" + out + "\n")
    assert [s.id for s in kept] == ["a" * 64] and [s.id for s in removed] == ["b" * 64]
    assert be.parse_forget("") == ([], [])


@pytest.mark.parametrize("stderr,kind,words", [
    ("Fatal: wrong password or no key found\n", PreconditionFailed, "wrong password"),
    ("Fatal: unable to open config file: Stat: stat /x/config: no such file or directory\n"
     "Is there a repository at the following location?\n/x\n", PreconditionFailed, "no backup repository"),
    ('Fatal: unable to open config file: client.Head: Head "http://127.0.0.1:1/config": dial tcp 127.0.0.1:1: '
     "connect: connection refused\nIs there a repository at the following location?\n", OperationFailed,
     "unreachable"),
    ("ignoring error for /f: write /f: no space left on device\nFatal: There were 3 errors\n", OperationFailed,
     "no space"),
    ("unable to create lock in backend: repository is already locked exclusively by PID 7\n", Busy, "locked"),
])
def test_engine_errors_become_typed_one_line_errors(stderr, kind, words):
    err = be.classify(CommandFailed(["restic", "x"], 1, stderr), "rest:http://u:***@h/")
    assert isinstance(err, kind) and words in err.one_line() and "\n" not in err.one_line()


def test_unknown_failure_keeps_command_error():
    exc = CommandFailed(["restic", "x"], 1, "Fatal: something odd\n")
    assert be.classify(exc, "/r") is exc


def test_parse_version():
    assert be.parse_version("restic 0.14.0 compiled with go1.19.8 on linux/amd64") == (0, 14, 0)
    assert be.parse_version("rustic v0.9.5") == (0, 9, 5)
