"""What the feeds remember in the store: CAP documents taken in, poll cursors, entries, health.

These tables belong to the feeds (migration 0005); the queries live here, beside their only
users, and go through the store's one connection and lock like every other write.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from warnd.store import Store, ts


class FeedRecords:
    """The feeds' rows in the store.

    Args:
        store: the open store.
    """

    def __init__(self, store: Store) -> None:
        """Borrow the store's connection."""
        self.store = store

    # -- documents ----------------------------------------------------------------------------

    async def document(self, sender: str, identifier: str) -> dict[str, Any] | None:
        """The CAP message taken in under (sender, identifier), if any."""
        return await self.store._one(
            "SELECT * FROM feed_documents WHERE sender = ? AND identifier = ?", (sender, identifier)
        )

    async def add_document(self, row: dict[str, Any]) -> bool:
        """Record a CAP message; False when (sender, identifier) was already recorded."""
        cols = {**row, "refs": json.dumps(row.get("refs", []), ensure_ascii=False)}
        before = await self.document(row["sender"], row["identifier"])
        if before is not None:
            return False
        await self.store._tx(
            [
                (
                    f"INSERT OR IGNORE INTO feed_documents ({', '.join(cols)})"  # noqa: S608 - our columns
                    f" VALUES ({', '.join('?' * len(cols))})",
                    list(cols.values()),
                    False,
                )
            ]
        )
        return True

    async def documents_for(self, warning_id: str) -> list[dict[str, Any]]:
        """The CAP messages that created or changed a warning, oldest first."""
        return await self.store._all(
            "SELECT * FROM feed_documents WHERE warning_id = ? ORDER BY id", (warning_id,)
        )

    async def flagged(self, limit: int = 100) -> list[dict[str, Any]]:
        """Messages an operator should look at, newest first."""
        rows = await self.store._all(
            "SELECT id, sender, identifier, feed, source, msg_type, status, outcome, warning_id, flag,"
            " received_at, refs FROM feed_documents WHERE flag IS NOT NULL ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        for r in rows:
            r["refs"] = json.loads(r["refs"])
        return rows

    async def audit(
        self, at: datetime, actor: str, action: str, warning_id: str | None, detail: dict
    ) -> None:
        """An audit event of the feeds' own (unmatched references, refused documents)."""
        await self.store._tx(
            [
                (
                    "INSERT INTO audit (at, actor, action, warning_id, remote, detail) VALUES (?,?,?,?,?,?)",
                    (ts(at), actor, action, warning_id, None, json.dumps(detail, ensure_ascii=False)),
                    False,
                )
            ]
        )

    # -- polling ------------------------------------------------------------------------------

    async def cursor(self, feed: str, url: str) -> dict[str, Any] | None:
        """The ETag and Last-Modified last seen for a polled URL."""
        return await self.store._one("SELECT * FROM feed_cursors WHERE feed = ? AND url = ?", (feed, url))

    async def set_cursor(
        self, feed: str, url: str, etag: str | None, last_modified: str | None, now: datetime
    ) -> None:
        """Remember a URL's validators for the next conditional GET."""
        await self.store._tx(
            [
                (
                    "INSERT INTO feed_cursors (feed, url, etag, last_modified, updated_at) VALUES (?,?,?,?,?)"
                    " ON CONFLICT (feed, url) DO UPDATE SET etag = excluded.etag,"
                    " last_modified = excluded.last_modified, updated_at = excluded.updated_at",
                    (feed, url, etag, last_modified, ts(now)),
                    False,
                )
            ]
        )

    async def known_entries(self, feed: str, entries: Sequence[str]) -> set[str]:
        """Which of these index entries were already fetched."""
        if not entries:
            return set()
        marks = ",".join("?" * len(entries))
        rows = await self.store._all(
            f"SELECT entry FROM feed_entries WHERE feed = ? AND entry IN ({marks})",  # noqa: S608
            (feed, *entries),
        )
        return {r["entry"] for r in rows}

    async def add_entry(self, feed: str, entry: str, outcome: str, now: datetime) -> None:
        """Remember that an index entry was fetched (and what came of it)."""
        await self.store._tx(
            [
                (
                    "INSERT OR IGNORE INTO feed_entries (feed, entry, fetched_at, outcome) VALUES (?,?,?,?)",
                    (feed, entry, ts(now), outcome),
                    False,
                )
            ]
        )

    # -- health -------------------------------------------------------------------------------

    async def health(self) -> dict[str, dict[str, Any]]:
        """Every feed's health row, by feed name."""
        rows = await self.store._all("SELECT * FROM feed_health ORDER BY feed")
        for r in rows:
            r["counts"] = json.loads(r["counts"])
        return {r["feed"]: r for r in rows}

    async def _health_row(self, feed: str) -> dict[str, Any]:
        """One feed's health, created empty when missing (inside the caller's transaction)."""
        row = await self.store._one("SELECT * FROM feed_health WHERE feed = ?", (feed,))
        if row is None:
            await self.store.db.execute("INSERT INTO feed_health (feed) VALUES (?)", (feed,))
            row = {"feed": feed, "counts": "{}", "failures": 0}
        row["counts"] = json.loads(row["counts"])
        return row

    async def succeeded(self, feed: str, now: datetime, outcome: str | None = None) -> None:
        """A fetch or a document went well: count its outcome and clear the failure streak."""
        await self._bump(feed, now, outcome=outcome, error=None)

    async def failed(self, feed: str, now: datetime, error: str, outcome: str | None = "rejected") -> None:
        """A fetch or a document went wrong: remember the error and lengthen the streak."""
        await self._bump(feed, now, outcome=outcome, error=error)

    async def _bump(self, feed: str, now: datetime, *, outcome: str | None, error: str | None) -> None:
        """Update a feed's health in one transaction."""
        async with self.store.transaction() as db:
            row = await self._health_row(feed)
            counts = row["counts"]
            if outcome is not None:
                counts[outcome] = counts.get(outcome, 0) + 1
            if error is None:
                await db.execute(
                    "UPDATE feed_health SET last_success = ?, failures = 0, counts = ? WHERE feed = ?",
                    (ts(now), json.dumps(counts), feed),
                )
            else:
                await db.execute(
                    "UPDATE feed_health SET last_error = ?, last_error_at = ?, failures = failures + 1,"
                    " counts = ? WHERE feed = ?",
                    (error[:500], ts(now), json.dumps(counts), feed),
                )
