"""Firing a job: the one write that spans jobs, warnings, audit and deliveries."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from warnd.store.core import Connection, StoreCore, ts
from warnd.store.deliveries import insert_deliveries
from warnd.store.jobs import insert_jobs
from warnd.store.rows import AuditIn, Job, NewDelivery, NewJob
from warnd.store.warnings import CANCEL_OPEN_DELIVERIES, insert_audit


class Schedule(StoreCore):
    """What a due job writes when it fires."""

    async def fire_job_part(self, job: Job, deliveries: Sequence[NewDelivery], *, now: datetime) -> bool:
        """Write part of a job's deliveries ahead of its `fire_job`; False if the job is no longer pending.

        The job stays pending until `fire_job` writes the rest and marks it done. A crash in
        between fires it again after the restart: its deliveries, unique by (msg_id, target),
        are inserted once whatever part was already written, so none is lost or doubled. A job
        cancelled meanwhile (the warning was) gets nothing more.
        """

        def work(con: Connection) -> bool:
            """Only while the job is pending."""
            pending = con.execute("SELECT 1 FROM jobs WHERE id = ? AND state = 'pending'", (job.id,))
            if pending.fetchone() is None:
                return False
            insert_deliveries(con, deliveries, now)
            return True

        return await self.write(work, bulk=True)

    async def fire_job(
        self,
        job: Job,
        deliveries: Sequence[NewDelivery],
        *,
        jobs: Sequence[NewJob | dict[str, Any]] = (),
        now: datetime,
        set_state: str | None = None,
        audit: AuditIn | dict[str, Any] | None = None,
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

        def work(con: Connection) -> bool:
            """Done once, then everything it produced."""
            cur = con.execute(
                "UPDATE jobs SET state = 'done', fired_at = ? WHERE id = ? AND state = 'pending'",
                (stamp, job.id),
            )
            if cur.rowcount != 1:
                return False  # nothing was changed: committing it is rolling it back
            if set_state is not None:
                con.execute(
                    "UPDATE warnings SET state = ?, updated_at = ? WHERE id = ?",
                    (set_state, stamp, job.warning_id),
                )
                con.execute(CANCEL_OPEN_DELIVERIES, (stamp, job.warning_id))
                con.execute(
                    "UPDATE jobs SET state = 'cancelled' WHERE warning_id = ? AND state = 'pending'",
                    (job.warning_id,),
                )
            if audit is not None:
                insert_audit(con, audit)
            if republish:
                con.execute(
                    "UPDATE deliveries SET state = 'pending', last_error = ?, updated_at = ?"
                    f" WHERE id IN {con.dialect.in_list('id')} AND state IN ('sent', 'delivered')",
                    (republish_reason, stamp, con.dialect.json_list(republish)),
                )
            insert_deliveries(con, deliveries, now)
            insert_jobs(con, jobs)
            return True

        return await self.write(work, bulk=True)
