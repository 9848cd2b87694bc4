"""`move start`'s typer-free path: which command lines it takes, and that all others go to the full CLI."""

import pytest

from cocalc_ctl.cli.fast_move import parse

P = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"


@pytest.mark.parametrize("argv, expect", [
    (["move", "start", P], {"project": P}),
    (["--json", "move", "start", P, "--to", "h1"], {"project": P, "json": True, "to": "h1"}),
    (["move", "start", "--mode=staged", P, "--compress", "zstd", "-q"],
     {"project": P, "mode": "staged", "compress": "zstd", "quiet": True}),
    (["--config", "/c.yaml", "move", "start", P], {"project": P, "config": "/c.yaml"}),
    (["move", "start", P, "--config=/c.yaml", "--quiet"], {"project": P, "config": "/c.yaml", "quiet": True}),
    (["move", "start", "nope"], {"project": "nope"}),  # validated by the action, as on the full path
])
def test_plain_forms_take_the_fast_path(argv, expect):
    got = parse(argv)
    assert got == {"config": None, "json": False, "quiet": False, **expect}


@pytest.mark.parametrize("argv", [
    ["move", "start"], ["move", "start", P, P], ["move", "status", P], ["move", "start", P, "--dry-run"],
    ["-v", "move", "start", P], ["move", "start", P, "--help"], ["move", "start", P, "--to"],
    ["move", "start", P, "--to", "a", "--to", "b"], ["move", "start", P, "--to", "--json"],
    ["move", "start", P, "--to="], ["move", "start", P, "--bogus", "x"], ["--to", "h", "move", "start", P],
    ["move", "start", P, "--config"], ["--config", "a", "--config", "b", "move", "start", P],
    ["move", "start", "--", P], ["hub", "move", "start", P], [],
])
def test_everything_else_goes_to_the_full_cli(argv):
    assert parse(argv) is None
