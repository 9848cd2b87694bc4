"""OpenSSH and sshpiperd: command-line builders, known_hosts and sshd_config text, key-line parsing.

No policy here: callers decide which keys are trusted; this module only knows the syntax. The
outbound-ssh contract of the whole project lives in `ssh_command`: every connection to a peer pins
its host key from `<data_dir>/ssh/known_hosts` (StrictHostKeyChecking=yes) and offers only this
host's host-to-host key (IdentitiesOnly=yes), never an agent or the user's ~/.ssh.
"""

from __future__ import annotations

import base64
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

# Key types we accept in authorized_keys / known_hosts material from outside.
KEY_TYPES = frozenset({
    "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com", "ssh-dss",
    "ssh-ed25519-cert-v01@openssh.com", "ssh-rsa-cert-v01@openssh.com",
    "ecdsa-sha2-nistp256-cert-v01@openssh.com",
})
_B64_RE = re.compile(r"[A-Za-z0-9+/]+={0,3}", re.ASCII)
_HOSTNAME_RE = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                          r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*", re.ASCII)
_SSH_USER_ARG_RE = re.compile(r"[a-z_][a-z0-9_-]{0,63}", re.ASCII)


@dataclass(frozen=True)
class SshPaths:
    """The files outbound ssh uses: the pinned known_hosts and this host's host-to-host key."""

    known_hosts: Path
    identity: Path


def known_hosts_path(data_dir: Path) -> Path:
    return Path(data_dir) / "ssh" / "known_hosts"


def host_to_host_key_path(secrets_dir: Path) -> Path:
    return Path(secrets_dir) / "host-to-host" / "id_ed25519"


def sshpiperd_host_key_path(secrets_dir: Path) -> Path:
    return Path(secrets_dir) / "sshpiperd" / "host_key"


def paths_for(cfg_or_paths) -> SshPaths:
    """Accept an SshPaths or anything with `data_dir` and `secrets_dir` (a Config)."""
    if isinstance(cfg_or_paths, SshPaths):
        return cfg_or_paths
    return SshPaths(known_hosts_path(cfg_or_paths.data_dir), host_to_host_key_path(cfg_or_paths.secrets_dir))


# -- host names and ports ----------------------------------------------------------------------

def valid_host(host: str) -> bool:
    if not isinstance(host, str) or not host or not host.isascii():
        return False
    if _HOSTNAME_RE.fullmatch(host) is not None:
        return True
    import ipaddress  # only for literal IPv6 (and odd IPv4) forms: keeps the auth hook's startup short

    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def parse_host_port(text: str, *, default_port: int = 22, min_port: int = 1) -> tuple[str, int]:
    """`host`, `host:port`, `[v6]:port` or `v6` -> (host, port); ValueError when malformed."""
    if not isinstance(text, str) or not text or len(text) > 300 or not text.isascii():
        raise ValueError(f"not a host:port: {text!r}")
    if text.startswith("["):
        m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::([0-9]{1,5}))?", text)
        if not m:
            raise ValueError(f"not a host:port: {text!r}")
        host, port = m.group(1), m.group(2)
        import ipaddress

        ipaddress.IPv6Address(host)
    elif text.count(":") > 1:
        host, port = text, None
        import ipaddress

        ipaddress.IPv6Address(host)
    else:
        host, sep, port = text.partition(":")
        port = port if sep else None
        if port is not None and not (port.isascii() and port.isdigit() and len(port) <= 5):
            raise ValueError(f"not a port in {text!r}")
    if not valid_host(host):
        raise ValueError(f"not a host name or address: {host!r}")
    n = int(port) if port is not None else default_port
    if not min_port <= n <= 65535:
        raise ValueError(f"port out of range in {text!r}")
    return host, n


def known_hosts_pattern(host: str, port: int) -> str:
    """OpenSSH's host field: bare `host` for port 22, `[host]:port` for any other port."""
    if not valid_host(host):
        raise ValueError(f"not a host name or address: {host!r}")
    return host if port == 22 else f"[{host}]:{port}"


def listen_address(host: str, port: int) -> str:
    """sshd's `ListenAddress host:port` (IPv6 in brackets)."""
    if not valid_host(host):
        raise ValueError(f"not a host name or address: {host!r}")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- public keys -------------------------------------------------------------------------------

