"""Configuration: one YAML file plus `COCALC_CTL_<KEY>` environment overrides, validated by a schema.

The file comes from `--config`, `$COCALC_CTL_CONFIG`, or `/etc/cocalc-ctl/config.yaml` (a missing
default file is fine: defaults apply). Nested YAML sections map to dotted keys (`backup.repo`), and
the env var of a dotted key joins its parts with `_` (`COCALC_CTL_BACKUP_REPO`). Every value remembers
where it came from, so `config show` can say so.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from cocalc_ctl.errors import ConfigError

DEFAULT_CONFIG_PATH = "/etc/cocalc-ctl/config.yaml"
ENV_CONFIG = "COCALC_CTL_CONFIG"
ENV_PREFIX = "COCALC_CTL_"
_RESERVED_ENV = {ENV_CONFIG, "COCALC_CTL_NO_VENV"}


def _parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise ValueError(f"not a size: {text!r} (use e.g. 500M, 2G)")
    mult = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}[m.group(2).lower()]
    return int(float(m.group(1)) * mult)


def parse_size(text: str) -> int:
    """Parse `500M`, `2G`, `1.5GiB`, `4096` into bytes (binary units)."""
    try:
        return _parse_size(text)
    except ValueError as exc:
        from cocalc_ctl.errors import InvalidInput

        raise InvalidInput(str(exc)) from None


def _as_str(v: Any) -> str:
    if not isinstance(v, (str, int, float)) or isinstance(v, bool):
        raise ValueError("expected a string")
    return str(v)


def _as_path(v: Any) -> str:
    s = _as_str(v)
    if not s.startswith("/"):
        raise ValueError(f"expected an absolute path, got {s!r}")
    if "\x00" in s or "\n" in s:
        raise ValueError("path contains a NUL or newline")
    return os.path.normpath(s)


def _as_opt_path(v: Any) -> str | None:
    return None if v in (None, "") else _as_path(v)


def _as_int(v: Any) -> int:
    if isinstance(v, bool):
        raise ValueError("expected an integer")
    try:
        return int(str(v).strip())
    except ValueError:
        raise ValueError(f"expected an integer, got {v!r}") from None


def _as_nonneg_int(v: Any) -> int:
    n = _as_int(v)
    if n < 0:
        raise ValueError(f"expected an integer >= 0, got {n}")
    return n


def _as_pos_int(v: Any) -> int:
    n = _as_int(v)
    if n < 1:
        raise ValueError(f"expected an integer >= 1, got {n}")
    return n


def _as_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {v!r}")


def _as_opt_uuid(v: Any) -> str | None:
    if v in (None, ""):
        return None
    from cocalc_ctl.ids import is_uuid

    s = _as_str(v).strip()
    if not is_uuid(s):
        raise ValueError(f"expected a lowercase UUID, got {s!r}")
    return s


def _as_opt_str(v: Any) -> str | None:
    return None if v in (None, "") else _as_str(v)


def _as_opt_internal_url(v: Any) -> str | None:
    if v in (None, ""):
        return None
    from cocalc_ctl.errors import InvalidInput
    from cocalc_ctl.ids import internal_url

    try:
        return internal_url(_as_str(v))
    except InvalidInput as exc:
        raise ValueError(exc.one_line()) from None


def _as_opt_domain(v: Any) -> str | None:
    """proxy.project_domain: a DNS name of two or more labels, lowercase, no port, no trailing dot."""
    if v in (None, ""):
        return None
    s = _as_str(v).strip().lower()
    label = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
    if len(s) > 200 or not re.fullmatch(rf"{label}(?:\.{label})+", s, re.ASCII):
        raise ValueError(f"expected a domain name like example.org, got {s!r}")
    return s


def _as_path_list(v: Any) -> tuple[str, ...]:
    """Absolute paths as a YAML list or one comma-separated string; empty = none."""
    if v in (None, ""):
        return ()
    items = v if isinstance(v, (list, tuple)) else [p for p in _as_str(v).split(",")]
    return tuple(_as_path(str(p).strip()) for p in items if str(p).strip())


def _as_word_list(v: Any) -> tuple[str, ...]:
    """Words (e.g. registry host[:port] names) as a YAML list or one comma-separated string."""
    if v in (None, ""):
        return ()
    items = v if isinstance(v, (list, tuple)) else _as_str(v).split(",")
    out = []
    for item in items:
        word = _as_str(item).strip().lower()
        if word:
            if not re.fullmatch(r"[a-z0-9.:\[\]-]{1,255}", word):
                raise ValueError(f"not a host[:port] name: {word!r}")
            out.append(word)
    return tuple(out)


def _as_size(v: Any) -> int:
    return _parse_size(str(v))


def _as_trusted_proxies(v: Any) -> tuple[str, ...]:
    """proxy.trust_forwarded: a list (or comma-separated string) of IP addresses and networks."""
    import ipaddress

    if v is None or v is False or v == "":
        return ()
    if v is True:
        raise ValueError("expected a list of addresses or networks (e.g. [10.0.0.5, 10.1.0.0/16]), not true")
    items = v if isinstance(v, (list, tuple)) else _as_str(v).split(",")
    out = []
    for item in items:
        text = _as_str(item).strip()
        try:
            out.append(str(ipaddress.ip_network(text, strict=False)))
        except ValueError:
            raise ValueError(f"not an IP address or network: {text!r}") from None
    return tuple(out)


MAX_PROXY_WORKERS = 256


def _as_proxy_workers(v: Any) -> str | int:
    """proxy.workers and `proxy serve --workers`: `auto` (one per usable core) or 1..MAX_PROXY_WORKERS."""
    s = _as_str(v).strip().lower()
    if s == "auto":
        return "auto"
    if not re.fullmatch(r"[0-9]{1,4}", s) or not 1 <= int(s) <= MAX_PROXY_WORKERS:
        raise ValueError(f"expected auto or a whole number from 1 to {MAX_PROXY_WORKERS}, got {v!r}")
    return int(s)
def _as_opt_http_url(v: Any) -> str | None:
    """proxy.auth_url: http(s)://HOST[:PORT][/PATH] (a decision point the hub proxy asks)."""
    if v in (None, ""):
        return None
    from cocalc_ctl.proxy.access import parse_auth_url

    text = _as_str(v).strip()
    parse_auth_url(text)  # ValueError names the problem
    return text


