"""Distributing public keys through the hub: register, trust/untrust, sync, watch, known_hosts.

Every sync also rewrites the receiver sshd's static authorized_keys files (`sshauth.write_receiver_keys`).

The hub's `project_hosts` table is the registry. A trigger (hub migration "keys: notify") sends
`NOTIFY cocalc_ctl_keys` whenever a host's keys, address, status or trust change, so `keys watch`
sees a change within a round trip; `keys sync` is the same full refresh for timers. The NOTIFY
payload names what changed (a host id, `hub:<id>` for a hub key, anything else: everything), and
`keys watch` re-reads only that — its own row and the named hosts' rows, so a change costs the hub
O(hosts) rows across the fleet, not O(hosts²) — after a small random delay (`keys.sync_jitter_ms`,
which also gathers a burst into one sync); a change of its own row, an unknown payload, every
(re)connect and every `keys.resync_every` seconds do the full sync. Only trusted
hosts are distributed, and a host the hub does not trust receives no peers at all. `keys sync` also
pins the hub principal's public keys (hub table `hub_keys`, see `hub keys ensure`): exactly the set
the hub publishes (none for an untrusted host); they verify move tickets and log in as `cocalc-hub`.
"""

from __future__ import annotations

import random
from contextlib import closing
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cocalc_ctl import ids, output, proc, safepath
from cocalc_ctl.actions.keys import keys as keys_mod
from cocalc_ctl.config import Config
from cocalc_ctl.errors import InvalidInput, NotFound, OperationFailed, PreconditionFailed
from cocalc_ctl.tools import ssh

CHANNEL = "cocalc_ctl_keys"


@dataclass
class RegisterResult:
    host_id: str
    name: str
    ssh_server: str | None
    trusted: bool
    host_to_host_fingerprints: list[str]
    sshpiperd_fingerprints: list[str]
    internal_url: str | None = None  # what the hub holds after the register


@dataclass
class TrustResult:
    host_id: str
    trusted: bool
    changed: bool


@dataclass
class SyncResult:
    host_id: str
    self_trusted: bool
    peers: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    known_hosts: str | None = None
    hub_keys: list[str] = field(default_factory=list)      # fingerprints of the pinned hub keys
    hub_added: list[str] = field(default_factory=list)
    hub_removed: list[str] = field(default_factory=list)
    receiver_keys: str | None = None  # the dir of the receiver's static authorized_keys files
    scope: str = "full"  # full: every peer re-read; incremental: only `synced` (keys watch)
    synced: list[str] = field(default_factory=list)  # incremental: the host ids / hub:<id> re-read
    proxy_key_ids: list[str] = field(default_factory=list)  # this host's hub credential keys (ids only)
    proxy_keys_changed: bool = False


@dataclass
class KnownHostsResult:
    path: str | None
    entries: int
    text: str


@dataclass
class PeerInfo:
    host_id: str
    name: str | None
    ssh_server: str | None
    host_to_host_fingerprints: list[str]
    sshpiperd_fingerprints: list[str]


def _hub(cfg: Config, autocommit: bool = True):
    from cocalc_ctl.state import hub_db

    return hub_db.connect(cfg["hub_dsn"], autocommit=autocommit)


def _clean_keys(text: str | None) -> str | None:
    lines = [k.line for k in ssh.parse_public_keys(text)]
    return "\n".join(lines) or None


def _fps(text: str | None) -> list[str]:
    return [k.fingerprint for k in ssh.parse_public_keys(text)]


# -- hub writes -------------------------------------------------------------------------------

