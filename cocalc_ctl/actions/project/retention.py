"""Snapshot retention: restic/btrbk-style buckets over timestamp-named snapshots. Pure functions.

Walking from newest to oldest, each policy keeps the first snapshot it sees in each new bucket
until its count is used up (`--keep-daily 7` keeps the newest snapshot of each of the 7 most
recent days that have one). Locked snapshots are always kept and never use up a bucket; the newest
snapshot is always kept; names that are not timestamps are not managed and never pruned.

Timestamp names are UTC `YYYY-MM-DDTHH:MM:SSZ` (ours) or `YYYY-MM-DDTHH:MM:SS.mmmZ` (CoCalc's rolling
snapshots, so a project moved from a CoCalc host has its snapshots pruned too). Where this differs
from CoCalc on purpose: CoCalc keeps one snapshot per elapsed interval (15 minutes, 1, 7 and 28 days)
counted back from now; this follows restic's `forget` and counts calendar buckets (quarter hour, hour,
day, ISO week, calendar month) that have a snapshot, so a host that was off for a week keeps its last
N days of snapshots rather than none.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

TIMESTAMP_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d{3})?Z")
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

BUCKETS: dict[str, Callable[[dt.datetime], tuple]] = {
    "frequent": lambda t: (t.year, t.month, t.day, t.hour, t.minute // 15),
    "hourly": lambda t: (t.year, t.month, t.day, t.hour),
    "daily": lambda t: (t.year, t.month, t.day),
    "weekly": lambda t: tuple(t.isocalendar()[:2]),
    "monthly": lambda t: (t.year, t.month),
}


def timestamp_name(now: dt.datetime) -> str:
    return now.astimezone(dt.timezone.utc).strftime(TIMESTAMP_FORMAT)


def parse_timestamp_name(name: str) -> dt.datetime | None:
    m = TIMESTAMP_RE.fullmatch(name)
    if not m:
        return None
    try:
        when = dt.datetime.strptime(name[:19] + "Z", TIMESTAMP_FORMAT).replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return None
    return when.replace(microsecond=int(m.group(7)[1:]) * 1000) if m.group(7) else when


@dataclass
class Policy:
    frequent: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0

    def counts(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in BUCKETS}

    def empty(self) -> bool:
        return not any(self.counts().values())


@dataclass
class Decision:
    name: str
    keep: bool
    reasons: list[str] = field(default_factory=list)


def plan(names: Sequence[str], policy: Policy, locked: set[str] = frozenset()) -> list[Decision]:
    """Decide keep/remove for each snapshot name, newest first."""
    managed = sorted(((parse_timestamp_name(n), n) for n in names if parse_timestamp_name(n)), reverse=True)
    unmanaged = [n for n in names if parse_timestamp_name(n) is None]
    remaining = policy.counts()
    last_bucket: dict[str, tuple | None] = {k: None for k in BUCKETS}
    decisions: list[Decision] = []
    for i, (when, name) in enumerate(managed):
        reasons = []
        if i == 0:
            reasons.append("newest")
        if name in locked:
            reasons.append("locked")
        else:
            for kind, bucket_of in BUCKETS.items():
                if remaining[kind] <= 0:
                    continue
                bucket = bucket_of(when)
                if bucket != last_bucket[kind]:
                    last_bucket[kind] = bucket
                    remaining[kind] -= 1
                    reasons.append(kind)
        decisions.append(Decision(name, bool(reasons), reasons))
    decisions.extend(Decision(n, True, ["not a timestamp name"]) for n in sorted(unmanaged))
    return decisions
