"""rsync: the command line that copies a staged stream directory to a peer, resumably."""

from __future__ import annotations

import shlex


def push_dir(local_dir: str, remote_spec: str, ssh_argv: list[str], *, bwlimit: str | None = None,
             rsync_path: str | None = None) -> list[str]:
    """`rsync --partial` of the *contents* of local_dir to `remote_spec` (`user@host:relative/dir/`).

    `ssh_argv` becomes rsync's `-e` string (rsync splits it like a shell, so each word is quoted).
    `rsync_path` replaces the remote command's first word (the move receiver wants `ticket <T> rsync`).
    """
    return ["rsync", "-rt", "--partial", "--no-perms", "--no-owner", "--no-group",
            *([f"--bwlimit={bwlimit}"] if bwlimit else []),
            *([f"--rsync-path={rsync_path}"] if rsync_path else []),
            "-e", shlex.join(ssh_argv), local_dir.rstrip("/") + "/", remote_spec]


# The server side command lines our own client produces, e.g. `rsync --server -tre.iLsfxCIvu --partial . D/`.
# Only -r -t -v -z, then `e<version info>` whose letters are capabilities, not options (so `s` there is
# not --secluded-args, which would smuggle further arguments past this filter).
SERVER_SHORT_BUNDLE = r"-[rtvz]+(?:e[0-9.]*[A-Za-z]*)?"
SERVER_LONG_OPTIONS = frozenset({"--partial", "--no-perms", "--no-owner", "--no-group"})
