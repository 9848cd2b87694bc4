"""safepath.write_atomic / staged_write: the one way root writes a whole file of its own."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from cocalc_ctl import safepath


def _mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_writes_and_replaces_with_the_mode_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "f"
    safepath.write_atomic(target, b"one\n", mode=0o600)
    assert target.read_bytes() == b"one\n" and _mode(target) == 0o600
    safepath.write_atomic(target, "two\n", mode=0o640)  # str is written as UTF-8
    assert target.read_bytes() == b"two\n" and _mode(target) == 0o640
    assert os.listdir(tmp_path) == ["f"]


def test_the_mode_is_final_from_the_first_byte_even_under_an_open_umask(tmp_path, monkeypatch):
    """The temporary is created with the final mode (a secret is never readable by others, not for a
    moment): every write to it sees 0600 (here with umask 000, where a later chmod would leave it 0666)."""
    seen = []
    real_fsync = os.fsync

    def spy_fsync(fd):
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            seen.append(stat.S_IMODE(st.st_mode))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy_fsync)
    old = os.umask(0)
    try:
        safepath.write_atomic(tmp_path / "secret", b"s3cret", mode=0o600)
    finally:
        os.umask(old)
    assert seen == [0o600]
    assert _mode(tmp_path / "secret") == 0o600


def test_the_temporary_is_created_exclusively_with_the_final_mode(tmp_path, monkeypatch):
    calls = []
    real_open = os.open

    def spy_open(path, flags, mode=0o777, *, dir_fd=None):
        if str(path).endswith(".tmp"):
            calls.append((flags, mode))
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", spy_open)
    safepath.write_atomic(tmp_path / "f", b"x", mode=0o600)
    assert len(calls) == 1
    flags, mode = calls[0]
    want = os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_WRONLY
    assert flags & want == want and mode == 0o600


def test_owner_is_set(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("chown needs root")
    safepath.write_atomic(tmp_path / "f", b"x", mode=0o644, owner=(1234, 5678))
    st = os.lstat(tmp_path / "f")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o644)


def test_a_failed_write_removes_the_temporary_and_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "f"
    target.write_bytes(b"old\n")

    def no_space(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        safepath.write_atomic(target, b"new\n", mode=0o644)
    monkeypatch.undo()
    assert target.read_bytes() == b"old\n"
    assert os.listdir(tmp_path) == ["f"]


def test_a_failed_rename_removes_the_temporary(tmp_path):
    (tmp_path / "d").mkdir()  # a directory in the target's place: rename fails
    with pytest.raises(OSError):
        safepath.write_atomic(tmp_path / "d", b"x", mode=0o644)
    assert os.listdir(tmp_path) == ["d"] and os.listdir(tmp_path / "d") == []


def test_a_symlinked_target_name_is_refused_not_followed_nor_replaced(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    link = tmp_path / "f"
    link.symlink_to(victim)
    with pytest.raises(safepath.UnsafePath, match="symlink"):
        safepath.write_atomic(link, b"evil\n", mode=0o644)
    assert victim.read_bytes() == b"precious\n" and os.path.islink(link)
    assert sorted(os.listdir(tmp_path)) == ["f", "victim"]
    # the same by a directory fd
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(safepath.UnsafePath):
            safepath.write_atomic("f", b"evil\n", mode=0o644, dir_fd=fd)
    finally:
        os.close(fd)
    assert victim.read_bytes() == b"precious\n"


def test_a_dangling_symlink_at_the_target_is_refused_too(tmp_path):
    (tmp_path / "f").symlink_to(tmp_path / "nowhere")
    with pytest.raises(safepath.UnsafePath):
        safepath.write_atomic(tmp_path / "f", b"x", mode=0o600)
    assert not os.path.lexists(tmp_path / "nowhere")


def test_dir_fd_takes_a_single_name(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        safepath.write_atomic("a", b"1", mode=0o644, dir_fd=fd)
        for bad in ("x/y", "..", ""):
            with pytest.raises(ValueError):
                safepath.write_atomic(bad, b"1", mode=0o644, dir_fd=fd)
    finally:
        os.close(fd)
    assert os.listdir(tmp_path) == ["a"] and (tmp_path / "a").read_bytes() == b"1"


def test_concurrent_writers_leave_one_whole_file(tmp_path):
    """Writers race on one name while a reader watches: every read is one writer's whole content."""
    target = tmp_path / "f"
    contents = [bytes([65 + i]) * (64 << 10) for i in range(4)]
    safepath.write_atomic(target, contents[0], mode=0o644)
    stop = threading.Event()
    bad: list[str] = []
    errors: list[BaseException] = []

    def writer(data):
        try:
            for _ in range(40):
                safepath.write_atomic(target, data, mode=0o644)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def reader():
        while not stop.is_set():
            got = target.read_bytes()
            if got not in contents:
                bad.append(f"{len(got)} bytes, starts {got[:1]!r}")

    threads = [threading.Thread(target=writer, args=(c,)) for c in contents]
    r = threading.Thread(target=reader)
    r.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    r.join()
    assert errors == [] and bad == []
    assert target.read_bytes() in contents and os.listdir(tmp_path) == ["f"]


def test_staged_write_takes_the_name_only_on_commit(tmp_path):
    target = tmp_path / "pw"
    with safepath.staged_write(target, b"secret\n", mode=0o600) as staged:
        assert not target.exists()
        (tmp,) = os.listdir(tmp_path)
        assert safepath.temp_target(tmp) == "pw" and _mode(tmp_path / tmp) == 0o600
        staged.commit()
    assert target.read_bytes() == b"secret\n" and os.listdir(tmp_path) == ["pw"]


def test_staged_write_without_commit_or_on_error_leaves_nothing(tmp_path):
    with safepath.staged_write(tmp_path / "pw", b"secret\n", mode=0o600):
        pass
    assert os.listdir(tmp_path) == []
    with pytest.raises(RuntimeError):
        with safepath.staged_write(tmp_path / "pw", b"secret\n", mode=0o600):
            raise RuntimeError("the database said no")
    assert os.listdir(tmp_path) == []


def test_temp_target_names_what_a_leftover_temporary_was_for():
    tmp = safepath.temp_name(".restore_in_progress.x")
    assert tmp.startswith(".") and tmp.endswith(".tmp")
    assert safepath.temp_target(tmp) == ".restore_in_progress.x"
    assert safepath.temp_target("f.tmp") is None and safepath.temp_target(".f.12.nothex!.tmp") is None