def _as_header_names(v: Any) -> tuple[str, ...]:
    """HTTP field names as a YAML list or one comma-separated string, lowercased."""
    if v in (None, ""):
        return ()
    items = v if isinstance(v, (list, tuple)) else _as_str(v).split(",")
    out = []
    for item in items:
        name = _as_str(item).strip().lower()
        if name:
            if not re.fullmatch(r"[a-z0-9!#$%&'*+.^_`|~-]{1,64}", name) or "_" in name:
                raise ValueError(f"not an HTTP header name: {name!r}")
            if name in ("host", "content-length", "transfer-encoding", "connection", "upgrade", "cookie",
                        "authorization") or name.startswith("x-forwarded-"):
                raise ValueError(f"{name!r} cannot be copied from the decision point")
            out.append(name)
    return tuple(out)


def _as_choice(*choices: str) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        s = _as_str(v)
        if s not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {s!r}")
        return s

    return check


@dataclass(frozen=True)
class Key:
    name: str
    convert: Callable[[Any], Any]
    default: Any
    help: str
    secret: bool = False


def _k(name, convert, default, help, secret=False) -> Key:
    return Key(name, convert, default, help, secret)


SCHEMA: dict[str, Key] = {k.name: k for k in [
    _k("host_id", _as_opt_uuid, None, "this host's UUID (if unset, the one `host init` stored in data_dir)"),
    _k("host_name", _as_opt_str, None, "human name of this host (default: the system hostname)"),
    _k("btrfs_root", _as_path, "/mnt/cocalc", "mount point of the btrfs pool holding project subvolumes"),
    _k("data_dir", _as_path, "/var/lib/cocalc-ctl", "host state: sqlite, persist stores, rootfs cache, locks"),
    _k("secrets_dir", _as_opt_path, None, "private keys and tokens, mode 0700 (default: <data_dir>/secrets)"),
    _k("hub_dsn", _as_opt_str, None, "PostgreSQL connection string of the hub (libpq DSN or URL); on a host, "
       "its own least-privilege login printed by `hub host-role`", True),
    _k("ssh_server", _as_opt_str, None, "host:port where peers reach this host's sshpiperd"),
    _k("command_timeout", _as_pos_int, 3600, "default timeout in seconds for external commands"),
    _k("project.quota", _as_opt_str, None, "default qgroup limit for new projects (e.g. 10G); unset = none"),
    _k("snapshot.keep_frequent", _as_nonneg_int, 4, "snapshot auto: keep the newest per 15 minutes, this many"),
    _k("snapshot.keep_hourly", _as_nonneg_int, 0, "snapshot auto: keep the newest per hour, this many"),
    _k("snapshot.keep_daily", _as_nonneg_int, 7, "snapshot auto: keep the newest per day, this many"),
    _k("snapshot.keep_weekly", _as_nonneg_int, 4, "snapshot auto: keep the newest per ISO week, this many"),
    _k("snapshot.keep_monthly", _as_nonneg_int, 6, "snapshot auto: keep the newest per month, this many"),
    _k("backup.engine", _as_choice("auto", "rustic", "restic"), "auto", "backup engine (auto prefers rustic)"),
    _k("backup.repo", _as_opt_str, None, "repository: local path, rest:http://..., s3:..."),
    _k("backup.password_file", _as_opt_path, None, "file (0600) holding the repository password"),
    _k("backup.max_concurrent", _as_pos_int, 2, "backups running at once on this host"),
    _k("backup.stale_after", _as_pos_int, 600, "seconds without heartbeat before a running job is stale"),
    # rootfs: image selection, cache, overlay roots, project containers (podman)
    _k("rootfs.default_image", _as_str, "ubuntu:25.10", "image for projects with none or a legacy label"),
    _k("rootfs.dir_source", _as_choice("copy", "bind"), "copy",
       "dir:/path images: copy the tree into the cache, or bind-use the directory in place"),
    _k("rootfs.keep_podman_copy", _as_bool, False, "keep podman's copy of a pulled image (as `rootfs pull --keep`)"),
    _k("rootfs.local_roots", _as_path_list, (),
       "directories under which dir:, oci-archive: and docker-archive: image sources may lie "
       "(comma-separated; empty = local sources refused)"),
    _k("rootfs.registries", _as_word_list, (),
       "registries image references may name besides docker.io (host[:port], comma-separated; "
       "localhost and loopback addresses only when listed)"),
    _k("rootfs.gc_max_size", _as_opt_str, None, "rootfs gc: size budget of the cache (e.g. 20G); unset = drop all unused"),
    _k("podman.runtime", _as_opt_str, "runc", "OCI runtime for project containers (runc, crun, ...); empty = podman's"),
    _k("podman.ulimits", _as_opt_str, "nofile=4096:4096,nproc=4096:4096",
       "ulimits of project containers, NAME=SOFT:HARD comma-separated, at or below the host's hard limits"),
    _k("podman.memory", _as_opt_str, "4G", "memory limit of a project container (e.g. 4G); empty = none"),
    _k("podman.pids_limit", _as_nonneg_int, 2048, "process limit of a project container; 0 = none"),
    _k("podman.swap", _as_opt_str, "0", "default swap of a project container on top of its memory (e.g. 1G); 0 = none"),
    _k("podman.cpu_shares", _as_nonneg_int, 0, "default CPU shares of a project container (1024 = normal); 0 = podman's"),
    _k("podman.tmp_size", _as_opt_str, None, "default size of the tmpfs at a project container's /tmp (e.g. 1G); unset = no tmpfs"),
    _k("podman.root", _as_opt_path, None, "podman --root (image storage); unset = podman's default"),
    _k("podman.runroot", _as_opt_path, None, "podman --runroot; unset = podman's default"),
    _k("podman.tmpdir", _as_opt_path, None, "podman --tmpdir (libpod state); unset = podman's default"),
    _k("podman.storage_driver", _as_opt_str, None, "podman --storage-driver; unset = podman's default"),
    _k("podman.storage_opts", _as_opt_str, None, "podman --storage-opt values, comma-separated"),
    _k("podman.tls_verify", _as_bool, True, "verify registry TLS certificates on pull"),
    _k("podman.cert_dir", _as_opt_path, None, "podman pull --cert-dir (registry CA certificates)"),
    _k("podman.network", _as_opt_str, None, "podman run --network; unset = podman's default bridge"),
    _k("podman.home", _as_path, "/home/user", "where the project subvolume is mounted inside its container"),
    _k("podman.command", _as_opt_str, None,
       "command of a project container (words split like a shell, never run by one); unset = the image's"),
    _k("podman.http_port", _as_pos_int, 8080, "port the project's HTTP server listens on inside the container"),
    _k("podman.ssh_port", _as_pos_int, 22, "port the project's sshd listens on inside the container"),
    _k("podman.init", _as_bool, True,
       "run an init (catatonit) as PID 1 of project containers: reaps zombies, forwards signals"),
    _k("podman.stop_timeout", _as_nonneg_int, 10, "seconds `project stop` waits before killing the container"),
    _k("podman.exec_timeout", _as_pos_int, 30,
       "seconds a `podman exec` into a project container may take (podman reads the project's /etc/passwd)"),
    _k("podman.run_timeout", _as_pos_int, 300,
       "seconds `podman run` of a project container may take (it reads the project's /etc/passwd)"),
    # isolation: user namespaces, capabilities, pool hardening, port guard (project containers)
    _k("isolation.enabled", _as_bool, True,
       "run project containers in their own user namespace with a reduced capability set and guarded ports"),
    _k("isolation.uid_base", _as_pos_int, 1 << 20,
       "first host uid/gid of the per-project ranges (65536 ids each, base + n*65536); keep clear of /etc/subuid"),
    _k("isolation.capabilities", _as_str,
       "CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL, SETGID, SETUID, NET_BIND_SERVICE, SYS_CHROOT, AUDIT_WRITE",
       "capabilities project containers keep (all others are dropped), comma-separated"),
    _k("isolation.port_users", _as_str, "root",
       "users (names or uids, comma-separated) whose sockets may connect to project ports: the proxies and sshpiperd"),
    # project ssh: the sshd `project start` runs in each project container (actions/project/project_ssh.py)
    _k("ssh.enabled", _as_bool, True, "start the project's own sshd (a bundled dropbear) in every project container"),
    _k("ssh.remote_forwarding", _as_bool, False, "allow `ssh -R` (remote port forwarding) in project sessions"),
    _k("ssh.agent_forwarding", _as_bool, True, "allow `ssh -A` (agent forwarding) in project sessions"),
    # ops: timers, doctor, metrics
    _k("ops.bin", _as_opt_path, None, "cocalc-ctl executable the generated units and cron lines run (default: found on PATH)"),
    _k("ops.unit_dir", _as_path, "/etc/systemd/system", "where `timers install` writes systemd units"),
    _k("ops.receiver_sshd_config", _as_opt_path, None,
       "sshd_config of the move receiver sshd (default: <data_dir>/ssh/receiver_sshd_config)"),
    _k("ops.free_warn_percent", _as_nonneg_int, 15, "doctor: warn when the pool or data_dir has less free space (%)"),
    _k("ops.free_fail_percent", _as_nonneg_int, 5, "doctor: fail when the pool or data_dir has less free space (%)"),
    _k("metrics.textfile_dir", _as_path, "/var/lib/prometheus/node-exporter",
       "node_exporter textfile-collector directory `metrics write` writes cocalc_ctl.prom into"),
    # keys / sshpiper area
    _k("sshpiper.rest_listen", _as_str, "127.0.0.1:8089", "host:port of `sshpiper serve` (sshpiperd's REST plugin)"),
    _k("sshpiper.upstream_user", _as_str, "user", "login name sshpiperd uses on a project container's sshd"),
    _k("sshpiper.receiver_listen", _as_str, "127.0.0.1:2222", "host:port of the move receiver's sshd"),
    _k("sshpiper.sshpiperd_listen", _as_str, "0.0.0.0:22", "host:port sshpiperd listens on"),
    _k("sshpiper.cocalc_ctl", _as_path, "/usr/local/bin/cocalc-ctl",
       "cocalc-ctl as sshd runs it (AuthorizedKeysCommand, forced command); root-owned path"),
    _k("sshpiper.receiver_auth", _as_choice("file", "command"), "file",
       "how the receiver sshd finds its keys: static files written by `keys sync` (file) or AuthorizedKeysCommand"),
    _k("sshpiper.receiver_keys_dir", _as_opt_path, None,
       "root-owned dir of the receiver's per-login authorized_keys files (default: <data_dir>/ssh/receiver_keys)"),
    _k("sshpiper.rest_client_user", _as_str, "root",
       "the only local user (name or uid) whose connections `sshpiper serve` answers: sshpiperd's user"),
    _k("sshpiper.sshpiperd_env_file", _as_opt_path, None,
       "sshpiperd's EnvironmentFile with REST_AUTH_URL (default: <secrets_dir>/sshpiper/sshpiperd.env)"),
    _k("keys.resync_every", _as_pos_int, 300, "keys watch: full sync at least this often (seconds)"),
    _k("keys.sync_jitter_ms", _as_nonneg_int, 200,
       "keys watch: random delay (0..N ms) before syncing a change, so a fleet does not hit the hub at once"),
    # move: host-to-host moves and the hub's move worker
    _k("move.mode", _as_choice("pipe", "staged", "backup"), "pipe",
       "default move mode: pipe (stream), staged (files + rsync) or backup (backup + restore)"),
    _k("move.compress", _as_choice("none", "lz4", "zstd"), "none", "default compression of move streams"),
    _k("move.transport", _as_choice("ssh", "local"), "ssh", "how the move worker reaches hosts (local: by config files)"),
    _k("move.host_configs", _as_opt_path, None, "local transport: directory of <host-uuid>.yaml host configs"),
    _k("move.lease_seconds", _as_pos_int, 60, "move worker: lease length, renewed while a step runs"),
    _k("move.max_attempts", _as_pos_int, 3, "move worker: claims of one move before it ends failing"),
    _k("move.receiver_user", _as_opt_str, None, "ssh user of a destination's receiver (default btrfs-<source-uuid>)"),
    _k("move.host_user", _as_opt_str, None, "ssh transport: user the worker logs in as (default cocalc-hub)"),
    _k("move.bwlimit", _as_opt_str, None, "move worker: --bwlimit passed to every send (e.g. 100M)"),
    _k("move.poll_seconds", _as_pos_int, 60,
       "move worker: fallback poll interval when idle (NOTIFY on the moves channel wakes it at once)"),
    _k("move.ticket_minutes", _as_pos_int, 180,
       "move worker: lifetime of the signed move tickets it issues (a step must start within it)"),
    # proxy: `proxy serve` (HTTP/WebSocket reverse proxy)
    _k("proxy.listen", _as_str, "127.0.0.1:8080", "address:port `proxy serve` listens on"),
    _k("proxy.connect_timeout", _as_pos_int, 5, "seconds to connect to an upstream before answering 504"),
    _k("proxy.upstream_timeout", _as_pos_int, 60, "seconds an upstream may stay silent before 504 (or close)"),
    _k("proxy.idle_timeout", _as_pos_int, 60, "seconds a keep-alive client connection may idle"),
    _k("proxy.header_timeout", _as_pos_int, 10, "seconds a client has to send a complete request head"),
    _k("proxy.websocket_idle_timeout", _as_pos_int, 3600, "seconds a WebSocket may pass no bytes either way"),
    _k("proxy.max_header_bytes", _as_pos_int, 32768, "largest request head accepted (431 beyond)"),
    _k("proxy.route_cache_ttl", _as_nonneg_int, 5, "hub mode: seconds a project's route is cached (NOTIFY evicts)"),
    _k("proxy.trust_forwarded", _as_trusted_proxies, None,
       "addresses/CIDRs of front proxies (a host: the hub) whose X-Forwarded-* are kept; unset: trust nobody"),
    _k("proxy.scheme", _as_choice("http", "https"), "http", "X-Forwarded-Proto when not trusted from the peer"),
    _k("proxy.metrics", _as_bool, True, "serve Prometheus text on /metrics"),
    _k("proxy.event_loop", _as_choice("auto", "uvloop", "asyncio"), "auto", "auto: uvloop when installed"),
    _k("proxy.fast_path", _as_bool, True, "serve body-less requests on the Protocol fast path (off: streams only)"),
    _k("proxy.workers", _as_proxy_workers, "auto",
       "proxy serve: worker processes sharing the listen address (SO_REUSEPORT); auto = one per usable core, "
       "1 = a single process"),
    _k("proxy.drain_timeout", _as_pos_int, 30,
       "proxy serve with 2+ workers: seconds SIGTERM/SIGINT lets in-flight requests finish before closing them"),
    # proxy: hub-mode access control (who may reach which project)
    _k("proxy.auth", _as_choice("builtin", "external", "none"), "builtin",
       "hub mode: builtin (hub tokens, grants, sessions), external (ask proxy.auth_url), none (loopback only)"),
    _k("proxy.auth_cache_size", _as_pos_int, 10000,
       "hub mode: access decisions cached (LRU; refusals in a separate quarter-size LRU)"),
    _k("proxy.auth_cache_ttl", _as_pos_int, 30,
       "hub mode: seconds an access decision is cached (NOTIFY evicts at once; never past the credential's expiry)"),
    _k("proxy.session_ttl", _as_pos_int, 86400,
       "hub mode: seconds a browser session from a ?token= login lasts (never past the token's expiry)"),
    _k("proxy.auth_url", _as_opt_http_url, None,
       "proxy.auth external: http(s)://HOST[:PORT]/PATH asked per decision (2xx allow, 401/403 deny, else 503)"),
    _k("proxy.auth_timeout", _as_pos_int, 2, "proxy.auth external: seconds to wait for proxy.auth_url (then 503)"),
    _k("proxy.auth_copy_headers", _as_header_names, (),
       "proxy.auth external: response fields of proxy.auth_url added to the upstream request (comma-separated)"),
    _k("proxy.route_cache_size", _as_pos_int, 10000,
       "hub mode: project routes cached (LRU; refusals in a separate quarter-size LRU)"),
    _k("proxy.hub_pool_size", _as_pos_int, 4, "hub mode: PostgreSQL connections for route and access lookups"),
    # backup: keys added with backups and restores
    _k("backup.heartbeat_interval", _as_pos_int, 5, "seconds between heartbeats of a running backup job"),
    _k("backup.wait_timeout", _as_nonneg_int, 0, "backup create: seconds to wait for a free slot (0 = no limit)"),
    _k("backup.timeout", _as_nonneg_int, 0, "seconds a backup, restore or prune may run (0 = no limit)"),
    # retention: host sqlite records (backup_jobs, move_log, move_tickets), pruned by the timers
    _k("retention.host_records_days", _as_pos_int, 90,
       "days host records (backup jobs, move log, move tickets) are kept; the newest per project always"),
    # placement: what `keys register` publishes for the hub's proxy
    _k("proxy.internal_url", _as_opt_internal_url, None,
       "http://HOST:PORT the hub's proxy forwards this host's projects to (keys register)"),
    # proxy access control, host side and origin isolation (README "proxy": hub credential, origins)
    _k("proxy.host_auth", _as_choice("hub", "none"), "hub",
       "host mode: hub = answer only requests carrying the hub's credential (401 otherwise, /healthz open); "
       "none = no check, allowed only on a loopback listen"),
    _k("proxy.hub_auth_window", _as_pos_int, 30,
       "host mode: seconds a hub credential's timestamp may differ from this host's clock (keep clocks in NTP)"),
    _k("proxy.metrics_token_file", _as_opt_path, None,
       "file (0600) holding a bearer token that opens /metrics to non-loopback clients; unset: loopback only"),
    _k("proxy.project_domain", _as_opt_domain, None,
       "subdomain routing: Host <project_id>.<this domain> addresses that project, path unchanged "
       "(each project its own origin; set it on the hub and every host); unset: path mode /<project_id>/..."),
]}


