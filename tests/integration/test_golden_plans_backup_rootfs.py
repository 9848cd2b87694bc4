"""Golden --dry-run plans of backup create, restore, backup prune, rootfs pull and rootfs mount.

The exact commands each would run, compared byte for byte; throwaway paths, the host id and backup
ids are replaced by placeholders. UPDATE_GOLDEN=1 rewrites the files. Each test also proves the
dry run changed nothing that matters.
"""

from __future__ import annotations

import os
import re

import pytest

from tests.support.ops import check_golden

pytestmark = pytest.mark.integration

PID = "44444444-4444-4444-8444-444444444444"
HOST_ID = "66666666-6666-4666-8666-666666666666"


@pytest.fixture
def backed_up(make_host, workdir):
    pw = workdir / "repo-password"
    pw.write_text("demo-password\n")
    os.chmod(pw, 0o600)
    h = make_host("a", init=False, backup={"repo": str(workdir / "repo"), "password_file": str(pw)})
    h.host_id = HOST_ID
    h.write_config(host_id=HOST_ID)
    h.init("1G")
    h.cli("project", "create", PID)
    (h.project_path(PID) / "notes.md").write_text("hello\n")
    h.cli("backup", "init")
    return h


def _norm(host, text: str) -> str:
    text = text.replace(str(host.base.parent), "$TMP")
    return re.sub(r"\b[0-9a-f]{64}\b", "$BACKUP_ID", text)


def test_backup_create_plan(backed_up):
    res = backed_up.cli("--dry-run", "backup", "create", PID)
    check_golden("plans/backup-create.txt", _norm(backed_up, res.stdout))
    assert backed_up.json("backup", "list", PID) == [] or not backed_up.json("backup", "list", PID)


def test_restore_and_prune_plans(backed_up):
    backed_up.cli("backup", "create", PID)
    (backed_up.project_path(PID) / "notes.md").write_text("changed\n")
    res = backed_up.cli("--dry-run", "restore", PID, "latest")
    check_golden("plans/restore.txt", _norm(backed_up, res.stdout))
    assert (backed_up.project_path(PID) / "notes.md").read_text() == "changed\n"
    res = backed_up.cli("--dry-run", "backup", "prune", PID, "--keep-daily", "1")
    planned = [line for line in res.stdout.splitlines() if line.startswith("restic ")]
    check_golden("plans/backup-prune.txt", "\n".join(planned) + "\n")
    assert len(backed_up.json("backup", "list", PID)) == 1


def test_restore_path_plan_includes_the_swap_and_the_clean_up(backed_up):
    (backed_up.project_path(PID) / "docs").mkdir()
    (backed_up.project_path(PID) / "docs" / "a.md").write_text("a\n")
    backed_up.cli("backup", "create", PID)
    before = sorted(os.listdir(backed_up.project_path(PID)))
    res = backed_up.cli("--dry-run", "restore", PID, "latest", "--path", "notes.md")
    text = re.sub(r"\.cocalc-ctl-restore-[0-9a-f]{12}", ".cocalc-ctl-restore-$RANDOM", _norm(backed_up, res.stdout))
    res = backed_up.cli("--dry-run", "restore", PID, "latest", "--path", "docs/new/b.md")
    text += re.sub(r"\.cocalc-ctl-restore-[0-9a-f]{12}", ".cocalc-ctl-restore-$RANDOM", _norm(backed_up, res.stdout))
    check_golden("plans/restore-path.txt", text)
    assert sorted(os.listdir(backed_up.project_path(PID))) == before


def test_rootfs_pull_and_mount_plans(backed_up, workdir):
    tree = workdir / "tree"
    (tree / "bin").mkdir(parents=True)
    (tree / "bin" / "sh").write_text("#!/bin/true\n")
    backed_up.write_config(**{"rootfs.local_roots": str(tree), "rootfs.registries": "localhost"})
    res = backed_up.cli("--dry-run", "rootfs", "pull", f"dir:{tree}")
    check_golden("plans/rootfs-pull-dir.txt", _norm(backed_up, res.stdout))
    res = backed_up.cli("--dry-run", "rootfs", "mount", PID, "--image", "localhost/busybox:1")
    check_golden("plans/rootfs-mount.txt", _norm(backed_up, res.stdout))
    assert not (backed_up.data / "rootfs").exists() or not any((backed_up.data / "rootfs").iterdir())
    assert not (backed_up.data / "project-roots" / PID).is_mount()
