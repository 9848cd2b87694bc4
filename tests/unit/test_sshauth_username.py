"""The one SSH login-name parser: exact shapes only, everything else denied."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings, strategies as st

from cocalc_ctl.ids import parse_ssh_user

U = "1b4e28ba-2fa1-41d2-883f-0016d3cca427"


@pytest.mark.parametrize("name,kind", [
    (f"project-{U}", "project"), (U, "project"), (U.replace("-", ""), "project"),
    (f"btrfs-{U}", "btrfs"),
])
def test_valid_names_map_to_their_kind_and_canonical_uuid(name, kind):
    u = parse_ssh_user(name)
    assert u is not None and u.kind == kind and u.id == U and u.name == name


def test_the_hub_login_is_one_fixed_name_and_project_host_is_gone():
    u = parse_ssh_user("cocalc-hub")
    assert u is not None and (u.kind, u.id, u.name) == ("hub", None, "cocalc-hub")
    for name in (f"project-host-{U}", "cocalc-hub ", "Cocalc-hub", f"cocalc-hub-{U}", "cocalc-hub\n", "hub"):
        assert parse_ssh_user(name) is None


@pytest.mark.parametrize("name", [
    "", " ", "root", "project-", "btrfs-", "project-host-", U.upper(), f"project-{U.upper()}",
    f"Project-{U}", f"project-{U}\n", f"project-{U} ", f" {U}", f"{U}x", f"x{U}", f"project-{U}/..",
    f"project-project-{U}", f"btrfs-{U.replace('-', '')}", f"project-host-{U.replace('-', '')}",
    f"project-{U.replace('-', '')}", U.replace("-", "")[:-1], U.replace("-", "") + "0", U[:-1],
    U.replace("-", "_"), f"btrfs-{U}\x00", f"project-{U}%00",
    # unicode look-alikes: Cyrillic a, fullwidth digit, Arabic-Indic digit, Greek omicron
    f"project-{U.replace('a', 'а')}", f"project-{U.replace('1', '１')}", f"project-{U.replace('0', '٠')}",
    f"prοject-{U}", f"btrfs\u2010{U}", f"project-{U}\u200b",
])
def test_hostile_names_are_denied(name):
    assert parse_ssh_user(name) is None


@pytest.mark.parametrize("value", [None, b"project-x", 123, [U]])
def test_non_strings_are_denied(value):
    assert parse_ssh_user(value) is None


@settings(max_examples=3000, deadline=None)
@given(st.text(max_size=80))
def test_random_text_parses_only_to_canonical_forms(name):
    u = parse_ssh_user(name)
    if u is not None and u.kind == "hub":
        assert name == "cocalc-hub" and u.id is None
    elif u is not None:
        canonical = {"project": {f"project-{u.id}", u.id, u.id.replace("-", "")},
                     "btrfs": {f"btrfs-{u.id}"}}[u.kind]
        assert name in canonical
        assert str(uuid.UUID(u.id)) == u.id


@settings(max_examples=2000, deadline=None)
@given(st.sampled_from(["project-", "btrfs-", ""]), st.uuids(),
       st.text(min_size=1, max_size=5))
def test_any_junk_around_a_valid_name_is_denied(prefix, uid, junk):
    name = f"{prefix}{uid}"
    assert parse_ssh_user(name) is not None
    assert parse_ssh_user(name + junk) is None
    assert parse_ssh_user(junk + name) is None or (junk + name) in {
        f"project-{uid}", f"btrfs-{uid}"}