@dataclass
class Config:
    values: dict[str, Any]
    sources: dict[str, str]
    file: str | None

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    @property
    def btrfs_root(self) -> Path:
        return Path(self.values["btrfs_root"])

    @property
    def data_dir(self) -> Path:
        return Path(self.values["data_dir"])

    @property
    def secrets_dir(self) -> Path:
        s = self.values["secrets_dir"]
        return Path(s) if s else self.data_dir / "secrets"

    @property
    def host_name(self) -> str:
        return self.values["host_name"] or socket.gethostname()

    def redacted(self) -> dict[str, Any]:
        out = {}
        for name, value in self.values.items():
            key = SCHEMA[name]
            out[name] = redact_dsn(value) if (key.secret and value) else value
        return out


def redact_dsn(dsn: str) -> str:
    """Hide a password in a libpq URL (`postgresql://u:pw@h/db`) or key/value DSN (`password=pw`)."""
    dsn = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", dsn)
    dsn = re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", dsn, flags=re.IGNORECASE)
    return dsn


class _DuplicateKey(Exception):
    def __init__(self, key: str, line: int, first_line: int):
        super().__init__(key)
        self.key, self.line, self.first_line = key, line, first_line


def _unique_key_loader(yaml):
    """PyYAML's safe loader, refusing a mapping that gives the same key twice (YAML says keys are
    unique; PyYAML silently keeps the last one, so a typo'd override would go unnoticed)."""

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise _DuplicateKey(str(key), line, seen[key])
                except TypeError:  # an unhashable key: let the base class report it
                    continue
                seen[key] = line
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def _line_of(exc: UnicodeDecodeError) -> int:
    return exc.object[:exc.start].count(b"\n") + 1


