"""The PostgreSQL dialect: the same names as warnd.store.sqlite, for a database on a server.

`[store] url = "postgresql://warnd@db.county.example/township_a"` puts the store on PostgreSQL
(a county running several townships' warnd against one server, each its own database). The store
is the same: its functions take a connection and run in the store's threads (one writer, a pool
of readers), so the driver is psycopg 3 used synchronously — asyncpg would have meant a second,
async copy of every statement. Statements are written for SQLite (`?` placeholders, the
fragments this module and sqlite.py both provide); `Connection.execute` turns the placeholders
into psycopg's and binds parameters on the client (ClientCursor), as sqlite3 does: a Python int
is a number and None is NULL wherever it appears, with no server-side type guessing.

One warnd per database: the writer connection holds a session advisory lock for its life
(DatabaseInUse for a second one, as the state directory's flock does for SQLite). Durability:
the writer's commits wait for the WAL flush (`synchronous_commit = on`, whatever the server's
default), so a warning answered 202 is on the server's disk.
"""

from __future__ import annotations

import contextlib
import errno
import json
import re
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from importlib import resources
from typing import Any

import psycopg
from psycopg import ClientCursor, pq

from warnd.store.errors import DatabaseInUse

DatabaseError = psycopg.Error
IntegrityError = psycopg.IntegrityError

# The advisory lock a warnd's writer holds on its database: 'warnd' in ASCII.
LOCK_KEY = 0x7761726E64
# Connect within this; a statement waits this long for a row lock (SQLite's busy_timeout).
CONNECT_TIMEOUT_S = 5
LOCK_TIMEOUT_MS = 5000
# How long a starting warnd waits for the database's lock: a predecessor that just exited (a
# restart, a SIGKILL) holds it until its server process has noticed and ended its session.
LOCK_WAIT_S = 5.0
# A connection whose peer vanished (a network cut, a NAT reset) is found out within ~10 s on
# both ends: libpq's keepalives and TCP_USER_TIMEOUT here, the session's own keepalive settings
# on the server (which otherwise keeps a dead session, and the writer's lock, for two hours).
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT = 5, 2, 3
TCP_USER_TIMEOUT_MS = 10_000

# SQLSTATEs that mean "the database will not take it now" rather than "this write is wrong";
# then whole classes: 08 connection, 53 resources, 57 operator intervention, 58 system error.
_UNAVAILABLE_STATE = {
    "53100": "disk full",
    "53200": "database server out of memory",
    "53300": "database server has too many connections",
    "25006": "read-only",
    "25P03": "database server ended an idle transaction",
    "57P01": "database server shutting down",
    "57P02": "database server shutting down",
    "57P03": "database server starting or stopping",
    "55P03": "busy: another session holds the rows' lock",
}
_UNAVAILABLE_CLASS = {
    "08": "database server unreachable",
    "53": "database server out of resources",
    "57": "database server ended the session",
    "58": "database server's disk or system failed",
}
_UNAVAILABLE_ERRNO = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only",
    errno.EIO: "disk I/O error",
}


def unavailable_reason(exc: BaseException) -> str | None:
    """Why a failed write is the server's doing (unreachable, full, read-only), or None."""
    if isinstance(exc, DatabaseInUse):
        # Met on a reconnect: the old session, cut off but not yet ended by the server, holds it.
        return "the database's lock is still held by an earlier session"
    if isinstance(exc, psycopg.Error):
        state = exc.sqlstate
        if state is not None:
            return _UNAVAILABLE_STATE.get(state) or _UNAVAILABLE_CLASS.get(state[:2])
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
            return "database server unreachable"
        return None
    if isinstance(exc, OSError) and exc.errno is not None:
        return _UNAVAILABLE_ERRNO.get(exc.errno)
    return None


def safe_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


