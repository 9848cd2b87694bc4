"""Where things live on a host (SPEC §1). Every function takes already-validated ids."""

from __future__ import annotations

from pathlib import Path

from cocalc_ctl.config import Config

SNAPSHOTS = ".snapshots"


def project_subvolume(cfg: Config, project_id: str) -> Path:
    return cfg.btrfs_root / f"project-{project_id}"


def snapshots_dir(cfg: Config, project_id: str) -> Path:
    return project_subvolume(cfg, project_id) / SNAPSHOTS


def snapshot_path(cfg: Config, project_id: str, name: str) -> Path:
    return snapshots_dir(cfg, project_id) / name


def snapshot_lock_file_name(name: str) -> str:
    return f".{name}.lock"


def snapshot_lock_file(cfg: Config, project_id: str, name: str) -> Path:
    return snapshots_dir(cfg, project_id) / snapshot_lock_file_name(name)


def persist_dir(cfg: Config, project_id: str) -> Path:
    return cfg.data_dir / "sync" / "projects" / project_id


def incoming_dir(cfg: Config, project_id: str) -> Path:
    return cfg.btrfs_root / "_incoming" / project_id


def streams_dir(cfg: Config, project_id: str) -> Path:
    return cfg.btrfs_root / "_streams" / project_id


def restore_staging(cfg: Config, project_id: str) -> Path:
    return cfg.btrfs_root / ".restore-staging" / f"project-{project_id}"


def rootfs_cache(cfg: Config) -> Path:
    return cfg.data_dir / "rootfs"


def project_root_mount(cfg: Config, project_id: str) -> Path:
    return cfg.data_dir / "project-roots" / project_id


def pool_record(cfg: Config) -> Path:
    """Written by `host init --loopback`: which image/loop device it made, so teardown touches only that."""
    return cfg.data_dir / "pool.json"


def host_id_file(cfg: Config) -> Path:
    return cfg.data_dir / "host_id"
