"""Retention: what ended long ago, read whole for its archive, then deleted (warnd.retention).

A warning's deliveries, acks and jobs that ran go; the warning row and its audit trail stay (the
audit log is append-only, schema 7). The delivery counters follow the deletes (schema 13's
triggers); the rows they leave at zero are removed with them. Jobs count: a county-wide red
plans a thousand escalation chains, and a soak of 100 warnings that kept them grew 15 % past
its tenth warning.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from warnd.store.core import Connection, Row, StoreCore, every, one, ts
from warnd.store.jobs import insert_jobs
from warnd.store.rows import NewJob

# Warning states after which nothing more is sent: the clock of retention starts at the last change.
ENDED = ("cancelled", "expired", "rejected")
# A warning's jobs that have run their course (a pending one of an ended warning is left alone).
RAN = "state <> 'pending'"


class RetentionRecords(StoreCore):
    """Reading and deleting a warning's deliveries and acks."""

    async def add_jobs(self, jobs: Sequence[NewJob]) -> None:
        """Insert jobs on their own, in one transaction; a known key is left as it is."""
        await self.write(lambda con: insert_jobs(con, jobs))

    async def ended_with_records(self, before: datetime, limit: int = 100) -> list[str]:
        """Warnings that ended before `before` and still have deliveries or jobs that ran, oldest first."""
        marks = ",".join("?" * len(ENDED))
        sql = (
            f"SELECT id FROM warnings w WHERE state IN ({marks}) AND updated_at < ?"
            " AND (EXISTS (SELECT 1 FROM deliveries d WHERE d.warning_id = w.id)"
            f" OR EXISTS (SELECT 1 FROM jobs j WHERE j.warning_id = w.id AND j.{RAN}))"
            " ORDER BY updated_at, id LIMIT ?"
        )
        rows = await self.read(lambda con: every(con, sql, (*ENDED, ts(before), limit)))
        return [r["id"] for r in rows]

    async def each_record(
        self, warning_id: str, emit: Callable[[str, Row], None]
    ) -> tuple[int, int, int]:
        """emit(kind, row) for a warning's row, deliveries, acks and jobs that ran, as stored, in id order.

        One snapshot, streamed from the cursor in a reader thread (emit runs there): a county's
        50,000 deliveries are never all in memory. Returns how many deliveries, acks and jobs it saw.
        """

        def work(con: Connection) -> tuple[int, int, int]:
            """Everything in one read transaction: the archive matches what is then deleted."""
            warning = one(con, "SELECT * FROM warnings WHERE id = ?", (warning_id,))
            if warning is None:
                return 0, 0, 0
            emit("warning", warning)
            counts = []
            for kind, sql in (
                ("delivery", "SELECT * FROM deliveries WHERE warning_id = ? ORDER BY id"),
                (
                    "ack",
                    "SELECT * FROM acks WHERE delivery_id IN"
                    " (SELECT id FROM deliveries WHERE warning_id = ?) ORDER BY id",
                ),
                ("job", f"SELECT * FROM jobs WHERE warning_id = ? AND {RAN} ORDER BY id"),
            ):
                n = 0
                for row in con.dialect.stream(con, sql, (warning_id,)):
                    emit(kind, dict(row))
                    n += 1
                counts.append(n)
            return counts[0], counts[1], counts[2]

        return await self.read(work)

    async def delete_records(self, warning_id: str, *, deliveries: int, acks: int, jobs: int) -> bool:
        """Delete a warning's acks, deliveries and jobs that ran in one transaction, if they are
        what was archived.

        `deliveries`, `acks` and `jobs` are the counts the archive holds: a row written since (a
        late ack) rolls the delete back, and False says so; the next run archives it too.
        """

        def work(con: Connection) -> bool:
            """Count, delete, drop the counters left at zero."""
            have = one(
                con,
                "SELECT (SELECT COUNT(*) FROM deliveries WHERE warning_id = ?) AS deliveries,"
                " (SELECT COUNT(*) FROM acks WHERE delivery_id IN"
                " (SELECT id FROM deliveries WHERE warning_id = ?)) AS acks,"
                f" (SELECT COUNT(*) FROM jobs WHERE warning_id = ? AND {RAN}) AS jobs",
                (warning_id, warning_id, warning_id),
            )
            if have != {"deliveries": deliveries, "acks": acks, "jobs": jobs}:
                return False
            con.execute(
                "DELETE FROM acks WHERE delivery_id IN (SELECT id FROM deliveries WHERE warning_id = ?)",
                (warning_id,),
            )
            con.execute("DELETE FROM deliveries WHERE warning_id = ?", (warning_id,))
            con.execute(f"DELETE FROM jobs WHERE warning_id = ? AND {RAN}", (warning_id,))
            for table in ("delivery_counts", "coverage_receivers", "coverage_counts"):
                con.execute(f"DELETE FROM {table} WHERE warning_id = ? AND n = 0", (warning_id,))
            return True

        return await self.write(work, bulk=True)
