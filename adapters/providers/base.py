"""The provider layer under the `sms` and `voice` channels: one small interface, declared capabilities.

A channel (adapters/sms.py, adapters/voice.py) is one Adapter to the dispatcher; under it, the
providers configured for it (`[sms] providers = ["aliyun", "tencent"]`) are tried in that order.
A provider sends a batch and answers, per message, a Receipt (with its own id for the message) or
the error; it parses its callbacks into receipts, replies and key presses, pulls them when it
cannot be called back, and looks a send in doubt up by warnd's own id before it is made again.

What a provider can do is declared, not discovered by failing: free text or templates only, how
many numbers one call takes, how fast it may be called (kept by warnd.pacing), a daily quota
per number (counted locally, `Provider.quota_used`; the preview warns of numbers near it).

Fallback: when a provider fails a message in a way that proves it was not sent (an outage that
refused the connection, a quota, a refused number, a provider disabled for bad credentials), the
next provider sends it in the same batch; the delivery records which provider sent it. A failure
that may have sent it (a timeout after the request went out) is never passed on: the retry looks
it up first (Adapter.reconcile), so nobody gets two.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar
from zoneinfo import ZoneInfo

import structlog

from warnd.adapter import (
    AdapterContext,
    AuthError,
    Limits,
    Message,
    PermanentError,
    Receipt,
    TransientError,
    Webhook,
)
from warnd.log import mask_phones
from warnd.pacing import Pacer

if TYPE_CHECKING:
    from warnd.config import Settings
    from warnd.store import Delivery

log = structlog.get_logger("warnd.providers")

# The providers with daily quotas are Chinese: their day (and so their count) starts at midnight
# Beijing time, whatever zone the township's policy names.
QUOTA_DAY = ZoneInfo("Asia/Shanghai")


@dataclass(frozen=True)
class Capabilities:
    """What a provider can take.

    Args:
        free_text: whether it sends any text (Twilio) or only approved templates (Aliyun, Tencent).
        batch_size: numbers one call takes.
        rate_per_s: calls per second per sender (kept by warnd.pacing); None: not limited here.
        daily_quota: messages one number may get from this provider per day (per template at the
            Chinese providers); None: no quota.
        concurrency: calls in flight at once.
    """

    free_text: bool = True
    batch_size: int = 1
    rate_per_s: float | None = None
    daily_quota: int | None = None
    concurrency: int = 16


class Provider:
    """One provider of one channel (Twilio SMS, Aliyun voice …).

    Args:
        ctx: what the daemon lends the channel.
    """

    name: ClassVar[str]
    channel: ClassVar[str]
    caps: Capabilities = Capabilities()
    # What the dispatcher may hand the channel at once when this provider is its first.
    limits: Limits = Limits()

    def __init__(self, ctx: AdapterContext, pacer: Pacer) -> None:
        """Keep the context and the channel's pacer; connect in `start()`."""
        self.ctx = ctx
        self.pacer = pacer
        self.disabled_reason: str | None = None
        # Whether a provider after this one can send what this one will not (set by the channel):
        # a local quota may then hand a message on rather than spend the provider's quota on it.
        self.hand_on = False

    @classmethod
    def configured(cls, settings: Settings) -> bool:
        """Whether the config holds what this provider needs to start."""
        return False

    def daily_quota(self) -> int | None:
        """Messages one number may get from this provider per day, now (a reload may change it)."""
        return self.caps.daily_quota

    async def quota_used(self, addresses: Sequence[str]) -> dict[str, int]:
        """Messages this provider sent each address today (the quota's day, Beijing time), if it counts."""
        if self.daily_quota() is None or self.ctx.store is None:
            return {}
        day = self.ctx.clock.now().astimezone(QUOTA_DAY).replace(hour=0, minute=0, second=0, microsecond=0)
        return await self.ctx.store.provider_sends_since(self.name, self.channel, addresses, day)

    async def start(self) -> None:
        """Build the client; raise AuthError when credentials are missing or wrong."""

    async def aclose(self) -> None:
        """Release connections."""

    def webhooks(self) -> list[Webhook]:
        """This provider's callbacks (receipts, replies, key presses); none by default."""
        return []

    def poll_interval_s(self) -> float | None:
        """How often to pull receipts and replies; None when they are pushed (or there is nothing)."""
        return None

    async def poll_once(self) -> int:
        """One pulling round; returns how many changes it found."""
        return 0

    async def send(self, message: Message) -> Receipt:
        """Send one message; raise TransientError, PermanentError or AuthError."""
        raise NotImplementedError

    async def send_batch(self, messages: Sequence[Message]) -> list[Receipt | BaseException]:
        """Send many; the default runs `send` for each with bounded concurrency."""
        gate = asyncio.Semaphore(self.caps.concurrency)

        async def one(m: Message) -> Receipt:
            """One send, no more in flight than the provider takes."""
            async with gate:
                return await self.send(m)

        return list(await asyncio.gather(*(one(m) for m in messages), return_exceptions=True))

    async def reconcile(self, message: Message) -> Receipt | None:
        """Look up a send in doubt by our own id: its Receipt, or None when it was not sent.

        Raise TransientError when the provider cannot say now.
        """
        return None


def passes_on(result: Receipt | BaseException) -> bool:
    """Whether a failure lets the next provider send the message: it surely did not go out.

    A TransientError that may have sent it (a timeout after the request left) stays with this
    provider: the retry looks it up first. Everything else that is an error passes on: an
    outage that refused the connection, a quota or rate refusal, a number this provider will
    not take, this provider's credentials.
    """
    if isinstance(result, Receipt):
        return False
    if isinstance(result, TransientError):
        return not result.maybe_sent
    return isinstance(result, AuthError | PermanentError)


def tagged(result: Receipt | BaseException, provider: str) -> Receipt | BaseException:
    """A Receipt that says which provider sent it."""
    if isinstance(result, Receipt) and result.provider is None:
        return Receipt(result.state, result.provider_ref, provider)
    return result


def out_id(d: Delivery) -> str:
    """Our id for the deliveries planned together (a step to many people): Aliyun's OutId.

    The same on every attempt of a delivery; a person has at most one delivery of a warning's
    step, kind and planning moment on a channel, so OutId and number name one delivery.
    """
    planned = d.created_at.isoformat() if d.created_at else ""
    return hashlib.sha256(f"{d.warning_id}|{d.step}|{d.kind}|{planned}".encode()).hexdigest()[:24]


# A mainland mobile number written without +86, as Aliyun and Tencent quote them.
_NATIONAL = re.compile(r"(?<!\d)1[3-9]\d{9}(?!\d)")


def mask_numbers(text: str) -> str:
    """A provider's text with every phone number masked, E.164 or national (138****0001)."""
    return _NATIONAL.sub(lambda m: m[0][:3] + "****" + m[0][-4:], mask_phones(text))
