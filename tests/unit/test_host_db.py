"""Host sqlite: migrations split the way sqlite does, one transaction per project write."""

from __future__ import annotations

import sqlite3

import pytest

from cocalc_ctl.state import host_db

PID = "0a0a0a0a-1111-4222-8333-444444444444"

TRICKY = """
    CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL DEFAULT 'a; b', touched TEXT);
    -- a comment; with a semicolon
    CREATE TRIGGER notes_touch AFTER UPDATE ON notes BEGIN
        UPDATE notes SET touched = 'x;y' WHERE id = NEW.id;
    END;
    INSERT INTO notes(id) VALUES (1)
"""


def test_statements_keep_triggers_strings_and_comments_whole():
    got = host_db._statements(TRICKY)
    # the comment belongs to the trigger statement that follows it
    assert len(got) == 3, got
    assert got[0].endswith("touched TEXT);") and "'a; b'" in got[0]
    assert "CREATE TRIGGER" in got[1] and "'x;y'" in got[1] and got[1].endswith("END;")
    assert got[2].rstrip(";").strip() == "INSERT INTO notes(id) VALUES (1)"


def test_migration_with_a_trigger_and_a_semicolon_string_applies(tmp_path, monkeypatch):
    monkeypatch.setattr(host_db, "MIGRATIONS", [*host_db.MIGRATIONS, TRICKY])
    conn = host_db.connect(tmp_path)
    assert host_db.schema_version(conn) == len(host_db.MIGRATIONS)
    assert conn.execute("SELECT body FROM notes").fetchone()[0] == "a; b"
    conn.execute("UPDATE notes SET body = 'c' WHERE id = 1")
    assert conn.execute("SELECT touched FROM notes").fetchone()[0] == "x;y"


def test_a_failing_migration_leaves_the_database_at_the_old_version(tmp_path, monkeypatch):
    host_db.connect(tmp_path).close()
    monkeypatch.setattr(host_db, "MIGRATIONS", [*host_db.MIGRATIONS, "CREATE TABLE t1(x); CREATE TABLE nope nope"])
    with pytest.raises(sqlite3.OperationalError):
        host_db.connect(tmp_path)
    conn = sqlite3.connect(str(host_db.db_path(tmp_path)))
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(host_db.MIGRATIONS) - 1
    assert not conn.execute("SELECT name FROM sqlite_master WHERE name='t1'").fetchall()


def test_upsert_project_writes_all_fields_in_one_transaction(tmp_path):
    conn = host_db.connect(tmp_path)
    trace: list[str] = []
    conn.set_trace_callback(trace.append)
    host_db.upsert_project(conn, PID, state="running", image="img", http_port=40001, ssh_port=40002)
    words = [t.split()[0].upper() for t in trace]
    writes = [i for i, w in enumerate(words) if w in ("INSERT", "UPDATE")]
    assert words.count("COMMIT") == 1 and "BEGIN" in words, trace
    assert words.index("BEGIN") < min(writes) and max(writes) < words.index("COMMIT"), trace
    row = host_db.get_project(conn, PID)
    assert (row["state"], row["image"], row["http_port"], row["ssh_port"]) == ("running", "img", 40001, 40002)


def test_upsert_project_with_an_unknown_field_writes_nothing(tmp_path):
    conn = host_db.connect(tmp_path)
    with pytest.raises(ValueError):
        host_db.upsert_project(conn, PID, state="running", colour="blue")
    assert host_db.get_project(conn, PID) is None
    assert not conn.in_transaction


def test_upsert_project_inside_a_callers_transaction_does_not_commit_it(tmp_path):
    conn = host_db.connect(tmp_path)
    conn.execute("BEGIN IMMEDIATE")
    host_db.upsert_project(conn, PID, state="running")
    assert conn.in_transaction
    conn.execute("ROLLBACK")
    assert host_db.get_project(conn, PID) is None
