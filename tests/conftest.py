"""Shared fixtures: loopback btrfs hosts, one throwaway PostgreSQL per session, root checks."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.support.hosts import Host, cleanup_mounts_under, release_guarded_ports
from tests.support.postgres import Postgres

IS_ROOT = os.geteuid() == 0

# The suite starts thousands of `python -m cocalc_ctl` processes (hosts, workers, receivers, demos). With
# PYTHONDONTWRITEBYTECODE set (some shells and tools set it) no bytecode is ever cached and each of them
# compiles every module it imports again, about a third of a command's start-up. The children get
# Python's default instead: bytecode cached in the checkout's (git-ignored) __pycache__ directories, as an
# installed cocalc-ctl has it (benchmarks/fleet/bench_fleet.py does the same for its timed commands).
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


def pytest_collection_modifyitems(config, items):
    if IS_ROOT:
        return
    skip = pytest.mark.skip(reason="integration tests need root (loop devices, mounts, sshd)")
    for item in items:
        if "integration" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def workdir():
    """A temp dir outside /tmp's tmpfs-style quirks; everything mounted below it is undone."""
    base = Path(tempfile.mkdtemp(prefix="cocalc-test-", dir="/var/tmp"))
    os.chmod(base, 0o711)  # like /var/lib: others may pass through (a project's mapped root must), not list
    try:
        yield base
    finally:
        cleanup_mounts_under(base)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def make_host(workdir):
    """Factory: make_host(name='a', size='1G', init=True) -> Host with a mounted loopback pool."""
    made: list[Host] = []

    def make(name: str = "a", size: str = "1G", init: bool = True, **config) -> Host:
        h = Host(workdir / name, extra_config=dict(config))
        made.append(h)
        if init:
            h.init(size)
        return h

    try:
        yield make
    finally:
        for h in reversed(made):
            cleanup_mounts_under(h.base)
            release_guarded_ports(h)


@pytest.fixture
def host(make_host) -> Host:
    return make_host("a")


@pytest.fixture(scope="session")
def postgres():
    """One PostgreSQL server for the whole session; tests get their own database via `hub_dsn`."""
    pg = Postgres().start()
    try:
        pg.wait_ready()
        yield pg
    finally:
        pg.stop()


@pytest.fixture
def hub_dsn(postgres) -> str:
    return postgres.new_database()


@pytest.fixture(scope="session")
def framing_rig(postgres, tmp_path_factory):
    """Host proxy, hub -> host chain and nginx, each before a recording backend (tests/support/framing_rig.py)."""
    from tests.support.framing_rig import Rig

    rig = Rig(tmp_path_factory.mktemp("framing"), postgres.new_database())
    try:
        yield rig
    finally:
        rig.close()
