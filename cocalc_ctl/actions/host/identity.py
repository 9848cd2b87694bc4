"""This host's id: the configured one, else the one `host init` stored in data_dir."""

from __future__ import annotations

from cocalc_ctl import layout
from cocalc_ctl.config import Config
from cocalc_ctl.ids import is_uuid


def host_id(cfg: Config) -> str | None:
    """The configured host id, else the one `host init` stored in data_dir."""
    if cfg["host_id"]:
        return cfg["host_id"]
    path = layout.host_id_file(cfg)
    try:
        value = path.read_text().strip()
    except OSError:
        return None
    return value if is_uuid(value) else None
