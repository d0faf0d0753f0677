"""What the feeds remember in the store: CAP documents taken in, poll cursors, entries, health.

These tables belong to the feeds (migration 0005); their SQL lives in warnd.store.feeds like all
the store's, and this is the feeds' own view of it.
"""

from __future__ import annotations

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
        """Use the store."""
        self.store = store

    # -- documents ----------------------------------------------------------------------------

    async def document(self, sender: str, identifier: str) -> dict[str, Any] | None:
        """The CAP message taken in under (sender, identifier), if any."""
        return await self.store.feed_document(sender, identifier)

    async def add_document(self, row: dict[str, Any]) -> bool:
        """Record a CAP message; False when (sender, identifier) was already recorded."""
        return await self.store.add_feed_document(row)

    async def documents_for(self, warning_id: str) -> list[dict[str, Any]]:
        """The CAP messages that created or changed a warning, oldest first."""
        return await self.store.feed_documents_for(warning_id)

    async def flagged(self, limit: int = 100) -> list[dict[str, Any]]:
        """Messages an operator should look at, newest first."""
        return await self.store.flagged_documents(limit)

    async def audit(
        self, at: datetime, actor: str, action: str, warning_id: str | None, detail: dict[str, Any]
    ) -> None:
        """An audit event of the feeds' own (unmatched references, refused documents)."""
        await self.store.add_audit(
            {"at": ts(at), "actor": actor, "action": action, "warning_id": warning_id, "detail": detail}
        )

    # -- polling ------------------------------------------------------------------------------

    async def cursor(self, feed: str, url: str) -> dict[str, Any] | None:
        """The ETag and Last-Modified last seen for a polled URL."""
        return await self.store.feed_cursor(feed, url)

    async def set_cursor(
        self, feed: str, url: str, etag: str | None, last_modified: str | None, now: datetime
    ) -> None:
        """Remember a URL's validators for the next conditional GET."""
        await self.store.set_feed_cursor(feed, url, etag, last_modified, now)

    async def known_entries(self, feed: str, entries: Sequence[str]) -> set[str]:
        """Which of these index entries were already fetched."""
        return await self.store.known_feed_entries(feed, entries)

    async def add_entry(self, feed: str, entry: str, outcome: str, now: datetime) -> None:
        """Remember that an index entry was fetched (and what came of it)."""
        await self.store.add_feed_entry(feed, entry, outcome, now)

    # -- health -------------------------------------------------------------------------------

    async def health(self) -> dict[str, dict[str, Any]]:
        """Every feed's health row, by feed name."""
        return await self.store.feed_health()

    async def succeeded(self, feed: str, now: datetime, outcome: str | None = None) -> None:
        """A fetch or a document went well: count its outcome and clear the failure streak."""
        await self.store.feed_outcome(feed, now, outcome=outcome, error=None)

    async def failed(self, feed: str, now: datetime, error: str, outcome: str | None = "rejected") -> None:
        """A fetch or a document went wrong: remember the error and lengthen the streak."""
        await self.store.feed_outcome(feed, now, outcome=outcome, error=error)
