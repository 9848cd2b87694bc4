"""`cocalc-ctl keys`: this host's SSH keys and trust between hosts through the hub."""

from __future__ import annotations

from typing import Optional

import typer

from cocalc_ctl.cli.common import config, done, render

app = typer.Typer(help="SSH keypairs of this host, registration in the hub, and trusted peers' keys.",
                  no_args_is_help=True)

HOST = typer.Argument(..., metavar="HOST", help="Host id (lowercase UUID) as registered in the hub.")


def _print_keys(keys) -> None:
    from cocalc_ctl import output

    output.table(["key", "fingerprint", "previous (rotation)", "path"],
                 [(k.which, k.fingerprint or "missing", k.previous_fingerprint or "", k.path) for k in keys])


@app.command("ensure")
def ensure() -> None:
    """Create missing ed25519 keypairs (host-to-host, sshpiperd host key, sshpiper upstream) and the
    REST token; never rewrites an existing key; refuses secrets with unsafe modes."""
    from cocalc_ctl.actions.keys import keys

    result = keys.ensure(config())

    def human(r):
        for p in r.created:
            done(f"created {p}")
        if not r.created:
            done("all keys present, nothing to do")
        _print_keys(r.keys)

    render(result, human)


@app.command("show")
def show() -> None:
    """Public keys and fingerprints (never a private key)."""
    from cocalc_ctl.actions.keys import keys

    result = keys.show(config())

    def human(rs):
        for k in rs:
            print(f"{k.which}: {k.public_key or 'missing (run `cocalc-ctl keys ensure`)'}")
            if k.previous_public_key:
                print(f"{k.which} (previous, accepted until rotate --finish): {k.previous_public_key}")
        _print_keys(rs)

    render(result, human)


@app.command("rotate")
def rotate(
    which: str = typer.Option("host", "--which", metavar="host|sshpiperd|upstream|relay", help="host (host-to-host), sshpiperd, upstream, or relay."),
    finish: bool = typer.Option(False, "--finish", help="Remove the previous key (peers stop accepting it)."),
) -> None:
    """Make a new key; the old one stays accepted as "previous" until `--finish`."""
    from cocalc_ctl.actions.keys import keys

    result = keys.rotate(config(), which, finish=finish)
    render(result, lambda r: done(f"{r.which}: {r.action}; now {r.fingerprint}"
                                   + (f" (previous {r.previous_fingerprint})" if r.previous_fingerprint else "")
                                   + f"\n{r.hint}"))


@app.command("register")
def register(
    internal_url: Optional[str] = typer.Option(
        None, "--internal-url", metavar="URL",
        help="http://HOST:PORT where the hub's proxy reaches this host's proxy (default: config "
             "proxy.internal_url; neither: the hub's value is kept)."),
    clear_internal_url: bool = typer.Option(False, "--clear-internal-url",
                                            help="Remove this host's internal URL from the hub (hub proxies answer 502)."),
) -> None:
    """Upsert this host (id, name, ssh_server, internal URL, heartbeat, public keys) into the hub; trust is unchanged."""
    from cocalc_ctl.actions.keys import keysync

    result = keysync.register(config(), internal_url=internal_url, clear_internal_url=clear_internal_url)
    render(result, lambda r: done(f"registered host {r.host_id} ({r.name}, ssh_server {r.ssh_server or '-'}, "
                                   f"internal_url {r.internal_url or '-'}); "
                                   f"trusted: {'yes' if r.trusted else 'no (a hub admin runs `keys trust`)'}"))


@app.command("trust")
def trust(host: str = HOST) -> None:
    """Hub admin: distribute HOST's keys to every host and accept it as a move peer."""
    from cocalc_ctl.actions.keys import keysync

    result = keysync.set_trust(config(), host, True)
    render(result, lambda r: done(f"host {r.host_id} is trusted" + ("" if r.changed else " (unchanged)")))


@app.command("untrust")
def untrust(host: str = HOST) -> None:
    """Hub admin: stop distributing HOST's keys; peers drop it on their next sync."""
    from cocalc_ctl.actions.keys import keysync

    result = keysync.set_trust(config(), host, False)
    render(result, lambda r: done(f"host {r.host_id} is no longer trusted" + ("" if r.changed else " (unchanged)")))


