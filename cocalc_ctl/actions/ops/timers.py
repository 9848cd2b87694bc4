"""systemd units and crontab lines for the periodic and long-running cocalc-ctl jobs.

Everything is generated from one table, `JOBS`: adding a command to the schedule is one line.
A job with `on_calendar` becomes a oneshot service plus a timer (and a crontab line); a job
without one is a long-running service with a restart policy. Periodic runs are wrapped in
`flock --nonblock` on `<data_dir>/locks/timer-<job>.lock`, so a run that overruns its interval is
never overlapped by the next one, whether it was started by systemd, cron or an operator (the
commands take their own finer-grained locks as well). After each periodic run the metrics
textfile is refreshed (`ExecStopPost=`, which runs on success and failure alike).
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from cocalc_ctl import proc, safepath
from cocalc_ctl.config import DEFAULT_CONFIG_PATH, Config
from cocalc_ctl.errors import InvalidInput, NotFound, PreconditionFailed

UNIT_PREFIX = "cocalc-ctl-"
MARKER = "# Managed by cocalc-ctl: `cocalc-ctl timers install` writes this file and `timers remove` deletes it."
BUSY_EXIT = 4  # the lock is held by an earlier run: same code as errors.Busy

# Capabilities a root process needs to snapshot, send/receive and read every project's files.
BTRFS_CAPS = "CAP_SYS_ADMIN CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH CAP_FOWNER CAP_CHOWN CAP_FSETID"


@dataclass(frozen=True)
class Job:
    name: str                        # unit name is cocalc-ctl-<name>.{service,timer}
    command: tuple[str, ...]         # cocalc-ctl NOUN VERB [ARGS]; empty when `program` is set
    description: str
    on_calendar: str | None = None   # systemd OnCalendar=; None = long-running service
    cron: str | None = None          # crontab schedule; "daily" picks a stable per-host minute/hour
    random_delay: str | None = None  # RandomizedDelaySec= (fixed per host with FixedRandomDelay=)
    role: str = "host"               # host (every project host) or hub (the control-plane machine)
    default: bool = True             # installed unless --only chooses otherwise
    profile: str = "btrfs"           # hardening profile, see PROFILES
    batch: bool = False              # low CPU and IO priority (backups, garbage collection)
    program: tuple[str, ...] = ()    # an external program instead of cocalc-ctl ({sshd}, {receiver_config})
    restart: str = "on-failure"      # Restart= of a long-running service


JOBS: list[Job] = [
    Job("snapshot-auto", ("snapshot", "auto"), "Snapshot changed projects and prune old snapshots",
        on_calendar="*:0/15", cron="*/15 * * * *", random_delay="60"),
    Job("backup-due", ("backup", "due"), "Back up projects changed since their last backup",
        on_calendar="daily", cron="daily", random_delay="3h", profile="backup", batch=True),
    Job("keys-sync", ("keys", "sync"), "Fetch trusted peers' public keys from the hub",
        on_calendar="*:0/5", cron="*/5 * * * *", random_delay="30", profile="state"),
    Job("keys-watch", ("keys", "watch"), "Follow the hub's key changes (LISTEN) instead of polling",
        profile="state", default=False),
    Job("rootfs-gc", ("rootfs", "gc"), "Remove root filesystem images no project uses",
        on_calendar="daily", cron="daily", random_delay="1h", profile="rootfs", batch=True),
    Job("move-worker", ("move", "worker"), "Advance queued project moves (hub)", role="hub", profile="move"),
    Job("sshpiper-serve", ("sshpiper", "serve"), "SSH auth hook for sshpiperd's REST plugin", profile="auth",
        restart="always"),
    Job("receiver-sshd", (), "OpenSSH server for incoming project moves", profile="sshd",
        program=("{sshd}", "-D", "-e", "-f", "{receiver_config}")),
]

ROLES = ("host", "hub", "all")


@dataclass(frozen=True)
class Profile:
    caps: str | None                  # CapabilityBoundingSet= (None: leave unset)
    protect_system: str | None = "strict"
    private_devices: bool = False     # btrfs needs /dev/btrfs-control and the pool's block device
    rw_extra: tuple[str, ...] = ()
    network: bool = False             # talks to the hub or peers: wait for the network
    sandbox: bool = True              # the generic kernel/namespace hardening block


PROFILES: dict[str, Profile] = {
    "btrfs": Profile(BTRFS_CAPS),
    "move": Profile(BTRFS_CAPS, network=True),
    "backup": Profile(BTRFS_CAPS, network=True),
    "rootfs": Profile(BTRFS_CAPS, rw_extra=("-/var/lib/containers", "-/run/containers")),
    "state": Profile("CAP_DAC_OVERRIDE CAP_FOWNER CAP_CHOWN", private_devices=True, network=True),
    "auth": Profile("CAP_DAC_READ_SEARCH", private_devices=True, network=True),
    # sshd changes users and runs the forced command `move recv` (btrfs receive): no sandbox here,
    # the receiver's own sshd_config (ForceCommand, AllowUsers) is what confines it.
    "sshd": Profile(None, protect_system=None, network=True, sandbox=False),
}


BTRFS_PROFILES = ("btrfs", "move", "backup", "rootfs")


def job_names() -> list[str]:
    return [j.name for j in JOBS]


def get_job(name: str) -> Job:
    for j in JOBS:
        if j.name == name:
            return j
    raise InvalidInput(f"unknown job {name!r}", hint=f"choose from: {', '.join(job_names())}")


def select(role: str = "host", only: list[str] | None = None) -> list[Job]:
    if role not in ROLES:
        raise InvalidInput(f"unknown role {role!r}", hint="use host, hub or all")
    if only:
        wanted = {get_job(n).name for n in only}
        return [j for j in JOBS if j.name in wanted]
    return [j for j in JOBS if j.default and (role == "all" or j.role == role)]


# -- rendering --------------------------------------------------------------------------------

@dataclass
class Context:
    """Everything host-specific a unit needs, resolved once from the config."""

    bin: str
    config_file: str | None
    btrfs_root: str
    data_dir: str
    textfile_dir: str
    receiver_config: str
    flock: str = "/usr/bin/flock"
    sshd: str = "/usr/sbin/sshd"
    nice: str = "/usr/bin/nice"
    ionice: str = "/usr/bin/ionice"
    seed: str = ""


def default_bin(cfg: Config) -> str:
    """ops.bin, else the program running now, else cocalc-ctl on PATH; refuse rather than write a unit
    that starts a file which does not exist."""
    from cocalc_ctl import program

    if cfg["ops.bin"]:
        return cfg["ops.bin"]
    running = program.running_program()
    if running:
        return running
    found = shutil.which("cocalc-ctl")
    if found:
        return os.path.abspath(found)
    raise PreconditionFailed("cannot tell which cocalc-ctl executable the units should run",
                             hint="pass --bin PATH (or set ops.bin), e.g. the path `command -v cocalc-ctl` prints")


def context(cfg: Config, *, bin: str | None = None) -> Context:
    if bin is not None and not os.path.isabs(bin):
        raise InvalidInput(f"--bin must be an absolute path, got {bin!r}")
    config_file = cfg.file if cfg.file and os.path.abspath(cfg.file) != DEFAULT_CONFIG_PATH else None
    from cocalc_ctl.actions.host.identity import host_id

    return Context(
        bin=bin or default_bin(cfg),
        config_file=os.path.abspath(config_file) if config_file else None,
        btrfs_root=str(cfg.btrfs_root),
        data_dir=str(cfg.data_dir),
        textfile_dir=cfg["metrics.textfile_dir"],
        receiver_config=cfg["ops.receiver_sshd_config"] or str(cfg.data_dir / "ssh" / "receiver_sshd_config"),
        seed=host_id(cfg) or cfg.host_name,
    )


def _q(arg: str) -> str:
    """Quote one argument for a unit's Exec line (systemd honours double quotes and backslashes)."""
    if arg and all(c.isalnum() or c in "/._-:=@+," for c in arg):
        return arg.replace("%", "%%")
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'