def register(cfg: Config, *, internal_url: str | None = None, clear_internal_url: bool = False) -> RegisterResult:
    """Upsert this host (id, name, ssh_server, status, last_seen, public keys) into the hub.
    The trusted flag is never touched here: trust is the hub admin's decision.

    `internal_url` (else config `proxy.internal_url`) is where hub proxies reach this host; when
    neither is given the hub's value is left as it is, `clear_internal_url` sets it NULL."""
    if internal_url is not None and clear_internal_url:
        raise InvalidInput("--internal-url and --clear-internal-url exclude each other", hint="give one of them")
    url = ids.internal_url(internal_url) if internal_url is not None else cfg["proxy.internal_url"]
    hid = keys_mod.require_host_id(cfg)
    set_url = clear_internal_url or url is not None
    h2h = "\n".join(keys_mod.public_lines(cfg, "host"))
    piper = "\n".join(keys_mod.public_lines(cfg, "sshpiperd"))
    if not h2h or not piper:
        raise PreconditionFailed("this host has no keys yet", hint="run `cocalc-ctl keys ensure` first")
    ssh_server = cfg["ssh_server"]
    if ssh_server:
        try:
            ssh.parse_host_port(ssh_server)
        except ValueError as exc:
            raise PreconditionFailed(f"config ssh_server: {exc}", hint="use host:port, e.g. 10.0.0.5:22") from None
    else:
        output.warn("ssh_server is not configured: peers will not be able to reach this host")
    name = cfg.host_name
    what = ("" if not set_url else "; clear internal_url" if clear_internal_url else f"; internal_url {url}")
    if proc.plan_only(f"# upsert host {hid} into hub project_hosts{what} and NOTIFY {CHANNEL}"):
        return RegisterResult(hid, name, ssh_server, False, _fps(h2h), _fps(piper), None if clear_internal_url else url)
    with _hub(cfg, autocommit=False) as conn:
        with conn.transaction():
            # internal_url only in the SET list when it changes hands: an unchanged value sends no
            # route NOTIFY (the trigger compares), and an omitted one keeps what the hub has
            row = conn.execute(
                """INSERT INTO project_hosts(id, name, ssh_server, status, last_seen,
                                             host_to_host_public_key, sshpiperd_public_key, internal_url)
                   VALUES (%(id)s, %(name)s, %(ssh)s, 'active', now(), %(h2h)s, %(piper)s, %(url)s)
                   ON CONFLICT (id) DO UPDATE SET name=EXCLUDED.name, ssh_server=EXCLUDED.ssh_server,
                       status='active', last_seen=now(),
                       host_to_host_public_key=EXCLUDED.host_to_host_public_key,
                       sshpiperd_public_key=EXCLUDED.sshpiperd_public_key,
                       internal_url=CASE WHEN %(set_url)s THEN EXCLUDED.internal_url
                                         ELSE project_hosts.internal_url END
                   RETURNING trusted, internal_url""",
                {"id": hid, "name": name, "ssh": ssh_server, "h2h": h2h, "piper": piper, "url": url,
                 "set_url": set_url}).fetchone()
    return RegisterResult(hid, name, ssh_server, bool(row[0]), _fps(h2h), _fps(piper), row[1])


def set_trust(cfg: Config, host: str, trusted: bool) -> TrustResult:
    hid = ids.host_id(host)
    if proc.plan_only(f"# UPDATE hub project_hosts SET trusted={str(trusted).lower()} WHERE id={hid}"):
        return TrustResult(hid, trusted, True)
    with _hub(cfg, autocommit=False) as conn:
        with conn.transaction():
            row = conn.execute("SELECT trusted FROM project_hosts WHERE id=%s FOR UPDATE", (hid,)).fetchone()
            if row is None:
                raise NotFound(f"host {hid} is not registered in the hub",
                               hint="run `cocalc-ctl keys register` on that host first")
            if bool(row[0]) != trusted:
                conn.execute("UPDATE project_hosts SET trusted=%s WHERE id=%s", (trusted, hid))
            if trusted:  # a trusted host gets its hub credential secret (hub proxies sign for it)
                from cocalc_ctl.actions.keys import proxy_secrets

                proxy_secrets.ensure_in(conn, hid, required=False)
    return TrustResult(hid, trusted, bool(row[0]) != trusted)


def broadcast(cfg: Config) -> None:
    """Ask every watching host to resync now."""
    if proc.plan_only(f"# NOTIFY {CHANNEL}"):
        return
    with _hub(cfg) as conn:
        conn.execute("SELECT pg_notify(%s, 'all')", (CHANNEL,))


# -- sync -------------------------------------------------------------------------------------

