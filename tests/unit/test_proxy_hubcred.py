"""The host proxy's check of the hub credential against its secrets file: a `keys sync` that adds or
drops a key (an atomic replace of the file) counts from the very next request, with no lag."""

from __future__ import annotations

import os
import secrets
import uuid

import pytest

from cocalc_ctl.proxy import hubcred
from cocalc_ctl.proxy.http1 import parse_request_head
from cocalc_ctl.proxy.routing import HttpError

HOST = str(uuid.uuid4())
PROJECT = str(uuid.uuid4())


def _write(path, keys) -> None:
    """What `keys sync` does: a new 0600 file renamed over the old one."""
    tmp = path.with_name(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(hubcred.format_secrets(keys))
    os.replace(tmp, path)


def _head(key):
    target = f"/{PROJECT}/x".encode()
    cred = hubcred.credential(key[1], key[0].encode(), HOST.encode(), b"GET", b"h", target, project=PROJECT.encode())
    return parse_request_head([b"GET " + target + b" HTTP/1.1", b"Host: h", b"x-cocalc-hub-auth: " + cred])


def _accepts(verifier, key) -> bool:
    try:
        verifier.verify(_head(key), PROJECT.encode())
        return True
    except HttpError as exc:
        assert exc.status == 401
        return False


@pytest.fixture
def secrets_file(tmp_path):
    d = tmp_path / "secrets" / "proxy"
    d.mkdir(parents=True, mode=0o700)
    os.chmod(d.parent, 0o700)
    os.chmod(d, 0o700)
    return d / "hub_secrets"


def test_a_key_sync_adds_or_drops_counts_from_the_very_next_request(secrets_file):
    old, new = (secrets.token_hex(8), secrets.token_bytes(32)), (secrets.token_hex(8), secrets.token_bytes(32))
    _write(secrets_file, [old])
    v = hubcred.HubVerifier(HOST, secrets_file)
    assert _accepts(v, old) and not _accepts(v, new)
    _write(secrets_file, [old, new])  # the sync after --rotate, well within a second of the last check
    assert _accepts(v, new) and _accepts(v, old)
    _write(secrets_file, [new])  # the sync after --finish
    assert not _accepts(v, old) and _accepts(v, new)
