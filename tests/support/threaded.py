"""A loopback fake served from its own thread and event loop, for tests that SIGKILL warnd.

The fake must outlive the daemon it answers: in a thread of the test process, a killed warnd
subprocess takes nothing of it along. Read its state through `run`, in its own loop, never by
iterating its lists and dicts from the test's thread while it writes them.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

F = TypeVar("F")
T = TypeVar("T")


class ThreadedFake(Generic[F]):
    """Serve any fake with `async start() -> base URL` and `async close()` from a thread.

    Args:
        fake: the fake (FakeTwilio, FakeWecom …), not yet started.
    """

    def __init__(self, fake: F) -> None:
        """Keep the fake; `start()` serves it."""
        self.fake = fake
        self.base_url = ""
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="threaded-fake", daemon=True)

    def start(self) -> ThreadedFake[F]:
        """Start the thread and the fake's server; its URL goes to self.base_url."""
        self._thread.start()
        self.base_url = self.run(self.fake.start)  # type: ignore[attr-defined]
        return self

    def run(self, fn: Callable[[], Awaitable[T] | T], timeout_s: float = 30) -> T:
        """Call fn in the fake's loop (awaiting it if it is a coroutine function) and return its result."""

        async def call() -> T:
            """fn, in the fake's loop."""
            result = fn()
            return await result if inspect.isawaitable(result) else result  # type: ignore[return-value]

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout_s)

    def close(self) -> None:
        """Stop the server, the loop and the thread."""
        self.run(self.fake.close)  # type: ignore[attr-defined]
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def __enter__(self) -> ThreadedFake[F]:
        """Start."""
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        """Close."""
        self.close()
