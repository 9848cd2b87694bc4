"""`cocalc-ctl hub`: the hub's PostgreSQL schema and project placement."""

from __future__ import annotations

from typing import Optional

import typer

from cocalc_ctl.cli.common import G, config, done, render

app = typer.Typer(help="Hub PostgreSQL: schema, project placement and the hub key.",
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
