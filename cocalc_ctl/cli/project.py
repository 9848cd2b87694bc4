"""`cocalc-ctl project`: project subvolumes."""

from __future__ import annotations

from typing import Optional

import typer

from cocalc_ctl.cli.common import config, done, render

app = typer.Typer(help="Create, list, inspect, delete, start and stop projects (btrfs subvolumes).", no_args_is_help=True)

PROJECT = typer.Argument(..., metavar="PROJECT", help="Project id: a lowercase UUID or project-<uuid>.")


@app.command("create")
def create(
    project: str = PROJECT,
    quota: Optional[str] = typer.Option(None, "--quota", metavar="SIZE", help="qgroup limit (e.g. 10G)."),
) -> None:
    """Create the subvolume project-<uuid> with its .snapshots/ and qgroup."""
    from cocalc_ctl.actions.project import projects

    result = projects.create(config(), project, quota=quota)
    render(result, lambda r: done(f"created project {r.project_id} at {r.path}"))


@app.command("list")
def list_() -> None:
    """Every project on this host with state, size and snapshot count."""
    from cocalc_ctl import output
    from cocalc_ctl.actions.project import projects

    result = projects.list_projects(config())
    render(result, lambda rs: output.table(
        ["project", "state", "referenced", "exclusive", "snapshots", "locked"],
        [(p.project_id, p.state, output.human_bytes(p.referenced_bytes), output.human_bytes(p.exclusive_bytes),
          len(p.snapshots), len(p.locked_snapshots)) for p in rs]))


@app.command("show")
def show(project: str = PROJECT) -> None:
    """Path, size (qgroups), quota, generation, snapshots and state of one project."""
    from cocalc_ctl import output
    from cocalc_ctl.actions.project import projects

    result = projects.show(config(), project)

    def human(p):
        output.kv([("project", p.project_id), ("path", p.path), ("state", p.state),
                   ("referenced", output.human_bytes(p.referenced_bytes)),
                   ("exclusive", output.human_bytes(p.exclusive_bytes)),
                   ("quota", output.human_bytes(p.quota_bytes) if p.quota_bytes else "none"),
                   ("generation", p.generation), ("image", p.image),
                   ("ports", f"http {p.http_port}, ssh {p.ssh_port}" if p.http_port or p.ssh_port else None),
                   ("snapshots", ", ".join(f"{s} (locked)" if s in p.locked_snapshots else s for s in p.snapshots)
                    or "none")])

    render(result, human)


@app.command("delete")
def delete(
    project: str = PROJECT,
    force: bool = typer.Option(False, "--force", help="Delete even with locked snapshots or while running."),
) -> None:
    """Delete a project: its snapshots first, then the subvolume, persist store and state row."""
    from cocalc_ctl.actions.project import projects

    result = projects.delete(config(), project, force=force)
    render(result, lambda r: done(f"deleted project {r.project_id} and {len(r.deleted_snapshots)} snapshot(s)"))


@app.command("start")
def start(
    project: str = PROJECT,
    image: Optional[str] = typer.Option(None, "--image", metavar="IMAGE", help="Use this image (default: resolve)."),
) -> None:
    """Resolve, pull and mount the root image, then run the project container with podman."""
    from cocalc_ctl.actions.project import containers

    result = containers.start(config(), project, image=image)
    render(result, lambda r: done(
        f"project {r.project_id} {'already running' if r.already_running else 'started'} ({r.image}); "
        f"http 127.0.0.1:{r.http_port}, ssh 127.0.0.1:{r.ssh_port}" + (f" (sshd {r.sshd})" if r.sshd else "")))


@app.command("stop")
def stop(project: str = PROJECT) -> None:
    """Remove the project container, unmount its root and clear its ports."""
    from cocalc_ctl.actions.project import containers

    result = containers.stop(config(), project)
    render(result, lambda r: done(f"project {r.project_id} stopped"))


@app.command("ssh")
def ssh(
    project: str = PROJECT,
    args: Optional[list[str]] = typer.Argument(None, metavar="[-- ARGS]",
                                               help="Command to run in the project (default: a login shell)."),
) -> None:
    """Open an SSH session into the running project as sshpiperd does (upstream key, host key pinned).

    Exits with ssh's status (the remote command's, or 255 when ssh itself fails)."""
    from cocalc_ctl.actions.project import session

    rc = session.open_session(config(), project, list(args or []))
    raise typer.Exit(rc)


@app.command("status")
def status(project: str = PROJECT) -> None:
    """State, container, image, root mount and ports of one project."""
    from cocalc_ctl import output
    from cocalc_ctl.actions.project import containers

    result = containers.status(config(), project)
    render(result, lambda s: output.kv([
        ("project", s.project_id), ("state", s.state), ("container", f"{s.container} ({s.container_state or 'none'})"),
        ("image", s.image), ("root", f"{s.root} ({'mounted' if s.root_mounted else 'not mounted'})"),
        ("current image", s.current_image), ("http port", s.http_port), ("ssh port", s.ssh_port),
        ("sshd", s.sshd), ("ssh host key", s.ssh_host_key),
        ("limits", _limits_line(s.limits)),
        ("memory", ("out of memory: " + (f"{s.oom_kills} process(es) killed by the kernel" if s.oom_kills
                                         else f"the container was killed (exit {s.exit_code})"))
         if s.out_of_memory else "ok")]))


def _limits_line(limits: dict) -> str:
    from cocalc_ctl.output import human_bytes

    if not limits:
        return "none"
    shown = [f"{k} {human_bytes(v) if k in ('memory', 'swap', 'tmp', 'disk') and isinstance(v, int) else v}"
             for k, v in limits.items()]
    return ", ".join(shown)
