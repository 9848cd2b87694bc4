"""btrfs-progs: command-line builders and output parsers (tested against btrfs-progs 6.x)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from cocalc_ctl import proc


def subvolume_create(path: str) -> list[str]:
    return ["btrfs", "subvolume", "create", path]


def snapshot(source: str, dest: str, *, readonly: bool = True) -> list[str]:
    return ["btrfs", "subvolume", "snapshot", *(["-r"] if readonly else []), source, dest]


def subvolume_delete(*paths: str) -> list[str]:
    return ["btrfs", "subvolume", "delete", *paths]


def subvolume_show(path: str) -> list[str]:
    return ["btrfs", "subvolume", "show", path]


def subvolume_list_below(path: str) -> list[str]:
    """Subvolumes directly below `path` with generation, creation gen, uuids and creation time."""
    return ["btrfs", "subvolume", "list", "-o", "-g", "-c", "-u", "-q", "-R", path]


def quota_enable(mountpoint: str) -> list[str]:
    return ["btrfs", "quota", "enable", mountpoint]


def qgroup_show(path: str) -> list[str]:
    return ["btrfs", "qgroup", "show", "--raw", "-r", "-e", path]


def qgroup_limit(size: str | int, path: str) -> list[str]:
    return ["btrfs", "qgroup", "limit", str(size), path]


def filesystem_usage(mountpoint: str) -> list[str]:
    return ["btrfs", "filesystem", "usage", "-b", mountpoint]


def property_set_readonly(path: str, readonly: bool) -> list[str]:
    return ["btrfs", "property", "set", "-ts", path, "ro", "true" if readonly else "false"]


def filesystem_sync(path: str) -> list[str]:
    return ["btrfs", "filesystem", "sync", path]


def mkfs(image: str, label: str | None = None) -> list[str]:
    return ["mkfs.btrfs", "-q", *(["-L", label] if label else []), image]


@dataclass
class SubvolumeInfo:
    name: str
    uuid: str | None
    parent_uuid: str | None
    received_uuid: str | None
    subvolume_id: int
    generation: int
    gen_at_creation: int
    readonly: bool
    creation_time: str | None


def parse_subvolume_show(text: str) -> SubvolumeInfo:
    fields: dict[str, str] = {}
    lines = text.splitlines()
    for line in lines[1:]:
        if ":" in line and line.startswith("\t") and not line.startswith("\t\t"):
            k, _, v = line.strip().partition(":")
            fields[k.strip()] = v.strip()

    def opt(key: str) -> str | None:
        v = fields.get(key)
        return None if v in (None, "-", "") else v

    return SubvolumeInfo(
        name=fields.get("Name", ""),
        uuid=opt("UUID"),
        parent_uuid=opt("Parent UUID"),
        received_uuid=opt("Received UUID"),
        subvolume_id=int(fields.get("Subvolume ID", "0")),
        generation=int(fields.get("Generation", "0")),
        gen_at_creation=int(fields.get("Gen at creation", "0")),
        readonly="readonly" in fields.get("Flags", ""),
        creation_time=opt("Creation time"),
    )


@dataclass
class ListedSubvolume:
    subvolume_id: int
    generation: int
    cgen: int
    top_level: int
    parent_uuid: str | None
    received_uuid: str | None
    uuid: str
    path: str

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


_LIST_RE = re.compile(
    r"ID (\d+) gen (\d+) cgen (\d+) top level (\d+)(?: otime \S+ \S+)? parent_uuid (\S+)\s+"
    r"received_uuid (\S+)\s+uuid (\S+) path (.*)$")


def parse_subvolume_list(text: str) -> list[ListedSubvolume]:
    out = []
    for line in text.splitlines():
        m = _LIST_RE.match(line.strip())
        if not m:
            continue
        pu, ru = m.group(5), m.group(6)
        out.append(ListedSubvolume(int(m.group(1)), int(m.group(2)), int(m.group(3)), int(m.group(4)),
                                   None if pu == "-" else pu, None if ru == "-" else ru, m.group(7), m.group(8)))
    return out


@dataclass
class Qgroup:
    qgroupid: str
    referenced: int
    exclusive: int
    max_referenced: int | None
    max_exclusive: int | None


def parse_qgroup_show(text: str) -> dict[str, Qgroup]:
    """Parse `btrfs qgroup show --raw [-r -e]`; keys are qgroup ids like `0/256`.

    Columns are positional (the header wording differs between versions: `rfer` vs `Referenced`,
    `max_rfer` vs `Max referenced`): id, referenced, exclusive, then max referenced and max
    exclusive when -r/-e were given.
    """
    out: dict[str, Qgroup] = {}
    has_limits = False
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0].lower() == "qgroupid":
            has_limits = "max" in line.lower()
            continue
        if not re.fullmatch(r"\d+/\d+", parts[0]) or len(parts) < 3:
            continue

        def num(i: int) -> int | None:
            return int(parts[i]) if len(parts) > i and parts[i].isdigit() else None

        out[parts[0]] = Qgroup(parts[0], num(1) or 0, num(2) or 0,
                               num(3) if has_limits else None, num(4) if has_limits else None)
    return out


@dataclass
class Usage:
    device_size: int
    used: int
    free_estimated: int


def parse_filesystem_usage(text: str) -> Usage:
    vals: dict[str, int] = {}
    for line in text.splitlines():
        m = re.match(r"\s*(Device size|Used|Free \(estimated\)):\s+(\d+)", line)
        if m and m.group(1) not in vals:
            vals[m.group(1)] = int(m.group(2))
    return Usage(vals.get("Device size", 0), vals.get("Used", 0), vals.get("Free (estimated)", 0))


def show(path: str) -> SubvolumeInfo:
    return parse_subvolume_show(proc.run(subvolume_show(path), mutates=False).stdout)


def list_below(path: str) -> list[ListedSubvolume]:
    return parse_subvolume_list(proc.run(subvolume_list_below(path), mutates=False).stdout)


def qgroups(path: str) -> dict[str, Qgroup]:
    res = proc.run(qgroup_show(path), mutates=False, check=False)
    if res.returncode != 0:
        return {}  # quotas disabled: sizes are simply unknown
    return parse_qgroup_show(res.stdout)


def usage(mountpoint: str) -> Usage:
    return parse_filesystem_usage(proc.run(filesystem_usage(mountpoint), mutates=False).stdout)