@dataclass(frozen=True)
class PublicKey:
    type: str
    blob_b64: str
    comment: str = ""

    @property
    def line(self) -> str:
        return f"{self.type} {self.blob_b64}" + (f" {self.comment}" if self.comment else "")

    @property
    def bare(self) -> str:
        return f"{self.type} {self.blob_b64}"

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.blob_b64)


def fingerprint(blob_b64: str) -> str:
    """`SHA256:...` as ssh-keygen -l prints it."""
    import hashlib

    digest = hashlib.sha256(base64.b64decode(blob_b64)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def parse_public_key(line: str) -> PublicKey | None:
    """`type base64 [comment]` with no options; the blob must decode and name the same type."""
    if not isinstance(line, str) or "\x00" in line or "\r" in line or "\n" in line or len(line) > 16384:
        return None
    parts = line.strip().split(None, 2)
    if len(parts) < 2 or parts[0] not in KEY_TYPES or not _B64_RE.fullmatch(parts[1]):
        return None
    try:
        blob = base64.b64decode(parts[1], validate=True)
        (n,) = struct.unpack(">I", blob[:4])
        if blob[4:4 + n].decode("ascii") != parts[0]:
            return None
    except (ValueError, struct.error, UnicodeDecodeError):
        return None
    comment = parts[2].strip() if len(parts) > 2 else ""
    if not comment.isprintable():
        comment = "".join(ch for ch in comment if ch.isprintable())
    return PublicKey(parts[0], parts[1], comment)


def parse_public_keys(text: str | None) -> list[PublicKey]:
    """Every valid key of a newline-separated list (no options); junk lines are dropped."""
    out = []
    for raw in (text or "").splitlines():
        raw = raw.strip()
        if raw and not raw.startswith("#"):
            k = parse_public_key(raw)
            if k is not None:
                out.append(k)
    return out


def authorized_key_line_ok(line: str) -> bool:
    """Is this a usable authorized_keys line (optionally with leading options)? Conservative: the
    key type must be one we know and the blob must decode. Lines that fail are skipped, because one
    unparsable line makes sshpiperd's REST plugin drop every key after it."""
    if not line or "\x00" in line or "\r" in line or "\n" in line or len(line) > 16384:
        return False
    if parse_public_key(line) is not None:
        return True
    # options first: walk to the first unquoted space, then the rest must be a key
    in_quote = False
    i = 0
    while i < len(line):
        ch = line[i]
        if ch == "\\" and in_quote:
            i += 2
            continue
        if ch == '"':
            in_quote = not in_quote
        elif ch in " \t" and not in_quote:
            return parse_public_key(line[i + 1:]) is not None
        i += 1
    return False


# -- command lines -----------------------------------------------------------------------------

def outbound_options(paths: SshPaths) -> list[str]:
    return [
        "-o", f"UserKnownHostsFile={paths.known_hosts}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "UpdateHostKeys=no",
        "-o", "CheckHostIP=no",
        "-o", "HashKnownHosts=no",
        "-o", "IdentitiesOnly=yes",
        "-o", "IdentityAgent=none",
        "-o", f"IdentityFile={paths.identity}",
        "-o", "PasswordAuthentication=no",
        "-o", "KbdInteractiveAuthentication=no",
        "-o", "BatchMode=yes",
        "-o", "ForwardAgent=no",
        "-o", "ForwardX11=no",
        "-o", "ClearAllForwardings=yes",
        "-o", "ConnectTimeout=20",
        "-o", "ServerAliveInterval=15",
        "-o", "ServerAliveCountMax=4",
        "-F", "/dev/null",
    ]


def ssh_command(cfg_or_paths, user: str, host: str, port: int, remote_argv: Sequence[str] | None = None, *,
                extra_options: Sequence[str] = ()) -> list[str]:
    """`ssh` to a peer with pinned host keys and this host's host-to-host key only.

    `remote_argv` is joined with spaces into the remote command (sshd hands it to the forced command
    as SSH_ORIGINAL_COMMAND): every element must be a plain word, so nothing needs shell quoting.
    """
    paths = paths_for(cfg_or_paths)
    if not _SSH_USER_ARG_RE.fullmatch(user or ""):
        raise ValueError(f"not a login name: {user!r}")
    if not valid_host(host):
        raise ValueError(f"not a host name or address: {host!r}")
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"not a port: {port!r}")
    argv = ["ssh", *outbound_options(paths), *extra_options, "-p", str(port), "-l", user, "--", host]
    for word in remote_argv or ():
        if not re.fullmatch(r"[A-Za-z0-9_./:=@%+,-]+", word, re.ASCII):
            raise ValueError(f"remote argument needs quoting, refused: {word!r}")
        argv.append(word)
    return argv


