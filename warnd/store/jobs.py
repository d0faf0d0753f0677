"""Jobs: work due at a time (steps, expiry, repeats, escalations, announcements, confirmations)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from warnd.store.core import Connection, Row, StoreCore, every, from_ts, one, ts
from warnd.store.rows import Job, NewJob

# What is due at `?` (now): its time has come — or it was due the moment it was written and the
# wall clock has since been stepped back (written "after" now). Without the second clause an
# hour's step back (a bad NTP server corrected, an operator's mistake) would hold an all-clear or
# a step's remaining sends for an hour. Work written to wait (retries, quiet hours, later steps)
# still waits by the wall clock.
DUE = "(due_at <= ? OR (created_at > ? AND due_at <= created_at))"

# Inserted with the dialect's insert_ignore: a key already written is left as it is.
INSERT_JOB = ("jobs", "(key, warning_id, kind, due_at, payload, created_at) VALUES (?,?,?,?,?,?)")


def _job_params(jobs: Sequence[NewJob | dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Jobs as INSERT_JOB's parameters."""
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


def insert_jobs(con: Connection, jobs: Sequence[NewJob | dict[str, Any]]) -> None:
    """Insert jobs inside the caller's transaction; a known key is left as it is."""
    if jobs:
        con.executemany(con.dialect.insert_ignore(*INSERT_JOB), _job_params(jobs))


def _job(row: Row) -> Job:
    """A jobs row as a Job."""
    due_at = from_ts(row["due_at"])
    assert due_at is not None  # NOT NULL in the schema
    return Job(
        id=row["id"],
        key=row["key"],
        warning_id=row["warning_id"],
        kind=row["kind"],
        due_at=due_at,
        payload=json.loads(row["payload"]),
    )


class Jobs(StoreCore):
    """The jobs table."""

    async def due_jobs(self, now: datetime, limit: int = 100) -> list[Job]:
        """Pending jobs whose time has come, oldest first."""
        sql = f"SELECT * FROM jobs WHERE state = 'pending' AND {DUE} ORDER BY due_at, id LIMIT ?"
        rows = await self.read(lambda con: every(con, sql, (ts(now), ts(now), limit)))
        return [_job(r) for r in rows]

    async def jobs_for(self, warning_id: str) -> list[dict[str, Any]]:
        """Every job of a warning, in due order."""
        rows = await self.read(
            lambda con: every(
                con, "SELECT * FROM jobs WHERE warning_id = ? ORDER BY due_at, id", (warning_id,)
            )
        )
        for r in rows:
            r["payload"] = json.loads(r["payload"])
        return rows

    async def next_job_due(self) -> datetime | None:
        """When the earliest pending job becomes due (the scheduler sleeps until then)."""
        row = await self.read(
            lambda con: one(con, "SELECT MIN(due_at) AS t FROM jobs WHERE state = 'pending'")
        )
        return from_ts(row["t"]) if row and row["t"] else None