def cli_argv(ctx: Context, *args: str) -> list[str]:
    return [ctx.bin, *(["--config", ctx.config_file] if ctx.config_file else []), "-q", *args]


def lock_file(ctx: Context, job: Job) -> str:
    return f"{ctx.data_dir}/locks/timer-{job.name}.lock"


def run_argv(ctx: Context, job: Job) -> list[str]:
    """The command a job runs (for periodic jobs: inside the flock guard)."""
    if job.program:
        return [p.format(sshd=ctx.sshd, receiver_config=ctx.receiver_config) for p in job.program]
    argv = cli_argv(ctx, *job.command)
    if job.on_calendar:
        argv = [ctx.flock, "--nonblock", "--conflict-exit-code", str(BUSY_EXIT), lock_file(ctx, job), *argv]
    return argv


def unit_names(job: Job) -> list[str]:
    base = UNIT_PREFIX + job.name
    return [base + ".service", base + ".timer"] if job.on_calendar else [base + ".service"]


def _section(title: str, items: list[tuple[str, str]]) -> list[str]:
    return [f"[{title}]", *[f"{k}={v}" for k, v in items], ""]


def render_service(ctx: Context, job: Job) -> str:
    prof = PROFILES[job.profile]
    what = " ".join(job.command) if job.command else "sshd"
    unit: list[tuple[str, str]] = [("Description", f"cocalc-ctl {what}: {job.description}"),
                                   ("Documentation", "man:cocalc-ctl(1)")]
    if prof.network:
        unit += [("Wants", "network-online.target"), ("After", "network-online.target")]
    if job.profile in BTRFS_PROFILES:
        unit.append(("RequiresMountsFor", f"{_q(ctx.btrfs_root)} {_q(ctx.data_dir)}"))
    if not job.on_calendar:
        unit += [("StartLimitIntervalSec", "300"), ("StartLimitBurst", "10")]

    svc: list[tuple[str, str]] = []
    if job.on_calendar:
        svc += [("Type", "oneshot"), ("ExecStart", " ".join(_q(a) for a in run_argv(ctx, job))),
                ("ExecStopPost", "-" + " ".join(_q(a) for a in cli_argv(ctx, "metrics", "write")))]
        # A refused overlap (exit 4) stays a failure on purpose: it means a run overran its interval.
    else:
        svc.append(("Type", "exec"))
        if job.program:
            svc.append(("ExecStartPre", " ".join(_q(a) for a in [ctx.sshd, "-t", "-f", ctx.receiver_config])))
        svc += [("ExecStart", " ".join(_q(a) for a in run_argv(ctx, job)))]
        if job.program:
            # KillMode=process: restarting sshd must not kill a receive that is in flight (as ssh.service)
            svc += [("ExecReload", "/bin/kill -HUP $MAINPID"), ("KillMode", "process"), ("RuntimeDirectory", "sshd"),
                    ("RuntimeDirectoryMode", "0755"), ("RuntimeDirectoryPreserve", "yes")]
        svc += [("Restart", job.restart), ("RestartSec", "5s")]
    if job.batch:
        svc += [("Nice", "10"), ("CPUSchedulingPolicy", "batch"), ("IOSchedulingClass", "idle")]
    if prof.sandbox:
        # "-": a missing path is skipped instead of failing namespace setup, so the command itself runs
        # and says what is missing (no pool yet, a hub-only machine without data_dir...)
        rw = [ctx.btrfs_root] if job.profile in BTRFS_PROFILES else []
        rw = [f"-{p}" for p in (*rw, ctx.data_dir, ctx.textfile_dir)] + list(prof.rw_extra)
        svc += [("UMask", "0077"), ("ProtectSystem", prof.protect_system or "full"),
                ("ReadWritePaths", " ".join(_q(p) for p in rw)), ("ProtectHome", "read-only"), ("PrivateTmp", "true"),
                ("NoNewPrivileges", "true")]
        if prof.caps is not None:
            svc.append(("CapabilityBoundingSet", prof.caps))
        if prof.private_devices:
            svc.append(("PrivateDevices", "true"))
        svc += [("ProtectKernelTunables", "true"), ("ProtectKernelModules", "true"),
                ("ProtectControlGroups", "true"), ("ProtectClock", "true"), ("ProtectHostname", "true"),
                ("RestrictSUIDSGID", "true"), ("RestrictRealtime", "true"), ("LockPersonality", "true"),
                ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6 AF_NETLINK"),
                ("SystemCallArchitectures", "native")]
    else:
        svc.append(("PrivateTmp", "true"))
    lines = [MARKER, *_section("Unit", unit), *_section("Service", svc)]
    if not job.on_calendar:
        lines += _section("Install", [("WantedBy", "multi-user.target")])
    return "\n".join(lines).rstrip("\n") + "\n"


