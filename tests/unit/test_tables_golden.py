"""Tables on an 80-column terminal (golden files in tests/golden/tables/; UPDATE_GOLDEN=1 rewrites them):
they fit, ids are shortened (whole with --wide), no word is split, and piped output is unchanged."""

from __future__ import annotations

from types import SimpleNamespace as NS

import pytest

from cocalc_ctl import output
from cocalc_ctl.cli import common
from cocalc_ctl.cli.main import run
from tests.support.ops import check_golden

P1 = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
P2 = "7d3c9b2e-5a41-4f0e-8c6d-2e9f1a0b4c55"
H1 = "048b7c20-ac3f-45b9-9ef7-cfdb78ace99c"
H2 = "aa904629-afc1-42da-8d11-4d8b089c9e21"
BACKUP = "3f9a1c2be0d44b5f8a7e6d5c4b3a29181716151413121110f0e0d0c0b0a09080"
FP1 = "SHA256:/rWheWcrI70yxRej3RagxhxIhLEXOYDf2OlND6Xgq9I"
FP2 = "SHA256:ToyYGm1OzJ2J/3U+QV3lz1W8kam6ZR931WD3PlDhAOU"


@pytest.fixture(autouse=True)
def env(monkeypatch, tmp_path):
    monkeypatch.setattr(common, "G", common.Globals())
    monkeypatch.setattr(output, "WIDE", False)
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("LINES", "40")
    monkeypatch.setenv("COCALC_CTL_CONFIG", str(tmp_path / "c.yaml"))
    (tmp_path / "c.yaml").write_text(f"btrfs_root: {tmp_path}/pool\ndata_dir: {tmp_path}/data\n")
    _fake_actions(monkeypatch)


def _fake_actions(monkeypatch):
    from cocalc_ctl.actions.ops import timers
    from cocalc_ctl.actions.keys import keysync
    from cocalc_ctl.actions.backup import jobs as backups
    from cocalc_ctl.actions.project import projects, snapshots
    from cocalc_ctl.actions.move import hub

    monkeypatch.setattr(projects, "list_projects", lambda cfg: [
        NS(project_id=P1, state="running", referenced_bytes=8_600_000, exclusive_bytes=16_384,
           snapshots=["a", "b"], locked_snapshots=["a"]),
        NS(project_id=P2, state="stopped", referenced_bytes=210 * 2**20, exclusive_bytes=3 * 2**30,
           snapshots=[], locked_snapshots=[])])
    monkeypatch.setattr(snapshots, "list_snapshots", lambda cfg, p: [
        NS(name="2026-11-27T10:57:55Z", created="2026-11-27T10:57:55Z", gen_at_creation=9,
           referenced_bytes=8_388_608, exclusive_bytes=16_384, locked=False),
        NS(name="before-upgrade", created="2026-11-27T12:02:14Z", gen_at_creation=10,
           referenced_bytes=8_388_608, exclusive_bytes=16_384, locked=True)])
    monkeypatch.setattr(backups, "status", lambda cfg, limit=20, after=None: NS(
        jobs=[NS(id=12, project_id=P1, state="succeeded", backup_id=BACKUP, bytes=8_400_000,
                 started_at="2026-11-27T12:02:20Z", duration=3.25, error=None, resolved_by=None),
              NS(id=11, project_id=P2, state="failed", backup_id=None, bytes=None, started_at="2026-11-27T11:00:00Z",
                 duration=0.4, error="repository does not exist (run `cocalc-ctl backup init`)", resolved_by=None)],
        projects=[NS(project_id=P1, last_success="2026-11-27T12:02:23Z", age_seconds=4000, backup_id=BACKUP, failing=None),
                  NS(project_id=P2, last_success=None, age_seconds=None, backup_id=None,
                     failing="repository does not exist (run `cocalc-ctl backup init`)")]))
    monkeypatch.setattr(hub, "status", lambda cfg, p=None, limit=100, after=None: [
        NS(project_id=P1, state="succeeded", source_host_id=H1, dest_host_id=H2, mode="pipe", compress="zstd",
           attempt=1, progress={"bytes": 9_000_000}, status_reason=None),
        NS(project_id=P2, state="failed", source_host_id=H2, dest_host_id=H1, mode="backup", compress="none",
           attempt=3, progress=None, status_reason="destination host is not trusted (run `keys trust`)")])
    monkeypatch.setattr(timers, "list_jobs", lambda cfg, unit_dir=None, bin=None: [
        NS(name="snapshot-auto", default=True, kind="timer", schedule="*:0/15", role="host", installed="yes",
           enabled="enabled", active="active", command="/usr/local/bin/cocalc-ctl snapshot auto"),
        NS(name="keys-watch", default=False, kind="service", schedule="always", role="host", installed="no",
           enabled="disabled", active="inactive", command="/usr/local/bin/cocalc-ctl keys watch")])
    monkeypatch.setattr(keysync, "list_peers", lambda cfg: [
        NS(host_id=H2, name="host-b", ssh_server="127.0.0.3:49027", host_to_host_fingerprints=[FP1],
           sshpiperd_fingerprints=[FP2])])


TABLES = {
    "project_list": ["project", "list"],
    "snapshot_list": ["snapshot", "list", P1],
    "backup_status": ["backup", "status"],
    "move_status": ["move", "status"],
    "timers_list": ["timers", "list"],
    "keys_peers": ["keys", "peers"],
}


WORDS = {
    "project_list": ["running", "stopped", "REFERENCED", "210.0"],
    "snapshot_list": ["2026-11-27T10:57:55Z", "before-upgrade", "yes"],
    "backup_status": ["succeeded", "failed", "repository", "`cocalc-ctl", "2026-11-27T12:02:20Z"],
    "move_status": ["succeeded", "pipe/zstd", "destination", "trusted"],
    "timers_list": ["snapshot-auto", "keys-watch", "inactive", "/usr/local/bin/cocalc-ctl"],
    "keys_peers": ["host-b", "127.0.0.3:49027", "SHA256:/rWheWcrI70y…"],
}


def _render(argv, monkeypatch, capsys, *, tty: bool) -> str:
    monkeypatch.setattr(output, "is_tty", lambda: tty)
    assert run(argv) == 0, capsys.readouterr().err
    return capsys.readouterr().out


@pytest.mark.parametrize("name", list(TABLES))
def test_table_fits_80_columns(name, monkeypatch, capsys):
    text = _render(TABLES[name], monkeypatch, capsys, tty=True)
    check_golden(f"tables/{name}.txt", text)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert P1 not in text and H2 not in text and BACKUP not in text  # shortened
    tokens = set(text.split())
    for word in WORDS[name]:  # whole, never `succeed` + `ed`
        assert word in tokens, (word, text)


@pytest.mark.parametrize("name", list(TABLES))
def test_piped_table_keeps_every_value_whole(name, monkeypatch, capsys):
    text = _render(TABLES[name], monkeypatch, capsys, tty=False)
    check_golden(f"tables/{name}.piped.txt", text)
    assert "…" not in text


def test_wide_shows_whole_ids_on_a_terminal(monkeypatch, capsys):
    text = _render(["--wide", "keys", "peers"], monkeypatch, capsys, tty=True)
    assert H2 in text and FP1 in text


def test_short_ids():
    assert output.short_ids(f"{P1} and {BACKUP} {FP1}") == "1b4e28ba and 3f9a1c2b SHA256:/rWheWcrI70y…"
    assert output.short_ids("succeeded") == "succeeded"
