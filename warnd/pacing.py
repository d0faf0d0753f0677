"""Declared send rates, kept by the core: a provider says how fast it may be called, warnd spaces it.

An adapter never sleeps: a provider declares its rate (`rate_per_s` per sender) and the channel
binds that sender's `Spacer` around a send (`bound`). The provider's HTTP client asks for the
slot right before its request goes out (`slot`) and says when the request is on the wire
(`on_wire`), so the gap is measured where the provider measures it. Sends that are not bound to
a spacer (lookups, polls) go out at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator, Callable, Iterator


class Spacer:
    """A rate limiter for one sender: consecutive sends at least 1/rate apart, no burst.

    Twilio (and its fake) admit one message per 1/rate per sender and answer 429 to anything
    sooner, so the gap between two requests is what counts, not an average. aiolimiter's leaky
    bucket wakes waiters by timer, and the event loop's timers fire up to ~1 ms late (epoll
    waits in whole milliseconds): at 100/s that costs 6 % of the rate. This spacer sleeps until
    just before the slot and yields until it is reached, so a gap is 1/rate plus microseconds.

    Args:
        rate_per_s: sends per second.
        margin: extra share of the gap that absorbs jitter between here and the provider's clock.
    """

    # How early the timer is set, to be on time despite its lateness (see above).
    _EARLY_S = 0.002

    def __init__(self, rate_per_s: float, margin: float) -> None:
        """Start with the first slot free."""
        self.interval_s = (1.0 + margin) / rate_per_s
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def acquire(self) -> Callable[[], None]:
        """Wait for this caller's slot; returns `sent`, to call once the request is on the wire.

        Callers go one at a time, and the next slot is set only once this request is written: a
        pause between here and the socket (a busy loop, a GC) delays the next send instead of
        squeezing two together.
        """
        await self._lock.acquire()
        loop = asyncio.get_running_loop()
        try:
            delay = self._next - loop.time()
            if delay > self._EARLY_S:
                await asyncio.sleep(delay - self._EARLY_S)
            while loop.time() < self._next:  # noqa: ASYNC110 - yields for under _EARLY_S, on purpose
                await asyncio.sleep(0)
        except BaseException:
            self._lock.release()
            raise
        released, done = loop.time(), False

        def sent() -> None:
            """Set the next slot and let the next caller wait for it (once).

            One interval after this slot, as long as the request left promptly; at least half an
            interval after it actually left, when something held it up (the provider's queue has
            room for one early request, not for a pile-up behind a pause).
            """
            nonlocal done
            if not done:
                done = True
                self._next = max(released + self.interval_s, loop.time() + self.interval_s / 2)
                self._lock.release()

        return sent


class Pacer:
    """The spacers of one channel's senders, each at the rate its provider declares.

    Args:
        margin: share of each gap kept free (see Spacer).
    """

    def __init__(self, margin: float) -> None:
        """No sender seen yet."""
        self.margin = margin
        self._spacers: dict[tuple[str, str], Spacer] = {}

    def spacer(self, provider: str, sender: str, rate_per_s: float) -> Spacer:
        """The spacer of one sender of one provider (a number, a messaging service, an account)."""
        key = (provider, sender)
        if key not in self._spacers:
            self._spacers[key] = Spacer(rate_per_s, self.margin)
        return self._spacers[key]


# The spacer of the sender this task is sending for, and the `sent` callback of the slot it holds.
_SPACER: contextvars.ContextVar[Spacer | None] = contextvars.ContextVar("warnd_spacer", default=None)
_ON_WIRE: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar(
    "warnd_on_wire", default=None
)


@contextlib.contextmanager
def bound(spacer: Spacer | None) -> Iterator[None]:
    """Requests made in this block wait for `spacer`'s slots (None: they go out at once)."""
    token = _SPACER.set(spacer)
    try:
        yield
    finally:
        _SPACER.reset(token)


@contextlib.asynccontextmanager
async def slot() -> AsyncIterator[None]:
    """Hold the bound sender's next slot around one request (nothing when none is bound)."""
    spacer = _SPACER.get()
    sent = await spacer.acquire() if spacer is not None else None
    token = _ON_WIRE.set(sent)
    try:
        yield
    finally:
        _ON_WIRE.reset(token)
        if sent is not None:
            sent()  # no-op when on_wire already ran; frees the slot if the request failed early


def on_wire() -> None:
    """The request of the slot this task holds is written: the sender's next interval starts."""
    sent = _ON_WIRE.get()
    if sent is not None:
        sent()
