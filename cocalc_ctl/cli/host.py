"""`cocalc-ctl host`: the btrfs pool and the host's directories."""

from __future__ import annotations

from typing import Optional

import typer

from cocalc_ctl.cli.common import config, done, render

app = typer.Typer(help="Set up, inspect and tear down this host's btrfs pool.", no_args_is_help=True)


@app.command("init")
def init(
    loopback: Optional[str] = typer.Option(None, "--loopback", metavar="SIZE",
                                           help="Create a loopback btrfs pool of SIZE (e.g. 10G) when there is none."),
    image: Optional[str] = typer.Option(None, "--image", metavar="PATH",
                                        help="Image file for --loopback (default <data_dir>/pool.img)."),
) -> None:
    """Create/mount the pool (with --loopback), enable quotas, create data and secrets dirs."""
    from cocalc_ctl.actions.host import setup

    result = setup.init(config(), loopback=loopback, image=image)

    def human(r):
        for a in r.actions:
            done(a)
        done(f"pool ready at {r.btrfs_root} (quotas on); host id {r.host_id}")

    render(result, human)


@app.command("status")
def status() -> None:
    """Pool size/used/free, quota state, project and snapshot counts."""
    from cocalc_ctl import output
    from cocalc_ctl.actions.host import setup

    result = setup.status(config())

    def human(r):
        output.kv([
            ("host id", r.host_id), ("pool", r.btrfs_root), ("filesystem", r.fstype),
            ("mounted", "yes" if r.mounted else "no"), ("loopback image", r.loopback_image),
            ("size", output.human_bytes(r.size_bytes)), ("used", output.human_bytes(r.used_bytes)),
            ("free", output.human_bytes(r.free_bytes)), ("quotas", "on" if r.quotas else "off"),
            ("projects", r.projects), ("snapshots", r.snapshots),
        ])

    render(result, human)


@app.command("teardown")
def teardown(
    delete_image: bool = typer.Option(False, "--delete-image", help="Also delete the loopback image file."),
) -> None:
    """Unmount and detach a loopback pool that `host init --loopback` made (refuses any other)."""
    from cocalc_ctl.actions.host import setup

    result = setup.teardown(config(), delete_image=delete_image)
    render(result, lambda r: done(f"pool at {r.btrfs_root} torn down" + (" (image deleted)" if r.image_deleted else "")))
