"""Subdomain mode in a real browser: each project is its own origin, so a page of project A cannot read
project B's answers even though the same user is logged in to both (the browser's same-origin rule,
not a check of ours, is what refuses it), while the page reads its own project's answers."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.support.access import add_account, add_token, grant
from tests.support.cdp import Browser, chromium_path
from tests.support.proxy import host_identity, host_state, hub_secret, start_backend, start_proxy

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(chromium_path() is None, reason="apt-get install chromium")]

DOMAIN = "projects.example.org"

READ = """fetch(%r, {credentials: 'include'})
  .then(r => r.text().then(t => 'read ' + r.status + ' ' + t.slice(0, 40)))
  .catch(e => 'blocked ' + e.name)"""


def _wait_url(browser: Browser, want: str) -> None:
    deadline = time.monotonic() + 30
    while browser.evaluate("location.href") != want:
        assert time.monotonic() < deadline, browser.evaluate("location.href")
        time.sleep(0.1)


def test_a_page_of_one_project_cannot_read_another_project_of_the_same_user(tmp_path, postgres):
    import psycopg

    from cocalc_ctl.state import hub_db

    a, b, host_id = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    dsn = postgres.new_database()
    hub_db.migrate(dsn)
    started = []
    browser = None
    try:
        backend = start_backend(tmp_path)
        started.append(backend)
        host_state(tmp_path / "host", {a: backend.port, b: backend.port})
        hub_secret(dsn, host_id, tmp_path / "host")
        host = start_proxy(tmp_path, "host", {"data_dir": str(tmp_path / "host"),
                                              **host_identity(host_id, tmp_path / "host"),
                                              "proxy": {"trust_forwarded": ["127.0.0.1"], "project_domain": DOMAIN}})
        started.append(host)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO project_hosts(id, internal_url) VALUES (%s, %s)",
                         (host_id, f"http://127.0.0.1:{host.port}"))
            for pid in (a, b):
                conn.execute("INSERT INTO projects(project_id, host_id) VALUES (%s, %s)", (pid, host_id))
        hub = start_proxy(tmp_path, "hub", {"data_dir": str(tmp_path / "hub"), "hub_dsn": dsn,
                                            "proxy": {"project_domain": DOMAIN}})
        started.append(hub)
        account = add_account(dsn, "two-projects")
        grant(dsn, a, account, "owner")
        grant(dsn, b, account, "owner")
        token, _ = add_token(dsn, account)
        origin = {pid: f"http://{pid}.{DOMAIN}:{hub.port}" for pid in (a, b)}

        browser = Browser(extra_args=(f"--host-resolver-rules=MAP *.{DOMAIN} 127.0.0.1",))
        browser.open_page()
        browser.call("Page.enable")
        for pid in (b, a):  # log in to both projects (each origin gets its own session cookie); end on A
            browser.call("Page.navigate", url=f"{origin[pid]}/info?token={token}")
            _wait_url(browser, f"{origin[pid]}/info")
        assert token not in hub.log()

        # the page of A reads A's answers (the mechanism works: a fetch with credentials that is allowed)
        own = browser.evaluate(READ % f"{origin[a]}/info", await_promise=True)
        assert own.startswith("read 200 "), own
        # ... and cannot read B's, although the browser holds a session for B
        cross = browser.evaluate(READ % f"{origin[b]}/info", await_promise=True)
        assert cross.startswith("blocked "), cross
        # B's own page reads B (the session for B is real, so the refusal above is the origin's)
        browser.call("Page.navigate", url=f"{origin[b]}/info")
        _wait_url(browser, f"{origin[b]}/info")
        assert browser.evaluate(READ % f"{origin[b]}/info", await_promise=True).startswith("read 200 ")
        # the session cookie is the origin's alone: no Domain, so the other project never receives it
        cookies = browser.call("Network.getAllCookies")["cookies"]
        ours = [c for c in cookies if "cocalc_ctl_session" in c["name"]]
        assert sorted(c["domain"] for c in ours) == sorted(f"{pid}.{DOMAIN}" for pid in (a, b)), ours
        assert all(c["httpOnly"] and c["path"] == "/" for c in ours), ours
    finally:
        if browser is not None:
            browser.close()
        for s in reversed(started):
            s.stop()
