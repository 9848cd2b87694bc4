"""Helpers for the ops tests: parse systemd units and crontab lines, compare golden files."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

UPDATE_GOLDEN = os.environ.get("UPDATE_GOLDEN") == "1"
GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as {section: {key: [values...]}} (repeated keys keep every value)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            out.setdefault(section, {})
            continue
        assert section is not None, f"key outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not key=value: {line!r}"
        out[section].setdefault(key.strip(), []).append(value.strip())
    return out


def exec_argv(value: str) -> list[str]:
    """argv of an Exec*= value (drops the `-` prefix; units here quote like a POSIX shell)."""
    value = value.lstrip("-@:+!")
    return [a.replace("%%", "%") for a in shlex.split(value)]


def check_golden(name: str, actual: str) -> None:
    """Compare `actual` with tests/golden/<name>; UPDATE_GOLDEN=1 rewrites the file instead."""
    path = GOLDEN / name
    if UPDATE_GOLDEN:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual)
        return
    assert path.is_file(), f"golden file {path} is missing: run with UPDATE_GOLDEN=1"
    expected = path.read_text()
    assert actual == expected, f"{name} differs from the golden file (UPDATE_GOLDEN=1 regenerates it)"


def cli_wrapper(directory: Path) -> str:
    """An executable that runs this checkout's CLI with the test's Python (the --bin the tests' units run)."""
    import sys

    from tests.support.hosts import REPO

    path = Path(directory) / "cocalc-ctl"
    path.write_text(f'#!/bin/sh\nPYTHONPATH={shlex.quote(str(REPO))} exec {shlex.quote(sys.executable)} '
                    f'-m cocalc_ctl "$@"\n')
    path.chmod(0o755)
    return str(path)


def _keygen(path):
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test", "-f", str(path)], check=True)


def prepare_host(host, dsn, workdir):
    """Everything doctor wants on a `make_host` host: keys at the agreed paths, the sshpiper token, a
    migrated hub with this host registered, and a restic repository with its password file."""
    secrets = host.data / "secrets"
    _keygen(secrets / "host-to-host" / "id_ed25519")
    _keygen(secrets / "sshpiperd" / "host_key")
    (secrets / "sshpiper").mkdir(mode=0o700)
    token = secrets / "sshpiper" / "token"
    token.write_text("0123456789abcdef0123456789abcdef\n")
    token.chmod(0o600)
    pw = secrets / "backup-password"
    pw.write_text("correct horse battery staple\n")
    pw.chmod(0o600)
    repo = workdir / f"repo-{host.base.name}"
    subprocess.run(["restic", "init", "--repo", str(repo), "--password-file", str(pw)], check=True,
                   capture_output=True)
    host.write_config(hub_dsn=dsn, **{"backup": {"repo": str(repo), "password_file": str(pw)}})
    host.cli("hub", "migrate")
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO project_hosts (id, name, host_to_host_public_key, sshpiperd_public_key, trusted) "
                     "VALUES (%s, 'a', %s, %s, true)",
                     (host.host_id, (secrets / "host-to-host" / "id_ed25519.pub").read_text().strip(),
                      (secrets / "sshpiperd" / "host_key.pub").read_text().strip()))
    return host
