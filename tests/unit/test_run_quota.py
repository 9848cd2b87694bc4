"""Run quota values: parsed and bounded where they enter (CLI options, stored records, config)."""

from __future__ import annotations

import pytest

from cocalc_ctl import config
from cocalc_ctl.actions.project import quota
from cocalc_ctl.errors import InvalidInput


def test_parse_sizes_and_counts():
    q = quota.parse(memory="4G", swap="0", pids="4096", cpu_shares="1024", tmp="1G", disk="20G")
    assert q.as_dict() == {"memory": 4 << 30, "swap": 0, "pids": 4096, "cpu_shares": 1024, "tmp": 1 << 30,
                           "disk": 20 << 30}
    assert quota.parse(memory=None).as_dict() == {}


@pytest.mark.parametrize("bad", [{"memory": "1K"}, {"pids": "0"}, {"pids": "-1"}, {"pids": "lots"},
                                 {"cpu_shares": "1"}, {"disk": "1M"}, {"tmp": "4Q"}, {"memory": "9" * 30}])
def test_parse_refuses_out_of_range_or_malformed(bad):
    with pytest.raises(InvalidInput):
        quota.parse(**bad)


@pytest.mark.parametrize("record", ['{"memory": "4G"}', '{"evil": 1}', "[1]", "{", '{"pids": true}',
                                    '{"memory": 1}'])
def test_stored_records_are_checked(record):
    with pytest.raises(InvalidInput):
        quota.from_record(record)


def test_own_quota_over_host_defaults():
    cfg = config.load(env={"COCALC_CTL_PODMAN_MEMORY": "2G", "COCALC_CTL_PODMAN_PIDS_LIMIT": "100",
                           "COCALC_CTL_PODMAN_TMP_SIZE": "64M"})
    eff = quota.effective(cfg, quota.from_record('{"memory": 1073741824}'))
    assert (eff.memory, eff.pids, eff.tmp, eff.disk, eff.cpu_shares) == (1 << 30, 100, 64 << 20, None, None)
