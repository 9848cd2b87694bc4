"""Who may reach a project through the hub proxy: `hub account`, `hub project grant|revoke|users`, `hub token`.

An account is an identity (a name, or an id a CoCalc hub already uses); a grant gives it a role on one
project (owner, collaborator: everything; viewer: safe methods only); an access token authenticates it
(optionally for one project only, until an expiry, until revoked). Every name, id and duration is
validated here, where it enters. A token's value exists only in the result of `create_token` (printed
once); the hub keeps its SHA-256. Every change notifies running hub proxies at commit (hub_db triggers).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from cocalc_ctl import ids, paging, proc
from cocalc_ctl.authnames import SESSION_PREFIX, TOKEN_PREFIX
from cocalc_ctl.config import Config
from cocalc_ctl.errors import InvalidInput, NotFound, PreconditionFailed
from cocalc_ctl.state import hub_access, hub_db
from cocalc_ctl.state.hub_access import ROLES, Account, Token

ACCOUNT_NAME_MAX = 64
_ACCOUNT_NAME_RE = re.compile(r"[a-z][a-z0-9._-]{0,63}", re.ASCII)
_TOKEN_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._:@/+-]{0,99}", re.ASCII)
_DURATION_RE = re.compile(r"([0-9]{1,7})([dhm])", re.ASCII)
_ID_PREFIX_RE = re.compile(r"[0-9a-f]{8}(?:[0-9a-f-]{0,28})", re.ASCII)
DURATION_UNITS = {"d": dt.timedelta(days=1), "h": dt.timedelta(hours=1), "m": dt.timedelta(minutes=1)}
MAX_TOKEN_LIFETIME = dt.timedelta(days=3650)
DEFAULT_TOKEN_EXPIRY = "30d"


# -- validation (pure) ----------------------------------------------------------------------------------

_SECRET_RE = re.compile(f"(?:{TOKEN_PREFIX}|{SESSION_PREFIX})[A-Za-z0-9_-]{{8,}}", re.ASCII)


def _show(value: object) -> str:
    """Untrusted input inside a one-line message: repr (no control characters), at most 80 characters,
    and never a token or session value (a user may paste one in the wrong place)."""
    text = _SECRET_RE.sub(lambda m: m.group(0)[:len(TOKEN_PREFIX)] + "…(redacted)", repr(value))
    return text if len(text) <= 80 else text[:77] + "...'"


def account_name(value: str) -> str:
    """1-64 of a-z 0-9 . _ -, starting with a letter, and not a uuid (ACCOUNT arguments take either)."""
    hint = f"use 1-{ACCOUNT_NAME_MAX} lowercase letters, digits and . _ -, starting with a letter"
    if not isinstance(value, str) or not value:
        raise InvalidInput("invalid account name: empty", hint=hint)
    if _ACCOUNT_NAME_RE.fullmatch(value) is None or value.endswith((".", "-")) or ".." in value:
        raise InvalidInput(f"invalid account name {_show(value)}", hint=hint)
    if ids.is_uuid(value):
        raise InvalidInput(f"invalid account name {value}: it is a uuid", hint="account names must not look like ids")
    return value


def account_ref(value: str) -> tuple[str | None, str | None]:
    """ACCOUNT on the command line: (account_id, None) for a uuid, (None, name) for a valid name."""
    if ids.is_uuid(value):
        return value, None
    try:
        return None, account_name(value)
    except InvalidInput:
        raise InvalidInput(f"invalid account {_show(value)}",
                           hint="give an account name (a-z 0-9 . _ -) or its lowercase uuid") from None


def duration(value: str) -> dt.timedelta | None:
    """`30d`, `12h`, `90m` (1 minute to 10 years), or `never` (None)."""
    hint = "give a number with d, h or m (e.g. 30d, 12h, 90m; at most 3650d), or `never`"
    if value == "never":
        return None
    m = _DURATION_RE.fullmatch(value or "")
    if m is None:
        raise InvalidInput(f"invalid duration {_show(value)}", hint=hint)
    span = int(m.group(1)) * DURATION_UNITS[m.group(2)]
    if not dt.timedelta(minutes=1) <= span <= MAX_TOKEN_LIFETIME:
        raise InvalidInput(f"duration {value} is out of range", hint=hint)
    return span


def token_name(value: str | None) -> str | None:
    if value is None:
        return None
    if TOKEN_PREFIX in value or SESSION_PREFIX in value:  # a pasted secret would be stored in clear
        raise InvalidInput("invalid token name: it contains a token", hint="a name is a label such as ci or laptop")
    if _TOKEN_NAME_RE.fullmatch(value) is None or value != value.strip():
        raise InvalidInput(f"invalid token name {_show(value)}",
                           hint="use up to 100 letters, digits, spaces and . _ : @ / + -, starting with a letter or digit")
    return value


def role(value: str) -> str:
    if value not in ROLES:
        raise InvalidInput(f"invalid role {_show(value)}", hint="give owner, collaborator or viewer")
    return value


def token_ref(value: str) -> str:
    """TOKEN_ID: a whole uuid or its first 8+ characters (as terminal tables show it)."""
    if not isinstance(value, str) or _ID_PREFIX_RE.fullmatch(value) is None:
        raise InvalidInput(f"invalid token id {_show(value)}",
                           hint="give the token id (a uuid, or its first 8 characters) from `hub token list`")
    return value


def _uuid_key(what: str):
    def key(after: str) -> str:
        if not ids.is_uuid(after):
            raise InvalidInput(f"--after {_show(after)} is not {what}",
                               hint="give the KEY from the previous page's `more: --after KEY`")
        return after
    return key


# -- results ----------------------------------------------------------------------------------------------

@dataclass
class AccountChange:
    action: str  # created | unchanged | disabled | enabled
    account: Account


@dataclass
class GrantChange:
    project_id: str
    account_id: str
    account: str | None  # name
    action: str  # created | updated | unchanged | revoked | absent
    role: str | None  # the role now (None after revoke)
    previous_role: str | None = None


@dataclass
class CreatedToken:
    """The one result that carries a token's value: printed once, never stored, never logged."""

    token_id: str
    account_id: str
    account: str | None
    project_id: str | None
    name: str | None
    created: dt.datetime | None
    expires_at: dt.datetime | None
    token: str


