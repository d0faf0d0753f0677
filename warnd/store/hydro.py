"""Hydrology: water-level readings and each station's warning state."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from warnd.store.core import StoreCore, every, from_ts, one, ts


class Hydro(StoreCore):
    """The hydro_readings and hydro_state tables (schema 5)."""

    async def last_reading(self, station: str) -> tuple[datetime, float] | None:
        """The station's newest accepted reading (time, level in m)."""
        row = await self.read(
            lambda con: one(
                con,
                "SELECT at, level_m FROM hydro_readings WHERE station = ? AND accepted = 1"
                " ORDER BY at DESC LIMIT 1",
                (station,),
            )
        )
        at = from_ts(row["at"]) if row else None
        return (at, row["level_m"]) if row and at else None

    async def readings_between(
        self, station: str, start: datetime, end: datetime
    ) -> list[tuple[datetime, float]]:
        """The station's accepted readings from start to end (both included), oldest first."""
        rows = await self.read(
            lambda con: every(
                con,
                "SELECT at, level_m FROM hydro_readings WHERE station = ? AND accepted = 1"
                " AND at >= ? AND at <= ? ORDER BY at",
                (station, ts(start), ts(end)),
            )
        )
        return [(datetime.fromisoformat(r["at"]), r["level_m"]) for r in rows]

    async def add_reading(
        self, station: str, at: datetime, level_m: float, *, accepted: bool, reason: str | None, now: datetime
    ) -> None:
        """Keep a reading, accepted or with the reason it was refused."""
        params = (station, ts(at), level_m, ts(now), int(accepted), reason)
        await self.write(
            lambda con: con.execute(
                "INSERT INTO hydro_readings (station, at, level_m, received_at, accepted, reason)"
                " VALUES (?,?,?,?,?,?)",
                params,
            )
        )

    async def hydro_readings(self, station: str, limit: int = 1000) -> list[dict[str, Any]]:
        """A station's stored readings, oldest first."""
        return await self.read(
            lambda con: every(
                con, "SELECT * FROM hydro_readings WHERE station = ? ORDER BY id LIMIT ?", (station, limit)
            )
        )

    async def station_state(self, station: str) -> dict[str, Any] | None:
        """A station's stored state row (warning_id, level, below_since), if any."""
        return await self.read(
            lambda con: one(con, "SELECT * FROM hydro_state WHERE station = ?", (station,))
        )

    async def set_station_state(
        self,
        station: str,
        *,
        warning_id: str | None,
        level: str | None,
        below_since: datetime | None,
        now: datetime,
    ) -> None:
        """Write a station's state."""
        params = (station, warning_id, level, ts(below_since) if below_since else None, ts(now))
        await self.write(
            lambda con: con.execute(
                "INSERT INTO hydro_state (station, warning_id, level, below_since, updated_at)"
                " VALUES (?,?,?,?,?) ON CONFLICT (station) DO UPDATE SET"
                " warning_id = excluded.warning_id, level = excluded.level,"
                " below_since = excluded.below_since, updated_at = excluded.updated_at",
                params,
            )
        )
