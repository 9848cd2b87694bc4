"""The project's own sshd: a bundled dropbear that `project start` runs inside the project container.

Design (why this one; the README's "SSH into a project" section says the same at more length):
- **dropbear inside the container, started with `podman exec`.** A session is then a child of a process
  that already lives in every namespace of the container (mount, pid, user, network, ipc, uts, cgroup)
  under its seccomp profile, capability set and limits: the image's filesystem and environment, the
  project's HOME, `-L` into the container's own loopback, agent forwarding (a socket in the
  container's /tmp) — all for free, and nothing of the host in reach. A host OpenSSH sshd in the
  container's network namespace would have to `nsenter` the other namespaces for every session and
  would lose agent forwarding; it would also run as host root next to the project's network.
- **Any image.** Debian's dropbear, rsync, sftp-server and scp are glibc programs. They are copied with
  every library they load and the loader into a read-only bundle (`<data_dir>/ssh-bundle/<digest>`,
  mounted at `BUNDLE_MOUNT`), and `patchelf` points each one at the bundle's loader and libraries
  (DT_RPATH), so they run the same on a busybox tree, a musl Alpine root or a Debian/Ubuntu root.
  The bundle's `bin/` is appended to every session's PATH: an image without rsync or sftp-server
  (a busybox tree) still takes `rsync -a` and `sftp`; the image's own programs come first.
  The one thing the image must have is `/bin/sh` (every session runs through it).
- **Who may log in: only the upstream key** (the key sshpiperd logs in with; during a rotation, the
  previous one too). It is the only line of the authorized_keys file dropbear reads, in the login
  user's home — a directory of the read-only state mount (`STATE_MOUNT`), not the project's home, so
  nothing the project writes (its `~/.ssh/authorized_keys` is the hub-facing key list sshpiper reads)
  lets anyone past sshpiperd. The login user (`sshpiper.upstream_user`) is added to the image's
  /etc/passwd as uid 0 of the container (= the project's unprivileged range on the host) with that
  home; every session goes through the forced command `session`, which sets HOME to the project's
  home, maps sftp to the bundle's sftp-server and runs the client's command with the image's shell.
- **Host keys**: one ed25519 key per project, made on first start, kept root-only in the project's
  persist store (`<data_dir>/sync/projects/<uuid>/ssh/`, 0700/0600), which moves, backups and
  restores already carry, so `known_hosts` entries survive restarts and moves. Each start copies it
  into the state mount owned by the project's mapped root (dropbear reads it as that user).
- **Reaching the port**: the published loopback port is in the isolation port guard (nft): only
  `isolation.port_users` (sshpiperd) may connect to it (or to the container's address; a connection the
  host routes in from outside is dropped), so the upstream key is the only way in.
- The project's root can of course stop its own sshd or run another on the port: it is the project's
  server, like its web server; that gives it nothing beyond its own container.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from cocalc_ctl import layout, proc
from cocalc_ctl.config import Config
from cocalc_ctl.errors import InvalidInput, NotFound, OperationFailed, PreconditionFailed
from cocalc_ctl.actions.project.ssh_state import authorized_keys_text, key_options, run_dir  # noqa: F401
from cocalc_ctl.tools import dropbear, podman

BUNDLE_MOUNT = "/opt/cocalc/ssh"
STATE_MOUNT = "/opt/cocalc/ssh-state"
# what the bundle holds: name in bin/ -> the Debian program (package) it is copied from
PROGRAMS = {
    "dropbear": "/usr/sbin/dropbear",  # dropbear-bin
    "rsync": "/usr/bin/rsync",  # rsync
    "sftp-server": "/usr/lib/openssh/sftp-server",  # openssh-sftp-server
    "scp": "/usr/bin/scp",  # openssh-client (the server side of legacy `scp -O`)
}
# the path Debian's dropbear hands the forced command for the `sftp` subsystem (its SFTPSERVER_PATH)
SFTP_REQUEST = "/usr/lib/sftp-server"
HOST_KEY = "ssh_host_ed25519_key"
PERSIST_SUBDIR = "ssh"  # the host key's directory in the project's persist store (one project's identity)
PID_FILE = "/tmp/.cocalc-sshd.pid"
GECOS = "cocalc project ssh"
_LOGIN_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}", re.ASCII)
BUNDLE_FORMAT = "1"  # bump when the bundle's layout or session script changes

SESSION = """#!/bin/sh
# Every session of the project's sshd runs this (dropbear -c): the project's HOME, the bundle's tools
# after the image's on PATH, sftp served by the bundle, the client's command run by the image's shell.
HOME={home}; USER={user}; LOGNAME={user}
export HOME USER LOGNAME
PATH="${{PATH:-/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin}}:{bundle}/bin"
export PATH
shell=/bin/sh
[ -x /bin/bash ] && shell=/bin/bash
SHELL=$shell
export SHELL
cd "$HOME" 2>/dev/null || cd /
case "$SSH_ORIGINAL_COMMAND" in
"") exec "$shell" -l ;;
{sftp}|internal-sftp) exec {bundle}/bin/sftp-server ;;
*) exec "$shell" -c "$SSH_ORIGINAL_COMMAND" ;;
esac
"""

# Runs in the container (as its root, with its shell builtins only: the image may have no grep):
# add the login user's line to /etc/passwd unless it is there; refuse if the name is taken.
ENSURE_USER = r"""line=$1; f=${2:-/etc/passwd}; name=${line%%:*}; nl=
if [ -e "$f" ] && [ ! -f "$f" ]; then echo "the image's $f is not a regular file" >&2; exit 3; fi
if [ -e "$f" ]; then
  while IFS= read -r l || { [ -n "$l" ] && nl=1; }; do
    case $l in
      "$line") exit 0 ;;
      "$name":*) echo "the image's /etc/passwd already has a user $name" >&2; exit 3 ;;
    esac
  done < "$f"
