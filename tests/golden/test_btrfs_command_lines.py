"""Golden tests: the exact btrfs command lines behind project and snapshot actions (pytest-subprocess)."""

import pytest

from cocalc_ctl import config, proc
from cocalc_ctl.actions.project import projects, retention, snapshots, subvolume

PID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    (tmp_path / "pool").mkdir()
    cfgfile = tmp_path / "c.yaml"
    cfgfile.write_text(f"btrfs_root: {tmp_path}/pool\ndata_dir: {tmp_path}/data\n")
    monkeypatch.setattr(projects, "require_pool", lambda cfg: None)
    monkeypatch.setattr(subvolume, "require_pool", lambda cfg: None)
    monkeypatch.setattr(proc, "which", lambda prog, env=None: prog)
    return config.load(str(cfgfile), env={})


def test_project_create_command_lines(cfg, fp):
    root = cfg.btrfs_root
    fp.register(["btrfs", "subvolume", "create", f"{root}/project-{PID}"])
    fp.register(["btrfs", "subvolume", "create", f"{root}/project-{PID}/.snapshots"])
    fp.register(["btrfs", "qgroup", "limit", str(2 << 30), f"{root}/project-{PID}"])
    projects.create(cfg, PID, quota="2G")
    assert fp.call_count(["btrfs", "subvolume", "create", fp.any()]) == 2
    assert fp.call_count(["btrfs", "qgroup", "limit", fp.any()]) == 1


def test_failed_create_rolls_back_the_half_made_subvolume(cfg, fp):
    root = cfg.btrfs_root
    path = root / f"project-{PID}"

    def make_dir(process):
        path.mkdir()

    fp.register(["btrfs", "subvolume", "create", str(path)], callback=make_dir)
    fp.register(["btrfs", "subvolume", "create", f"{path}/.snapshots"], returncode=1, stderr="ERROR: no space")
    fp.register(["btrfs", "subvolume", "delete", str(path)])
    with pytest.raises(Exception, match="no space"):
        projects.create(cfg, PID)
    assert fp.call_count(["btrfs", "subvolume", "delete", str(path)]) == 1


def test_snapshot_create_command_line(cfg, fp):
    path = cfg.btrfs_root / f"project-{PID}"
    (path / ".snapshots").mkdir(parents=True)
    fp.register(["btrfs", "subvolume", "snapshot", "-r", str(path), f"{path}/.snapshots/2026-11-27T10:00:00Z"])
    snapshots.create(cfg, PID, "2026-11-27T10:00:00Z")
    assert len(fp.calls) == 1


def test_prune_deletes_exactly_the_snapshots_outside_the_buckets(cfg, fp):
    path = cfg.btrfs_root / f"project-{PID}"
    snaps = path / ".snapshots"
    names = ["2026-11-27T10:00:00Z", "2026-11-27T09:00:00Z", "2026-11-26T10:00:00Z", "2026-11-25T10:00:00Z",
             "keep-me"]
    for n in names:
        (snaps / n).mkdir(parents=True)
    (snaps / ".2026-11-25T10:00:00Z.lock").write_text("")
    fp.register(["btrfs", "subvolume", "delete", f"{snaps}/2026-11-27T09:00:00Z"])
    fp.register(["btrfs", "subvolume", "delete", f"{snaps}/2026-11-26T10:00:00Z"])
    result = snapshots.prune(cfg, PID, retention.Policy(daily=1))
    assert result.removed == ["2026-11-27T09:00:00Z", "2026-11-26T10:00:00Z"]
    assert {d.name for d in result.kept} == {"2026-11-27T10:00:00Z", "2026-11-25T10:00:00Z", "keep-me"}
    assert [list(c) for c in fp.calls] == [
        ["btrfs", "subvolume", "delete", f"{snaps}/2026-11-27T09:00:00Z"],
        ["btrfs", "subvolume", "delete", f"{snaps}/2026-11-26T10:00:00Z"],
    ]


def test_dry_run_prune_prints_the_commands_and_runs_none(cfg, fp, capsys, monkeypatch):
    monkeypatch.setattr(proc, "DRY_RUN", True)
    snaps = cfg.btrfs_root / f"project-{PID}" / ".snapshots"
    for n in ["2026-11-27T10:00:00Z", "2026-11-26T10:00:00Z"]:
        (snaps / n).mkdir(parents=True)
    snapshots.prune(cfg, PID, retention.Policy())
    assert len(fp.calls) == 0
    assert capsys.readouterr().out.strip() == f"btrfs subvolume delete {snaps}/2026-11-26T10:00:00Z"
