"""Feedback: acknowledgements from every channel land here and move their delivery forward."""

from __future__ import annotations

from typing import Any

import structlog

from warnd.clock import Clock, Wakeup
from warnd.store import Store

log = structlog.get_logger("warnd.feedback")

# What each reported status means for the delivery. Device statuses follow GD/J 082's
# broadcast states: 1 waiting (received), 2 broadcasting (playing), 3 success (played),
# 4 failed, 5 cancelled.
STATUS_STATE: dict[str, str | None] = {
    "received": "delivered",
    "playing": "delivered",
    "delivered": "delivered",
    "played": "acknowledged",
    "shown": "acknowledged",
    "acknowledged": "acknowledged",
    "cancelled": "acknowledged",
    "cleared": "acknowledged",
    "failed": "failed",
    "undelivered": "failed",
}


class Feedback:
    """Matches acks to deliveries and records them.

    Args:
        store: the store.
        clock: time.
        wake: set when an ack may change what is due (a failure to retry).
    """

    def __init__(self, store: Store, clock: Clock, wake: Wakeup) -> None:
        """Keep the collaborators."""
        self.store, self.clock, self.wake = store, clock, wake

    async def ack(
        self,
        *,
        source: str,
        status: str,
        msg_id: str | None = None,
        target: str | None = None,
        provider_ref: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """Record one acknowledgement; returns the matched delivery, or None if it matches nothing."""
        if status not in STATUS_STATE:
            log.warning("ack.unknown_status", source=source, status=status, msg_id=msg_id, target=target)
            return None
        error = None
        if STATUS_STATE[status] == "failed":
            error = f"{source} reported {status}: {(detail or {}).get('detail', '')}".strip(": ")
        row = await self.store.apply_ack(
            source=source,
            status=status,
            new_state=STATUS_STATE[status],
            now=self.clock.now(),
            msg_id=msg_id,
            target=target,
            provider_ref=provider_ref,
            detail=detail,
            error=error,
        )
        if row is None:
            log.info("ack.unmatched", source=source, status=status, msg_id=msg_id, target=target)
            return None
        log.info(
            "ack.received",
            warning_id=row["warning_id"],
            msg_id=row["msg_id"],
            channel=row["channel"],
            target=row["target"],
            status=status,
            state=row["state"],
        )
        return row
