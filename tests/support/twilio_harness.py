"""A harness with the real Twilio adapters talking to the loopback FakeTwilio."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from tests.fakes.twilio import FakeTwilio
from tests.support.harness import Harness

FROM = "+15005550006"


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
