"""The store's core: one writer connection in one thread, readers beside it, migrations.

Every statement runs in a store thread, whole functions at a time: `write(fn)` runs
fn(connection) as one transaction (BEGIN IMMEDIATE … COMMIT) in the writer's thread; `read(fn)`
runs it as one read transaction on a reader connection in its own thread. Under load the event
loop is busy with thousands of acks; a transaction that needed the loop between statements
would hold the store for as many loop turns as it has statements. One writer: writes never
interleave. Readers: WAL lets them read the last commit while the writer writes, so a report,
the console or /metrics never waits behind the fan-out's writes; a read that starts after a
write returned sees it.

The same on PostgreSQL (`StoreCore(url="postgresql://…")`, warnd.store.postgres): one writer
connection in the same thread, the readers a pool of connections beside it, each read one
REPEATABLE READ snapshot. The database is the instance's own: the writer holds an advisory lock
on it, and a second warnd pointed at it refuses to start (two writers would claim the same
deliveries).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib
import itertools
import queue
import secrets
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, Protocol, TypeVar

import structlog

from warnd.diskspace import disk_problem
from warnd.store import sqlite
from warnd.store.errors import SchemaTooNew, StoreError, StoreUnavailable

log = structlog.get_logger("warnd.store")

T = TypeVar("T")

TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


class Connection(Protocol):
    """What the table modules use of a connection: statements, and its dialect for the SQL."""

    dialect: Any  # warnd.store.sqlite or warnd.store.postgres

    def execute(self, sql: str, parameters: Any = ..., /) -> Any:
        """Run one statement; its cursor."""

    def executemany(self, sql: str, parameters: Any, /) -> Any:
        """Run one statement for each parameter row."""


Row = dict[str, Any]

# Reader connections, each used by one thread at a time: two cores, and a read is milliseconds;
# two let a long report and /metrics answer side by side without a connection per request.
READERS = 2


def _finished(out: T) -> T:
    """fn's result, but never a cursor: one is closed here, in the connection's thread, and None given.

    A cursor handed back to the loop was finalized there when it was collected, resetting its
    statement while the store's thread ran the same cached statement for the next write: SQLite
    answered that with "bad parameter or other API misuse" (seen: two SMS batches recording their
    providers at once, `executemany` of the same UPDATE; the batch's sends were then retried, and
    five people got the SMS twice).
    """
    if hasattr(out, "fetchone") and hasattr(out, "close"):  # a cursor, of either driver
        out.close()
        return None  # type: ignore[return-value]  # what a statement gives back is nothing
    return out


class WriterThread:
    """The writer connection's one thread: transactions run one at a time, urgent ones first.

    A ThreadPoolExecutor(1) runs them in arrival order, so an operator's accept waited behind
    every bulk write queued before it — a fan-out's claims, outcome records and ack batches, each
    tens of milliseconds: 92 ms at the median during the county bench's fan-out, for a 3 ms
    transaction. Bulk writes say so (`write(fn, bulk=True)`); everything else goes ahead of the
    bulk writes still waiting, and waits at most for the one running. Within a priority, arrival
    order; one caller's writes are awaited one by one, so its own order never changes.
    """

    URGENT, BULK, STOP = 0, 1, 2

    def __init__(self) -> None:
        """Start the thread."""
        self._queue: queue.PriorityQueue[tuple[int, int, Any]] = queue.PriorityQueue()
        self._seq = itertools.count()
        self._thread = threading.Thread(target=self._run, name="warnd-store", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., T], *args: Any, bulk: bool = False) -> concurrent.futures.Future[T]:
        """Queue fn(*args); its future (cancel() works until it starts)."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.put((self.BULK if bulk else self.URGENT, next(self._seq), (future, fn, args)))
        return future

    def shutdown(self) -> None:
        """End the thread once what is queued has run (it does not wait for that)."""
        self._queue.put((self.STOP, next(self._seq), None))

    def _run(self) -> None:
        """Run queued work until the stop, highest priority first."""
        while True:
            _, _, item = self._queue.get()
            if item is None:
                return
            future, fn, args = item
            if not future.set_running_or_notify_cancel():
                continue  # cancelled before it started
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # handed to the caller, as an executor would
                future.set_exception(exc)


