"""Sign-off (审核签发): who drafted a warning, and updates or cancels that wait for an approver."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from warnd.store.core import Connection, Row, StoreCore, one, ts
from warnd.store.rows import AuditIn
from warnd.store.warnings import insert_audit


class Approval(StoreCore):
    """The pending_changes table and the drafter of a warning (from the audit log)."""

    async def drafter(self, warning_id: str) -> str | None:
        """Who issued a warning: the actor of its `issue` audit event."""
        row = await self.read(
            lambda con: one(
                con,
                "SELECT actor FROM audit WHERE warning_id = ? AND action = 'issue' ORDER BY id LIMIT 1",
                (warning_id,),
            )
        )
        return None if row is None else str(row["actor"])

    async def add_pending_change(
        self,
        warning_id: str,
        kind: str,
        body: dict[str, Any],
        *,
        audit: AuditIn | dict[str, Any],
        now: datetime,
    ) -> bool:
        """Keep an update or cancel until it is signed off; False when one already waits."""

        def work(con: Connection) -> bool:
            """The change and its audit event, together; False when a change of the warning waits."""
            waiting = "SELECT 1 FROM pending_changes WHERE warning_id = ? AND state = 'pending'"
            if con.execute(waiting, (warning_id,)).fetchone() is not None:
                return False
            con.execute(
                "INSERT INTO pending_changes (warning_id, kind, body, drafted_by, remote, created_at)"
                " VALUES (?,?,?,?,?,?)",
                (
                    warning_id,
                    kind,
                    json.dumps(body, ensure_ascii=False),
                    audit["actor"],
                    audit.get("remote"),
                    ts(now),
                ),
            )
            insert_audit(con, audit)
            return True

        # One writer: nothing comes between the look and the insert (the unique index on a
        # warning's pending change would refuse a second one anyway).
        return await self.write(work)

    async def pending_change(self, warning_id: str) -> Row | None:
        """The update or cancel of a warning that waits for sign-off, if any."""
        row = await self.read(
            lambda con: one(
                con, "SELECT * FROM pending_changes WHERE warning_id = ? AND state = 'pending'", (warning_id,)
            )
        )
        if row is not None:
            row["body"] = json.loads(row["body"])
        return row

    async def decide_pending_change(
        self,
        change_id: int,
        state: str,
        *,
        by: str,
        now: datetime,
        audit: AuditIn | dict[str, Any] | None = None,
    ) -> None:
        """Mark a waiting change approved or rejected (with its audit event, if given)."""

        def work(con: Connection) -> None:
            """The decision and its audit event, together."""
            con.execute(
                "UPDATE pending_changes SET state = ?, decided_by = ?, decided_at = ?"
                " WHERE id = ? AND state = 'pending'",
                (state, by, ts(now), change_id),
            )
            if audit is not None:
                insert_audit(con, audit)

        await self.write(work)
