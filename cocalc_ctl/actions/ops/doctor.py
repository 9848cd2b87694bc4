"""`doctor`: check everything a host needs and say, per check, what is wrong and how to fix it.

Each check owns one concern and reports ok / warn / fail (or skip when a check it depends on
already failed, so one broken prerequisite makes exactly one line fail): the pool and its quotas,
each required program (with its version), secrets file modes, the host's keys and their hub
registration, the hub database and its schema, the backup repository, the sshpiper token (and that
no secret shows in any process's argv), the clock, and free space. Nothing is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cocalc_ctl import proc
from cocalc_ctl.config import Config, redact_dsn
from cocalc_ctl.errors import CocalcError
from cocalc_ctl.tools import mounts, programs

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"

# Agreed key and token locations (shared with keys, sshpiper and move).
HOST_TO_HOST_KEY = Path("host-to-host/id_ed25519")
SSHPIPERD_HOST_KEY = Path("sshpiperd/host_key")
SSHPIPER_TOKEN = Path("sshpiper/token")

# (check name, candidates: the first one found is used, required?)
PROGRAMS: list[tuple[str, tuple[str, ...], bool]] = [
    ("btrfs", ("btrfs",), True),
    ("backup-engine", ("rustic", "restic"), True),
    ("podman", ("podman",), True),
    ("container-runtime", ("runc", "crun"), True),
    ("ssh", ("ssh",), True),
    ("sshd", ("sshd",), True),
    ("rsync", ("rsync",), True),
    ("lz4", ("lz4",), False),
    ("zstd", ("zstd",), False),
]

MAX_CLOCK_SKEW_WARN = 2.0
MAX_CLOCK_SKEW_FAIL = 60.0


@dataclass
class Check:
    name: str
    status: str
    detail: str
    hint: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    checks: list[Check]
    counts: dict[str, int]
    failed: bool


def _pkg(program: str) -> str:
    return proc.DEBIAN_PACKAGES.get(program, program)


# -- individual checks ---------------------------------------------------------------------------

def check_pool(cfg: Config) -> Check:
    root = str(cfg.btrfs_root)
    m = mounts.mount_at(root)
    if m is None or m.fstype != "btrfs":
        what = f"{root} is not a mount point" if m is None else f"{root} is mounted with {m.fstype}, not btrfs"
        return Check("pool", FAIL, what,
                     f"mount the btrfs pool at {root}, or create one: cocalc-ctl host init --loopback 10G")
    if not programs.locate("btrfs"):
        return Check("pool", WARN, f"btrfs mounted at {root} ({m.source}); quotas unknown (no btrfs program)")
    res = proc.run(["btrfs", "qgroup", "show", root], mutates=False, check=False, timeout=30)
    if res.returncode != 0 and os.geteuid() != 0:
        return Check("pool", WARN, f"btrfs mounted at {root}; quotas unknown (not root)", "run doctor as root")
    if res.returncode != 0:
        return Check("pool", FAIL, f"btrfs mounted at {root} but quotas are off",
                     f"enable them: btrfs quota enable {root}")
    return Check("pool", OK, f"btrfs mounted at {root} ({m.source}), quotas on")


def check_pool_hardening(cfg: Config, pool_ok: bool) -> Check:
    """The pool must be no launch pad: nosuid,nodev and a top directory only root can enter."""
    from cocalc_ctl.actions.project import isolation

    if not pool_ok:
        return Check("pool-hardening", SKIP, "no pool (see the pool check)")
    problems = isolation.pool_problems(cfg)
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        return Check("pool-hardening", FAIL, problems[0][0] + more, problems[0][1],
                     data={"problems": [p for p, _ in problems]})
    return Check("pool-hardening", OK, f"{cfg.btrfs_root} mounted nosuid,nodev, mode 0700")


def check_program(name: str, candidates: tuple[str, ...], required: bool) -> Check:
    for prog in candidates:
        exe = programs.locate(prog, sbin=prog == "sshd")
        if not exe:
            continue
        res = proc.run(programs.version_argv(exe), mutates=False, check=False, timeout=20)
        version = programs.parse_version(f"{res.stdout}\n{res.stderr}")
        if res.returncode != 0 and not version:
            return Check(name, FAIL, f"{exe} does not run (exit {res.returncode})",
                         f"reinstall it: apt-get install --reinstall {_pkg(prog)}")
        return Check(name, OK, f"{prog} {version or '(version unknown)'} at {exe}",
                     data={"program": prog, "path": exe, "version": version})
    names = " or ".join(candidates)
    hint = f"install it: apt-get install {_pkg(candidates[-1])}"
    if not required:
        return Check(name, WARN, f"{names} not found (optional: staged-move compression)", hint)
    return Check(name, FAIL, f"{names} not found on PATH", hint)


def _mode_problems(path: Path, uid: int) -> list[tuple[str, str]]:
    """(problem, fix) for a secrets tree: dirs 0700, files without group/other bits (`.pub` files may be
    readable, never writable, by others), everything owned by us."""
    out = []
    for root, dirs, files in os.walk(path):
        for name in [None, *files]:
            p = Path(root) if name is None else Path(root) / name
            try:
                st = p.lstat()
            except OSError:
                continue
            if stat.S_ISLNK(st.st_mode):
                continue
            mode = stat.S_IMODE(st.st_mode)
            want = 0o700 if name is None else 0o600
            public = name is not None and name.endswith(".pub")  # public keys may be world-readable
            if mode & (0o022 if public else 0o077):
                out.append((f"{p} is mode {mode:04o}", f"chmod {want:o} {p}"))
            elif st.st_uid != uid:
                out.append((f"{p} is owned by uid {st.st_uid}", f"chown {uid} {p}"))
    return out


def check_secrets(cfg: Config) -> Check:
    d = cfg.secrets_dir
    if not d.is_dir():
        return Check("secrets", FAIL, f"secrets dir {d} does not exist", "create it: cocalc-ctl host init")
    problems = _mode_problems(d, os.geteuid())
    pw = cfg["backup.password_file"]
    if pw and os.path.exists(pw):
        problems += _mode_problems(Path(pw), os.geteuid()) if os.path.isdir(pw) else [
            p for p in _file_mode_problem(Path(pw))]
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        return Check("secrets", FAIL, problems[0][0] + more, problems[0][1],
                     data={"problems": [p for p, _ in problems]})
    return Check("secrets", OK, f"{d} and the files in it are private (0700/0600)")


def _file_mode_problem(p: Path) -> list[tuple[str, str]]:
    mode = stat.S_IMODE(p.stat().st_mode)
    return [(f"{p} is mode {mode:04o}", f"chmod 600 {p}")] if mode & 0o077 else []


def check_keys(cfg: Config) -> Check:
    missing = []
    for rel in (HOST_TO_HOST_KEY, SSHPIPERD_HOST_KEY):
        for p in (cfg.secrets_dir / rel, cfg.secrets_dir / f"{rel}.pub"):
            if not p.is_file() or p.stat().st_size == 0:
                missing.append(str(p))
    if missing:
        more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
        return Check("keys", FAIL, f"missing {missing[0]}{more}", "create them: cocalc-ctl keys ensure",
                     data={"missing": missing})
    return Check("keys", OK, "host-to-host and sshpiperd keypairs present")


def check_sshpiper_token(cfg: Config) -> Check:
    p = cfg.secrets_dir / SSHPIPER_TOKEN
    if not p.is_file() or p.stat().st_size == 0:
        return Check("sshpiper-token", FAIL, f"{p} is missing or empty",
                     "create it: cocalc-ctl keys ensure")
    return Check("sshpiper-token", OK, f"{p} present")


def _argv_secrets(cfg: Config) -> list[tuple[str, bytes]]:
    """(label, bytes) of the secrets cheap to look for in a process list: the sshpiper REST token and the
    backup repository password (a file, not a directory of them)."""
    out = []
    try:
        token = (cfg.secrets_dir / SSHPIPER_TOKEN).read_bytes().strip()
        if len(token) >= 16:
            out.append(("the sshpiper REST token", token))
    except OSError:
        pass
    pw = cfg["backup.password_file"]
    if pw and os.path.isfile(pw):
        try:
            with open(pw, "rb") as f:
                first = (f.read(4096).splitlines() or [b""])[0].strip()
            if len(first) >= 8:
                out.append(("the backup repository password", first))
        except OSError:
            pass
    return out


def check_argv_secrets(cfg: Config, proc_dir: str = "/proc") -> Check:
    """No cocalc-ctl secret in any process's command line (`ps` shows argv to every local user)."""
    wanted = _argv_secrets(cfg)
    if not wanted:
        return Check("secrets-in-argv", SKIP, "no secret to look for (see the sshpiper-token check)")
    found: list[tuple[str, int, str]] = []
    scanned = 0
    me = os.getpid()
    for name in os.listdir(proc_dir):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"{proc_dir}/{name}/cmdline", "rb") as f:
                argv = f.read()
        except OSError:
            continue  # gone, or a kernel thread
        scanned += 1
        for label, secret in wanted:
            if secret in argv:
                try:
                    with open(f"{proc_dir}/{name}/comm", "rb") as f:
                        comm = f.read().decode("utf-8", "replace").strip()[:32]
                except OSError:
                    comm = "?"
                found.append((label, int(name), comm))
    if found:
        label, pid, comm = found[0]
        more = f" (+{len(found) - 1} more)" if len(found) > 1 else ""
        return Check("secrets-in-argv", FAIL, f"{label} is in the command line of pid {pid} ({comm}), "
                                              f"readable by every local user{more}",
                     "pass it by file or environment (sshpiperd: `cocalc-ctl sshpiper config --sshpiperd "
                     "--write-env`), then rotate it: it must be treated as leaked",
                     data={"processes": [{"pid": p, "comm": c, "secret": lb} for lb, p, c in found]})
    return Check("secrets-in-argv", OK, f"no cocalc-ctl secret in the argv of {scanned} processes",
                 data={"processes_scanned": scanned})


