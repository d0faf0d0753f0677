"""What the Twilio SMS and voice providers share: credentials, the SDK client, error classes,
the sender whose declared rate warnd.pacing keeps, webhook signature checks and polling.

Twilio reaches warnd in one of two ways. With `[twilio] public_base_url` set, it posts status
callbacks, inbound SMS and key presses to `/hooks/twilio/...`, each signed with the account's
auth token (X-Twilio-Signature), which warnd checks against that public URL. Without it (an
office behind NAT), warnd polls the REST API for message and call status and inbound replies;
a key press in a call is then invisible, because Twilio keeps no REST record of gathered digits.

A message or call a crash left in doubt is looked up in Twilio's lists before it is sent again
(`find_sent`). Twilio's Message and Call resources show neither our msg_id nor the callback URL
that carries it, so a send is recognised by what they do show: to whom, from whom, when and, for
a message, its text.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import json
import logging
import math
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import aiohttp
import structlog
from aiohttp import web
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from adapters.providers.base import Capabilities, Provider
from warnd import pacing
from warnd.adapter import (
    AdapterContext,
    AuthError,
    Limits,
    PermanentError,
    TransientError,
    classify_http,
    retry_after_s,
)
from warnd.log import mask_phones
from warnd.pacing import Pacer, Spacer
from warnd.phone import to_e164

if TYPE_CHECKING:
    from warnd.config import Settings, TwilioSettings
    from warnd.store import Delivery

log = structlog.get_logger("warnd.twilio")

T = TypeVar("T")

CREDENTIAL_NAME = "warnd_twilio_auth_token"
FORBIDDEN = "forbidden: X-Twilio-Signature does not match"
# Twilio posts its webhooks as url-encoded forms, and signs the form's fields.
FORM = "application/x-www-form-urlencoded"
# A webhook's answers as the OpenAPI document states them: the refusal is plain text, not JSON.
HOOK_RESPONSES: dict[int, Any] = {
    200: "taken",
    403: {
        "description": "unsigned, forged or not a form",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    },
}
# A Twilio record dated up to this long before a delivery's claim may still be its send: an
# office PC's clock can be minutes off Twilio's. No earlier send of the same text to the same
# person is that close (pre-warning steps are an hour apart at least), and a record that another
# delivery already holds is never taken (Store.provider_refs_taken).
RECONCILE_SKEW = timedelta(minutes=10)
# Records read per receiver when looking a send up, newest first: Twilio's default page, four
# pages at most. Dozens of messages to one person within minutes do not happen; should 200 not
# reach back to the claim, the send counts as not found and is made again (a repeat, never a loss).
RECONCILE_PAGE = 50
RECONCILE_MAX_RECORDS = 200
# Lookups in flight per channel: Twilio allows ~100 concurrent REST requests per account, which
# the sends and lookups of both channels share.
RECONCILE_CONCURRENCY = 16

# The SDK logs request URLs, and a list request's query carries phone numbers: keep it quiet.
_SDK_LOG = logging.getLogger("warnd.twilio.sdk")
_SDK_LOG.setLevel(logging.WARNING)
_SDK_LOG.propagate = False

# Response headers of the last Twilio request made in this task. TwilioRestException carries
# no headers, and the client's own last-response attribute is shared by concurrent sends.
_LAST_HEADERS: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("twilio_last_headers")

# Twilio error codes that decide what a failure is, whatever the HTTP status says.
# Each maps to (kind, why) with kind "permanent", "transient" or "auth".
VENDOR_CODES: dict[int, tuple[str, str]] = {
    20003: ("auth", "Twilio refused the account SID or auth token"),  # Authenticate
    20429: ("transient", "Twilio rate limit"),  # Too Many Requests
    20500: ("transient", "Twilio internal error"),
    20503: ("transient", "Twilio unavailable"),
    21211: ("permanent", "invalid 'To' phone number"),  # the number cannot exist
    21212: ("auth", "invalid 'From' number: fix [twilio] from_number"),  # config, not recipient
    21214: ("permanent", "'To' number cannot be reached"),
    21215: ("permanent", "calls to this region are not enabled (Twilio geo permissions)"),
    21216: ("permanent", "'To' number is blocked by Twilio"),
    21217: ("permanent", "'To' number does not appear valid"),
    21401: ("permanent", "invalid phone number"),
    21408: ("permanent", "sending to this region is not enabled (Twilio geo permissions)"),
    21601: ("permanent", "'To' number cannot receive SMS"),
    21602: ("permanent", "message body is empty"),
    21606: ("auth", "'From' number cannot send SMS: fix [twilio] from_number"),
    21610: ("permanent", "recipient unsubscribed (replied STOP)"),  # re-sending is forbidden
    21612: ("permanent", "Twilio cannot route to this number"),
    21614: ("permanent", "'To' number is not a mobile number"),  # landline: SMS never arrives
    21617: ("permanent", "message body over 1600 characters"),
    21659: ("auth", "'From' is not a Twilio number of this account: fix [twilio] from_number"),
    13224: ("permanent", "invalid number for a call"),
    13227: ("permanent", "international calls to this number are not enabled"),
    # Delivery failures, reported later in status callbacks or by polling (ErrorCode).
    30001: ("transient", "queue overflow at Twilio"),
    30002: ("auth", "Twilio account suspended"),
    30003: ("transient", "handset unreachable (off or out of coverage)"),  # may work later
    30004: ("permanent", "message blocked by the recipient or carrier"),
    30005: ("permanent", "unknown destination handset"),  # number not in service
    30006: ("permanent", "landline or unreachable carrier"),
    30007: ("permanent", "message filtered by the carrier"),
    30008: ("transient", "unknown delivery error"),
    30034: ("permanent", "message from an unregistered number (A2P 10DLC)"),
}


def auth_token(tw: TwilioSettings, environ: dict[str, str] | None = None) -> str | None:
    """The auth token: [twilio] auth_token / WARND_TWILIO__AUTH_TOKEN, else a systemd credential."""
    if tw.auth_token:
        return tw.auth_token
    env = os.environ if environ is None else environ
    creds = env.get("CREDENTIALS_DIRECTORY")
    if creds:
        path = Path(creds) / CREDENTIAL_NAME
        try:
            return path.read_text(encoding="utf-8").strip() or None
        except OSError:
            return None
    return None


def twilio_configured(settings: Settings, *, voice: bool = False) -> bool:
    """Account SID, a sender (a number for calls) and an auth token are all there."""
    tw = settings.twilio
    sender = tw.from_number if voice else (tw.from_number or tw.messaging_service_sid)
    return bool(tw.account_sid and sender and auth_token(tw))


def _retry_after_s(headers: dict[str, str]) -> float | None:
    """Read Retry-After from a response's headers."""
    return retry_after_s(next((v for k, v in headers.items() if k.lower() == "retry-after"), None))


