"""The store: SQLite (WAL, synchronous=FULL) behind one narrow interface, with numbered migrations."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import json
import secrets
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import structlog

from warnd.diskspace import disk_problem

log = structlog.get_logger("warnd.store")

T = TypeVar("T")

TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"

# Whether the running task holds the store's transaction (reads inside it must not re-lock).
_IN_TX: contextvars.ContextVar[bool] = contextvars.ContextVar("warnd_store_in_tx", default=False)


# json.dumps with a non-default argument builds a new encoder per call; acks come by the thousand.
_encode_json = json.JSONEncoder(ensure_ascii=False).encode


def ts(dt: datetime) -> str:
    """A datetime as the store's sortable UTC text (TS_FORMAT, by the faster isoformat)."""
    return dt.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def from_ts(text: str | None) -> datetime | None:
    """The store's UTC text back to an aware datetime."""
    return datetime.fromisoformat(text) if text else None


def new_warning_id(now: datetime) -> str:
    """A warning id that sorts by creation time and is unguessable enough: W20260701-3f9a2c1b."""
    return f"W{now.astimezone(UTC):%Y%m%d}-{secrets.token_hex(4)}"


class StoreError(Exception):
    """The store cannot do what was asked."""


class IdempotencyConflict(StoreError):
    """An Idempotency-Key already used for a different warning; `warning_id` is that warning."""

    def __init__(self, warning_id: str) -> None:
        """Keep the id of the warning the key belongs to."""
        super().__init__(f"Idempotency-Key already used for {warning_id}")
        self.warning_id = warning_id


class SchemaTooNew(StoreError):
    """The database was written by a newer warnd: refusing it beats corrupting it."""


class StoreUnavailable(StoreError):
    """The disk will not take a write (full, read-only, failing, held by another writer).

    Nothing of the transaction was stored. It is nobody's mistake and no bug: the same write
    works again once an operator frees space (the API answers 503 with Retry-After).

    Args:
        reason: what the disk said, short ("disk full", "read-only").
    """

    def __init__(self, reason: str) -> None:
        """Keep the reason for the API answer, /readyz and the log."""
        super().__init__(f"the store cannot write: {reason}")
        self.reason = reason


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
    if isinstance(exc, OSError):
        return _UNAVAILABLE_ERRNO.get(exc.errno)  # type: ignore[arg-type]
    return None


@dataclass(frozen=True)
class Job:
    """A row of `jobs`: something due at a time."""

    id: int
    key: str
    warning_id: str | None
    kind: str
    due_at: datetime
    payload: dict[str, Any]


@dataclass(frozen=True)
class NewDelivery:
    """A delivery row to insert."""

    msg_id: str
    warning_id: str
    step: str
    kind: str
    channel: str
    target: str
    due_at: datetime
    village: str | None = None
    person_id: str | None = None
    address: str | None = None
    ack_required: bool = False
    # The message kind and its facts (warnd.messages): {"message": "upgrade", "old_level": …}.
    context: dict[str, Any] | None = None


@dataclass(frozen=True)
class Delivery:
    """A claimed delivery, with what an adapter needs to send it."""

    id: int
    msg_id: str
    warning_id: str
    step: str
    kind: str
    channel: str
    target: str
    village: str | None
    person_id: str | None
    address: str | None
    ack_required: bool
    attempts: int
    state: str = "sending"
    last_error: str | None = None
    context: dict[str, Any] = field(default_factory=dict)
    # A crash left an earlier send of it in doubt: it may have reached the provider at or after
    # this time, so it is looked up there before it is sent again (Adapter.reconcile).
    maybe_sent_at: datetime | None = None
    # When it was planned: the same on every attempt, so a resend can be the very same message.
    created_at: datetime | None = None
    # When it was first handed over, if ever: a delivery sent before is being published again.
    sent_at: datetime | None = None
    # Published again because its device did not confirm (warnd.confirm): not an attempt.
    republish: bool = False


@dataclass(frozen=True)
class Outcome:
    """What became of one delivery attempt.

    Args:
        delivery_id: the row.
        state: sent / delivered / acknowledged / failed (retry) / dead.
        error: why it failed, for the operator; never a secret.
        retry_after_s: earliest retry the far end allows.
        provider_ref: the provider's id for later receipts (Twilio SID …).
        maybe_sent: a failed send that may have reached the far end (timed out, connection lost
            after the request went out): it is looked up before it is sent again.
        refund: nothing left warnd (the channel was not ready): the claim's attempt is taken back.
        republish: the delivery was published again (its device had not confirmed).
    """

    delivery_id: int
    state: str
    error: str | None = None
    retry_after_s: float | None = None
    provider_ref: str | None = None
    maybe_sent: bool = False
    refund: bool = False
    republish: bool = False


@dataclass(frozen=True)
class AckIn:
    """An acknowledgement to record.

    Args:
        source: which channel or endpoint reported it.
        status: what it reported (played, delivered, failed …).
        new_state: the delivery state it means, or None to only record it.
        msg_id: with target, finds the delivery …
        target: … that this receiver acknowledges.
        provider_ref: or the provider's id (Twilio SID) finds it.
        detail: what else was reported.
        error: for failures, the reason kept on the delivery.
        retry: attempts → the next try of a delivery reported failed, or None to give up.
    """

    source: str
    status: str
    new_state: str | None
    msg_id: str | None = None
    target: str | None = None
    provider_ref: str | None = None
    detail: dict[str, Any] | None = None
    error: str | None = None
    retry: Callable[[int], datetime | None] | None = None


@dataclass
class AcceptResult:
    """The id a submission got, and whether it was new."""

    id: str
    created: bool
    extra: dict[str, Any] = field(default_factory=dict)


def _migrations() -> list[tuple[int, str]]:
    """The numbered SQL files shipped in warnd/migrations, in order."""
    out = []
    for entry in resources.files("warnd.migrations").iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            out.append((int(name[:4]), entry.read_text(encoding="utf-8")))
    return sorted(out)


# What is due at `?` (now): its time has come — or it was due the moment it was written and the
# wall clock has since been stepped back (written "after" now). Without the second clause an
# hour's step back (a bad NTP server corrected, an operator's mistake) would hold an all-clear or
# a step's remaining sends for an hour. Work written to wait (retries, quiet hours, later steps)
# still waits by the wall clock.
_DUE = "(due_at <= ? OR (created_at > ? AND due_at <= created_at))"
_DUE_DELIVERY = "(due_at <= ? OR (updated_at > ? AND due_at <= updated_at))"


