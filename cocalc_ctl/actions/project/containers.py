"""Project containers: `project start|stop|status` with podman on the project's overlay root.

start = resolve the image → pull if missing → mount the overlay → `podman run --rootfs <merged>`
with the project subvolume at the container's home, published on free loopback ports that are
recorded in host sqlite. stop removes the container, unmounts the root and clears the ports, so the
host proxy answers 502 at once instead of forwarding to a dead port. Runtime, ulimits and limits
come from config (`podman.*`), never from code.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cocalc_ctl import ids, layout, locks, output, proc, safepath
from cocalc_ctl.actions.project import isolation, overlay, project_ssh, quota, rootfs
from cocalc_ctl.actions.project.subvolume import existing_project
from cocalc_ctl.config import Config
from cocalc_ctl.errors import InvalidInput, OperationFailed, PreconditionFailed
from cocalc_ctl.state import host_db
from cocalc_ctl.tools import btrfs, cgroups, podman

LOOPBACK = "127.0.0.1"
LABEL_PREFIX = "org.cocalc"


def container_name(pid: str) -> str:
    return f"project-{pid}"


def _lock(pid: str) -> str:
    return f"project-{pid}.run"


def _free_ports(taken: set[int], n: int) -> list[int]:
    """n distinct free loopback ports, avoiding ports host sqlite already gave to other projects."""
    ports: list[int] = []
    socks = []
    try:
        while len(ports) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind((LOOPBACK, 0))
            port = s.getsockname()[1]
            if port not in taken and port not in ports:
                ports.append(port)
    finally:
        for s in socks:
            s.close()
    return ports


def _snapshots_mount(cfg: Config, pid: str) -> tuple[str, str]:
    """`.snapshots` bound over itself, read-only, in the container. The project's root owns its home,
    so it could otherwise rename `.snapshots` and plant a symlink (to another project's snapshots)
    that root's `snapshot create`/`prune` would follow; a mount point in its own mount namespace
    cannot be renamed, removed or replaced (EBUSY). Checked here, while the project is stopped."""
    snaps = layout.snapshots_dir(cfg, pid)
    try:
        st = os.lstat(snaps)
    except FileNotFoundError:
        proc.run(btrfs.subvolume_create(str(snaps)))
        st = None if proc.DRY_RUN else os.lstat(snaps)
    if st is not None and (stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode)):
        raise PreconditionFailed(f"{snaps} is a symlink or not a directory; refusing to start the project",
                                 hint="move it aside and restore the project's snapshots directory "
                                      "(a btrfs subvolume owned by root)")
    return str(snaps), f"{str(cfg['podman.home']).rstrip('/')}/{layout.SNAPSHOTS}"


def _command(cfg: Config, marker: dict) -> list[str]:
    configured = cfg["podman.command"]
    if configured:
        try:
            argv = shlex.split(configured)
        except ValueError as exc:
            raise InvalidInput(f"podman.command: {exc}") from None
        if argv:
            return argv
    conf = (marker.get("inspect") or {}).get("Config") or {}
    argv = list(conf.get("Entrypoint") or []) + list(conf.get("Cmd") or [])
    if not argv:
        raise PreconditionFailed("the image defines no command to run",
                                 hint="set podman.command in the config (e.g. '/bin/sh -c \"exec sleep 1d\"')")
    return argv


def _base_env(marker: dict) -> dict[str, str]:
    env = {}
    for item in ((marker.get("inspect") or {}).get("Config") or {}).get("Env") or []:
        if isinstance(item, str) and "=" in item:
            k, v = item.split("=", 1)
            env[k] = v
    return env


@dataclass
class StartResult:
    project_id: str
    container: str
    image: str
    root: str
    http_port: int | None
    ssh_port: int | None
    already_running: bool
    container_id: str | None = None
    sshd: str | None = None  # the project sshd's state after the start (project_ssh.sshd_state)


def _container_state(cfg: Config, pid: str) -> dict | None:
    res = proc.run(podman.container_inspect(rootfs.podman_storage(cfg), container_name(pid)), mutates=False,
                   check=False)
    return podman.parse_inspect(res.stdout) if res.returncode == 0 else None


def _is_running(info: dict | None) -> bool:
    return bool(info and (info.get("State") or {}).get("Running"))


def start(cfg: Config, project_id: str, *, image: str | None = None) -> StartResult:
    pid = existing_project(cfg, project_id)
    if image is not None:
        rootfs.allowed(cfg, image)  # refuse a bad or disallowed reference before any command runs
    try:
        ulimits = podman.parse_ulimits(cfg["podman.ulimits"])
    except ValueError as exc:
        raise InvalidInput(f"podman.ulimits: {exc}") from None
    proc.which("podman")
    store = rootfs.podman_storage(cfg)
    with locks.hold(cfg.data_dir, _lock(pid), wait=True, timeout=60, what=f"start/stop of project {pid}"):
        with host_db.connect(cfg.data_dir) as conn:
            row = host_db.get_project(conn, pid)
            taken = {p for r in host_db.list_projects(conn) if r["project_id"] != pid
                     for p in (r["http_port"], r["ssh_port"]) if p}
        info = _container_state(cfg, pid)
        if _is_running(info) and row and row["state"] == "running" and overlay.is_mounted(cfg, pid):
            return StartResult(pid, container_name(pid), row["image"], str(layout.project_root_mount(cfg, pid)),
                               row["http_port"], row["ssh_port"], True, info.get("Id"),
                               _revive_sshd(cfg, store, pid, row["ssh_port"]))
        _clear_earlier_run(cfg, store, pid, info, row)
        snapshots_mount = _snapshots_mount(cfg, pid)  # nothing of the project runs now
        limits = _run_quota(cfg, pid, row["run_quota"] if row else None)  # a bad quota refuses the start here
        if not proc.plan_only(f"# record project {pid} starting in host sqlite"):
            with host_db.connect(cfg.data_dir) as conn:
                host_db.upsert_project(conn, pid, state="starting", http_port=None, ssh_port=None)
        try:
            mounted = overlay.mount(cfg, pid, image=image, remount=True)
        except BaseException:
            _record_stopped(cfg, pid)
            raise
        http_port, ssh_port = _free_ports(taken, 2)
        spec, ssh_volumes = _container_spec(cfg, pid, mounted, ulimits, limits, snapshots_mount, http_port, ssh_port)
        res = _launch(cfg, store, pid, spec, limits.disk, [http_port, ssh_port])
        sshd = _start_project_sshd(cfg, store, pid, ssh_port, ssh_volumes)
        if proc.plan_only(f"# record project {pid} running on ports http {http_port}, ssh {ssh_port}"):
            return StartResult(pid, container_name(pid), mounted.image, mounted.merged, None, None, False)
        with host_db.connect(cfg.data_dir) as conn:
            host_db.upsert_project(conn, pid, state="running", image=mounted.image, http_port=http_port,
                                   ssh_port=ssh_port)
        return StartResult(pid, container_name(pid), mounted.image, mounted.merged, http_port, ssh_port, False,
                           res.stdout.strip() or None, sshd)


def _clear_earlier_run(cfg: Config, store, pid: str, info: dict | None, row) -> None:
    """Remove what an earlier run left: its exited or half-made container, the guards of its ports."""
    if info is not None:
        proc.run(podman.rm_container(store, container_name(pid), stop_timeout=cfg["podman.stop_timeout"]))
    if row is not None and not proc.DRY_RUN:  # ports of an earlier run that ended without `project stop`
        isolation.unguard_ports(cfg, pid, [p for p in (row["http_port"], row["ssh_port"]) if p])


def _container_spec(cfg: Config, pid: str, mounted, ulimits, limits, snapshots_mount, http_port: int,
                    ssh_port: int) -> tuple[podman.RunSpec, list | None]:
    """The container's run spec with its isolation and the project sshd's read-only volumes (None
    without project ssh); a bad ssh setup unmounts the root again and refuses the start."""
    key = rootfs.normalize(mounted.image, cfg["rootfs.default_image"]).key
    marker = rootfs.read_marker(cfg, key) or {}
    spec = _run_spec(cfg, pid, mounted, marker, ulimits, limits, snapshots_mount, http_port, ssh_port)
    rng = isolation.get_range(cfg, pid) if isolation.enabled(cfg) and not proc.DRY_RUN else None
    if rng is not None:
        spec.isolation_args = isolation.container_args(cfg, pid, rng)
    ssh_volumes = None
    if project_ssh.enabled(cfg):  # the sshd's bundle and state, read-only (a bad setup refuses the start)
        try:
            ssh_volumes = project_ssh.prepare(cfg, pid, rng.base if rng is not None else 0)
        except BaseException:
            overlay.umount(cfg, pid, stopping=True)
            _record_stopped(cfg, pid)
            raise
        if ssh_volumes is not None:
            spec.readonly_volumes += ssh_volumes
    return spec, ssh_volumes


def _launch(cfg: Config, store, pid: str, spec: podman.RunSpec, disk_limit, ports: list[int]):
    """Set the disk limit, guard the ports and run the container; on failure undo the whole start."""
    monitor = _monitor_dir(cfg, pid)
    if not proc.DRY_RUN:
        monitor.mkdir(mode=0o700, parents=True, exist_ok=True)
        (monitor / "oom").unlink(missing_ok=True)
    try:
        if disk_limit:
            proc.run(btrfs.qgroup_limit(disk_limit, str(layout.project_subvolume(cfg, pid))))
        isolation.guard_ports(cfg, pid, ports)  # before anything listens on them
        _refuse_special_passwd(pid, spec.rootfs)
        # podman's monitor (conmon) inherits our working directory and writes an `oom` file there
        # when the kernel OOM-kills in the container: give it a directory of ours, not the caller's
        # bounded: podman (host root) opens the project's /etc/passwd, which the project may make a FIFO
        return proc.run(podman.run(store, spec), cwd=None if proc.DRY_RUN else str(monitor),
                        timeout=cfg["podman.run_timeout"])
    except BaseException:
        if not proc.DRY_RUN:
            isolation.unguard_ports(cfg, pid, ports)
            proc.run(podman.rm_container(store, container_name(pid), stop_timeout=0), check=False)
            overlay.umount(cfg, pid, stopping=True)
            project_ssh.cleanup(cfg, pid)
            _record_stopped(cfg, pid)
        raise


def _refuse_special_passwd(pid: str, rootfs: str) -> None:
    """podman run (host root) opens the container's /etc/passwd: a FIFO or device the project left there
    would block it. Nothing of the project runs before its start, so the entry seen here (reached
    without following a symlink) is the one podman meets; a symlink is left to podman.run_timeout."""
    if proc.DRY_RUN:
        return
    try:
        with safepath.open_dir(rootfs, ("etc",)) as fd:
            mode = os.stat("passwd", dir_fd=fd, follow_symlinks=False).st_mode
    except (OSError, safepath.UnsafePath):
        return  # no /etc/passwd, or /etc is no plain directory: podman's lookup, bounded by the timeout
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        raise PreconditionFailed(f"project {pid}: its /etc/passwd is not a regular file (podman would block on it)",
                                 hint="replace it with a regular file in the project's overlay upper dir, "
                                      "then start it again")


def _run_spec(cfg: Config, pid: str, mounted, marker: dict, ulimits, limits, snapshots_mount,
              http_port: int, ssh_port: int) -> podman.RunSpec:
    """The container of a project: its merged root, the project subvolume as HOME, its snapshots
    read-only, its two ports on loopback, the image's env and command, the run quota as limits."""
    home = cfg["podman.home"]
    env = _base_env(marker)
    env.update({"HOME": home, "COCALC_PROJECT_ID": pid, "COCALC_HTTP_PORT": str(cfg["podman.http_port"]),
                "COCALC_SSH_PORT": str(cfg["podman.ssh_port"])})
    return podman.RunSpec(
        name=container_name(pid), rootfs=mounted.merged, command=_command(cfg, marker),
        runtime=cfg["podman.runtime"] or None, ulimits=ulimits,
        quota_args=podman.quota_args(memory=limits.memory, swap=limits.swap, pids=limits.pids,
                                     cpu_shares=limits.cpu_shares, tmp=limits.tmp),
        labels={f"{LABEL_PREFIX}.project_id": pid, f"{LABEL_PREFIX}.image": mounted.image,
                f"{LABEL_PREFIX}.managed-by": "cocalc-ctl"},
        env=env, volumes=[(str(layout.project_subvolume(cfg, pid)), home)],
        readonly_volumes=[snapshots_mount],
        publish=[(LOOPBACK, http_port, cfg["podman.http_port"]), (LOOPBACK, ssh_port, cfg["podman.ssh_port"])],
        network=cfg["podman.network"], workdir=home, hostname=container_name(pid)[:63], init=cfg["podman.init"],
        # no container log: podman's default (k8s-file) would write the project's output, unbounded and
        # outside its disk quota, to the host's disk; nothing reads it (crash detection uses inspect)
        log_driver="none")


def _start_project_sshd(cfg: Config, store: podman.Storage, pid: str, ssh_port: int, ssh_volumes) -> str | None:
    """Start the project's sshd in its running container: None when it runs, else why not. The project
    runs without its sshd rather than not at all (an image without /bin/sh, no upstream key here)."""
    sshd = None
    if project_ssh.enabled(cfg) and ssh_volumes is None and not proc.DRY_RUN:
        output.warn(f"project {pid} runs without its sshd: this host has no upstream key "
                    "(run `cocalc-ctl keys ensure`)")
        sshd = "not started"
    if ssh_volumes is not None:
        try:
            project_ssh.start_sshd(cfg, store, container_name(pid))
            sshd = None if proc.DRY_RUN else project_ssh.wait_running(ssh_port)
        except OperationFailed as exc:
            output.warn(f"project {pid}: its sshd did not start: {exc.message}")
            sshd = "not started"
    return sshd


def _revive_sshd(cfg: Config, store: podman.Storage, pid: str, port: int | None) -> str | None:
    """`project start` of a running project starts its sshd again if it is gone (the project may stop it)."""
    if not project_ssh.enabled(cfg) or proc.DRY_RUN or not port or not project_ssh.state_dir(cfg, pid).is_dir():
        return None
    state = project_ssh.sshd_state(port)
    if state == "running":
        return state
    try:
        project_ssh.start_sshd(cfg, store, container_name(pid))
    except OperationFailed as exc:
        output.warn(f"project {pid}: its sshd did not start: {exc.message}")
        return "not started"
    return project_ssh.wait_running(port)


def _run_quota(cfg: Config, pid: str, recorded: str | None) -> quota.RunQuota:
    """The project's run quota (hub, else host record) over this host's defaults; the hub's value is
    recorded in host sqlite for starts while the hub is unreachable."""
    own, source = quota.for_project(cfg, pid, recorded)
    if source == "hub" and not proc.plan_only(f"# record run quota {own.as_dict()} of project {pid}"):
        with host_db.connect(cfg.data_dir) as conn:
            host_db.upsert_project(conn, pid, run_quota=json.dumps(own.as_dict(), sort_keys=True))
    return quota.effective(cfg, own)


def _monitor_dir(cfg: Config, pid: str) -> Path:
    """Working directory of the project's podman monitor (conmon): it leaves `oom` here on an OOM kill."""
    return cfg.data_dir / "conmon" / pid


def _record_stopped(cfg: Config, pid: str) -> None:
    if proc.DRY_RUN:
        return
    with host_db.connect(cfg.data_dir) as conn:
        host_db.upsert_project(conn, pid, state="stopped", http_port=None, ssh_port=None)


@dataclass
class StopResult:
    project_id: str
    container: str
    removed_container: bool
    unmounted: bool


def stop(cfg: Config, project_id: str) -> StopResult:
    pid = existing_project(cfg, project_id)
    store = rootfs.podman_storage(cfg)
    with locks.hold(cfg.data_dir, _lock(pid), wait=True, timeout=float(cfg["podman.stop_timeout"]) + 60,
                    what=f"start/stop of project {pid}"):
        # Ports first: the proxy must stop forwarding before the upstream goes away.
        guarded: list[int] = []
        if not proc.plan_only(f"# clear ports of project {pid} in host sqlite"):
            with host_db.connect(cfg.data_dir) as conn:
                row = host_db.get_project(conn, pid)
                if row is not None:
                    guarded = [p for p in (row["http_port"], row["ssh_port"]) if p]
                    host_db.upsert_project(conn, pid, state="stopping", http_port=None, ssh_port=None)
        existed = False
        if proc.have("podman"):
            existed = _container_state(cfg, pid) is not None
            proc.run(podman.rm_container(store, container_name(pid), stop_timeout=cfg["podman.stop_timeout"]))
        isolation.unguard_ports(cfg, pid, guarded)
        unmounted = overlay.umount(cfg, pid, stopping=True).was_mounted
        project_ssh.cleanup(cfg, pid)
        if not proc.DRY_RUN:
            shutil.rmtree(_monitor_dir(cfg, pid), ignore_errors=True)
        if not proc.plan_only(f"# record project {pid} stopped in host sqlite"):
            with host_db.connect(cfg.data_dir) as conn:
                if host_db.get_project(conn, pid) is not None:
                    host_db.upsert_project(conn, pid, state="stopped")
    return StopResult(pid, container_name(pid), existed, unmounted)


@dataclass
class ProjectStatus:
    project_id: str
    state: str
    container: str
    container_state: str | None
    container_id: str | None
    image: str | None
    current_image: str | None
    root_mounted: bool
    root: str
    http_port: int | None
    ssh_port: int | None
    limits: dict = field(default_factory=dict)  # the run quota in force (from the container and the qgroup)
    exit_code: int | None = None
    oom_kills: int | None = None  # processes the kernel killed for memory in the container (while it runs)
    out_of_memory: bool = False  # the container was OOM-killed or its processes were
    sshd: str | None = None  # running | not answering | stopped (what greets on the ssh port)
    ssh_host_key: str | None = None  # the project sshd's host key (for users' known_hosts)


def _limits_in_force(cfg: Config, pid: str, info: dict | None) -> dict:
    host = (info or {}).get("HostConfig") or {}
    out: dict = {}
    if host.get("Memory"):
        out["memory"] = host["Memory"]
        swap = host.get("MemorySwap") or 0
        out["swap"] = max(swap - host["Memory"], 0) if swap > 0 else None
    if host.get("PidsLimit"):
        out["pids"] = host["PidsLimit"]
    if host.get("CpuShares"):
        out["cpu_shares"] = host["CpuShares"]
    tmp = (host.get("Tmpfs") or {}).get("/tmp")
    if tmp:
        size = next((o.split("=", 1)[1] for o in tmp.split(",") if o.startswith("size=")), None)
        out["tmp"] = int(size) if size and size.isdigit() else size
    sub = layout.project_subvolume(cfg, pid)
    try:
        q = btrfs.qgroups(str(sub)).get(f"0/{btrfs.show(str(sub)).subvolume_id}")
    except Exception:  # noqa: BLE001 (status must answer even when btrfs cannot)
        q = None
    if q is not None and q.max_referenced:
        out["disk"] = q.max_referenced
    return {k: v for k, v in out.items() if v is not None}


def status(cfg: Config, project_id: str) -> ProjectStatus:
    pid = existing_project(cfg, project_id)
    row = None
    if host_db.db_path(cfg.data_dir).exists():
        with host_db.connect(cfg.data_dir) as conn:
            row = host_db.get_project(conn, pid)
    info = _container_state(cfg, pid) if proc.have("podman") else None
    cstate = ((info or {}).get("State") or {}).get("Status") if info else None
    state = row["state"] if row else "unregistered"
    cst = (info or {}).get("State") or {}
    exit_code = cst.get("ExitCode") if info and not _is_running(info) else None
    kills = cgroups.oom_kills(cst["Pid"]) if _is_running(info) and cst.get("Pid") else None
    limits = _limits_in_force(cfg, pid, info)
    # podman's OOMKilled is unreliable on hybrid cgroups: its monitor's `oom` file is what tells. An exit
    # status of 137 alone does not: a project that SIGKILLs its own processes exits so too
    oom = bool(cst.get("OOMKilled")) or bool(kills) \
        or (info is not None and (_monitor_dir(cfg, pid) / "oom").exists())
    if state == "running" and not _is_running(info):
        state = "crashed (out of memory)" if oom else "crashed"  # sqlite says running but the container is not
    return ProjectStatus(pid, state, container_name(pid), cstate, (info or {}).get("Id"),
                         row["image"] if row else None, overlay.current_image(cfg, pid), overlay.is_mounted(cfg, pid),
                         str(layout.project_root_mount(cfg, pid)), row["http_port"] if row else None,
                         row["ssh_port"] if row else None, limits, exit_code, kills, oom,
                         project_ssh.sshd_state(row["ssh_port"] if row and _is_running(info) else None),
                         project_ssh.host_public_key(cfg, pid))


def managed_containers(cfg: Config) -> list[str]:
    """Project ids of every container (running or not) this host's podman storage has labelled as ours."""
    res = proc.run(podman.ps_labelled(rootfs.podman_storage(cfg), f"{LABEL_PREFIX}.managed-by=cocalc-ctl",
                                      f"{LABEL_PREFIX}.project_id"), mutates=False, check=False)
    return [p for p in res.stdout.split() if ids.is_uuid(p)] if res.returncode == 0 else []
