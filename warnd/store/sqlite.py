"""The SQLite dialect: every SQLite-only trick the store uses, in one place.

The table modules (warnd/store/*.py) write plain SQL with `?` placeholders and ask their
connection's dialect (`con.dialect`: this module, or warnd.store.postgres) for whatever is the
database's own: `INSERT OR IGNORE` (`insert_ignore`), JSON arrays as parameters (`in_list`,
`json_rows`, `json_table`), two-argument `MAX` (`greatest`), index hints, the one-step JSON fetch
(`rows`), the join order, the driver's connection and errors. warnd.store.postgres implements the
same names (`jsonb_array_elements`, `GREATEST`, `ON CONFLICT DO NOTHING` …) and the table modules
stay as they are. A JSON array's items come back as text on PostgreSQL: the fragments take the
SQL type an item is compared with or stored as (`in_list("id")`, `json_rows(width, ints=…)`).

Kept by the database itself: the delivery counters (delivery_counts, coverage_receivers,
coverage_counts) follow every change of a delivery through the triggers COUNTER_TRIGGERS names
(migration 0013; warnd/store/postgres_schema.sql has them as trigger functions).

Shared by both and so written in the table modules: `ON CONFLICT … DO UPDATE SET … excluded.…`
(the target's own columns qualified by its table name: PostgreSQL calls them ambiguous otherwise),
`CASE WHEN`, `COALESCE`, flags compared (`? <> 0`), never used as booleans, sums cast to INTEGER.
"""

from __future__ import annotations

import errno
import json
import sqlite3
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any


class Connection(sqlite3.Connection):
    """sqlite3's connection, carrying the dialect the table modules ask for their SQL."""

    dialect: Any = None  # this module (set below: a module cannot name itself before it exists)


Cursor = sqlite3.Cursor
# What the driver raises for anything the database refused.
DatabaseError = sqlite3.Error
IntegrityError = sqlite3.IntegrityError

# SQLite result codes (the low byte of an extended code) that mean "the disk will not take it"
# rather than "this write is wrong": the request may be made again once the disk is back.
_UNAVAILABLE_SQLITE = {
    sqlite3.SQLITE_FULL: "disk full",
    sqlite3.SQLITE_IOERR: "disk I/O error",
    sqlite3.SQLITE_READONLY: "read-only",
    sqlite3.SQLITE_CANTOPEN: "cannot open the database files",
    # busy_timeout ran out: another process holds the write lock (a backup, a stuck sqlite3 shell).
    sqlite3.SQLITE_BUSY: "busy: another process holds the write lock",
}
# The same from the operating system, for what the store writes beside SQLite.
_UNAVAILABLE_ERRNO = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only",
    errno.EIO: "disk I/O error",
}


def unavailable_reason(exc: BaseException) -> str | None:
    """Why a failed write is the disk's doing (full, read-only, I/O error, busy), or None."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return _UNAVAILABLE_SQLITE.get(code & 0xFF) if isinstance(code, int) else None
    if isinstance(exc, OSError) and exc.errno is not None:
        return _UNAVAILABLE_ERRNO.get(exc.errno)
    return None


def connect(path: Path, *, reader: bool = False) -> Connection:
    """Open the database with warnd's durability settings (the writer) or as a reader."""
    # Autocommit (isolation_level=None): the store says BEGIN (IMMEDIATE) itself. A connection is
    # used by one thread at a time, not always the same one (readers are pooled, close() runs
    # elsewhere): check_same_thread is off.
    con = sqlite3.connect(path, isolation_level=None, check_same_thread=False, factory=Connection)
    con.row_factory = sqlite3.Row
    if reader:
        # query_only: a write slipped into read() fails at once instead of racing the writer.
        con.execute("PRAGMA query_only=ON")
        con.execute("PRAGMA busy_timeout=5000")
        return con
    con.execute("PRAGMA journal_mode=WAL")
    # FULL: a warning answered 202 survives power loss, not only a crash.
    con.execute("PRAGMA synchronous=FULL")
    con.execute("PRAGMA foreign_keys=ON")
    con.execute("PRAGMA busy_timeout=5000")
    return con


def begin(con: sqlite3.Connection) -> None:
    """Start a write transaction that takes the write lock at once (no upgrade deadlock later)."""
    con.execute("BEGIN IMMEDIATE")


def begin_read(con: sqlite3.Connection) -> None:
    """Start a read transaction: one snapshot (WAL) until it ends."""
    con.execute("BEGIN")


def commit(con: sqlite3.Connection) -> None:
    """End the transaction, keeping what it wrote (synchronous=FULL: on the disk when this returns)."""
    con.execute("COMMIT")


def rollback_if_open(con: sqlite3.Connection) -> None:
    """ROLLBACK unless SQLite ended the transaction itself (it does on a full disk or an I/O error).

    A ROLLBACK with no transaction fails ("no transaction is active") and would hide the error
    that ended it; a transaction left open would make every later BEGIN fail.
    """
    if con.in_transaction:
        con.execute("ROLLBACK")


def touch_header(con: sqlite3.Connection) -> None:
    """Write the database header with what it holds: a WAL frame and an fsync, no row changed.

    `PRAGMA user_version` is unused by warnd (its schema is in schema_version).
    """
    (version,) = con.execute("PRAGMA user_version").fetchone()
    con.execute(f"PRAGMA user_version = {int(version)}")


# Whether the writes of a transaction that changed no row reached the disk (ping_write's).
touch_header.proves_write = True  # type: ignore[attr-defined]


