"""The PostgreSQL schema (warnd/store/postgres_schema.sql) equals SQLite's after every migration.

Against a real server (tests/support/postgres.py) through psycopg: the tables, columns, indexes,
references and triggers match what the migrations build in SQLite, so a migration without its
PostgreSQL form fails here; the counter triggers keep the same numbers as SQLite's through the
same statements and equal a GROUP BY of the deliveries; the audit log refuses changes; and
schema_version lists every migration.
"""

from __future__ import annotations

import asyncio
import random
import re
import sqlite3
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

import warnd.store
from warnd.store import COVERAGE_COUNTS, DeliveryState, Store, count_receiver, migrations

SCHEMA = Path(warnd.store.__file__).with_name("postgres_schema.sql")
# Triggers PostgreSQL has and SQLite has not: TRUNCATE (which SQLite lacks) must not empty the
# append-only audit log either.
PG_ONLY_TRIGGERS = {"audit_no_truncate"}
# How SQLite's declared types are spelled here (information_schema.columns.data_type).
PG_TYPES = {"TEXT": {"text"}, "INTEGER": {"integer", "bigint"}, "REAL": {"double precision"}}


def pg_connect(url: str) -> psycopg.Connection[Any]:
    """A connection to a database holding the schema, loaded the way the backend loads it."""
    con = psycopg.connect(url)
    con.execute(SCHEMA.read_text(encoding="utf-8"))  # one string, no parameters: the server splits it
    con.commit()
    con.autocommit = True
    return con


