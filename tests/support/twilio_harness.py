"""A harness with the real Twilio adapters talking to the loopback FakeTwilio."""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from tests.fakes.twilio import FakeTwilio
from tests.support.harness import Harness

FROM = "+15005550006"

T = TypeVar("T")


@asynccontextmanager
async def twilio_harness(
    tmp_path: Path,
    adapters: list[Any],
    *,
    webhooks: bool = True,
    directory: dict[str, Any] | None = None,
    twilio: dict[str, Any] | None = None,
) -> AsyncIterator[tuple[Harness, FakeTwilio]]:
    """A started harness with these adapter classes, and the fake they send to.

    With webhooks, `[twilio] public_base_url` is the harness's own test server, so the fake's
    signed callbacks reach warnd over real HTTP; without, warnd is in polling mode.
    """
    async with FakeTwilio() as fake:
        settings = {
            "twilio": {
                "account_sid": fake.account_sid,
                "auth_token": fake.auth_token,
                "from_number": FROM,
                "api_base": fake.base_url,
                "rate_per_s": 200,
                "calls_per_s": 200,
                **(twilio or {}),
            }
        }
        h = Harness(tmp_path, channels=(), directory=directory, settings=settings, adapters=adapters)
        await h.start()
        try:
            if webhooks:
                h.settings.twilio.public_base_url = hook_url(h, "")
            yield h, fake
        finally:
            await h.close()


def hook_url(h: Harness, path: str) -> str:
    """The public URL of a path on the harness's test server."""
    return str(h.client.make_url(path)).rstrip("/") if not path else str(h.client.make_url(path))


async def deliveries(h: Harness, wid: str, channel: str) -> dict[str, dict[str, Any]]:
    """A warning's deliveries of one channel, by target."""
    return {d["target"]: d for d in await h.store.deliveries_for(wid) if d["channel"] == channel}


class FakeTwilioThread:
    """A FakeTwilio serving from its own thread and event loop, for tests that SIGKILL warnd.

    The fake must outlive the daemon it answers: in a thread of the test process, a killed warnd
    subprocess takes nothing of it along. Read its state through `run`, in its own loop, never
    by iterating its dicts from the test's thread while it writes them.

    Args:
        kwargs: passed to FakeTwilio.
    """

    def __init__(self, **kwargs: Any) -> None:
        """Build the fake; `start()` serves it."""
        self.fake = FakeTwilio(**kwargs)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fake-twilio", daemon=True)

    def start(self) -> FakeTwilioThread:
        """Start the thread and the fake's server; its URL is in self.fake.base_url."""
        self._thread.start()
        self.run(self.fake.start)
        return self

    def run(self, fn: Callable[[], Awaitable[T] | T], timeout_s: float = 10) -> T:
        """Call fn in the fake's loop (awaiting it if it is a coroutine function) and return its result."""

        async def call() -> T:
            """fn, in the fake's loop."""
            result = fn()
            return await result if inspect.isawaitable(result) else result  # type: ignore[return-value]

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout_s)

    def close(self) -> None:
        """Stop the server, the loop and the thread."""
        self.run(self.fake.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def __enter__(self) -> FakeTwilioThread:
        """Start."""
        return self.start()

    def __exit__(self, *exc: object) -> None:
        """Close."""
        self.close()