def create_schema(con: sqlite3.Connection) -> None:
    """Where the schema's version is kept (the migrations, applied one by one, fill the rest)."""
    con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")


def safe_url(url: str) -> str:
    """A database named for messages (SQLite's is a file path: nothing to hide)."""
    return url


def tables(con: sqlite3.Connection) -> set[str]:
    """The names of the database's tables."""
    return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def split_sql(sql: str) -> list[str]:
    """Split a migration file into statements (ours hold no semicolons inside literals).

    A piece is joined to the next until SQLite calls it complete: a trigger's body has its own.
    """
    lines = [ln for ln in sql.splitlines() if not ln.strip().startswith("--")]
    out, buf = [], ""
    for piece in "\n".join(lines).split(";"):
        buf += piece + ";"
        if sqlite3.complete_statement(buf):
            if buf.strip(" \t\n;"):
                out.append(buf.strip())
            buf = ""
    return out


# The triggers that keep the delivery counters in the transaction that changes a delivery
# (migration 0013): whoever writes deliveries, by whichever statement, keeps them true.
COUNTER_TRIGGERS = (
    "delivery_counts_insert",
    "delivery_counts_update",
    "delivery_counts_delete",
    "coverage_receivers_insert",
    "coverage_receivers_update",
    "coverage_receivers_delete",
    "coverage_counts_insert",
    "coverage_counts_update",
    "coverage_counts_delete",
)


def triggers(con: sqlite3.Connection) -> set[str]:
    """The names of the database's triggers."""
    return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}


# -- SQL fragments ------------------------------------------------------------------------------

def insert_ignore(table: str, rest: str) -> str:
    """`INSERT INTO table rest` that leaves a row whose unique key is known as it is."""
    return f"INSERT OR IGNORE INTO {table} {rest}"


def in_list(kind: str = "text") -> str:
    """The values of a JSON array parameter (json_list()) as a subquery: `id IN (SELECT …)`.

    `kind`: "id" for integer ids, "text" for text; SQLite compares either as it is.
    """
    return "(SELECT value FROM json_each(?))"


# A join the planner must take in the order written, the left side outer (SQLite: CROSS JOIN).
# Followed by an ON clause.
JOIN_IN_ORDER = "CROSS JOIN"


def json_list(values: Sequence[Any]) -> str:
    """A list as the parameter in_list() and json_rows() take."""
    return json.dumps(list(values))


def json_table(alias: str) -> str:
    """A JSON array parameter (json_list()) as a table of its items, `alias`."""
    return f"json_each(?) AS {alias}"


def json_item(alias: str, index: int) -> str:
    """Item `index` of a json_table() row that is itself an array."""
    return f"{alias}.value ->> {index}"


def json_agg(expr: str) -> str:
    """An aggregate collecting a column's values (NULLs too) as a JSON array, read by json.loads."""
    return f"json_group_array({expr})"


def changes(con: sqlite3.Connection) -> int:
    """Rows changed on this connection since it opened (a write that changed nothing proves nothing)."""
    return con.total_changes


def json_rows(width: int, ints: tuple[int, ...] = ()) -> str:
    """`SELECT v0, v1 … FROM <a JSON array of arrays>`: many rows passed as one parameter.

    One statement over a JSON array instead of one statement step per row: each step hands the
    GIL back and forth with a busy event loop. `ints`: the items that are integers (SQLite
    keeps JSON's types; PostgreSQL casts them).
    """
    cols = ", ".join(json_item("v", i) for i in range(width))
    return f"SELECT {cols} FROM {json_table('v')}"


def greatest(a: str, b: str) -> str:
    """The larger of two expressions (SQLite's two-argument MAX)."""
    return f"MAX({a}, {b})"


def by_rowid(column: str) -> str:
    """A column reference the planner must not use an index for (`+column`): look rows up by id."""
    return f"+{column}"


# Column names per (connection, table), read from the schema after migrations; dropped on close.
_COLUMNS: dict[tuple[int, str], list[str]] = {}
_COLUMNS_LOCK = threading.Lock()


def forget(con: sqlite3.Connection) -> None:
    """Drop what was cached about a connection that is closing."""
    with _COLUMNS_LOCK:
        for key in [k for k in _COLUMNS if k[0] == id(con)]:
            del _COLUMNS[key]


def stream(con: sqlite3.Connection, sql: str, params: Sequence[Any]) -> Iterator[Any]:
    """A query's rows one at a time, as the cursor steps (retention's archive)."""
    yield from con.execute(sql, params)


def rows(con: Any, table: str, select: str, params: Sequence[Any]) -> list[dict[str, Any]]:
    """The rows of `select` (a `SELECT * FROM table …`), fetched as one JSON array.

    One statement step for the whole result instead of one per row: each step hands the GIL
    back and forth with the event loop, which under load costs far more than the row.
    """
    columns = _COLUMNS.get((id(con), table))
    if columns is None:
        columns = [r[1] for r in con.execute(f"PRAGMA table_info({table})")]
        with _COLUMNS_LOCK:
            _COLUMNS[(id(con), table)] = columns
    fields = ",".join(f"'{c}', r.{c}" for c in columns)
    sql = f"SELECT json_group_array(json_object({fields})) FROM ({select}) AS r"
    out: list[dict[str, Any]] = json.loads(con.execute(sql, params).fetchone()[0])
    return out


Connection.dialect = sys.modules[__name__]