fi
[ -n "$nl" ] && printf '\n' >> "$f"
printf '%s\n' "$line" >> "$f"
"""


def enabled(cfg: Config) -> bool:
    return bool(cfg["ssh.enabled"])


def login_user(cfg: Config) -> str:
    name = cfg["sshpiper.upstream_user"]
    if not _LOGIN_RE.fullmatch(name or ""):
        raise InvalidInput(f"sshpiper.upstream_user {name!r} is not a login name",
                           hint="use lowercase letters, digits, '_' and '-' (e.g. user)")
    return name


def passwd_line(cfg: Config) -> str:
    return f"{login_user(cfg)}:*:0:0:{GECOS}:{STATE_MOUNT}/home:/bin/sh"


# -- the bundle -----------------------------------------------------------------------------------

def _bundle_digest() -> str:
    h = hashlib.sha256(BUNDLE_FORMAT.encode())
    for name, path in sorted(PROGRAMS.items()):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise PreconditionFailed(f"{path} is missing: the project sshd bundle needs it",
                                     hint="apt-get install dropbear-bin rsync openssh-sftp-server "
                                          "openssh-client patchelf") from None
        h.update(f"{name}\0{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def bundle_dir(cfg: Config) -> Path:
    return cfg.data_dir / "ssh-bundle" / _bundle_digest()


def ensure_bundle(cfg: Config) -> Path:
    """The read-only bundle for the current host programs, built once (into a temporary directory,
    renamed into place, so a crash leaves no half bundle)."""
    final = bundle_dir(cfg)
    if final.is_dir() or proc.plan_only(f"# build the project sshd bundle {final} (dropbear, rsync, "
                                        "sftp-server, scp with their libraries, patchelf'd)"):
        return final
    proc.which("patchelf")
    proc.which("ldd")
    final.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chmod(final.parent, 0o755)
    tmp = final.parent / f".{final.name}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (tmp / "bin").mkdir(parents=True)
        (tmp / "lib").mkdir()
        interp = None
        for name, src in PROGRAMS.items():
            try:
                libs, found = dropbear.parse_ldd(proc.run(dropbear.ldd(src), mutates=False).stdout)
            except ValueError as exc:
                raise PreconditionFailed(f"{src}: {exc}", hint="reinstall the package that ships it") from None
            interp = interp or found
            for soname, path in libs:
                dest = tmp / "lib" / soname
                if not dest.exists():
                    shutil.copy(path, dest)  # follows the soname symlink: the real file
            shutil.copy(src, tmp / "bin" / name)
        if interp is None:
            raise PreconditionFailed("cannot find the programs' loader (ld.so) in ldd's output")
        loader = tmp / "lib" / os.path.basename(interp)
        shutil.copy(interp, loader)
        for name in PROGRAMS:
            proc.run(dropbear.patchelf(str(tmp / "bin" / name), interpreter=f"{BUNDLE_MOUNT}/lib/{loader.name}",
                                       rpath=f"{BUNDLE_MOUNT}/lib"))
        for d, _, files in os.walk(tmp):
            os.chmod(d, 0o755)
            for f in files:
                os.chmod(os.path.join(d, f), 0o755)
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # a concurrent start built the same bundle first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


# -- host keys (persistent, root-only) ------------------------------------------------------------

def host_key_path(cfg: Config, pid: str) -> Path:
    return layout.persist_dir(cfg, pid) / PERSIST_SUBDIR / HOST_KEY


def ensure_host_key(cfg: Config, pid: str) -> Path:
    """The project's sshd host key, made on first use; never rewritten while it exists."""
    path = host_key_path(cfg, pid)
    if proc.plan_only(f"# make {path} (ed25519, 0600) unless it exists"):
        return path
    path.parent.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    os.chmod(path.parent, 0o700)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        tmp = path.with_name(f".{HOST_KEY}.{os.getpid()}")
        tmp.unlink(missing_ok=True)
        old = os.umask(0o077)
        try:
            proc.run(dropbear.keygen(str(tmp)))
        finally:
            os.umask(old)
        os.chmod(tmp, 0o600)
        os.rename(tmp, path)
        return path
    if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o077:
        raise PreconditionFailed(f"{path} is not a root-only regular file",
                                 hint="treat the key as leaked: remove it (a new one is made at the next start)")
    return path


