"""`sshpiper config`: the sshpiperd command line and the move receiver's sshd_config.

The REST token is never printed: the sshpiperd command reads it from its file at start
(`$(cat <secrets>/sshpiper/token)`), so it appears neither in this output nor in shell history.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from cocalc_ctl.actions import keys
from cocalc_ctl.config import Config
from cocalc_ctl.errors import ConfigError, PreconditionFailed
from cocalc_ctl.tools import ssh


@dataclass
class PiperConfig:
    sshpiperd_command: str
    sshpiperd_argv: list[str]
    sshd_config: str
    receiver_listen: str
    host_key: str
    token_file: str


def _host_port(cfg: Config, key: str) -> tuple[str, int]:
    try:
        return ssh.parse_host_port(cfg[key])
    except ValueError as exc:
        raise ConfigError(f"config key {key}: {exc}") from None


def build(cfg: Config) -> PiperConfig:
    host_key = ssh.sshpiperd_host_key_path(cfg.secrets_dir)
    rest_host, rest_port = _host_port(cfg, "sshpiper.rest_listen")
    piper_host, piper_port = _host_port(cfg, "sshpiper.sshpiperd_listen")
    recv_host, recv_port = _host_port(cfg, "sshpiper.receiver_listen")
    token_file = keys.token_path(cfg)
    url_placeholder = f"http://{ssh.listen_address(rest_host, rest_port)}/@TOKEN@"
    argv = ssh.sshpiperd_command(host_key, url_placeholder, address=piper_host, port=piper_port)
    shown = shlex.join(argv).replace(
        shlex.quote(url_placeholder),
        f'"http://{ssh.listen_address(rest_host, rest_port)}/$(cat {shlex.quote(str(token_file))})"')
    exe = cocalc_ctl_path(cfg)
    akc = shlex.join([exe] + (["--config", cfg.file] if cfg.file else []) + ["sshpiper", "authorized-keys"]) + " %u"
    text = ssh.receiver_sshd_config(listen_host=recv_host, listen_port=recv_port, host_key=host_key,
                                    authorized_keys_command=akc)
    return PiperConfig(shown, argv, text, ssh.listen_address(recv_host, recv_port), str(host_key), str(token_file))


def cocalc_ctl_path(cfg: Config) -> str:
    """sshpiper.cocalc_ctl when set (or when its default exists), else the program running now; never a
    path that does not exist (sshd would reject every login)."""
    from cocalc_ctl import program

    exe = cfg["sshpiper.cocalc_ctl"]
    if cfg.sources.get("sshpiper.cocalc_ctl", "default") != "default" or program.is_executable(exe):
        return exe
    running = program.running_program()
    if running:
        return running
    raise PreconditionFailed(f"{exe} does not exist and the running cocalc-ctl cannot be told",
                             hint="set sshpiper.cocalc_ctl to the installed cocalc-ctl (a root-owned path)")
