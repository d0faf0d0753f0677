"""Feedback: acknowledgements from every channel land here and move their delivery forward."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog

from warnd.backoff import retry_delay_s
from warnd.clock import Clock, Wakeup
from warnd.config import DispatchSettings
from warnd.store import AckedDelivery, AckIn, DeliveryState, Store

if TYPE_CHECKING:
    from warnd.metrics import Metrics

log = structlog.get_logger("warnd.feedback")

# Acks of a batch counted and grouped between two passes of the event loop: the device hub's
# batches of 1,000 took ~10 ms here in one go, on top of its own checks (bench/ack_backlog.py).
YIELD_EVERY = 250

# What each reported status means for the delivery. Device statuses follow GD/J 082's
# broadcast states: 1 waiting (received), 2 broadcasting (playing), 3 success (played),
# 4 failed, 5 cancelled.
STATUS_STATE: dict[str, DeliveryState | None] = {
    "received": DeliveryState.DELIVERED,
    "playing": DeliveryState.DELIVERED,
    "delivered": DeliveryState.DELIVERED,
    "played": DeliveryState.ACKNOWLEDGED,
    "shown": DeliveryState.ACKNOWLEDGED,
    "acknowledged": DeliveryState.ACKNOWLEDGED,
    "cancelled": DeliveryState.ACKNOWLEDGED,
    "cleared": DeliveryState.ACKNOWLEDGED,
    "failed": DeliveryState.FAILED,
    "undelivered": DeliveryState.FAILED,
    # A provider's final refusal reported after the send (Twilio 30005 unknown number …): no retry.
    "dead": DeliveryState.DEAD,
}


@dataclass(frozen=True)
class AckReport:
    """An acknowledgement as a channel reports it."""

    source: str
    status: str
    msg_id: str | None = None
    target: str | None = None
    provider_ref: str | None = None
    detail: dict[str, Any] | None = None


def _reason(r: AckReport) -> str:
    """The error kept on a delivery reported failed (without NULs: PostgreSQL's text has none)."""
    text = f"{r.source} reported {r.status}: {(r.detail or {}).get('detail', '')}".strip(": ")
    return text.replace("\x00", "")


class Feedback:
    """Matches acks to deliveries and records them.

    Args:
        store: the store.
        clock: time.
        wake: set when an ack may change what is due (a failure to retry).
    """

    def __init__(
        self,
        store: Store,
        clock: Clock,
        wake: Wakeup,
        retry: DispatchSettings | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        """Keep the collaborators; `retry` is the dispatcher's backoff for reported failures."""
        self.store, self.clock, self.wake = store, clock, wake
        self.retry = retry or DispatchSettings()
        # Counts acks and times confirmations (None in tests that need no metrics).
        self.metrics = metrics

    async def ack(
        self,
        *,
        source: str,
        status: str,
        msg_id: str | None = None,
        target: str | None = None,
        provider_ref: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> AckedDelivery | None:
        """Record one acknowledgement; returns the matched delivery, or None if it matches nothing."""
        ack = AckReport(source, status, msg_id, target, provider_ref, detail)
        return (await self.ack_many([ack]))[0]

    async def ack_many(
        self, reports: Sequence[AckReport], *, log_unmatched: bool = True
    ) -> list[AckedDelivery | None]:
        """Record many acknowledgements in one store transaction, in order.

        `log_unmatched=False`: the caller reports acks that match no delivery itself (the device
        hub counts them and logs them at most once a minute per device).
        """
        now = self.clock.now()

        def retry(attempts: int) -> datetime | None:
            """When a delivery reported failed now is tried again (one closure for the batch)."""
            return self._retry_at(attempts, now)

        known = [r for r in reports if r.status in STATUS_STATE]
        for r in reports:
            if r.status not in STATUS_STATE:
                log.warning(
                    "ack.unknown_status", source=r.source, status=r.status, msg_id=r.msg_id, target=r.target
                )
        rows = (
            await self.store.apply_acks(
                [
                    AckIn(
                        source=r.source,
                        status=r.status,
                        new_state=STATUS_STATE[r.status],
                        msg_id=r.msg_id,
                        target=r.target,
                        provider_ref=r.provider_ref,
                        detail=r.detail,
                        error=_reason(r)
                        if STATUS_STATE[r.status] in (DeliveryState.FAILED, DeliveryState.DEAD)
                        else None,
                        retry=retry,
                    )
                    for r in known
                ],
                now=now,
            )
            if known
            else []
        )
        by_report = dict(zip(map(id, known), rows, strict=True))
        out: list[AckedDelivery | None] = []
        retry_due = False
        # One line per (message, status, resulting state): a village's ten speakers saying
        # `played` in one batch are one line with receivers=10, not ten.
        lines: dict[tuple[Any, ...], list[tuple[AckReport, AckedDelivery]]] = {}
        for i, r in enumerate(reports):
            if i and not i % YIELD_EVERY:
                await asyncio.sleep(0)  # let the loop run between slices of a big batch
            row = by_report.get(id(r))
            out.append(row)
            if r.status not in STATUS_STATE:
                continue
            if row is None:
                if log_unmatched:
                    log.info(
                        "ack.unmatched", source=r.source, status=r.status, msg_id=r.msg_id, target=r.target
                    )
                continue
            key = (row["warning_id"], row["msg_id"], row["channel"], r.source, r.status, row["state"])
            lines.setdefault(key, []).append((r, row))
            if self.metrics is not None:
                self.metrics.observe_ack(row, r.status, now)
            retry_due = retry_due or row["state"] == "failed"
        for (warning_id, msg_id, channel, source, status, state), acks in lines.items():
            r, row = acks[0]
            # Intermediate device states (received, playing) are many and say little: debug only.
            emit = log.info if STATUS_STATE[status] != "delivered" or source != "mqtt" else log.debug
            targets = {row["target"] for _, row in acks}
            who = {"target": row["target"]} if len(targets) == 1 else {"receivers": len(targets)}
            emit(
                "ack.received",
                warning_id=warning_id,
                msg_id=msg_id,
                channel=channel,
                **who,
                status=status,
                state=state,
            )
        if retry_due:
            self.wake.set()
        return out

    def _retry_at(self, attempts: int, now: datetime) -> datetime | None:
        """When a delivery reported failed is tried again; None once attempts are used up."""
        if attempts >= self.retry.max_attempts:
            return None
        r = self.retry
        delay = retry_delay_s(attempts, None, base_s=r.backoff_base_s, cap_s=r.backoff_cap_s)
        return now + timedelta(seconds=delay)
