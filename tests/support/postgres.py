"""A throwaway PostgreSQL server (unix socket only) for one test session."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

PG_BIN_DIRS = ["/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/local/bin", "/usr/bin"]


def pg_bin(name: str) -> str:
    for d in PG_BIN_DIRS:
        p = os.path.join(d, name)
        if os.path.exists(p):
            return p
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found: apt-get install postgresql")
    return found


class Postgres:
    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="cocalc-pg-"))
        self.data = self.dir / "data"
        self.user = "nobody" if os.geteuid() == 0 else None
        os.chmod(self.dir, 0o755)
        if self.user:
            shutil.chown(self.dir, user=self.user)

    def _as_user(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", self.user, "--", *argv] if self.user else argv

    def start(self) -> "Postgres":
        subprocess.run(self._as_user([pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                                      "-E", "UTF8", "--no-sync"]), check=True, capture_output=True)
        self.resume()
        return self

    def resume(self) -> None:
        """Start the server (again, after `pause()`), same socket directory and settings."""
        subprocess.run(self._as_user([pg_bin("pg_ctl"), "-D", str(self.data), "-o",
                                      f"-k {self.dir} -c listen_addresses='' -c fsync=off -c max_connections=200",
                                      "-l", str(self.dir / "log"), "-w", "start"]), check=True, capture_output=True)

    def pause(self) -> None:
        """Stop the server (fast shutdown: sessions are ended), keeping its data for `resume()`."""
        subprocess.run(self._as_user([pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]),
                       check=True, capture_output=True)

    def stop(self) -> None:
        subprocess.run(self._as_user([pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"]),
                       capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host={self.dir} user=postgres dbname={dbname}"

    def new_database(self) -> str:
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def wait_ready(self, timeout: float = 10) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.dsn(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def sql(dsn: str, query: str, params=()) -> list:
    """Run one statement on the hub (autocommit); the rows it returns, if any."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []
