"""`cocalc-ctl hub`: the hub's PostgreSQL schema and project placement."""

from __future__ import annotations

from typing import Optional

import typer

from cocalc_ctl.cli.common import G, config, done, render

app = typer.Typer(help="Hub PostgreSQL: schema, project placement, access control and the hub key.",
                  no_args_is_help=True)


@app.command("migrate")
def migrate() -> None:
    """Create or extend the hub tables (idempotent, versioned, never drops)."""
    from cocalc_ctl.actions.hub import database

    result = database.migrate(config())
    render(result, lambda r: done(
        "\n".join(f"applied {a}" for a in r.applied) + ("\n" if r.applied else "") + f"hub schema at version {r.version}"))


def _host_role_line(r) -> str:
    who = f"{r.host_name} ({r.host_id})" if r.host_name else r.host_id
    if r.action in ("dropped", "absent"):
        return f"host {who}: role {r.role} " + ("dropped" if r.action == "dropped" else "did not exist")
    lines = [f"host {who}: {r.action} role {r.role} (member of cocalc_ctl_host)"]
    if r.password_file:
        lines.append(f"  password written to {r.password_file} (libpq passfile format, 0600); install it on the host "
                     "as /etc/cocalc-ctl/hub.pgpass (0600, owned by root)")
    else:
        lines.append("  no password: the hub's pg_hba.conf must authenticate it (peer, cert)")
    lines.append("  hub_dsn for the host's config:")
    lines.append(f"  {r.dsn}")
    return "\n".join(lines)


@app.command("host-role")
def host_role(host: str = typer.Argument(..., metavar="HOST", help="Host uuid or registered name."),
              password_file: Optional[str] = typer.Option(
                  None, "--password-file", metavar="PATH",
                  help="Write a new random password there (0600, libpq passfile format); never printed."),
              no_password: bool = typer.Option(False, "--no-password",
                                               help="No password (peer or certificate authentication)."),
              drop: bool = typer.Option(False, "--drop", help="Drop the host's role instead.")) -> None:
    """Create or update a host's own hub login (least privilege), or --drop it."""
    from cocalc_ctl.actions.hub import database

    render(database.host_role(config(), host, password_file=password_file, no_password=no_password, drop=drop),
           lambda r: done(_host_role_line(r)))


# -- hub project: where each project lives -----------------------------------------------------

project_app = typer.Typer(help="Where projects live: the hub's projects rows (host, image). Recording a "
                               "placement moves no data (that is `move start`).", no_args_is_help=True)
app.add_typer(project_app, name="project")

PROJECT = typer.Argument(..., metavar="PROJECT", help="Project id: a lowercase UUID or project-<uuid>.")
IMAGE_HELP = ("Root filesystem image (normalised, e.g. ubuntu:25.10 -> docker.io/library/ubuntu:25.10); "
              "'' = each host's default.")


def _host_label(p) -> str:
    if not p.host_id:
        return "-"
    return f"{p.host_name} ({p.host_id})" if p.host_name else p.host_id


def _change_line(r) -> str:
    p = r.placement
    if r.action == "unchanged":
        return f"project {r.project_id} unchanged (host {_host_label(p)}, image {p.rootfs_image or 'host default'})"
    if r.action == "removed":
        return (f"removed project {r.project_id} from the hub (was on host {_host_label(p)}; "
                "its data there is untouched)")
    return (f"{r.action} project {r.project_id}: host {_host_label(p)}, image {p.rootfs_image or 'host default'}"
            f" (changed: {', '.join(r.changed)})")


def _opt(flag: str, help: str, metavar: str = "SIZE"):
    return typer.Option(None, flag, metavar=metavar, help=help)


MEMORY = _opt("--memory", "Run quota: memory of the project's container (e.g. 4G).")
SWAP = _opt("--swap", "Run quota: swap on top of the memory (e.g. 1G; 0 = none).")
PIDS = _opt("--pids", "Run quota: processes and threads (e.g. 4096).", "N")
CPU_SHARES = _opt("--cpu-shares", "Run quota: relative CPU weight (1024 = normal).", "N")
TMP = _opt("--tmp", "Run quota: size of the tmpfs at /tmp (e.g. 1G).")
DISK = _opt("--disk", "Run quota: disk (the project subvolume's qgroup limit, e.g. 20G).")


