"""`proxy serve`: build the route table for the mode and run the proxy until signalled."""

from __future__ import annotations

import ipaddress
import re
import sys
from dataclasses import dataclass

from cocalc_ctl import output
from cocalc_ctl.errors import InvalidInput, PreconditionFailed

MODES = ("host", "hub")


@dataclass
class ServeResult:
    mode: str
    listen: str
    event_loop: str
    workers: int = 1


def parse_listen(text: str) -> tuple[str, int]:
    """`127.0.0.1:8080`, `[::1]:8080`, `0.0.0.0:80` -> (host, port)."""
    m = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[0-9A-Za-z.-]+):([0-9]{1,5})", text or "", re.ASCII)
    if m is None or int(m.group(2)) > 65535:
        raise InvalidInput(f"invalid listen address {text!r}", hint="use HOST:PORT, e.g. 127.0.0.1:8080")
    host = m.group(1)
    return (host[1:-1] if host.startswith("[") else host), int(m.group(2))


def worker_count(value) -> int:
    """`--workers` / proxy.workers (the config's one rule): `auto` is the number of usable cores."""
    from cocalc_ctl.config import SCHEMA

    try:
        n = SCHEMA["proxy.workers"].convert(value)
    except ValueError as exc:
        raise InvalidInput(f"invalid --workers: {exc}", hint="use --workers auto or a number such as 2") from None
    if n == "auto":
        from cocalc_ctl.proxy.workers import usable_cores

        return usable_cores()
    return n


def is_loopback_listen(host: str) -> bool:
    """A listen address only this machine can reach: 127.0.0.0/8, ::1 or `localhost`."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listen(cfg, mode: str, host: str) -> None:
    """Host mode: refuse a non-loopback listen unless the hub credential is checked (as `sshpiper serve`
    refuses one). Hub mode's counterpart, `proxy.auth: none`, is refused in check_auth."""
    if mode != "host" or is_loopback_listen(host) or cfg["proxy.host_auth"] == "hub":
        return
    raise PreconditionFailed(f"refusing to listen on non-loopback address {host}: proxy.host_auth is none",
                             hint="listen on 127.0.0.1, or set proxy.host_auth: hub")


def metrics_token(cfg) -> bytes | None:
    """The /metrics bearer token from proxy.metrics_token_file (0600, ours), or None."""
    path = cfg["proxy.metrics_token_file"]
    if not path:
        return None
    from pathlib import Path

    from cocalc_ctl.actions.keys.keys import read_secret

    token = read_secret(Path(path)).strip()
    if len(token) < 16 or any(c < 0x21 or c > 0x7e for c in token):
        raise PreconditionFailed(f"proxy.metrics_token_file {path}: the token must be 16+ visible ASCII characters",
                                 hint="write e.g. `openssl rand -hex 32` into it (mode 0600)")
    return token


def hub_verifier(cfg):
    """Host mode with proxy.host_auth: hub: the credential check, with this host's synced secrets."""
    from cocalc_ctl.actions.keys.keys import require_host_id
    from cocalc_ctl.proxy import hubcred

    verifier = hubcred.HubVerifier(require_host_id(cfg), hubcred.secrets_path(cfg.secrets_dir),
                                   int(cfg["proxy.hub_auth_window"]))
    if verifier.problem:
        output.warn(f"proxy: {verifier.problem}; every project request gets 401 until it is there "
                    "(the hub admin runs `keys trust` or `keys proxy-secret`, this host `keys sync`)")
    return verifier


def settings_from_config(cfg):
    from cocalc_ctl.proxy.server import Settings

    return Settings(
        connect_timeout=float(cfg["proxy.connect_timeout"]),
        upstream_timeout=float(cfg["proxy.upstream_timeout"]),
        idle_timeout=float(cfg["proxy.idle_timeout"]),
        header_timeout=float(cfg["proxy.header_timeout"]),
        websocket_idle_timeout=float(cfg["proxy.websocket_idle_timeout"]),
        max_head_bytes=int(cfg["proxy.max_header_bytes"]),
        trust_forwarded=tuple(cfg["proxy.trust_forwarded"] or ()),
        scheme=cfg["proxy.scheme"],
        metrics=bool(cfg["proxy.metrics"]),
        fast_path=bool(cfg["proxy.fast_path"]),
        project_domain=cfg["proxy.project_domain"],
    )


def make_routes(cfg, mode: str, link=None):
    from cocalc_ctl.proxy.routing import HostRoutes, HubRoutes

    if mode == "host":
        return HostRoutes(cfg.data_dir)
    return HubRoutes(link or hub_link(cfg), ttl=float(cfg["proxy.route_cache_ttl"]),
                     cache_size=int(cfg["proxy.route_cache_size"]))


def hub_link(cfg):
    """The hub mode's PostgreSQL pool and listener (psycopg_pool is imported in hub mode only)."""
    if not cfg["hub_dsn"]:
        raise PreconditionFailed("hub mode needs hub_dsn", hint="set hub_dsn in the config or COCALC_CTL_HUB_DSN")
    from cocalc_ctl.proxy.hublink import HubLink

    return HubLink(cfg["hub_dsn"], pool_size=int(cfg["proxy.hub_pool_size"]))