def _hub_state(cfg: Config) -> tuple[Check, bool]:
    """The hub check, and whether the hub can be queried by the checks after it."""
    dsn = cfg["hub_dsn"]
    if not dsn:
        return Check("hub", WARN, "hub_dsn is not configured (moves, key sync and registration are off)",
                     "set hub_dsn in the config or COCALC_CTL_HUB_DSN"), False
    from cocalc_ctl.state import hub_db

    try:
        version = hub_db.schema_version(dsn)
    except CocalcError as exc:
        return Check("hub", FAIL, exc.message, "check hub_dsn and that PostgreSQL is running and reachable"), False
    except Exception as exc:  # e.g. a malformed DSN or a permission error on the schema table
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        return Check("hub", FAIL, f"hub query failed: {redact_dsn(first)}", "check hub_dsn and the role's grants"), False
    want = len(hub_db.MIGRATIONS)
    if version < want:
        return Check("hub", FAIL, f"hub schema at version {version}, this cocalc-ctl needs {want}",
                     "run: cocalc-ctl hub migrate"), True
    return Check("hub", OK, f"hub reachable ({redact_dsn(dsn)}), schema version {version}",
                 data={"schema_version": version}), True


def check_registration(cfg: Config, hub_ok: bool) -> Check:
    from cocalc_ctl.actions.host.identity import host_id

    if not hub_ok:
        return Check("keys-registered", SKIP, "hub not available (see the hub check)")
    hid = host_id(cfg)
    if not hid:
        return Check("keys-registered", FAIL, "this host has no id", "run: cocalc-ctl host init")
    from cocalc_ctl.state import hub_db

    try:
        with hub_db.connect(cfg["hub_dsn"]) as conn:
            row = conn.execute("SELECT host_to_host_public_key, sshpiperd_public_key FROM project_hosts "
                               "WHERE id = %s", (hid,)).fetchone()
    except Exception as exc:  # psycopg errors: report, do not crash the report
        return Check("keys-registered", FAIL, f"cannot read project_hosts: {str(exc).splitlines()[0][:120]}",
                     "run: cocalc-ctl hub migrate")
    if row is None:
        return Check("keys-registered", FAIL, f"host {hid} is not registered with the hub",
                     "run: cocalc-ctl keys register")
    stale = []
    for col, rel, value in (("host_to_host_public_key", HOST_TO_HOST_KEY, row[0]),
                            ("sshpiperd_public_key", SSHPIPERD_HOST_KEY, row[1])):
        local = _pub_key(cfg.secrets_dir / f"{rel}.pub")
        if local and _pub_key_text(value) != local:
            stale.append(col)
    if stale:
        return Check("keys-registered", FAIL, f"hub has a different {stale[0]} for host {hid}",
                     "run: cocalc-ctl keys register")
    return Check("keys-registered", OK, f"host {hid} registered with matching public keys")


