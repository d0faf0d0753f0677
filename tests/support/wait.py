"""One bounded poll for everything a test waits on in real time (a broker, a process, another thread).

A fixed sleep either waits too long or, on a loaded machine, not long enough; these wait for the
condition itself and fail naming it. `wait_for` is the blocking form (tests that drive processes),
`until` the asyncio form (probes may be coroutines). Both return the probe's last value.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

_TRUTHY: Any = object()


class _Poll:
    """The shared rule: probe, compare, give up at the deadline with what the probe last said."""

    def __init__(self, timeout_s: float, what: str, want: Any) -> None:
        """Start the clock (monotonic, real time: a test's fake clock does not move it)."""
        self.deadline = time.monotonic() + timeout_s
        self.timeout_s, self.what, self.want = timeout_s, what, want
        self.last: Any = None

    def met(self, value: Any) -> bool:
        """Whether this probe value ends the wait."""
        self.last = value
        return bool(value) if self.want is _TRUTHY else value == self.want

    def expired(self) -> bool:
        """Past the deadline."""
        return time.monotonic() >= self.deadline

    def failure(self) -> AssertionError:
        """The error naming what never happened, and what was seen instead."""
        wanted = "" if self.want is _TRUTHY else f" (wanted {self.want!r})"
        return AssertionError(f"{self.what}: not within {self.timeout_s:g} s{wanted}; last {self.last!r}")


def wait_for(
    predicate: Callable[[], Any],
    timeout_s: float = 30.0,
    what: str = "condition",
    poll_s: float = 0.1,
    *,
    want: Any = _TRUTHY,
) -> Any:
    """Poll predicate() until truthy (or == want), at most timeout_s real time; else AssertionError."""
    poll = _Poll(timeout_s, what, want)
    while True:
        value = predicate()
        if poll.met(value):
            return value
        if poll.expired():
            raise poll.failure()
        time.sleep(poll_s)


async def until(
    predicate: Callable[[], Any],
    timeout_s: float = 10.0,
    what: str = "condition",
    poll_s: float = 0.02,
    *,
    want: Any = _TRUTHY,
) -> Any:
    """Await predicate() (plain or coroutine) until truthy (or == want), bounded; else AssertionError."""
    poll = _Poll(timeout_s, what, want)
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if poll.met(value):
            return value
        if poll.expired():
            raise poll.failure()
        await asyncio.sleep(poll_s)
