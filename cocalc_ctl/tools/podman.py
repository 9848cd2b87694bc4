"""podman command lines (pull, image mount/inspect/rm, run/rm/inspect of containers) and parsers.

No policy here: which runtime, ulimits, limits and storage to use come from the caller (config).
Every builder starts with the same global options so all commands of one host see one storage.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

_ULIMIT_RE = re.compile(r"([a-z]+)=(-1|\d+)(?::(-1|\d+))?", re.ASCII)
_IMAGE_ID_RE = re.compile(r"(?:sha256:)?([0-9a-f]{64})", re.ASCII)


@dataclass(frozen=True)
class Storage:
    """podman's global storage options (`--root`, `--runroot`, `--tmpdir`, `--storage-driver`, `--storage-opt`)."""

    root: str | None = None
    runroot: str | None = None
    tmpdir: str | None = None
    driver: str | None = None
    opts: tuple[str, ...] = ()


def podman(storage: Storage, *args: str) -> list[str]:
    argv = ["podman"]
    if storage.root:
        argv += ["--root", storage.root]
    if storage.runroot:
        argv += ["--runroot", storage.runroot]
    if storage.tmpdir:
        argv += ["--tmpdir", storage.tmpdir]
    if storage.driver:
        argv += ["--storage-driver", storage.driver]
    for opt in storage.opts:
        argv += ["--storage-opt", opt]
    return argv + list(args)


def pull(storage: Storage, source: str, *, tls_verify: bool = True, cert_dir: str | None = None) -> list[str]:
    """`podman pull -q` prints only the image id on stdout."""
    args = ["pull", "-q"]
    if not tls_verify:
        args.append("--tls-verify=false")
    if cert_dir:
        args += ["--cert-dir", cert_dir]
    return podman(storage, *args, "--", source)


def image_ids(storage: Storage) -> list[str]:
    return podman(storage, "images", "--all", "--no-trunc", "--format", "{{.ID}}")


def image_exists(storage: Storage, ref: str) -> list[str]:
    return podman(storage, "image", "exists", "--", ref)


def image_inspect(storage: Storage, ref: str) -> list[str]:
    return podman(storage, "image", "inspect", "--format", "json", "--", ref)


def image_mount(storage: Storage, image_id: str) -> list[str]:
    return podman(storage, "image", "mount", "--", image_id)


def image_umount(storage: Storage, image_id: str) -> list[str]:
    return podman(storage, "image", "umount", "--", image_id)


def rmi(storage: Storage, image_id: str) -> list[str]:
    return podman(storage, "rmi", "--", image_id)


@dataclass
class RunSpec:
    """Everything `podman run --rootfs` needs for one project container."""

    name: str
    rootfs: str
    command: list[str]
    runtime: str | None = None
    ulimits: list[str] = field(default_factory=list)
    memory: str | None = None
    pids_limit: int | None = None
    labels: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    volumes: list[tuple[str, str]] = field(default_factory=list)
    readonly_volumes: list[tuple[str, str]] = field(default_factory=list)  # `--volume src:dst:ro`
    publish: list[tuple[str, int, int]] = field(default_factory=list)  # (host ip, host port, container port)
    network: str | None = None
    workdir: str | None = None
    hostname: str | None = None
    init: bool = False
    isolation_args: list[str] = field(default_factory=list)  # from `isolation_args()`
    quota_args: list[str] = field(default_factory=list)  # run quota flags (quota_args())
    log_driver: str | None = None  # `--log-driver` (podman's default when None: k8s-file, unbounded)


def isolation_args(id_base: int, id_count: int, capabilities: list[str], mac: str | None,
                   seccomp: str | None = None) -> list[str]:
    """A private user namespace (container ids 0..count-1 = host ids base..), only `capabilities`
    kept, no privilege gain through setuid or file capabilities, a fixed MAC address, and the
    seccomp profile at `seccomp` (podman's default when None)."""
    args = ["--uidmap", f"0:{id_base}:{id_count}", "--gidmap", f"0:{id_base}:{id_count}", "--cap-drop=all"]
    args += [f"--cap-add={c}" for c in capabilities]
    args += ["--security-opt", "no-new-privileges"]
    if seccomp:
        args += ["--security-opt", f"seccomp={seccomp}"]
    if mac:
        args += ["--mac-address", mac]
    return args


