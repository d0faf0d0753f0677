"""Inbound messages: SMS replies and the like, kept once each."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from warnd.store.core import Connection, StoreCore, every, one, ts


class Inbound(StoreCore):
    """The inbound table (schema 4)."""

    async def add_inbound(
        self,
        *,
        provider_ref: str | None,
        channel: str,
        phone: str,
        person_id: str | None,
        warning_id: str | None,
        delivery_id: int | None,
        body: str,
        is_ack: bool,
        now: datetime,
    ) -> bool | None:
        """Keep one inbound message; None when its provider_ref was kept before (a duplicate).

        Returns whether it is to be answered: only someone warnd wrote to (a warning_id), and
        only once per warning, so a conversation never turns into a reply storm.
        """

        def work(con: Connection) -> bool | None:
            """Check for the twin and the earlier answer, then insert."""
            if provider_ref is not None and one(
                con, "SELECT 1 FROM inbound WHERE provider_ref = ?", (provider_ref,)
            ):
                return None
            answered = warning_id is not None and not one(
                con,
                "SELECT 1 FROM inbound WHERE phone = ? AND warning_id = ? AND answered = 1",
                (phone, warning_id),
            )
            con.execute(
                "INSERT INTO inbound (provider_ref, channel, phone, person_id, warning_id, delivery_id,"
                " body, is_ack, answered, received_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    provider_ref,
                    channel,
                    phone,
                    person_id,
                    warning_id,
                    delivery_id,
                    body,
                    int(is_ack),
                    int(answered),
                    ts(now),
                ),
            )
            return answered

        return await self.write(work)

    async def inbound(self, warning_id: str | None = None, limit: int = 500) -> list[dict[str, Any]]:
        """Inbound messages, newest first, optionally those about one warning."""
        if warning_id is not None:
            sql = "SELECT * FROM inbound WHERE warning_id = ? ORDER BY id DESC LIMIT ?"
            params: tuple[Any, ...] = (warning_id, limit)
        else:
            sql, params = "SELECT * FROM inbound ORDER BY id DESC LIMIT ?", (limit,)
        rows = await self.read(lambda con: every(con, sql, params))
        for r in rows:
            r["is_ack"], r["answered"] = bool(r["is_ack"]), bool(r["answered"])
        return rows
