"""A real browser through hub and host proxies: headless Chromium loads a page from a project backend
and completes a WebSocket round trip; the result is read from the page's DOM over DevTools."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.support.access import add_account, add_token, grant, revoke_grant
from tests.support.cdp import Browser, chromium_path
from tests.support.proxy import host_identity, host_state, hub_secret, start_backend, start_proxy

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(chromium_path() is None, reason="apt-get install chromium")]


def test_browser_loads_page_and_round_trips_a_websocket_through_hub_and_host(tmp_path, postgres):
    import psycopg

    from cocalc_ctl.state import hub_db

    pid, host_id = str(uuid.uuid4()), str(uuid.uuid4())
    dsn = postgres.new_database()
    hub_db.migrate(dsn)
    started = []
    browser = None
    try:
        backend = start_backend(tmp_path)
        started.append(backend)
        host_state(tmp_path / "host", {pid: backend.port})
        hub_secret(dsn, host_id, tmp_path / "host")
        host = start_proxy(tmp_path, "host", {"data_dir": str(tmp_path / "host"), **host_identity(host_id, tmp_path / "host"),
                                              "proxy": {"trust_forwarded": ["127.0.0.1"]}})
        started.append(host)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO project_hosts(id, internal_url) VALUES (%s, %s)",
                         (host_id, f"http://127.0.0.1:{host.port}"))
            conn.execute("INSERT INTO projects(project_id, host_id) VALUES (%s, %s)", (pid, host_id))
        hub = start_proxy(tmp_path, "hub", {"data_dir": str(tmp_path / "hub"), "hub_dsn": dsn})
        started.append(hub)
        account = add_account(dsn, "browser")
        grant(dsn, pid, account, "collaborator")
        token, _ = add_token(dsn, account)

        browser = Browser()
        browser.open_page()
        browser.call("Page.enable")
        # the login link: the hub sets its session cookie and sends the browser on without the token
        browser.call("Page.navigate", url=f"http://127.0.0.1:{hub.port}/{pid}/port/8000/page?token={token}")
        deadline = time.monotonic() + 30
        result = None
        while time.monotonic() < deadline:
            result = browser.evaluate("document.getElementById('result') && document.getElementById('result').textContent")
            if result not in (None, "pending"):
                break
            time.sleep(0.1)
        assert result == "echo:ping-from-browser"
        assert browser.evaluate("document.title") == "proxy test"
        assert browser.evaluate("location.href") == f"http://127.0.0.1:{hub.port}/{pid}/port/8000/page"
        assert token not in hub.log()
        assert f'"GET /{pid}/port/8000/page" 200' in hub.log()
        deadline = time.monotonic() + 10  # a tunnel's log line is written when it closes
        while f'"GET /{pid}/port/8000/ws" 101' not in hub.log():
            assert time.monotonic() < deadline, hub.log()
            time.sleep(0.1)
        # the browser holds only the session cookie (HttpOnly: the page's script cannot read it)
        assert "cocalc_ctl_session" not in (browser.evaluate("document.cookie") or "")
        # revoke: the browser's next request with its cookie is refused
        revoke_grant(dsn, pid, account)
        deadline = time.monotonic() + 10
        while True:
            browser.call("Page.navigate", url=f"http://127.0.0.1:{hub.port}/{pid}/port/8000/page")
            time.sleep(0.3)
            text = browser.evaluate("document.body && document.body.innerText") or ""
            if "forbidden" in text:
                break
            assert time.monotonic() < deadline, text
        assert f'"GET /{pid}/port/8000/page" 403' in hub.log()
    finally:
        if browser is not None:
            browser.close()
        for s in reversed(started):
            s.stop()
