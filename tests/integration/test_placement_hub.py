"""Placement through a real hub PostgreSQL: `keys register --internal-url`, `hub project add|set|show|
list|rm`, exit codes, the move guard, and a running hub-mode proxy that follows every change at once
(route cache TTL of an hour: only the NOTIFY triggers can make it re-route)."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.support.keys import KeyHost
from tests.support.proxy import get_json, start_backend, start_proxy

pytestmark = pytest.mark.integration

PID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"


@pytest.fixture
def hub(tmp_path, hub_dsn):
    """Hosts a and b registered with keys (b with proxy.internal_url in its config), and a hub admin."""
    a = KeyHost(tmp_path / "host-a", extra={"hub_dsn": hub_dsn, "ssh_server": "127.0.0.2:22"})
    b = KeyHost(tmp_path / "host-b", extra={"hub_dsn": hub_dsn, "ssh_server": "127.0.0.3:22",
                                            "proxy": {"internal_url": "http://127.0.0.3:8080/"}})
    admin = KeyHost(tmp_path / "admin", extra={"hub_dsn": hub_dsn})
    admin.cli("hub", "migrate")
    for h in (a, b):
        h.cli("keys", "ensure")
    return a, b, admin


def _sql(dsn: str, query: str, params=()) -> list:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


def _internal_url(dsn: str, hid: str):
    return _sql(dsn, "SELECT internal_url FROM project_hosts WHERE id = %s", (hid,))[0][0]


class RouteListener:
    """LISTEN on the proxies' route channel, to see which writes notify."""

    def __init__(self, dsn: str):
        import psycopg

        from cocalc_ctl.state.hub_db import ROUTE_CHANNEL

        self.conn = psycopg.connect(dsn, autocommit=True)
        self.conn.execute(f"LISTEN {ROUTE_CHANNEL}")

    def payloads(self, expect: int = 0, wait: float = 0.5) -> list[str]:
        """The notifications received: first `expect` of them, however long a loaded machine takes to
        deliver them (up to 30 s), then whatever else arrives within `wait` seconds."""
        got = [n.payload for n in self.conn.notifies(timeout=30, stop_after=expect)] if expect else []
        return got + [n.payload for n in self.conn.notifies(timeout=wait)]

    def close(self) -> None:
        self.conn.close()


def test_register_publishes_keeps_overrides_and_clears_the_internal_url(hub, hub_dsn):
    a, b, _ = hub
    assert a.json("keys", "register")["internal_url"] is None
    assert b.json("keys", "register")["internal_url"] == "http://127.0.0.3:8080"  # from the config, canonical
    listen = RouteListener(hub_dsn)
    try:
        r = a.cli("keys", "register", "--internal-url", "http://127.0.0.2:8080")
        assert "internal_url http://127.0.0.2:8080" in r.stdout
        assert listen.payloads(expect=1) == [f"host:{a.host_id}"]
        # a heartbeat without the option keeps the value, and an unchanged value notifies nobody
        assert a.json("keys", "register")["internal_url"] == "http://127.0.0.2:8080"
        assert b.json("keys", "register")["internal_url"] == "http://127.0.0.3:8080"
        assert listen.payloads() == []
        # the option wins over the config; a bad URL changes nothing
        assert b.json("keys", "register", "--internal-url", "http://[::1]:9000")["internal_url"] == "http://[::1]:9000"
        bad = b.cli("keys", "register", "--internal-url", "http://127.0.0.3:8080/admin", check=False)
        assert bad.returncode == 2 and "invalid internal URL" in bad.stderr
        assert _internal_url(hub_dsn, b.host_id) == "http://[::1]:9000"
        assert listen.payloads(expect=1) == [f"host:{b.host_id}"]
        assert a.json("keys", "register", "--clear-internal-url")["internal_url"] is None
        assert _internal_url(hub_dsn, a.host_id) is None
        assert listen.payloads(expect=1) == [f"host:{a.host_id}"]
    finally:
        listen.close()
    assert a.cli("--dry-run", "keys", "register", "--internal-url", "http://127.0.0.9:1").stdout.startswith(
        f"# upsert host {a.host_id} into hub project_hosts; internal_url http://127.0.0.9:1")
    assert _internal_url(hub_dsn, a.host_id) is None