def _flatten(data: Any, prefix: str, out: dict[str, Any], origin: str) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping at {prefix or 'top level'}",
                          hint="the config file is YAML key: value pairs")
    for k, v in data.items():
        if not isinstance(k, str):
            raise ConfigError(f"{origin}: key {k!r} is not a string")
        name = f"{prefix}{k}"
        if isinstance(v, dict) and name not in SCHEMA:
            _flatten(v, name + ".", out, origin)
        elif name in out:  # `backup.repo:` and `backup: {repo:}` in one file
            raise ConfigError(f"{origin}: key {name!r} is given twice (dotted and nested)", hint="keep one of them")
        else:
            out[name] = v


def env_name(key: str) -> str:
    return ENV_PREFIX + key.replace(".", "_").upper()


def load(path: str | None = None, env: dict[str, str] | None = None) -> Config:
    """Load the effective configuration; raise ConfigError naming the key and its source."""
    env = dict(os.environ if env is None else env)
    explicit = path or env.get(ENV_CONFIG)
    file = explicit or DEFAULT_CONFIG_PATH
    raw: dict[str, Any] = {}
    used_file: str | None = None
    if os.path.exists(file):
        data = _read_yaml(file)
        if data is not None:
            _flatten(data, "", raw, file)
        used_file = file
    elif explicit:
        raise ConfigError(f"config file {file} does not exist",
                          hint="pass an existing file to --config or unset COCALC_CTL_CONFIG")
    _refuse_unknown_keys(raw, file, env)
    values, sources = _effective_values(raw, file, env)
    return Config(values=values, sources=sources, file=used_file)


