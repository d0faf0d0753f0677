"""The store's rows as types: what goes in, what comes out, and the two vocabularies (states, kinds)."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NotRequired, TypedDict

from warnd.store.core import ts


class DeliveryState(enum.StrEnum):
    """Where a delivery is; `progress` orders them, and an ack never moves one backwards."""

    PENDING = "pending"
    FAILED = "failed"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    ACKNOWLEDGED = "acknowledged"
    DEAD = "dead"
    CANCELLED = "cancelled"

    @property
    def progress(self) -> int:
        """How far along: pending and failed 0 … acknowledged 4; dead and cancelled are ends, -1."""
        return _PROGRESS[self]

    @property
    def final(self) -> bool:
        """Whether nothing moves it any more (cancelled, dead)."""
        return self in (DeliveryState.CANCELLED, DeliveryState.DEAD)

    def advances_to(self, new: str) -> bool:
        """Whether moving from this state to `new` is progress (cancelled and dead are final)."""
        if self.final:
            return False
        if new in (DeliveryState.FAILED, DeliveryState.DEAD):
            # A speaker that received a command and then could not play it has failed; a confirmed
            # delivery stays confirmed.
            return self is not DeliveryState.ACKNOWLEDGED
        return _PROGRESS.get(new, 0) > _PROGRESS[self]

    @classmethod
    def furthest(cls, states: Iterable[str]) -> str:
        """The furthest of a receiver's states, for showing one word ("unknown" for none).

        Reached states first by progress; then the ones that never got anywhere.
        """
        have = set(states)
        return next((s.value for s in _SHOW_ORDER if s in have), "unknown")


_PROGRESS: dict[str, int] = {
    DeliveryState.PENDING: 0,
    DeliveryState.FAILED: 0,
    DeliveryState.SENDING: 1,
    DeliveryState.SENT: 2,
    DeliveryState.DELIVERED: 3,
    DeliveryState.ACKNOWLEDGED: 4,
    DeliveryState.DEAD: -1,
    DeliveryState.CANCELLED: -1,
}
# furthest(): by progress; among equals in declaration order (pending, not yet tried, before
# failed; dead before cancelled). sorted() is stable.
_SHOW_ORDER = sorted(DeliveryState, key=lambda s: -_PROGRESS[s])
# States that mean the receiver was handed the message (at least sent).
REACHED = frozenset({DeliveryState.SENT, DeliveryState.DELIVERED, DeliveryState.ACKNOWLEDGED})
# What coverage counts per receiver (Store.coverage, warnd.report).
COVERAGE_COUNTS = ("expected", "sent", "delivered", "acknowledged", "failed")


def count_receiver(counter: dict[str, int], states: Iterable[str]) -> None:
    """Count one receiver in COVERAGE_COUNTS at the furthest state any of its deliveries reached.

    Failed counts a receiver never reached whose delivery failed or died.
    """
    have = set(states)
    furthest = DeliveryState(DeliveryState.furthest(have))
    counter["expected"] += 1
    if furthest in REACHED:
        counter["sent"] += 1
        counter["delivered"] += furthest.progress >= DeliveryState.DELIVERED.progress
        counter["acknowledged"] += furthest is DeliveryState.ACKNOWLEDGED
    elif have & {DeliveryState.FAILED, DeliveryState.DEAD}:
        counter["failed"] += 1


class JobKind(enum.StrEnum):
    """What a job does when it is due (warnd.scheduler has one handler per kind)."""

    STEP = "step"
    EXPIRE = "expire"
    REPEAT = "repeat"
    ESCALATE = "escalate"
    ANNOUNCE = "announce"
    CONFIRM = "confirm"
    APPROVAL_REMINDER = "approval_reminder"  # pages the approvers of a waiting draft (warnd.approval)
    RETENTION = "retention"  # daily: archives and deletes what ended long ago (warnd.retention)


class NewJob(TypedDict):
    """A jobs row to insert (new_job builds it)."""

    key: str
    warning_id: str | None
    kind: str
    due_at: str
    created_at: str
    payload: dict[str, Any]


def new_job(
    kind: JobKind, key: str, warning_id: str | None, *, due: datetime, now: datetime, payload: dict[str, Any]
) -> NewJob:
    """The one way to build a job row: `kind` due at `due`, written `now`; a known `key` is kept.

    The key makes inserting it idempotent (a step planned twice is one job).
    """
    return NewJob(
        key=key, warning_id=warning_id, kind=kind.value, due_at=ts(due), created_at=ts(now), payload=payload
    )


@dataclass(frozen=True)
class Job:
    """A row of `jobs`: something due at a time."""

    id: int
    key: str
    warning_id: str | None
    kind: str
    due_at: datetime
    payload: dict[str, Any]


# Slotted: a county-wide step plans 61,000 of them at once; an instance __dict__ each cost
# 3 MB more (15.7 → 12.8 MB, tracemalloc) while the step is written.
@dataclass(frozen=True, slots=True)
class NewDelivery:
    """A delivery row to insert."""

    msg_id: str
    warning_id: str
    step: str
    kind: str
    channel: str
    target: str
    due_at: datetime
    village: str | None = None
    person_id: str | None = None
    address: str | None = None
    ack_required: bool = False
    # The message kind and its facts (warnd.messages): {"message": "upgrade", "old_level": …}.
    context: dict[str, Any] | None = None


@dataclass(frozen=True)
class Delivery:
    """A claimed delivery, with what an adapter needs to send it."""

    id: int
    msg_id: str
    warning_id: str
    step: str
    kind: str
    channel: str
    target: str
    village: str | None
    person_id: str | None
    address: str | None
    ack_required: bool
    attempts: int
    state: str = "sending"
    last_error: str | None = None
    context: dict[str, Any] = field(default_factory=dict)
    # A crash left an earlier send of it in doubt: it may have reached the provider at or after
    # this time, so it is looked up there before it is sent again (Adapter.reconcile).
    maybe_sent_at: datetime | None = None
    # When it was planned: the same on every attempt, so a resend can be the very same message.
    created_at: datetime | None = None
    # When it was first handed over, if ever: a delivery sent before is being published again.
    sent_at: datetime | None = None
    # Published again because its device did not confirm (warnd.confirm): not an attempt.
    republish: bool = False


class DeliveryRow(TypedDict):
    """A deliveries row as read (times as store text, JSON columns as text)."""

    id: int
    msg_id: str
    warning_id: str
    step: str
    kind: str
    channel: str
    target: str
    village: str | None
    person_id: str | None
    address: str | None
    ack_required: int
    state: str
    attempts: int
    last_error: str | None
    provider_ref: str | None
    due_at: str
    created_at: str
    updated_at: str
    sent_at: str | None
    delivered_at: str | None
    acked_at: str | None
    claimed_at: str | None
    maybe_sent_at: str | None
    context: str | None


class AckedDelivery(DeliveryRow):
    """A delivery as it stood after an ack (Store.apply_acks)."""

    first_confirmation: bool


class WarningRow(TypedDict, total=False):
    """A warnings row as read, its JSON columns (area, villages) decoded; later columns optional."""

    id: str
    source: str
    sender: str | None
    identifier: str | None
    msg_type: str
    event: str
    level: str
    status: str
    headline: str
    description: str
    instruction: str
    area: Any
    villages: list[str]
    onset: str | None
    expires: str | None
    state: str
    version: int
    created_at: str
    updated_at: str
    document: str


class AuditRow(TypedDict):
    """An audit event as read, its detail decoded."""

    id: int
    at: str
    actor: str
    action: str
    warning_id: str | None
    remote: str | None
    detail: dict[str, Any]


class AuditIn(TypedDict):
    """An audit event to append."""

    at: str
    actor: str
    action: str
    warning_id: NotRequired[str | None]
    remote: NotRequired[str | None]
    detail: NotRequired[dict[str, Any]]


@dataclass(frozen=True)
class Outcome:
    """What became of one delivery attempt.

    Args:
        delivery_id: the row.
        state: sent / delivered / acknowledged / failed (retry) / dead.
        error: why it failed, for the operator; never a secret.
        retry_after_s: earliest retry the far end allows.
        provider_ref: the provider's id for later receipts (Twilio SID …).
        maybe_sent: a failed send that may have reached the far end (timed out, connection lost
            after the request went out): it is looked up before it is sent again.
        refund: nothing left warnd (the channel was not ready): the claim's attempt is taken back.
        republish: the delivery was published again (its device had not confirmed).
    """

    delivery_id: int
    state: str
    error: str | None = None
    retry_after_s: float | None = None
    provider_ref: str | None = None
    maybe_sent: bool = False
    refund: bool = False
    republish: bool = False


@dataclass(frozen=True)
class AckIn:
    """An acknowledgement to record.

    Args:
        source: which channel or endpoint reported it.
        status: what it reported (played, delivered, failed …).
        new_state: the delivery state it means, or None to only record it.
        msg_id: with target, finds the delivery …
        target: … that this receiver acknowledges.
        provider_ref: or the provider's id (Twilio SID) finds it.
        detail: what else was reported.
        error: for failures, the reason kept on the delivery.
        retry: attempts → the next try of a delivery reported failed, or None to give up.
    """

    source: str
    status: str
    new_state: str | None
    msg_id: str | None = None
    target: str | None = None
    provider_ref: str | None = None
    detail: dict[str, Any] | None = None
    error: str | None = None
    retry: Callable[[int], datetime | None] | None = None


@dataclass
class AcceptResult:
    """The id a submission got, and whether it was new."""

    id: str
    created: bool
    extra: dict[str, Any] = field(default_factory=dict)
