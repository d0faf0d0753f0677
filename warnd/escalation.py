"""叫应 (call and respond): whether an unconfirmed message moves its chain on. A pure decision.

A chain guards one person's ack-required messages of one step. Its steps come from the
level policy (default: a voice call to the same person after 10 min, then the person's
superior after 20 min), each counted from when the guarded message was sent. Any
confirmation from the person (or from someone the chain already reached) since the message
was planned stops the chain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from warnd.config import EscalationStep, LevelPolicy

# States in which the guarded message will never reach the person: escalate without waiting.
GAVE_UP = ("dead",)


@dataclass(frozen=True)
class Watched:
    """The message a chain guards, and where the chain stands.

    Args:
        person_id: whose confirmation is awaited.
        stage: index of the next chain step to take.
        created_at: when the message was planned (written to the outbox).
        sent_at: when it first left, or None while it has not.
        states: the states of the person's guarded deliveries (sms, wechat …).
        warning_state: the warning's state; a chain only runs while it is in force.
    """

    person_id: str
    stage: int
    created_at: datetime
    sent_at: datetime | None
    states: tuple[str, ...]
    warning_state: str


@dataclass(frozen=True)
class Confirmation:
    """An acknowledged delivery of the warning: who, on which channel, when."""

    person_id: str
    channel: str
    at: datetime


@dataclass(frozen=True)
class Action:
    """What to do with a chain now, and why.

    Args:
        verb: escalate (take `step` now), wait (look again `at`), or stop.
        reason: for the log, the audit trail and the operator.
        stage: the chain step this concerns.
        step: the chain step to take when escalating.
        at: when to look again when waiting.
    """

    verb: Literal["escalate", "wait", "stop"]
    reason: str
    stage: int
    step: EscalationStep | None = None
    at: datetime | None = None


def decide(delivery: Watched, acks: Sequence[Confirmation], policy: LevelPolicy, now: datetime) -> Action:
    """Should the chain of this unconfirmed message advance now? Returns the action with a reason."""
    stage = delivery.stage
    if delivery.warning_state not in ("active", "updated"):
        return Action("stop", f"warning is {delivery.warning_state}", stage)
    confirmed = sorted((a for a in acks if a.at >= delivery.created_at), key=lambda a: a.at)
    if confirmed:
        first = confirmed[0]
        who = "confirmed" if first.person_id == delivery.person_id else f"{first.person_id} confirmed"
        return Action("stop", f"{who} by {first.channel} at {first.at.isoformat()}", stage)
    chain = policy.escalation
    if stage >= len(chain):
        return Action("stop", "escalation chain exhausted", stage)
    step = chain[stage]
    if delivery.states and all(s in GAVE_UP for s in delivery.states):
        return Action("escalate", "message could not be delivered", stage, step)
    base = delivery.sent_at or delivery.created_at
    deadline = base + timedelta(minutes=step.after_min)
    if now < deadline:
        return Action("wait", f"deadline {deadline.isoformat()} not reached", stage, at=deadline)
    since = "sent" if delivery.sent_at else "planned (still not sent)"
    return Action("escalate", f"not confirmed {step.after_min:g} min after it was {since}", stage, step)


def next_due(delivery: Watched, policy: LevelPolicy, stage: int, now: datetime) -> datetime | None:
    """When the chain's step `stage` falls due (never before now), or None past the chain's end."""
    chain = policy.escalation
    if stage >= len(chain):
        return None
    base = delivery.sent_at or delivery.created_at
    return max(now, base + timedelta(minutes=chain[stage].after_min))