class Store:
    """All persistent state. Every write is one transaction; the pipeline is driven from here.

    Args:
        path: the SQLite file.
    """

    def __init__(self, path: Path) -> None:
        """Remember where the database lives; `open()` connects."""
        self.path = path
        self._db: aiosqlite.Connection | None = None
        # One connection, one writer: a transaction holds the lock so coroutines never interleave.
        self._lock = asyncio.Lock()
        # Why the last write failed for the disk's sake (StoreUnavailable), until one succeeds:
        # /readyz and the watchdog read it; the failure is logged once, not once per write.
        self.write_problem: str | None = None
        self._header_written = False

    @property
    def db(self) -> aiosqlite.Connection:
        """The open connection."""
        if self._db is None:
            raise StoreError("store is not open")
        return self._db

    async def open(self) -> Store:
        """Connect, set durability pragmas and apply migrations."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self.path, isolation_level=None)
        self._db.row_factory = aiosqlite.Row
        await self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a warning answered 202 survives power loss, not only a crash.
        await self._db.execute("PRAGMA synchronous=FULL")
        await self._db.execute("PRAGMA foreign_keys=ON")
        await self._db.execute("PRAGMA busy_timeout=5000")
        try:
            await self._migrate()
        except BaseException:
            # Close what we opened: a half-open store would keep its worker thread alive.
            await self.close()
            raise
        return self

    async def close(self) -> None:
        """Close the connection."""
        if self._db is not None:
            with contextlib.suppress(ValueError):  # never connected
                conn = id(self._db._conn)
                for key in [k for k in _COLUMNS if k[0] == conn]:
                    del _COLUMNS[key]
            await self._db.close()
            self._db = None

    async def __aenter__(self) -> Store:
        """Open on entry."""
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        """Close on exit."""
        await self.close()

    async def _migrate(self) -> None:
        """Apply the numbered migrations this database lacks; refuse a newer database."""
        async with self.transaction() as db:
            await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        rows = await self._all("SELECT version FROM schema_version")
        applied = {r["version"] for r in rows}
        known = _migrations()
        unknown = applied - {number for number, _ in known}
        if unknown:
            raise SchemaTooNew(
                f"{self.path} has schema version(s) {sorted(unknown)} this warnd does not know: "
                "it was written by a newer warnd"
            )
        for number, sql in known:
            # Every known migration not yet applied, in order (not only those above the highest,
            # so a migration merged from a parallel branch is not skipped).
            if number in applied:
                continue
            async with self.transaction() as tx:
                for statement in _split_sql(sql):
                    await tx.execute(statement)
                await tx.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))
            log.info("store.migrated", version=number)

    async def ping(self) -> None:
        """A cheap read that proves the database answers (readiness)."""
        await self._one("SELECT 1")

    async def ping_write(self) -> None:
        """Commit a write that reaches the disk: proves warnd can still store (watchdog, /readyz).

        `PRAGMA user_version` rewrites the database header with the value it already has (warnd
        keeps its schema in schema_version): a WAL frame and, with synchronous=FULL, an fsync.
        A full or read-only disk raises StoreUnavailable; a disk that hangs or a writer that
        never lets go blocks it, and raises after busy_timeout.
        """
        async with self.transaction() as db:
            (version,) = await (await db.execute("PRAGMA user_version")).fetchone()  # type: ignore[misc]
            await db.execute(f"PRAGMA user_version = {int(version)}")
            self._header_written = True  # a header write changes no rows: say so to _writing

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
        return await asyncio.to_thread(disk_problem, self.path.parent)

    # -- transactions -------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """BEGIN IMMEDIATE … COMMIT under the store's lock: the one way to write step by step.

        Whatever ends the block early — a failed statement, a COMMIT the disk refuses, a
        cancel — is rolled back before the lock is given back, then raised; a failure for lack
        of disk is raised as StoreUnavailable. Reads inside the block see its writes.
        """
        async with self._writing() as db:
            try:
                await db.execute("BEGIN IMMEDIATE")
                yield db
                await db.execute("COMMIT")
            except BaseException:
                await self._rollback(db)
                raise

    @contextlib.asynccontextmanager
    async def _writing(self) -> AsyncIterator[aiosqlite.Connection]:
        """Hold the connection for one write transaction; note whether the disk took it.

        The lock is taken and given back here only (`async with`): never twice, never early.
        """
        async with self._lock:
            token = _IN_TX.set(True)
            db = self.db
            changes = db.total_changes
            try:
                yield db
            except BaseException as exc:
                reason = unavailable_reason(exc)
                if reason is None:
                    raise
                self._write_failed(reason, exc)
                raise StoreUnavailable(reason) from exc
            else:
                # Only a transaction that wrote proves the disk takes writes (a claim that found
                # nothing due commits nothing, full disk or not).
                if db.total_changes != changes or self._header_written:
                    self._write_succeeded()
            finally:
                self._header_written = False
                _IN_TX.reset(token)

    async def _rollback(self, db: aiosqlite.Connection) -> None:
        """Roll back in the connection's thread, if SQLite has not already (a full disk has)."""
        try:
            # In the thread, after whatever is still queued there (a cancelled caller's
            # statement), so the check sees the transaction as it really ended.
            await db._execute(_rollback_if_open, db._conn)
        except sqlite3.Error as exc:
            # The original error is the one to raise; this one is for the operator.
            log.error("store.rollback_failed", error=f"{type(exc).__name__}: {exc}")

    def _write_failed(self, reason: str, exc: BaseException) -> None:
        """Remember why writes fail; log it once per outage, not once per write."""
        if self.write_problem is None:
            log.error("store.write_failed", reason=reason, error=f"{type(exc).__name__}: {exc}"[:300])
        self.write_problem = reason

    def _write_succeeded(self) -> None:
        """A write went through: whatever failed before is over."""
        if self.write_problem is not None:
            log.info("store.write_recovered", was=self.write_problem)
            self.write_problem = None

    async def _tx(
        self, statements: Iterable[tuple[str, Sequence[Any] | Iterable[Sequence[Any]], bool]]
    ) -> None:
        """Run (sql, params, many) statements in one write transaction."""
        async with self.transaction() as db:
            for sql, params, many in statements:
                if many:
                    await db.executemany(sql, params)  # type: ignore[arg-type]
                else:
                    await db.execute(sql, params)  # type: ignore[arg-type]

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """fn(connection) as one write transaction, run whole in the connection's thread.

        Under load the event loop is busy with thousands of acks; a transaction that needs the
        loop between statements holds the store for as many loop turns as it has statements.
        aiosqlite offers no public way to run a callable in its thread: `_execute` and `_conn`
        are its own, hence the upper bound on aiosqlite in pyproject.toml. The same connection
        keeps every read seeing every write.
        """
        async with self._writing() as db:
            fut = asyncio.ensure_future(db._execute(_transaction, db._conn, fn))
            cancelled = False
            # A transaction handed to the thread runs to its end (a cancelled claim stays
            # committed as `sending`, which recover() puts back at the next start); the lock is
            # held until it has, however often the caller is cancelled meanwhile.
            while True:
                try:
                    result = await asyncio.shield(fut)
                    break
                except asyncio.CancelledError:
                    if not fut.done():
                        cancelled = True
                        continue
                    raise
            if cancelled:
                raise asyncio.CancelledError
            return result

    async def _one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        """One row as a dict, or None (inside the caller's transaction, or on its own)."""
        if _IN_TX.get():
            row = await (await self.db.execute(sql, params)).fetchone()
        else:
            async with self._lock:
                row = await (await self.db.execute(sql, params)).fetchone()
        return dict(row) if row is not None else None

    async def _all(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """All rows as dicts (inside the caller's transaction, or on its own)."""
        if _IN_TX.get():
            rows = await self.db.execute_fetchall(sql, params)
        else:
            async with self._lock:
                rows = await self.db.execute_fetchall(sql, params)
        return [dict(r) for r in rows]

    # -- warnings -----------------------------------------------------------------------------

    async def accept(
        self,
        row: dict[str, Any],
        *,
        audit: dict[str, Any],
        jobs: Sequence[dict[str, Any]],
        idempotency_key: str | None = None,
        fingerprint: str | None = None,
    ) -> AcceptResult:
        """Store a new warning with its audit event and jobs in one transaction, or find its twin.

        The same Idempotency-Key, or the same (sender, identifier), answers with the existing id.
        A key already stored with another `fingerprint` raises IdempotencyConflict; a row stored
        before fingerprints were kept (NULL) answers with its id, as it always did.
        """
        async with self.transaction() as db:
            existing = None
            if idempotency_key:
                existing = await self._one(
                    "SELECT id, idempotency_fingerprint FROM warnings WHERE idempotency_key = ?",
                    (idempotency_key,),
                )
            if existing is None and row.get("sender") and row.get("identifier"):
                existing = await self._one(
                    "SELECT id FROM warnings WHERE sender = ? AND identifier = ?",
                    (row["sender"], row["identifier"]),
                )
            if existing is not None:
                stored = existing.get("idempotency_fingerprint")
                if stored is not None and fingerprint is not None and stored != fingerprint:
                    raise IdempotencyConflict(existing["id"])  # rolled back by the transaction
                return AcceptResult(existing["id"], created=False)
            cols = {
                **row,
                "idempotency_key": idempotency_key,
                "idempotency_fingerprint": fingerprint if idempotency_key else None,
            }
            await db.execute(
                f"INSERT INTO warnings ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",  # noqa: S608 - column names are ours
                list(cols.values()),
            )
            await self._insert_audit(audit)
            await self._insert_jobs(jobs)
        # Committed (synchronous=FULL): only now may the caller answer 202.
        return AcceptResult(row["id"], created=True)

    async def _insert_audit(self, audit: dict[str, Any]) -> None:
        """Append one audit event inside the caller's transaction."""
        await self.db.execute(
            "INSERT INTO audit (at, actor, action, warning_id, remote, detail) VALUES (?,?,?,?,?,?)",
            (
                audit["at"],
                audit["actor"],
                audit["action"],
                audit.get("warning_id"),
                audit.get("remote"),
                json.dumps(audit.get("detail", {}), ensure_ascii=False),
            ),
        )

    async def _insert_jobs(self, jobs: Sequence[dict[str, Any]]) -> None:
        """Insert jobs inside the caller's transaction; a known key is left as it is."""
        await self.db.executemany(INSERT_JOB_SQL, _job_params(jobs))

    async def get_warning(self, warning_id: str) -> dict[str, Any] | None:
        """One warning row with its JSON columns decoded."""
        row = await self._one("SELECT * FROM warnings WHERE id = ?", (warning_id,))
        return _decode_warning(row) if row else None

    async def find_warning(self, sender: str, identifier: str) -> dict[str, Any] | None:
        """The warning an upstream (sender, identifier) names."""
        row = await self._one(
            "SELECT * FROM warnings WHERE sender = ? AND identifier = ?", (sender, identifier)
        )
        return _decode_warning(row) if row else None

    async def list_warnings(self, states: Sequence[str] = (), limit: int = 100) -> list[dict[str, Any]]:
        """Newest warnings first, optionally only in these states."""
        if states:
            marks = ",".join("?" * len(states))
            rows = await self._all(
                f"SELECT * FROM warnings WHERE state IN ({marks}) ORDER BY created_at DESC LIMIT ?",  # noqa: S608
                (*states, limit),
            )
        else:
            rows = await self._all("SELECT * FROM warnings ORDER BY created_at DESC LIMIT ?", (limit,))
        return [_decode_warning(r) for r in rows]

    async def change_warning(
        self,
        warning_id: str,
        changes: dict[str, Any],
        *,
        audit: dict[str, Any],
        jobs: Sequence[dict[str, Any]] = (),
        cancel_jobs: bool = False,
        cancel_deliveries: bool = False,
        keep_job_kinds: Sequence[str] = (),
        now: datetime,
    ) -> None:
        """Update a warning's columns, cancel its pending work if asked, add jobs; one transaction.

        `keep_job_kinds` spares pending jobs of those kinds from `cancel_jobs` (escalations that
        must outlive an update).
        """
        sets = ", ".join(f"{k} = ?" for k in changes)
        stamp = ts(now)
        stmts: list[tuple[str, Any, bool]] = [
            (
                f"UPDATE warnings SET {sets}, updated_at = ? WHERE id = ?",  # noqa: S608 - our column names
                [*changes.values(), stamp, warning_id],
                False,
            ),
        ]
        if cancel_jobs:
            kept = ",".join("?" * len(keep_job_kinds))
            spare = f" AND kind NOT IN ({kept})" if keep_job_kinds else ""
            stmts.append(
                (
                    f"UPDATE jobs SET state = 'cancelled' WHERE warning_id = ? AND state = 'pending'{spare}",  # noqa: S608 - placeholders only
                    (warning_id, *keep_job_kinds),
                    False,
                )
            )
        if cancel_deliveries:
            stmts.append(
                (
                    "UPDATE deliveries SET state = 'cancelled', updated_at = ?"
                    " WHERE warning_id = ? AND state IN ('pending', 'failed')",
                    (stamp, warning_id),
                    False,
                )
            )
        async with self.transaction() as db:
            for sql, params, _ in stmts:
                await db.execute(sql, params)
            await self._insert_audit(audit)
            await self._insert_jobs(jobs)

    async def audit_log(self, warning_id: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        """Audit events, oldest first, optionally for one warning."""
        if warning_id:
            rows = await self._all(
                "SELECT * FROM audit WHERE warning_id = ? ORDER BY id LIMIT ?", (warning_id, limit)
            )
        else:
            rows = await self._all("SELECT * FROM audit ORDER BY id DESC LIMIT ?", (limit,))
        for r in rows:
            r["detail"] = json.loads(r["detail"])
        return rows

    async def version_events(self, warning_id: str) -> list[dict[str, Any]]:
        """A warning's update and cancel audit events, oldest first: the messages it went through."""
        rows = await self._all(
            "SELECT at, action, detail FROM audit WHERE warning_id = ? AND action IN ('update', 'cancel')"
            " ORDER BY id",
            (warning_id,),
        )
        for r in rows:
            r["detail"] = json.loads(r["detail"])
        return rows

    # -- jobs ---------------------------------------------------------------------------------

    async def due_jobs(self, now: datetime, limit: int = 100) -> list[Job]:
        """Pending jobs whose time has come, oldest first."""
        rows = await self._all(
            f"SELECT * FROM jobs WHERE state = 'pending' AND {_DUE} ORDER BY due_at, id LIMIT ?",  # noqa: S608
            (ts(now), ts(now), limit),
        )
        return [_job(r) for r in rows]

    async def jobs_for(self, warning_id: str) -> list[dict[str, Any]]:
        """Every job of a warning, in due order."""
        rows = await self._all("SELECT * FROM jobs WHERE warning_id = ? ORDER BY due_at, id", (warning_id,))
        for r in rows:
            r["payload"] = json.loads(r["payload"])
        return rows

    async def fire_job(
        self,
        job: Job,
        deliveries: Sequence[NewDelivery],
        *,
        jobs: Sequence[dict[str, Any]] = (),
        now: datetime,
        set_state: str | None = None,
        audit: dict[str, Any] | None = None,
        republish: Sequence[int] = (),
        republish_reason: str | None = None,
    ) -> bool:
        """Mark a job done and write what it produced, in one transaction: each job fires once.

        `set_state` also moves the job's warning to that state and cancels its open
        deliveries and pending jobs (expiry). `republish` are deliveries sent but not confirmed:
        they become due again (`pending`, keeping `sent_at`), with `republish_reason` as their
        last error, unless a confirmation came meanwhile. Returns False when the job was no
        longer pending.
        """
        stamp = ts(now)
        async with self.transaction() as db:
            cur = await db.execute(
                "UPDATE jobs SET state = 'done', fired_at = ? WHERE id = ? AND state = 'pending'",
                (stamp, job.id),
            )
            if cur.rowcount != 1:
                return False  # nothing was changed: committing it is rolling it back
            if set_state is not None:
                await db.execute(
                    "UPDATE warnings SET state = ?, updated_at = ? WHERE id = ?",
                    (set_state, stamp, job.warning_id),
                )
                await db.execute(
                    "UPDATE deliveries SET state = 'cancelled', updated_at = ?"
                    " WHERE warning_id = ? AND state IN ('pending', 'failed')",
                    (stamp, job.warning_id),
                )
                await db.execute(
                    "UPDATE jobs SET state = 'cancelled' WHERE warning_id = ? AND state = 'pending'",
                    (job.warning_id,),
                )
            if audit is not None:
                await self._insert_audit(audit)
            if republish:
                await db.execute(
                    "UPDATE deliveries SET state = 'pending', last_error = ?, updated_at = ?"
                    " WHERE id IN (SELECT value FROM json_each(?)) AND state IN ('sent', 'delivered')",
                    (republish_reason, stamp, json.dumps(list(republish))),
                )
            await self._insert_deliveries(deliveries, now)
            await self._insert_jobs(jobs)
        return True

    async def _insert_deliveries(self, deliveries: Sequence[NewDelivery], now: datetime) -> None:
        """Insert delivery rows in the caller's transaction; a known (msg_id, target) is kept."""
        stamp = ts(now)
        due = {t: ts(t) for t in {d.due_at for d in deliveries}}  # a step has one or two
        rows = [
            [
                d.msg_id,
                d.warning_id,
                d.step,
                d.kind,
                d.channel,
                d.target,
                d.village,
                d.person_id,
                d.address,
                int(d.ack_required),
                due[d.due_at],
                json.dumps(d.context, ensure_ascii=False) if d.context else None,
            ]
            for d in deliveries
        ]
        # One statement over a JSON array: a county-wide step is 10,000 rows, not 10,000 steps.
        await self.db.execute(
            "INSERT OR IGNORE INTO deliveries (msg_id, warning_id, step, kind, channel, target,"
            " village, person_id, address, ack_required, due_at, context, created_at, updated_at)"
            " SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5,"
            " value ->> 6, value ->> 7, value ->> 8, value ->> 9, value ->> 10, value ->> 11, ?, ?"
            " FROM json_each(?)",
            (stamp, stamp, json.dumps(rows)),
        )

    # -- deliveries ---------------------------------------------------------------------------

    async def recover(self) -> int:
        """Put deliveries a crash left `sending` back to `pending`, their send in doubt; returns how many.

        The send may have reached the provider before the crash: `maybe_sent_at` keeps the
        earliest claim it could date from, so the adapter looks it up before sending it again.
        """
        async with self.transaction() as db:
            # A warning cancelled or expired while its sends were in flight is not sent after the
            # crash (its all-clear and stop commands, kind cancel/expire, still are).
            await db.execute(
                "UPDATE deliveries SET state = 'cancelled' WHERE state = 'sending'"
                " AND kind IN ('warning', 'update') AND warning_id IN"
                " (SELECT id FROM warnings WHERE state IN ('cancelled', 'expired'))"
            )
            # updated_at: a row claimed before schema 10 has no claimed_at; its claim set updated_at.
            cur = await db.execute(
                "UPDATE deliveries SET state = 'pending',"
                " maybe_sent_at = COALESCE(maybe_sent_at, claimed_at, updated_at) WHERE state = 'sending'"
            )
        return cur.rowcount

    async def claim(self, now: datetime, limit: int, channels: Iterable[str]) -> list[Delivery]:
        """Claim due deliveries of these channels: mark them `sending` and return them.

        Each claim is an attempt, except a re-publish: a delivery already sent (`sent_at`) that is
        pending again because its device did not confirm (Store.fire_job `republish`).
        One transaction in one trip to the database thread, four statements whatever the batch.
        """
        chans = list(channels)
        if not chans:
            return []
        marks = ",".join("?" * len(chans))
        stamp = ts(now)
        due = (
            "SELECT json_group_array(id), json_group_array(IIF(republish, id, NULL)) FROM"  # noqa: S608
            " (SELECT id, state = 'pending' AND sent_at IS NOT NULL AS republish FROM deliveries"
            f" WHERE state IN ('pending', 'failed') AND {_DUE_DELIVERY} AND channel IN ({marks})"
            " ORDER BY due_at, id LIMIT ?)"
        )

        def work(con: sqlite3.Connection) -> tuple[list[dict[str, Any]], set[int]]:
            ids, again = con.execute(due, (stamp, stamp, *chans, limit)).fetchone()
            if ids == "[]":
                return [], set()
            con.execute(
                "UPDATE deliveries SET state = 'sending',"
                " attempts = attempts + IIF(state = 'pending' AND sent_at IS NOT NULL, 0, 1),"
                " updated_at = ?, claimed_at = ? WHERE id IN (SELECT value FROM json_each(?))",
                (stamp, stamp, ids),
            )
            rows = _rows(
                con,
                "deliveries",
                "SELECT * FROM deliveries WHERE id IN (SELECT value FROM json_each(?))",
                (ids,),
            )
            return rows, {i for i in json.loads(again) if i is not None}

        rows, republished = await self._run(work)
        rows.sort(key=lambda r: (r["due_at"], r["id"]))  # oldest due first, as claimed
        return [
            Delivery(
                id=r["id"],
                msg_id=r["msg_id"],
                warning_id=r["warning_id"],
                step=r["step"],
                kind=r["kind"],
                channel=r["channel"],
                target=r["target"],
                village=r["village"],
                person_id=r["person_id"],
                address=r["address"],
                ack_required=bool(r["ack_required"]),
                attempts=r["attempts"],
                last_error=r["last_error"],
                context=json.loads(r["context"]) if r.get("context") else {},
                maybe_sent_at=from_ts(r["maybe_sent_at"]),
                created_at=from_ts(r["created_at"]),
                sent_at=from_ts(r["sent_at"]),
                republish=r["id"] in republished,
            )
            for r in rows
        ]

    async def record(
        self,
        outcomes: Sequence[tuple[Outcome, datetime | None]],
        now: datetime,
        *,
        jobs: Sequence[dict[str, Any]] = (),
    ) -> None:
        """Write outcomes, each with its next due time when it is to be retried, and `jobs`, at once.

        A re-publish `sent` again stays `delivered` if its device had said `received` before.
        An outcome with `refund` gives back the attempt its claim counted.
        """
        stamp = ts(now)
        # Outcomes alike (a batch of village commands all `sent`) are one statement over their
        # ids: every statement step hands the GIL back and forth with a busy event loop.
        groups: dict[tuple[Any, ...], list[int]] = {}
        for o, retry_at in outcomes:
            sent = stamp if o.state in ("sent", "delivered", "acknowledged") else None
            # A send that is known to have happened ends any doubt about an earlier one; a send
            # that may have happened is in doubt from this claim on (or an earlier doubt's time).
            doubt = 1 if o.maybe_sent and sent is None else 0
            key = (
                int(o.republish),
                o.state,
                o.state,
                o.error,
                o.provider_ref,
                sent,
                ts(retry_at) if retry_at else None,
                stamp,
                sent,
                doubt,
                int(o.refund),
            )
            groups.setdefault(key, []).append(o.delivery_id)
        params = _job_params(jobs)

        def work(con: sqlite3.Connection) -> None:
            _update_by_ids(
                con,
                "state = IIF(? AND ? = 'sent' AND delivered_at IS NOT NULL, 'delivered', ?), last_error = ?,"
                " provider_ref = COALESCE(?, provider_ref),"
                " sent_at = COALESCE(sent_at, ?), due_at = COALESCE(?, due_at), updated_at = ?,"
                " maybe_sent_at = CASE WHEN ? IS NOT NULL THEN NULL"
                " WHEN ? THEN COALESCE(maybe_sent_at, claimed_at, updated_at) ELSE maybe_sent_at END,"
                " attempts = attempts - ?",
                groups,
                # `+state`: look rows up by id, not by the (state, due_at) index.
                also="+state = 'sending'",
            )
            if params:
                con.executemany(INSERT_JOB_SQL, params)

        await self._run(work)

    async def next_job_due(self) -> datetime | None:
        """When the earliest pending job becomes due (the scheduler sleeps until then)."""
        row = await self._one("SELECT MIN(due_at) AS t FROM jobs WHERE state = 'pending'")
        return from_ts(row["t"]) if row and row["t"] else None

    async def next_delivery_due(self, channel: str) -> datetime | None:
        """When a channel's earliest pending or failed delivery becomes due (its worker sleeps till then)."""
        row = await self._one(
            "SELECT MIN(due_at) AS t FROM deliveries WHERE state IN ('pending', 'failed') AND channel = ?",
            (channel,),
        )
        return from_ts(row["t"]) if row and row["t"] else None

    async def provider_refs_taken(self, refs: Sequence[str]) -> set[str]:
        """Which of these provider ids (Twilio SIDs) a delivery already holds.

        A lookup of a send in doubt must not take a message that is another delivery's.
        """
        if not refs:
            return set()
        rows = await self._all(
            "SELECT provider_ref FROM deliveries WHERE provider_ref IN (SELECT value FROM json_each(?))",
            (json.dumps(list(refs)),),
        )
        return {r["provider_ref"] for r in rows}

    async def get_delivery(self, delivery_id: int) -> dict[str, Any] | None:
        """One delivery row by id (an ack link names its delivery)."""
        return await self._one("SELECT * FROM deliveries WHERE id = ?", (delivery_id,))

    async def deliveries_by_ids(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        """Delivery rows by id, in id order (a confirmation round reads the ones it watches)."""
        return await self._all(
            "SELECT * FROM deliveries WHERE id IN (SELECT value FROM json_each(?)) ORDER BY id",
            (json.dumps(list(ids)),),
        )

    async def in_force_for(self, channel: str, target: str) -> list[dict[str, Any]]:
        """Warnings in force that this receiver was sent (or is being sent): what an LED board may show."""
        rows = await self._all(
            "SELECT w.* FROM warnings w WHERE w.state IN ('active', 'updated') AND EXISTS ("
            " SELECT 1 FROM deliveries d WHERE d.warning_id = w.id AND d.channel = ? AND d.target = ?"
            " AND d.kind = 'warning' AND (d.state IN ('sending', 'sent', 'delivered', 'acknowledged')"
            # Sent, not confirmed, about to be published again: still what the board shows.
            " OR (d.state = 'pending' AND d.sent_at IS NOT NULL)))",
            (channel, target),
        )
        return [_decode_warning(r) for r in rows]

    async def deliveries_for(self, warning_id: str, limit: int = 10_000) -> list[dict[str, Any]]:
        """A warning's deliveries, in creation order."""
        return await self._all(
            "SELECT * FROM deliveries WHERE warning_id = ? ORDER BY id LIMIT ?", (warning_id, limit)
        )

    async def person_deliveries(self, warning_id: str, person_ids: Sequence[str]) -> list[dict[str, Any]]:
        """A warning's deliveries to these people, in creation order (escalation reads them)."""
        if not person_ids:
            return []
        marks = ",".join("?" * len(person_ids))
        return await self._all(
            f"SELECT * FROM deliveries WHERE warning_id = ? AND person_id IN ({marks}) ORDER BY id",  # noqa: S608
            (warning_id, *person_ids),
        )

    async def count_sending(self, warning_id: str) -> int:
        """How many of a warning's deliveries are in an adapter's hands right now."""
        row = await self._one(
            "SELECT COUNT(*) AS n FROM deliveries WHERE warning_id = ? AND state = 'sending'", (warning_id,)
        )
        return row["n"] if row else 0

    async def last_due(self, warning_id: str, channel: str, kind: str = "warning") -> datetime | None:
        """The latest due time of a warning's deliveries on a channel (when speakers last played)."""
        row = await self._one(
            "SELECT MAX(due_at) AS t FROM deliveries WHERE warning_id = ? AND channel = ? AND kind = ?",
            (warning_id, channel, kind),
        )
        return from_ts(row["t"]) if row else None

    async def reached(self, warning_id: str) -> list[dict[str, Any]]:
        """The distinct (channel, target) a warning was actually sent to, for the all-clear.

        Sent once is enough, even if the receiver later reported a failure: a speaker that
        could not play still gets its stop, a phone that was sent the warning gets the all-clear.
        """
        return await self._all(
            "SELECT channel, target, MAX(village) AS village, MAX(person_id) AS person_id,"
            " MAX(address) AS address FROM deliveries WHERE warning_id = ? AND kind = 'warning'"
            " AND sent_at IS NOT NULL GROUP BY channel, target",
            (warning_id,),
        )

    async def coverage(self, warning_id: str) -> dict[str, dict[str, int]]:
        """Per channel: expected / sent / delivered / acknowledged / failed, counting receivers once.

        A receiver counts at the furthest state any of its deliveries for this warning reached.
        """
        rows = await self._all(
            "SELECT channel, target, GROUP_CONCAT(state) AS states FROM deliveries"
            " WHERE warning_id = ? AND kind = 'warning' GROUP BY channel, target",
            (warning_id,),
        )
        out: dict[str, dict[str, int]] = {}
        for r in rows:
            c = out.setdefault(
                r["channel"],
                {"expected": 0, "sent": 0, "delivered": 0, "acknowledged": 0, "failed": 0},
            )
            states = set(r["states"].split(","))
            c["expected"] += 1
            if "acknowledged" in states:
                c["acknowledged"] += 1
            if states & {"delivered", "acknowledged"}:
                c["delivered"] += 1
            if states & {"sent", "delivered", "acknowledged"}:
                c["sent"] += 1
            elif states & {"dead", "failed"}:
                c["failed"] += 1
        return out

    async def apply_ack(self, ack: AckIn, *, now: datetime) -> dict[str, Any] | None:
        """Record one acknowledgement and move its delivery forward (never back); one transaction.

        The delivery is found by (msg_id, target) or by provider_ref. Returns it, or None
        when nothing matches (the ack is then not stored: it belongs to nobody).
        """
        return (await self.apply_acks([ack], now=now))[0]

    async def apply_acks(self, acks: Sequence[AckIn], *, now: datetime) -> list[dict[str, Any] | None]:
        """Record many acknowledgements in one transaction, in order, with a few set-wise statements.

        10,000 speakers ack three times each within seconds: one SELECT, one INSERT and one UPDATE
        per batch, instead of three statements per ack, keep the store free for the dispatcher.
        Each returned row is the delivery as it stood after that ack.
        """
        stamp = ts(now)
        return await self._run(lambda con: self._apply_acks(con, acks, stamp))

    def _apply_acks(
        self, con: sqlite3.Connection, acks: Sequence[AckIn], stamp: str
    ) -> list[dict[str, Any] | None]:
        """apply_acks in the store's thread, inside its transaction."""
        found = _deliveries_for_acks(con, acks)
        out: list[dict[str, Any] | None] = []
        ack_rows: list[list[Any]] = []
        changed: dict[int, dict[str, Any]] = {}
        for ack in acks:
            key = ("ref", ack.provider_ref) if ack.provider_ref is not None else (ack.msg_id, ack.target)
            row = found.get(key)
            if row is None:
                out.append(None)
                continue
            ack_rows.append(
                # The detail as its own text, as reported (a device's NaN must not spoil the batch).
                [
                    row["id"],
                    row["msg_id"],
                    row["target"],
                    ack.source,
                    ack.status,
                    stamp,
                    _encode_json(ack.detail or {}),
                ]
            )
            confirmed_before = row["acked_at"] is not None
            if self._advance(row, ack, stamp):
                changed[row["id"]] = row
            # The first confirmation of a delivery is what time-to-acknowledge measures.
            first = not confirmed_before and row["acked_at"] is not None
            out.append({**row, "first_confirmation": first})
        # Whole batches per statement, passed as JSON: each statement step hands the GIL back
        # and forth with a busy event loop, so a row per step cost more than the SQL.
        if ack_rows:
            con.execute(
                "INSERT INTO acks (delivery_id, msg_id, target, source, status, at, detail)"
                " SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5,"
                " value ->> 6 FROM json_each(?)",
                (json.dumps(ack_rows),),
            )
        alike: dict[tuple[Any, ...], list[int]] = {}
        for r in changed.values():
            key = (r["state"], r["last_error"], r["due_at"], stamp, r["delivered_at"], r["acked_at"])
            alike.setdefault(key, []).append(r["id"])
        _update_by_ids(
            con,
            "state = ?, last_error = ?, due_at = ?, updated_at = ?, delivered_at = ?, acked_at = ?",
            alike,
        )
        return out

    @staticmethod
    def _advance(row: dict[str, Any], ack: AckIn, stamp: str) -> bool:
        """Move a delivery row (in memory) forward for one ack; True if it changed."""
        new_state = ack.new_state
        if new_state is None or not _advances(row["state"], new_state):
            return False
        if new_state == "failed" and ack.retry is not None:
            # Reported failed after the send (a speaker that could not play, an SMS
            # undelivered): retry with the dispatcher's backoff, or give up.
            retry_at = ack.retry(row["attempts"])
            if retry_at is None:
                new_state = "dead"
            else:
                row["due_at"] = ts(retry_at)
        row["state"] = new_state
        if ack.error is not None:
            row["last_error"] = ack.error
        if new_state == "delivered" and not row["delivered_at"]:
            row["delivered_at"] = stamp
        if new_state == "acknowledged" and not row["acked_at"]:
            row["acked_at"] = stamp
        return True

    async def counts(self) -> dict[str, int]:
        """Deliveries by state, for health and metrics."""
        rows = await self._all("SELECT state, COUNT(*) AS n FROM deliveries GROUP BY state")
        return {r["state"]: r["n"] for r in rows}

    # -- devices (schema 2) -------------------------------------------------------------------

    async def device_status(
        self, device_id: str, online: bool | None, status: dict[str, Any], now: datetime
    ) -> None:
        """Record a device's reported status (retained status message or last will)."""
        stamp = ts(now)
        await self._tx(
            [
                (
                    "INSERT INTO devices (id, online, status, status_at, last_seen) VALUES (?,?,?,?,?)"
                    " ON CONFLICT (id) DO UPDATE SET online = excluded.online, status = excluded.status,"
                    " status_at = excluded.status_at, last_seen = excluded.last_seen",
                    (
                        device_id,
                        None if online is None else int(online),
                        json.dumps(status, ensure_ascii=False),
                        stamp,
                        stamp,
                    ),
                    False,
                )
            ]
        )

    async def devices_seen(self, seen: dict[str, datetime]) -> None:
        """Move devices' last_seen forward (acks prove a device is alive)."""
        sql = (
            "INSERT INTO devices (id, last_seen) VALUES (?, ?) ON CONFLICT (id) DO UPDATE"
            " SET last_seen = MAX(COALESCE(last_seen, ''), excluded.last_seen)"
        )
        params = [(d, ts(at)) for d, at in seen.items()]
        await self._run(lambda con: con.executemany(sql, params))

    async def devices(self) -> list[dict[str, Any]]:
        """Every device warnd has heard from, with its last status decoded."""
        rows = await self._all("SELECT * FROM devices ORDER BY id")
        for r in rows:
            r["status"] = json.loads(r["status"])
        return rows

    async def offline_targets(self, warning_id: str) -> dict[str, int]:
        """Per channel: receivers of a warning whose device last reported itself offline."""
        rows = await self._all(
            "SELECT d.channel, COUNT(DISTINCT d.target) AS n FROM deliveries d"
            " JOIN devices v ON v.id = d.target"
            " WHERE d.warning_id = ? AND d.kind = 'warning' AND v.online = 0 GROUP BY d.channel",
            (warning_id,),
        )
        return {r["channel"]: r["n"] for r in rows}

    async def gauges(self) -> dict[str, list[dict[str, Any]]]:
        """Current counts for /metrics (warnd.metrics); tables added by later migrations if present."""
        out = {
            "warnings": await self._all(
                "SELECT level, state, COUNT(*) AS n FROM warnings GROUP BY level, state"
            ),
            "deliveries": await self._all(
                "SELECT channel, state, COUNT(*) AS n FROM deliveries GROUP BY channel, state"
            ),
            "jobs": await self._all(
                "SELECT kind, COUNT(*) AS n FROM jobs WHERE state = 'pending' GROUP BY kind"
            ),
            "oldest_due": await self._all(
                "SELECT channel, MIN(due_at) AS due_at FROM deliveries"
                " WHERE state IN ('pending', 'failed', 'sending') GROUP BY channel"
            ),
        }
        tables = {r["name"] for r in await self._all("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "feed_health" in tables:
            out["feeds"] = await self._all("SELECT feed, last_success, failures FROM feed_health")
        if "devices" in tables:
            out["devices"] = await self._all("SELECT id, online FROM devices")
        return out


    # providers (issue 16) ---------------------------------------------------------------------
    # For the provider layer under the sms and voice channels (adapters/providers/): kept together
    # so they move as one piece when the store becomes a package.

    async def set_delivery_providers(self, pairs: Sequence[tuple[int, str]]) -> None:
        """Record which provider took each delivery: (delivery id, provider name) pairs."""
        if pairs:
            rows = [(p, i) for i, p in pairs]
            await self._tx([("UPDATE deliveries SET provider = ? WHERE id = ?", rows, True)])

    async def provider_sends_since(
        self, provider: str, channel: str, addresses: Sequence[str], since: datetime
    ) -> dict[str, int]:
        """How many deliveries a provider has sent to each address since a time (local daily quotas)."""
        if not addresses:
            return {}
        rows = await self._all(
            "SELECT address, COUNT(*) AS n FROM deliveries"
            " WHERE provider = ? AND channel = ? AND sent_at >= ?"
            " AND address IN (SELECT value FROM json_each(?)) GROUP BY address",
            (provider, channel, ts(since), json.dumps(list(addresses))),
        )
        return {r["address"]: r["n"] for r in rows}

    async def in_flight_of(
        self, channel: str, provider: str, *, unrecorded: bool = False, limit: int = 2000
    ) -> list[dict[str, Any]]:
        """Sent deliveries a provider still owes a receipt for; `unrecorded`: also those with no provider."""
        return await self._all(
            "SELECT id, msg_id, target, address, provider_ref, ack_required, sent_at, state FROM deliveries"
            " WHERE channel = ? AND state = 'sent' AND provider_ref IS NOT NULL"
            " AND (provider = ? OR (? AND provider IS NULL)) ORDER BY id LIMIT ?",
            (channel, provider, int(unrecorded), limit),
        )

    async def delivery_by_provider_ref(self, provider_ref: str) -> dict[str, Any] | None:
        """The delivery a provider's id names (a call's report carries only the provider's id)."""
        return await self._one(
            "SELECT id, msg_id, target, address, provider, provider_ref, state, ack_required"
            " FROM deliveries WHERE provider_ref = ?",
            (provider_ref,),
        )

    async def delivery_by_msg_address(self, msg_id: str, address: str) -> dict[str, Any] | None:
        """The delivery of a message to an address (a provider reports our msg_id and the number)."""
        return await self._one(
            "SELECT id, msg_id, target, address, provider, provider_ref, state, ack_required"
            " FROM deliveries WHERE msg_id = ? AND address = ?",
            (msg_id, address),
        )


# How far along a delivery is; an ack never moves it backwards.
_PROGRESS = {"pending": 0, "failed": 0, "sending": 1, "sent": 2, "delivered": 3, "acknowledged": 4}


def _transaction(con: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """BEGIN IMMEDIATE, fn, COMMIT (ROLLBACK on any error, a failed COMMIT too), in aiosqlite's thread.

    Store.transaction's counterpart for a transaction run whole in the thread (Store._run).
    """
    con.execute("BEGIN IMMEDIATE")
    try:
        out = fn(con)
        con.execute("COMMIT")
    except BaseException:
        try:
            _rollback_if_open(con)
        except sqlite3.Error as exc:
            log.error("store.rollback_failed", error=f"{type(exc).__name__}: {exc}")
        raise
    return out


def _rollback_if_open(con: sqlite3.Connection) -> None:
    """ROLLBACK unless SQLite ended the transaction itself (it does on a full disk or an I/O error).

    A ROLLBACK with no transaction fails ("no transaction is active") and would hide the error
    that ended it; a transaction left open would make every later BEGIN fail.
    """
    if con.in_transaction:
        con.execute("ROLLBACK")


# Column names per table, read once from the schema (after migrations).
def _update_by_ids(
    con: sqlite3.Connection, assignments: str, groups: dict[tuple[Any, ...], list[int]], also: str = ""
) -> None:
    """UPDATE deliveries SET assignments (their values: a group's key) for each group of ids.

    One statement per group of rows that end alike, not one per row: every statement step
    hands the GIL back and forth with a busy event loop.
    """
    where = f" AND {also}" if also else ""
    con.executemany(
        f"UPDATE deliveries SET {assignments} WHERE id IN (SELECT value FROM json_each(?)){where}",  # noqa: S608
        [(*key, json.dumps(ids)) for key, ids in groups.items()],
    )


# Column names per (connection, table), read from the schema after migrations; dropped on close.
_COLUMNS: dict[tuple[int, str], list[str]] = {}


def _rows(con: sqlite3.Connection, table: str, select: str, params: Sequence[Any]) -> list[dict[str, Any]]:
    """The rows of `select` (a `SELECT * FROM table …`), fetched as one JSON array.

    One statement step for the whole result instead of one per row: each step hands the GIL
    back and forth with the event loop, which under load costs far more than the row.
    """
    columns = _COLUMNS.get((id(con), table))
    if columns is None:
        columns = _COLUMNS[(id(con), table)] = [r[1] for r in con.execute(f"PRAGMA table_info({table})")]
    fields = ",".join(f"'{c}', r.{c}" for c in columns)
    sql = f"SELECT json_group_array(json_object({fields})) FROM ({select}) AS r"  # noqa: S608 - schema names
    return json.loads(con.execute(sql, params).fetchone()[0])


def _deliveries_for_acks(
    con: sqlite3.Connection, acks: Sequence[AckIn]
) -> dict[tuple[Any, Any], dict[str, Any]]:
    """The deliveries a batch of acks names, keyed by (msg_id, target) or ("ref", provider_ref)."""
    found: dict[tuple[Any, Any], dict[str, Any]] = {}
    pairs = list({(a.msg_id, a.target) for a in acks if a.provider_ref is None})
    refs = list({a.provider_ref for a in acks if a.provider_ref is not None})
    if pairs:
        for r in _rows(con, "deliveries", ACK_LOOKUP_SQL, (json.dumps(pairs),)):
            found[(r["msg_id"], r["target"])] = r
    if refs:
        by_ref = "SELECT * FROM deliveries WHERE provider_ref IN (SELECT value FROM json_each(?))"
        for r in _rows(con, "deliveries", by_ref, (json.dumps(refs),)):
            found[("ref", r["provider_ref"])] = r
    return found


# The deliveries named by a JSON array of [msg_id, target] pairs, through their unique index: the
# pairs are the outer loop (CROSS JOIN keeps SQLite from reordering). `(msg_id, target) IN
# (VALUES …)` scanned the whole outbox for every batch of acks.
ACK_LOOKUP_SQL = (
    "SELECT d.* FROM json_each(?) AS v CROSS JOIN deliveries AS d"
    " ON d.msg_id = v.value ->> 0 AND d.target = v.value ->> 1"
)


def _advances(current: str, new: str) -> bool:
    """Whether moving from current to new is progress (cancelled and dead are final)."""
    if current in ("cancelled", "dead"):
        return False
    if new in ("failed", "dead"):
        # A speaker that received a command and then could not play it has failed; a confirmed
        # delivery stays confirmed.
        return current != "acknowledged"
    return _PROGRESS.get(new, 0) > _PROGRESS.get(current, 0)


def _split_sql(sql: str) -> list[str]:
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


INSERT_JOB_SQL = (
    "INSERT OR IGNORE INTO jobs (key, warning_id, kind, due_at, payload, created_at) VALUES (?,?,?,?,?,?)"
)


def _job_params(jobs: Sequence[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Jobs as INSERT_JOB_SQL's parameters."""
    return [
        (
            j["key"],
            j.get("warning_id"),
            j["kind"],
            j["due_at"],
            json.dumps(j.get("payload", {}), ensure_ascii=False),
            j["created_at"],
        )
        for j in jobs
    ]


def _job(row: dict[str, Any]) -> Job:
    """A jobs row as a Job."""
    return Job(
        id=row["id"],
        key=row["key"],
        warning_id=row["warning_id"],
        kind=row["kind"],
        due_at=from_ts(row["due_at"]),
        payload=json.loads(row["payload"]),  # type: ignore[arg-type]
    )


def _decode_warning(row: dict[str, Any]) -> dict[str, Any]:
    """Decode a warnings row's JSON columns."""
    row["area"] = json.loads(row["area"])
    row["villages"] = json.loads(row["villages"])
    return row

