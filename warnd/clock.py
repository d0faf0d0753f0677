"""Time, injectable: only the loops that own the clock read it; tests run 48 hours in milliseconds."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """What the daemon's loops need from time."""

    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait for this many seconds of this clock's time."""
        ...


class SystemClock:
    """Wall-clock time."""

    def now(self) -> datetime:
        """The current UTC time."""
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        """Sleep on the event loop."""
        await asyncio.sleep(max(0.0, seconds))


class FakeClock:
    """A clock that moves only when told to; sleeping yields to the loop but advances nothing.

    Args:
        start: the initial time (aware).
    """

    def __init__(self, start: datetime | None = None) -> None:
        """Start at `start` or at 2026-07-01 00:00 UTC."""
        self._now = start or datetime(2026, 7, 1, tzinfo=UTC)

    def now(self) -> datetime:
        """The fake time."""
        return self._now

    def advance(self, seconds: float = 0, **delta: float) -> datetime:
        """Move time forward by seconds (or timedelta keywords) and return the new time."""
        self._now += timedelta(seconds=seconds, **delta)
        return self._now

    def set(self, when: datetime) -> None:
        """Jump to an absolute time."""
        self._now = when

    async def sleep(self, seconds: float) -> None:
        """Yield briefly: fake time does not pass by waiting."""
        await asyncio.sleep(min(seconds, 0.01))


def iso(dt: datetime | None) -> str | None:
    """An aware datetime as ISO 8601 with offset, or None."""
    return dt.isoformat() if dt is not None else None


def parse_iso(text: str | None) -> datetime | None:
    """Parse ISO 8601 written by `iso`."""
    return datetime.fromisoformat(text) if text else None


class Wakeup:
    """Wakes every loop waiting for new work; a wake that comes before the wait is not lost."""

    def __init__(self) -> None:
        """No waiters yet."""
        self._waiters: set[asyncio.Event] = set()

    def set(self) -> None:
        """New work was committed: wake all waiters."""
        for event in self._waiters:
            event.set()

    def waiter(self) -> asyncio.Event:
        """Register interest before checking for work; pass the event to `wait`."""
        event = asyncio.Event()
        self._waiters.add(event)
        return event

    async def wait(self, event: asyncio.Event, timeout_s: float) -> None:
        """Wait on a registered event for at most timeout_s, then unregister it."""
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for drops a cancel that comes in the
        # same loop turn as the event, and the scheduler would then run on through a shutdown.
        try:
            if timeout_s > 0:
                async with asyncio.timeout(timeout_s):
                    await event.wait()
        except TimeoutError:
            pass
        finally:
            self._waiters.discard(event)
