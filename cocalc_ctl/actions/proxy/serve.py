"""`proxy serve`: build the route table for the mode and run the proxy until signalled."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

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
    )


def make_routes(cfg, mode: str):
    from cocalc_ctl.proxy.routing import HostRoutes, HubRoutes

    if mode == "host":
        return HostRoutes(cfg.data_dir)
    if not cfg["hub_dsn"]:
        raise PreconditionFailed("hub mode needs hub_dsn", hint="set hub_dsn in the config or COCALC_CTL_HUB_DSN")
    return HubRoutes(cfg["hub_dsn"], ttl=float(cfg["proxy.route_cache_ttl"]))


def serve(cfg, *, mode: str, listen: str | None, access_log: bool, json_log: bool,
          workers: str | int | None = None) -> ServeResult:
    if mode not in MODES:
        raise InvalidInput(f"invalid mode {mode!r}", hint="use --mode host or --mode hub")
    host, port = parse_listen(listen or cfg["proxy.listen"])
    n = worker_count(cfg["proxy.workers"] if workers is None else workers)
    if n > 1:
        return _serve_workers(cfg, mode, host, port, access_log, json_log, n)
    from cocalc_ctl.proxy import server
    from cocalc_ctl.proxy.metrics import AccessLog

    routes = make_routes(cfg, mode)
    settings = settings_from_config(cfg)
    bound: list[str] = []

    def ready(h: str, p: int) -> None:
        bound.append(f"{h}:{p}")
        import asyncio

        loop = "uvloop" if "uvloop" in type(asyncio.get_running_loop()).__module__ else "asyncio"
        print(f"cocalc-ctl proxy: mode {mode}, listening on http://{h}:{p} ({loop})", file=sys.stderr, flush=True)

    try:
        loop_name = server.run(routes, settings, host, port, AccessLog(access_log, json_log), ready,
                               event_loop=cfg["proxy.event_loop"])
    except OSError as exc:
        raise PreconditionFailed(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                                 hint="pick a free address with --listen") from None
    return ServeResult(mode=mode, listen=bound[0] if bound else f"{host}:{port}", event_loop=loop_name)


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
    spec = workers.Spec(make_routes=lambda: make_routes(cfg, mode), settings=settings_from_config(cfg), host=host,
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
