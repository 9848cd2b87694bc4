"""Checking a move ticket on this host: the one place a host step decides whether the hub authorised it.

`check()` verifies the signature against the hub keys this host pinned (`keys sync`), the role
(this host is the ticket's source for send/cleanup, its destination for finalize/abort and for the
receiver grammar, whose logged-in peer must be the ticket's source), the project, and the ledger
(no superseded attempt, no finished move). `finished()` records that this host's part is done.
Verbs run by a root operator at the host's own shell need no ticket; the ssh forced commands
(`move host-step`, `move recv`) always require one.
"""

from __future__ import annotations

from contextlib import closing

from cocalc_ctl import proc, tickets
from cocalc_ctl.config import Config
from cocalc_ctl.state import host_db
from cocalc_ctl.state import hub_keys as hub_keys_db


def pinned_keys(cfg: Config) -> list[str]:
    if not host_db.db_path(cfg.data_dir).exists():
        return []
    with closing(host_db.connect(cfg.data_dir)) as conn:
        return [k.line for k in hub_keys_db.list_keys(conn)]


def check(cfg: Config, text: str | None, *, verb: str, project_id: str, peer: str | None = None,
          mode: str | None = None, snapshot: str | None = None) -> tickets.Ticket:
    return _admit(cfg, text, hub_keys_db.admit, verb=verb, project_id=project_id, peer=peer, mode=mode,
                  snapshot=snapshot)


def close(cfg: Config, text: str | None, *, verb: str, project_id: str) -> tickets.Ticket:
    """A finishing step (`abort`, `cleanup`) that finds nothing to do here still needs a valid ticket for
    this host's role and project, and records the move as finished here: the move's other tickets (the
    peer's `send`) are refused from now on, not only once data had arrived. A rerun is accepted."""
    return _admit(cfg, text, hub_keys_db.close, verb=verb, project_id=project_id)


def _admit(cfg: Config, text: str | None, ledger, *, verb: str, project_id: str, **require) -> tickets.Ticket:
    """Verify the ticket against the pinned hub keys and this host's role, then let the host's ticket
    ledger (`admit` or `close`) refuse a replay."""
    from cocalc_ctl.actions.host.identity import host_id

    if not text:
        raise tickets.TicketRefused(f"{verb} over ssh needs a ticket")
    me = host_id(cfg)
    if me is None:
        raise tickets.TicketRefused("this host has no id", hint="run `cocalc-ctl host init`")
    t = tickets.verify(text, pinned_keys(cfg))
    tickets.require(t, verb=verb, me=me, project_id=project_id, **require)
    if not proc.DRY_RUN:
        with closing(host_db.connect(cfg.data_dir)) as conn:
            why = ledger(conn, t.move_id, t.project_id, t.attempt, verb, host_db.now_iso())
        if why:
            raise tickets.TicketRefused(why)
    return t


def finished(cfg: Config, ticket: tickets.Ticket | None, by: str) -> None:
    """This host's part of the ticket's move is done: later tickets of that move are refused."""
    if ticket is None or proc.DRY_RUN:
        return
    with closing(host_db.connect(cfg.data_dir)) as conn:
        hub_keys_db.finish(conn, ticket.move_id, by, host_db.now_iso())