def host_public_key(cfg: Config, pid: str) -> str | None:
    path = host_key_path(cfg, pid)
    if not path.is_file() or not proc.have("dropbearkey"):
        return None
    res = proc.run(dropbear.public_key(str(path)), mutates=False, check=False)
    return dropbear.parse_public_key(res.stdout) if res.returncode == 0 else None


# -- per-start state ------------------------------------------------------------------------------

def state_dir(cfg: Config, pid: str) -> Path:
    return run_dir(cfg, pid) / "state"


def _upstream_keys(cfg: Config) -> list[str]:
    from cocalc_ctl.actions.keys import keys

    return keys.public_lines(cfg, "upstream")


def prepare(cfg: Config, pid: str, owner: int) -> list[tuple[str, str]] | None:
    """Before `podman run`: the bundle, the host key and the state directory (host key copy, the
    login user's authorized_keys = the upstream key(s)), owned by `owner` (the project's mapped root);
    returns the read-only volumes to add to the container, or None when this host has no upstream
    key yet (the sshd would accept nobody: the project runs without one)."""
    login_user(cfg)
    if not proc.DRY_RUN and not _upstream_keys(cfg):
        return None
    bundle = ensure_bundle(cfg)
    key = ensure_host_key(cfg, pid)
    state = state_dir(cfg, pid)
    if proc.plan_only(f"# write {state} (host key copy, authorized_keys = the upstream key), owner {owner}"):
        return [(str(bundle), BUNDLE_MOUNT), (str(state), STATE_MOUNT)]
    # under the keys lock: a rotation either sees this state directory (and rewrites its key list) or
    # ran before the keys are read here
    with _keys_lock(cfg):
        upstream = _upstream_keys(cfg)
        if not upstream:
            return None
        _write_state(cfg, pid, owner, key, upstream)
    return [(str(bundle), BUNDLE_MOUNT), (str(state), STATE_MOUNT)]


def _keys_lock(cfg: Config):
    from cocalc_ctl.actions.keys import keys

    return keys.keys_lock(cfg)


def _write_state(cfg: Config, pid: str, owner: int, key: Path, upstream: list[str]) -> None:
    state = state_dir(cfg, pid)
    top = run_dir(cfg, pid)
    shutil.rmtree(top, ignore_errors=True)
    top.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(top.parent, 0o700)
    top.mkdir(mode=0o700)
    ssh_dir = state / "home" / ".ssh"
    ssh_dir.mkdir(mode=0o700, parents=True)
    (state / HOST_KEY).write_bytes(key.read_bytes())
    (ssh_dir / "authorized_keys").write_text(authorized_keys_text(cfg, upstream))
    (state / "session").write_text(SESSION.format(home=_sh_word(str(cfg["podman.home"])), user=login_user(cfg),
                                                  bundle=BUNDLE_MOUNT, sftp=SFTP_REQUEST))
    for p, mode in ((state / HOST_KEY, 0o600), (ssh_dir / "authorized_keys", 0o600), (state / "session", 0o500),
                    (ssh_dir, 0o700), (state / "home", 0o700), (state, 0o700)):
        os.chown(p, owner, owner, follow_symlinks=False)
        os.chmod(p, mode)


