"""`project ssh`: a session into a running project, opened the way sshpiperd opens one."""

from __future__ import annotations

from cocalc_ctl import proc
from cocalc_ctl.actions.project import containers, project_ssh
from cocalc_ctl.config import Config
from cocalc_ctl.errors import PreconditionFailed


def open_session(cfg: Config, project_id: str, args: list[str]) -> int:
    """`project ssh`: a session into the running project the way sshpiperd opens one; ssh's status."""
    st = containers.status(cfg, project_id)
    pid, port = st.project_id, st.ssh_port
    if st.state != "running" or not port:
        raise PreconditionFailed(f"project {pid} is not running", hint=f"cocalc-ctl project start {pid}")
    proc.which("ssh")
    return proc.interactive(project_ssh.session_argv(cfg, pid, port, args).argv)
