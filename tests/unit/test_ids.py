import pytest

from cocalc_ctl import ids
from cocalc_ctl.errors import InvalidInput

GOOD = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"


@pytest.mark.parametrize("value", [
    "../etc", "project-x", "/abs", "", GOOD + "0", GOOD.upper(), " " + GOOD, GOOD + "\n",
    "project-" + GOOD + "/..", GOOD.replace("-", ""), "1b4e28ba_2fa1_11d2_883f_0016d3cca427",
    "1b4e28ba-2fa1-11d2-883f-0016d3cca42\u0661",  # arabic-indic digit one
    "project-project-" + GOOD, "a/b", ".hidden",
])
def test_invalid_project_ids_are_refused(value):
    with pytest.raises(InvalidInput) as exc:
        ids.project_id(value)
    assert exc.value.exit_code == 2
    assert "\n" not in exc.value.one_line()


def test_project_id_accepts_uuid_and_prefixed_form():
    assert ids.project_id(GOOD) == GOOD
    assert ids.project_id("project-" + GOOD) == GOOD


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "../x", ".snapshots", "_incoming", "_streams",
                                  "-rf", "x" * 201, "a b", "a\nb", "snap.lock", "é"])
def test_invalid_snapshot_names_are_refused(name):
    with pytest.raises(InvalidInput):
        ids.snapshot_name(name)


@pytest.mark.parametrize("name", ["2026-11-27T10:43:45Z", "before-upgrade", "v1.2", "a_b", "x@y+z"])
def test_valid_snapshot_names(name):
    assert ids.snapshot_name(name) == name


def test_uuid_from_hex32():
    assert ids.uuid_from_hex32(GOOD.replace("-", "")) == GOOD
    assert ids.uuid_from_hex32(GOOD.replace("-", "").upper()) is None
    assert ids.uuid_from_hex32("abc") is None