PEER_COLUMNS = "id::text, name, ssh_server, host_to_host_public_key, sshpiperd_public_key"
PEER_WHERE = "trusted AND coalesce(status, 'active') NOT IN ('deleted', 'off')"


def _self_trusted(conn, hid: str) -> bool:
    row = conn.execute("SELECT trusted, status FROM project_hosts WHERE id=%s", (hid,)).fetchone()
    return bool(row and row[0] and row[1] != "deleted")


def _clean_peers(rows) -> tuple[list, list[str]]:
    """Hub rows (PEER_COLUMNS) → the PeerRows worth caching, and the ids skipped (bad id, no key)."""
    from cocalc_ctl.state.peers import PeerRow

    peers, skipped = [], []
    for pid, name, server, h2h, piper in rows:
        if not ids.is_uuid(pid):
            skipped.append(str(pid))
            continue
        if server:
            try:
                ssh.parse_host_port(server)
            except ValueError:
                output.warn(f"peer {pid}: ignoring invalid ssh_server {server!r}")
                server = None
        h2h, piper = _clean_keys(h2h), _clean_keys(piper)
        if not h2h:
            skipped.append(pid)
            continue
        clean_name = "".join(ch for ch in (name or "") if ch.isprintable())[:200] or None
        peers.append(PeerRow(pid, clean_name, server, h2h, piper, True, False))
    return peers, skipped


def _fetch_peers(conn, hid: str) -> tuple[bool, list, list[str]]:
    if not _self_trusted(conn, hid):
        return False, [], []
    rows = conn.execute(f"SELECT {PEER_COLUMNS} FROM project_hosts WHERE {PEER_WHERE} AND id <> %s ORDER BY id",
                        (hid,)).fetchall()
    peers, skipped = _clean_peers(rows)
    return True, peers, skipped


def _fetch_hub_keys(conn, self_trusted: bool) -> list:
    from cocalc_ctl.state.hub_keys import HubKey

    if not self_trusted:
        return []
    if conn.execute("SELECT to_regclass('hub_keys')").fetchone()[0] is None:
        return []  # a hub not yet migrated this far publishes no hub key
    out = []
    for hid, text in conn.execute("SELECT hub_id::text, public_keys FROM hub_keys ORDER BY hub_id").fetchall():
        for k in ssh.parse_public_keys(text):
            if k.line.startswith("ssh-ed25519 "):  # tickets are Ed25519 signatures
                out.append(HubKey(hid, k.line))
    return out


def sync(cfg: Config, *, conn=None) -> SyncResult:
    from cocalc_ctl.state import host_db, hub_keys as hub_keys_db, peers as peers_db

    hid = keys_mod.require_host_id(cfg)
    if proc.plan_only(f"# copy trusted peers' public keys from the hub into {host_db.db_path(cfg.data_dir)}"):
        return SyncResult(hid, False)
    from cocalc_ctl.actions.keys import proxy_secrets

    if conn is None:
        with _hub(cfg) as hub:
            self_trusted, rows, skipped = _fetch_peers(hub, hid)
            hub_rows = _fetch_hub_keys(hub, self_trusted)
            proxy_rows = proxy_secrets.fetch_own(hub, hid)
    else:
        self_trusted, rows, skipped = _fetch_peers(conn, hid)
        hub_rows = _fetch_hub_keys(conn, self_trusted)
        proxy_rows = proxy_secrets.fetch_own(conn, hid)
    with closing(host_db.connect(cfg.data_dir)) as db:
        added, changed, removed = peers_db.replace_peers(db, rows, host_db.now_iso())
        peers_db.set_self_trusted(db, hid, self_trusted)
        hub_added, hub_removed = hub_keys_db.replace_keys(db, hub_rows, host_db.now_iso())
    res = SyncResult(hid, self_trusted, [p.host_id for p in rows], added, changed, removed, skipped,
                     hub_keys=_fps("\n".join(k.line for k in hub_rows)), hub_added=_fps("\n".join(hub_added)),
                     hub_removed=_fps("\n".join(hub_removed)))
    res.proxy_key_ids = [k for k, _ in proxy_rows]
    _, res.proxy_keys_changed = proxy_secrets.write_own(cfg, proxy_rows)
    res.known_hosts = write_known_hosts(cfg).path
    from cocalc_ctl.actions.keys import sshauth

    res.receiver_keys = sshauth.write_receiver_keys(cfg).dir
    return res