def classify(status: int, body: Any, retry_after_s: float | None = None) -> Exception | None:
    """What an HTTP answer from Twilio means: None (2xx) or the exception to raise.

    2xx ok; 429 and 5xx transient (honouring Retry-After); 401/403 auth; other 4xx permanent.
    Twilio's own error codes, where known, decide first. Reasons never repeat the vendor's
    message verbatim: it names the phone number.
    """
    if 200 <= status < 300:
        return None
    code = body.get("code") if isinstance(body, dict) else None
    text = body.get("message") if isinstance(body, dict) else body
    kind, why = VENDOR_CODES.get(code or 0, ("", ""))
    if not kind:
        why = mask_phones(str(text or "")).strip()[:160] or f"HTTP {status}"
        return classify_http(status, f"twilio {code or status}: {why}", retry_after_s)
    reason = f"twilio {code or status}: {why}"
    if kind == "transient":
        return TransientError(reason, retry_after_s)
    if kind == "auth":
        return AuthError(reason)
    return PermanentError(reason)


def _page_error(exc: TwilioException) -> Exception:
    """What a failed list page means, classified like any other answer from Twilio."""
    response = exc.args[1] if len(exc.args) > 1 else None
    status = getattr(response, "status_code", None)
    if not isinstance(status, int):
        return TransientError("twilio: unexpected answer to a list request")
    try:
        body = json.loads(response.text)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        body = None
    headers = {str(k): str(v) for k, v in (getattr(response, "headers", None) or {}).items()}
    return classify(status, body, _retry_after_s(headers)) or TransientError(f"twilio {status}")


def delivery_failure(error_code: str | int | None, status: str) -> tuple[str, str]:
    """A failed message or call reported later: ("failed"|"dead", reason) for feedback."""
    try:
        code = int(error_code) if error_code not in (None, "") else None
    except (TypeError, ValueError):
        code = None
    kind, why = VENDOR_CODES.get(code or 0, ("transient", f"Twilio reported {status}"))
    # An auth-class code here (suspended account) is not this delivery's fault: retry it.
    return ("dead" if kind == "permanent" else "failed"), f"twilio {code or status}: {why}"


async def _headers_sent(_session: Any, _ctx: Any, _params: Any) -> None:
    """aiohttp trace hook: the request is on the wire; the sender's next interval starts."""
    pacing.on_wire()


