"""The Adapter protocol: one small base class every channel implements.

An adapter knows its wire protocol and nothing about policy. It never sleeps, loops or
retries: time belongs to the scheduler. It raises TransientError (try again later),
PermanentError (never) or AuthError (the channel is misconfigured: disable it and tell the
operator); the base class's `deliver` turns all of that into Outcomes.

A delivery a crash left `sending` may have reached the far end already, and so may one whose
send timed out or lost its connection after the request went out (TransientError with
`maybe_sent`): the far end may have taken it and only its answer was lost. Before sending such a
delivery again, `deliver` asks the adapter's `reconcile`: a Receipt means it is there, and it is
not sent twice; None means it was not sent (or the channel cannot tell), and it is sent again.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, ClassVar, cast, final

import aiohttp
import structlog
from aiohttp import web

from warnd.errors import AuthError as AuthError
from warnd.errors import NotReadyError as NotReadyError
from warnd.errors import PermanentError as PermanentError
from warnd.errors import TransientError as TransientError
from warnd.store import Delivery, Outcome

if TYPE_CHECKING:
    from warnd.clock import Clock, Wakeup
    from warnd.config import Settings
    from warnd.directory import Directory
    from warnd.feedback import Feedback
    from warnd.metrics import Metrics
    from warnd.mqtt.devices import DeviceHub
    from warnd.mqtt.link import MqttLink
    from warnd.store import Store

log = structlog.get_logger("warnd.adapter")


# The errors live in warnd.errors (the MQTT link raises them too, and must not import this
# module); adapters name them from here.
def retry_after_s(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


def classify_http(status: int, reason: str, retry_after_s: float | None = None) -> Exception | None:
    """The one HTTP status table every HTTP adapter shares: None for 2xx, else the error to raise.

    429 and 5xx are transient (not before `retry_after_s`); 401 and 403 are auth failures that
    disable the channel; any other status is permanent. Vendor codes in the body, where a vendor
    has them, are mapped by the adapter before it falls back to this.
    """
    if 200 <= status < 300:
        return None
    if status == 429 or status >= 500:
        return TransientError(reason, retry_after_s)
    if status in (401, 403):
        return AuthError(reason)
    return PermanentError(reason)


@dataclass(frozen=True)
class Limits:
    """What a channel can take.

    Args:
        max_text_chars: longest text body; longer is truncated by `deliver`.
        concurrency: sends in flight at once.
        batch_size: deliveries handed over per call.
        claim_ahead: the dispatcher claims the next batch while this one is sent. For a channel
            whose batch is on the wire in milliseconds (a broker's), where the claim's store trip
            would otherwise sit between sends. Not for a paced provider: its next batch would be
            held `sending` for the seconds this one takes, and a crash meanwhile would leave all
            of it in doubt, to be looked up at the provider before it is sent.
    """

    max_text_chars: int = 4000
    concurrency: int = 16
    batch_size: int = 500
    claim_ahead: bool = False


@dataclass(frozen=True)
class Message:
    """One delivery with the warning content it carries."""

    delivery: Delivery
    warning: dict[str, Any]

    @property
    def drill(self) -> bool:
        """True for exercise and test warnings."""
        return self.warning.get("status", "actual") != "actual"


@dataclass(frozen=True)
class Receipt:
    """A successful hand-over: `sent`, or `delivered` when the far end confirms at once."""

    state: str = "sent"
    provider_ref: str | None = None
    # Which provider took it (twilio, aliyun, tencent), for channels that have several.
    provider: str | None = None


@dataclass(frozen=True)
class QuotaUse:
    """Today's messages to one number from a provider that allows each number a daily quota.

    Args:
        address: the number.
        provider: the provider that counts it (aliyun, tencent).
        used: messages that provider sent the number today, counted locally.
        limit: the provider's daily quota per number.
    """

    address: str
    provider: str
    used: int
    limit: int


@dataclass(frozen=True)
class Webhook:
    """An HTTP endpoint a channel needs (a provider's callback, media its devices fetch); the API mounts it.

    Adapters declare their endpoints with this plain dataclass; they never import warnd.api.

    Args:
        method: HTTP method.
        path: aiohttp path pattern.
        handler: the coroutine serving it.
        summary: one line for the OpenAPI document.
        role: least role needed; None: no token (the endpoint checks its caller its own way, a
            provider's signature or a path token, or serves what anyone may fetch).
        body_types: media types the body may come in.
        query: query parameters the handler reads, and what each means.
        responses: the endpoint's own status codes and what they mean.
    """

    method: str
    path: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    summary: str
    role: str | None = None
    body_types: tuple[str, ...] = ("application/json",)
    query: dict[str, str | dict[str, Any]] = field(default_factory=dict)
    responses: dict[int, str | dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class AdapterContext:
    """What the composition root (warnd.app) lends every adapter; each is built once, there.

    Args:
        settings: the loaded settings.
        directory: the current directory (replaced on reload).
        http: the one shared HTTP session (HTTP channels send through it, never their own).
        feedback: acks from the far end go in here.
        store: read-only use: what is in force, a delivery by id, replies.
        clock: the daemon's time.
        metrics: what only an adapter sees (audio that could not be rendered).
        wake: set when the channel becomes ready, so the dispatcher sends what waited.
        mqtt: the one device link, shared by every MQTT channel.
        devices: the device hub on that link (acks and statuses of every device).
    """

    settings: Settings
    directory: Callable[[], Directory]
    http: aiohttp.ClientSession
    feedback: Feedback
    store: Store
    clock: Clock
    metrics: Metrics
    wake: Wakeup
    mqtt: MqttLink
    devices: DeviceHub


class Adapter(abc.ABC):
    """Base class for channels.

    Args:
        ctx: what the daemon lends the adapter.
    """

    kind: ClassVar[str]
    limits: ClassVar[Limits] = Limits()
    # Whether its messages carry signed ack links (warnd.acklink): warnd then serves /ack/{token}.
    sends_ack_links: ClassVar[bool] = False

    def __init__(self, ctx: AdapterContext) -> None:
        """Keep the context; connect in `start()`."""
        self.ctx = ctx
        self.disabled_reason: str | None = None
        # Set while start() said "not ready" (warnd.setup retries it on a backoff): nothing is
        # claimed for the channel and /readyz names the reason.
        self.not_ready_reason: str | None = None
        self._last_error: dict[str, str] = {}

    @classmethod
    def configured(cls, settings: Settings) -> bool:
        """Whether the config holds what this channel needs to start."""
        return True

    async def start(self) -> None:
        """Connect or prepare.

        Raise TransientError (NotReadyError) when the far end cannot be reached yet: warnd runs,
        and start is tried again later. Raise AuthError when credentials are wrong: the channel
        is disabled and the operator told. Anything else stops warnd (a bug, a broken install).
        """

    async def aclose(self) -> None:
        """Release connections."""

    def webhooks(self) -> list[Webhook]:
        """HTTP endpoints this channel needs (provider callbacks, media); none by default."""
        return []

    def background(self) -> list[tuple[str, Any]]:
        """Named coroutines this channel runs alongside the dispatcher; none by default."""
        return []

    def prepare(self, warning: dict[str, Any], kind: str, context: dict[str, Any] | None = None) -> None:
        """A step with `kind` deliveries (of message `context`) on this channel was planned, not yet written.

        Start, without waiting for it, what sending will need (the loudspeaker channel renders its
        audio while the step's deliveries are written). Nothing by default.
        """

    def ready(self) -> bool:
        """Whether the channel can send right now (/readyz; the dispatcher claims nothing until it can)."""
        return self.disabled_reason is None

    def confirm_timeout_s(self) -> float | None:
        """How long a receiver has to confirm before the message is published again; None: never.

        Only channels whose receivers drop a msg_id they have already carried out may publish a
        message again (MQTT terminals); the dispatcher and the scheduler keep the time.
        """
        return None

    def republish_until(self, message: Message, first_sent: datetime) -> datetime:
        """The last moment a message first sent at `first_sent` is worth publishing again.

        The not_after its first publish carried: a receiver would refuse it afterwards.
        """
        return first_sent

    async def quota_use(self, addresses: Sequence[str]) -> list[QuotaUse]:
        """Today's use of each provider's daily quota per number by these addresses; none by default.

        Only addresses a provider with a quota has sent to today are listed (the preview warns of
        those near their quota: the next warning may be the message it blocks).
        """
        return []

    async def reconcile(self, message: Message) -> Receipt | None:
        """Look up a send a crash left in doubt (`delivery.maybe_sent_at`): its Receipt, or None to send.

        Raise TransientError when the far end cannot say now: never send blindly what may be
        there. The default (None: send again) suits channels whose receivers recognise a repeat:
        an MQTT terminal drops a command whose msg_id it has already taken. A channel with no way
        to look a message up (WeCom) also keeps the default, and may then repeat a message.
        """
        return None

    @abc.abstractmethod
    async def send(self, message: Message) -> Receipt:
        """Send one message; raise TransientError, PermanentError or AuthError on failure."""

    async def send_batch(self, messages: Sequence[Message]) -> list[Receipt | BaseException]:
        """Send many; the default runs `send` for each with bounded concurrency."""
        gate = asyncio.Semaphore(self.limits.concurrency)

        async def one(m: Message) -> Receipt:
            async with gate:
                return await self.send(m)

        return list(await asyncio.gather(*(one(m) for m in messages), return_exceptions=True))

    @final
    async def deliver(self, messages: Sequence[Message], *, timeout_s: float) -> list[Outcome]:
        """Send a batch and account for every message: the one place outcomes are made."""
        started = time.perf_counter()
        looked_up: dict[int, bool] = {}
        try:
            # In this task (asyncio.timeout, not wait_for): a shutdown's cancel reaches the send.
            # (Python 3.11.2's timeout mistakes its own expiry for a cancel when the task already
            # holds one it has not raised; no dispatcher code keeps a cancel, so none does.)
            async with asyncio.timeout(timeout_s):
                results, looked_up = await self._reconcile_then_send(messages)
        except TimeoutError:
            # Whatever of the batch went out may be at the far end: the retry looks before it sends.
            results = [TransientError(f"no answer within {timeout_s:g} s", maybe_sent=True)] * len(messages)
        except (AuthError, PermanentError, TransientError) as exc:
            results = [exc] * len(messages)
        except Exception as exc:
            # An adapter bug must not lose deliveries: retry them, and say what broke.
            log.exception("adapter.crashed", channel=self.kind)
            results = [TransientError(f"adapter error: {type(exc).__name__}")] * len(messages)
        duration_ms = round((time.perf_counter() - started) * 1000, 1)
        outcomes: list[Outcome] = []
        lines = _LogLines()
        for m, r in zip(messages, results, strict=True):
            d = m.delivery
            found = looked_up.get(d.id)
            if found is not None:
                # The send in doubt was found at the far end (and not repeated), or it was not there.
                lines.add("info", "delivery.reconciled", d, found=found)
            if isinstance(r, Receipt):
                outcomes.append(Outcome(d.id, r.state, provider_ref=r.provider_ref, republish=d.republish))
                if not found:
                    # A device that did not confirm is sent the same msg_id again (not an attempt).
                    again = {"republished": True} if d.republish else {}
                    lines.add("info", "delivery.sent", d, state=r.state, duration_ms=duration_ms, **again)
            elif isinstance(r, NotReadyError):
                outcomes.append(Outcome(d.id, "pending", error=r.reason, refund=not d.republish))
                if d.last_error != r.reason:
                    lines.add("info", "delivery.deferred", d, reason=r.reason)
            elif isinstance(r, AuthError):
                self.disabled_reason = r.reason
                outcomes.append(Outcome(d.id, "failed", error=f"auth: {r.reason}"))
                lines.add("error", "adapter.auth_failed", d, reason=r.reason)
            elif isinstance(r, PermanentError):
                outcomes.append(Outcome(d.id, "dead", error=r.reason))
                lines.add("warning", "delivery.dead", d, reason=r.reason)
            elif isinstance(r, TransientError):
                failed = Outcome(d.id, "failed", error=r.reason, retry_after_s=r.retry_after_s,
                                 maybe_sent=r.maybe_sent)  # fmt: skip
                outcomes.append(failed)
                # A retry is logged only when its error changes: a long outage is one line, not thousands.
                if d.last_error != r.reason:
                    lines.add("warning", "delivery.failed", d, reason=r.reason, retry_after_s=r.retry_after_s)
            else:
                outcomes.append(Outcome(d.id, "failed", error=f"adapter error: {type(r).__name__}"))
                lines.add("error", "delivery.adapter_error", d, error=type(r).__name__, detail=str(r)[:200])
        lines.emit(self.kind)
        return outcomes

    @final
    async def _reconcile_then_send(
        self, messages: Sequence[Message]
    ) -> tuple[list[Receipt | BaseException], dict[int, bool]]:
        """Look up the sends in doubt, send the rest; also delivery id → found, per lookup that answered."""
        results: list[Receipt | BaseException | None] = [None] * len(messages)
        looked_up: dict[int, bool] = {}
        doubtful = [i for i, m in enumerate(messages) if m.delivery.maybe_sent_at is not None]
        # A channel that cannot look anything up sends again without pretending to have looked.
        if doubtful and type(self).reconcile is not Adapter.reconcile:
            gate = asyncio.Semaphore(self.limits.concurrency)

            async def look(m: Message) -> Receipt | None:
                """One lookup, with no more in flight than sends may be."""
                async with gate:
                    return await self.reconcile(m)

            answers = await asyncio.gather(*(look(messages[i]) for i in doubtful), return_exceptions=True)
            for i, r in zip(doubtful, answers, strict=True):
                # A Receipt: it is there. An error: nobody can tell yet, so it waits for a retry.
                results[i] = r
                if not isinstance(r, BaseException):
                    looked_up[messages[i].delivery.id] = r is not None
        rest = [i for i, r in enumerate(results) if r is None]
        if rest:
            sent = await self.send_batch([messages[i] for i in rest])
            for i, r in zip(rest, sent, strict=True):
                results[i] = r
        return cast("list[Receipt | BaseException]", results), looked_up


class _LogLines:
    """A batch's outcome log lines, one per message rather than one per receiver.

    Deliveries that share a msg_id (a village's speakers on one village command) and end the
    same way make one line with `receivers`; a lone delivery keeps its `target` and
    `delivery_id`. 10,000 speakers are then 1,000 lines, under journald's default rate limit
    (10,000 lines per 30 s), instead of a burst that would drop warnd's other logs.
    """

    def __init__(self) -> None:
        """No lines yet."""
        self.groups: dict[tuple[Any, ...], tuple[str, str, dict[str, Any], list[Delivery]]] = {}

    def add(self, level: str, event_name: str, d: Delivery, **fields: Any) -> None:
        """One delivery's outcome."""
        key = (level, event_name, d.msg_id, *sorted(fields.items()))
        group = self.groups.get(key)
        if group is None:
            self.groups[key] = (level, event_name, fields, [d])
        else:
            group[3].append(d)

    def emit(self, channel: str) -> None:
        """Write the lines."""
        for level, event_name, fields, ds in self.groups.values():
            first = ds[0]
            where: dict[str, Any]
            if len(ds) == 1:
                where = {"target": first.target, "delivery_id": first.id}
            else:
                villages = {d.village for d in ds}
                if level != "info":  # a failure names every receiver it hit
                    fields = {**fields, "targets": [d.target for d in ds]}
                where = (
                    {"receivers": len(ds), "village": first.village}
                    if len(villages) == 1
                    else {"receivers": len(ds)}
                )
            getattr(log, level)(
                event_name,
                warning_id=first.warning_id,
                msg_id=first.msg_id,
                channel=channel,
                **where,
                attempt=max(d.attempts for d in ds),
                **fields,
            )


def truncate(text: str, limit: int) -> str:
    """Cut text to limit characters, marking the cut with an ellipsis."""
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"