def _sh_word(text: str) -> str:
    if not re.fullmatch(r"/[A-Za-z0-9._/-]*", text):
        raise InvalidInput(f"podman.home {text!r} must be an absolute path of letters, digits, '.', '_', '-'")
    return text


def server_argv(cfg: Config) -> list[str]:
    return dropbear.server(f"{BUNDLE_MOUNT}/bin/dropbear", host_key=f"{STATE_MOUNT}/{HOST_KEY}",
                           port=cfg["podman.ssh_port"], forced_command=f"{STATE_MOUNT}/session",
                           pid_file=PID_FILE, remote_forwarding=bool(cfg["ssh.remote_forwarding"]))


def start_sshd(cfg: Config, storage: podman.Storage, container: str) -> None:
    """After `podman run`: the login user in the image's /etc/passwd, then dropbear, detached."""
    # as 0:0 and bounded: podman (host root) still opens the container's /etc/passwd, which the project
    # controls (a FIFO there blocks the open); a timeout raises CommandTimeout, an OperationFailed
    timeout = cfg["podman.exec_timeout"]
    res = proc.run(podman.exec_(storage, container, ["/bin/sh", "-c", ENSURE_USER, "sh", passwd_line(cfg)]),
                   check=False, timeout=timeout)
    if res.returncode != 0 and not proc.DRY_RUN:
        raise OperationFailed(f"cannot add the ssh login user to the image: {res.stderr.strip() or res.returncode}",
                              hint="the image needs /bin/sh; if it already has the user, set "
                                   "sshpiper.upstream_user to a name it does not use")
    proc.run(podman.exec_(storage, container, server_argv(cfg), detach=True), timeout=timeout)


def cleanup(cfg: Config, pid: str) -> None:
    """After the container is gone: drop the per-start state (the persistent host key stays)."""
    if not proc.plan_only(f"rm -rf {run_dir(cfg, pid)}"):
        shutil.rmtree(run_dir(cfg, pid), ignore_errors=True)


def sshd_state(port: int | None, timeout: float = 3.0) -> str:
    """What answers on the project's published ssh port: `running` when an SSH server greets."""
    if not port:
        return "stopped"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            banner = s.recv(256)
    except OSError:
        return "not answering"
    return "running" if banner.startswith(b"SSH-2.0-") else "not answering"


def wait_running(port: int, timeout: float = 20.0) -> str:
    import time

    deadline = time.monotonic() + timeout
    while True:
        state = sshd_state(port, timeout=2.0)
        if state == "running" or time.monotonic() > deadline:
            return state
        time.sleep(0.1)


# -- admin sessions -------------------------------------------------------------------------------

@dataclass
class SessionPlan:
    argv: list[str]
    known_hosts: str


def session_argv(cfg: Config, pid: str, port: int, args: list[str]) -> SessionPlan:
    """`ssh` into the project exactly as sshpiperd does: the upstream key, the login user, the
    project's published port, its host key pinned (StrictHostKeyChecking=yes); no ssh config file
    of the host is read and no agent, X11 display or port is forwarded."""
    from cocalc_ctl.actions.keys import keys

    key = keys.key_path(cfg, "upstream")
    if not key.is_file():
        raise PreconditionFailed("no upstream key", hint="run `cocalc-ctl keys ensure`")
    pub = host_public_key(cfg, pid)
    if pub is None:
        raise NotFound(f"project {pid} has no sshd host key yet", hint="start the project")
    kh = run_dir(cfg, pid) / "known_hosts"
    if not proc.plan_only(f"# write {kh}"):
        kh.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        kh.write_text(f"[127.0.0.1]:{port} {pub}\n")
    # -F /dev/null: root's own ssh config (agents, forwardings, ControlPath, ProxyCommand) never applies to
    # a session into an untrusted container; nothing is forwarded into it
    argv = ["ssh", "-F", "/dev/null", "-i", str(key), "-p", str(port), "-o", "IdentitiesOnly=yes",
            "-o", "IdentityAgent=none", "-o", "ForwardAgent=no", "-o", "ForwardX11=no", "-o", "ClearAllForwardings=yes",
            "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={kh}", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", f"{login_user(cfg)}@127.0.0.1"]
    if args:
        argv += ["--", *args]
    return SessionPlan(argv, str(kh))