class Row:
    """A row read by index, by column name, or as a dict (`dict(row)`), as sqlite3.Row is."""

    __slots__ = ("_index", "_values")

    def __init__(self, index: dict[str, int], values: Sequence[Any]) -> None:
        """Values, and where each column name is among them (shared by a result's rows)."""
        self._index, self._values = index, values

    def __getitem__(self, key: int | str) -> Any:
        """A value by position or by column name."""
        return self._values[self._index[key] if isinstance(key, str) else key]

    def __iter__(self) -> Iterator[Any]:
        """The values, in column order (`a, b = row`)."""
        return iter(self._values)

    def __len__(self) -> int:
        """How many columns."""
        return len(self._values)

    def keys(self) -> list[str]:
        """The column names, in order."""
        return list(self._index)


def _row_factory(cursor: Any) -> Any:
    """psycopg's row factory for Row."""
    index = {c.name: i for i, c in enumerate(cursor.description or ())}
    return lambda values: Row(index, values)


# SQLite's SQL made psycopg's, once per distinct statement.
_TRANSLATED: dict[tuple[str, bool], str] = {}
_TRANSLATED_LOCK = threading.Lock()


def translate(sql: str, with_params: bool) -> str:
    """`?` placeholders as `%s`; a literal `%` doubled when there are parameters."""
    key = (sql, with_params)
    out = _TRANSLATED.get(key)
    if out is None:
        out = (sql.replace("%", "%%") if with_params else sql).replace("?", "%s")
        with _TRANSLATED_LOCK:
            _TRANSLATED[key] = out
    return out


class Connection:
    """A psycopg connection as the table modules use sqlite3's: execute, executemany, rows.

    Reconnects at the start of a transaction when the server went away meanwhile (a restart);
    the writer takes its advisory lock again then.
    """

    dialect: Any = None  # this module (set below)

    def __init__(self, conninfo: str, *, reader: bool) -> None:
        """Connect (the writer also takes the database's lock)."""
        self.conninfo, self.reader = conninfo, reader
        self.changes = 0  # rows changed by this connection's statements since it was made
        self.xid: str | None = None  # the open write transaction's id (begin → commit)
        self.raw = self._connect()

    def _connect(self) -> psycopg.Connection[Any]:
        """A new server connection, in autocommit (the store says BEGIN itself)."""
        raw: psycopg.Connection[Any] = psycopg.connect(
            self.conninfo,
            autocommit=True,
            cursor_factory=ClientCursor,
            row_factory=_row_factory,
            connect_timeout=CONNECT_TIMEOUT_S,
            application_name="warnd-read" if self.reader else "warnd",
            tcp_user_timeout=TCP_USER_TIMEOUT_MS,
            keepalives=1,
            keepalives_idle=KEEPALIVE_IDLE_S,
            keepalives_interval=KEEPALIVE_INTERVAL_S,
            keepalives_count=KEEPALIVE_COUNT,
        )
        try:
            raw.execute(f"SET lock_timeout = {LOCK_TIMEOUT_MS}")
            raw.execute(
                "SELECT set_config('tcp_keepalives_idle', %s, false),"
                " set_config('tcp_keepalives_interval', %s, false),"
                " set_config('tcp_keepalives_count', %s, false)",
                (str(KEEPALIVE_IDLE_S), str(KEEPALIVE_INTERVAL_S), str(KEEPALIVE_COUNT)),
            )
            taken = self.reader
            if not self.reader:
                raw.execute("SET synchronous_commit = on")
                deadline = time.monotonic() + LOCK_WAIT_S
                while True:
                    row = raw.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
                    taken = bool(row and row[0])
                    if taken or time.monotonic() >= deadline:
                        break
                    time.sleep(0.1)  # the store's thread, before anything else runs on it
        except BaseException:
            raw.close()
            raise
        if not taken:
            raw.close()
            raise DatabaseInUse(f"another warnd holds {safe_url(self.conninfo)} (advisory lock {LOCK_KEY})")
        return raw

    def ensure(self) -> None:
        """Connect again if the server connection is gone (between transactions only)."""
        if self.raw.closed or self.raw.broken:
            self.raw.close()
            self.raw = self._connect()

    def start(self, begin: str) -> None:
        """Begin a transaction; a connection the server dropped meanwhile (a restart) is made again.

        Nothing was done yet in the transaction, so beginning it on a new connection is safe; a
        server that is still away raises (StoreUnavailable for the caller).
        """
        self.ensure()
        try:
            self.raw.execute(begin)
        except psycopg.OperationalError:
            if not (self.raw.closed or self.raw.broken):
                raise
            self.ensure()
            self.raw.execute(begin)

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        """One statement; its cursor (rowcount, fetchone, fetchall, iteration)."""
        cur = self.raw.cursor()
        cur.execute(translate(sql, bool(parameters)), parameters or None)
        if cur.description is None and cur.rowcount > 0:
            self.changes += cur.rowcount
        return cur

    def executemany(self, sql: str, parameters: Any, /) -> Any:
        """One statement per parameter row, pipelined."""
        cur = self.raw.cursor()
        cur.executemany(translate(sql, True), list(parameters))
        if cur.rowcount > 0:
            self.changes += cur.rowcount
        return cur

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction is open on this connection."""
        return self.raw.info.transaction_status != pq.TransactionStatus.IDLE

    def close(self) -> None:
        """Close the server connection; the writer lets go of the database's lock first.

        Unlocked explicitly: the server would release it only once its process for this session
        has ended, a moment after the socket closed, and a warnd restarted at once would wait.
        """
        if not self.reader and not self.raw.closed and not self.raw.broken:
            with contextlib.suppress(psycopg.Error):
                self.raw.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
        self.raw.close()


def connect(url: str, *, reader: bool = False) -> Connection:
    """The writer's connection (taking the database's lock) or a reader's."""
    return Connection(url, reader=reader)