def _run_quota(memory, swap, pids, cpu_shares, tmp, disk):
    from cocalc_ctl.actions.project import quota

    return quota.parse(memory=memory, swap=swap, pids=pids, cpu_shares=cpu_shares, tmp=tmp, disk=disk)


@project_app.command("add")
def project_add(project: str = PROJECT,
                host: str = typer.Option(..., "--host", metavar="HOST", help="Host uuid or registered name."),
                image: Optional[str] = typer.Option(None, "--image", metavar="IMAGE", help=IMAGE_HELP),
                memory: Optional[str] = MEMORY, swap: Optional[str] = SWAP, pids: Optional[str] = PIDS,
                cpu_shares: Optional[str] = CPU_SHARES, tmp: Optional[str] = TMP,
                disk: Optional[str] = DISK) -> None:
    """Record a project on a host.

    Creates the hub row, or places an existing row that has no host yet; a project already on
    another host is refused (`set --host` corrects the record, `move start` moves the data)."""
    from cocalc_ctl.actions.hub import placement

    q = _run_quota(memory, swap, pids, cpu_shares, tmp, disk)
    render(placement.add(config(), project, host, image, run_quota=q), lambda r: done(_change_line(r)))


@project_app.command("set")
def project_set(project: str = PROJECT,
                host: Optional[str] = typer.Option(None, "--host", metavar="HOST",
                                                   help="Host uuid or registered name (the data is not moved)."),
                image: Optional[str] = typer.Option(None, "--image", metavar="IMAGE", help=IMAGE_HELP),
                force: bool = typer.Option(False, "--force",
                                           help="Change the host even while a move is in progress."),
                memory: Optional[str] = MEMORY, swap: Optional[str] = SWAP, pids: Optional[str] = PIDS,
                cpu_shares: Optional[str] = CPU_SHARES, tmp: Optional[str] = TMP,
                disk: Optional[str] = DISK) -> None:
    """Change a project's recorded host, image or run quota.

    Only the record changes (no data is moved: that is `move start`); hub proxies re-route at once.
    A host change is refused while a move of the project is in progress, unless --force."""
    from cocalc_ctl.actions.hub import placement

    q = _run_quota(memory, swap, pids, cpu_shares, tmp, disk)
    result = placement.set_placement(config(), project, host=host, image=image, force=force, run_quota=q)
    render(result, lambda r: done(_change_line(r)))


@project_app.command("show")
def project_show(project: str = PROJECT) -> None:
    """A project's host, internal URL, image and move state."""
    from cocalc_ctl import output
    from cocalc_ctl.actions.hub import placement

    result = placement.show(config(), project)
    render(result, lambda p: output.kv([
        ("project", p.project_id), ("host", _host_label(p)), ("host status", p.host_status or "-"),
        ("internal_url", p.internal_url or "-"), ("rootfs_image", p.rootfs_image or "-"),
        ("compute_image", p.compute_image or "-"),
        ("move", (p.move_state or "-") + (" (in progress)" if p.move_in_progress else "")),
        ("last_backup", p.last_backup.isoformat(timespec="seconds") if p.last_backup else "-"),
        ("run_quota", _quota_line(p.run_quota))]))


def _quota_line(q: dict | None) -> str:
    from cocalc_ctl.output import human_bytes

    if not q:
        return "- (host defaults)"
    return ", ".join(f"{k} {human_bytes(v) if k in ('memory', 'swap', 'tmp', 'disk') else v}"
                     for k, v in sorted(q.items()))


