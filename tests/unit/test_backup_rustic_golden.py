"""Golden tests: the exact rustic command lines the backup actions run (rustic is faked with
pytest-subprocess; it cannot be installed on the test machines)."""

from __future__ import annotations

import json
import os
import stat

import pytest

from cocalc_ctl import config, proc
from cocalc_ctl.actions.backup import prune as backup_prune
from cocalc_ctl.actions.backup import repository as backup_repo, restore
from cocalc_ctl.errors import PreconditionFailed

PID = "0a0a0a0a-1111-4222-8333-444444444444"


@pytest.fixture
def rustic_cfg(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    stub = bindir / "rustic"
    stub.write_text("#!/bin/sh\nexit 99\n")  # only found on PATH; every call is intercepted
    stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    pw.chmod(0o600)
    env = {"COCALC_CTL_BACKUP_REPO": "rest:http://127.0.0.1:8000/", "COCALC_CTL_BACKUP_PASSWORD_FILE": str(pw),
           "COCALC_CTL_DATA_DIR": str(tmp_path / "data"), "COCALC_CTL_BTRFS_ROOT": str(tmp_path / "pool"),
           "COCALC_CTL_CONFIG": str(tmp_path / "none.yaml"), "COCALC_CTL_HOST_ID": PID}
    (tmp_path / "none.yaml").write_text("{}\n")
    cfg = config.load(env=env)
    monkeypatch.setattr(proc, "DRY_RUN", False)
    return cfg, str(stub), str(tmp_path / "data" / "backup" / "rustic-profile.toml")


def test_engine_auto_prefers_rustic_and_writes_private_profile(rustic_cfg):
    cfg, stub, profile = rustic_cfg
    eng = backup_repo.engine_for(cfg)
    assert eng.name == "rustic" and eng.profile == profile
    st = os.stat(profile)
    assert stat.S_IMODE(st.st_mode) == 0o600 and stat.S_IMODE(os.stat(os.path.dirname(profile)).st_mode) == 0o700
    assert "rest:http://127.0.0.1:8000/" in open(profile).read()


def test_init_probes_then_creates(rustic_cfg, fp):
    cfg, stub, profile = rustic_cfg
    fp.register(["rustic", "-P", profile, "repoinfo", "--only-files"], returncode=1,
                stderr="error: config file does not exist in the backend\n")
    fp.register(["rustic", "-P", profile, "init"])
    assert backup_repo.init(cfg).created is True
    assert fp.call_count(["rustic", "-P", profile, "init"]) == 1


def test_init_is_idempotent(rustic_cfg, fp):
    cfg, stub, profile = rustic_cfg
    fp.register(["rustic", "-P", profile, "repoinfo", "--only-files"])
    assert backup_repo.init(cfg).created is False
    assert fp.call_count(["rustic", "-P", profile, "init"]) == 0


def test_backup_line_and_summary(rustic_cfg, fp):
    cfg, stub, profile = rustic_cfg
    eng = backup_repo.engine_for(cfg)
    argv = ["rustic", "-P", profile, "backup", "--json", "--host", PID, "--tag", f"project:{PID}", "--tag",
            f"host:{PID}", "."]
    fp.register(argv, stdout=[json.dumps({"id": "e" * 64, "summary": {"total_bytes_processed": 42,
                                                                       "data_added": 7}})])
    lines = []
    proc.stream(eng.backup(host=PID, tags=[f"project:{PID}", f"host:{PID}"]), lines.append)
    from cocalc_ctl.tools import backup_engine

    s = backup_engine.summary_of(json.loads(lines[-1]))
    assert (s.snapshot_id, s.bytes_processed, s.data_added) == ("e" * 64, 42, 7)


def test_list_uses_ungrouped_snapshots(rustic_cfg, fp):
    cfg, stub, profile = rustic_cfg
    out = [[{"hostname": "h2"}, [{"id": "f" * 64, "time": "2026-11-27T10:00:00Z", "hostname": "h2",
                                  "tags": [f"project:{PID}", "host:h2"]},
                                 {"id": "e" * 64, "time": "2026-11-28T10:00:00Z", "hostname": "h2",
                                  "tags": [f"project:{PID}"]}]]]  # made by hand: not ours, though newer
    fp.register(["rustic", "-P", profile, "snapshots", "--json", "--group-by", "", "--filter-tags", f"project:{PID}"],
                stdout=json.dumps(out))
    (b,) = backup_repo.list_backups(cfg, PID)
    assert b.id == "f" * 64 and b.host == "h2"


def test_prune_forgets_then_prunes(rustic_cfg, fp):
    cfg, stub, profile = rustic_cfg
    forget = ["rustic", "-P", profile, "forget", "--json", "--group-by", "", "--filter-tags", f"project:{PID}",
              "--keep-daily", "7", "--keep-weekly", "4"]
    fp.register(forget, stdout=json.dumps([{"keep": [{"id": "a" * 64, "time": "2"}],
                                            "remove": [{"id": "b" * 64, "time": "1"}]}]))
    fp.register(["rustic", "-P", profile, "prune"])
    res = backup_prune.prune(cfg, PID, {"daily": 7, "weekly": 4})
    assert res.removed == ["b" * 64] and fp.call_count(["rustic", "-P", profile, "prune"]) == 1


def test_restore_lines_full_and_path(rustic_cfg, fp):
    cfg, stub, profile = rustic_cfg
    eng = backup_repo.engine_for(cfg)
    fp.register(["rustic", "-P", profile, "restore", "abc12345", "/pool/.restore-staging/project-x"])
    fp.register(["rustic", "-P", profile, "restore", "abc12345:/docs/a b", "/pool/project-x/.tmp/docs/a b"])
    restore._engine_restore(eng, "abc12345", __import__("pathlib").Path("/pool/.restore-staging/project-x"), None)
    restore._engine_restore(eng, "abc12345", __import__("pathlib").Path("/pool/project-x/.tmp"), "docs/a b")
    assert len(fp.calls) == 2


def test_password_file_must_be_private(rustic_cfg, tmp_path):
    cfg, _, _ = rustic_cfg
    os.chmod(tmp_path / "pw", 0o644)
    with pytest.raises(PreconditionFailed, match="readable by others"):
        backup_repo.engine_for(cfg)