def check_auth(cfg, host: str) -> None:
    """Hub mode: proxy.auth `none` only on a loopback listen (and loudly); `external` needs its URL."""
    mode = cfg["proxy.auth"]
    if mode == "none":
        if not is_loopback_listen(host):
            raise PreconditionFailed(f"proxy.auth is none and the proxy would listen on {host}",
                                     hint="none is for loopback listens only: use proxy.auth builtin or external")
        print("cocalc-ctl proxy: WARNING: proxy.auth is none: NO ACCESS CONTROL, every client that reaches "
              f"{host} reaches every project", file=sys.stderr, flush=True)
    if mode == "external" and not cfg["proxy.auth_url"]:
        raise PreconditionFailed("proxy.auth is external but proxy.auth_url is not set",
                                 hint="set proxy.auth_url to the decision point (http(s)://HOST:PORT/PATH)")


def make_access(cfg, link):
    """Hub mode's access control from proxy.auth (checked by check_auth before)."""
    from cocalc_ctl.proxy.access import Access

    mode = cfg["proxy.auth"]
    return Access(mode, link=link if mode == "builtin" else None, cache_size=int(cfg["proxy.auth_cache_size"]),
                  ttl=float(cfg["proxy.auth_cache_ttl"]), session_ttl=float(cfg["proxy.session_ttl"]),
                  scheme=cfg["proxy.scheme"], auth_url=cfg["proxy.auth_url"],
                  auth_timeout=float(cfg["proxy.auth_timeout"]), copy_headers=cfg["proxy.auth_copy_headers"])


def serve(cfg, *, mode: str, listen: str | None, access_log: bool, json_log: bool,
          workers: str | int | None = None) -> ServeResult:
    if mode not in MODES:
        raise InvalidInput(f"invalid mode {mode!r}", hint="use --mode host or --mode hub")
    host, port = parse_listen(listen or cfg["proxy.listen"])
    check_listen(cfg, mode, host)
    if mode == "hub":
        check_auth(cfg, host)
    metrics_token(cfg)  # a bad token file stops the command here, before any worker starts
    if mode == "host" and cfg["proxy.host_auth"] != "hub":
        output.warn("proxy: proxy.host_auth is none: this host proxy answers anyone who reaches "
                    f"{host}:{port} (loopback only), and passes no x-cocalc-account")
    n = worker_count(cfg["proxy.workers"] if workers is None else workers)
    if n > 1:
        return _serve_workers(cfg, mode, host, port, access_log, json_log, n)
    from cocalc_ctl.proxy import server
    from cocalc_ctl.proxy.metrics import AccessLog

    routes, settings, access = build(cfg, mode, host, port)
    bound: list[str] = []

    def ready(h: str, p: int) -> None:
        bound.append(f"{h}:{p}")
        import asyncio

        loop = "uvloop" if "uvloop" in type(asyncio.get_running_loop()).__module__ else "asyncio"
        print(f"cocalc-ctl proxy: mode {mode}, listening on http://{h}:{p} ({loop})", file=sys.stderr, flush=True)

    try:
        loop_name = server.run(routes, settings, host, port, AccessLog(access_log, json_log), ready,
                               event_loop=cfg["proxy.event_loop"], access=access)
    except OSError as exc:
        raise PreconditionFailed(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                                 hint="pick a free address with --listen") from None
    return ServeResult(mode=mode, listen=bound[0] if bound else f"{host}:{port}", event_loop=loop_name)


def build(cfg, mode: str, host: str, port: int):
    """(routes, settings, access) of one proxy process: the single one, or each forked worker (whose
    database pools, listeners and caches are its own)."""
    link = access = None
    if mode == "hub":
        link = hub_link(cfg)
        access = make_access(cfg, link)
        access.subdomains = bool(cfg["proxy.project_domain"])
    routes = make_routes(cfg, mode, link)
    settings = settings_from_config(cfg)
    settings.metrics_token = metrics_token(cfg)
    if mode == "host" and cfg["proxy.host_auth"] == "hub":
        settings.hub_verifier = hub_verifier(cfg)
    if mode == "hub":
        from cocalc_ctl.proxy.hubcred import HubSigner

        settings.hub_signer = HubSigner(cfg["hub_dsn"])
    return routes, settings, access


def _serve_workers(cfg, mode: str, host: str, port: int, access_log: bool, json_log: bool, n: int) -> ServeResult:
    """`--workers N` (N >= 2): N forked workers on one address, this process their supervisor."""
    from cocalc_ctl.proxy import workers

    if cfg["proxy.event_loop"] == "uvloop":
        try:
            import uvloop  # noqa: F401  (checked here: a worker would only fail after the fork)
        except ImportError:
            raise PreconditionFailed("proxy.event_loop is uvloop but uvloop is not installed",
                                     hint="pip install uvloop, or set proxy.event_loop: auto") from None
    if mode == "hub" and not cfg["hub_dsn"]:
        make_routes(cfg, mode)  # raises its precondition error here, before any fork
    spec = workers.Spec(build=lambda: build(cfg, mode, host, port), host=host,
                        port=port, access_log=access_log, json_log=json_log, event_loop=cfg["proxy.event_loop"],
                        drain_timeout=float(cfg["proxy.drain_timeout"]))

    def ready(loop: str) -> None:
        where = f"http://{_show(spec.host)}:{spec.port}"
        print(f"cocalc-ctl proxy: mode {mode}, listening on {where} ({loop}, {n} workers)", file=sys.stderr, flush=True)

    try:
        loop_name = workers.serve_workers(spec, n, ready)
    except OSError as exc:
        raise PreconditionFailed(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                                 hint="pick a free address with --listen") from None
    return ServeResult(mode=mode, listen=f"{_show(spec.host)}:{spec.port}", event_loop=loop_name, workers=n)


def _show(host: str) -> str:
    return f"[{host}]" if ":" in host else host