class _HeaderKeepingClient(AsyncTwilioHttpClient):
    """The SDK's aiohttp client: rate-limited creates, response headers kept per task."""

    def __init__(self, **kwargs: Any) -> None:
        """Hook the moment request headers are written (for the spacer)."""
        trace = aiohttp.TraceConfig()
        trace.on_request_headers_sent.append(_headers_sent)
        super().__init__(trace_configs=[trace], **kwargs)

    async def request(self, *args: Any, auth: tuple[str, str] | None = None, **kwargs: Any) -> Any:
        """Make the request (in the sender's slot) and keep its response headers for this task."""
        if auth is not None:
            # The header, not aiohttp's BasicAuth object (deprecated in aiohttp 3.12+).
            basic = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            kwargs["headers"] = {**(kwargs.get("headers") or {}), "Authorization": f"Basic {basic}"}
        async with pacing.slot():
            response = await super().request(*args, **kwargs)
        _LAST_HEADERS.set(dict(response.headers or {}))
        return response


def make_client(tw: TwilioSettings, token: str) -> Client:
    """A twilio Client on its async HTTP client, pointed at [twilio] api_base."""
    # environment={}: TWILIO_REGION / TWILIO_EDGE from the environment would rewrite the host.
    # No max_retries: retrying is the scheduler's job, not the HTTP client's.
    client = Client(
        tw.account_sid,
        token,
        http_client=_HeaderKeepingClient(logger=_SDK_LOG),
        environment={},
    )
    client.api.base_url = tw.api_base.rstrip("/")
    return client


def twiml(body: str) -> web.Response:
    """A TwiML answer."""
    return web.Response(text=f'<?xml version="1.0" encoding="UTF-8"?><Response>{body}</Response>',
                        content_type="text/xml")  # fmt: skip


def query(msg_id: str, target: str) -> str:
    """The query naming a delivery in a callback URL (signed by Twilio along with the URL)."""
    return f"m={quote(msg_id, safe='')}&t={quote(target, safe='')}"