def _pub_key_text(line: str | None) -> str | None:
    if not line:
        return None
    parts = line.split()
    return " ".join(parts[:2]) if len(parts) >= 2 else None


def _pub_key(path: Path) -> str | None:
    try:
        return _pub_key_text(path.read_text())
    except OSError:
        return None


def check_backup_repo(cfg: Config) -> Check:
    repo = cfg["backup.repo"]
    if not repo:
        return Check("backup-repo", WARN, "backup.repo is not configured (backups are off)",
                     "set backup.repo and backup.password_file")
    engine = cfg["backup.engine"]
    candidates = ("rustic", "restic") if engine == "auto" else (engine,)
    exe = next((e for e in (programs.locate(c) for c in candidates) if e), None)
    if exe is None:
        return Check("backup-repo", SKIP, "no backup engine installed (see the backup-engine check)")
    name = os.path.basename(exe)
    pw = cfg["backup.password_file"]
    if not pw and not any(os.environ.get(f"{p}_PASSWORD{s}") for p in ("RESTIC", "RUSTIC") for s in ("", "_FILE")):
        return Check("backup-repo", FAIL, "backup.password_file is not set", "set backup.password_file (mode 0600)")
    if pw and not os.path.isfile(pw):
        return Check("backup-repo", FAIL, f"password file {pw} does not exist", "create it (mode 0600)")
    res = proc.run(programs.repo_probe(name, exe), mutates=False, check=False, timeout=60,
                   env=programs.repo_env(name, repo, pw))
    shown = redact_dsn(repo)
    if res.returncode != 0:
        tail = redact_dsn((res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[-1])[:160]
        said = res.stderr.lower()
        missing = any(w in said for w in ("does not exist", "no such file", "unable to open config",
                                          "is there a repository"))
        return Check("backup-repo", FAIL, f"{name} cannot open {shown}: {tail}",
                     "create it: cocalc-ctl backup init" if missing else
                     "check backup.repo and backup.password_file (`cocalc-ctl config show`); "
                     "a new repository: cocalc-ctl backup init")
    return Check("backup-repo", OK, f"{name} opened {shown}")


class _Timex(ctypes.Structure):
    # struct timex starts with `unsigned int modes`; the kernel writes the rest (we only read status).
    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
                ("_rest", ctypes.c_long * 32)]