@project_app.command("list")
def project_list(host: Optional[str] = typer.Option(None, "--host", metavar="HOST",
                                                    help="Only projects on this host (uuid, also of a removed host, or name)."),
                 limit: int = typer.Option(100, "--limit", metavar="N", min=1, max=10000,
                                           help="At most N projects (in project id order)."),
                 after: Optional[str] = typer.Option(None, "--after", metavar="KEY",
                                                     help="The next page: the KEY of the previous page's last line "
                                                          "`… more: --after KEY`.")) -> None:
    """Projects in the hub with their host and image (a page of --limit, by project id).

    MOVE is the last move's state, with `*` while it (or its clean-up) is in progress."""
    from cocalc_ctl import output, paging
    from cocalc_ctl.actions.hub import placement

    result = placement.list_placements(config(), host, limit=limit, after=after)
    more = getattr(result, "next_after", None)
    render(result, lambda ps: (output.table(
        ["project", "host", "name", "internal_url", "image", "move"],
        [(p.project_id, p.host_id or "-", p.host_name or "-", p.internal_url or "-",
          p.rootfs_image or p.compute_image or "-", (p.move_state or "-") + ("*" if p.move_in_progress else ""))
         for p in ps]), paging.more_line(more)))
    if G.json:
        paging.more_line(more, json_array=True)


@project_app.command("rm")
def project_rm(project: str = PROJECT,
               force: bool = typer.Option(False, "--force", help="Remove even while a move is in progress.")) -> None:
    """Delete a project's hub row.

    Its move record goes too; its data on the host stays. Hub proxies answer 404 at once.
    Refused while a move of the project is in progress, unless --force."""
    from cocalc_ctl.actions.hub import placement

    render(placement.remove(config(), project, force=force), lambda r: done(_change_line(r)))


# -- hub keys: the hub principal (move worker machines) -------------------------------------------