def test_add_set_show_list_rm_against_the_hub(hub, hub_dsn):
    a, b, admin = hub
    for h in (a, b):
        h.cli("keys", "register")
    other = str(uuid.uuid4())
    r = admin.json("hub", "project", "add", PID, "--host", "host-a", "--image", "ubuntu:25.10")
    assert r["action"] == "added" and r["placement"]["host_id"] == a.host_id
    assert _sql(hub_dsn, "SELECT host_id::text, rootfs_image FROM projects WHERE project_id = %s", (PID,)) == \
        [(a.host_id, "docker.io/library/ubuntu:25.10")]
    # idempotent on the same host; refused on another (exit 5, nothing changes)
    assert admin.json("hub", "project", "add", PID, "--host", a.host_id)["action"] == "unchanged"
    clash = admin.cli("hub", "project", "add", PID, "--host", "host-b", check=False)
    assert clash.returncode == 5 and "already on host host-a" in clash.stderr and "move start" in clash.stderr
    # a row the hub made without a host gets placed by `add`
    _sql(hub_dsn, "INSERT INTO projects (project_id, compute_image) VALUES (%s, 'ubuntu2404')", (other,))
    assert admin.json("hub", "project", "add", other, "--host", b.host_id)["changed"] == ["host_id"]

    show = admin.json("hub", "project", "show", other)
    assert (show["host_name"], show["compute_image"], show["rootfs_image"], show["move_in_progress"]) == \
        ("host-b", "ubuntu2404", None, False)
    text = admin.cli("hub", "project", "show", PID).stdout
    assert "host-a (" in text and "docker.io/library/ubuntu:25.10" in text

    r = admin.json("hub", "project", "set", PID, "--host", "host-b", "--image", "")
    assert r["action"] == "updated" and r["changed"] == ["host_id", "rootfs_image"]
    assert admin.json("hub", "project", "set", PID, "--host", b.host_id)["action"] == "unchanged"
    assert [p["project_id"] for p in admin.json("hub", "project", "list", "--host", "host-b")] == sorted([PID, other])
    assert admin.json("hub", "project", "list", "--host", a.host_id) == []
    listing = admin.cli("hub", "project", "list").stdout.splitlines()
    assert listing[0].split() == ["PROJECT", "HOST", "NAME", "INTERNAL_URL", "IMAGE", "MOVE"] and len(listing) == 3

    # not found, unknown host and ambiguous names
    missing = str(uuid.uuid4())
    for argv in (("show", missing), ("set", missing, "--image", "ubuntu:25.10"), ("rm", missing),
                 ("add", missing, "--host", "no-such-host"), ("list", "--host", "no-such-host")):
        res = admin.cli("hub", "project", *argv, check=False)
        assert res.returncode == 3, (argv, res.stderr)
    _sql(hub_dsn, "INSERT INTO project_hosts (id, name) VALUES (%s, 'host-a')", (str(uuid.uuid4()),))
    amb = admin.cli("hub", "project", "set", PID, "--host", "host-a", check=False)
    assert amb.returncode == 2 and "ambiguous" in amb.stderr and a.host_id in amb.stderr

    # projects left on a host that is gone from project_hosts are still found by its id
    gone = str(uuid.uuid4())
    _sql(hub_dsn, "UPDATE projects SET host_id = %s WHERE project_id = %s", (gone, other))
    orphans = admin.json("hub", "project", "list", "--host", gone)
    assert [(p["project_id"], p["host_name"]) for p in orphans] == [(other, None)]
    r = admin.cli("hub", "project", "rm", other)
    assert r.stdout.startswith(f"removed project {other} from the hub")
    assert _sql(hub_dsn, "SELECT 1 FROM projects WHERE project_id = %s", (other,)) == []


