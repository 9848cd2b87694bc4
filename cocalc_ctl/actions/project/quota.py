"""Per-project run quotas: memory, swap, pids, cpu shares, /tmp size and disk.

The hub's `projects.run_quota` (jsonb) is the record: `hub project set|add --memory … --disk …` writes
it, and because a move or a restore never changes the hub row, the quota follows the project to any
host. `project start` reads it (falling back to what host sqlite recorded at the last start when the
hub is unreachable or not configured), fills what is unset from this host's defaults (`podman.memory`,
`podman.swap`, `podman.pids_limit`, `podman.cpu_shares`, `podman.tmp_size`) and applies
it: disk as the btrfs qgroup limit of the project subvolume, /tmp as a size-limited tmpfs, the rest
as podman flags. Values are validated here, where they enter (CLI options, hub rows, config).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

from cocalc_ctl import output
from cocalc_ctl.config import Config, parse_size
from cocalc_ctl.errors import InvalidInput, OperationFailed

SIZES = ("memory", "swap", "tmp", "disk")
# (smallest, largest) accepted value of each field; podman refuses memory below 6 MiB
BOUNDS = {"memory": (6 << 20, 1 << 50), "swap": (0, 1 << 50), "tmp": (1 << 20, 1 << 50),
          "disk": (16 << 20, 1 << 60), "pids": (16, 4 << 20), "cpu_shares": (2, 262144)}


@dataclass(frozen=True)
class RunQuota:
    memory: int | None = None  # bytes of RAM
    swap: int | None = None  # bytes of swap on top of memory (podman --memory-swap = memory + swap)
    pids: int | None = None  # processes and threads
    cpu_shares: int | None = None  # relative CPU weight (1024 = default)
    tmp: int | None = None  # bytes of the tmpfs at /tmp
    disk: int | None = None  # bytes: the project subvolume's qgroup limit

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def merged_over(self, base: "RunQuota") -> "RunQuota":
        """This quota, with what it leaves unset taken from `base`."""
        return RunQuota(**{f.name: getattr(self, f.name) if getattr(self, f.name) is not None
                           else getattr(base, f.name) for f in fields(self)})


def _check(name: str, value: int) -> int:
    lo, hi = BOUNDS[name]
    if not lo <= value <= hi:
        raise InvalidInput(f"run quota {name} = {value} is out of range ({lo}..{hi})",
                           hint="sizes take K/M/G/T suffixes, e.g. --memory 4G --tmp 1G --disk 20G")
    return value


def parse(**options: str | int | None) -> RunQuota:
    """Options as given on a command line (sizes like `4G`, counts as integers); None = not given."""
    values: dict[str, int] = {}
    for name, raw in options.items():
        if name not in BOUNDS:
            raise InvalidInput(f"unknown run quota {name!r}")
        if raw is None:
            continue
        if name in SIZES:
            value = parse_size(str(raw))
        else:
            try:
                value = int(str(raw).strip())
            except ValueError:
                raise InvalidInput(f"run quota {name}: expected an integer, got {str(raw)[:40]!r}") from None
        values[name] = _check(name, value)
    return RunQuota(**values)


def from_record(data: object) -> RunQuota:
    """A stored quota (hub jsonb, host sqlite JSON text); anything malformed is refused, not guessed."""
    if data in (None, "", {}):
        return RunQuota()
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError:
            raise InvalidInput("stored run quota is not JSON") from None
    if not isinstance(data, dict):
        raise InvalidInput("stored run quota is not an object")
    values = {}
    for k, v in data.items():
        if k not in BOUNDS or not isinstance(v, int) or isinstance(v, bool):
            raise InvalidInput(f"stored run quota has a bad entry {str(k)[:40]!r}",
                               hint="rewrite it with `cocalc-ctl hub project set PROJECT --memory …`")
        values[k] = _check(k, v)
    return RunQuota(**values)


def host_defaults(cfg: Config) -> RunQuota:
    """This host's defaults from its config (empty / 0 = no limit). Disk has none here: a project without
    a disk quota of its own keeps the qgroup limit it has (`project create --quota`, `project.quota`)."""
    def size(key: str) -> int | None:
        text = cfg[key]
        return parse_size(str(text)) if text not in (None, "", "0") else None

    return RunQuota(memory=size("podman.memory"), swap=size("podman.swap"),
                    pids=cfg["podman.pids_limit"] or None, cpu_shares=cfg["podman.cpu_shares"] or None,
                    tmp=size("podman.tmp_size"))


def hub_quota(cfg: Config, pid: str) -> RunQuota | None:
    """The project's quota in the hub; None if the hub has no row for it. OperationFailed if unreachable."""
    import psycopg

    from cocalc_ctl.state import hub_db

    try:
        with hub_db.connect(cfg["hub_dsn"]) as conn:
            row = conn.execute("SELECT run_quota FROM projects WHERE project_id = %s", (pid,)).fetchone()
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or ["query failed"])[0]
        raise OperationFailed(f"cannot read the project's run quota from the hub: {first}",
                              hint="run `cocalc-ctl hub migrate` or check hub_dsn") from None
    return None if row is None else from_record(row[0])


def for_project(cfg: Config, pid: str, recorded: str | None) -> tuple[RunQuota, str]:
    """(the project's own quota, where it came from): the hub when configured and reachable, else what
    host sqlite `recorded` at the last start."""
    if cfg["hub_dsn"]:
        try:
            q = hub_quota(cfg, pid)
            if q is not None:
                return q, "hub"
        except OperationFailed as exc:
            output.warn(f"{exc.message}; using the run quota recorded on this host")
    return from_record(recorded), "host"


def effective(cfg: Config, own: RunQuota) -> RunQuota:
    return own.merged_over(host_defaults(cfg))