@dataclass
class PruneResult:
    sessions: int  # expired sessions deleted
    tokens: int  # tokens deleted (revoked or expired longer ago than the cut-off)
    older_than: str


@dataclass
class TokenChange:
    action: str  # revoked | already revoked
    token: Token


# -- actions ------------------------------------------------------------------------------------------------

def _connect(cfg: Config, autocommit: bool = True):
    return hub_db.connect(cfg["hub_dsn"], autocommit=autocommit)


def resolve_account(conn, ref: str) -> Account:
    account_id, name = account_ref(ref)
    acc = hub_access.find_account(conn, account_id=account_id, name=name)
    if acc is None:
        raise NotFound(f"no account {ref} in the hub", hint="see `hub account list`; add one with `hub account add`")
    return acc


def _need_project(conn, pid: str) -> None:
    if conn.execute("SELECT 1 FROM projects WHERE project_id = %s", (pid,)).fetchone() is None:
        raise NotFound(f"project {pid} is not in the hub", hint="add it with `hub project add`")


def add_account(cfg: Config, name: str, account_id: str | None = None) -> AccountChange | None:
    """Add an account (a new uuid, or `account_id` to use the id another system knows it by).
    An account of that name and id already there is `unchanged`; a clash of name or id is refused."""
    name = account_name(name)
    if account_id is not None and not ids.is_uuid(account_id):
        raise InvalidInput(f"invalid account id {_show(account_id)}", hint="give a lowercase uuid")
    if proc.plan_only(f"# INSERT INTO hub accounts (name) VALUES ({name})"):
        return None
    with _connect(cfg, autocommit=False) as conn:
        with conn.transaction():
            # no table lock (a CoCalc hub writes its accounts rows all the time): the unique keys decide
            created = hub_access.insert_account(conn, name, account_id)
            if created is not None:
                return AccountChange("created", created)
            by_name = hub_access.find_account(conn, name=name)
            if by_name is not None and account_id in (None, by_name.account_id):
                return AccountChange("unchanged", by_name)
            if by_name is not None:
                raise InvalidInput(f"account {name} exists with another id ({by_name.account_id})",
                                   hint="choose another name, or leave out --id")
            by_id = hub_access.find_account(conn, account_id=account_id) if account_id else None
            raise InvalidInput(f"account {account_id} exists as {(by_id and by_id.name) or 'an unnamed account'}",
                               hint="an account has one name; choose another id")


