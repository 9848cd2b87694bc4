"""Backup test support: hosts with a repository, a rich project tree, a strict tree digest, and a
real restic REST server (`rclone serve restic`) on loopback."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

from tests.support.ports import bind_failed, free_port, wait_listening

PASSWORD = "correct horse battery staple\n"
PID_A = "0a0a0a0a-1111-4222-8333-444444444444"
PID_B = "0b0b0b0b-1111-4222-8333-444444444444"
PID_C = "0c0c0c0c-1111-4222-8333-444444444444"


def password_file(base: Path, text: str = PASSWORD) -> Path:
    d = base / "secrets"
    d.mkdir(mode=0o700, exist_ok=True)
    f = d / "restic-password"
    f.write_text(text)
    os.chmod(f, 0o600)
    return f


def backup_host(make_host, workdir: Path, name: str = "a", *, size: str = "1G", repo: str | None = None,
                init_repo: bool = True, **config):
    """A host whose config names a repository (default: a local one under workdir) and password file."""
    pw = password_file(workdir)
    repo = repo or str(workdir / "repo")
    backup = {"repo": repo, "password_file": str(pw), **config.pop("backup", {})}
    h = make_host(name, size, backup=backup, **config)
    if init_repo:
        h.cli("backup", "init")
    return h


def jobs(host) -> list[dict]:
    conn = sqlite3.connect(str(host.data / "host.sqlite"), timeout=30)  # a busy writer may hold it a moment
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM backup_jobs ORDER BY id")]
    finally:
        conn.close()


def restic(host, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cfg = host.extra_config["backup"]
    env = {**os.environ, "RESTIC_REPOSITORY": cfg["repo"], "RESTIC_PASSWORD_FILE": cfg["password_file"]}
    return subprocess.run(["restic", *args], env=env, capture_output=True, text=True, errors="surrogateescape",
                          check=check)


def write_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.write_bytes(data)
    os.chmod(path, mode)


def make_rich_tree(root: Path, n_files: int = 2000) -> None:
    """`n_files` entries including hard links, symlinks, a sparse file, odd names, modes and xattrs."""
    root = Path(root)
    modes = [0o644, 0o600, 0o755, 0o640, 0o444, 0o700]
    made = 0
    for d in range(20):
        sub = root / f"dir{d:02d}" / "deeper"
        sub.mkdir(parents=True, exist_ok=True)
        for i in range(90):
            write_file(sub / f"f{i:03d}.txt", f"file {d}/{i}\n".encode() * (1 + i % 7), modes[(d + i) % len(modes)])
            made += 1
    odd = root / "odd names"
    odd.mkdir()
    names = [b"with space", b"new\nline", b"tab\there", b"latin1-\xe9\xff", b"-leading-dash", b"*glob?[x]",
             "ünïcødé-名前".encode(), b"quote'\"", b"back\\slash", b"trailing space "]
    for i, raw in enumerate(names):
        p = os.path.join(os.fsencode(odd), raw)
        with open(p, "wb") as fh:
            fh.write(raw * 3)
        os.chmod(p, modes[i % len(modes)])
        made += 1
    links = root / "links"
    links.mkdir()
    for i in range(20):
        a = links / f"h{i}-a"
        write_file(a, f"hard {i}\n".encode() * 50, 0o640)
        os.link(a, links / f"h{i}-b")
        if i % 4 == 0:
            os.link(a, root / "dir00" / f"h{i}-c")
        made += 2 + (i % 4 == 0)
    os.symlink("../dir01/deeper/f001.txt", links / "rel-symlink")
    os.symlink("/nonexistent/dangling", links / "dangling-symlink")
    os.symlink("../dir02", links / "dir-symlink")
    # restic < 0.17 stores a symlink target as a JSON string, so a non-UTF-8 *target* comes back
    # mangled (non-UTF-8 file names are fine): the tree uses a UTF-8 one (see the README, "Known limits" under backups)
    os.symlink("ünïcødé target", links / "odd-target")
    made += 4
    with open(root / "sparse.img", "wb") as fh:
        fh.seek(8 << 20)
        fh.write(b"middle")
        fh.seek(16 << 20)
        fh.write(b"end")
    made += 1
    x = root / "xattrs"
    x.mkdir()
    for i in range(5):
        f = x / f"x{i}"
        write_file(f, b"with xattrs\n")
        os.setxattr(f, b"user.cocalc.test", f"value {i}".encode())
        os.setxattr(f, b"user.binary", bytes(range(i, i + 8)))
        made += 1
    os.setxattr(x, b"user.on-dir", b"yes")
    (root / "empty-dir").mkdir(mode=0o750)
    os.chmod(root / "empty-dir", 0o750)
    os.chmod(root / "dir03", 0o700)
    filler = root / "filler"
    filler.mkdir()
    i = 0
    while made < n_files:
        write_file(filler / f"n{i:04d}", os.urandom(64) if i % 10 == 0 else b"x" * i, 0o644)
        made += 1
        i += 1


def tree_digest(root: Path, exclude: tuple[bytes, ...] = (b".snapshots",)) -> dict:
    """Everything a restore must reproduce: type, mode, owner, content, link target, xattrs, and
    which paths share an inode (hard-link structure, by first path of each inode)."""
    root_b = os.fsencode(root)
    out: dict[bytes, tuple] = {}
    first_path: dict[int, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root_b):
        rel_dir = os.path.relpath(dirpath, root_b)
        if rel_dir == b".":
            dirnames[:] = [d for d in dirnames if d not in exclude]
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root_b)
            st = os.lstat(p)
            try:
                xattrs = tuple(sorted((k, os.getxattr(p, k, follow_symlinks=False))
                                      for k in os.listxattr(p, follow_symlinks=False)))
            except OSError:
                xattrs = ()
            if os.path.islink(p):
                out[rel] = ("l", os.readlink(p))
            elif os.path.isdir(p):
                out[rel] = ("d", st.st_mode & 0o7777, st.st_uid, st.st_gid, xattrs)
            else:
                with open(p, "rb") as fh:
                    digest = hashlib.sha256(fh.read()).hexdigest()
                group = first_path.setdefault(st.st_ino, rel) if st.st_nlink > 1 else None
                out[rel] = ("f", st.st_mode & 0o7777, st.st_uid, st.st_gid, digest, xattrs, group)
    # hard-link groups are named by their smallest path so walk order does not matter
    groups: dict[bytes, list[bytes]] = {}
    for rel, v in out.items():
        if v[0] == "f" and v[6] is not None:
            groups.setdefault(v[6], []).append(rel)
    rename = {k: min(v) for k, v in groups.items()}
    return {rel: (v[:6] + (rename[v[6]],) if v[0] == "f" and v[6] is not None else v) for rel, v in out.items()}


@contextmanager
def rclone_rest_server(directory: Path):
    """`rclone serve restic` on 127.0.0.1; yields the `rest:` URL; always stopped."""
    directory.mkdir(parents=True, exist_ok=True)
    for attempt in range(5):
        port = free_port()
        log_path = directory.parent / f"rclone-{port}.log"
        log = open(log_path, "wb")
        p = subprocess.Popen(["rclone", "serve", "restic", "--addr", f"127.0.0.1:{port}", str(directory)],
                             stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_listening(p, port, timeout=60, what="rclone serve restic")
            break
        except RuntimeError:  # it exited: retry on another port if this one was taken meanwhile
            log.close()
            if attempt == 4 or not bind_failed(log_path.read_text(errors="replace")):
                raise
        except BaseException:
            _stop(p)
            log.close()
            raise
    try:
        yield f"rest:http://127.0.0.1:{port}/", p
    finally:
        _stop(p)
        log.close()


def _stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


class ResticControl:
    """A `restic` first on PATH that runs the real one, slowed down and/or held back, so a test can act
    while a backup or restore is certainly in progress instead of racing a fast engine.

    `upload_kib`/`download_kib` cap restic's repository traffic (its own --limit-upload/--limit-download,
    which every backend honours): a kill or a check then lands mid-run. With `gate=True` every
    `restic backup` waits, before it starts, until `release()`; `wait_held(n)` waits until n of them
    are waiting. The product runs the wrapper like the real engine (same arguments, exit status and
    output); pass `env` to the process that should use it."""

    def __init__(self, directory: Path, *, upload_kib: int | None = None, download_kib: int | None = None,
                 gate: bool = False):
        real = shutil.which("restic")
        if real is None:
            raise RuntimeError("restic not found")
        self.dir = Path(directory)
        (self.dir / "bin").mkdir(parents=True, exist_ok=True)
        self.gate_dir = self.dir / "gate"
        self.gate_dir.mkdir(exist_ok=True)
        limits = ""
        if upload_kib:
            limits += f" --limit-upload {int(upload_kib)}"
        if download_kib:
            limits += f" --limit-download {int(download_kib)}"
        hold = ""
        if gate:
            hold = f"""for a in "$@"; do
  if [ "$a" = backup ]; then
    : > '{self.gate_dir}/held.'$$
    while [ ! -e '{self.gate_dir}/open' ]; do sleep 0.05; done
    break
  fi
done
"""
        script = self.dir / "bin" / "restic"
        script.write_text(f"#!/bin/sh\n{hold}exec '{real}'{limits} \"$@\"\n")
        os.chmod(script, 0o755)
        self.env = {"PATH": f"{self.dir / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}"}

    def held(self) -> int:
        return len([n for n in os.listdir(self.gate_dir) if n.startswith("held.")])

    def wait_held(self, n: int = 1, timeout: float = 120) -> None:
        wait_for(lambda: self.held() >= n, timeout=timeout)

    def release(self) -> None:
        (self.gate_dir / "open").touch()


def has_file_data(directory: Path) -> bool:
    """Some file below `directory` has content. For polling a tree another process is writing:
    entries that vanish or are renamed meanwhile, or a directory not made yet, count as "not yet"."""
    for root, _, files in os.walk(directory):
        for name in files:
            try:
                if os.lstat(os.path.join(root, name)).st_size > 0:
                    return True
            except OSError:
                pass
    return False


def wait_for(predicate, timeout: float = 30, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = predicate()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError("condition not reached in time")