def _read_yaml(file: str) -> Any:
    """The parsed YAML of a config file; every way it can be unreadable is a one-line ConfigError."""
    import yaml  # imported here: PyYAML costs startup time that --help does not need

    try:
        with open(file, "rb") as fh:
            text = fh.read().decode("utf-8")
        return yaml.load(text, Loader=_unique_key_loader(yaml))
    except _DuplicateKey as exc:
        raise ConfigError(f"config file {file} line {exc.line}: key {exc.key!r} is given twice "
                          f"(first on line {exc.first_line})", hint="keep one of them") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {file}{where}: invalid YAML", hint="fix the syntax") from None
    except UnicodeDecodeError as exc:
        line = _line_of(exc)
        raise ConfigError(f"config file {file} line {line}: not UTF-8 text (byte {exc.object[exc.start]:#04x})",
                          hint="save the file as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"config file {file}: {exc.strerror}") from None


def _refuse_unknown_keys(raw: dict[str, Any], file: str, env: dict[str, str]) -> None:
    for name in raw:
        if name not in SCHEMA:
            raise ConfigError(f"config file {file}: unknown key {name!r}",
                              hint="see `cocalc-ctl config show` for the valid keys")
    known_env = {env_name(k): k for k in SCHEMA}
    for var in env:
        if var.startswith(ENV_PREFIX) and var not in known_env and var not in _RESERVED_ENV:
            raise ConfigError(f"environment variable {var} is not a config key",
                              hint="unset it or fix the name (see `cocalc-ctl config show`)")


def _effective_values(raw: dict[str, Any], file: str, env: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Every key's converted value and its source: the environment over the file over the default."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, key in SCHEMA.items():
        var = env_name(name)
        if var in env:
            value, source = env[var], f"env:{var}"
        elif name in raw:
            value, source = raw[name], f"file:{file}"
        else:
            values[name], sources[name] = key.default, "default"
            continue
        try:
            values[name] = key.convert(value)
        except ValueError as exc:
            where = f"environment variable {var}" if source.startswith("env:") else f"config file {file}"
            raise ConfigError(f"{where}: key {name}: {exc}") from None
        sources[name] = source
    return values, sources
