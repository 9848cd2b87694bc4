"""Hub schema management (the hub's PostgreSQL)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ContextManager

from cocalc_ctl import ids, proc, safepath
from cocalc_ctl.config import Config
from cocalc_ctl.errors import InvalidInput, PreconditionFailed
from cocalc_ctl.state import hub_db


def migrate(cfg: Config) -> hub_db.MigrateResult | None:
    """Apply pending hub migrations; under --dry-run only say so (returns None)."""
    if proc.plan_only("# apply pending hub migrations to hub_dsn"):
        return None
    return hub_db.migrate(cfg["hub_dsn"])


# -- hub host-role: a host's own least-privilege login ------------------------------------------------

@dataclass
class HostRoleResult:
    host_id: str
    host_name: str | None
    role: str
    action: str  # created | updated | dropped | absent
    password_file: str | None = None  # where the new password was written (never the password itself)
    dsn: str | None = None  # the hub_dsn to put in the host's config (no password in it)


def _dsn_template(hub_dsn: str, role: str, password_file: str | None) -> str:
    """The hub's DSN with this login's user and no secret: the host admin adds the password source."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = {k: v for k, v in conninfo_to_dict(hub_dsn).items()
              if k not in ("user", "password", "passfile", "sslkey", "sslcert", "sslpassword")}
    params["user"] = role
    if password_file:
        params["passfile"] = "/etc/cocalc-ctl/hub.pgpass"  # where the host admin installs the file
    return make_conninfo(**params)


def _staged_password_file(path: str, role: str, password: str) -> ContextManager[safepath.StagedWrite]:
    """A libpq password file line for `role`, written (0600, refusing symlinks) under a temporary name
    beside `path`; the caller commits it once PostgreSQL holds the password (else it is removed)."""
    final = os.path.abspath(path)
    parent = os.path.dirname(final)
    if not os.path.isdir(parent):
        raise InvalidInput(f"--password-file: no directory {parent}", hint="create it first (mode 0700)")
    mode = os.stat(parent).st_mode & 0o777
    if mode & 0o077:
        raise InvalidInput(f"--password-file: {parent} is open to other users (mode {mode:04o})",
                           hint="put the file in a 0700 directory")
    if os.path.islink(final) or (os.path.exists(final) and not os.path.isfile(final)):
        raise InvalidInput(f"--password-file: {final} is not a regular file", hint="name a new file")
    # libpq passfile format (host:port:database:user:password); the password has no ':' or '\'
    return safepath.staged_write(final, f"*:*:*:{role}:{password}\n", mode=0o600)


def _check_host_role_args(password_file: str | None, no_password: bool, drop: bool) -> None:
    if drop and (password_file or no_password):
        raise InvalidInput("--drop takes no --password-file or --no-password", hint="give --drop alone")
    if not drop and bool(password_file) == bool(no_password):
        raise InvalidInput("give --password-file PATH or --no-password",
                           hint="--no-password for peer or certificate authentication")


def _require_host_group(conn) -> None:
    # the migration's function is per database, its group role per cluster: both must be there
    if conn.execute("SELECT to_regprocedure('cocalc_ctl_host_id()') IS NULL "
                    "OR NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %s)",
                    (hub_db.HOST_GROUP,)).fetchone()[0]:
        raise PreconditionFailed("the hub has no host role migration yet", hint="run `cocalc-ctl hub migrate` first")


def _host_of(conn, host: str) -> tuple[str, str | None]:
    """(host id, name) of `host`, an id or a name; a host may get its login before its first
    `keys register`, so an id need not be in project_hosts yet."""
    from cocalc_ctl.actions.hub import placement

    if ids.is_uuid(host):
        hid = ids.host_id(host)
        row = conn.execute("SELECT name FROM project_hosts WHERE id = %s", (hid,)).fetchone()
        return hid, row[0] if row else None
    hid, name, _status = placement.resolve_host(conn, host)
    return hid, name


def _drop_role(conn, role: str) -> None:
    from psycopg import sql

    if proc.plan_only(f"# DROP ROLE {role} in the hub"):
        return
    with conn.transaction():
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def _grant_login(conn, role: str, exists: bool, verifier: str | None) -> None:
    """Create or alter `role` as a LOGIN member of the host group with `verifier` (or no password), committed."""
    from psycopg import sql

    with conn.transaction():
        ident = sql.Identifier(role)
        if not exists:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION"
                                 " NOBYPASSRLS").format(ident))
        conn.execute(sql.SQL("ALTER ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION"
                             " NOBYPASSRLS INHERIT PASSWORD {}").format(
            ident, sql.Literal(verifier) if verifier else sql.SQL("NULL")))
        conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(hub_db.HOST_GROUP), ident))
    conn.commit()


def host_role(cfg: Config, host: str, *, password_file: str | None = None, no_password: bool = False,
              drop: bool = False) -> HostRoleResult:
    """Create or update (or with `drop`, drop) the LOGIN role host `host` connects to the hub as: a
    member of hub_db.HOST_GROUP, so it has exactly the host rights of the "least privilege" migration.
    A new password goes only to `password_file` (0600) and to PostgreSQL as a SCRAM verifier."""
    import secrets

    from cocalc_ctl.actions.hub import placement

    _check_host_role_args(password_file, no_password, drop)
    placement.host_ref(host)
    with hub_db.connect(cfg["hub_dsn"], autocommit=False) as conn:
        if not drop:
            _require_host_group(conn)
        hid, name = _host_of(conn, host)
        role = hub_db.host_role_name(hid)
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is not None
        if drop:
            _drop_role(conn, role)
            return HostRoleResult(hid, name, role, "dropped" if exists else "absent")
        action = "updated" if exists else "created"
        dsn = _dsn_template(cfg["hub_dsn"], role, password_file)
        what = "with a new password" if password_file else "without a password"
        if proc.plan_only(f"# {'ALTER' if exists else 'CREATE'} ROLE {role} LOGIN {what}, IN ROLE {hub_db.HOST_GROUP}"):
            return HostRoleResult(hid, name, role, action, password_file, dsn)
        if not password_file:
            _grant_login(conn, role, exists, None)
            return HostRoleResult(hid, name, role, action, None, dsn)
        password = secrets.token_urlsafe(32)
        with _staged_password_file(password_file, role, password) as staged:
            # only the SCRAM verifier reaches the server (and its logs), never the password
            verifier = conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256").decode()
            del password
            _grant_login(conn, role, exists, verifier)
            staged.commit()  # PostgreSQL holds the new password before the file takes its final name
    return HostRoleResult(hid, name, role, action, os.path.abspath(password_file), dsn)