def ssh_shell_string(cfg_or_paths) -> str:
    """The same options as one `-e` string for rsync (`rsync -e "<this>"`); paths must be plain."""
    paths = paths_for(cfg_or_paths)
    for p in (paths.known_hosts, paths.identity):
        if not re.fullmatch(r"[A-Za-z0-9_./@+-]+", str(p), re.ASCII):
            raise ValueError(f"path needs quoting, refused for rsync -e: {p}")
    return " ".join(["ssh", *outbound_options(paths)])


def sshpiperd_command(host_key: Path | str, rest_url: str | None, *, address: str = "0.0.0.0", port: int = 22,
                      sshpiperd: str = "sshpiperd", plugin: str = "sshpiperd-rest") -> list[str]:
    """sshpiperd with a fixed host key (never generated) and the REST auth plugin. `rest_url=None` leaves
    `--url` out: the plugin then reads REST_AUTH_URL from its environment (the token stays out of argv)."""
    return [sshpiperd, "-i", str(host_key), "--server-key-generate-mode", "disable",
            "--address", address, "--port", str(port), plugin] + ([] if rest_url is None else ["--url", rest_url])


def receiver_sshd_config(*, listen_host: str, listen_port: int, host_key: Path,
                         authorized_keys_command: str | None = None, authorized_keys_file: str | None = None,
                         allow_users: Sequence[str] = ("btrfs-*", "cocalc-hub"),
                         pid_file: str = "none") -> str:
    """A complete sshd_config for the move receiver: public keys from static per-login files
    (`authorized_keys_file`, e.g. `<dir>/%u`) or from an AuthorizedKeysCommand, every key forced to a
    command (the key lines carry `restrict,command=`), nothing else."""
    if (authorized_keys_command is None) == (authorized_keys_file is None):
        raise ValueError("give exactly one of authorized_keys_command and authorized_keys_file")
    if authorized_keys_file is not None:
        keys = ["# one root-owned file per login, written by `keys sync`: no process starts per login",
                f"AuthorizedKeysFile {authorized_keys_file}"]
    else:
        keys = ["AuthorizedKeysFile none", f"AuthorizedKeysCommand {authorized_keys_command}",
                "AuthorizedKeysCommandUser root"]
    lines = [
        "# cocalc-ctl move receiver (generated by `cocalc-ctl sshpiper config`)",
        f"ListenAddress {listen_address(listen_host, listen_port)}",
        f"HostKey {host_key}",
        f"PidFile {pid_file}",
        "AddressFamily any",
        "AuthenticationMethods publickey",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "HostbasedAuthentication no",
        "PermitEmptyPasswords no",
        "UsePAM no",
        "# receiver users are uid-0 aliases (btrfs receive needs root): only ever with a forced command",
        "PermitRootLogin forced-commands-only",
        *keys,
        f"AllowUsers {' '.join(allow_users)}",
        "DisableForwarding yes",
        "AllowTcpForwarding no",
        "AllowAgentForwarding no",
        "AllowStreamLocalForwarding no",
        "X11Forwarding no",
        "PermitTunnel no",
        "PermitTTY no",
        "PermitUserRC no",
        "PermitUserEnvironment no",
        "GatewayPorts no",
        "StrictModes yes",
        "MaxAuthTries 3",
        "MaxSessions 2",
        "LoginGraceTime 20",
        "ClientAliveInterval 30",
        "ClientAliveCountMax 4",
        "PrintMotd no",
        "PrintLastLog no",
        "LogLevel VERBOSE",
        "# no Subsystem lines: sftp (and so scp) is not offered",
    ]
    return "\n".join(lines) + "\n"