def test_a_move_in_progress_guards_host_changes_and_removal(hub, hub_dsn):
    a, b, admin = hub
    for h in (a, b):
        h.cli("keys", "register")
        admin.cli("keys", "trust", h.host_id)
    admin.cli("hub", "project", "add", PID, "--host", "host-a")
    admin.cli("move", "start", PID, "--to", "host-b")  # queued: no worker runs in this test
    assert admin.json("hub", "project", "show", PID)["move_state"] == "queued"
    for argv in (("set", PID, "--host", "host-b"), ("rm", PID)):
        res = admin.cli("hub", "project", *argv, check=False)
        assert res.returncode == 4 and "move in progress (queued)" in res.stderr and "--force" in res.stderr
    assert _sql(hub_dsn, "SELECT host_id::text FROM projects WHERE project_id = %s", (PID,)) == [(a.host_id,)]
    # the image is not what a move is about: it may change; a cancelled move still waits for its roll-back
    assert admin.json("hub", "project", "set", PID, "--image", "ubuntu:25.10")["changed"] == ["rootfs_image"]
    admin.cli("move", "cancel", PID)
    assert admin.cli("hub", "project", "rm", PID, check=False).returncode == 4
    # every hint leads somewhere that works: not `move cancel` (it is cancelled) but the worker's clean-up
    res = admin.cli("hub", "project", "set", PID, "--host", "host-b", check=False)
    assert res.returncode == 4 and "move worker --once" in res.stderr and "move cancel" not in res.stderr, res.stderr
    assert admin.json("move", "cancel", PID)["state"] == "cancelled"  # cancelling again is not an error
    assert "MOVE" in admin.cli("hub", "project", "list").stdout and "cancelled*" in admin.cli(
        "hub", "project", "list").stdout
    assert admin.json("hub", "project", "rm", PID, "--force")["action"] == "removed"
    assert _sql(hub_dsn, "SELECT count(*) FROM project_moves WHERE project_id = %s", (PID,)) == [(0,)]


def _route(hub_port: int) -> tuple[int, str | None]:
    status, body = get_json(hub_port, f"/{PID}/info")
    return status, body.get("name")


def _until(hub_port: int, want: tuple[int, str | None], what: str) -> None:
    # the route cache lives an hour: only the NOTIFY can change the answer within this (generous) deadline
    deadline = time.monotonic() + 10
    while (got := _route(hub_port)) != want:
        assert time.monotonic() < deadline, f"{what}: the hub proxy still answers {got}, not {want}"
        time.sleep(0.02)


def test_the_hub_proxy_follows_placement_commands_at_once(hub, hub_dsn, tmp_path):
    a, b, admin = hub
    started = []
    try:
        for name in ("a", "b", "c"):
            started.append(start_backend(tmp_path, name=name))
        back_a, back_b, back_c = started
        a.cli("keys", "register", "--internal-url", f"http://127.0.0.1:{back_a.port}")
        b.cli("keys", "register", "--internal-url", f"http://127.0.0.1:{back_b.port}")
        proxy = start_proxy(tmp_path, "hub", {"data_dir": str(tmp_path / "hubproxy"), "hub_dsn": hub_dsn,
                                              # routing is under test: no access control (loopback listen)
                                              "proxy": {"route_cache_ttl": 3600, "auth": "none"}})
        started.append(proxy)
        port = proxy.port
        assert _route(port) == (404, None)  # cached for an hour: only a NOTIFY can change the answer now
        admin.cli("hub", "project", "add", PID, "--host", "host-a")
        _until(port, (200, "a"), "hub project add")
        assert _route(port) == (200, "a")
        admin.cli("hub", "project", "set", PID, "--host", "host-b")
        _until(port, (200, "b"), "hub project set --host")
        b.cli("keys", "register", "--internal-url", f"http://127.0.0.1:{back_c.port}")
        _until(port, (200, "c"), "keys register --internal-url")
        b.cli("keys", "register", "--clear-internal-url")
        _until(port, (502, None), "keys register --clear-internal-url")
        b.cli("keys", "register", "--internal-url", f"http://127.0.0.1:{back_b.port}")
        _until(port, (200, "b"), "keys register again")
        admin.cli("hub", "project", "rm", PID)
        _until(port, (404, None), "hub project rm")
        _, metrics = get_json(port, "/metrics")
        seen = [ln for ln in metrics["text"].splitlines() if ln.startswith("cocalc_proxy_route_notifications_total")]
        assert seen and float(seen[0].split()[-1]) >= 6
    finally:
        for s in reversed(started):
            s.stop()
    assert "Traceback" not in proxy.log_path.read_text(errors="replace")
