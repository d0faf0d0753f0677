"""Provider polling, owned by the core: an adapter says what one round is and how often; this loops.

Adapters never sleep or loop. A channel that must ask its provider for receipts and replies
(an office behind NAT, no callbacks) declares `poll_once` and an interval; `poll_loop` runs it
forever from the daemon's TaskGroup, backing off after failures.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from warnd.adapter import PermanentError, TransientError

log = structlog.get_logger("warnd.polling")

# After failures the interval grows by half per failure, to at most this: a provider away for an
# hour is asked every 5 minutes, not every few seconds.
MAX_INTERVAL_S = 300.0


def backoff_s(interval_s: float, failures: int) -> float:
    """The wait after `failures` failed rounds in a row (interval_s after a good one)."""
    if failures == 0:
        return interval_s
    return min(MAX_INTERVAL_S, interval_s * 1.5 ** min(10, failures))


async def poll_loop(
    name: str, poll_once: Callable[[], Awaitable[int]], interval_s: Callable[[], float]
) -> None:
    """Run `poll_once` every `interval_s()` forever; an error costs one round, not the loop."""
    failures = 0
    while True:
        try:
            await poll_once()
            failures = 0
        except (TransientError, PermanentError) as exc:
            failures += 1
            log.warning("poll.failed", poller=name, reason=exc.reason,
                        retry_in_s=backoff_s(interval_s(), failures))  # fmt: skip
        except Exception:
            # A poller bug must not stop warnd (and with it every other channel): say so, go on.
            failures += 1
            log.exception("poll.crashed", poller=name, retry_in_s=backoff_s(interval_s(), failures))
        await asyncio.sleep(backoff_s(interval_s(), failures))
