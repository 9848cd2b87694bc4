"""Where each project lives, as the hub records it: `hub project add|set|show|list|rm`.

A placement is the hub's `projects` row: `host_id` (which host holds the project; the hub proxy
routes to that host's `internal_url`, `move start` moves it from there) and `rootfs_image` (what
`rootfs resolve` on the host starts it from). These commands only write the record; moving data
between hosts is `move start`. Changing `host_id` or deleting a row fires the route triggers of
hub_db, so running hub proxies re-route at commit time. A project whose move is still in flight
(or whose post-move clean-up has not run) keeps its host unless `--force`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from cocalc_ctl import ids, paging, proc
from cocalc_ctl.actions.project import quota
from cocalc_ctl.config import Config
from cocalc_ctl.errors import Busy, InvalidInput, NotFound, PreconditionFailed
from cocalc_ctl.state import hub_db

ACTIVE_MOVES = ("queued", "preparing", "sending", "finalizing")


@dataclass
class Placement:
    project_id: str
    host_id: str | None
    host_name: str | None
    host_status: str | None
    internal_url: str | None
    rootfs_image: str | None
    compute_image: str | None
    move_state: str | None  # the last move's state, None if never moved
    move_in_progress: bool  # a move runs or its clean-up has not finished
    last_backup: dt.datetime | None
    run_quota: dict | None = None  # the project's own run quota (quota.RunQuota fields); None = host defaults


@dataclass
class PlacementChange:
    project_id: str
    action: str  # added | updated | unchanged | removed
    changed: list[str] = field(default_factory=list)  # "host_id", "rootfs_image"
    placement: Placement | None = None  # after the change (before it for `removed`)


SELECT_SQL = """SELECT p.project_id::text, p.host_id::text, h.name, h.status, h.internal_url, p.rootfs_image,
                       p.compute_image, m.state, (m.project_id IS NOT NULL AND (m.state = ANY(%(active)s)
                                                                              OR m.cleaned_at IS NULL)),
                       p.last_backup, p.run_quota
                  FROM projects p
                  LEFT JOIN project_hosts h ON h.id = p.host_id
                  LEFT JOIN project_moves m ON m.project_id = p.project_id"""


# -- validation (pure) ------------------------------------------------------------------------

def image_ref(image: str) -> str | None:
    """The normalised image to store in `rootfs_image`; '' means "none" (NULL: each host's default).

    A bare legacy label (`ubuntu2404`, `default`) is refused: the normaliser maps it to the default
    image of whoever resolves it, so storing it (or this machine's default) would say nothing definite."""
    if image is None:
        raise InvalidInput("no image given")
    if not image.strip():
        return None
    from cocalc_ctl.actions.project import rootfs  # here: `move start` and the lists need none of it

    text = image.strip()
    if rootfs.LEGACY_LABEL_RE.fullmatch(text):
        raise InvalidInput(f"image {ids.quoted(image)} is a legacy label, not an image reference",
                           hint="give a full reference like ubuntu:25.10, or '' for each host's default image")
    return rootfs.normalize(text, default_image="").ref


def host_ref(ref: str) -> str:
    """A host id (UUID) or a host name as registered by `keys register` (checked before any SQL)."""
    if not isinstance(ref, str) or not ref or len(ref) > 200 or not ref.isprintable():
        raise InvalidInput(f"invalid host {ids.quoted(ref)}", hint="give a host uuid or its registered name")
    return ref


# -- database ---------------------------------------------------------------------------------

HOST_COLUMNS = "id::text, name, status"


def resolve_host(conn, ref: str, columns: str = HOST_COLUMNS) -> tuple:
    """The `columns` (default: id, name, status) of a registered host given its id or (unambiguous)
    name; `columns` is a constant of the caller's, never input."""
    ref = host_ref(ref)
    key = "id" if ids.is_uuid(ref) else "name"
    rows = conn.execute(f"SELECT {columns} FROM project_hosts WHERE {key} = %s ORDER BY id", (ref,)).fetchall()
    if not rows:
        raise NotFound(f"host {ids.quoted(ref)} is not registered in the hub",
                       hint="run `cocalc-ctl keys register` on that host first")
    if len(rows) > 1:
        raise InvalidInput(f"host name {ids.quoted(ref)} is ambiguous ({len(rows)} hosts)",
                           hint="give the host id: " + ", ".join(r[0] for r in rows))
    return rows[0]


def _fetch(conn, pid: str, *, lock: bool = False) -> Placement | None:
    if lock:  # lock the project row first, as `move start` does, so a move cannot start under us
        if conn.execute("SELECT 1 FROM projects WHERE project_id = %s FOR UPDATE", (pid,)).fetchone() is None:
            return None
    row = conn.execute(SELECT_SQL + " WHERE p.project_id = %(p)s", {"p": pid, "active": list(ACTIVE_MOVES)}).fetchone()
    return Placement(*row) if row else None


def _connect(cfg: Config, autocommit: bool = True):
    return hub_db.connect(cfg["hub_dsn"], autocommit=autocommit)


def _warn_inactive(host: tuple) -> None:
    from cocalc_ctl import output

    if (host[2] or "active") != "active":
        output.warn(f"host {host[1] or host[0]} has status {host[2]!r}: the hub will not route to it")


def move_hint(state: str, cleaning: bool) -> str:
    """What an admin can do about a move in `state` (every hint names a command that works then)."""
    if state in ("queued", "preparing", "sending"):
        return "wait for it with `move status`, or `move cancel` it"
    if state == "finalizing":
        return "it can no longer be cancelled: wait for it with `move status` (a `move worker` finishes it)"
    if cleaning:
        what = "delete the source" if state == "done" else "roll the destination back"
        return f"its clean-up has not run yet: run `move worker --once` to {what}"
    return "see `move status`"


def _refuse_if_moving(p: Placement, force: bool, what: str) -> None:
    if p.move_in_progress and not force:
        active = p.move_state in ACTIVE_MOVES
        raise Busy(f"project {p.project_id} has a move "
                   f"{'in progress' if active else 'whose clean-up has not run'} ({p.move_state}): refusing to {what}",
                   hint=f"{move_hint(p.move_state or '', not active)}; or pass --force")


def _quota_json(q: "quota.RunQuota | None") -> str | None:
    import json

    return json.dumps(q.as_dict(), sort_keys=True) if q is not None and q.as_dict() else None


def _set_quota(conn, pid: str, q: "quota.RunQuota | None", changed: list[str]) -> None:
    """Merge the given quota fields into the row's run_quota (fields not given keep their value)."""
    data = _quota_json(q)
    if data is None:
        return
    res = conn.execute("UPDATE projects SET run_quota = COALESCE(run_quota, '{}'::jsonb) || %s::jsonb "
                       "WHERE project_id = %s AND run_quota IS DISTINCT FROM "
                       "COALESCE(run_quota, '{}'::jsonb) || %s::jsonb", (data, pid, data))
    if res.rowcount:
        changed.append("run_quota")


def add(cfg: Config, project_id: str, host: str, image: str | None = None, *,
        run_quota: "quota.RunQuota | None" = None) -> PlacementChange:
    """Record a project on HOST. An existing row without a host is placed; a row already on HOST
    (with the same image, if one is given) is left unchanged; a row on another host is refused.
    A run quota given is merged into the row's (the shape is checked here, the host applies it)."""
    pid = ids.project_id(project_id)
    host = host_ref(host)
    img = image_ref(image) if image is not None else None
    if proc.plan_only(f"# INSERT INTO hub projects (project_id, host_id, rootfs_image) "
                      f"VALUES ({pid}, <host {host}>, {img or 'NULL'})"):
        return PlacementChange(pid, "added", ["host_id"] + (["rootfs_image"] if image is not None else []))
    with _connect(cfg, autocommit=False) as conn:
        with conn.transaction():
            h = resolve_host(conn, host)
            _warn_inactive(h)
            inserted = conn.execute(
                "INSERT INTO projects (project_id, host_id, rootfs_image) VALUES (%s, %s, %s) "
                "ON CONFLICT (project_id) DO NOTHING RETURNING project_id", (pid, h[0], img)).fetchone()
            if inserted:
                changed = ["host_id"] + (["rootfs_image"] if img else [])
                _set_quota(conn, pid, run_quota, changed)
                return PlacementChange(pid, "added", changed, _fetch(conn, pid))
            cur = _fetch(conn, pid, lock=True)
            if cur.host_id is not None and cur.host_id != h[0]:
                raise PreconditionFailed(
                    f"project {pid} is already on host {cur.host_name or cur.host_id}",
                    hint="`hub project set --host` corrects the record, `move start --to` moves the data")
            changed = [] if cur.host_id == h[0] else ["host_id"]
            if image is not None and img != cur.rootfs_image:
                if cur.host_id is not None:
                    raise PreconditionFailed(f"project {pid} is already on this host with image "
                                             f"{cur.rootfs_image or '(host default)'}",
                                             hint="change the image with `hub project set --image`")
                changed.append("rootfs_image")
            _set_quota(conn, pid, run_quota, changed)
            if not changed:
                return PlacementChange(pid, "unchanged", [], cur)
            conn.execute("UPDATE projects SET host_id = %s, rootfs_image = CASE WHEN %s THEN %s ELSE rootfs_image END "
                         "WHERE project_id = %s", (h[0], "rootfs_image" in changed, img, pid))
            return PlacementChange(pid, "added", changed, _fetch(conn, pid))


def set_placement(cfg: Config, project_id: str, *, host: str | None = None, image: str | None = None,
                  force: bool = False, run_quota: "quota.RunQuota | None" = None) -> PlacementChange:
    """Change the recorded host, image and/or run quota of an existing project (the data is not moved)."""
    pid = ids.project_id(project_id)
    if host is None and image is None and _quota_json(run_quota) is None:
        raise InvalidInput("nothing to change",
                           hint="give --host HOST, --image IMAGE and/or a run quota (--memory, --pids, ...)")
    if host is not None:
        host = host_ref(host)
    img = image_ref(image) if image is not None else None
    sets = ([f"host_id = <host {host}>"] if host is not None else []) + \
           ([f"rootfs_image = {img or 'NULL'}"] if image is not None else []) + \
           ([f"run_quota = run_quota || {_quota_json(run_quota)}"] if _quota_json(run_quota) else [])
    if proc.plan_only(f"# UPDATE hub projects SET {', '.join(sets)} WHERE project_id = {pid}"):
        return PlacementChange(pid, "updated", (["host_id"] if host is not None else [])
                               + (["rootfs_image"] if image is not None else []))
    with _connect(cfg, autocommit=False) as conn:
        with conn.transaction():
            cur = _fetch(conn, pid, lock=True)
            if cur is None:
                raise NotFound(f"project {pid} is not in the hub", hint="add it with `hub project add`")
            changed = []
            new_host = cur.host_id
            if host is not None:
                h = resolve_host(conn, host)
                if h[0] != cur.host_id:
                    _refuse_if_moving(cur, force, "change its host")
                    _warn_inactive(h)
                    new_host = h[0]
                    changed.append("host_id")
            if image is not None and img != cur.rootfs_image:
                changed.append("rootfs_image")
            _set_quota(conn, pid, run_quota, changed)
            if not changed:
                return PlacementChange(pid, "unchanged", [], cur)
            conn.execute("UPDATE projects SET host_id = %s, rootfs_image = CASE WHEN %s THEN %s ELSE rootfs_image END "
                         "WHERE project_id = %s", (new_host, "rootfs_image" in changed, img, pid))
            return PlacementChange(pid, "updated", changed, _fetch(conn, pid))


def show(cfg: Config, project_id: str) -> Placement:
    pid = ids.project_id(project_id)
    with _connect(cfg) as conn:
        p = _fetch(conn, pid)
    if p is None:
        raise NotFound(f"project {pid} is not in the hub", hint="add it with `hub project add`")
    return p


def list_sql(where: list[str]) -> str:
    """The page of projects first, then its joins: one join over the whole table would read the
    moves from the first one on to reach a page deep in the list. `where`: our own conditions."""
    clause = (" WHERE " + " AND ".join(where)) if where else ""
    page = f"(SELECT * FROM projects p{clause} ORDER BY p.project_id LIMIT %(limit)s) p"
    return SELECT_SQL.replace("FROM projects p", "FROM " + page, 1) + " ORDER BY p.project_id"


def list_placements(cfg: Config, host: str | None = None, *, limit: int = paging.DEFAULT_LIMIT,
                    after: str | None = None) -> paging.Page:
    """A page of projects in project id order (keyset: the last project id of the previous page)."""
    paging.check_limit(limit)
    params: dict = {"active": list(ACTIVE_MOVES), "limit": limit + 1}
    where = []
    if after is not None:
        params["after"] = paging.project_key(after)
        where.append("p.project_id > %(after)s")
    with _connect(cfg) as conn:
        if host is not None:
            # a host id needs no registration: this is how to find projects left on a removed host
            params["h"] = host if ids.is_uuid(host) else resolve_host(conn, host)[0]
            where.append("p.host_id = %(h)s")
        rows = conn.execute(list_sql(where), params).fetchall()
    return paging.page([Placement(*r) for r in rows], limit, lambda p: p.project_id)


def remove(cfg: Config, project_id: str, *, force: bool = False) -> PlacementChange:
    """Delete the project's hub row (and its move record). The project's data on its host is untouched."""
    pid = ids.project_id(project_id)
    if proc.plan_only(f"# DELETE FROM hub projects WHERE project_id = {pid} (and its project_moves row)"):
        return PlacementChange(pid, "removed")
    with _connect(cfg, autocommit=False) as conn:
        with conn.transaction():
            cur = _fetch(conn, pid, lock=True)
            if cur is None:
                raise NotFound(f"project {pid} is not in the hub")
            _refuse_if_moving(cur, force, "remove it")
            conn.execute("DELETE FROM project_moves WHERE project_id = %s", (pid,))
            conn.execute("DELETE FROM projects WHERE project_id = %s", (pid,))
    return PlacementChange(pid, "removed", ["host_id"] if cur.host_id else [], cur)
