"""Devices: what loudspeakers and boards last reported, and when they were last heard."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from warnd.store.core import Connection, StoreCore, every, ts

# Devices whose last_seen one statement moves: 50,000 at once were 2 MB of JSON made in one C
# call holding the GIL (~20 ms of a stalled event loop); 5,000 are a few milliseconds.
SEEN_PART = 5000


class Devices(StoreCore):
    """The devices table (schema 2)."""

    async def device_status(
        self, device_id: str, online: bool | None, status: dict[str, Any], now: datetime
    ) -> None:
        """Record a device's reported status (retained status message or last will)."""
        stamp = ts(now)
        params = (
            device_id,
            None if online is None else int(online),
            json.dumps(status, ensure_ascii=False),
            stamp,
            stamp,
        )
        await self.write(
            lambda con: con.execute(
                "INSERT INTO devices (id, online, status, status_at, last_seen) VALUES (?,?,?,?,?)"
                " ON CONFLICT (id) DO UPDATE SET online = excluded.online, status = excluded.status,"
                " status_at = excluded.status_at, last_seen = excluded.last_seen",
                params,
            )
        )

    async def devices_seen(self, seen: dict[str, datetime]) -> None:
        """Move devices' last_seen forward (acks prove a device is alive); `seen` is not changed after.

        Statements over JSON arrays, made on the store's thread: a backlog of 50,000 acks
        left this many devices at once, and a `ts()` each on the event loop plus a statement
        step each stalled the loop 130 ms (bench/ack_backlog.py). Acks of a batch share a time.
        """

        def work(con: Connection) -> None:
            """Every device, SEEN_PART to a statement (each JSON text is made holding the GIL)."""
            d = con.dialect
            later = d.greatest("COALESCE(devices.last_seen, '')", "excluded.last_seen")
            # `WHERE true`: SQLite reads ON CONFLICT after a bare SELECT as a join's ON.
            sql = (
                f"INSERT INTO devices (id, last_seen) SELECT * FROM ({d.json_rows(2)}) AS r WHERE true"
                f" ON CONFLICT (id) DO UPDATE SET last_seen = {later}"
            )
            stamps = {at: ts(at) for at in set(seen.values())}
            rows = [[d_id, stamps[at]] for d_id, at in seen.items()]
            for start in range(0, len(rows), SEEN_PART):
                con.execute(sql, (d.json_list(rows[start : start + SEEN_PART]),))

        await self.write(work, bulk=True)

    async def devices(self) -> list[dict[str, Any]]:
        """Every device warnd has heard from, with its last status decoded."""
        rows = await self.read(lambda con: every(con, "SELECT * FROM devices ORDER BY id"))
        for r in rows:
            r["status"] = json.loads(r["status"])
        return rows

    async def offline_targets(self, warning_id: str) -> dict[str, int]:
        """Per channel: receivers of a warning whose device last reported itself offline."""
        rows = await self.read(
            lambda con: every(
                con,
                "SELECT d.channel, COUNT(DISTINCT d.target) AS n FROM deliveries d"
                " JOIN devices v ON v.id = d.target"
                " WHERE d.warning_id = ? AND d.kind = 'warning' AND v.online = 0 GROUP BY d.channel",
                (warning_id,),
            )
        )
        return {r["channel"]: r["n"] for r in rows}
