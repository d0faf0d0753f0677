"""Warnings and their audit trail: accept, change, read."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from warnd.store.core import Connection, Row, StoreCore, every, one, ts
from warnd.store.errors import IdempotencyConflict
from warnd.store.jobs import insert_jobs
from warnd.store.rows import AcceptResult, AuditIn, AuditRow, NewJob, WarningRow

# A warning's open deliveries and pending jobs are cancelled with it (cancel, expiry).
CANCEL_OPEN_DELIVERIES = (
    "UPDATE deliveries SET state = 'cancelled', updated_at = ?"
    " WHERE warning_id = ? AND state IN ('pending', 'failed')"
)


def insert_audit(con: Connection, audit: AuditIn | dict[str, Any]) -> None:
    """Append one audit event inside the caller's transaction."""
    con.execute(
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


def decode_warning(row: Row) -> WarningRow:
    """Decode a warnings row's JSON columns."""
    row["area"] = json.loads(row["area"])
    row["villages"] = json.loads(row["villages"])
    return cast(WarningRow, row)


def _decode_audit(rows: list[Row]) -> list[AuditRow]:
    """Audit rows with their detail decoded."""
    for r in rows:
        r["detail"] = json.loads(r["detail"])
    return cast(list[AuditRow], rows)


class Warnings(StoreCore):
    """The warnings and audit tables."""

    async def accept(
        self,
        row: dict[str, Any],
        *,
        audit: AuditIn | dict[str, Any],
        jobs: Sequence[NewJob | dict[str, Any]],
        idempotency_key: str | None = None,
        fingerprint: str | None = None,
    ) -> AcceptResult:
        """Store a new warning with its audit event and jobs in one transaction, or find its twin.

        The same Idempotency-Key, or the same (sender, identifier), answers with the existing id.
        A key already stored with another `fingerprint` raises IdempotencyConflict; a row stored
        before fingerprints were kept (NULL) answers with its id, as it always did.
        """

        def work(con: Connection) -> AcceptResult:
            """Find the twin or insert, in the transaction."""
            existing = None
            if idempotency_key:
                existing = one(
                    con,
                    "SELECT id, idempotency_fingerprint FROM warnings WHERE idempotency_key = ?",
                    (idempotency_key,),
                )
            if existing is None and row.get("sender") and row.get("identifier"):
                existing = one(
                    con,
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
            con.execute(
                f"INSERT INTO warnings ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                list(cols.values()),
            )
            insert_audit(con, audit)
            insert_jobs(con, jobs)
            return AcceptResult(row["id"], created=True)

        # Committed (synchronous=FULL) when this returns: only now may the caller answer 202.
        return await self.write(work)

    async def get_warning(self, warning_id: str) -> WarningRow | None:
        """One warning row with its JSON columns decoded."""
        row = await self.read(lambda con: one(con, "SELECT * FROM warnings WHERE id = ?", (warning_id,)))
        return decode_warning(row) if row else None

    async def find_warning(self, sender: str, identifier: str) -> WarningRow | None:
        """The warning an upstream (sender, identifier) names."""
        row = await self.read(
            lambda con: one(
                con, "SELECT * FROM warnings WHERE sender = ? AND identifier = ?", (sender, identifier)
            )
        )
        return decode_warning(row) if row else None

    async def list_warnings(self, states: Sequence[str] = (), limit: int = 100) -> list[WarningRow]:
        """Newest warnings first, optionally only in these states."""
        if states:
            marks = ",".join("?" * len(states))
            sql = f"SELECT * FROM warnings WHERE state IN ({marks}) ORDER BY created_at DESC LIMIT ?"
            params: tuple[Any, ...] = (*states, limit)
        else:
            sql, params = "SELECT * FROM warnings ORDER BY created_at DESC LIMIT ?", (limit,)
        rows = await self.read(lambda con: every(con, sql, params))
        return [decode_warning(r) for r in rows]

    async def change_warning(
        self,
        warning_id: str,
        changes: dict[str, Any],
        *,
        audit: AuditIn | dict[str, Any],
        jobs: Sequence[NewJob | dict[str, Any]] = (),
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

        def work(con: Connection) -> None:
            """The update, the cancels, the audit event and the jobs."""
            con.execute(
                f"UPDATE warnings SET {sets}, updated_at = ? WHERE id = ?",
                [*changes.values(), stamp, warning_id],
            )
            if cancel_jobs:
                kept = ",".join("?" * len(keep_job_kinds))
                spare = f" AND kind NOT IN ({kept})" if keep_job_kinds else ""
                con.execute(
                    f"UPDATE jobs SET state = 'cancelled' WHERE warning_id = ? AND state = 'pending'{spare}",
                    (warning_id, *keep_job_kinds),
                )
            if cancel_deliveries:
                con.execute(CANCEL_OPEN_DELIVERIES, (stamp, warning_id))
            insert_audit(con, audit)
            insert_jobs(con, jobs)

        await self.write(work)

    async def add_audit(self, audit: AuditIn | dict[str, Any]) -> None:
        """Append one audit event on its own (the feeds' unmatched references, refused documents)."""
        await self.write(lambda con: insert_audit(con, audit))

    async def audit_log(self, warning_id: str | None = None, limit: int = 200) -> list[AuditRow]:
        """Audit events, oldest first, optionally for one warning."""
        if warning_id:
            sql = "SELECT * FROM audit WHERE warning_id = ? ORDER BY id LIMIT ?"
            params: tuple[Any, ...] = (warning_id, limit)
        else:
            sql, params = "SELECT * FROM audit ORDER BY id DESC LIMIT ?", (limit,)
        return _decode_audit(await self.read(lambda con: every(con, sql, params)))

    async def version_events(self, warning_id: str) -> list[dict[str, Any]]:
        """A warning's update and cancel audit events, oldest first: the messages it went through."""
        rows = await self.read(
            lambda con: every(
                con,
                "SELECT at, action, detail FROM audit WHERE warning_id = ?"
                " AND action IN ('update', 'cancel') ORDER BY id",
                (warning_id,),
            )
        )
        return list(_decode_audit(rows))  # type: ignore[arg-type]  # three of AuditRow's columns
