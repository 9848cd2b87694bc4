"""`--help` of every command matches tests/golden/help/ exactly (UPDATE_GOLDEN=1 or scripts/regenerate
rewrites them). A changed help text is a changed interface: review the diff."""

from __future__ import annotations

import pytest

from cocalc_ctl.docgen import helptext, model
from tests.support.ops import check_golden

COMMANDS = [c.path for c in model().walk()]


@pytest.mark.parametrize("path", COMMANDS, ids=[" ".join(p) or "(root)" for p in COMMANDS])
def test_help_matches_golden(path):
    check_golden(f"help/{helptext.golden_name(path)}", helptext.help_of(path))


def test_help_golden_can_fail(tmp_path, monkeypatch):
    import tests.support.ops as ops

    monkeypatch.setattr(ops, "GOLDEN", tmp_path)
    monkeypatch.setattr(ops, "UPDATE_GOLDEN", False)
    (tmp_path / "help").mkdir()
    (tmp_path / "help" / "x.txt").write_text("old help\n")
    with pytest.raises(AssertionError, match="differs from the golden file"):
        ops.check_golden("help/x.txt", "new help\n")
