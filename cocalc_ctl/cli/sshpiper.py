"""`cocalc-ctl sshpiper`: the SSH auth hook for sshpiperd (REST) and OpenSSH (AuthorizedKeysCommand)."""

from __future__ import annotations

from typing import Optional

import typer

from cocalc_ctl.cli.common import config, done, render

app = typer.Typer(help="SSH auth hook: sshpiperd's REST endpoint, OpenSSH AuthorizedKeysCommand, managed keys, "
                       "sshpiperd/sshd configuration.", no_args_is_help=True)

USER = typer.Argument(..., metavar="USER", help="SSH login name: project-<uuid>, <uuid>, <32 hex>, "
                                                "btrfs-<uuid> or cocalc-hub.")


@app.command("serve")
def serve(
    listen: Optional[str] = typer.Option(None, "--listen", metavar="HOST:PORT",
                                         help="Address (default: config sshpiper.rest_listen, 127.0.0.1:8089)."),
    allow_remote: bool = typer.Option(False, "--allow-remote", help="Allow a non-loopback listen address."),
    seconds: Optional[float] = typer.Option(None, "--seconds", metavar="SECONDS", help="Stop after this long (default: until SIGTERM)."),
) -> None:
    """HTTP endpoint for sshpiperd's REST plugin: GET /<token>/<user> -> 200 JSON (empty fields = deny)."""
    from cocalc_ctl.actions.keys import sshauth_server

    stats = sshauth_server.serve(config(), listen=listen, allow_remote=allow_remote, max_seconds=seconds)
    render(stats, lambda s: None)


@app.command("auth")
def auth(login: str = USER) -> None:
    """The decision for USER (what `serve` would answer), without the private key."""
    from cocalc_ctl import output
    from cocalc_ctl.actions.keys import sshauth

    _, decision = sshauth.Resolver(config()).decide(login)

    def human(d):
        output.kv([("user", d.login), ("kind", d.kind), ("target", d.target_id),
                   ("decision", "allow" if d.allowed else "deny"), ("reason", d.reason),
                   ("upstream", f"{d.upstream_user}@{d.upstream_host}" if d.allowed else None),
                   ("keys", len(d.authorized_keys or []))])
        for k in d.authorized_keys or []:
            print(k)

    render(decision, human)


@app.command("authorized-keys")
def authorized_keys(login: str = USER) -> None:
    """For OpenSSH `AuthorizedKeysCommand … %u`: the allowed key lines (none = deny, exit 0).
    Normally answered by a fast path that skips this CLI layer."""
    from cocalc_ctl.actions.keys import sshauth
    from cocalc_ctl.cli.common import G

    raise typer.Exit(sshauth.authorized_keys_fast(login, G.config_path))


@app.command("keys-refresh")
def keys_refresh(project: str = typer.Argument(..., metavar="PROJECT", help="Project id: a lowercase UUID or project-<uuid>.")) -> None:
    """Rewrite <project>/.ssh/.cocalc/authorized_keys from host sqlite (an empty key set empties it)."""
    from cocalc_ctl.actions.keys import sshauth

    result = sshauth.refresh_managed_keys(config(), project)
    render(result, lambda r: done(f"wrote {r.keys} key(s) to {r.path}"))


@app.command("config")
def config_(
    sshd: bool = typer.Option(False, "--sshd", help="Print only the receiver's sshd_config."),
    sshpiperd: bool = typer.Option(False, "--sshpiperd", help="Print only the sshpiperd systemd unit."),
    write_env: bool = typer.Option(False, "--write-env",
                                   help="Write sshpiperd's EnvironmentFile (REST_AUTH_URL with the token; 0600) "
                                        "to config sshpiper.sshpiperd_env_file."),
) -> None:
    """The sshpiperd systemd unit (no secret in it or in any argv) and the move receiver's sshd_config."""
    from cocalc_ctl import output
    from cocalc_ctl.actions.keys import sshpiper_config

    result = sshpiper_config.build(config(), write_env=write_env)
    if write_env:
        output.note(f"wrote {result.env_file} (0600): REST_AUTH_URL for sshpiperd's REST plugin")

    def human(r):
        if sshd:
            print(r.sshd_config, end="")
        elif sshpiperd:
            print(r.sshpiperd_unit, end="")
        else:
            print(f"# sshpiperd unit (the REST token is in {r.env_file}, never on a command line):")
            print(r.sshpiperd_unit)
            print(f"# sshd_config of the move receiver ({r.receiver_listen}):")
            print(r.sshd_config, end="")

    render(result, human)


@app.command("receiver-keys")
def receiver_keys() -> None:
    """Write the receiver's static authorized_keys files (one per login, `restrict,command=` lines) from
    host sqlite, as `keys sync` does after every sync."""
    from cocalc_ctl.actions.keys import sshauth

    result = sshauth.write_receiver_keys(config())
    render(result, lambda r: print(f"{r.dir}: {len(r.logins)} login(s), {len(r.written)} written, "
                                   f"{len(r.removed)} removed"))


@app.command("receiver-users")
def receiver_users(
    out: Optional[str] = typer.Option(None, "--out", metavar="FILE",
                                      help="Rewrite this passwd-format file's cocalc-ctl lines (e.g. /etc/passwd "
                                           "or /var/lib/extrausers/passwd); default: print them."),
) -> None:
    """passwd lines for the receiver's login users: btrfs-<uuid> per trusted peer, cocalc-hub for the hub keys."""
    from cocalc_ctl.actions.keys import receiver_users as ru

    result = ru.apply(config(), out)
    render(result, lambda r: print("\n".join(r.lines)) if not r.file else print(
        f"{r.file}: {len(r.users)} receiver user(s), {len(r.added)} added, {len(r.removed)} removed"))