@pytest.fixture
def pg(pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    """This test's database with the schema in it."""
    con = pg_connect(pg_url)
    yield con
    con.close()


@pytest.fixture(scope="module")
def sqlite_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database made by the store itself: every migration, applied as warnd applies them."""
    path = tmp_path_factory.mktemp("sqlite") / "warnd.db"

    async def make() -> None:
        """Open (which migrates) and close the store."""
        store = await Store(path).open()
        await store.close()

    asyncio.run(make())
    return path


def sqlite_connect(path: Path) -> sqlite3.Connection:
    """A plain connection to a SQLite database, foreign keys on as the store's writer has them."""
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA foreign_keys=ON")
    return con


# -- (a) the same tables, columns, indexes, references and triggers -----------------------------


@dataclass(frozen=True)
class Column:
    """What both databases must agree on about a column."""

    name: str
    not_null: bool
    default: str | None
    generated: bool


def sqlite_table_names(con: sqlite3.Connection) -> list[str]:
    """The database's tables, leaving out SQLite's own (sqlite_stat1 after ANALYZE …)."""
    sql = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
    return [r[0] for r in con.execute(sql)]


def sqlite_tables(con: sqlite3.Connection) -> dict[str, list[Column]]:
    """Each table's columns in order, from PRAGMA table_xinfo (table_info leaves out generated ones).

    A primary key column counts as NOT NULL: SQLite lets a TEXT PRIMARY KEY of a rowid table be
    NULL (a bug its docs keep for compatibility) where PostgreSQL refuses it; warnd never writes one.
    """
    return {
        table: [
            Column(name, bool(notnull) or pk > 0, default, hidden in (2, 3))
            for _cid, name, _type, notnull, default, pk, hidden in con.execute(f"PRAGMA table_xinfo({table})")
        ]
        for table in sqlite_table_names(con)
    }


def pg_tables(con: psycopg.Connection[Any]) -> dict[str, list[Column]]:
    """Each table's columns in order, from information_schema (defaults without their `::text`)."""
    rows = con.execute(
        "SELECT table_name, column_name, is_nullable, column_default, is_generated"
        " FROM information_schema.columns WHERE table_schema = 'public'"
        " ORDER BY table_name, ordinal_position"
    ).fetchall()
    out: dict[str, list[Column]] = {}
    for table, name, nullable, default, generated in rows:
        if default is not None:
            default = re.sub(r"::[a-z ]+$", "", default)
        out.setdefault(table, []).append(Column(name, nullable == "NO", default, generated == "ALWAYS"))
    return out


def test_tables_and_columns_equal_sqlites(pg: psycopg.Connection[Any], sqlite_path: Path) -> None:
    """Same tables; same columns in the same order with the same NOT NULL, DEFAULT and generation."""
    with sqlite3.connect(sqlite_path) as lite:
        expected = sqlite_tables(lite)
    assert pg_tables(pg) == expected


def test_column_types_keep_sqlites_meaning(pg: psycopg.Connection[Any], sqlite_path: Path) -> None:
    """TEXT is text in bytewise ("C") order, INTEGER an integer, REAL a double; ids are identities."""
    with sqlite3.connect(sqlite_path) as lite:
        declared, rowids = {}, set()
        for table in sqlite_table_names(lite):
            columns = lite.execute(f"PRAGMA table_xinfo({table})").fetchall()
            declared |= {(table, name): type_ for _cid, name, type_, _nn, _d, _pk, _h in columns}
            pk = [(name, type_) for _cid, name, type_, _nn, _d, pk, _h in columns if pk > 0]
            (sql,) = lite.execute("SELECT sql FROM sqlite_master WHERE name = ?", (table,)).fetchone()
            # SQLite's INTEGER PRIMARY KEY of a rowid table is the rowid: a number SQLite assigns.
            if len(pk) == 1 and pk[0][1] == "INTEGER" and "WITHOUT ROWID" not in sql:
                rowids.add((table, pk[0][0]))
    rows = pg.execute(
        "SELECT table_name, column_name, data_type, collation_name, is_identity"
        " FROM information_schema.columns WHERE table_schema = 'public'"
    ).fetchall()
    assert len(rows) == len(declared)
    for table, name, data_type, collation, identity in rows:
        assert data_type in PG_TYPES[declared[(table, name)]], (table, name, data_type)
        if data_type == "text":
            assert collation == "C", (table, name, collation)
        assert (identity == "YES") == ((table, name) in rowids), (table, name)
        if identity == "YES":
            assert data_type == "bigint", (table, name)


Index = tuple[str, tuple[str, ...], bool, bool]  # table, columns, unique, partial


def sqlite_indexes(con: sqlite3.Connection) -> tuple[Counter[Index], set[str]]:
    """Every index (UNIQUE and PRIMARY KEY ones too), and the names of the ones created by name."""
    indexes: Counter[Index] = Counter()
    named = set()
    for table in sqlite_table_names(con):
        listed = con.execute(f"PRAGMA index_list({table})").fetchall()
        for _seq, name, unique, origin, partial in listed:
            columns = tuple(r[2] for r in con.execute(f"PRAGMA index_info({name})"))
            indexes[(table, columns, bool(unique), bool(partial))] += 1
            if origin == "c":
                named.add(name)
        if not any(origin == "pk" for _s, _n, _u, origin, _p in listed):
            # An INTEGER PRIMARY KEY is the rowid itself: no index is listed for it.
            pk = [(r[5], r[1]) for r in con.execute(f"PRAGMA table_info({table})") if r[5] > 0]
            if pk:
                indexes[(table, tuple(name for _, name in sorted(pk)), True, False)] += 1
    return indexes, named


def pg_indexes(con: psycopg.Connection[Any]) -> tuple[Counter[Index], set[str]]:
    """Every index, and the names of those no constraint (PRIMARY KEY, UNIQUE) made."""
    rows = con.execute(
        "SELECT t.relname, i.relname, x.indisunique, x.indpred IS NOT NULL,"
        "  ARRAY(SELECT a.attname::text FROM unnest(x.indkey::int2[]) WITH ORDINALITY AS k (attnum, ord)"
        "        JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum ORDER BY k.ord),"
        "  EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.oid)"
        " FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid"
        " JOIN pg_namespace n ON n.oid = t.relnamespace WHERE n.nspname = 'public'"
    ).fetchall()
    indexes: Counter[Index] = Counter()
    named = set()
    for table, name, unique, partial, columns, constraint in rows:
        indexes[(table, tuple(columns), unique, partial)] += 1
        if not constraint:
            named.add(name)
    return indexes, named


def test_indexes_equal_sqlites(pg: psycopg.Connection[Any], sqlite_path: Path) -> None:
    """Same indexes on the same columns, as unique and as partial; the named ones by the same name."""
    with sqlite3.connect(sqlite_path) as lite:
        expected = sqlite_indexes(lite)
    indexes, named = pg_indexes(pg)
    assert indexes == expected[0]
    assert named == expected[1]


def test_references_and_triggers_equal_sqlites(pg: psycopg.Connection[Any], sqlite_path: Path) -> None:
    """Same foreign keys; a trigger of each SQLite trigger's name (and TRUNCATE refused on audit)."""
    with sqlite3.connect(sqlite_path) as lite:
        references = {
            (table, r[3], r[2], r[4])
            for table in sqlite_table_names(lite)
            for r in lite.execute(f"PRAGMA foreign_key_list({table})")
        }
        triggers = {r[0] for r in lite.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    pg_references = pg.execute(
        "SELECT t.relname, a.attname, r.relname, b.attname FROM pg_constraint c"
        " JOIN pg_class t ON t.oid = c.conrelid JOIN pg_class r ON r.oid = c.confrelid"
        " JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]"
        " JOIN pg_attribute b ON b.attrelid = c.confrelid AND b.attnum = c.confkey[1]"
        " WHERE c.contype = 'f'"
    ).fetchall()
    assert set(pg_references) == references
    pg_triggers = {r[0] for r in pg.execute("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")}
    assert pg_triggers == triggers | PG_ONLY_TRIGGERS


# -- (b) the delivery counters ------------------------------------------------------------------

WARNINGS = ("W1", "W2")
CHANNELS = ("sms", "loudspeaker")
TARGETS = tuple(f"t{i}" for i in range(5))
STATES = tuple(str(s) for s in DeliveryState)
COUNTERS = {
    "delivery_counts": "warning_id, channel, state, n",
    "coverage_receivers": "warning_id, channel, target, n, n_acked, n_delivered, n_sent, n_failed, class",
    "coverage_counts": "warning_id, channel, class, n",
}


class Both:
    """The same statements on SQLite (the migrations' triggers) and PostgreSQL (this schema's)."""

    def __init__(self, lite: sqlite3.Connection, pg: psycopg.Connection[Any]) -> None:
        """Two connections to databases with the same rows."""
        self.lite = lite
        self.pg = pg

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        """One statement (written with `%s`) on both, each committed."""
        self.lite.execute(sql.replace("%s", "?"), params)
        self.pg.execute(sql, params)

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        """A query's rows from PostgreSQL, having checked that SQLite returns the same."""
        got = sorted(self.pg.execute(sql).fetchall(), key=repr)
        assert got == sorted(self.lite.execute(sql).fetchall(), key=repr), sql
        return got


def deliveries_and_counters(both: Both) -> tuple[list[tuple[Any, ...]], dict[str, list[tuple[Any, ...]]]]:
    """The deliveries and every counter row (those at zero too), equal in both databases."""
    deliveries = both.rows("SELECT msg_id, target, warning_id, channel, kind, state FROM deliveries")
    return deliveries, {table: both.rows(f"SELECT {cols} FROM {table}") for table, cols in COUNTERS.items()}


def regrouped(both: Both) -> set[str]:
    """The counters equal a GROUP BY of the deliveries (and rows.count_receiver's classes).

    As tests/test_store_counters.py checks SQLite's: per (warning, channel, state); per receiver
    of kind 'warning' with its class; receivers per (warning, channel, class). Rows at zero, which
    retention deletes later, are left out. Returns the coverage classes seen.
    """
    deliveries, counters = deliveries_and_counters(both)
    by_state = both.rows(
        "SELECT warning_id, channel, state, COUNT(*) FROM deliveries GROUP BY warning_id, channel, state"
    )
    assert sorted(r for r in counters["delivery_counts"] if r[3] != 0) == sorted(by_state)
    receivers: dict[tuple[str, str, str], list[str]] = {}
    for _msg, target, warning_id, channel, kind, state in deliveries:
        if kind == "warning":
            receivers.setdefault((warning_id, channel, target), []).append(state)
    expected, classes = [], Counter[tuple[str, str, str]]()
    for key, states in receivers.items():
        counted = dict.fromkeys(COVERAGE_COUNTS, 0)
        count_receiver(counted, states)
        cls = next((c for c in ("acknowledged", "delivered", "sent", "failed") if counted[c]), "open")
        n_failed = sum(s in ("failed", "dead") for s in states)
        expected.append((*key, len(states), states.count("acknowledged"), states.count("delivered"),
                         states.count("sent"), n_failed, cls))  # fmt: skip
        classes[(key[0], key[1], cls)] += 1
    kept = [r for r in counters["coverage_receivers"] if r[3] != 0]
    assert sorted(kept) == sorted(expected)
    assert all(r[3:] == (0, 0, 0, 0, 0, None) for r in counters["coverage_receivers"] if r[3] == 0)
    assert sorted(r for r in counters["coverage_counts"] if r[3] != 0) == sorted(
        (*k, n) for k, n in classes.items()
    )
    return {cls for _w, _c, cls in classes}


def keys(rows: list[tuple[Any, ...]], rng: random.Random, most: int) -> list[tuple[str, str]]:
    """Up to `most` random (msg_id, target) keys of delivery rows."""
    chosen = rng.sample(rows, min(len(rows), rng.randrange(1, most + 1)))
    return [(r[0], r[1]) for r in chosen]


def where_keys(chosen: list[tuple[str, str]]) -> tuple[str, tuple[str, ...]]:
    """`(msg_id, target) IN (…)` for some keys, and its parameters (works in both databases)."""
    sql = "(msg_id, target) IN (" + ", ".join(["(%s, %s)"] * len(chosen)) + ")"
    return sql, tuple(v for key in chosen for v in key)


def step(both: Both, rng: random.Random, i: int) -> set[str]:
    """One random change of deliveries, the same on both; returns the states it moved rows to."""
    rows = both.rows("SELECT msg_id, target, state FROM deliveries")
    op = rng.choices(
        ("add", "move", "move_each", "same", "other", "republish", "delete", "retention"),
        weights=(5, 5, 3, 1, 1, 1, 1, 1),
    )[0]
    if not rows:
        op = "add"
    stamp = f"2026-07-01T08:{i // 60:02d}:{i % 60:02d}.000000Z"
    if op == "add":
        # Any initial state: the triggers count what is inserted, pending or not.
        for _ in range(rng.randrange(1, 8)):
            both.execute(
                "INSERT INTO deliveries (msg_id, warning_id, step, kind, channel, target, state, due_at,"
                " created_at, updated_at) VALUES (%s, %s, 'issue', %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (msg_id, target) DO NOTHING",
                (
                    f"m{rng.randrange(6)}", rng.choice(WARNINGS),
                    rng.choice(("warning", "warning", "update", "cancel")), rng.choice(CHANNELS),
                    rng.choice(TARGETS), rng.choice(("pending", "pending", *STATES)), stamp, stamp, stamp,
                ),
            )  # fmt: skip
        return set()
    if op == "move":
        # Several rows to one state in one statement: counted row by row (SQLite) or added up (PostgreSQL).
        chosen, state = keys(rows, rng, 6), rng.choice(STATES)
        sql, params = where_keys(chosen)
        both.execute(
            f"UPDATE deliveries SET state = %s, updated_at = %s WHERE {sql}", (state, stamp, *params)
        )
        return {state} if any(r[2] != state for r in rows if (r[0], r[1]) in chosen) else set()
    if op == "move_each":
        # Several rows, each to its own state, in one statement.
        chosen = keys(rows, rng, 6)
        new = {key: rng.choice(STATES) for key in chosen}
        case = " ".join("WHEN msg_id = %s AND target = %s THEN %s" for _ in chosen)
        sql, params = where_keys(chosen)
        both.execute(
            f"UPDATE deliveries SET state = CASE {case} END WHERE {sql}",
            (*(v for key, state in new.items() for v in (*key, state)), *params),
        )
        return {new[(r[0], r[1])] for r in rows if (r[0], r[1]) in new and r[2] != new[(r[0], r[1])]}
    if op == "same":
        # `state` named in SET but unchanged: UPDATE OF state fires, its WHEN does not.
        sql, params = where_keys(keys(rows, rng, 6))
        both.execute(f"UPDATE deliveries SET state = state WHERE {sql}", params)
    elif op == "other":
        # Not naming `state` at all.
        sql, params = where_keys(keys(rows, rng, 6))
        both.execute(
            f"UPDATE deliveries SET attempts = attempts + 1, updated_at = %s WHERE {sql}", (stamp, *params)
        )
    elif op == "republish":
        # As a confirmation round does: sent or delivered, not confirmed, back to pending.
        both.execute(
            "UPDATE deliveries SET state = 'pending' WHERE state IN ('sent', 'delivered') AND msg_id = %s",
            (f"m{rng.randrange(6)}",),
        )
        return {"pending"} if any(r[2] in ("sent", "delivered") for r in rows) else set()
    elif op == "delete":
        sql, params = where_keys(keys(rows, rng, 4))
        both.execute(f"DELETE FROM deliveries WHERE {sql}", params)
    else:
        # As retention does: a warning's deliveries, then the counters left at zero.
        warning_id = rng.choice(WARNINGS)
        both.execute("DELETE FROM deliveries WHERE warning_id = %s", (warning_id,))
        for table in COUNTERS:
            both.execute(f"DELETE FROM {table} WHERE warning_id = %s AND n = 0", (warning_id,))
    return set()


@pytest.fixture
def both(pg: psycopg.Connection[Any], sqlite_path: Path, tmp_path: Path) -> Iterator[Both]:
    """A copy of the migrated SQLite database and the PostgreSQL one, each with the two warnings."""
    path = tmp_path / "warnd.db"
    path.write_bytes(sqlite_path.read_bytes())
    lite = sqlite_connect(path)
    b = Both(lite, pg)
    for warning_id in WARNINGS:
        b.execute(
            "INSERT INTO warnings (id, source, msg_type, event, level, status, headline, area, villages,"
            " state, created_at, updated_at) VALUES (%s, 'api', 'Alert', 'e', 'red', 'actual', 'h', '{}',"
            " '[]', 'active', 'x', 'x')",
            (warning_id,),
        )
    yield b
    lite.close()


@pytest.mark.parametrize("seed", range(3))
def test_counter_triggers_keep_sqlites_numbers(both: Both, seed: int) -> None:
    """After every step of a random sequence, every counter row equals SQLite's and the GROUP BY.

    The same statements run on both databases: inserts in any state; updates of one state or one
    per row, to the same state and of other columns; republishing; deletes; retention's clean-up.
    """
    rng = random.Random(seed)
    moved_to: set[str] = set()
    classes: set[str] = set()
    for i in range(120):
        moved_to |= step(both, rng, i)
        classes |= regrouped(both)
    # The sequence went somewhere: rows moved to every state, receivers counted in every class.
    assert moved_to >= {"acknowledged", "delivered", "sent", "failed", "dead", "pending"}
    assert classes >= {"acknowledged", "delivered", "sent", "failed", "open"}


def test_a_receivers_row_stays_at_zero_until_retention_deletes_it(both: Both) -> None:
    """Its last delivery deleted, a receiver is counted nowhere and keeps a row at n = 0, as in SQLite."""
    both.execute(
        "INSERT INTO deliveries (msg_id, warning_id, step, kind, channel, target, state, due_at, created_at,"
        " updated_at) VALUES ('m1', 'W1', 'issue', 'warning', 'sms', 't1', 'sent', 'x', 'x', 'x')"
    )
    both.execute("UPDATE deliveries SET state = 'acknowledged' WHERE msg_id = 'm1'")
    # A class left behind stays at zero (sorted as both.rows sorts: by repr).
    assert deliveries_and_counters(both)[1] == {
        "delivery_counts": [("W1", "sms", "acknowledged", 1), ("W1", "sms", "sent", 0)],
        "coverage_receivers": [("W1", "sms", "t1", 1, 1, 0, 0, 0, "acknowledged")],
        "coverage_counts": [("W1", "sms", "acknowledged", 1), ("W1", "sms", "sent", 0)],
    }
    both.execute("DELETE FROM deliveries WHERE msg_id = 'm1'")
    assert deliveries_and_counters(both)[1] == {
        "delivery_counts": [("W1", "sms", "acknowledged", 0), ("W1", "sms", "sent", 0)],
        "coverage_receivers": [("W1", "sms", "t1", 0, 0, 0, 0, 0, None)],
        "coverage_counts": [("W1", "sms", "acknowledged", 0), ("W1", "sms", "sent", 0)],
    }
    for table in COUNTERS:
        both.execute(f"DELETE FROM {table} WHERE warning_id = 'W1' AND n = 0")
    assert deliveries_and_counters(both)[1] == {table: [] for table in COUNTERS}


# -- (c) the audit log is append-only -----------------------------------------------------------


def test_audit_rows_cannot_be_changed_or_deleted(pg: psycopg.Connection[Any]) -> None:
    """UPDATE, DELETE and TRUNCATE of audit fail as SQLite's RAISE(ABORT) does; INSERT still works."""
    insert = "INSERT INTO audit (at, actor, action) VALUES ('2026-01-01T00:00:00.000000Z', 'duty', 'issue')"
    pg.execute(insert)
    for statement in ("UPDATE audit SET actor = 'someone-else'", "DELETE FROM audit", "TRUNCATE audit"):
        with pytest.raises(psycopg.IntegrityError, match="audit log is append-only"):
            pg.execute(statement)
    pg.execute(insert)
    assert pg.execute("SELECT id, actor FROM audit ORDER BY id").fetchall() == [(1, "duty"), (2, "duty")]


def test_a_refused_audit_change_rolls_back_the_transaction(pg: psycopg.Connection[Any]) -> None:
    """What else the transaction wrote is gone too (SQLite would undo only the statement)."""
    pg.execute("INSERT INTO audit (at, actor, action) VALUES ('x', 'duty', 'issue')")
    pg.autocommit = False
    pg.execute("INSERT INTO audit (at, actor, action) VALUES ('x', 'duty', 'cancel')")
    with pytest.raises(psycopg.IntegrityError):
        pg.execute("DELETE FROM audit WHERE action = 'issue'")
    with pytest.raises(psycopg.errors.InFailedSqlTransaction):
        pg.execute("SELECT 1")
    pg.rollback()
    assert pg.execute("SELECT action FROM audit").fetchall() == [("issue",)]


# -- (d) schema_version -------------------------------------------------------------------------


def test_schema_version_lists_every_migration(pg: psycopg.Connection[Any], sqlite_path: Path) -> None:
    """Every migration file's number, once each (0003 was never shipped), as SQLite's table says."""
    versions = [r[0] for r in pg.execute("SELECT version FROM schema_version ORDER BY version")]
    assert versions == [number for number, _ in migrations()]
    with sqlite3.connect(sqlite_path) as lite:
        assert versions == [r[0] for r in lite.execute("SELECT version FROM schema_version ORDER BY version")]
