"""Feedback: acknowledgements from every channel land here and move their delivery forward."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import structlog

from warnd.clock import Clock, Wakeup
from warnd.config import DispatchSettings
from warnd.dispatcher import retry_delay_s
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
    # A provider's final refusal reported after the send (Twilio 30005 unknown number …): no retry.
    "dead": "dead",
}


class Feedback:
    """Matches acks to deliveries and records them.

    Args:
        store: the store.
        clock: time.
        wake: set when an ack may change what is due (a failure to retry).
    """

    def __init__(
        self, store: Store, clock: Clock, wake: Wakeup, retry: DispatchSettings | None = None
    ) -> None:
        """Keep the collaborators; `retry` is the dispatcher's backoff for reported failures."""
        self.store, self.clock, self.wake = store, clock, wake
        self.retry = retry or DispatchSettings()
        # warnd.metrics.Metrics, set by the daemon: counts acks and times confirmations.
        self.metrics: Any = None

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
        if STATUS_STATE[status] in ("failed", "dead"):
            error = f"{source} reported {status}: {(detail or {}).get('detail', '')}".strip(": ")
        now = self.clock.now()
        row = await self.store.apply_ack(
            source=source,
            status=status,
            new_state=STATUS_STATE[status],
            now=now,
            msg_id=msg_id,
            target=target,
            provider_ref=provider_ref,
            detail=detail,
            error=error,
            retry=lambda attempts: self._retry_at(attempts, now),
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
        if self.metrics is not None:
            self.metrics.observe_ack(row, status, now)
        if row["state"] == "failed":
            self.wake.set()
        return row

    def _retry_at(self, attempts: int, now: datetime) -> datetime | None:
        """When a delivery reported failed is tried again; None once attempts are used up."""
        if attempts >= self.retry.max_attempts:
            return None
        r = self.retry
        delay = retry_delay_s(attempts, None, base_s=r.backoff_base_s, cap_s=r.backoff_cap_s)
        return now + timedelta(seconds=delay)
