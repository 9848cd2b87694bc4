"""Retention with an injected clock: names are generated from known times, so the kept set is exact."""

import datetime as dt

from cocalc_ctl.actions.project.retention import Policy, parse_timestamp_name, plan, timestamp_name

T0 = dt.datetime(2026, 11, 27, 12, 0, 0, tzinfo=dt.timezone.utc)


def names_every(delta: dt.timedelta, count: int, start: dt.datetime = T0) -> list[str]:
    return [timestamp_name(start - i * delta) for i in range(count)]


def kept(names, policy, locked=()):
    return {d.name for d in plan(names, policy, set(locked)) if d.keep}


def test_daily_keeps_newest_of_each_of_the_last_n_days():
    names = names_every(dt.timedelta(hours=6), 4 * 10)  # 10 days, 4 per day
    result = kept(names, Policy(daily=3))
    # newest of 27th, 26th and 25th: 12:00 on the 27th, 18:00 on the 26th and 25th
    assert result == {"2026-11-27T12:00:00Z", "2026-11-26T18:00:00Z", "2026-11-25T18:00:00Z"}


def test_frequent_buckets_are_quarter_hours():
    names = names_every(dt.timedelta(minutes=5), 12)  # one hour, 3 per quarter
    result = kept(names, Policy(frequent=2))
    assert result == {"2026-11-27T12:00:00Z", "2026-11-27T11:55:00Z"}


def test_hourly():
    names = names_every(dt.timedelta(minutes=20), 9)
    assert kept(names, Policy(hourly=2)) == {"2026-11-27T12:00:00Z", "2026-11-27T11:40:00Z"}


def test_weekly_uses_iso_weeks():
    names = names_every(dt.timedelta(days=1), 21)  # Fri 27 Nov back 3 weeks
    result = kept(names, Policy(weekly=3))
    # ISO weeks start on Monday: newest of week 48 (Fri 27), week 47 (Sun 22), week 46 (Sun 15)
    assert result == {"2026-11-27T12:00:00Z", "2026-11-22T12:00:00Z", "2026-11-15T12:00:00Z"}


def test_monthly():
    names = names_every(dt.timedelta(days=10), 12)
    result = kept(names, Policy(monthly=2))
    assert result == {"2026-11-27T12:00:00Z", "2026-10-28T12:00:00Z"}


def test_buckets_combine():
    names = names_every(dt.timedelta(hours=12), 60)  # 30 days
    result = kept(names, Policy(daily=2, monthly=2))
    assert result == {"2026-11-27T12:00:00Z", "2026-11-26T12:00:00Z", "2026-10-31T12:00:00Z"}


def test_newest_is_always_kept_even_with_zero_policy():
    names = names_every(dt.timedelta(days=1), 5)
    assert kept(names, Policy()) == {"2026-11-27T12:00:00Z"}


def test_locked_snapshots_are_kept_and_do_not_use_a_bucket():
    names = names_every(dt.timedelta(days=1), 5)
    locked = ["2026-11-24T12:00:00Z"]
    result = kept(names, Policy(daily=2), locked)
    assert result == {"2026-11-27T12:00:00Z", "2026-11-26T12:00:00Z", "2026-11-24T12:00:00Z"}
    decisions = {d.name: d for d in plan(names, Policy(daily=2), set(locked))}
    assert decisions["2026-11-24T12:00:00Z"].reasons == ["locked"]


def test_names_that_are_not_timestamps_are_never_pruned():
    names = names_every(dt.timedelta(days=1), 3) + ["before-upgrade", "2026-11-27"]
    result = kept(names, Policy())
    assert "before-upgrade" in result and "2026-11-27" in result
    assert len(result) == 3


def test_timestamp_parsing_rejects_impossible_dates():
    assert parse_timestamp_name("2026-02-30T00:00:00Z") is None
    assert parse_timestamp_name("2026-11-27T10:43:45Z") == dt.datetime(2026, 11, 27, 10, 43, 45,
                                                                       tzinfo=dt.timezone.utc)


def test_cocalc_millisecond_names_are_managed_and_pruned():
    # CoCalc names its rolling snapshots with milliseconds; a project moved from a CoCalc host
    # must not keep them forever.
    cocalc = [n[:-1] + ".123Z" for n in names_every(dt.timedelta(days=1), 5)]
    assert parse_timestamp_name("2026-11-27T10:57:55.123Z") == dt.datetime(
        2026, 11, 27, 10, 57, 55, 123000, tzinfo=dt.timezone.utc)
    decisions = {d.name: d for d in plan(cocalc, Policy(daily=2))}
    assert {n for n, d in decisions.items() if d.keep} == set(cocalc[:2])
    assert all("not a timestamp name" not in d.reasons for d in decisions.values())


def test_mixed_second_and_millisecond_names_sort_by_time():
    names = ["2026-11-27T10:00:00Z", "2026-11-27T10:00:00.500Z", "2026-11-26T10:00:00.001Z"]
    result = kept(names, Policy(daily=1))
    assert result == {"2026-11-27T10:00:00.500Z"}


def test_malformed_fraction_is_not_a_timestamp():
    for name in ("2026-11-27T10:57:55.12Z", "2026-11-27T10:57:55.1234Z", "2026-11-27T10:57:55.Z"):
        assert parse_timestamp_name(name) is None