def set_account_disabled(cfg: Config, ref: str, disabled: bool) -> AccountChange | None:
    """Disable an account (every token and session of it stops at once) or enable it again."""
    account_ref(ref)
    verb = "disable" if disabled else "enable"
    if proc.plan_only(f"# {verb} hub account {ref}"):
        return None
    with _connect(cfg, autocommit=False) as conn:
        with conn.transaction():
            acc = resolve_account(conn, ref)
            if (acc.disabled_at is not None) == disabled:
                return AccountChange("unchanged", acc)
            return AccountChange(verb + "d", hub_access.set_disabled(conn, acc.account_id, disabled))


def list_accounts(cfg: Config, *, limit: int = paging.DEFAULT_LIMIT, after: str | None = None) -> paging.Page:
    paging.check_limit(limit)
    key = _uuid_key("an account id")(after) if after is not None else None
    with _connect(cfg) as conn:
        rows = hub_access.list_accounts(conn, limit=limit + 1, after=key)
    return paging.page(rows, limit, lambda a: a.account_id)


def grant(cfg: Config, project: str, account: str, role_name: str) -> GrantChange | None:
    """Give ACCOUNT `role_name` on PROJECT (or change its role)."""
    pid = ids.project_id(project)
    role(role_name)
    account_ref(account)
    if proc.plan_only(f"# grant {role_name} on project {pid} to hub account {account}"):
        return None
    with _connect(cfg, autocommit=False) as conn:
        with conn.transaction():
            acc = resolve_account(conn, account)
            _need_project(conn, pid)
            action, previous = hub_access.upsert_grant(conn, pid, acc.account_id, role_name)
    if acc.disabled_at is not None:
        from cocalc_ctl import output

        output.warn(f"account {acc.name or acc.account_id} is disabled: the grant takes effect when it is enabled")
    return GrantChange(pid, acc.account_id, acc.name, action, role_name, previous)


def revoke(cfg: Config, project: str, account: str) -> GrantChange | None:
    """Remove ACCOUNT's grant on PROJECT (`absent` if it had none). Its next request is refused."""
    pid = ids.project_id(project)
    account_ref(account)
    if proc.plan_only(f"# revoke the grant on project {pid} of hub account {account}"):
        return None
    with _connect(cfg, autocommit=False) as conn:
        with conn.transaction():
            acc = resolve_account(conn, account)
            _need_project(conn, pid)
            previous = hub_access.delete_grant(conn, pid, acc.account_id)
    return GrantChange(pid, acc.account_id, acc.name, "revoked" if previous else "absent", None, previous)


def users(cfg: Config, project: str, *, limit: int = paging.DEFAULT_LIMIT, after: str | None = None) -> paging.Page:
    """The accounts granted on PROJECT, with their roles (by account id)."""
    pid = ids.project_id(project)
    paging.check_limit(limit)
    key = _uuid_key("an account id")(after) if after is not None else None
    with _connect(cfg) as conn:
        _need_project(conn, pid)
        rows = hub_access.list_grants(conn, pid, limit=limit + 1, after=key)
    return paging.page(rows, limit, lambda g: g.account_id)


