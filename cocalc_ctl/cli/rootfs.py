"""`cocalc-ctl rootfs`: root filesystem images, their local cache and per-project overlay roots."""

from __future__ import annotations

from typing import Optional

import typer

from cocalc_ctl.cli.common import config, done, render

app = typer.Typer(help="Root filesystem images: resolve, pull into the local cache, overlay-mount per project.",
                  no_args_is_help=True)

PROJECT = typer.Argument(..., metavar="PROJECT", help="Project id: a lowercase UUID or project-<uuid>.")
IMAGE = typer.Argument(..., metavar="IMAGE",
                       help="Image: ubuntu:25.10, registry:5000/team/img:tag, dir:/path, oci-archive:/file.tar, "
                            "docker-archive:/file.tar.")


@app.command("resolve")
def resolve(project: str = PROJECT,
            image: Optional[str] = typer.Option(None, "--image", metavar="IMAGE",
                                                help="Use this image instead of asking the hub.")) -> None:
    """Normalise the project's image (hub COALESCE(rootfs_image, compute_image)) and record it on this host."""
    from cocalc_ctl.actions.project import rootfs

    result = rootfs.resolve(config(), project, image=image)
    render(result, lambda r: print(r.image))


@app.command("pull")
def pull(image: str = IMAGE,
         force: bool = typer.Option(False, "--force", help="Pull and extract again even if cached."),
         keep: bool = typer.Option(False, "--keep", help="Keep podman's copy of the image.")) -> None:
    """Pull an image and extract its filesystem into the cache (one pull per image at a time)."""
    from cocalc_ctl import output
    from cocalc_ctl.actions.project import rootfs

    result = rootfs.pull(config(), image, force=force, keep=keep or None)
    render(result, lambda r: done(
        f"{'pulled' if r.downloaded else 'cached'} {r.image} at {r.path} ({output.human_bytes(r.size_bytes)})"))


@app.command("mount")
def mount(project: str = PROJECT,
          image: Optional[str] = typer.Option(None, "--image", metavar="IMAGE", help="Use this image."),
          remount: bool = typer.Option(False, "--remount", help="Switch a root mounted with another image.")) -> None:
    """Mount the project's overlay root at <data_dir>/project-roots/<uuid> (pulls the image if missing)."""
    from cocalc_ctl.actions.project import overlay

    result = overlay.mount(config(), project, image=image, remount=remount)
    render(result, lambda r: done(
        f"{'already mounted' if r.already_mounted else 'mounted'} {r.image} for project {r.project_id} at {r.merged}"))


@app.command("umount")
def umount(project: str = PROJECT) -> None:
    """Unmount the project's overlay root (refused while the project runs)."""
    from cocalc_ctl.actions.project import overlay

    result = overlay.umount(config(), project)
    render(result, lambda r: done(
        f"unmounted {r.merged}" if r.was_mounted else f"project {r.project_id} root was not mounted"))


@app.command("list")
def list_() -> None:
    """Cached images with size, pull time and the projects using them."""
    from cocalc_ctl import output
    from cocalc_ctl.actions.project import rootfs

    result = rootfs.list_cache(config())
    render(result, lambda rs: output.table(
        ["image", "size", "pulled", "projects", "mounted by"],
        [(e.image, output.human_bytes(e.size_bytes), e.pulled_at, len(e.projects),
          ", ".join(e.mounted_by) or "") for e in rs]))


@app.command("rm")
def rm(image: str = IMAGE) -> None:
    """Remove one image from the cache (refused while a project has it mounted)."""
    from cocalc_ctl import output
    from cocalc_ctl.actions.project import rootfs

    result = rootfs.rm(config(), image)
    render(result, lambda r: done(f"removed {', '.join(r.removed)} ({output.human_bytes(r.freed_bytes)})"))


@app.command("gc")
def gc(max_size: Optional[str] = typer.Option(None, "--max-size", metavar="SIZE",
                                              help="Size budget (e.g. 20G); default rootfs.gc_max_size, "
                                                   "else remove every unused image.")) -> None:
    """Remove cached images no project uses (oldest first) until the cache fits the budget."""
    from cocalc_ctl import output
    from cocalc_ctl.actions.project import rootfs

    result = rootfs.gc(config(), max_size=max_size)
    render(result, lambda r: done(
        f"removed {len(r.removed)} image(s), {output.human_bytes(r.freed_bytes)}"
        + "".join(f"\n  {i}" for i in r.removed)))
