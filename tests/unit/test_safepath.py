"""safepath: root's file operations under a project tree never follow a symlink on the way."""

from __future__ import annotations

import os

import pytest

from cocalc_ctl import safepath


@pytest.fixture
def trees(tmp_path):
    root, outside = tmp_path / "project", tmp_path / "outside"
    (root / "real" / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "sub").mkdir()
    (outside / "sub" / "f").write_text("outside\n")
    (root / "link").symlink_to(outside)
    return root, outside


def test_write_replaces_atomically_and_leaves_no_temporary(trees):
    root, _ = trees
    safepath.write_file(root, ("real", "sub", "f"), b"one\n", mode=0o600)
    safepath.write_file(root, ("real", "sub", "f"), b"two\n", mode=0o600)
    assert (root / "real" / "sub" / "f").read_bytes() == b"two\n"
    assert os.stat(root / "real" / "sub" / "f").st_mode & 0o777 == 0o600
    assert os.listdir(root / "real" / "sub") == ["f"]


@pytest.mark.parametrize("op", ["write", "unlink", "rmtree", "create", "read"])
def test_a_symlinked_component_is_refused_not_followed(trees, op):
    root, outside = trees
    parts = ("link", "sub", "f")
    if op == "write":
        with pytest.raises(safepath.UnsafePath):
            safepath.write_file(root, parts, b"x")
    elif op == "unlink":
        with pytest.raises(safepath.UnsafePath):
            safepath.unlink(root, parts)
    elif op == "rmtree":
        with pytest.raises(safepath.UnsafePath):
            safepath.rmtree(root, ("link", "sub"))
    elif op == "create":
        with pytest.raises(safepath.UnsafePath):
            with safepath.open_dir(root, ("link", "new"), create=True):
                pass
    else:
        assert safepath.read_file(root, parts, limit=100) is None
    assert (outside / "sub" / "f").read_text() == "outside\n" and sorted(os.listdir(outside)) == ["sub"]
    assert not safepath.lexists(root, parts)


def test_a_final_symlink_is_replaced_or_removed_itself(trees):
    root, outside = trees
    (root / "real" / "sub" / "f").symlink_to(outside / "sub" / "f")
    safepath.write_file(root, ("real", "sub", "f"), b"mine\n")
    assert (outside / "sub" / "f").read_text() == "outside\n"
    (root / "real" / "sub" / "g").symlink_to(outside / "sub")
    assert safepath.rmtree(root, ("real", "sub", "g")) is True
    assert (outside / "sub" / "f").exists()


@pytest.mark.parametrize("bad", [("..", "x"), ("a/b",), ("",), (".",)])
def test_components_must_be_single_names(trees, bad):
    with pytest.raises(ValueError):
        safepath.write_file(trees[0], bad, b"")
