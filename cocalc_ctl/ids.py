"""Validation of every identifier that comes from outside: project/host ids and snapshot names.

Nothing from a user, the hub, sshpiperd or a peer reaches a path, a command line or SQL
without passing one of these functions first.
"""

from __future__ import annotations

import re

from cocalc_ctl.errors import InvalidInput

# Canonical lowercase UUID, ASCII only (re.ASCII keeps unicode digits out of \d-like classes).
_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.ASCII)
_HEX32_RE = re.compile(r"[0-9a-f]{32}", re.ASCII)
_SNAPSHOT_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+@-]{0,199}", re.ASCII)

RESERVED_NAMES = frozenset({"_incoming", "_streams", ".restore-staging", ".snapshots", ".", ".."})
PROJECT_PREFIX = "project-"


def is_uuid(value: object) -> bool:
    return isinstance(value, str) and _UUID_RE.fullmatch(value) is not None


def project_id(value: str, *, what: str = "project id") -> str:
    """Return a canonical project uuid; accepts `<uuid>` or `project-<uuid>`, nothing else."""
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"invalid {what}: empty", hint="give a lowercase UUID like 1b4e28ba-2fa1-11d2-883f-0016d3cca427")
    candidate = value[len(PROJECT_PREFIX):] if value.startswith(PROJECT_PREFIX) else value
    if not is_uuid(candidate):
        raise InvalidInput(f"invalid {what}: {quoted(value)}",
                           hint="give a lowercase UUID like 1b4e28ba-2fa1-11d2-883f-0016d3cca427")
    return candidate


def host_id(value: str) -> str:
    if not is_uuid(value):
        raise InvalidInput(f"invalid host id: {quoted(value)}", hint="host ids are lowercase UUIDs")
    return value


def uuid_from_hex32(value: str) -> str | None:
    if _HEX32_RE.fullmatch(value) is None:
        return None
    return f"{value[0:8]}-{value[8:12]}-{value[12:16]}-{value[16:20]}-{value[20:32]}"


def snapshot_name(value: str) -> str:
    """A snapshot name is a single safe path component: no `/`, no leading `.`, not reserved."""
    if not isinstance(value, str) or not value:
        raise InvalidInput("invalid snapshot name: empty", hint="use letters, digits and . _ - : + @")
    if value in RESERVED_NAMES or value.startswith(".") or "/" in value or "\x00" in value:
        raise InvalidInput(f"invalid snapshot name: {quoted(value)}",
                           hint="names must not start with '.', contain '/', or be reserved")
    if _SNAPSHOT_NAME_RE.fullmatch(value) is None or value.endswith(".lock"):
        raise InvalidInput(f"invalid snapshot name: {quoted(value)}",
                           hint="use up to 200 letters, digits and . _ - : + @, starting with a letter or digit")
    return value


_SECRET_RE = re.compile(r"cc[ts]_[A-Za-z0-9_-]{8,}", re.ASCII)  # authnames.TOKEN_PREFIX / SESSION_PREFIX


def quoted(value: object) -> str:
    """Render untrusted input safely inside a one-line message (an access token or session value pasted in
    the wrong place is not repeated)."""
    text = _SECRET_RE.sub(lambda m: m.group(0)[:4] + "…(redacted)", repr(value))
    return text if len(text) <= 80 else text[:77] + "...'"


# -- SSH login names (sshpiper/keys area) --------------------------------------------------------
# The one parser for the usernames sshpiperd and OpenSSH hand us. Strict: ASCII only, exact shapes,
# no trailing junk; anything else is None (= denied). Kept import-light: the AuthorizedKeysCommand
# fast path uses it.

SSH_USER_MAX = 64
HUB_LOGIN = "cocalc-hub"  # the hub's move worker on a host's receiver sshd (hub keys only, `move host-step`)
_SSH_USER_RE = re.compile(
    r"(?:(?P<btrfs>btrfs-)|(?P<project>project-))?"
    r"(?P<uuid>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
    r"|(?P<hex>[0-9a-f]{32})", re.ASCII)


class SshUser:
    """A parsed login name: `kind` is 'project', 'hub' (`cocalc-hub`, id None) or 'btrfs' (move receiver)."""

    __slots__ = ("kind", "id", "name")

    def __init__(self, kind: str, id: str, name: str):
        self.kind, self.id, self.name = kind, id, name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SshUser) and (self.kind, self.id, self.name) == (other.kind, other.id, other.name)

    def __repr__(self) -> str:
        return f"SshUser({self.kind!r}, {self.id!r})"


def parse_ssh_user(name: object) -> SshUser | None:
    """`project-<uuid>`, `<uuid>`, `<32 hex>` -> project; `cocalc-hub` -> hub;
    `btrfs-<uuid>` -> move receiver. Everything else (including non-str, and the retired
    `project-host-<uuid>`) -> None."""
    if not isinstance(name, str) or not name or len(name) > SSH_USER_MAX or not name.isascii():
        return None
    if name == HUB_LOGIN:
        return SshUser("hub", None, name)
    m = _SSH_USER_RE.fullmatch(name)
    if m is None:
        return None
    if m.group("hex") is not None:
        return SshUser("project", uuid_from_hex32(m.group("hex")), name)
    kind = "btrfs" if m.group("btrfs") else "project"
    return SshUser(kind, m.group("uuid"), name)


# -- internal URLs (placement area) --------------------------------------------------------------
# The address a hub proxy forwards to (`project_hosts.internal_url`): plain `http://HOST:PORT`, the
# shape the hub-mode proxy routes to. No path, query, userinfo or other scheme: a value the proxy
# could not use is refused here rather than turning into 502s later.

_INTERNAL_URL_RE = re.compile(r"http://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})/?", re.ASCII)
_HOST_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)


def internal_url(value: object) -> str:
    """Return the canonical `http://host:port` (host lowercased, no trailing `/`), or raise InvalidInput."""
    import ipaddress

    hint = "use http://HOST:PORT, e.g. http://10.0.0.5:8080, with no path, user or query"
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput("invalid internal URL: empty", hint=hint)
    text = value.strip()
    m = _INTERNAL_URL_RE.fullmatch(text) if len(text) <= 300 else None
    if m is None:
        raise InvalidInput(f"invalid internal URL {quoted(value)}", hint=hint)
    host, port = m.group(1).lower(), int(m.group(2))
    if not 0 < port < 65536:
        raise InvalidInput(f"invalid internal URL {quoted(value)}: port must be 1-65535", hint=hint)
    if host.startswith("["):
        try:
            host = f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
        except ValueError:
            raise InvalidInput(f"invalid internal URL {quoted(value)}: bad IPv6 address", hint=hint) from None
    else:
        labels = host.split(".")
        if len(host) > 253 or not all(_HOST_LABEL_RE.fullmatch(lb) for lb in labels):
            raise InvalidInput(f"invalid internal URL {quoted(value)}: bad host name", hint=hint)
    return f"http://{host}:{port}"
