"""`cocalc-ctl proxy serve` refuses bad input with one-line errors and the documented exit codes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from cocalc_ctl.actions.proxy.serve import parse_listen
from cocalc_ctl.errors import InvalidInput


def _run(tmp_path, *args, config: str | None = None):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(config if config is not None else f"data_dir: {tmp_path / 'data'}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COCALC_CTL_")}
    return subprocess.run([sys.executable, "-m", "cocalc_ctl", "--config", str(cfg), "proxy", "serve", *args],
                          capture_output=True, text=True, env=env, timeout=60)


def test_unknown_mode_is_a_usage_error(tmp_path):
    r = _run(tmp_path, "--mode", "sideways")
    assert r.returncode == 2
    assert r.stderr.startswith("cocalc-ctl: error: invalid mode 'sideways'")


def test_bad_listen_address_is_a_usage_error(tmp_path):
    r = _run(tmp_path, "--listen", "localhost")
    assert r.returncode == 2 and "invalid listen address" in r.stderr


def test_host_mode_without_host_database_says_to_init(tmp_path):
    r = _run(tmp_path, "--mode", "host", "--listen", "127.0.0.1:0")
    assert r.returncode == 5
    assert "host database" in r.stderr and "cocalc-ctl host init" in r.stderr
    assert "Traceback" not in r.stderr


def test_hub_mode_without_dsn_is_a_precondition_error(tmp_path):
    r = _run(tmp_path, "--mode", "hub", "--listen", "127.0.0.1:0")
    assert r.returncode == 5 and "hub_dsn" in r.stderr


def test_port_in_use_is_reported(tmp_path):
    from cocalc_ctl.state import host_db

    host_db.connect(tmp_path / "data").close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        # a host proxy checking the hub credential needs this host's id
        r = _run(tmp_path, "--listen", f"127.0.0.1:{port}",
                 config=f"data_dir: {tmp_path / 'data'}\nhost_id: 1b4e28ba-2fa1-41d2-883f-0016d3cca427\n")
    assert r.returncode == 5 and f"cannot listen on 127.0.0.1:{port}" in r.stderr


@pytest.mark.parametrize("mode,listen", [("host", "0.0.0.0:0"), ("host", "[::]:0"), ("hub", "0.0.0.0:0"),
                                         ("host", "192.0.2.1:0")])
def test_non_loopback_listen_without_access_control_is_refused_in_one_line(tmp_path, mode, listen):
    config = (f"data_dir: {tmp_path / 'data'}\nhub_dsn: host=/nonexistent\nproxy:\n  host_auth: none\n"
              "  auth: none\n")
    r = _run(tmp_path, "--mode", mode, "--listen", listen, config=config)
    assert r.returncode == 5, r.stderr
    assert r.stderr.startswith("cocalc-ctl: error: refusing to listen on non-loopback address" if mode == "host"
                               else "cocalc-ctl: error: proxy.auth is none and the proxy would listen on")
    assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr


@pytest.mark.parametrize("listen", ["127.0.0.2:0", "[::1]:0", "localhost:0"])
def test_loopback_listens_are_not_refused_for_want_of_access_control(tmp_path, listen):
    from cocalc_ctl.actions.proxy.serve import check_listen, is_loopback_listen

    host = parse_listen(listen)[0]
    assert is_loopback_listen(host)
    check_listen({"proxy.host_auth": "none"}, "host", host)  # no exception


@pytest.mark.parametrize("text,expected", [("127.0.0.1:8080", ("127.0.0.1", 8080)), ("[::1]:80", ("::1", 80)),
                                           ("0.0.0.0:0", ("0.0.0.0", 0))])
def test_parse_listen(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["8080", "host:", "h:99999", "a b:1", ""])
def test_parse_listen_rejects(text):
    with pytest.raises(InvalidInput):
        parse_listen(text)


def test_hub_mode_without_access_control_is_refused_on_a_non_loopback_listen(tmp_path):
    cfg = f"data_dir: {tmp_path / 'data'}\nhub_dsn: host=/nonexistent dbname=x\nproxy:\n  auth: none\n"
    r = _run(tmp_path, "--mode", "hub", "--listen", "0.0.0.0:0", config=cfg)
    assert r.returncode == 5, r.stderr
    assert r.stderr.startswith("cocalc-ctl: error: proxy.auth is none and the proxy would listen on 0.0.0.0")
    assert "Traceback" not in r.stderr


def test_external_access_control_needs_its_url(tmp_path):
    cfg = f"data_dir: {tmp_path / 'data'}\nhub_dsn: host=/nonexistent dbname=x\nproxy:\n  auth: external\n"
    r = _run(tmp_path, "--mode", "hub", "--listen", "127.0.0.1:0", config=cfg)
    assert r.returncode == 5 and "proxy.auth_url" in r.stderr