def kernel_clock_synced() -> bool | None:
    """adjtimex(2) read-only: TIME_ERROR (5) means the kernel clock is not NTP-disciplined."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        tx = _Timex()
        state = libc.adjtimex(ctypes.byref(tx))
    except (OSError, AttributeError):
        return None
    return None if state < 0 else state != 5


def check_time(cfg: Config, hub_ok: bool) -> Check:
    synced = kernel_clock_synced()
    skew = None
    if hub_ok:
        from cocalc_ctl.state import hub_db

        try:
            with hub_db.connect(cfg["hub_dsn"]) as conn:
                before = time.time()
                hub_now = float(conn.execute("SELECT extract(epoch FROM clock_timestamp())").fetchone()[0])
                after = time.time()
            skew = hub_now - (before + after) / 2
        except Exception:
            skew = None
    data = {"ntp_synchronized": synced, "hub_skew_seconds": None if skew is None else round(skew, 3)}
    if skew is not None and abs(skew) > MAX_CLOCK_SKEW_FAIL:
        return Check("time", FAIL, f"clock differs from the hub's by {skew:+.1f}s",
                     "synchronise clocks (install chrony or systemd-timesyncd); move leases depend on it", data)
    if skew is not None and abs(skew) > MAX_CLOCK_SKEW_WARN:
        return Check("time", WARN, f"clock differs from the hub's by {skew:+.1f}s",
                     "synchronise clocks (chrony or systemd-timesyncd)", data)
    if skew is not None:
        extra = "" if synced else "; the kernel reports no NTP sync"
        return Check("time", OK, f"clock agrees with the hub's within {abs(skew):.2f}s{extra}", data=data)
    if synced is False:
        return Check("time", WARN, "kernel clock is not NTP-synchronised and there is no hub to compare with",
                     "install chrony or systemd-timesyncd", data)
    return Check("time", OK, "kernel clock is NTP-synchronised" if synced else "clock state unknown", data=data)


def _free(path: str) -> tuple[int, int]:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def check_free_space(cfg: Config, pool_ok: bool) -> Check:
    from cocalc_ctl.output import human_bytes

    warn_pct, fail_pct = cfg["ops.free_warn_percent"], cfg["ops.free_fail_percent"]
    places = []
    if pool_ok:
        places.append(("pool", str(cfg.btrfs_root)))
    if cfg.data_dir.is_dir():
        places.append(("data_dir", str(cfg.data_dir)))
    if not places:
        return Check("free-space", SKIP, "neither the pool nor data_dir is available")
    worst = None
    parts = []
    data = {}
    for label, path in places:
        free, total = _free(path)
        pct = 100.0 * free / total if total else 0.0
        data[label] = {"path": path, "free_bytes": free, "total_bytes": total, "free_percent": round(pct, 1)}
        parts.append(f"{label} {human_bytes(free)} free ({pct:.0f}%)")
        if worst is None or pct < worst[1]:
            worst = (label, pct, path)
    detail = ", ".join(parts)
    label, pct, path = worst
    if pct < fail_pct:
        return Check("free-space", FAIL, detail, f"free space on {path} ({label}): delete snapshots or grow it", data)
    if pct < warn_pct:
        return Check("free-space", WARN, detail, f"{label} below {warn_pct}% free: prune snapshots or grow it", data)
    return Check("free-space", OK, detail, data=data)


def check_host_state(cfg: Config) -> Check:
    from cocalc_ctl.actions.host.identity import host_id
    from cocalc_ctl.state import host_db

    path = host_db.db_path(cfg.data_dir)
    hid = host_id(cfg)
    if not path.exists():
        return Check("host-state", FAIL, f"{path} does not exist", "run: cocalc-ctl host init")
    try:
        conn = host_db.connect(cfg.data_dir, create=False)
        version = host_db.schema_version(conn)
        conn.close()
    except CocalcError as exc:
        return Check("host-state", FAIL, exc.message, exc.hint)
    except Exception as exc:  # sqlite errors: a corrupt or unreadable database
        return Check("host-state", FAIL, f"{path}: {exc}", "check the file; restore it from a backup")
    if not hid:
        return Check("host-state", FAIL, "this host has no id", "run: cocalc-ctl host init")
    if not (cfg.data_dir / "locks").is_dir():  # the timers' flock guard opens its lock files there
        return Check("host-state", FAIL, f"{cfg.data_dir / 'locks'} does not exist", "run: cocalc-ctl host init")
    return Check("host-state", OK, f"host {hid}, {path} at schema version {version}")


# -- the report -------------------------------------------------------------------------------

def check_config(cfg: Config) -> Check:
    from cocalc_ctl.config import DEFAULT_CONFIG_PATH

    if cfg.file:
        return Check("config", OK, f"loaded {cfg.file}", data={"file": cfg.file})
    return Check("config", WARN, f"no config file ({DEFAULT_CONFIG_PATH} does not exist): defaults and "
                 "COCALC_CTL_* environment only",
                 f"write {DEFAULT_CONFIG_PATH} (see `cocalc-ctl config show` and examples/config.yaml) or pass --config",
                 data={"file": None})


def check_units(cfg: Config) -> Check:
    """Every installed cocalc-ctl unit starts programs that exist (a unit naming a removed or never
    installed cocalc-ctl fails at its next run, silently until someone reads the journal)."""
    import shlex

    from cocalc_ctl import program
    from cocalc_ctl.actions.ops import timers

    unit_dir = cfg["ops.unit_dir"]
    units = timers.managed_units(unit_dir)
    if not units:
        return Check("units", SKIP, f"no cocalc-ctl units in {unit_dir}")
    broken = []
    for u in units:
        try:
            text = u.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            broken.append(f"{u.name}: {exc.strerror}")
            continue
        for line in text.splitlines():
            key, _, value = line.partition("=")
            if key.strip() not in ("ExecStart", "ExecStartPre", "ExecStop", "ExecReload") or not value.strip():
                continue
            try:
                words = shlex.split(value.strip().lstrip("-@+!:"))
            except ValueError:
                broken.append(f"{u.name}: unparsable {key.strip()}")
                continue
            for w in [words[0]] + [w for w in words[1:] if os.path.basename(w).startswith("cocalc-ctl")]:
                if not program.is_executable(w):
                    broken.append(f"{u.name}: {w} does not exist or is not executable")
    if broken:
        more = f" (+{len(broken) - 1} more)" if len(broken) > 1 else ""
        return Check("units", FAIL, broken[0] + more,
                     "rewrite them: cocalc-ctl timers install --bin PATH (the installed cocalc-ctl)",
                     data={"problems": broken})
    return Check("units", OK, f"{len(units)} unit(s) in {unit_dir} start existing programs")


def run_checks(cfg: Config) -> Report:
    checks: list[Check] = [check_config(cfg)]
    pool = check_pool(cfg)
    checks.append(pool)
    checks.append(check_pool_hardening(cfg, pool.status in (OK, WARN)))
    checks.append(check_host_state(cfg))
    for name, candidates, required in PROGRAMS:
        checks.append(check_program(name, candidates, required))
    checks.append(check_secrets(cfg))
    checks.append(check_keys(cfg))
    checks.append(check_sshpiper_token(cfg))
    checks.append(check_argv_secrets(cfg))
    hub, hub_ok = _hub_state(cfg)
    checks.append(hub)
    checks.append(check_registration(cfg, hub_ok and hub.status == OK))
    checks.append(check_backup_repo(cfg))
    checks.append(check_time(cfg, hub_ok))
    checks.append(check_free_space(cfg, pool.status == OK))
    checks.append(check_units(cfg))
    counts: dict[str, int] = {}
    for c in checks:
        counts[c.status] = counts.get(c.status, 0) + 1
    return Report(checks, counts, failed=counts.get(FAIL, 0) > 0)
