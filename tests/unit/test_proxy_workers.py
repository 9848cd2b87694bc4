"""`proxy serve --workers` / proxy.workers validation, and the pieces of the supervisor that are pure:
restart backoff, the metrics board and the merged /metrics text."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from cocalc_ctl.actions.proxy.serve import worker_count
from cocalc_ctl.errors import InvalidInput
from cocalc_ctl.proxy import workers


def _run(tmp_path, *args, env_extra=None, config=None):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(config if config is not None else f"data_dir: {tmp_path / 'data'}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COCALC_CTL_")}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "cocalc_ctl", "--config", str(cfg), "proxy", "serve", *args],
                          capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.parametrize("value,expected", [("1", 1), ("2", 2), (" 3 ", 3), (4, 4), ("256", 256)])
def test_worker_count_accepts(value, expected):
    assert worker_count(value) == expected


def test_worker_count_auto_is_the_usable_cores():
    assert worker_count("auto") == worker_count("AUTO") == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("value", ["0", "-1", "257", "2.5", "", "abc", "1e3", "99999999999999999999", "0x2",
                                   "2 workers", True, 2.0, None])
def test_worker_count_rejects(value):
    with pytest.raises(InvalidInput) as exc:
        worker_count(value)
    assert "invalid --workers" in exc.value.one_line()


def test_bad_workers_option_is_a_one_line_usage_error(tmp_path):
    r = _run(tmp_path, "--workers", "0", "--listen", "127.0.0.1:0")
    assert r.returncode == 2
    assert r.stderr.startswith("cocalc-ctl: error: invalid --workers") and r.stderr.count("\n") == 1
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("key,value", [("WORKERS", "-2"), ("WORKERS", "many"), ("DRAIN_TIMEOUT", "0")])
def test_bad_config_values_are_usage_errors(tmp_path, key, value):
    r = _run(tmp_path, "--listen", "127.0.0.1:0", env_extra={f"COCALC_CTL_PROXY_{key}": value})
    assert r.returncode == 2 and f"proxy.{key.lower()}" in r.stderr and "Traceback" not in r.stderr


def test_a_workers_start_up_error_is_the_commands_error(tmp_path):
    """No host database: each worker fails before listening; the command says so once, exit 5."""
    r = _run(tmp_path, "--mode", "host", "--listen", "127.0.0.1:0", "--workers", "2")
    assert r.returncode == 5, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("cocalc-ctl: error:")]
    assert len(errors) == 1 and "host database" in errors[0] and "cocalc-ctl host init" in errors[0]
    assert "Traceback" not in r.stderr


def test_port_in_use_is_reported_with_workers(tmp_path):
    from cocalc_ctl.state import host_db

    host_db.connect(tmp_path / "data").close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = _run(tmp_path, "--listen", f"127.0.0.1:{port}", "--workers", "2")
    assert r.returncode == 5 and f"cannot listen on 127.0.0.1:{port}" in r.stderr


def test_hub_mode_without_dsn_fails_before_forking(tmp_path):
    r = _run(tmp_path, "--mode", "hub", "--listen", "127.0.0.1:0", "--workers", "2")
    assert r.returncode == 5 and "hub_dsn" in r.stderr


def test_restart_delay_backs_off_and_is_bounded():
    assert [workers.restart_delay(n) for n in range(1, 7)] == [0.1, 1.0, 2.0, 4.0, 8.0, 10.0]
    assert workers.restart_delay(100) == 10.0


def test_bind_sockets_share_one_port():
    socks = workers.bind_sockets("127.0.0.1", 0, 3)
    try:
        ports = {s.getsockname()[1] for s in socks}
        assert len(ports) == 1 and 0 not in ports
        assert all(s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for s in socks)
    finally:
        for s in socks:
            s.close()


def test_board_slots_are_separate_and_survive_a_fork():
    board = workers.Board(2)
    board.publish(0, b"zero")
    pid = os.fork()
    if pid == 0:  # a worker writes its slot; the parent reads it
        board.publish(1, b"one from the child")
        board.count_restart(1)
        os._exit(0)
    os.waitpid(pid, 0)
    assert board.read(0) == b"zero" and board.read(1) == b"one from the child"
    assert board.restarts(1) == 1 and board.restarts(0) == 0
    board.publish(1, b"")
    assert board.read(1) == b""
    board.publish(0, b"x" * (workers.SLOT_BYTES * 2))  # an oversized text is cut, never spills over
    assert len(board.read(0)) == workers.SLOT_BYTES - 16 and board.read(1) == b""


def test_label_and_merge_give_one_block_per_family():
    a = ("# HELP r Requests.\n# TYPE r counter\nr{status=\"200\"} 3\nr{status=\"404\"} 1\n"
         "# HELP g Open.\n# TYPE g gauge\ng 2\n")
    b = "# HELP r Requests.\n# TYPE r counter\nr{status=\"200\"} 5\n# HELP g Open.\n# TYPE g gauge\ng 0\n"
    merged = workers.merge_families([workers.label_samples(a, 0), workers.label_samples(b, 1)])
    assert merged.splitlines() == [
        "# HELP r Requests.", "# TYPE r counter",
        'r{worker="0",status="200"} 3', 'r{worker="0",status="404"} 1', 'r{worker="1",status="200"} 5',
        "# HELP g Open.", "# TYPE g gauge", 'g{worker="0"} 2', 'g{worker="1"} 0']
