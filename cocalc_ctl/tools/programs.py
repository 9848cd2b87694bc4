"""Version probes for the external programs a host needs, and the backup repository probe.

No policy here: which programs are required, and what a missing one means, is decided by
actions/ops/doctor.py.
"""

from __future__ import annotations

import os
import re
import shutil

# program -> arguments that print its version (some print to stderr: ssh -V, sshd -V)
VERSION_ARGS: dict[str, list[str]] = {
    "btrfs": ["--version"],
    "restic": ["version"],
    "rustic": ["--version"],
    "podman": ["--version"],
    "runc": ["--version"],
    "crun": ["--version"],
    "ssh": ["-V"],
    "sshd": ["-V"],
    "rsync": ["--version"],
    "lz4": ["--version"],
    "zstd": ["--version"],
    "flock": ["--version"],
}

# sshd lives in sbin, which is not on an unprivileged PATH
SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")

_VERSION_RE = re.compile(r"v?(\d+\.\d+(?:\.\d+)?(?:[a-z]\d+)?(?:[+~-][\w.+~]+)?)")


def locate(program: str, path: str | None = None, *, sbin: bool = False) -> str | None:
    found = shutil.which(program, path=path if path is not None else os.environ.get("PATH"))
    if found or not sbin:
        return found
    for d in SBIN_DIRS:
        candidate = os.path.join(d, program)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def version_argv(exe: str) -> list[str]:
    return [exe, *VERSION_ARGS[os.path.basename(exe)]]


def parse_version(output: str) -> str | None:
    """The first version-looking token of a program's version banner."""
    for line in output.splitlines():
        m = _VERSION_RE.search(line)
        if m:
            return m.group(1)
    return None


def repo_probe(engine: str, exe: str) -> list[str]:
    """A read-only command that succeeds only if the repository is reachable and the password opens it.
    Repository and password file are passed in the environment (see `repo_env`), never as arguments."""
    if engine == "rustic":
        return [exe, "cat", "config"]
    return [exe, "cat", "config", "--no-lock"]


def repo_env(engine: str, repo: str, password_file: str | None) -> dict[str, str]:
    prefix = "RUSTIC" if engine == "rustic" else "RESTIC"
    env = {f"{prefix}_REPOSITORY": repo}
    if password_file:
        env[f"{prefix}_PASSWORD_FILE"] = password_file
    return env
