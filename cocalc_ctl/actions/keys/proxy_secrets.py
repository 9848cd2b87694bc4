"""Per-host secrets of the hub credential (proxy/hubcred.py): made by the hub, pulled by each host.

The hub admin's side: `keys trust HOST` makes the host's first secret if it has none; `keys
proxy-secret HOST` shows its key ids (never a secret) and makes one if missing; `--rotate` adds a
second key (the hub keeps signing with the old one, hosts accept both once they synced); `--finish`
drops every key but the newest (the hub signs with it from the next request; a host drops the old one
at its next sync, which `keys watch` does at once through the keys channel).

The host's side: `keys sync` reads its own rows (a host login sees no others: row-level security)
and writes them to `<secrets_dir>/proxy/hub_secrets` (0600 in a 0700 dir, replaced atomically),
which the host proxy re-reads when it changes.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cocalc_ctl import ids, proc, safepath
from cocalc_ctl.actions.keys import keys as keys_mod
from cocalc_ctl.config import Config
from cocalc_ctl.errors import NotFound, PreconditionFailed


@dataclass
class ProxySecretResult:
    host_id: str
    action: str  # "created" | "existing" | "rotated" | "finished" | "nothing to finish"
    key_ids: list[str] = field(default_factory=list)  # oldest first: the first one is what the hub signs with
    signing_key_id: str | None = None
    hint: str | None = None


def _new_key() -> tuple[str, bytes]:
    return secrets.token_hex(8), secrets.token_bytes(32)


def _key_ids(conn, hid: str) -> list[str]:
    return [r[0] for r in conn.execute("SELECT key_id FROM host_proxy_secrets WHERE host_id=%s "
                                       "ORDER BY created_at, key_id", (hid,)).fetchall()]


def _have_table(conn) -> bool:
    return conn.execute("SELECT to_regclass('host_proxy_secrets')").fetchone()[0] is not None


def ensure_in(conn, hid: str, *, required: bool = True) -> bool:
    """Make the host's first secret if it has none (inside the caller's transaction); True if made."""
    if not _have_table(conn):
        if not required:
            return False
        raise PreconditionFailed("the hub schema has no host_proxy_secrets table", hint="run `cocalc-ctl hub migrate`")
    conn.execute("SELECT pg_advisory_xact_lock(hashtext('cocalc_ctl_proxy_secret:' || %s))", (hid,))
    if _key_ids(conn, hid):
        return False
    kid, secret = _new_key()
    conn.execute("INSERT INTO host_proxy_secrets(host_id, key_id, secret) VALUES (%s, %s, %s)", (hid, kid, secret))
    return True


def manage(cfg: Config, host: str, *, rotate: bool = False, finish: bool = False) -> ProxySecretResult:
    from cocalc_ctl.errors import InvalidInput
    from cocalc_ctl.state import hub_db

    if rotate and finish:
        raise InvalidInput("--rotate and --finish exclude each other", hint="rotate first, finish later")
    hid = ids.host_id(host)
    what = "add a second key" if rotate else "drop all but the newest key" if finish else "make a key if none"
    if proc.plan_only(f"# hub host_proxy_secrets for host {hid}: {what} (NOTIFY {hub_db.KEYS_CHANNEL})"):
        return ProxySecretResult(hid, "planned")
    with hub_db.connect(cfg["hub_dsn"], autocommit=False) as conn:
        with conn.transaction():
            if conn.execute("SELECT 1 FROM project_hosts WHERE id=%s", (hid,)).fetchone() is None:
                raise NotFound(f"host {hid} is not registered in the hub",
                               hint="run `cocalc-ctl keys register` on that host first")
            made = ensure_in(conn, hid)
            kids = _key_ids(conn, hid)
            action, hint = ("created" if made else "existing"), None
            if rotate and not made:
                if len(kids) > 1:
                    raise PreconditionFailed(f"a rotation of host {hid}'s proxy secret is already in progress",
                                             hint=f"finish it first: cocalc-ctl keys proxy-secret {hid} --finish")
                kid, secret = _new_key()
                conn.execute("INSERT INTO host_proxy_secrets(host_id, key_id, secret, created_at) "
                             "VALUES (%s, %s, %s, clock_timestamp())", (hid, kid, secret))
                action = "rotated"
                hint = ("the hub signs with the old key until `--finish`; finish once the host ran `keys sync` "
                        "(`keys watch` does at once)")
            elif finish and not made:
                if len(kids) < 2:
                    action, hint = "nothing to finish", "no rotation is in progress"
                else:
                    conn.execute("DELETE FROM host_proxy_secrets WHERE host_id=%s AND key_id <> %s",
                                 (hid, kids[-1]))
                    action = "finished"
                    hint = "the hub signs with the new key now; the host drops the old one at its next sync"
            kids = _key_ids(conn, hid)
    return ProxySecretResult(hid, action, kids, kids[0] if kids else None, hint)


# -- host side ------------------------------------------------------------------------------------

def fetch_own(conn, hid: str) -> list[tuple[str, bytes]]:
    """This host's (key_id, secret) rows, oldest first; none when the hub is not migrated this far."""
    from cocalc_ctl.proxy.hubcred import KEY_ID_RE, SECRET_BYTES
    from cocalc_ctl.state.hub_db import HOST_SECRETS_SQL

    if not _have_table(conn):
        return []
    out = []
    for kid, secret in conn.execute(HOST_SECRETS_SQL, (hid,)).fetchall():
        secret = bytes(secret)
        if KEY_ID_RE.fullmatch(kid.encode()) and len(secret) == SECRET_BYTES:
            out.append((kid, secret))
    return out


def write_own(cfg: Config, rows: list[tuple[str, bytes]]) -> tuple[str, bool]:
    """Replace `<secrets_dir>/proxy/hub_secrets` with `rows` when they differ; (path, changed)."""
    from cocalc_ctl.proxy import hubcred

    path = hubcred.secrets_path(cfg.secrets_dir)
    data = hubcred.format_secrets(rows)
    if os.path.lexists(cfg.secrets_dir):
        keys_mod.check_secret_dir(cfg.secrets_dir)
    keys_mod.ensure_dir(path.parent)
    if os.path.lexists(path) and keys_mod.read_secret(path) == data:
        return str(path), False
    if proc.plan_only(f"# write {len(rows)} hub secret(s) to {path} (0600)"):
        return str(path), True
    safepath.write_atomic(path, data, mode=0o600)
    return str(path), True


def key_ids_on_host(cfg: Config) -> list[str]:
    from cocalc_ctl.proxy import hubcred

    path = hubcred.secrets_path(cfg.secrets_dir)
    if not os.path.lexists(path):
        return []
    return sorted(k.decode() for k in hubcred.parse_secrets(keys_mod.read_secret(Path(path))))