def run(storage: Storage, spec: RunSpec) -> list[str]:
    args = ["run", "--detach", "--name", spec.name]
    if spec.runtime:
        args += ["--runtime", spec.runtime]
    if spec.init:
        args.append("--init")
    if spec.log_driver:
        args += ["--log-driver", spec.log_driver]
    for u in spec.ulimits:
        args += ["--ulimit", u]
    if spec.memory:
        args += ["--memory", spec.memory]
    if spec.pids_limit:
        args += ["--pids-limit", str(spec.pids_limit)]
    for k, v in spec.labels.items():
        args += ["--label", f"{k}={v}"]
    for k, v in spec.env.items():
        args += ["--env", f"{k}={v}"]
    for src, dst in spec.volumes:
        args += ["--volume", f"{src}:{dst}"]
    for src, dst in spec.readonly_volumes:
        args += ["--volume", f"{src}:{dst}:ro"]
    if spec.network:
        args += ["--network", spec.network]
    for ip, host_port, container_port in spec.publish:
        args += ["--publish", f"{ip}:{host_port}:{container_port}"]
    if spec.workdir:
        args += ["--workdir", spec.workdir]
    if spec.hostname:
        args += ["--hostname", spec.hostname]
    args += spec.isolation_args
    args += spec.quota_args
    # --rootfs: the merged overlay is the container's / (a `:O` suffix would mean something else,
    # so the caller guarantees the path has no colon).
    args += ["--rootfs", spec.rootfs, *spec.command]
    return podman(storage, *args)


def quota_args(*, memory: int | None = None, swap: int | None = None, pids: int | None = None,
               cpu_shares: int | None = None, tmp: int | None = None) -> list[str]:
    """podman run flags of a run quota (bytes and counts; None = no flag). `--memory-swap` is podman's
    memory+swap total; without swap it equals the memory (no swap), so memory is a hard limit."""
    args: list[str] = []
    if memory:
        args += ["--memory", str(memory), "--memory-swap", str(memory + (swap or 0))]
    if pids:
        args += ["--pids-limit", str(pids)]
    if cpu_shares:
        args += ["--cpu-shares", str(cpu_shares)]
    if tmp:
        args += ["--tmpfs", f"/tmp:rw,nosuid,nodev,mode=1777,size={tmp}"]
    return args


def rm_container(storage: Storage, name: str, *, stop_timeout: int) -> list[str]:
    return podman(storage, "rm", "--force", "--ignore", "--time", str(stop_timeout), "--", name)


def container_inspect(storage: Storage, name: str) -> list[str]:
    return podman(storage, "container", "inspect", "--format", "json", "--", name)


def ps_labelled(storage: Storage, label: str, show_label: str) -> list[str]:
    """Every container (running or not) with `label` (k=v); prints the value of `show_label`, one a line."""
    return podman(storage, "ps", "--all", "--filter", f"label={label}",
                  "--format", "{{index .Labels \"%s\"}}" % show_label)


# -- parsers ----------------------------------------------------------------------------------

def parse_ulimits(text: str | None) -> list[str]:
    """`nofile=4096:4096,nproc=2048:2048` → ['nofile=4096:4096', 'nproc=2048:2048']; ValueError if malformed."""
    out = []
    for part in re.split(r"[,\s]+", (text or "").strip()):
        if not part:
            continue
        m = _ULIMIT_RE.fullmatch(part)
        if not m:
            raise ValueError(f"bad ulimit {part!r} (use NAME=SOFT:HARD, e.g. nofile=4096:4096)")
        soft, hard = m.group(2), m.group(3) or m.group(2)
        if soft != "-1" and hard != "-1" and int(soft) > int(hard):
            raise ValueError(f"bad ulimit {part!r}: soft limit above hard limit")
        out.append(f"{m.group(1)}={soft}:{hard}")
    return out


def parse_image_id(stdout: str) -> str | None:
    """The image id `podman pull -q` prints (last non-empty line)."""
    lines = [ln.strip() for ln in stdout.splitlines() if ln.strip()]
    if not lines:
        return None
    m = _IMAGE_ID_RE.fullmatch(lines[-1])
    return m.group(1) if m else None


def parse_image_ids(stdout: str) -> set[str]:
    return {m.group(1) for ln in stdout.split() if (m := _IMAGE_ID_RE.fullmatch(ln.strip()))}


def parse_inspect(stdout: str) -> dict | None:
    """First object of `inspect --format json` output, or None."""
    try:
        data = json.loads(stdout or "null")
    except json.JSONDecodeError:
        return None
    if isinstance(data, list):
        return data[0] if data and isinstance(data[0], dict) else None
    return data if isinstance(data, dict) else None


def exec_(storage: Storage, name: str, argv: list[str], *, user: str = "0:0", detach: bool = False,
          interactive: bool = False) -> list[str]:
    """`podman exec` of `argv` in a running container, as the numeric `user` (uid:gid, never a name the
    container's /etc/passwd would have to resolve), with the container's env."""
    if not re.fullmatch(r"\d+:\d+", user, re.ASCII):
        raise ValueError(f"exec user {user!r} is not numeric uid:gid")
    args = ["exec", "--user", user]
    if detach:
        args.append("--detach")
    if interactive:
        args.append("--interactive")
    return podman(storage, *args, "--", name, *argv)
