"""Hub PostgreSQL access (psycopg 3) and its versioned, additive migrations.

`hub migrate` is safe to run against a hub that already has some of these tables (a CoCalc hub
owns `projects`): tables are created if missing and columns added if missing; nothing is dropped
or retyped. Concurrent migrations are serialised by an advisory lock.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from cocalc_ctl.authnames import ACCESS_CHANNEL
from cocalc_ctl.errors import OperationFailed, PreconditionFailed

MIGRATION_LOCK_KEY = 0x636F63616C63  # "cocalc"

# proxy: the channel hub proxies LISTEN on. Payload: a project uuid (that project's route changed),
# `host:<uuid>` (every project on that host), anything else (forget everything). The triggers of
# the "proxy route notifications" migration send it; a writer may also `NOTIFY` it by hand.
ROUTE_CHANNEL = "cocalc_ctl_routes"
# access: the channel of access-control changes (authnames.ACCESS_CHANNEL), sent at commit by the
# triggers of the "access control" migration. Payloads:
#   account:<account_id>             an account was added, removed, renamed, disabled or re-enabled
#   grant:<project_id>:<account_id>  a grant was added, changed or removed (also by its project's removal)
#   token:<token_id>                 a token was revoked, re-scoped, re-dated or deleted, or one of its
#                                    sessions was deleted (an update of last_used_at alone sends nothing)
#   anything else (`all` after a TRUNCATE)  forget every cached decision
# The hub proxy's cache evicts what a payload names; while it is not listening it must not cache.
PROJECT_ROUTE_SQL = """SELECT p.host_id, h.internal_url FROM projects p
                       LEFT JOIN project_hosts h ON h.id = p.host_id WHERE p.project_id = %s"""
# the hub proxy's batched form: many projects in one query (params: a list of project uuids as text);
# one row per project that exists, all columns text (no uuid objects to build per row)
PROJECT_ROUTES_SQL = """SELECT p.project_id::text, p.host_id::text, h.internal_url FROM projects p
                        LEFT JOIN project_hosts h ON h.id = p.host_id WHERE p.project_id = ANY(%s::uuid[])"""

# moves: the channel `move worker`s LISTEN on. Payload: the project uuid of a move that just became
# claimable (inserted or re-queued, its state changed while no worker holds it, or its lease released:
# a release with a retry delay is claimable only at its `lease_until`). Sent by the trigger of the
# "move: notify claimable moves" migration; workers still poll, rarely, as a fallback.
MOVE_CHANNEL = "cocalc_ctl_moves"
# keys: the channel `keys watch` LISTENs on. Payload: a host uuid (its keys, address, trust or hub
# secrets changed), `hub:<uuid>` (a hub principal's keys), anything else (resync everything).
KEYS_CHANNEL = "cocalc_ctl_keys"
# proxy: the hub credential's per-host secrets (table host_proxy_secrets, migration "proxy: per-host hub
# credential secrets"). The hub signs with a host's oldest key (during a rotation: the old one, which
# every host still accepts); a host reads only its own rows (row-level security).
HUB_SIGNING_KEY_SQL = """SELECT key_id, secret FROM host_proxy_secrets WHERE host_id = %s
                         ORDER BY created_at, key_id LIMIT 1"""
HOST_SECRETS_SQL = """SELECT key_id, secret FROM host_proxy_secrets WHERE host_id = %s
                      ORDER BY created_at, key_id"""

# -- least privilege for hosts ----------------------------------------------------------------------
# A host logs in as HOST_ROLE_PREFIX + its id's 32 hex digits, a member of HOST_GROUP (NOLOGIN), which
# holds every right a host has. cocalc_ctl_host_id() is that id for such a login, else NULL.
HOST_GROUP = "cocalc_ctl_host"
HOST_ROLE_PREFIX = "cocalc_host_"
HOST_INSERT_COLUMNS = ("id", "name", "ssh_server", "status", "last_seen", "host_to_host_public_key",
                       "sshpiperd_public_key", "internal_url")
HOST_UPDATE_COLUMNS = HOST_INSERT_COLUMNS[1:]  # never id, never trusted
HOST_PROJECT_COLUMNS = ("project_id", "host_id", "rootfs_image", "compute_image", "run_quota", "last_backup")


def host_role_name(host_id: str) -> str:
    """The LOGIN role of a host (its id is a validated uuid)."""
    return HOST_ROLE_PREFIX + host_id.replace("-", "").lower()


def _policies(table: str, host_policies: list[str]) -> list[str]:
    names = ["cocalc_ctl_others", "cocalc_ctl_host_read", "cocalc_ctl_host_insert", "cocalc_ctl_host_update"]
    return ([f"DROP POLICY IF EXISTS {n} ON {table}" for n in names]
            + [f"""CREATE POLICY cocalc_ctl_others ON {table} FOR ALL TO PUBLIC
                   USING (NOT cocalc_ctl_is_host()) WITH CHECK (NOT cocalc_ctl_is_host())""",
               f"CREATE POLICY cocalc_ctl_host_read ON {table} FOR SELECT TO {HOST_GROUP} USING (true)"]
            + host_policies
            + [f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY"])


HOST_ROLE_SQL: list[str] = [
    f"""DO $$ BEGIN
          IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{HOST_GROUP}') THEN
            CREATE ROLE {HOST_GROUP} NOLOGIN;
          END IF;
        EXCEPTION WHEN duplicate_object THEN NULL;  -- roles are cluster-wide: another database's migration
        END $$""",
    # whoever holds the group's rights (inherited, or after SET ROLE to it), whatever its name, gets the
    # host policies only. USAGE, not MEMBER: a role that merely administers the group without inheriting
    # it (PostgreSQL 16 grants that to a CREATEROLE creator) is no host.
    f"""CREATE OR REPLACE FUNCTION cocalc_ctl_is_host() RETURNS boolean LANGUAGE sql STABLE AS $$
          SELECT pg_has_role(current_user, '{HOST_GROUP}', 'USAGE') $$""",
    f"""CREATE OR REPLACE FUNCTION cocalc_ctl_host_id() RETURNS uuid LANGUAGE sql STABLE AS $$
          SELECT CASE WHEN current_user ~ '^{HOST_ROLE_PREFIX}[0-9a-f]{{32}}$'
                       AND pg_has_role(current_user, '{HOST_GROUP}', 'USAGE')
                      THEN substr(current_user, {len(HOST_ROLE_PREFIX) + 1})::uuid END $$""",
    f"""DO $$ BEGIN EXECUTE format('GRANT USAGE ON SCHEMA %I TO {HOST_GROUP}', current_schema()); END $$""",
    f"GRANT SELECT ON project_hosts, project_moves, hub_keys, cocalc_ctl_schema_migrations TO {HOST_GROUP}",
    f"GRANT SELECT ({', '.join(HOST_PROJECT_COLUMNS)}) ON projects TO {HOST_GROUP}",
    f"GRANT INSERT ({', '.join(HOST_INSERT_COLUMNS)}) ON project_hosts TO {HOST_GROUP}",
    f"GRANT UPDATE ({', '.join(HOST_UPDATE_COLUMNS)}) ON project_hosts TO {HOST_GROUP}",
    f"GRANT UPDATE (last_backup) ON projects TO {HOST_GROUP}",
    *_policies("project_hosts", [
        f"""CREATE POLICY cocalc_ctl_host_insert ON project_hosts FOR INSERT TO {HOST_GROUP}
            WITH CHECK (id = cocalc_ctl_host_id())""",
        f"""CREATE POLICY cocalc_ctl_host_update ON project_hosts FOR UPDATE TO {HOST_GROUP}
            USING (id = cocalc_ctl_host_id()) WITH CHECK (id = cocalc_ctl_host_id())""",
    ]),
    *_policies("projects", [
        f"""CREATE POLICY cocalc_ctl_host_update ON projects FOR UPDATE TO {HOST_GROUP}
            USING (host_id = cocalc_ctl_host_id()) WITH CHECK (host_id = cocalc_ctl_host_id())""",
    ]),
]


# -- access control (issue: proxy access control) ----------------------------------------------------
ACCESS_TABLES = ("accounts", "project_grants", "access_tokens", "access_sessions")


def _no_hosts(table: str) -> list[str]:
    """Hosts have no business with identities or credentials: no privilege, and (should someone grant
    one later) row-level security that shows them no row. The tables' owner bypasses RLS."""
    return [f"REVOKE ALL ON {table} FROM {HOST_GROUP}",
            f"DROP POLICY IF EXISTS cocalc_ctl_no_hosts ON {table}",
            f"""CREATE POLICY cocalc_ctl_no_hosts ON {table} FOR ALL TO PUBLIC
                USING (NOT cocalc_ctl_is_host()) WITH CHECK (NOT cocalc_ctl_is_host())""",
            f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY"]


def _notify_trigger(table: str, function: str, events: str) -> list[str]:
    name = f"cocalc_ctl_access_{table}"
    return [f"DROP TRIGGER IF EXISTS {name} ON {table}",
            f"""CREATE TRIGGER {name} AFTER {events} ON {table}
                FOR EACH ROW EXECUTE FUNCTION {function}()""",
            f"DROP TRIGGER IF EXISTS {name}_truncate ON {table}",
            f"""CREATE TRIGGER {name}_truncate AFTER TRUNCATE ON {table}
                FOR EACH STATEMENT EXECUTE FUNCTION cocalc_ctl_notify_access_all()"""]


ACCESS_SQL: list[str] = [
    # a CoCalc hub has its own accounts table: add only what is missing, never retype
    """CREATE TABLE IF NOT EXISTS accounts (account_id uuid PRIMARY KEY)""",
    """ALTER TABLE accounts ADD COLUMN IF NOT EXISTS name text""",
    """ALTER TABLE accounts ADD COLUMN IF NOT EXISTS created timestamptz NOT NULL DEFAULT now()""",
    """ALTER TABLE accounts ADD COLUMN IF NOT EXISTS disabled_at timestamptz""",
    """CREATE UNIQUE INDEX IF NOT EXISTS accounts_name_key ON accounts (name)""",
    """CREATE TABLE IF NOT EXISTS project_grants (
           project_id uuid NOT NULL REFERENCES projects (project_id) ON DELETE CASCADE,
           account_id uuid NOT NULL REFERENCES accounts (account_id) ON DELETE CASCADE,
           role       text NOT NULL CHECK (role IN ('owner', 'collaborator', 'viewer')),
           created    timestamptz NOT NULL DEFAULT now(),
           PRIMARY KEY (project_id, account_id))""",
    """CREATE INDEX IF NOT EXISTS project_grants_account ON project_grants (account_id, project_id)""",
    # project_id NULL = every project the account is granted; a scoped token dies with its project
    """CREATE TABLE IF NOT EXISTS access_tokens (
           token_id     uuid PRIMARY KEY,
           account_id   uuid NOT NULL REFERENCES accounts (account_id) ON DELETE CASCADE,
           project_id   uuid REFERENCES projects (project_id) ON DELETE CASCADE,
           name         text,
           token_hash   bytea NOT NULL UNIQUE CHECK (octet_length(token_hash) = 32),
           created      timestamptz NOT NULL DEFAULT now(),
           expires_at   timestamptz,
           revoked_at   timestamptz,
           last_used_at timestamptz)""",
    """CREATE INDEX IF NOT EXISTS access_tokens_account ON access_tokens (account_id, token_id)""",
    """CREATE TABLE IF NOT EXISTS access_sessions (
           session_hash bytea PRIMARY KEY CHECK (octet_length(session_hash) = 32),
           token_id     uuid NOT NULL REFERENCES access_tokens (token_id) ON DELETE CASCADE,
           account_id   uuid NOT NULL,
           project_id   uuid NOT NULL,
           created      timestamptz NOT NULL DEFAULT now(),
           expires_at   timestamptz NOT NULL)""",
    """CREATE INDEX IF NOT EXISTS access_sessions_token ON access_sessions (token_id)""",
    """CREATE INDEX IF NOT EXISTS access_sessions_expires ON access_sessions (expires_at)""",
    f"""CREATE OR REPLACE FUNCTION cocalc_ctl_notify_access_all() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          PERFORM pg_notify('{ACCESS_CHANNEL}', 'all');
          RETURN NULL;
        END $$""",
    f"""CREATE OR REPLACE FUNCTION cocalc_ctl_notify_account() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF TG_OP <> 'INSERT' THEN PERFORM pg_notify('{ACCESS_CHANNEL}', 'account:' || OLD.account_id); END IF;
          IF TG_OP <> 'DELETE' THEN PERFORM pg_notify('{ACCESS_CHANNEL}', 'account:' || NEW.account_id); END IF;
          RETURN NULL;
        END $$""",
    f"""CREATE OR REPLACE FUNCTION cocalc_ctl_notify_grant() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF TG_OP <> 'INSERT' THEN
            PERFORM pg_notify('{ACCESS_CHANNEL}', 'grant:' || OLD.project_id || ':' || OLD.account_id);
          END IF;
          IF TG_OP <> 'DELETE' THEN
            PERFORM pg_notify('{ACCESS_CHANNEL}', 'grant:' || NEW.project_id || ':' || NEW.account_id);
          END IF;
          RETURN NULL;
        END $$""",
    f"""CREATE OR REPLACE FUNCTION cocalc_ctl_notify_token() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          PERFORM pg_notify('{ACCESS_CHANNEL}', 'token:' || OLD.token_id);
          IF TG_OP = 'UPDATE' AND NEW.token_id IS DISTINCT FROM OLD.token_id THEN
            PERFORM pg_notify('{ACCESS_CHANNEL}', 'token:' || NEW.token_id);
          END IF;
          RETURN NULL;
        END $$""",
    # a CoCalc hub writes its accounts rows often (last_active): only what a decision reads notifies
    *_notify_trigger("accounts", "cocalc_ctl_notify_account",
                     "INSERT OR DELETE OR UPDATE OF account_id, name, disabled_at"),
    *_notify_trigger("project_grants", "cocalc_ctl_notify_grant", "INSERT OR UPDATE OR DELETE"),
    # a new token changes no cached decision; last_used_at (touched once a minute) must not flush caches
    *_notify_trigger("access_tokens", "cocalc_ctl_notify_token", "UPDATE OF token_id, account_id, project_id, "
                     "token_hash, expires_at, revoked_at OR DELETE"),
    *_notify_trigger("access_sessions", "cocalc_ctl_notify_token", "DELETE"),
    *[sql for t in ACCESS_TABLES for sql in _no_hosts(t)],
]

# Each migration is (name, statements). Append only.
MIGRATIONS: list[tuple[str, list[str]]] = [
    ("core tables", [
        """CREATE TABLE IF NOT EXISTS projects (project_id uuid PRIMARY KEY)""",
        """ALTER TABLE projects ADD COLUMN IF NOT EXISTS host_id uuid""",
        """ALTER TABLE projects ADD COLUMN IF NOT EXISTS rootfs_image text""",
        """ALTER TABLE projects ADD COLUMN IF NOT EXISTS compute_image text""",
        """ALTER TABLE projects ADD COLUMN IF NOT EXISTS move_status jsonb""",
        """ALTER TABLE projects ADD COLUMN IF NOT EXISTS last_backup timestamptz""",
        """CREATE TABLE IF NOT EXISTS project_hosts (id uuid PRIMARY KEY)""",
        """ALTER TABLE project_hosts ADD COLUMN IF NOT EXISTS name text""",
        """ALTER TABLE project_hosts ADD COLUMN IF NOT EXISTS ssh_server text""",
        """ALTER TABLE project_hosts ADD COLUMN IF NOT EXISTS status text NOT NULL DEFAULT 'active'""",
        """ALTER TABLE project_hosts ADD COLUMN IF NOT EXISTS last_seen timestamptz""",
        """ALTER TABLE project_hosts ADD COLUMN IF NOT EXISTS host_to_host_public_key text""",
        """ALTER TABLE project_hosts ADD COLUMN IF NOT EXISTS sshpiperd_public_key text""",
        """ALTER TABLE project_hosts ADD COLUMN IF NOT EXISTS trusted boolean NOT NULL DEFAULT false""",
        """ALTER TABLE project_hosts ADD COLUMN IF NOT EXISTS internal_url text""",
        """CREATE TABLE IF NOT EXISTS project_moves (
               project_id     uuid PRIMARY KEY,
               source_host_id uuid,
               dest_host_id   uuid,
               state          text NOT NULL DEFAULT 'queued',
               mode           text NOT NULL DEFAULT 'pipe',
               snapshot_name  text,
               progress       jsonb,
               status_reason  text,
               attempt        integer NOT NULL DEFAULT 0,
               lease_owner    text,
               lease_until    timestamptz,
               created_at     timestamptz NOT NULL DEFAULT now(),
               updated_at     timestamptz NOT NULL DEFAULT now())""",
        """CREATE INDEX IF NOT EXISTS project_moves_state ON project_moves(state, lease_until)""",
    ]),
    # keys: NOTIFY cocalc_ctl_keys when a host's keys, address, status or trust change (keys watch)
    ("keys: notify", [
        """CREATE OR REPLACE FUNCTION cocalc_ctl_notify_keys() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
             PERFORM pg_notify('cocalc_ctl_keys', coalesce(NEW.id, OLD.id)::text);
             RETURN NULL;
           END $$""",
        """DROP TRIGGER IF EXISTS cocalc_ctl_keys_changed ON project_hosts""",
        """CREATE TRIGGER cocalc_ctl_keys_changed AFTER INSERT OR DELETE ON project_hosts
           FOR EACH ROW EXECUTE FUNCTION cocalc_ctl_notify_keys()""",
        """DROP TRIGGER IF EXISTS cocalc_ctl_keys_updated ON project_hosts""",
        """CREATE TRIGGER cocalc_ctl_keys_updated AFTER UPDATE ON project_hosts
           FOR EACH ROW WHEN (OLD.trusted IS DISTINCT FROM NEW.trusted
                              OR OLD.status IS DISTINCT FROM NEW.status
                              OR OLD.ssh_server IS DISTINCT FROM NEW.ssh_server
                              OR OLD.host_to_host_public_key IS DISTINCT FROM NEW.host_to_host_public_key
                              OR OLD.sshpiperd_public_key IS DISTINCT FROM NEW.sshpiperd_public_key)
           EXECUTE FUNCTION cocalc_ctl_notify_keys()""",
    ]),
    # move: compression per move, and when the post-move clean-up (source delete / destination roll-back) ran
    ("move: compression and clean-up tracking", [
        """ALTER TABLE project_moves ADD COLUMN IF NOT EXISTS compress text NOT NULL DEFAULT 'none'""",
        """ALTER TABLE project_moves ADD COLUMN IF NOT EXISTS cleaned_at timestamptz""",
    ]),
    # proxy: NOTIFY ROUTE_CHANNEL whenever a project's host or a host's internal_url changes, so hub
    # proxies evict their cached route at commit time whoever the writer is.
    ("proxy route notifications", [
        """CREATE OR REPLACE FUNCTION cocalc_ctl_notify_project_route() RETURNS trigger
           LANGUAGE plpgsql AS $$
           BEGIN
             IF TG_OP = 'DELETE' THEN
               PERFORM pg_notify('cocalc_ctl_routes', OLD.project_id::text);
               RETURN OLD;
             END IF;
             IF TG_OP = 'INSERT' OR NEW.host_id IS DISTINCT FROM OLD.host_id THEN
               PERFORM pg_notify('cocalc_ctl_routes', NEW.project_id::text);
             END IF;
             RETURN NEW;
           END $$""",
        """DROP TRIGGER IF EXISTS cocalc_ctl_project_route ON projects""",
        """CREATE TRIGGER cocalc_ctl_project_route AFTER INSERT OR DELETE OR UPDATE OF host_id ON projects
           FOR EACH ROW EXECUTE FUNCTION cocalc_ctl_notify_project_route()""",
        """CREATE OR REPLACE FUNCTION cocalc_ctl_notify_host_route() RETURNS trigger
           LANGUAGE plpgsql AS $$
           BEGIN
             IF TG_OP = 'DELETE' THEN
               PERFORM pg_notify('cocalc_ctl_routes', 'host:' || OLD.id::text);
               RETURN OLD;
             END IF;
             IF NEW.internal_url IS DISTINCT FROM OLD.internal_url OR NEW.status IS DISTINCT FROM OLD.status THEN
               PERFORM pg_notify('cocalc_ctl_routes', 'host:' || NEW.id::text);
             END IF;
             RETURN NEW;
           END $$""",
        """DROP TRIGGER IF EXISTS cocalc_ctl_host_route ON project_hosts""",
        """CREATE TRIGGER cocalc_ctl_host_route AFTER DELETE OR UPDATE OF internal_url, status ON project_hosts
           FOR EACH ROW EXECUTE FUNCTION cocalc_ctl_notify_host_route()""",
    ]),
    # move: the backup a `--mode backup` move made on the source (its destination restores exactly that one)
    ("move: backup id of a backup-mode move", [
        """ALTER TABLE project_moves ADD COLUMN IF NOT EXISTS backup_id text""",
    ]),
    # move authority: the hub principal's public keys (one row per hub machine; current key first, the
    # previous one second during a rotation), distributed by `keys sync`; and each move's id, named in
    # its tickets (hosts record finished move ids to refuse replays)
    ("move authority: hub keys and move ids", [
        """CREATE TABLE IF NOT EXISTS hub_keys (
               hub_id      uuid PRIMARY KEY,
               public_keys text NOT NULL,
               updated_at  timestamptz NOT NULL DEFAULT now())""",
        """DROP TRIGGER IF EXISTS cocalc_ctl_hub_keys_changed ON hub_keys""",
        """CREATE OR REPLACE FUNCTION cocalc_ctl_notify_hub_keys() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
             PERFORM pg_notify('cocalc_ctl_keys', 'hub:' || coalesce(NEW.hub_id, OLD.hub_id)::text);
             RETURN NULL;
           END $$""",
        """CREATE TRIGGER cocalc_ctl_hub_keys_changed AFTER INSERT OR UPDATE OR DELETE ON hub_keys
           FOR EACH ROW EXECUTE FUNCTION cocalc_ctl_notify_hub_keys()""",
        """ALTER TABLE project_moves ADD COLUMN IF NOT EXISTS move_id uuid""",
    ]),
    # run quotas: {"memory","swap","tmp","disk": bytes, "pids","cpu_shares": int}; absent key = host default
    ("projects: run quota", [
        """ALTER TABLE projects ADD COLUMN IF NOT EXISTS run_quota jsonb""",
    ]),
    # fleet scale: the move worker's claim (its WHERE clause without the lease test, in its ORDER BY
    # order: a poll reads only the claimable rows, never the finished ones), projects by host (`move
    # start`'s least-loaded host, `hub project list --host`, paged), the newest moves first (`move status`)
    ("fleet scale: claim, host and paging indexes", [
        """CREATE INDEX IF NOT EXISTS project_moves_claimable ON project_moves (created_at, project_id)
           WHERE state = ANY(ARRAY['queued', 'preparing', 'sending', 'finalizing']::text[])
              OR (state IN ('done', 'failing', 'cancelled') AND cleaned_at IS NULL)""",
        """CREATE INDEX IF NOT EXISTS projects_host_id ON projects (host_id, project_id)""",
        """CREATE INDEX IF NOT EXISTS project_moves_updated ON project_moves (updated_at, project_id)""",
    ]),
    # least privilege: the group role of host logins (`hub host-role`). A host reads what it needs and
    # writes only its own project_hosts row (never `trusted`) and its own projects' last_backup; row-level
    # security compares `id` / `host_id` with the id in the login's name. The owner (the hub's own
    # role) and superusers bypass RLS; any other non-host role keeps full row access (cocalc_ctl_others).
    ("least privilege: host role", HOST_ROLE_SQL),
    # moves: NOTIFY MOVE_CHANNEL (payload: the project uuid) when a move becomes claimable with no worker
    # holding it, so idle workers claim at once instead of polling; a step taken under a lease sends
    # nothing (only that worker cares). The condition mirrors the worker's claimable states.
    ("move: notify claimable moves", [
        """CREATE OR REPLACE FUNCTION cocalc_ctl_move_claimable(state text, cleaned_at timestamptz)
           RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
             SELECT state = ANY(ARRAY['queued', 'preparing', 'sending', 'finalizing']::text[])
                 OR (state IN ('done', 'failing', 'cancelled') AND cleaned_at IS NULL) $$""",
        """CREATE OR REPLACE FUNCTION cocalc_ctl_notify_move() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
             IF NEW.lease_owner IS NULL AND cocalc_ctl_move_claimable(NEW.state, NEW.cleaned_at)
                AND (TG_OP = 'INSERT' OR OLD.lease_owner IS NOT NULL OR OLD.state IS DISTINCT FROM NEW.state
                     OR NOT cocalc_ctl_move_claimable(OLD.state, OLD.cleaned_at)) THEN
               PERFORM pg_notify('cocalc_ctl_moves', NEW.project_id::text);
             END IF;
             RETURN NULL;
           END $$""",
        """DROP TRIGGER IF EXISTS cocalc_ctl_move_claimable ON project_moves""",
        """CREATE TRIGGER cocalc_ctl_move_claimable AFTER INSERT OR UPDATE ON project_moves
           FOR EACH ROW EXECUTE FUNCTION cocalc_ctl_notify_move()""",
    ]),
    # access control: who may reach which project through the hub proxy (accounts, grants, tokens and
    # the proxy's login sessions; state/hub_access.py has the decision queries). NOTIFY ACCESS_CHANNEL
    # (payloads at its definition above). Hosts get no right on these tables (no grant, and row-level
    # security that hides every row from them should one be granted by mistake).
    ("access control: accounts, grants, tokens, sessions", ACCESS_SQL),
    # proxy: one secret per host (256 bits, made by the hub at `keys trust` or `keys proxy-secret`) that
    # keys the hub proxy's credential on every request it forwards there; two rows during a rotation.
    # A host login reads only its own rows; every change NOTIFYs the keys channel with the host id, so
    # `keys watch` on that host and the hub proxies' signing caches pick it up at once.
    ("proxy: per-host hub credential secrets", [
        """CREATE TABLE IF NOT EXISTS host_proxy_secrets (
               host_id    uuid NOT NULL,
               key_id     text NOT NULL CHECK (key_id ~ '^[0-9a-f]{16}$'),
               secret     bytea NOT NULL CHECK (length(secret) = 32),
               created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
               PRIMARY KEY (host_id, key_id))""",
        """CREATE OR REPLACE FUNCTION cocalc_ctl_notify_proxy_secrets() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
             PERFORM pg_notify('cocalc_ctl_keys', coalesce(NEW.host_id, OLD.host_id)::text);
             RETURN NULL;
           END $$""",
        """DROP TRIGGER IF EXISTS cocalc_ctl_proxy_secrets_changed ON host_proxy_secrets""",
        """CREATE TRIGGER cocalc_ctl_proxy_secrets_changed AFTER INSERT OR UPDATE OR DELETE ON host_proxy_secrets
           FOR EACH ROW EXECUTE FUNCTION cocalc_ctl_notify_proxy_secrets()""",
        f"GRANT SELECT ON host_proxy_secrets TO {HOST_GROUP}",
        """DROP POLICY IF EXISTS cocalc_ctl_others ON host_proxy_secrets""",
        """DROP POLICY IF EXISTS cocalc_ctl_host_read ON host_proxy_secrets""",
        """CREATE POLICY cocalc_ctl_others ON host_proxy_secrets FOR ALL TO PUBLIC
           USING (NOT cocalc_ctl_is_host()) WITH CHECK (NOT cocalc_ctl_is_host())""",
        f"""CREATE POLICY cocalc_ctl_host_read ON host_proxy_secrets FOR SELECT TO {HOST_GROUP}
            USING (host_id = cocalc_ctl_host_id())""",
        """ALTER TABLE host_proxy_secrets ENABLE ROW LEVEL SECURITY""",
    ]),
    # fleet scale: how many projects each host holds, kept by a trigger on projects, so `move start`'s
    # destination choice reads one row per candidate host instead of every project of the fleet. The
    # backfill runs under a lock that keeps writers out between the count and the trigger's first change.
    ("fleet scale: per-host project counts", [
        """LOCK TABLE projects IN SHARE ROW EXCLUSIVE MODE""",
        """CREATE TABLE IF NOT EXISTS host_project_counts (
               host_id uuid PRIMARY KEY,
               n       bigint NOT NULL DEFAULT 0 CHECK (n >= 0))""",
        """CREATE OR REPLACE FUNCTION cocalc_ctl_count_projects() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
             IF TG_OP = 'UPDATE' AND OLD.host_id IS NOT DISTINCT FROM NEW.host_id THEN
               RETURN NULL;
             END IF;
             IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.host_id IS NOT NULL THEN
               UPDATE host_project_counts SET n = n - 1 WHERE host_id = OLD.host_id;
             END IF;
             IF TG_OP IN ('UPDATE', 'INSERT') AND NEW.host_id IS NOT NULL THEN
               INSERT INTO host_project_counts (host_id, n) VALUES (NEW.host_id, 1)
                 ON CONFLICT (host_id) DO UPDATE SET n = host_project_counts.n + 1;
             END IF;
             RETURN NULL;
           END $$""",
        """CREATE OR REPLACE FUNCTION cocalc_ctl_count_projects_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
             DELETE FROM host_project_counts;
             RETURN NULL;
           END $$""",
        """DROP TRIGGER IF EXISTS cocalc_ctl_projects_count ON projects""",
        """CREATE TRIGGER cocalc_ctl_projects_count AFTER INSERT OR DELETE OR UPDATE OF host_id ON projects
           FOR EACH ROW EXECUTE FUNCTION cocalc_ctl_count_projects()""",
        """DROP TRIGGER IF EXISTS cocalc_ctl_projects_count_truncate ON projects""",
        """CREATE TRIGGER cocalc_ctl_projects_count_truncate AFTER TRUNCATE ON projects
           FOR EACH STATEMENT EXECUTE FUNCTION cocalc_ctl_count_projects_truncated()""",
        """DELETE FROM host_project_counts""",
        """INSERT INTO host_project_counts (host_id, n)
           SELECT host_id, count(*) FROM projects WHERE host_id IS NOT NULL GROUP BY host_id""",
        *_no_hosts("host_project_counts"),
    ]),
]


@dataclass
class MigrateResult:
    applied: list[str]
    version: int


# a LISTEN session is idle for hours: TCP keepalives notice a hub that vanished without closing it
# (the DSN's own keepalive settings win; unix sockets ignore them)
LISTEN_KEEPALIVES = {"keepalives": "1", "keepalives_idle": "30", "keepalives_interval": "10",
                     "keepalives_count": "3"}


def connect(dsn: str | None, *, autocommit: bool = True, listen: bool = False):
    """A hub connection; `listen`: for a long-lived LISTEN session (TCP keepalives)."""
    if not dsn:
        raise PreconditionFailed("hub_dsn is not configured", hint="set hub_dsn in the config or COCALC_CTL_HUB_DSN")
    import psycopg

    extra = {}
    if listen:
        from psycopg.conninfo import conninfo_to_dict

        try:
            given = conninfo_to_dict(dsn)
        except psycopg.ProgrammingError:
            given = {}
        extra = {k: v for k, v in LISTEN_KEEPALIVES.items() if k not in given}
    try:
        return psycopg.connect(dsn, autocommit=autocommit, connect_timeout=10, **extra)
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "connection failed"
        raise OperationFailed(f"cannot connect to the hub database: {first}",
                              hint="check hub_dsn and that PostgreSQL is running") from None


class HubPool:
    """A psycopg_pool connection pool for a long-running hub-side command (`move worker`): connections
    are opened once and reused instead of one per statement, and checked (an empty query) when taken,
    so a hub restart costs one failed check, not a failed step. psycopg_pool is imported only here:
    short commands never load it. An unreachable hub is the same one-line error as `connect()`."""

    def __init__(self, dsn: str | None, *, max_size: int, name: str):
        connect(dsn).close()  # fail at once, with connect()'s message, when the hub is unreachable
        from psycopg_pool import ConnectionPool

        self._pool = ConnectionPool(dsn, min_size=1, max_size=max(1, max_size), name=name, open=False,
                                    kwargs={"autocommit": True, "connect_timeout": 10}, timeout=30.0,
                                    check=ConnectionPool.check_connection)
        self._pool.open(wait=False)

    @contextlib.contextmanager
    def connection(self):
        import psycopg
        from psycopg_pool import PoolTimeout

        try:
            conn = self._pool.getconn()
        except (PoolTimeout, psycopg.OperationalError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "connection failed"
            raise OperationFailed(f"cannot connect to the hub database: {first}",
                                  hint="check hub_dsn and that PostgreSQL is running") from None
        try:
            yield conn
        finally:
            self._pool.putconn(conn)  # a broken or mid-transaction connection is discarded or rolled back

    def close(self) -> None:
        self._pool.close()


PROBE_PREFIX = "probe:"  # a LISTEN session's self-test on any channel; listeners ignore it


def probe_listen(conn, dsn: str | None, channel: str, *, timeout: float = 5.0, on_other=None) -> bool:
    """Does a NOTIFY on `channel` reach `conn`, which has just run LISTEN on it? Sends a probe payload
    from a second session and waits up to `timeout`. False means the notifications go elsewhere —
    typically a transaction-pooling proxy between us and PostgreSQL, which runs the LISTEN on a server
    session it then hands to other clients. Other notifications seen meanwhile go to `on_other`."""
    import time
    import uuid

    probe = f"{PROBE_PREFIX}{uuid.uuid4()}"
    with connect(dsn) as other:
        other.execute("SELECT pg_notify(%s, %s)", (channel, probe))
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        for n in conn.notifies(timeout=left, stop_after=1):
            if n.payload == probe:
                return True
            if on_other is not None and not n.payload.startswith(PROBE_PREFIX):
                on_other(n)
    return False


def migrate(dsn: str | None) -> MigrateResult:
    with connect(dsn, autocommit=False) as conn:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
            conn.execute("""CREATE TABLE IF NOT EXISTS cocalc_ctl_schema_migrations (
                               version    integer PRIMARY KEY,
                               name       text NOT NULL,
                               applied_at timestamptz NOT NULL DEFAULT now())""")
            done = {r[0] for r in conn.execute("SELECT version FROM cocalc_ctl_schema_migrations")}
            applied = []
            for version, (name, statements) in enumerate(MIGRATIONS, start=1):
                if version in done:
                    continue
                for sql in statements:
                    conn.execute(sql)
                conn.execute("INSERT INTO cocalc_ctl_schema_migrations(version, name) VALUES (%s, %s)",
                             (version, name))
                applied.append(f"{version}: {name}")
            top = max(done | {v for v in range(1, len(MIGRATIONS) + 1)}) if MIGRATIONS else 0
    return MigrateResult(applied=applied, version=top)


def schema_version(dsn: str | None) -> int:
    with connect(dsn) as conn:
        row = conn.execute("SELECT to_regclass('cocalc_ctl_schema_migrations')").fetchone()
        if row[0] is None:
            return 0
        return conn.execute("SELECT coalesce(max(version), 0) FROM cocalc_ctl_schema_migrations").fetchone()[0]