keys_app = typer.Typer(help="The hub's own Ed25519 keypair: signs move tickets and is the only key hosts accept "
                            "for the `cocalc-hub` login.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


def _hub_key_line(r) -> str:
    lines = [f"hub {r.hub_id or '-'}: {r.action} {r.path}", f"  current  {r.fingerprint or '-'}"]
    if r.previous_fingerprint:
        lines.append(f"  previous {r.previous_fingerprint} (still signing until `hub keys rotate --finish`)")
    if r.published:
        lines.append("  published in the hub's hub_keys (hosts pin it on `keys sync`)")
    if r.hint:
        lines.append(f"  {r.hint}")
    return "\n".join(lines)


@keys_app.command("ensure")
def keys_ensure() -> None:
    """Create this machine's hub key and id if missing (0600 in a 0700 dir) and publish the public key."""
    from cocalc_ctl.actions.keys import hub_keys

    render(hub_keys.ensure(config()), lambda r: print(_hub_key_line(r)))


@keys_app.command("show")
def keys_show() -> None:
    """Show the hub key's public half and fingerprint (and the previous one during a rotation)."""
    from cocalc_ctl.actions.keys import hub_keys

    render(hub_keys.show(config()), lambda r: print(_hub_key_line(r) + f"\n{r.public_key}"))


@keys_app.command("rotate")
def keys_rotate(finish: bool = typer.Option(False, "--finish",
                                            help="Drop the previous key (run once every host has synced).")) -> None:
    """Make a new hub key; tickets carry signatures by both keys until --finish."""
    from cocalc_ctl.actions.keys import hub_keys

    render(hub_keys.rotate(config(), finish=finish), lambda r: print(_hub_key_line(r)))


# -- access control: accounts, grants, tokens (who may reach a project through the hub proxy) ----------

ACCOUNT = typer.Argument(..., metavar="ACCOUNT", help="Account name or uuid.")
LIMIT = typer.Option(100, "--limit", metavar="N", min=1, max=10000, help="At most N rows (a page).")
AFTER = typer.Option(None, "--after", metavar="KEY",
                     help="The next page: the KEY of the previous page's last line `… more: --after KEY`.")


def _account_label(name, account_id) -> str:
    return f"{name} ({account_id})" if name else str(account_id)


def _page(result, columns, row) -> None:
    from cocalc_ctl import output, paging

    more = getattr(result, "next_after", None)
    render(result, lambda rs: (output.table(columns, [row(r) for r in rs]), paging.more_line(more)))
    if G.json:
        paging.more_line(more, json_array=True)


account_app = typer.Typer(help="Accounts: who a token or session authenticates (hub proxy access control).",
                          no_args_is_help=True)
app.add_typer(account_app, name="account")


def _account_line(r) -> str:
    a = r.account
    label = _account_label(a.name, a.account_id)
    if r.action == "created":
        return f"created account {label}"
    if r.action == "disabled":
        return f"disabled account {label}: its tokens and sessions are refused from now on"
    if r.action == "enabled":
        return f"enabled account {label}"
    state = "disabled" if a.disabled_at else "enabled"
    return f"account {label} unchanged ({state})"


@account_app.command("add")
def account_add(name: str = typer.Argument(..., metavar="NAME",
                                           help="1-64 of a-z 0-9 . _ -, starting with a letter."),
                account_id: Optional[str] = typer.Option(None, "--id", metavar="UUID",
                                                         help="Use this id (one another system knows the account by).")
                ) -> None:
    """Add an account (unchanged if it exists with that name)."""
    from cocalc_ctl.actions.hub import access

    render(access.add_account(config(), name, account_id), lambda r: done(_account_line(r)))


@account_app.command("list")
def account_list(limit: int = LIMIT, after: Optional[str] = AFTER) -> None:
    """Accounts (a page of --limit, by account id)."""
    from cocalc_ctl.actions.hub import access

    _page(access.list_accounts(config(), limit=limit, after=after), ["account", "name", "created", "disabled"],
          lambda a: (a.account_id, a.name or "-", a.created, a.disabled_at))


@account_app.command("disable")
def account_disable(account: str = ACCOUNT) -> None:
    """Disable an account: every token and session of it is refused at once (grants are kept)."""
    from cocalc_ctl.actions.hub import access

    render(access.set_account_disabled(config(), account, True), lambda r: done(_account_line(r)))


@account_app.command("enable")
def account_enable(account: str = ACCOUNT) -> None:
    """Enable a disabled account again (its unexpired, unrevoked tokens work again)."""
    from cocalc_ctl.actions.hub import access

    render(access.set_account_disabled(config(), account, False), lambda r: done(_account_line(r)))


def _grant_line(r) -> str:
    who = _account_label(r.account, r.account_id)
    if r.action == "created":
        return f"granted {r.role} on project {r.project_id} to account {who}"
    if r.action == "updated":
        return f"account {who} on project {r.project_id}: {r.previous_role} -> {r.role}"
    if r.action == "unchanged":
        return f"account {who} on project {r.project_id}: already {r.role} (unchanged)"
    if r.action == "revoked":
        return f"revoked the {r.previous_role} grant of account {who} on project {r.project_id}"
    return f"account {who} had no grant on project {r.project_id} (unchanged)"


@project_app.command("grant")
def project_grant(project: str = PROJECT, account: str = ACCOUNT,
                  role: str = typer.Option(..., "--role", metavar="ROLE",
                                           help="owner | collaborator | viewer (viewer: GET/HEAD/OPTIONS only, "
                                                "no WebSocket).")) -> None:
    """Let an account reach a project through the hub proxy (or change its role)."""
    from cocalc_ctl.actions.hub import access

    render(access.grant(config(), project, account, role), lambda r: done(_grant_line(r)))


@project_app.command("revoke")
def project_revoke(project: str = PROJECT, account: str = ACCOUNT) -> None:
    """Remove an account's grant on a project: its next request (and open WebSocket) is refused."""
    from cocalc_ctl.actions.hub import access

    render(access.revoke(config(), project, account), lambda r: done(_grant_line(r)))


@project_app.command("users")
def project_users(project: str = PROJECT, limit: int = LIMIT, after: Optional[str] = AFTER) -> None:
    """The accounts granted on a project and their roles (a page of --limit, by account id)."""
    from cocalc_ctl.actions.hub import access

    _page(access.users(config(), project, limit=limit, after=after), ["account", "name", "role", "granted"],
          lambda g: (g.account_id, g.name or "-", g.role, g.created))


token_app = typer.Typer(help="Access tokens: what a client shows the hub proxy (Bearer header, or a login "
                             "link `/<project>/?token=…` once).", no_args_is_help=True)
app.add_typer(token_app, name="token")


def _created_token(r) -> None:
    if not G.quiet:
        scope = f"project {r.project_id}" if r.project_id else "every project it is granted"
        expiry = f"expires {output_time(r.expires_at)}" if r.expires_at else "never expires"
        print(f"created token {r.token_id} for account {_account_label(r.account, r.account_id)} on {scope}, {expiry}")
        print("the token (shown only now: the hub keeps only its hash):")
    print(r.token, flush=True)  # with -q: the token alone, for TOKEN=$(cocalc-ctl -q hub token create ...)


def output_time(value) -> str:
    from cocalc_ctl.output import rfc3339

    return str(rfc3339(value))


@token_app.command("create")
def token_create(account: str = typer.Option(..., "--account", metavar="ACCOUNT", help="Account name or uuid."),
                 project: Optional[str] = typer.Option(None, "--project", metavar="PROJECT",
                                                       help="Only this project (default: every project the "
                                                            "account is granted)."),
                 expires: str = typer.Option("30d", "--expires", metavar="DURATION",
                                             help="Lifetime: 30d, 12h, 90m (at most 3650d), or never."),
                 name: Optional[str] = typer.Option(None, "--name", metavar="NAME",
                                                    help="A label for `hub token list` (e.g. ci, laptop).")) -> None:
    """Create an access token and print it once (never again: the hub stores only its SHA-256)."""
    from cocalc_ctl.actions.hub import access

    render(access.create_token(config(), account, project=project, expires=expires, name=name), _created_token)


@token_app.command("list")
def token_list(account: Optional[str] = typer.Option(None, "--account", metavar="ACCOUNT",
                                                     help="Only this account's tokens."),
               project: Optional[str] = typer.Option(None, "--project", metavar="PROJECT",
                                                     help="Only tokens scoped to this project."),
               limit: int = LIMIT, after: Optional[str] = AFTER) -> None:
    """Tokens (never their value or hash): scope, expiry, revocation, last use (by token id).

    PROJECT `*` = every project the account is granted. LAST_USED is updated at most once a minute."""
    from cocalc_ctl.actions.hub import access

    _page(access.list_tokens(config(), account=account, project=project, limit=limit, after=after),
          ["token", "account", "project", "name", "created", "expires", "revoked", "last_used"],
          lambda t: (t.token_id, t.account or t.account_id, t.project_id or "*", t.name or "-", t.created,
                     t.expires_at or "never", t.revoked_at, t.last_used_at))


@token_app.command("revoke")
def token_revoke(token_id: str = typer.Argument(..., metavar="TOKEN_ID",
                                                help="The token's id (or its first 8+ characters), "
                                                     "from `hub token list`.")) -> None:
    """Revoke a token and end its sessions: the next request carrying it is refused."""
    from cocalc_ctl.actions.hub import access

    def line(r) -> None:
        t = r.token
        who = _account_label(t.account, t.account_id)
        if r.action == "revoked":
            done(f"revoked token {t.token_id}" + (f" ({t.name})" if t.name else "")
                 + f" of account {who}; its sessions are ended")
        else:
            done(f"token {t.token_id} of account {who} was already revoked at {output_time(t.revoked_at)}")

    render(access.revoke_token(config(), token_id), line)


@token_app.command("prune")
def token_prune(older_than: str = typer.Option("30d", "--older-than", metavar="DURATION",
                                               help="Delete tokens revoked or expired longer ago than this "
                                                    "(30d, 12h, 90m).")) -> None:
    """Delete expired login sessions, and tokens revoked or expired long ago (run it from a timer)."""
    from cocalc_ctl.actions.hub import access

    render(access.prune(config(), older_than),
           lambda r: done(f"deleted {r.sessions} expired session(s) and {r.tokens} token(s) revoked or expired "
                          f"more than {r.older_than} ago"))
