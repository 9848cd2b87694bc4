"""A real PgBouncer in front of the test PostgreSQL (unix sockets only), in session or transaction
pooling mode: what `LISTEN` does through each."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

PORT = 6432  # only names the socket file <dir>/.s.PGSQL.6432; nothing listens on TCP


@contextlib.contextmanager
def pgbouncer(postgres, dbname: str, pool_mode: str):
    """Yield a DSN for `dbname` through PgBouncer in `pool_mode`; always stop it."""
    exe = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not os.path.exists(exe):
        raise RuntimeError("pgbouncer not found: apt-get install pgbouncer")
    d = Path(tempfile.mkdtemp(prefix="cocalc-pgb-"))
    os.chmod(d, 0o755)
    if postgres.user:
        shutil.chown(d, user=postgres.user)
    ini = d / "pgbouncer.ini"
    ini.write_text(f"""[databases]
* = host={postgres.dir} user=postgres

[pgbouncer]
listen_addr =
listen_port = {PORT}
unix_socket_dir = {d}
auth_type = any
pool_mode = {pool_mode}
default_pool_size = 4
logfile = {d}/pgbouncer.log
pidfile = {d}/pgbouncer.pid
ignore_startup_parameters = extra_float_digits,options
""")
    argv = [exe, str(ini)]
    if postgres.user:
        argv = ["runuser", "-u", postgres.user, "--", *argv]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (d / f".s.PGSQL.{PORT}").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                log = (d / "pgbouncer.log").read_text() if (d / "pgbouncer.log").exists() else ""
                raise RuntimeError(f"pgbouncer did not start: {log[-2000:]}")
            time.sleep(0.05)
        yield f"host={d} port={PORT} user=postgres dbname={dbname}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(d, ignore_errors=True)