def render_timer(ctx: Context, job: Job) -> str:
    assert job.on_calendar
    timer = [("OnCalendar", job.on_calendar), ("Persistent", "true")]
    if job.random_delay:
        timer += [("RandomizedDelaySec", job.random_delay), ("FixedRandomDelay", "true")]
    lines = [MARKER,
             *_section("Unit", [("Description", f"cocalc-ctl {' '.join(job.command)} ({job.on_calendar})"),
                                ("Documentation", "man:cocalc-ctl(1)")]),
             *_section("Timer", timer),
             *_section("Install", [("WantedBy", "timers.target")])]
    return "\n".join(lines).rstrip("\n") + "\n"


def render_units(ctx: Context, jobs: list[Job]) -> dict[str, str]:
    out: dict[str, str] = {}
    for job in jobs:
        out[UNIT_PREFIX + job.name + ".service"] = render_service(ctx, job)
        if job.on_calendar:
            out[UNIT_PREFIX + job.name + ".timer"] = render_timer(ctx, job)
    return out


def cron_schedule(ctx: Context, job: Job) -> str:
    """A crontab schedule; "daily" becomes a minute and an early-morning hour that are stable per host
    (derived from the host id) so a fleet does not start its backups in the same minute."""
    assert job.cron
    if job.cron != "daily":
        return job.cron
    h = int(hashlib.sha256(f"{ctx.seed}/{job.name}".encode()).hexdigest()[:8], 16)
    return f"{h % 60} {1 + (h // 60) % 5} * * *"