def create_token(cfg: Config, account: str, *, project: str | None = None, expires: str = DEFAULT_TOKEN_EXPIRY,
                 name: str | None = None) -> CreatedToken | None:
    """A new token for ACCOUNT (all its granted projects, or PROJECT only), valid for `expires`."""
    account_ref(account)
    pid = ids.project_id(project) if project is not None else None
    span = duration(expires)
    name = token_name(name)
    if proc.plan_only(f"# create an access token for hub account {account}"
                      + (f" on project {pid}" if pid else "") + f", expiring {expires}"):
        return None
    with _connect(cfg, autocommit=False) as conn:
        with conn.transaction():
            acc = resolve_account(conn, account)
            if acc.disabled_at is not None:
                raise PreconditionFailed(f"account {acc.name or acc.account_id} is disabled",
                                         hint="enable it first with `hub account enable`")
            if pid is not None:
                _need_project(conn, pid)
            now = conn.execute("SELECT date_trunc('second', statement_timestamp())").fetchone()[0]
            token = hub_access.new_token()
            rec = hub_access.insert_token(conn, acc.account_id, hub_access.hash_secret(token), project_id=pid,
                                          name=name, expires_at=now + span if span else None)
            granted = conn.execute(
                "SELECT 1 FROM project_grants WHERE account_id = %s AND (%s::uuid IS NULL OR project_id = %s::uuid) "
                "LIMIT 1", (acc.account_id, pid, pid)).fetchone() is not None
    if not granted:
        from cocalc_ctl import output

        where = f"project {pid}" if pid else "any project"
        output.warn(f"account {acc.name or acc.account_id} has no grant on {where} yet: the token is refused (403) "
                    "until `hub project grant`")
    return CreatedToken(rec.token_id, rec.account_id, rec.account, rec.project_id, rec.name, rec.created,
                        rec.expires_at, token)


def list_tokens(cfg: Config, *, account: str | None = None, project: str | None = None,
                limit: int = paging.DEFAULT_LIMIT, after: str | None = None) -> paging.Page:
    """Tokens by id (never a hash, never a value), optionally of one account or scoped to one project."""
    paging.check_limit(limit)
    pid = ids.project_id(project) if project is not None else None
    if account is not None:
        account_ref(account)
    key = _uuid_key("a token id")(after) if after is not None else None
    with _connect(cfg) as conn:
        acc_id = resolve_account(conn, account).account_id if account is not None else None
        rows = hub_access.list_tokens(conn, limit=limit + 1, after=key, account_id=acc_id, project_id=pid)
    return paging.page(rows, limit, lambda t: t.token_id)


def _resolve_token(conn, ref: str) -> str:
    if ids.is_uuid(ref):
        return ref
    rows = conn.execute("SELECT token_id::text FROM access_tokens WHERE token_id::text LIKE %s ORDER BY 1 LIMIT 2",
                        (ref + "%",)).fetchall()
    if len(rows) > 1:
        raise InvalidInput(f"token id {ref} is ambiguous", hint="give more of the id (`hub token list --wide`)")
    if not rows:
        raise NotFound(f"no token {ref} in the hub", hint="see `hub token list`")
    return rows[0][0]


def revoke_token(cfg: Config, ref: str) -> TokenChange | None:
    """Revoke a token (and end its sessions): the next request carrying it is refused."""
    token_ref(ref)
    if proc.plan_only(f"# revoke hub access token {ref}"):
        return None
    with _connect(cfg, autocommit=False) as conn:
        with conn.transaction():
            tid = _resolve_token(conn, ref)
            if hub_access.get_token(conn, tid) is None:
                raise NotFound(f"no token {ref} in the hub", hint="see `hub token list`")
            changed = hub_access.revoke_token(conn, tid)
            rec = hub_access.get_token(conn, tid)
    return TokenChange("revoked" if changed else "already revoked", rec)


def prune(cfg: Config, older_than: str = "30d") -> PruneResult | None:
    """Delete expired sessions, and tokens revoked or expired more than `older_than` ago (a timer's job)."""
    span = duration(older_than)
    if span is None:
        raise InvalidInput("--older-than never would delete nothing", hint="give a duration such as 30d")
    if proc.plan_only(f"# delete expired hub sessions, and tokens revoked or expired more than {older_than} ago"):
        return None
    with _connect(cfg, autocommit=False) as conn:
        with conn.transaction():
            sessions, tokens = hub_access.prune(conn, span)
    return PruneResult(sessions, tokens, older_than)
