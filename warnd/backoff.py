"""The one backoff rule: how long to wait before the next try after failures in a row.

Every retry in warnd uses it — a failed delivery (dispatcher, reported failures), a feed poll that
failed, the next confirmation round — each with its own base, cap and spread:

    delay = min(cap_s, base_s · factor^(attempt − 1)) · uniform(low, high)

`attempt` counts from 1 (the first retry waits about `base_s`). The random factor (`spread`)
keeps a thousand retries that failed together from coming back together: (0.5, 1.0), the
default, takes up to half off ("equal jitter": never sooner than half the ceiling, so a provider
that is down is not hammered); (0.0, 1.0) is full jitter; (1.0, 1.25) only ever adds, for waits
that must not be shorter than their base (a speaker needs the whole timeout to play).
"""

from __future__ import annotations

import random

# Past this many doublings the ceiling is the cap for any sane base; bounding the exponent keeps
# a failure count in the thousands from overflowing a float.
MAX_EXPONENT = 64


def backoff_s(
    attempt: int,
    base_s: float,
    cap_s: float,
    rng: random.Random | None = None,
    *,
    factor: float = 2.0,
    spread: tuple[float, float] = (0.5, 1.0),
) -> float:
    """Seconds to wait before retry `attempt` (1, 2, …): base_s·factor^(attempt−1), capped, jittered."""
    exponent = min(max(0, attempt - 1), MAX_EXPONENT)
    ceiling = min(cap_s, base_s * factor**exponent)
    low, high = spread
    return ceiling * (rng or random).uniform(low, high)


def retry_delay_s(
    attempt: int,
    retry_after_s: float | None,
    *,
    base_s: float,
    cap_s: float,
    rng: random.Random | None = None,
) -> float:
    """The backoff (up to half off, so retries after an outage spread), never sooner than Retry-After."""
    return max(backoff_s(attempt, base_s, cap_s, rng), retry_after_s or 0.0)