def sync_changes(cfg: Config, conn, payloads: set[str]) -> SyncResult:
    """The sync one batch of NOTIFY payloads calls for: only the named hosts (one query for this host's
    own row and theirs) and, for `hub:<id>`, the hub keys; a full sync when this host's own row
    changed, this host is not trusted, or a payload names nothing known (`all`, anything else)."""
    from cocalc_ctl.state import host_db, hub_keys as hub_keys_db, peers as peers_db

    hid = keys_mod.require_host_id(cfg)
    hosts = sorted(p for p in payloads if ids.is_uuid(p))
    hubs = sorted(p for p in payloads if p.startswith("hub:") and ids.is_uuid(p[4:]))
    if hid in hosts or len(hosts) + len(hubs) != len(payloads) or not payloads:
        return sync(cfg, conn=conn)
    rows = conn.execute(f"SELECT {PEER_COLUMNS}, ({PEER_WHERE}) AS wanted, trusted, status FROM project_hosts "
                        "WHERE id = ANY(%s::uuid[])", ([hid, *hosts],)).fetchall()
    me = [r for r in rows if r[0] == hid]
    if not (me and me[0][6] and me[0][7] != "deleted"):
        return sync(cfg, conn=conn)  # not trusted (any more): the full sync drops every peer
    peers, skipped = _clean_peers([r[:5] for r in rows if r[0] != hid and r[5]])
    hub_rows = _fetch_hub_keys(conn, True) if hubs else None
    with closing(host_db.connect(cfg.data_dir)) as db:
        added, changed, removed = peers_db.set_peers(db, hosts, peers, host_db.now_iso())
        peers_db.set_self_trusted(db, hid, True)
        hub_added, hub_removed = (hub_keys_db.replace_keys(db, hub_rows, host_db.now_iso())
                                  if hub_rows is not None else ([], []))
        all_peers = [p.host_id for p in peers_db.list_peers(db)]
        pinned = hub_keys_db.list_keys(db)
    res = SyncResult(hid, True, all_peers, added, changed, removed, skipped,
                     hub_keys=_fps("\n".join(k.line for k in pinned)), hub_added=_fps("\n".join(hub_added)),
                     hub_removed=_fps("\n".join(hub_removed)), scope="incremental", synced=[*hosts, *hubs])
    res.known_hosts = write_known_hosts(cfg).path
    from cocalc_ctl.actions.keys import sshauth

    res.receiver_keys = sshauth.write_receiver_keys(cfg).dir
    return res


