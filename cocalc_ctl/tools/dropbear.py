"""dropbear (the project containers' sshd), ldd and patchelf: command-line builders and parsers.

No policy here: which binaries go into the bundle, where it is mounted and which options the sshd
gets come from `actions/project/project_ssh.py`.
"""

from __future__ import annotations

import re

_LDD_RE = re.compile(r"^\s*(\S+)\s+=>\s+(/\S+)\s+\(0x[0-9a-f]+\)\s*$", re.ASCII)
_LDD_INTERP_RE = re.compile(r"^\s*(/\S+)\s+\(0x[0-9a-f]+\)\s*$", re.ASCII)


def ldd(path: str) -> list[str]:
    return ["ldd", "--", path]


def parse_ldd(stdout: str) -> tuple[list[tuple[str, str]], str | None]:
    """([(soname, resolved path)], the program interpreter) from `ldd` output; ValueError on a
    library it could not find (`not found`)."""
    libs: list[tuple[str, str]] = []
    interp = None
    for line in stdout.splitlines():
        if "not found" in line:
            raise ValueError(f"missing library: {line.strip()}")
        m = _LDD_RE.match(line)
        if m:
            libs.append((m.group(1), m.group(2)))
            continue
        m = _LDD_INTERP_RE.match(line)
        if m:
            interp = m.group(1)
    return libs, interp


def patchelf(path: str, *, interpreter: str, rpath: str) -> list[str]:
    """Make an executable load its libraries from `rpath` with `interpreter`, whatever the image has.
    DT_RPATH (not RUNPATH) so a session's LD_LIBRARY_PATH cannot swap the bundle's libc underneath."""
    return ["patchelf", "--set-interpreter", interpreter, "--force-rpath", "--set-rpath", rpath, path]  # (0.14 knows no `--`; paths are absolute)


def keygen(path: str) -> list[str]:
    return ["dropbearkey", "-t", "ed25519", "-f", path]


def public_key(path: str) -> list[str]:
    return ["dropbearkey", "-y", "-f", path]


def parse_public_key(stdout: str) -> str | None:
    """The `ssh-ed25519 AAAA… comment` line of `dropbearkey -y` output (without the comment)."""
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith("ssh-"):
            return f"{parts[0]} {parts[1]}"
    return None


def server(binary: str, *, host_key: str, port: int, forced_command: str, pid_file: str,
           remote_forwarding: bool, recv_window: int = 2 << 20) -> list[str]:
    """dropbear in the foreground (-F) logging to stderr (-E), passing its environment (the
    container's, -e) to sessions, public-key logins only (-s), every session through
    `forced_command` (-c; the client's command arrives as SSH_ORIGINAL_COMMAND), -k unless remote
    forwarding is allowed. `recv_window` (-W): dropbear's default of 24 KiB caps a transfer at a
    fraction of what the link carries; 2 MiB is OpenSSH's window."""
    argv = [binary, "-F", "-E", "-e", "-s", "-c", forced_command, "-r", host_key, "-p", str(port), "-P", pid_file,
            "-W", str(recv_window)]
    if not remote_forwarding:
        argv.insert(5, "-k")
    return argv
