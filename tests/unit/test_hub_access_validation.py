"""Where access-control input enters: account names, durations, token names and ids, roles, and the
shape of tokens and session values."""

from __future__ import annotations

import datetime as dt

import pytest

from cocalc_ctl.actions.hub import access as act
from cocalc_ctl.errors import InvalidInput
from cocalc_ctl.state import hub_access as ha


@pytest.mark.parametrize("name", ["a", "alice", "ci-bot", "team.lab_2", "a" * 64, "x1"])
def test_account_names_accepted(name):
    assert act.account_name(name) == name


@pytest.mark.parametrize("name", ["", "A", "Alice", "1abc", "-a", ".a", "_a", "a" * 65, "al ice", "a/b", "a\x00",
                                  "a\n", "ä", "a;b", "a'b", "a.", "a-", "a..b", "ab4e28ba-2fa1-11d2-883f-0016d3cca427",
                                  "alice\u200b", "ＡＢ"])
def test_account_names_refused(name):
    with pytest.raises(InvalidInput):
        act.account_name(name)


def test_account_ref_takes_a_uuid_or_a_name():
    uid = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
    assert act.account_ref(uid) == (uid, None)
    assert act.account_ref("bob") == (None, "bob")
    with pytest.raises(InvalidInput):
        act.account_ref(uid.upper())


@pytest.mark.parametrize("text, span", [("30d", dt.timedelta(days=30)), ("12h", dt.timedelta(hours=12)),
                                        ("90m", dt.timedelta(minutes=90)), ("1m", dt.timedelta(minutes=1)),
                                        ("3650d", dt.timedelta(days=3650)), ("87600h", dt.timedelta(days=3650)),
                                        ("never", None)])
def test_durations_accepted(text, span):
    assert act.duration(text) == span


@pytest.mark.parametrize("text", ["", "0d", "0m", "00h", "-1d", "+1d", "1", "d", "1.5d", "1 d", "1D", "1w", "1s",
                                  "3651d", "87601h", "9999999d", "99999999999999999999d", "1d1h", "never ", "Never",
                                  "١d"])
def test_durations_refused(text):
    with pytest.raises(InvalidInput):
        act.duration(text)


@pytest.mark.parametrize("name", ["ci", "laptop of alice", "deploy:prod", "a@b", "x" * 100, "v1.2+3/4_5-6"])
def test_token_names_accepted(name):
    assert act.token_name(name) == name


@pytest.mark.parametrize("name", ["", " ci", "ci ", "x" * 101, "a\nb", "a\tb", "a\x1b[31m", "é", "a;b", "-a",
                                  "mine cct_AAAA", "ccs_x"])
def test_token_names_refused(name):
    with pytest.raises(InvalidInput):
        act.token_name(name)


def test_roles():
    for r in ("owner", "collaborator", "viewer"):
        assert act.role(r) == r
    for r in ("", "Owner", "admin", "owner "):
        with pytest.raises(InvalidInput):
            act.role(r)


@pytest.mark.parametrize("ref, ok", [("1b4e28ba-2fa1-11d2-883f-0016d3cca427", True), ("1b4e28ba", True),
                                     ("1b4e28ba-2f", True), ("1b4e28b", False), ("1B4E28BA", False),
                                     ("1b4e28ba%", False), ("1b4e28ba_", False), ("cct_abc", False),
                                     ("1b4e28ba-2fa1-11d2-883f-0016d3cca4270", False)])
def test_token_ids(ref, ok):
    if ok:
        assert act.token_ref(ref) == ref
    else:
        with pytest.raises(InvalidInput):
            act.token_ref(ref)


def test_an_error_about_a_bad_value_is_one_line_and_bounded():
    with pytest.raises(InvalidInput) as e:
        act.account_name("a\n" * 500)
    line = e.value.one_line()
    assert "\n" not in line and len(line) < 300


def test_secret_shapes():
    t, s = ha.new_token(), ha.new_session()
    assert ha.is_token(t) and ha.is_session(s) and not ha.is_token(s) and not ha.is_session(t)
    assert len({ha.new_token() for _ in range(1000)}) == 1000
    assert ha.hash_secret(t) != ha.hash_secret(t[:-1] + ("A" if t[-1] != "A" else "B"))