def watch(cfg: Config, *, max_seconds: float | None = None, resync_every: float = 300.0,
          on_sync: Callable[[SyncResult], None] | None = None, jitter: float = 0.0) -> int:
    """LISTEN for key changes and sync what each names (after a random delay of up to `jitter`
    seconds, gathering a burst into one sync); full sync after every (re)connect and every
    `resync_every` seconds; reconnect with backoff. Idle, it only waits on its socket: a dead hub
    connection shows there (and through TCP keepalives). Returns the number of syncs done (when
    `max_seconds` ends it)."""
    import psycopg

    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    backoff = 1.0
    syncs = 0

    def left() -> float:
        return float("inf") if deadline is None else deadline - time.monotonic()

    while left() > 0:
        try:
            from cocalc_ctl.state import hub_db

            # a real session of its own (never behind transaction pooling): LISTEN belongs to it
            with hub_db.connect(cfg["hub_dsn"], listen=True) as conn:
                conn.execute(f"LISTEN {CHANNEL}")
                # what arrives during the probe is covered by the full sync right after it
                if not hub_db.probe_listen(conn, cfg["hub_dsn"], CHANNEL):
                    output.warn(f"keys watch: a NOTIFY on {CHANNEL} does not reach this LISTEN session (a "
                                "transaction-pooling proxy in front of PostgreSQL?); key changes arrive only with "
                                f"the full sync every {resync_every:g} s")
                result = sync(cfg, conn=conn)  # after LISTEN: nothing between the two is missed
                syncs += 1
                if on_sync:
                    on_sync(result)
                backoff = 1.0
                last_full = time.monotonic()
                while left() > 0:
                    wait = min(left(), max(0.1, resync_every - (time.monotonic() - last_full)), 5.0)
                    # one generator at a time: notifies() holds the connection lock while it runs
                    got = list(conn.notifies(timeout=wait, stop_after=1))
                    if got:  # wait the jitter, gathering the rest of a burst: one change set, one sync
                        got += conn.notifies(timeout=max(0.02, random.uniform(0.0, jitter)))
                    if time.monotonic() - last_full >= resync_every:
                        result = sync(cfg, conn=conn)
                        last_full = time.monotonic()
                    elif payloads := {n.payload for n in got
                                      if n.channel == CHANNEL and not n.payload.startswith(hub_db.PROBE_PREFIX)}:
                        result = sync_changes(cfg, conn, payloads)
                        if result.scope == "full":
                            last_full = time.monotonic()
                    else:
                        continue
                    syncs += 1
                    if on_sync:
                        on_sync(result)
        except (psycopg.OperationalError, OperationFailed, psycopg.InterfaceError) as exc:
            msg = " ".join(str(exc).split())[:200]
            output.warn(f"keys watch: hub connection lost ({msg}); retrying in {backoff:.0f}s")
            time.sleep(min(backoff, max(0.0, left())) + random.uniform(0, 0.2))
            backoff = min(backoff * 2, 30.0)
    return syncs


# -- known_hosts ------------------------------------------------------------------------------

def known_hosts_text(cfg: Config) -> tuple[str, int]:
    from cocalc_ctl.state import host_db, peers as peers_db

    lines = ["# pinned sshpiperd host keys of trusted peers (written by cocalc-ctl keys known-hosts)"]
    n = 0
    if host_db.db_path(cfg.data_dir).exists():
        with closing(host_db.connect(cfg.data_dir)) as db:
            rows = peers_db.list_peers(db)
        wanted = []
        for p in rows:
            if not p.trusted or not p.ssh_server:
                continue
            try:
                host, port = ssh.parse_host_port(p.ssh_server)
            except ValueError:
                continue
            wanted.append((ssh.known_hosts_pattern(host, port), p))
        # One address, one peer: a host that registers another host's ssh_server must not get its own
        # key accepted for that address (and so receive the moves the hub ticketed to the other host).
        owners: dict[str, set[str]] = {}
        for pattern, p in wanted:
            owners.setdefault(pattern.lower(), set()).add(p.host_id)
        for pattern, p in wanted:
            if len(owners[pattern.lower()]) > 1:
                output.warn(f"peer {p.host_id}: ssh_server {p.ssh_server} is claimed by "
                            f"{len(owners[pattern.lower()])} trusted hosts; pinning none of them there")
                continue
            for k in ssh.parse_public_keys(p.sshpiperd_public_key):
                lines.append(f"{pattern} {k.bare}")
                n += 1
    return "\n".join(lines) + "\n", n


def write_known_hosts(cfg: Config, out: str | None = None) -> KnownHostsResult:
    text, n = known_hosts_text(cfg)
    if out == "-":
        return KnownHostsResult(None, n, text)
    path = Path(out) if out else ssh.known_hosts_path(cfg.data_dir)
    if proc.plan_only(f"# write {n} pinned host key(s) to {path}"):
        return KnownHostsResult(str(path), n, text)
    path.parent.mkdir(parents=True, exist_ok=True)
    safepath.write_atomic(path, text, mode=0o644)  # a concurrent ssh sees the old or the new file, never half
    return KnownHostsResult(str(path), n, text)


def list_peers(cfg: Config) -> list[PeerInfo]:
    from cocalc_ctl.state import host_db, peers as peers_db

    if not host_db.db_path(cfg.data_dir).exists():
        return []
    with closing(host_db.connect(cfg.data_dir)) as db:
        rows = peers_db.list_peers(db)
    return [PeerInfo(p.host_id, p.name, p.ssh_server, _fps(p.host_to_host_public_key), _fps(p.sshpiperd_public_key))
            for p in rows]
