"""`proxy serve --workers N` with real processes: every worker serves, a killed worker is replaced while
the address keeps answering, SIGTERM drains a request in flight and exits 0, a crash loop ends the
command with exit 1, and `--workers 1` is the single process it always was."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import time
import uuid

import pytest

from tests.support.access import add_account, add_token, grant
from tests.support.proxy import (DIRECT, host_identity, host_state, hub_secret, send_raw, start_backend, start_proxy,
                                 status_of)

pytestmark = pytest.mark.integration

RUNNING = str(uuid.uuid4())


def children(pid: int) -> list[int]:
    try:
        text = open(f"/proc/{pid}/task/{pid}/children").read()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def wait_for(predicate, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def get(port: int, path: str, timeout: float = 20.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def metric(text: str, name: str, **labels) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        m = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if m and m.group(1) == name and (m.group(2) or "") == want:
            return float(m.group(3))
    return None


def access_lines(service) -> list[dict]:
    return [json.loads(line) for line in service.log().splitlines() if line.startswith("{\"ts\"")]


@pytest.fixture
def env(tmp_path):
    backend = start_backend(tmp_path)
    host_state(tmp_path / "data", {RUNNING: backend.port})
    started = []

    def proxy(workers, **proxy_cfg):
        # talked to directly (no hub in front): no hub credential, as on a loopback listen only
        p = start_proxy(tmp_path, "host", {"data_dir": str(tmp_path / "data"), "proxy": {**DIRECT, **proxy_cfg}},
                        json_log=True, workers=workers)
        started.append(p)
        return p

    try:
        yield proxy
    finally:
        for p in started:
            pids = children(p.pid)
            p.stop()
            for pid in pids:  # never leave a worker behind, whatever the test did
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        backend.stop()


def test_every_worker_serves_and_metrics_and_access_log_name_each(env):
    proxy = env(2)
    assert len(wait_for(lambda: len(children(proxy.pid)) == 2 and children(proxy.pid), what="2 workers")) == 2
    wait_for(lambda: "(asyncio, 2 workers)" in proxy.log() or "(uvloop, 2 workers)" in proxy.log(), what="ready line")
    unknown = str(uuid.uuid4())
    for _ in range(40):  # a new connection each: the kernel spreads them over the workers' sockets
        assert get(proxy.port, f"/{RUNNING}/info")[0] == 200
        assert get(proxy.port, f"/{unknown}/info")[0] == 404

    def scrape():  # the other worker's series on the board are about a second old
        status, body = get(proxy.port, "/metrics")
        assert status == 200
        text = body.decode()
        # 404s, not 200s: every scrape is a 200 too, so the 200s never stop growing while we poll
        counts = [metric(text, "cocalc_proxy_requests_total", worker=w, status=404) or 0 for w in (0, 1)]
        return (text, counts) if sum(counts) == 40 else None

    text, per_worker = wait_for(scrape, 30, "both workers' counts on /metrics")
    assert all(n > 0 for n in per_worker), per_worker
    assert sum(metric(text, "cocalc_proxy_requests_total", worker=w, status=200) or 0 for w in (0, 1)) >= 40
    assert metric(text, "cocalc_proxy_workers") == 2
    assert metric(text, "cocalc_proxy_worker_restarts_total", worker=0) == 0
    types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(types) == len(set(types))  # one family block per metric, as the exposition format requires
    served = [line for line in access_lines(proxy) if line["path"] == f"/{RUNNING}/info"]
    assert len(served) == 40 and {line["worker"] for line in served} == {0, 1}


def test_killed_worker_is_restarted_while_the_address_keeps_answering(env):
    proxy = env(2)
    first = wait_for(lambda: len(children(proxy.pid)) == 2 and children(proxy.pid), what="2 workers")
    outcomes = {"ok": 0, "refused": 0, "other": []}
    victim = first[1]
    killed_at = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            status, _ = get(proxy.port, f"/{RUNNING}/info", timeout=10)
            outcomes["ok" if status == 200 else "other"] += 1 if status == 200 else [status]
        except ConnectionRefusedError:
            outcomes["refused"] += 1
        except (OSError, http.client.HTTPException) as exc:  # a connection the killed worker had accepted
            outcomes["other"].append(repr(exc))
        if killed_at is None and outcomes["ok"] >= 20:
            os.kill(victim, signal.SIGKILL)
            killed_at = time.monotonic()
        now = children(proxy.pid)
        if killed_at is not None and len(now) == 2 and victim not in now and outcomes["ok"] >= 120:
            break
    assert killed_at is not None
    assert outcomes["refused"] == 0, outcomes
    assert len(outcomes["other"]) <= 1, outcomes  # at most the one request in flight in the killed worker
    replaced = children(proxy.pid)
    assert len(replaced) == 2 and victim not in replaced and first[0] in replaced
    assert re.search(rf"worker 1 \(pid {victim}\) was killed by SIGKILL after [0-9.]+ s; restarting in 0.1 s",
                     proxy.log())
    for _ in range(30):  # the new worker takes its share of new connections
        assert get(proxy.port, f"/{RUNNING}/info")[0] == 200

    def restarted_and_serving():
        text = get(proxy.port, "/metrics")[1].decode()
        return (metric(text, "cocalc_proxy_worker_restarts_total", worker=1) == 1
                and (metric(text, "cocalc_proxy_requests_total", worker=1, status=200) or 0) > 0)

    wait_for(restarted_and_serving, 30, "the new worker 1 counted on /metrics")
    assert proxy.alive()


def test_sigterm_drains_a_slow_request_closes_idle_ones_and_exits_0(env):
    proxy = env(2, drain_timeout=30)
    wait_for(lambda: len(children(proxy.pid)) == 2, what="2 workers")
    workers = children(proxy.pid)
    idle = socket.create_connection(("127.0.0.1", proxy.port), timeout=20)
    idle.sendall(f"GET /{RUNNING}/info HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert idle.recv(65536).startswith(b"HTTP/1.1 200")  # a keep-alive connection, now idle
    slow = socket.create_connection(("127.0.0.1", proxy.port), timeout=20)
    slow.sendall(f"GET /{RUNNING}/slow?delay=3 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    time.sleep(1.0)  # the request is at the backend now
    t0 = time.monotonic()
    proxy.proc.send_signal(signal.SIGTERM)
    assert idle.recv(65536) == b""  # closed at once, not after the drain timeout
    assert time.monotonic() - t0 < 5
    answer = b""
    while chunk := slow.recv(65536):  # the answer in flight arrives whole, then the connection closes
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    head, _, body = answer.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    assert len(body) == length
    assert proxy.proc.wait(30) == 0
    assert time.monotonic() - t0 >= 1.5  # it waited for the slow answer
    assert all(not os.path.exists(f"/proc/{pid}") for pid in workers)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    assert '"workers": 2' in proxy.log()
    slow.close()
    idle.close()


def test_drain_timeout_bounds_the_wait_for_a_request_that_outlasts_it(env):
    proxy = env(2, drain_timeout=1)
    wait_for(lambda: len(children(proxy.pid)) == 2, what="2 workers")
    slow = socket.create_connection(("127.0.0.1", proxy.port), timeout=30)
    slow.sendall(f"GET /{RUNNING}/slow?delay=20 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    time.sleep(1.0)
    t0 = time.monotonic()
    proxy.proc.send_signal(signal.SIGTERM)
    assert proxy.proc.wait(15) == 0
    assert time.monotonic() - t0 < 10  # the drain timeout (1 s), not the request's 20 s
    assert slow.recv(65536) == b""  # cut without an answer
    slow.close()


def test_sighup_to_the_whole_process_group_changes_nothing(env):
    proxy = env(2)
    workers = wait_for(lambda: len(children(proxy.pid)) == 2 and children(proxy.pid), what="2 workers")
    os.killpg(proxy.pid, signal.SIGHUP)  # a closed terminal: supervisor and workers alike
    time.sleep(1.0)
    assert proxy.alive() and children(proxy.pid) == workers
    assert get(proxy.port, f"/{RUNNING}/info")[0] == 200


def test_crash_loop_ends_the_command_with_exit_1_and_one_line(env):
    proxy = env(2)
    killed = set()
    deadline = time.monotonic() + 90
    while proxy.alive() and time.monotonic() < deadline:
        for pid in children(proxy.pid):  # every worker dies right after it starts, as in an OOM loop
            if pid not in killed:
                killed.add(pid)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        time.sleep(0.02)
    assert proxy.proc.wait(10) == 1
    errors = [line for line in proxy.log().splitlines() if line.startswith("cocalc-ctl: error:")]
    assert len(errors) == 1, proxy.log()
    assert re.match(r"cocalc-ctl: error: proxy worker [01] died 5 times in a row within 10 s of starting "
                    r"\(last: was killed by SIGKILL\); stopping", errors[0])
    assert "Traceback" not in proxy.log()
    assert len(killed) >= 5
    assert all(not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
               for pid in killed)


def test_workers_1_is_the_single_process_it_was(env):
    proxy = env(1)
    assert get(proxy.port, f"/{RUNNING}/info")[0] == 200
    assert children(proxy.pid) == []  # no supervisor, no fork
    log = proxy.log()
    assert re.search(r"listening on http://127\.0\.0\.1:\d+ \((asyncio|uvloop)\)\n", log)
    assert all("worker" not in line for line in access_lines(proxy))
    text = get(proxy.port, "/metrics")[1].decode()
    assert "worker=" not in text and "cocalc_proxy_workers" not in text
    assert metric(text, "cocalc_proxy_requests_total", status=200) == 1


def test_hub_mode_each_worker_listens_for_route_changes(tmp_path, postgres):
    """Each worker has its own route cache and LISTEN connection: a move re-routes every worker at once,
    well inside a cache lifetime of an hour."""
    import psycopg

    from cocalc_ctl.state import hub_db

    dsn = postgres.new_database()
    hub_db.migrate(dsn)
    host_a, host_b = str(uuid.uuid4()), str(uuid.uuid4())
    started = []
    try:
        backend_a = start_backend(tmp_path, name="a")
        started.append(backend_a)
        backend_b = start_backend(tmp_path, name="b")
        started.append(backend_b)
        with psycopg.connect(dsn, autocommit=True) as conn:
            for hid, port in ((host_a, backend_a.port), (host_b, backend_b.port)):
                conn.execute("INSERT INTO project_hosts(id, name, internal_url) VALUES (%s, %s, %s)",
                             (hid, f"host-{port}", f"http://127.0.0.1:{port}"))
            conn.execute("INSERT INTO projects(project_id, host_id) VALUES (%s, %s)", (RUNNING, host_a))
        hub = start_proxy(tmp_path, "hub", {"data_dir": str(tmp_path / "hub"), "hub_dsn": dsn,
                                            "proxy": {"route_cache_ttl": 3600, "auth": "none"}},
                          json_log=True, workers=2)  # routes, not access, are under test here (loopback)
        started.append(hub)

        def names(n):
            return [json.loads(get(hub.port, f"/{RUNNING}/info")[1])["name"] for _ in range(n)]

        assert names(30) == ["a"] * 30
        assert {line["worker"] for line in access_lines(hub) if line["path"] == f"/{RUNNING}/info"} == {0, 1}
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("UPDATE projects SET host_id = %s WHERE project_id = %s", (host_b, RUNNING))

        def notified():
            text = get(hub.port, "/metrics")[1].decode()
            return all((metric(text, "cocalc_proxy_route_notifications_total", worker=w) or 0) >= 1 for w in (0, 1))

        wait_for(notified, 30, "the route NOTIFY in both workers")
        assert names(30) == ["b"] * 30
    finally:
        for s in reversed(started):
            pids = children(s.pid)
            s.stop()
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def test_every_hub_worker_enforces_access_and_every_host_worker_checks_the_hub_credential(tmp_path, postgres):
    """Access control and the hub credential are built per worker (after the fork): with 2 workers each,
    a request without a credential gets 401 from every hub worker, a token 200 from every one through a
    host whose every worker refuses what its hub did not sign and serves what it did."""
    import psycopg

    from cocalc_ctl.proxy import hubcred
    from cocalc_ctl.state import hub_db

    dsn = postgres.new_database()
    hub_db.migrate(dsn)
    host_id = str(uuid.uuid4())
    started = []
    try:
        backend = start_backend(tmp_path, name="a")
        started.append(backend)
        host_dir = tmp_path / "host"
        host_state(host_dir, {RUNNING: backend.port})
        key_id, secret = hub_secret(dsn, host_id, host_dir)
        host = start_proxy(tmp_path, "host", {"data_dir": str(host_dir), **host_identity(host_id, host_dir),
                                              "proxy": {"trust_forwarded": ["127.0.0.1"]}},
                           json_log=True, workers=2)
        started.append(host)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO project_hosts(id, name, internal_url) VALUES (%s, 'h', %s)",
                         (host_id, f"http://127.0.0.1:{host.port}"))
            conn.execute("INSERT INTO projects(project_id, host_id) VALUES (%s, %s)", (RUNNING, host_id))
        account = add_account(dsn, "workers")
        grant(dsn, RUNNING, account, "collaborator")
        token = add_token(dsn, account)[0]
        hub = start_proxy(tmp_path, "hub", {"data_dir": str(tmp_path / "hub"), "hub_dsn": dsn}, json_log=True,
                          workers=2)
        started.append(hub)
        for proxy in (host, hub):
            wait_for(lambda: "2 workers)" in proxy.log(), what="ready line")

        def status(port: int, extra: str = "") -> int:
            return status_of(send_raw(port, f"GET /{RUNNING}/info HTTP/1.1\r\nHost: h\r\n{extra}"
                                            "Connection: close\r\n\r\n"))

        def statuses(proxy, extra: str = "") -> dict[int, set[int]]:
            """status per worker over 30 new connections (the kernel spreads them over both)"""
            before = len(access_lines(proxy))
            for _ in range(30):
                status(proxy.port, extra)
            lines = wait_for(lambda: len(access_lines(proxy)) >= before + 30 and access_lines(proxy)[before:],
                             what="access-log lines")
            seen: dict[int, set[int]] = {}
            for line in lines:
                if line["path"] == f"/{RUNNING}/info":
                    seen.setdefault(line["worker"], set()).add(line["status"])
            return seen

        assert statuses(hub) == {0: {401}, 1: {401}}  # no credential: every hub worker refuses
        assert statuses(hub, "Authorization: Bearer cct_" + "A" * 43 + "\r\n") == {0: {401}, 1: {401}}
        assert statuses(host) == {0: {401}, 1: {401}}  # straight to the host: no hub credential
        assert statuses(hub, f"Authorization: Bearer {token}\r\n") == {0: {200}, 1: {200}}
        # the hub's pooled connections may all sit on one host worker: sign new connections here, as the hub
        cred = hubcred.credential(secret, key_id.encode(), host_id.encode(), b"GET", b"h",
                                  f"/{RUNNING}/info".encode(), project=RUNNING.encode()).decode()
        assert statuses(host, f"x-cocalc-hub-auth: {cred}\r\n") == {0: {200}, 1: {200}}
        head, _, mac = cred.rpartition(".")
        forged = f"{head}.{'B' if mac[0] == 'A' else 'A'}{mac[1:]}"  # another MAC
        assert statuses(host, f"x-cocalc-hub-auth: {forged}\r\n") == {0: {401}, 1: {401}}
    finally:
        for s in reversed(started):
            pids = children(s.pid)
            s.stop()
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