@app.command("proxy-secret")
def proxy_secret(
    host: str = HOST,
    rotate: bool = typer.Option(False, "--rotate",
                                help="Add a new key; the hub signs with the old one until --finish."),
    finish: bool = typer.Option(False, "--finish", help="Drop every key but the newest (the hub signs with it now)."),
) -> None:
    """Hub admin: the secret keying the hub proxy's credential to HOST (made if missing; ids only, never the secret)."""
    from cocalc_ctl.actions.keys import proxy_secrets

    result = proxy_secrets.manage(config(), host, rotate=rotate, finish=finish)
    render(result, lambda r: done(f"host {r.host_id}: proxy secret {r.action}; keys {', '.join(r.key_ids) or '-'} "
                                   f"(the hub signs with {r.signing_key_id or '-'})"
                                   + (f"\n{r.hint}" if r.hint else "")))


@app.command("broadcast")
def broadcast() -> None:
    """Ask every `keys watch` to resync now (changes in the hub notify on their own)."""
    from cocalc_ctl.actions.keys import keysync

    keysync.broadcast(config())
    render({"notified": True}, lambda r: done("notified"))


def _sync_line(r) -> str:
    if not r.self_trusted:
        return (f"this host is not trusted by the hub: no peers ({len(r.removed)} removed); "
                "a hub admin runs `keys trust`")
    return (f"{len(r.peers)} trusted peer(s): {len(r.added)} added, {len(r.changed)} changed, "
            f"{len(r.removed)} removed" + (f", {len(r.skipped)} skipped" if r.skipped else ""))


@app.command("sync")
def sync() -> None:
    """Copy every trusted peer's public keys from the hub into host sqlite; refresh known_hosts and the
    receiver's static authorized_keys files."""
    from cocalc_ctl.actions.keys import keysync

    result = keysync.sync(config())
    render(result, lambda r: done(_sync_line(r)))


@app.command("watch")
def watch(
    seconds: Optional[float] = typer.Option(None, "--seconds", metavar="SECONDS", help="Stop after this long (default: forever)."),
) -> None:
    """LISTEN for key changes in the hub and sync what each names (full sync on (re)connect and every
    keys.resync_every seconds; needs a real PostgreSQL session, no transaction pooling)."""
    from cocalc_ctl import output
    from cocalc_ctl.actions.keys import keysync
    from cocalc_ctl.cli.common import G

    cfg = config()

    def on_sync(r) -> None:
        if G.json:
            output.json_line({"event": "sync", **output.to_jsonable(r)})
        else:
            output.note(f"keys watch: {_sync_line(r)}")

    n = keysync.watch(cfg, max_seconds=seconds, resync_every=float(cfg["keys.resync_every"]), on_sync=on_sync,
                      jitter=cfg["keys.sync_jitter_ms"] / 1000.0)
    if not G.json:
        output.note(f"keys watch: stopped after {n} sync(s)")


@app.command("peers")
def peers() -> None:
    """The trusted peers cached in host sqlite (what `keys sync` fetched)."""
    from cocalc_ctl import output
    from cocalc_ctl.actions.keys import keysync

    result = keysync.list_peers(config())
    render(result, lambda rs: output.table(
        ["host", "name", "ssh_server", "host-to-host", "sshpiperd"],
        [(p.host_id, p.name, p.ssh_server, ", ".join(p.host_to_host_fingerprints),
          ", ".join(p.sshpiperd_fingerprints)) for p in rs]))


@app.command("known-hosts")
def known_hosts(
    out: Optional[str] = typer.Option(None, "--out", metavar="FILE",
                                      help="Where to write (default <data_dir>/ssh/known_hosts; - for stdout)."),
) -> None:
    """Pin every trusted peer's sshpiperd key for its ssh_server (`host` on port 22, `[host]:port` else)."""
    from cocalc_ctl.actions.keys import keysync

    result = keysync.write_known_hosts(config(), out)
    render(result, lambda r: print(r.text, end="") if out == "-"
           else done(f"wrote {r.entries} pinned key(s) to {r.path}"))