def begin(con: Connection) -> None:
    """Start a write transaction (READ COMMITTED: the one writer is alone on its database).

    Its transaction id is taken at once, for `commit` to ask after if the COMMIT's answer is lost.
    """
    con.start("BEGIN")
    row = con.raw.execute("SELECT pg_current_xact_id()::text").fetchone()
    con.xid = row[0] if row else None


def begin_read(con: Connection) -> None:
    """Start a read transaction that sees one snapshot until it ends."""
    con.start("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")


def commit(con: Connection) -> None:
    """End the transaction, keeping what it wrote; a COMMIT whose answer was lost is looked up.

    The connection dropping during COMMIT leaves it in doubt: the server may have committed.
    Reported as not stored, an accepted warning would be posted again (and sent twice) and a
    claim's rows left `sending`. The transaction's id was taken at BEGIN; its fate is asked on a
    new connection: committed is success; aborted, or no answer, raises as before.
    """
    xid, con.xid = con.xid, None
    try:
        con.raw.execute("COMMIT")
    except psycopg.OperationalError:
        if xid is None or transaction_status(con.conninfo, xid) != "committed":
            raise
        con.ensure()  # the writer's next transaction begins on a new connection


def transaction_status(conninfo: str, xid: str) -> str | None:
    """What the server says of a transaction: committed, aborted, in progress; None if unreachable."""
    try:
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as probe:
            found = probe.execute("SELECT pg_xact_status(%s::xid8)", (xid,)).fetchone()
    except psycopg.Error:
        return None
    return found[0] if found else None


def rollback_if_open(con: Connection) -> None:
    """ROLLBACK if a transaction is open and the connection still there."""
    if not con.raw.closed and not con.raw.broken and con.in_transaction:
        con.raw.execute("ROLLBACK")


def changes(con: Connection) -> int:
    """Rows changed on this connection since it opened."""
    return con.changes


