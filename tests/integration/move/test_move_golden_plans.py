"""Golden --dry-run plans of `move send` (pipe, staged+zstd) against a real receiver.

A move plan depends on what the receiver already holds, so the dry run asks it (`list`, read-only)
and prints every command it would run. Host ids, the sshd port and throwaway paths are replaced by
placeholders. UPDATE_GOLDEN=1 rewrites the files.
"""

from __future__ import annotations

import re

import pytest

from tests.support.ops import check_golden

pytestmark = pytest.mark.integration

PID = "44444444-4444-4444-8444-444444444444"


def _norm(a, b, rb, text: str, ticket: str) -> str:
    text = text.replace(ticket, "$TICKET")
    text = text.replace(str(a.base.parent), "$TMP").replace(a.host_id, "$A").replace(b.host_id, "$B")
    text = text.replace(f":{rb.port}", ":$PORT").replace(f"-p {rb.port} ", "-p $PORT ")
    text = re.sub(r"move-\d{8}T\d{6}Z", "move-$TIME", text)
    # subvolume uuids differ per run; the project id does not
    return re.sub(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b",
                  lambda m: m.group(0) if m.group(0) in (PID, "00000000-0000-0000-0000-000000000000") else "$UUID",
                  text)


@pytest.mark.parametrize("mode,extra,golden", [("pipe", [], "plans/move-send-pipe.txt"),
                                                ("staged", ["--compress", "zstd"], "plans/move-send-staged-zstd.txt")])
def test_move_send_plan(pair, mode, extra, golden):
    a, b, rb, _ = pair
    a.cli("project", "create", PID)
    (a.project_path(PID) / "f").write_text("x")
    for s in ("s1", "s2"):
        a.cli("snapshot", "create", PID, s)
    ticket = a.hub.ticket(PID, a, b, mode=mode, snapshot="move-20260101T000000Z")
    res = a.cli("--dry-run", "move", "send", PID, "--to", rb.spec(), "--mode", mode, *extra, "--ticket", ticket)
    text = _norm(a, b, rb, res.stdout, ticket)
    check_golden(golden, text)
    assert "btrfs send" in text
    assert not (b.pool / "_incoming" / PID).exists()
    assert sorted(p.name for p in (a.project_path(PID) / ".snapshots").iterdir() if not p.name.startswith(".")) \
        == ["s1", "s2"]