class TwilioProvider(Provider):
    """Base of the Twilio SMS and voice providers: client, sender, signed webhooks, polling.

    Args:
        ctx: what the daemon lends the adapter.
    """

    # How long one batch may take at most, as a share of the dispatcher's send timeout:
    # half leaves room for slow answers, so a rate-limited batch never times out half-sent.
    _BATCH_SHARE = 0.5

    name = "twilio"

    def __init__(self, ctx: AdapterContext, pacer: Pacer) -> None:
        """Size batches and concurrency to the configured rate; connect in start()."""
        super().__init__(ctx, pacer)
        rate = self.rate_per_s
        batch = max(1, math.floor(rate * ctx.settings.dispatch.send_timeout_s * self._BATCH_SHARE))
        # Enough sends in flight to keep the rate with ~0.5 s per request, never an unbounded crowd.
        concurrency = max(4, min(64, math.ceil(rate * 0.5)))
        self.limits = Limits(max_text_chars=1600, concurrency=concurrency, batch_size=min(500, batch))
        self.caps = Capabilities(free_text=True, batch_size=1, rate_per_s=rate, concurrency=concurrency)
        self.client: Client | None = None
        self._token: str | None = None
        self._lookups = asyncio.Semaphore(RECONCILE_CONCURRENCY)

    @property
    def tw(self) -> TwilioSettings:
        """The [twilio] settings (read each time: tests set public_base_url after start)."""
        return self.ctx.settings.twilio

    @property
    def rate_per_s(self) -> float:
        """Requests per second per sender: [twilio] rate_per_s for messages."""
        return self.tw.rate_per_s

    @property
    def public_base(self) -> str | None:
        """Where Twilio reaches warnd's webhooks, or None in polling mode."""
        base = self.tw.public_base_url
        return base.rstrip("/") if base else None

    async def start(self) -> None:
        """Build the client; no token is an AuthError that disables the channel."""
        self._token = auth_token(self.tw)
        if not self._token:
            raise AuthError(f"no auth token: set [twilio] auth_token or the {CREDENTIAL_NAME} credential")
        self.client = make_client(self.tw, self._token)
        log.info("twilio.started", channel=self.channel, mode="webhooks" if self.public_base else "polling",
                 rate_per_s=self.rate_per_s, batch_size=self.limits.batch_size)  # fmt: skip

    async def aclose(self) -> None:
        """Close the SDK's HTTP session."""
        if self.client is not None:
            await self.client.http_client.close()
            self.client = None

    def limiter(self, sender: str) -> Spacer:
        """The spacer of one sender (a number or a messaging service), at its declared rate."""
        return self.pacer.spacer(self.name, sender, self.rate_per_s)

    async def call(self, sender: str | None, fn: Callable[..., Awaitable[T]], **kwargs: Any) -> T:
        """Call the SDK, limited per sender when sender is given; map failures to our errors."""
        if self.client is None:
            raise TransientError("twilio client not started")
        try:
            with pacing.bound(self.limiter(sender) if sender is not None else None):
                return await fn(**kwargs)
        except TwilioRestException as exc:
            headers = _LAST_HEADERS.get({})
            err = classify(exc.status, {"code": exc.code, "message": exc.msg}, _retry_after_s(headers))
            raise err from None  # type: ignore[misc]
        except TwilioException as exc:
            # A list page that is not 200: the SDK raises TwilioException("Unable to fetch page",
            # response) rather than TwilioRestException.
            raise _page_error(exc) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            # Only a connection that was never made proves nothing went out; a break after the
            # request was written may come after Twilio queued the message or placed the call.
            doubt = not isinstance(exc, aiohttp.ClientConnectorError)
            raise TransientError(f"twilio unreachable: {type(exc).__name__}", maybe_sent=doubt) from None

    async def find_sent(
        self,
        stream: Callable[..., Awaitable[AsyncIterator[Any]]],
        delivery: Delivery,
        *,
        match: Callable[[Any], bool],
        sent_at: Callable[[Any], datetime | None],
        **filters: Any,
    ) -> Any | None:
        """The newest Twilio record since the delivery's claim that `match`es and no delivery holds.

        `stream` is the SDK's `messages.stream_async` or `calls.stream_async`, `filters` its To
        and From. No DateSent or StartTime filter: Twilio compares those by day, and leaves out
        what it has not sent or dialled yet, which is just what a crash leaves behind (created,
        still queued). Records come newest first, so reading stops at the first one sent before
        the window. Limit: Twilio does not document where it lists records not yet sent; one
        listed beyond that point would be missed, and its delivery sent again.
        """
        assert delivery.maybe_sent_at is not None
        since = delivery.maybe_sent_at - RECONCILE_SKEW

        async def scan() -> list[Any]:
            """Read newest first until the records are older than the window."""
            found = []
            records = await stream(page_size=RECONCILE_PAGE, limit=RECONCILE_MAX_RECORDS, **filters)
            async with contextlib.aclosing(records):  # type: ignore[type-var]
                async for r in records:
                    at = sent_at(r)
                    if at is not None and at < since:
                        break
                    if r.date_created is not None and r.date_created >= since and match(r):
                        found.append(r)
            return found

        async with self._lookups:
            candidates = await self.call(None, scan)
        if not candidates:
            return None
        taken = await self.ctx.store.provider_refs_taken([r.sid for r in candidates])
        return next((r for r in candidates if r.sid not in taken), None)

    # -- webhooks -------------------------------------------------------------------------

    def signed_url(self, request: web.Request) -> str:
        """The URL Twilio signed: the public base plus path and query, as Twilio posted to it."""
        base = self.public_base
        return f"{base}{request.rel_url.path_qs}" if base else str(request.url)

    async def verified_form(self, request: web.Request) -> dict[str, str] | None:
        """The form of a correctly signed webhook, or None for an unsigned, forged or unreadable one."""
        # Twilio posts url-encoded forms only; anything else (multipart without a boundary, a body
        # not in its declared charset) cannot carry a signature we could check.
        if request.content_type != FORM:
            log.warning("twilio.webhook_refused", channel=self.channel, path=request.path, why="not a form")
            return None
        try:
            form = {k: str(v) for k, v in (await request.post()).items()}
        except (ValueError, LookupError):
            log.warning(
                "twilio.webhook_refused", channel=self.channel, path=request.path, why="unreadable form"
            )
            return None
        signature = request.headers.get("X-Twilio-Signature", "")
        if not signature or not self._token:
            log.warning("twilio.webhook_refused", channel=self.channel, path=request.path, why="unsigned")
            return None
        if not RequestValidator(self._token).validate(self.signed_url(request), form, signature):
            log.warning(
                "twilio.webhook_refused", channel=self.channel, path=request.path, why="bad signature"
            )
            return None
        return form

    # -- polling --------------------------------------------------------------------------

    def poll_interval_s(self) -> float | None:
        """Without a public URL, Twilio is polled every [twilio] poll_interval_s instead."""
        return None if self.public_base else self.tw.poll_interval_s


def phone_of(delivery: Delivery) -> str:
    """The delivery's number in E.164; a number that cannot be one is a permanent failure."""
    try:
        return to_e164(delivery.address or "")
    except ValueError as exc:
        raise PermanentError(f"no usable phone number: {exc}") from None