def touch_header(con: Connection) -> None:
    """A write that reaches the disk and changes nothing: one schema_version row set to itself.

    A real row write, so a read-only server or session refuses it (SQLSTATE 25006), and its COMMIT
    waits for the WAL flush; a bare transaction id (pg_current_xact_id) is granted even read-only.
    """
    con.execute(
        "UPDATE schema_version SET version = version"
        " WHERE version = (SELECT MIN(version) FROM schema_version)"
    )


touch_header.proves_write = True  # type: ignore[attr-defined]


def create_schema(con: Connection) -> None:
    """The whole schema (postgres_schema.sql) in an empty database; nothing if it has one."""
    if "schema_version" in tables(con):
        return
    sql = resources.files("warnd.store").joinpath("postgres_schema.sql").read_text(encoding="utf-8")
    con.raw.execute(sql)  # one string, many statements: no parameters, so the server splits it


def split_sql(sql: str) -> list[str]:
    """SQLite's migration files do not run here (create_schema writes their sum)."""
    raise NotImplementedError("SQLite migrations do not run on PostgreSQL")


def tables(con: Connection) -> set[str]:
    """The names of the database's tables (in the connection's schema)."""
    rows = con.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()").fetchall()
    return {r[0] for r in rows}


def forget(con: Connection) -> None:
    """Nothing is cached per connection."""


# -- SQL fragments (warnd.store.sqlite has the same names) -------------------------------------


def insert_ignore(table: str, rest: str) -> str:
    """`INSERT INTO table rest` that leaves a row whose unique key is known as it is."""
    return f"INSERT INTO {table} {rest} ON CONFLICT DO NOTHING"


def in_list(kind: str = "text") -> str:
    """The values of a JSON array parameter as a subquery, as integers ("id") or text."""
    items = "jsonb_array_elements_text(CAST(? AS jsonb))"
    return f"(SELECT CAST({items} AS BIGINT))" if kind == "id" else f"(SELECT {items})"


# PostgreSQL plans the join itself. It guesses the array at 100 items and looks each pair up
# through the unique (msg_id, target) index: EXPLAIN ANALYZE of 1,000 acks against 50,000
# deliveries, analyzed or not, is a nested loop over that index, 3.8 ms.
JOIN_IN_ORDER = "JOIN"


def json_list(values: Sequence[Any]) -> str:
    """A list as the parameter in_list() and json_rows() take."""
    return json.dumps(list(values))


def json_table(alias: str) -> str:
    """A JSON array parameter as a table of its items, `alias`, with one column `value`."""
    return f"jsonb_array_elements(CAST(? AS jsonb)) AS {alias}(value)"


def json_item(alias: str, index: int) -> str:
    """Item `index` of a json_table() row that is itself an array, as text."""
    return f"({alias}.value ->> {index})"


def json_agg(expr: str) -> str:
    """An aggregate collecting a column's values as a JSON array's text (`[]` for no row)."""
    return f"COALESCE(json_agg({expr}), '[]')::text"


def json_rows(width: int, ints: tuple[int, ...] = ()) -> str:
    """`SELECT v0, v1 … FROM <a JSON array of arrays>`; the items `ints` as integers, the rest text."""
    cols = ", ".join(
        f"CAST({json_item('v', i)} AS BIGINT)" if i in ints else json_item("v", i) for i in range(width)
    )
    return f"SELECT {cols} FROM {json_table('v')}"


def greatest(a: str, b: str) -> str:
    """The larger of two expressions."""
    return f"GREATEST({a}, {b})"


def by_rowid(column: str) -> str:
    """A column reference (PostgreSQL needs no hint to look rows up by id)."""
    return column


def stream(con: Connection, sql: str, params: Sequence[Any]) -> Iterator[Any]:
    """A query's rows one at a time from the server, not all fetched first (retention's archive)."""
    yield from con.raw.cursor().stream(translate(sql, True), params)


def rows(con: Connection, table: str, select: str, params: Sequence[Any]) -> list[dict[str, Any]]:
    """The rows of `select` as dicts."""
    return [dict(r) for r in con.execute(select, params)]


Connection.dialect = sys.modules[__name__]