def render_crontab(ctx: Context, jobs: list[Job], *, user: str = "root") -> str:
    """Lines for /etc/cron.d/cocalc-ctl (with a user field); services become comments."""
    lines = ["# cocalc-ctl schedule for hosts without systemd (install as /etc/cron.d/cocalc-ctl).",
             "# Generated by `cocalc-ctl timers cron`. A run that overlaps the previous one exits 4 (flock).",
             "SHELL=/bin/sh", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", ""]
    metrics = shlex.join(cli_argv(ctx, "metrics", "write"))
    for job in jobs:
        if job.on_calendar and job.cron:
            argv = run_argv(ctx, job)
            if job.batch:
                argv = [ctx.nice, "-n", "10", ctx.ionice, "-c", "3", *argv]
            lines.append(f"# {job.description}")
            lines.append(f"{cron_schedule(ctx, job)} {user} {shlex.join(argv)}; {metrics} >/dev/null 2>&1")
        else:
            lines.append(f"# {job.description}: a long-running service, run it under a supervisor:")
            lines.append(f"#   {shlex.join(run_argv(ctx, job))}")
    return "\n".join(lines) + "\n"


# -- install / list / remove --------------------------------------------------------------------

def systemd_running() -> bool:
    """sd_booted(): PID 1 is systemd."""
    return os.path.isdir("/run/systemd/system")


@dataclass
class InstallResult:
    unit_dir: str
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    enabled: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _manages_systemd(cfg: Config, unit_dir: str) -> bool:
    return os.path.abspath(unit_dir) == os.path.abspath(cfg["ops.unit_dir"]) and systemd_running()


def install(cfg: Config, *, unit_dir: str | None = None, role: str = "host", only: list[str] | None = None,
            bin: str | None = None, enable: bool = True) -> InstallResult:
    jobs = select(role, only)
    ctx = context(cfg, bin=bin)
    unit_dir = os.path.abspath(unit_dir or cfg["ops.unit_dir"])
    units = render_units(ctx, jobs)
    result = InstallResult(unit_dir)
    d = Path(unit_dir)
    if not d.is_dir() and not proc.plan_only(f"mkdir -p {shlex.quote(unit_dir)}"):
        d.mkdir(parents=True)
    for name, text in units.items():
        path = d / name
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            result.unchanged.append(name)
            continue
        if path.exists() and MARKER not in path.read_text(encoding="utf-8", errors="replace"):
            raise InvalidInput(f"{path} exists and was not written by cocalc-ctl; refusing to overwrite it",
                               hint="move it aside, or choose another --unit-dir")
        if not proc.plan_only(f"install -m 0644 /dev/stdin {shlex.quote(str(path))}  # {len(text)} bytes"):
            safepath.write_atomic(path, text, mode=0o644)
        result.written.append(name)
    if _manages_systemd(cfg, unit_dir):
        proc.run(["systemctl", "daemon-reload"])
        if enable:
            start = [UNIT_PREFIX + j.name + (".timer" if j.on_calendar else ".service") for j in jobs]
            proc.run(["systemctl", "enable", "--now", *start])
            result.enabled = start
    else:
        why = "systemd is not running here" if not systemd_running() else f"{unit_dir} is not {cfg['ops.unit_dir']}"
        result.notes.append(f"units written only ({why}); enable them with: systemctl daemon-reload && "
                            f"systemctl enable --now " + " ".join(
                                UNIT_PREFIX + j.name + (".timer" if j.on_calendar else ".service") for j in jobs))
    return result


@dataclass
class JobStatus:
    name: str
    kind: str
    schedule: str
    role: str
    default: bool
    command: str
    units: list[str]
    installed: str          # yes | outdated | no
    enabled: str | None     # systemctl is-enabled (None when systemd is not running)
    active: str | None


def _systemctl_state(verb: str, unit: str) -> str:
    res = proc.run(["systemctl", verb, unit], mutates=False, check=False)
    return (res.stdout.strip().splitlines() or ["unknown"])[0]


def list_jobs(cfg: Config, *, unit_dir: str | None = None, bin: str | None = None) -> list[JobStatus]:
    ctx = context(cfg, bin=bin)
    unit_dir = os.path.abspath(unit_dir or cfg["ops.unit_dir"])
    query = _manages_systemd(cfg, unit_dir)
    out = []
    for job in JOBS:
        rendered = render_units(ctx, [job])
        states = []
        for name, text in rendered.items():
            path = Path(unit_dir) / name
            if not path.is_file():
                states.append("no")
            else:
                states.append("yes" if path.read_text(encoding="utf-8", errors="replace") == text else "outdated")
        installed = "no" if all(s == "no" for s in states) else ("yes" if all(s == "yes" for s in states) else "outdated")
        main_unit = UNIT_PREFIX + job.name + (".timer" if job.on_calendar else ".service")
        out.append(JobStatus(
            job.name, "timer" if job.on_calendar else "service", job.on_calendar or "always running", job.role,
            job.default, shlex.join(run_argv(ctx, job)), list(rendered), installed,
            _systemctl_state("is-enabled", main_unit) if query else None,
            _systemctl_state("is-active", main_unit) if query else None))
    return out


@dataclass
class RemoveResult:
    unit_dir: str
    removed: list[str] = field(default_factory=list)
    disabled: list[str] = field(default_factory=list)


def managed_units(unit_dir: str) -> list[Path]:
    d = Path(unit_dir)
    if not d.is_dir():
        return []
    found = []
    for p in sorted(d.glob(UNIT_PREFIX + "*")):
        if p.suffix in (".service", ".timer") and p.is_file():
            try:
                head = p.read_text(encoding="utf-8", errors="replace")[:400]
            except OSError:
                continue
            if MARKER in head:
                found.append(p)
    return found


def remove(cfg: Config, *, unit_dir: str | None = None, only: list[str] | None = None) -> RemoveResult:
    unit_dir = os.path.abspath(unit_dir or cfg["ops.unit_dir"])
    units = managed_units(unit_dir)
    if only:
        keep = {n for j in (get_job(x) for x in only) for n in unit_names(j)}
        units = [u for u in units if u.name in keep]
    result = RemoveResult(unit_dir)
    if not units:
        if only:
            raise NotFound(f"no cocalc-ctl units for {', '.join(only)} in {unit_dir}")
        return result
    if _manages_systemd(cfg, unit_dir):
        names = [u.name for u in units]
        proc.run(["systemctl", "disable", "--now", *names], check=False)
        result.disabled = names
    for u in units:
        if not proc.plan_only(f"rm -f {shlex.quote(str(u))}"):
            u.unlink(missing_ok=True)
        result.removed.append(u.name)
    if _manages_systemd(cfg, unit_dir):
        proc.run(["systemctl", "daemon-reload"])
    return result


def crontab(cfg: Config, *, role: str = "host", only: list[str] | None = None, bin: str | None = None,
            user: str = "root") -> str:
    if not user or not all(c.isalnum() or c in "._-" for c in user):
        raise InvalidInput(f"invalid cron user {user!r}")
    return render_crontab(context(cfg, bin=bin), select(role, only), user=user)
