"""The store: all persistent state behind one interface, and the only place SQL lives.

- core.py: the writer connection in its own thread, reader connections beside it, `write(fn)`
  / `read(fn)` (the transaction primitives), migrations, health.
- sqlite.py, postgres.py: the dialects, every database-only trick (a connection's `dialect`);
  postgres_schema.sql: the migrations' sum for PostgreSQL.
- rows.py: typed rows, DeliveryState (the one progress order) and JobKind.
- one module per table group: warnings (+audit), jobs, schedule (firing a job), deliveries
  (+acks), devices, feeds, hydro, inbound, retention (archive and delete what ended long ago).

`Store` composes the table groups; callers use its methods and never its connection. What the
database itself refused (a constraint, a bug in a statement) is raised as the driver's error
(`is_database_error` tells); what the disk or the database server refused, as StoreUnavailable.
"""

from __future__ import annotations

from typing import Any

from warnd.store.approval import Approval
from warnd.store.core import (
    TS_FORMAT,
    Connection,
    StoreCore,
    every,
    from_ts,
    migrations,
    new_warning_id,
    one,
    ts,
)
from warnd.store.deliveries import ACK_LOOKUP_SQL, COVERAGE_SQL, Deliveries
from warnd.store.devices import Devices
from warnd.store.errors import DatabaseInUse, IdempotencyConflict, SchemaTooNew, StoreError, StoreUnavailable
from warnd.store.feeds import Feeds
from warnd.store.hydro import Hydro
from warnd.store.inbound import Inbound
from warnd.store.jobs import Jobs
from warnd.store.retention import RetentionRecords
from warnd.store.rows import (
    COVERAGE_COUNTS,
    REACHED,
    AcceptResult,
    AckedDelivery,
    AckIn,
    AuditIn,
    AuditRow,
    Delivery,
    DeliveryRow,
    DeliveryState,
    Job,
    JobKind,
    NewDelivery,
    NewJob,
    Outcome,
    WarningRow,
    count_receiver,
    new_job,
)
from warnd.store.schedule import Schedule
from warnd.store.sqlite import DatabaseError
from warnd.store.warnings import Warnings

# Deliveries not yet handed over: the outbox whose oldest due row /metrics reports.
_OUTBOX = ("pending", "failed", "sending")
# The gauges' statements that touch deliveries; none reads more rows as the outbox grows.
DELIVERY_GAUGE_SQL = (
    "SELECT channel, state, CAST(SUM(n) AS INTEGER) AS n FROM delivery_counts"
    " GROUP BY channel, state HAVING SUM(n) > 0"
)
# Per (state, channel), the first row in due order: an index walk that stops at once, where
# MIN(due_at) … GROUP BY channel read every row of the outbox.
OLDEST_DUE_SQL = "SELECT due_at FROM deliveries WHERE state = ? AND channel = ? ORDER BY due_at LIMIT 1"

__all__ = [
    "ACK_LOOKUP_SQL",
    "COVERAGE_COUNTS",
    "COVERAGE_SQL",
    "DELIVERY_GAUGE_SQL",
    "OLDEST_DUE_SQL",
    "REACHED",
    "TS_FORMAT",
    "AcceptResult",
    "AckIn",
    "AckedDelivery",
    "AuditIn",
    "AuditRow",
    "DatabaseError",
    "DatabaseInUse",
    "Delivery",
    "DeliveryRow",
    "DeliveryState",
    "IdempotencyConflict",
    "Job",
    "JobKind",
    "NewDelivery",
    "NewJob",
    "Outcome",
    "SchemaTooNew",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "WarningRow",
    "count_receiver",
    "from_ts",
    "is_database_error",
    "migrations",
    "new_job",
    "new_warning_id",
    "ts",
]


# psycopg's errors for the server or the connection failing, as opposed to one statement's data
# (DataError: a NUL in a text, an invalid JSON escape; IntegrityError; ProgrammingError).
_PG_TROUBLE = ("OperationalError", "InterfaceError", "InternalError")


def is_database_error(exc: BaseException) -> bool:
    """Whether an error is the database's trouble rather than one message's data.

    Any SQLite error (warnd passes SQLite nothing it refuses for its content); PostgreSQL's
    connection and server failures, not the DataError a device's bad text raises there.
    """
    if isinstance(exc, DatabaseError):
        return True
    return any(c.__module__.startswith("psycopg") and c.__name__ in _PG_TROUBLE for c in type(exc).__mro__)


class Store(
    Warnings,
    Jobs,
    Schedule,
    Deliveries,
    Devices,
    Feeds,
    Hydro,
    Inbound,
    Approval,
    RetentionRecords,
    StoreCore,
):
    """All persistent state. Every write is one transaction; the pipeline is driven from here.

    Args:
        path: the SQLite file.
        url: instead, a PostgreSQL database (`postgresql://user@host:port/name`).
    """

    async def open(self) -> Store:
        """Connect, set durability pragmas and apply migrations."""
        await super().open()
        return self

    async def __aenter__(self) -> Store:
        """Open on entry."""
        return await self.open()

    async def gauges(self) -> dict[str, list[dict[str, Any]]]:
        """Current counts for /metrics (warnd.metrics); tables added by later migrations if present.

        One read transaction on a reader connection (never behind the writer), and no statement
        grows with the outbox: deliveries are counted by the counters kept beside them
        (delivery_counts), the oldest due one found through the (state, due_at) index.
        """

        def work(con: Connection) -> dict[str, list[dict[str, Any]]]:
            """Every count in one snapshot."""
            deliveries = every(con, DELIVERY_GAUGE_SQL)
            oldest_due = []
            for channel in sorted({r["channel"] for r in deliveries if r["state"] in _OUTBOX}):
                dues = [r["due_at"] for state in _OUTBOX if (r := one(con, OLDEST_DUE_SQL, (state, channel)))]
                if dues:
                    oldest_due.append({"channel": channel, "due_at": min(dues)})
            out = {
                "warnings": every(
                    con, "SELECT level, state, COUNT(*) AS n FROM warnings GROUP BY level, state"
                ),
                "deliveries": deliveries,
                "jobs": every(
                    con, "SELECT kind, COUNT(*) AS n FROM jobs WHERE state = 'pending' GROUP BY kind"
                ),
                "oldest_due": oldest_due,
            }
            tables = con.dialect.tables(con)
            if "feed_health" in tables:
                out["feeds"] = every(con, "SELECT feed, last_success, failures FROM feed_health")
            if "devices" in tables:
                out["devices"] = every(con, "SELECT id, online FROM devices")
            return out

        return await self.read(work)