def ts(dt: datetime) -> str:
    """A datetime as the store's sortable UTC text (TS_FORMAT, by the faster isoformat)."""
    return dt.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def from_ts(text: str | None) -> datetime | None:
    """The store's UTC text back to an aware datetime."""
    return datetime.fromisoformat(text) if text else None


def new_warning_id(now: datetime) -> str:
    """A warning id that sorts by creation time and is unguessable enough: W20260701-3f9a2c1b."""
    return f"W{now.astimezone(UTC):%Y%m%d}-{secrets.token_hex(4)}"


def one(con: Connection, sql: str, params: Any = ()) -> Row | None:
    """One row of a query as a dict, or None."""
    row = con.execute(sql, params).fetchone()
    return dict(row) if row is not None else None


def every(con: Connection, sql: str, params: Any = ()) -> list[Row]:
    """All rows of a query as dicts."""
    return [dict(r) for r in con.execute(sql, params).fetchall()]


def migrations() -> list[tuple[int, str]]:
    """The numbered SQL files shipped in warnd/migrations, in order."""
    out = []
    for entry in resources.files("warnd.migrations").iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            out.append((int(name[:4]), entry.read_text(encoding="utf-8")))
    return sorted(out)


class StoreCore:
    """The connection, its thread and the one way to run statements; the table groups build on it.

    Args:
        path: the SQLite file.
        url: instead, a PostgreSQL database (`postgresql://user@host:port/name`, libpq's form).
    """

    def __init__(self, path: Path | None = None, *, url: str | None = None) -> None:
        """Remember where the database lives; `open()` connects."""
        if (path is None) == (url is None):
            raise ValueError("a store is a SQLite file (path) or a PostgreSQL database (url), one of them")
        self.path = path
        self.url = url
        self.dialect: Any = sqlite
        if url is not None:
            # By name: psycopg (and libpq) is loaded only by a warnd that uses PostgreSQL.
            self.dialect = importlib.import_module("warnd.store.postgres")
        self._con: Any = None
        self._thread: WriterThread | None = None
        # The reader connections (idle ones wait in the queue) and their threads.
        self._readers: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._reader_cons: list[Any] = []
        self._read_threads: concurrent.futures.ThreadPoolExecutor | None = None
        # Write transactions handed to the thread and not yet ended (tests and /readyz look).
        self._writes_in_flight = 0
        # Why the last write failed for the disk's sake (StoreUnavailable), until one succeeds:
        # /readyz and the watchdog read it; the failure is logged once, not once per write.
        self.write_problem: str | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def where(self) -> str:
        """The database, for messages: the SQLite file, or the PostgreSQL URL without its password."""
        return str(self.path) if self.url is None else self.dialect.safe_url(self.url)

    async def open(self) -> Any:
        """Connect, set durability pragmas and apply migrations; returns the store."""
        target: Any = self.url
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            target = self.path
        self._thread = WriterThread()
        try:
            self._con = await self._call(lambda _: self.dialect.connect(target), with_con=False)
            self._read_threads = concurrent.futures.ThreadPoolExecutor(
                READERS, thread_name_prefix="warnd-store-read"
            )
            for _ in range(READERS):
                # Opened after the writer, which set WAL mode (a property of the file).
                con = await asyncio.to_thread(self.dialect.connect, target, reader=True)
                self._reader_cons.append(con)
                self._readers.put(con)
            await self._migrate()
        except BaseException:
            # Close what we opened: a half-open store would keep its thread alive.
            await self.close()
            raise
        return self

    async def close(self) -> None:
        """Close the connections and end their threads."""
        thread, con = self._thread, self._con
        self._thread = self._con = None
        readers, self._read_threads = self._read_threads, None
        if readers is not None:
            # shutdown(wait=True) lets reads in progress end before their connections close.
            await asyncio.to_thread(readers.shutdown)
        for reader in self._reader_cons:
            self.dialect.forget(reader)
            reader.close()
        self._reader_cons.clear()
        self._readers = queue.SimpleQueue()
        if thread is None:
            return
        if con is not None:
            self.dialect.forget(con)
            await asyncio.wrap_future(thread.submit(con.close))
        thread.shutdown()

    async def __aenter__(self) -> Any:
        """Open on entry."""
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        """Close on exit."""
        await self.close()

    @property
    def writing(self) -> bool:
        """Whether a write transaction is in the store's thread or waiting for it."""
        return self._writes_in_flight > 0

    # -- the one primitive --------------------------------------------------------------------

    async def read(self, fn: Callable[[Connection], T]) -> T:
        """fn(connection) as one read transaction on a reader connection, in a reader thread.

        It sees one snapshot (the last commit when it began) and never waits for the writer.
        fn must not write: a reader is not the writer.
        """
        if self._read_threads is None:
            raise StoreError("store is not open")
        try:
            return await asyncio.wrap_future(self._read_threads.submit(self._read_transaction, fn))
        except Exception as exc:
            # A database server that is away (PostgreSQL) is no bug of the caller's: the API
            # answers 503 as for a full disk, the loops wait and try again. A write slipped into
            # a read fails as read-only: that one is a bug, raised as it is (SQLite's reads too).
            reason = self.dialect.unavailable_reason(exc)
            if reason is None or reason == "read-only" or self.url is None:
                raise
            raise StoreUnavailable(reason) from exc

    async def on_writer(self, fn: Callable[[Connection], T]) -> T:
        """fn(the writer's connection) in its thread, outside any transaction (PRAGMAs, tests' checks)."""
        return await self._call(fn)

    def _read_transaction(self, fn: Callable[[Connection], T]) -> T:
        """BEGIN, fn, end the read transaction, on an idle reader connection; in a reader thread."""
        con = self._readers.get()
        try:
            self.dialect.begin_read(con)
            try:
                return _finished(fn(con))
            finally:
                self.dialect.rollback_if_open(con)  # nothing to keep: ROLLBACK ends a read as COMMIT would
        finally:
            self._readers.put(con)

    async def write(self, fn: Callable[[Connection], T], *, bulk: bool = False) -> T:
        """fn(connection) as one write transaction, run whole in the store's thread.

        `bulk`: part of the fan-out's steady work (claims, outcomes, acks, a step's rows, retention),
        which lets any other write waiting with it go first (WriterThread).

        BEGIN IMMEDIATE, fn, COMMIT; whatever fails — a statement, a COMMIT the disk refuses —
        is rolled back, then raised; a failure for lack of disk is raised as StoreUnavailable.
        A write handed to the thread runs to its end even if its caller is cancelled (a cancelled
        claim stays committed as `sending`, which recover() puts back at the next start); one not
        yet started is dropped. Either way the caller then sees CancelledError.
        """
        self._writes_in_flight += 1
        try:
            return await self._call(lambda con: self._transaction(con, fn), bulk=bulk)
        except BaseException as exc:
            reason = self.dialect.unavailable_reason(exc)
            if reason is None:
                raise
            self._write_failed(reason, exc)
            raise StoreUnavailable(reason) from exc
        finally:
            self._writes_in_flight -= 1

    async def _call(self, fn: Callable[[Connection], T], *, with_con: bool = True, bulk: bool = False) -> T:
        """Run fn in the store's thread; a cancelled caller waits for a started fn to end."""
        if self._thread is None or (with_con and self._con is None):
            raise StoreError("store is not open")
        con = self._con
        cfut = self._thread.submit(fn, con, bulk=bulk)
        fut = asyncio.wrap_future(cfut)
        cancelled = False
        while True:
            try:
                result = await asyncio.shield(fut)
                break
            except asyncio.CancelledError:
                if fut.done() or cfut.cancel():
                    raise  # ended, or never started: nothing runs on behind the caller's back
                cancelled = True
        if cancelled:
            raise asyncio.CancelledError
        return result

    def _transaction(self, con: Connection, fn: Callable[[Connection], T]) -> T:
        """BEGIN IMMEDIATE, fn, COMMIT (ROLLBACK on any error, a failed COMMIT too); in the thread."""
        d = self.dialect
        changes = d.changes(con)
        d.begin(con)
        try:
            out = _finished(fn(con))
            d.commit(con)
        except BaseException:
            try:
                d.rollback_if_open(con)
            except d.DatabaseError as exc:
                # The original error is the one to raise; this one is for the operator.
                log.error("store.rollback_failed", error=f"{type(exc).__name__}: {exc}")
            raise
        # Only a transaction that wrote proves the disk takes writes (a claim that found nothing
        # due commits nothing, full disk or not); ping_write's header write changes no rows.
        if d.changes(con) != changes or getattr(fn, "proves_write", False):
            self._write_succeeded()
        return out

    def _write_failed(self, reason: str, exc: BaseException) -> None:
        """Remember why writes fail; log it once per outage, not once per write."""
        if self.write_problem is None:
            log.error("store.write_failed", reason=reason, error=f"{type(exc).__name__}: {exc}"[:300])
        self.write_problem = reason

    def _write_succeeded(self) -> None:
        """A write went through: whatever failed before is over (called in the store's thread)."""
        if self.write_problem is not None:
            log.info("store.write_recovered", was=self.write_problem)
            self.write_problem = None

    # -- schema -------------------------------------------------------------------------------

    async def _migrate(self) -> None:
        """Apply the numbered migrations this database lacks; refuse a newer database.

        PostgreSQL starts from its whole schema in one file (warnd/store/postgres_schema.sql, the
        migrations' sum), written in the first transaction of an empty database.
        """
        await self.write(self.dialect.create_schema)
        rows = await self.on_writer(lambda con: every(con, "SELECT version FROM schema_version"))
        applied = {r["version"] for r in rows}
        known = migrations()
        unknown = applied - {number for number, _ in known}
        if unknown:
            raise SchemaTooNew(
                f"{self.where} has schema version(s) {sorted(unknown)} this warnd does not know: "
                "it was written by a newer warnd"
            )
        if self.url is not None and (missing := {n for n, _ in known} - applied):
            # SQLite's migration files are SQLite's SQL: a new one needs its PostgreSQL form.
            raise StoreError(
                f"{self.where} lacks schema version(s) {sorted(missing)}: no PostgreSQL form yet"
            )
        for number, sql in known:
            # Every known migration not yet applied, in order (not only those above the highest,
            # so a migration merged from a parallel branch is not skipped).
            if number in applied:
                continue

            def apply(con: Connection, number: int = number, sql: str = sql) -> None:
                """One migration and its schema_version row."""
                for statement in self.dialect.split_sql(sql):
                    con.execute(statement)
                con.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))

            await self.write(apply)
            log.info("store.migrated", version=number)

    # -- health -------------------------------------------------------------------------------

    async def ping(self) -> None:
        """A cheap read that proves the database answers (readiness)."""
        await self.read(lambda con: con.execute("SELECT 1").fetchone())

    async def ping_write(self) -> None:
        """Commit a write that reaches the disk: proves warnd can still store (watchdog, /readyz).

        The database header is rewritten with the value it already has: a WAL frame and, with
        synchronous=FULL, an fsync. A full or read-only disk raises StoreUnavailable; a disk that
        hangs or a writer that never lets go blocks it, and raises after busy_timeout.
        """
        await self.write(self.dialect.touch_header)

    async def write_check(self) -> str | None:
        """Why the store cannot take writes right now, or None (/readyz).

        A write that failed for the disk's sake counts until one succeeds; while it does, a
        probe write finds out whether space came back. The file system is looked at too: a full
        disk may still take a small write into the WAL SQLite already has, not the next warning.
        """
        if self.write_problem is not None:
            with contextlib.suppress(StoreUnavailable):
                await self.ping_write()
        if self.write_problem is not None:
            return f"not writable: {self.write_problem}"
        if self.path is None:
            return None  # PostgreSQL's disk is the database server's: its writes tell
        return await asyncio.to_thread(disk_problem, self.path.parent)
