"""The project sshd's per-start state that outlives `project start`: where it lives and the login user's
authorized_keys (the upstream key(s), which `keys rotate --which upstream` rewrites in running projects).
Imports nothing of the key store, so the key store can call it (`project_ssh` uses both)."""

from __future__ import annotations

import os
from pathlib import Path

from cocalc_ctl import ids, output, proc, safepath
from cocalc_ctl.config import Config
from cocalc_ctl.errors import PreconditionFailed


def run_dir(cfg: Config, pid: str) -> Path:
    return cfg.data_dir / "project-ssh" / pid


def key_options(cfg: Config) -> str:
    opts = ["no-X11-forwarding"]
    if not cfg["ssh.agent_forwarding"]:
        opts.append("no-agent-forwarding")
    return ",".join(opts)


def authorized_keys_text(cfg: Config, upstream: list[str]) -> str:
    opts = key_options(cfg)
    return "".join(f"{opts} {line}\n" for line in upstream)


AUTHORIZED_KEYS = ("state", "home", ".ssh", "authorized_keys")  # below run_dir(cfg, pid)


def refresh_upstream_keys(cfg: Config, upstream: list[str]) -> list[str]:
    """After a rotation of the upstream key (or its `--finish`): rewrite the login user's authorized_keys
    of every project that has sshd state (= every running project's sshd) to the current upstream key(s),
    so running projects accept sshpiperd's new key at once and, after the finish, no longer the old one.
    The caller holds the keys lock (a start in between writes its state under it too). Each file is
    replaced atomically (a temporary in the same directory, renamed over it): the container's read-only
    bind mount of the state directory sees the new file, dropbear reads it at each login. Returns the
    project ids rewritten. `upstream`: the upstream public key lines to accept."""
    base = cfg.data_dir / "project-ssh"
    if proc.plan_only(f"# rewrite {base}/<project>/state/home/.ssh/authorized_keys (the upstream key(s))"):
        return []
    try:
        names = sorted(os.listdir(base))
    except FileNotFoundError:
        return []
    text = authorized_keys_text(cfg, upstream)
    done = []
    for name in names:
        if not ids.is_uuid(name):  # run dirs are named by project id; anything else is not ours
            continue
        try:
            with safepath.open_dir(base, (name, *AUTHORIZED_KEYS[:-1])) as dfd:
                st = os.fstat(dfd)  # the file belongs to the project's mapped root, like its directory
                safepath.StagedWrite(dfd, AUTHORIZED_KEYS[-1], text, 0o600, (st.st_uid, st.st_gid)).commit()
        except FileNotFoundError:
            continue  # stopped meanwhile, or a project without sshd state
        except (OSError, PreconditionFailed) as exc:  # one broken state dir must not keep the others unchanged
            output.warn(f"project {name}: cannot rewrite its sshd's upstream key list: {exc}")
            continue
        done.append(name)
    return done
