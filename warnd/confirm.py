"""Devices that do not confirm: their commands are published again, same msg_id, until they do.

A loudspeaker or LED board confirms a command with `played`, `shown` or another final status.
A command the broker took may still never arrive (a broker without persistence restarted with it
queued), and a confirmation may be lost on its way back. So when a device channel hands
deliveries over for the first time, the dispatcher writes a `confirm` job for them, due after
the channel's `confirm_timeout_s`. Firing it (Scheduler._confirm) publishes again whatever is
still unconfirmed — terminals drop a msg_id they have carried out and say its final status
again — and writes the next round, the wait doubling up to `dispatch.backoff_cap_s`. Rounds end
when every delivery watched is confirmed or final, its warning is no longer in force (for a
warning or an update; an all-clear or a stop is published until its own end), or its first
publish's `not_after` has passed: a terminal would refuse it after that.

While the channel is not ready (broker down), a round waits, re-publishing and giving up nothing.
A re-publish is not an attempt: `dispatch.max_attempts` counts failures, not unconfirmed sends.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from warnd.backoff import backoff_s
from warnd.clock import parse_iso
from warnd.store import JobKind, NewJob, new_job, ts

# Delivery kinds that matter only while their warning is in force (all-clears and stops do not).
IN_FORCE_KINDS = ("warning", "update")
# States after which nothing more is published: confirmed, given up, or stopped.
FINAL = ("acknowledged", "dead", "cancelled")
# How often a round waiting for its channel looks again: soon after the broker is back, the
# commands it lost go out again, at the cost of one small transaction per round every 5 s.
NOT_READY_RECHECK_S = 5.0


def delay_s(round_no: int, timeout_s: float, cap_s: float, rng: random.Random | None = None) -> float:
    """Wait before round `round_no` (1, 2, …): the timeout, doubling, capped, spread up to a quarter."""
    # Never sooner than the timeout (a speaker needs that long to fetch and play the audio): the
    # cap is raised to it, and the spread only adds.
    return backoff_s(round_no, timeout_s, max(cap_s, timeout_s), rng, spread=(1.0, 1.25))


def chain_key(channel: str, first_id: int) -> str:
    """The key shared by every round of one chain (a batch's first sends of one warning)."""
    return f"confirm:{channel}:{first_id}"


def job(
    warning_id: str,
    chain: str,
    channel: str,
    round_no: int,
    watched: Iterable[tuple[int, datetime | str]],
    due: datetime,
    now: datetime,
    *,
    timeout_s: float,
    cap_s: float,
    suffix: str = "",
) -> NewJob:
    """A `confirm` job row: round `round_no` of a chain, watching (delivery id, publish-until) pairs."""
    return new_job(
        JobKind.CONFIRM,
        f"{chain}:r{round_no}{suffix}",
        warning_id,
        due=due,
        now=now,
        payload={
            "chain": chain,
            "channel": channel,
            "round": round_no,
            "timeout_s": timeout_s,
            "cap_s": cap_s,
            "deliveries": [[i, u if isinstance(u, str) else ts(u)] for i, u in watched],
        },
    )


@dataclass
class Round:
    """What a round decided: publish again, keep watching, give up."""

    republish: list[int] = field(default_factory=list)
    watch: list[tuple[int, str]] = field(default_factory=list)
    gave_up: list[dict[str, Any]] = field(default_factory=list)


def decide(
    rows: Iterable[Mapping[str, Any]],
    until: Mapping[int, str],
    in_force: bool,
    now: datetime,
    timeout_s: float,
) -> Round:
    """For each delivery watched: publish again, keep watching, or stop (pure; `now` is given).

    A delivery that showed life within the timeout (just claimed, or a `received` just now) is
    watched another round rather than published over a play in progress.
    """
    out = Round()
    quiet_since = ts(now - timedelta(seconds=timeout_s))
    for r in rows:
        if r["state"] in FINAL or (r["kind"] in IN_FORCE_KINDS and not in_force):
            continue
        end = until[r["id"]]
        if parse_iso(end) <= now:  # type: ignore[operator]  # `until` holds times, never None
            if r["state"] in ("sent", "delivered"):
                out.gave_up.append(dict(r))
            continue
        last = max(r.get("claimed_at") or "", r.get("delivered_at") or "")
        if r["state"] in ("sent", "delivered") and last <= quiet_since:
            out.republish.append(r["id"])
        # Pending, failed (a device's `failed` is retried by the dispatcher) or sending: watched.
        out.watch.append((r["id"], end))
    return out
