"""`move start`'s typer-free path answers exactly as the full CLI does, on a real hub, without loading
typer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from tests.support.hosts import REPO
from tests.support.postgres import sql

pytestmark = pytest.mark.integration

FULL = [sys.executable, "-c", "import sys; from cocalc_ctl.cli.main import main; sys.argv[0] = 'cocalc-ctl'; main()"]
FAST = [sys.executable, "-m", "cocalc_ctl"]


@pytest.fixture
def hub(hub_dsn, tmp_path):
    from cocalc_ctl.state import hub_db

    hub_db.migrate(hub_dsn)
    src, dst = str(uuid.uuid4()), str(uuid.uuid4())
    for h, name in ((src, "src"), (dst, "dst")):
        sql(hub_dsn, "INSERT INTO project_hosts (id, name, ssh_server, status, last_seen, trusted) "
                     "VALUES (%s, %s, '127.0.0.9:22', 'active', now(), true)", (h, name))
    pid = str(uuid.uuid4())
    sql(hub_dsn, "INSERT INTO projects (project_id, host_id) VALUES (%s, %s)", (pid, src))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data_dir: {tmp_path}/data\nhub_dsn: '{hub_dsn}'\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COCALC_CTL_")}
    env["COCALC_CTL_CONFIG"] = str(cfg)
    return env, src, dst, pid


def both(env, argv):
    out = []
    for prog in (FAST, FULL):
        r = subprocess.run([*prog, *argv], env=env, cwd=str(REPO), capture_output=True, text=True, timeout=120)
        out.append((r.returncode, r.stdout, r.stderr))
    return out


def _untimed(text: str) -> dict:
    doc = json.loads(text)
    return {k: v for k, v in doc.items() if k not in ("created_at", "updated_at", "cleaned_at")}


def test_fast_and_full_move_start_answer_alike(hub):
    env, src, dst, pid = hub
    # to where it already is: done at once, repeatable, so both paths do the very same thing
    fast, full = both(env, ["move", "start", pid, "--to", "src"])
    assert fast == full and fast[0] == 0 and fast[1] == f"move of {pid} to {src}: done (already on the destination)\n"
    fast, full = both(env, ["--json", "move", "start", pid, f"--to={src}", "--mode", "staged"])
    assert fast[0] == full[0] == 0 and fast[2] == full[2]
    assert _untimed(fast[1]) == _untimed(full[1]) and _untimed(fast[1])["mode"] == "staged"
    fast, full = both(env, ["move", "start", pid, "-q", "--to", "src"])
    assert fast == full == (0, "", "")
    for argv, code in ((["move", "start", "nope"], 2),
                       (["move", "start", pid, "--mode", "bad"], 2),
                       (["move", "start", str(uuid.uuid4())], 3),
                       (["move", "start", pid, "--to", "no-such-host"], 3)):
        fast, full = both(env, argv)
        assert fast == full and fast[0] == code and fast[2].startswith("cocalc-ctl: error: "), (argv, fast, full)
        assert fast[2].count("\n") == 1
    # a real queue: the second start is busy (exit 4) on either path
    fast = subprocess.run([*FAST, "--json", "move", "start", pid, "--to", "dst"], env=env, cwd=str(REPO),
                          capture_output=True, text=True, timeout=120)
    assert fast.returncode == 0 and json.loads(fast.stdout)["state"] == "queued"
    fast, full = both(env, ["move", "start", pid])
    assert fast == full and fast[0] == 4


def test_fast_move_start_does_not_load_typer(hub):
    env, src, dst, pid = hub
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "cocalc_ctl", "move", "start", pid, "--to", "src"],
                       env=env, cwd=str(REPO), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "psycopg" in imported and "cocalc_ctl.actions.move.hub" in imported  # the method sees imports
    assert not {"typer", "rich", "psycopg_pool", "cocalc_ctl.cli.main"} & imported
