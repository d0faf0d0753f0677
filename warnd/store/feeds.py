"""What the feeds remember: CAP documents taken in, poll cursors, index entries, health (schema 5)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from warnd.store.core import Connection, StoreCore, every, one, ts


def _bump(con: Connection, feed: str, stamp: str, outcome: str | None, error: str | None) -> None:
    """Count an outcome in a feed's health row (created empty when missing), in the transaction."""
    row = one(con, "SELECT counts FROM feed_health WHERE feed = ?", (feed,))
    if row is None:
        con.execute("INSERT INTO feed_health (feed) VALUES (?)", (feed,))
        row = {"counts": "{}"}
    counts: dict[str, int] = json.loads(row["counts"])
    if outcome is not None:
        counts[outcome] = counts.get(outcome, 0) + 1
    if error is None:
        con.execute(
            "UPDATE feed_health SET last_success = ?, failures = 0, counts = ? WHERE feed = ?",
            (stamp, json.dumps(counts), feed),
        )
    else:
        con.execute(
            "UPDATE feed_health SET last_error = ?, last_error_at = ?, failures = failures + 1,"
            " counts = ? WHERE feed = ?",
            (error[:500], stamp, json.dumps(counts), feed),
        )


class Feeds(StoreCore):
    """The feed_documents, feed_cursors, feed_entries and feed_health tables."""

    async def feed_document(self, sender: str, identifier: str) -> dict[str, Any] | None:
        """The CAP message taken in under (sender, identifier), if any."""
        return await self.read(
            lambda con: one(
                con, "SELECT * FROM feed_documents WHERE sender = ? AND identifier = ?", (sender, identifier)
            )
        )

    async def add_feed_document(self, row: dict[str, Any]) -> bool:
        """Record a CAP message; False when (sender, identifier) was already recorded."""
        cols = {**row, "refs": json.dumps(row.get("refs", []), ensure_ascii=False)}
        rest = f"({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"

        def work(con: Connection) -> bool:
            """Insert unless recorded before."""
            if one(con, "SELECT 1 FROM feed_documents WHERE sender = ? AND identifier = ?",
                   (row["sender"], row["identifier"])):  # fmt: skip
                return False
            con.execute(con.dialect.insert_ignore("feed_documents", rest), list(cols.values()))
            return True

        return await self.write(work)

    async def settle_feed_document(self, sender: str, identifier: str, outcome: str) -> None:
        """Record what became of a message held for sign-off (updated, cancelled or rejected)."""

        def work(con: Connection) -> None:
            """Settle it only while it is still held: a decision is made once."""
            con.execute(
                "UPDATE feed_documents SET outcome = ?"
                " WHERE sender = ? AND identifier = ? AND outcome = 'held'",
                (outcome, sender, identifier),
            )

        await self.write(work)

    async def feed_documents_for(self, warning_id: str) -> list[dict[str, Any]]:
        """The CAP messages that created or changed a warning, oldest first."""
        return await self.read(
            lambda con: every(
                con, "SELECT * FROM feed_documents WHERE warning_id = ? ORDER BY id", (warning_id,)
            )
        )

    async def flagged_documents(self, limit: int = 100) -> list[dict[str, Any]]:
        """Messages an operator should look at, newest first."""
        rows = await self.read(
            lambda con: every(
                con,
                "SELECT id, sender, identifier, feed, source, msg_type, status, outcome, warning_id, flag,"
                " received_at, refs FROM feed_documents WHERE flag IS NOT NULL ORDER BY id DESC LIMIT ?",
                (limit,),
            )
        )
        for r in rows:
            r["refs"] = json.loads(r["refs"])
        return rows

    async def feed_cursor(self, feed: str, url: str) -> dict[str, Any] | None:
        """The ETag and Last-Modified last seen for a polled URL."""
        return await self.read(
            lambda con: one(con, "SELECT * FROM feed_cursors WHERE feed = ? AND url = ?", (feed, url))
        )

    async def set_feed_cursor(
        self, feed: str, url: str, etag: str | None, last_modified: str | None, now: datetime
    ) -> None:
        """Remember a URL's validators for the next conditional GET."""
        params = (feed, url, etag, last_modified, ts(now))
        await self.write(
            lambda con: con.execute(
                "INSERT INTO feed_cursors (feed, url, etag, last_modified, updated_at) VALUES (?,?,?,?,?)"
                " ON CONFLICT (feed, url) DO UPDATE SET etag = excluded.etag,"
                " last_modified = excluded.last_modified, updated_at = excluded.updated_at",
                params,
            )
        )

    async def known_feed_entries(self, feed: str, entries: Sequence[str]) -> set[str]:
        """Which of these index entries were already fetched."""
        if not entries:
            return set()
        marks = ",".join("?" * len(entries))
        sql = f"SELECT entry FROM feed_entries WHERE feed = ? AND entry IN ({marks})"
        rows = await self.read(lambda con: every(con, sql, (feed, *entries)))
        return {r["entry"] for r in rows}

    async def add_feed_entry(self, feed: str, entry: str, outcome: str, now: datetime) -> None:
        """Remember that an index entry was fetched (and what came of it)."""
        params = (feed, entry, ts(now), outcome)
        await self.write(
            lambda con: con.execute(
                con.dialect.insert_ignore(
                    "feed_entries", "(feed, entry, fetched_at, outcome) VALUES (?,?,?,?)"
                ),
                params,
            )
        )

    async def feed_health(self) -> dict[str, dict[str, Any]]:
        """Every feed's health row, by feed name."""
        rows = await self.read(lambda con: every(con, "SELECT * FROM feed_health ORDER BY feed"))
        for r in rows:
            r["counts"] = json.loads(r["counts"])
        return {r["feed"]: r for r in rows}

    async def feed_outcome(
        self, feed: str, now: datetime, *, outcome: str | None, error: str | None = None
    ) -> None:
        """Count a fetch's or a document's outcome; an error lengthens the failure streak, none ends it."""
        stamp = ts(now)
        await self.write(lambda con: _bump(con, feed, stamp, outcome, error))
