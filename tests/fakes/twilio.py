"""Loopback fake of Twilio's REST API 2010-04-01: Messages and Calls, with signed webhooks.

Request and response shapes follow Twilio's OpenAPI description (twilio_api_v2010.json:
CreateMessage, FetchMessage, ListMessage, CreateCall, FetchCall, ListCall); errors use
Twilio's legacy error body ``{"code", "message", "more_info", "status"}``.

Pointing the real SDK (twilio 9.x) at it::

    client = Client(fake.account_sid, fake.auth_token,
                    http_client=AsyncTwilioHttpClient(), environment={})
    client.api.base_url = await fake.start()    # e.g. "http://127.0.0.1:40123"
    msg = await client.messages.create_async(to=..., from_=..., body=...)
    await client.http_client.close()

``Domain.absolute_url`` joins ``base_url`` and ``2010-04-01/Accounts/…`` at request time, so
setting ``client.api.base_url`` after construction is enough; only the ``api`` domain moves
(messaging, verify … have their own ``base_url``). Leave ``region``/``edge`` unset and pass
``environment={}``: with TWILIO_REGION or TWILIO_EDGE set, ``ClientBase.get_hostname``
rewrites the host name and the request leaves the loopback. ``TwilioRestException`` carries
status, code and msg but no headers: read Retry-After from the ``Response`` that a subclass of
``AsyncTwilioHttpClient.request`` returns (the client's ``_test_only_last_response`` is shared
by concurrent requests). Do not pass ``max_retries``: aiohttp-retry would retry 5xx by itself.

Lists (GET Messages.json, Calls.json) take Twilio's documented filters: To, From and
DateSent / DateSent< / DateSent> for messages; To, From, Status, ParentCallSid and StartTime /
EndTime with < and > for calls. A date (YYYY-MM-DD) compares by day, a date-time exactly. A
message has no date_sent until it is sent and a call no start_time until it is dialled, so those
filters leave out what is still queued, as at Twilio. Pages are newest first (Twilio sorts
messages by DateSent; the fake by creation, which puts what is still queued first) in Twilio's
page shape, with next_page_uri while more remain.

Voice acks: Twilio has no REST resource for digits gathered in a call (the OpenAPI has
``SendDigits`` on create only; ``Calls/{CallSid}/Events.json`` logs the HTTP requests Twilio
made, which exist only when a reachable URL received them). A client that only polls sees call
status; the key press reaches warnd only through a <Gather action="…"> webhook. ``press()``
records digits in ``fake.gathered`` for assertions and posts them signed; nothing serves them.
"""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from email.utils import format_datetime, parsedate_to_datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web
from twilio.request_validator import RequestValidator

from tests.fakes.outage import Outage

API = "/2010-04-01"
_E164 = r"\+[1-9]\d{6,14}"
_DEFAULT_ERRORS = {
    401: (20003, "Authenticate"),
    404: (20404, "The requested resource was not found"),
    429: (20429, "Too Many Requests"),
    500: (20500, "Internal Server Error"),
    503: (20503, "Service Unavailable"),
}
# Call statuses end in the "completed" status-callback event, whatever ended them.
_CALL_EVENT = {"queued": "initiated", "ringing": "ringing", "in-progress": "answered"}
_CALL_END = {"completed", "busy", "no-answer", "failed", "canceled"}
# List filters (query parameter → resource field), as in the OpenAPI's ListMessage and ListCall:
# those compared for equality, and dates that also take < and > (inclusive).
_MESSAGE_FILTERS = ({"To": "to", "From": "from"}, {"DateSent": "date_sent"})
_CALL_FILTERS = (
    {"To": "to", "From": "from", "Status": "status", "ParentCallSid": "parent_call_sid"},
    {"StartTime": "start_time", "EndTime": "end_time"},
)
_MESSAGE_STATUSES = {"queued", "sending", "sent", "delivered", "undelivered", "failed", "read"}
# Error codes Twilio reports when a message does not arrive: 30003 unreachable handset,
# 30008 unknown error. Used when advance() is not given one.
_DEFAULT_MESSAGE_ERROR = {"undelivered": 30003, "failed": 30008}
_GSM = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà\f^{}\\[~]|€"
)


@dataclass
class Answer:
    """A scripted answer for one create request (POST Messages.json or Calls.json).

    Args:
        status: HTTP status; a 2xx status lets the request through to normal handling.
        code: Twilio error code (default: 20429 for 429, 20500 for 500, … else the status).
        message: error message (default: Twilio's text for the code, or the HTTP reason).
        retry_after_s: if set, sent as the Retry-After header (whole seconds, rounded up).
    """

    status: int
    code: int | None = None
    message: str | None = None
    retry_after_s: float | None = None


@dataclass(frozen=True)
class Recorded:
    """One request the fake received.

    Args:
        method: HTTP method.
        path: URL path, without the query.
        authorization: the Authorization header as sent, or None.
        form: form body fields (a repeated field keeps its last value).
        query: query parameters (likewise).
        at: when it arrived (time.monotonic()).
    """

    method: str
    path: str
    authorization: str | None
    form: dict[str, str]
    query: dict[str, str]
    at: float = 0.0


@dataclass(frozen=True)
class WebhookResult:
    """What the application answered to a webhook the fake posted.

    Args:
        url: where it was posted.
        params: the form fields.
        signature: the X-Twilio-Signature sent, or None.
        status: the application's HTTP status.
        text: the application's response body (TwiML, usually).
    """

    url: str
    params: dict[str, str]
    signature: str | None
    status: int
    text: str


def _sid(prefix: str) -> str:
    """Return a new Twilio SID: two letters and 32 hex digits."""
    return prefix + secrets.token_hex(16)


def _rfc2822(moment: datetime | None) -> str | None:
    """Format a time the way Twilio's JSON does: 'Thu, 24 Aug 2023 05:01:45 +0000'."""
    return format_datetime(moment.astimezone(UTC)) if moment else None


def _segments(body: str) -> int:
    """Count segments the way Twilio bills them (independent of warnd.smstext on purpose)."""
    if all(c in _GSM for c in body):
        units, single, part = sum(2 if c in "\f^{}\\[~]|€" else 1 for c in body), 160, 153
    else:
        units, single, part = sum(2 if ord(c) > 0xFFFF else 1 for c in body), 70, 67
    return 1 if units <= single else -(-units // part)


def _date_matches(sent: str | None, op: str, value: str) -> bool:
    """Apply a DateSent filter: dates compare by day, times exactly; > and < are inclusive."""
    if not sent:
        return False
    moment = parsedate_to_datetime(sent)
    if len(value) == 10:
        left: date | datetime = moment.date()
        right: date | datetime = date.fromisoformat(value)
    else:
        left, right = moment, datetime.fromisoformat(value.replace("Z", "+00:00"))
    return {"": left == right, ">": left >= right, "<": left <= right}[op]


class FakeTwilio:
    """Twilio's REST API on 127.0.0.1, recording requests and replaying scripted answers.

    Args:
        account_sid: the account (random if omitted).
        auth_token: its auth token, also the key webhooks are signed with (random if omitted).
        api_keys: API key SID → secret pairs also accepted for Basic auth.
        clock: returns the current time (aware); for date_created/date_sent.
        latency_s: how long a create takes to answer once its message or call exists (at Twilio
            the resource is queued before the answer leaves: a client that dies meanwhile has
            sent it without knowing).
    """

    def __init__(
        self,
        account_sid: str | None = None,
        auth_token: str | None = None,
        *,
        api_keys: dict[str, str] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        latency_s: float = 0.0,
    ) -> None:
        """Set up an empty account; nothing listens until start()."""
        self.account_sid = account_sid or _sid("AC")
        self.auth_token = auth_token or secrets.token_hex(16)
        self.clock = clock
        self.latency_s = latency_s
        self._credentials = {self.account_sid: self.auth_token, **(api_keys or {})}
        self.requests: list[Recorded] = []
        self.webhooks: list[WebhookResult] = []
        self.messages: dict[str, dict[str, Any]] = {}
        self.calls: dict[str, dict[str, Any]] = {}
        self.gathered: dict[str, list[str]] = defaultdict(list)
        self.too_fast = 0
        # A provider outage in progress or to come (tests/fakes/outage.py), set by outage().
        self.fault: Outage | None = None
        self._callbacks: dict[str, tuple[str, set[str]]] = {}
        self._script: deque[Answer] = deque()
        self._list_script: deque[Answer] = deque()
        self._rate: tuple[float, float, float] | None = None  # per_s, tokens, last refill
        self._burst = 1.0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.base_url = ""

    async def start(self) -> str:
        """Listen on 127.0.0.1 on a free port and return the base URL."""
        app = web.Application(middlewares=[self._gate])
        prefix = API + "/Accounts/{account}"
        app.router.add_post(prefix + "/Messages.json", self._create_message)
        app.router.add_get(prefix + "/Messages.json", self._list("messages", self.messages, _MESSAGE_FILTERS))
        app.router.add_get(prefix + "/Messages/{sid}.json", self._fetch(self.messages))
        app.router.add_post(prefix + "/Calls.json", self._create_call)
        app.router.add_get(prefix + "/Calls.json", self._list("calls", self.calls, _CALL_FILTERS))
        app.router.add_get(prefix + "/Calls/{sid}.json", self._fetch(self.calls))
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self._session = aiohttp.ClientSession()
        self.base_url = f"http://127.0.0.1:{port}"
        return self.base_url

    async def close(self) -> None:
        """Stop listening and close the webhook client."""
        if self._session:
            await self._session.close()
        if self._runner:
            await self._runner.cleanup()

    async def __aenter__(self) -> FakeTwilio:
        """Start; the base URL is in self.base_url."""
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Close."""
        await self.close()

    # --- test controls ---------------------------------------------------------------

    def script(self, answers: list[Answer]) -> None:
        """Queue answers for the next create requests, in order; then normal handling resumes."""
        self._script.extend(answers)

    def unscript(self) -> None:
        """Drop the create answers still queued: normal handling from the next request."""
        self._script.clear()

    def script_lists(self, answers: list[Answer]) -> None:
        """Queue answers for the next list requests (GET Messages.json or Calls.json), in order."""
        self._list_script.extend(answers)

    def outage(self, fault: Outage) -> Outage:
        """Misbehave as `fault` says, from its `after`+1-th create on, on every API request."""
        self.fault = fault
        return fault

    def limit_rate(self, per_s: float, burst: float = 1.0) -> None:
        """Answer 429 (20429) to creates beyond per_s per second (real monotonic time).

        burst: how many creates may arrive back to back. 1 refuses any gap shorter than
        1/per_s; 2 still holds the average to per_s but tolerates one request arriving early
        (network and scheduling jitter, several ms on a loaded machine), as Twilio's per-sender
        queue does.
        """
        self._burst = burst
        self._rate = (per_s, burst, time.monotonic())

    def status_callback(self, sid: str) -> str | None:
        """The StatusCallback URL a message or call was created with, if any."""
        return self._callbacks.get(sid, (None, set()))[0]

    def inject_inbound(self, from_: str, to: str, body: str) -> dict[str, Any]:
        """Add an inbound message, as if a phone had texted the account's number."""
        sid = _sid("SM")
        msg = self._message_resource(sid, to=to, from_=from_, body=body, service=None)
        now = _rfc2822(self.clock())
        msg.update(direction="inbound", status="received", date_sent=now)
        self.messages[sid] = msg
        return msg

    async def reply(self, from_: str, to: str, body: str, url: str) -> WebhookResult:
        """Inject an inbound message and post Twilio's signed incoming-SMS webhook for it."""
        msg = self.inject_inbound(from_, to, body)
        params = {
            "MessageSid": msg["sid"], "SmsSid": msg["sid"], "SmsMessageSid": msg["sid"],
            "AccountSid": self.account_sid, "From": from_, "To": to, "Body": body,
            "NumMedia": "0", "NumSegments": msg["num_segments"], "SmsStatus": "received",
            "ApiVersion": "2010-04-01",
        }  # fmt: skip
        return await self.post_signed(url, params)

    async def press(self, call_sid: str, digits: str, url: str) -> WebhookResult:
        """Post the signed <Gather> action request of a call whose callee pressed digits."""
        call = self.calls[call_sid]
        self.gathered[call_sid].append(digits)
        params = {
            "CallSid": call_sid, "AccountSid": self.account_sid, "From": call["from"],
            "To": call["to"], "CallStatus": "in-progress", "Direction": call["direction"],
            "ApiVersion": "2010-04-01", "Digits": digits, "FinishedOnKey": "",
            "msg": "Gather End",
        }  # fmt: skip
        return await self.post_signed(url, params)

    async def advance(self, sid: str, status: str, *, error_code: int | None = None) -> WebhookResult | None:
        """Move a message or call to status and post its signed status callback, if it has one."""
        now = self.clock()
        if sid in self.messages:
            params = self._advance_message(self.messages[sid], status, error_code, now)
        else:
            params = self._advance_call(self.calls[sid], status, now)
        url, events = self._callbacks.get(sid, ("", set()))
        event = "completed" if status in _CALL_END else _CALL_EVENT.get(status)
        if not url or (sid in self.calls and event not in events):
            return None
        return await self.post_signed(url, params)

    async def post_signed(self, url: str, params: dict[str, str]) -> WebhookResult:
        """POST a webhook signed as Twilio signs it, with the account's auth token."""
        signature = RequestValidator(self.auth_token).compute_signature(url, params)
        return await self.post_with_signature(url, params, signature)

    async def post_unsigned(self, url: str, params: dict[str, str]) -> WebhookResult:
        """POST a webhook without X-Twilio-Signature (a forgery)."""
        return await self.post_with_signature(url, params, None)

    async def post_with_signature(
        self, url: str, params: dict[str, str], signature: str | None
    ) -> WebhookResult:
        """POST a webhook with the given X-Twilio-Signature (None: no header)."""
        assert self._session, "start() the fake first"
        headers = {"User-Agent": "TwilioProxy/1.1"}
        if signature is not None:
            headers["X-Twilio-Signature"] = signature
        async with self._session.post(url, data=params, headers=headers) as resp:
            result = WebhookResult(url, dict(params), signature, resp.status, await resp.text())
        self.webhooks.append(result)
        return result

    # --- HTTP side ----------------------------------------------------------------------

    @web.middleware
    async def _gate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Record the request, check Basic auth and the account in the path."""
        form = dict((await request.post()).items()) if request.method == "POST" else {}
        auth = request.headers.get("Authorization")
        self.requests.append(
            Recorded(request.method, request.path, auth, {k: str(v) for k, v in form.items()},
                     dict(request.query.items()), time.monotonic())
        )  # fmt: skip
        user, _, password = self._basic(auth)
        if not user or self._credentials.get(user) != password:
            return self._error(401)
        if request.match_info.get("account") != self.account_sid:
            return self._error(404)
        fault = self.fault
        if fault is not None:
            # A create is for the receiver its status callback names (or its number).
            who = str(form.get("StatusCallback") or form.get("To") or "") or None
            fault.arrive(who, send=request.method == "POST")
            if fault.active():
                if refused := fault.refuse(who, self._error):
                    return refused
                if request.method == "POST":
                    # The message or call is made; only its answer goes astray.
                    return await fault.withhold(request, await handler(request))
                return await fault.withhold(request, self._error(503))
        return await handler(request)

    @staticmethod
    def _basic(header: str | None) -> tuple[str, str, str]:
        """Split a Basic Authorization header into user, ':' and password ('' when absent)."""
        if not header or not header.startswith("Basic "):
            return "", "", ""
        try:
            return base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return "", "", ""

    def _error(
        self,
        status: int,
        code: int | None = None,
        message: str | None = None,
        retry_after_s: float | None = None,
    ) -> web.Response:
        """Answer with Twilio's error body."""
        default_code, default_message = _DEFAULT_ERRORS.get(status, (status, ""))
        code = code or default_code
        body = {
            "code": code,
            "message": message or default_message or HTTPStatus(status).phrase,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        }
        headers = {"Retry-After": str(-int(-retry_after_s // 1))} if retry_after_s else None
        return web.json_response(body, status=status, headers=headers)

    def _refused(self) -> web.Response | None:
        """Return the scripted or rate-limited answer for a create request, or None to proceed."""
        if self._script:
            answer = self._script.popleft()
            if not 200 <= answer.status < 300:
                return self._error(answer.status, answer.code, answer.message, answer.retry_after_s)
        if self._rate:
            per_s, tokens, last = self._rate
            now = time.monotonic()
            tokens = min(self._burst, tokens + (now - last) * per_s)
            if tokens < 1.0:
                self._rate = (per_s, tokens, now)
                self.too_fast += 1
                return self._error(429, retry_after_s=(1.0 - tokens) / per_s)
            self._rate = (per_s, tokens - 1.0, now)
        return None

    def _uri(self, kind: str, sid: str) -> str:
        """Return the resource's relative URI."""
        return f"{API}/Accounts/{self.account_sid}/{kind}/{sid}.json"

    def _message_resource(
        self, sid: str, *, to: str, from_: str | None, body: str, service: str | None
    ) -> dict[str, Any]:
        """Build a message resource as in the OpenAPI's api.v2010.account.message."""
        now = _rfc2822(self.clock())
        return {
            "account_sid": self.account_sid, "api_version": "2010-04-01", "body": body,
            "date_created": now, "date_sent": None, "date_updated": now,
            "direction": "outbound-api", "error_code": None, "error_message": None,
            "from": from_, "messaging_service_sid": service, "num_media": "0",
            "num_segments": str(_segments(body)), "price": None, "price_unit": "USD",
            "sid": sid, "status": "queued",
            "subresource_uris": {"media": self._uri("Messages", sid)[:-5] + "/Media.json"},
            "to": to, "uri": self._uri("Messages", sid),
        }  # fmt: skip

    async def _create_message(self, request: web.Request) -> web.Response:
        """POST Messages.json: validate like Twilio, then 201 with a queued message."""
        if refused := self._refused():
            return refused
        form = await request.post()
        to, from_ = form.get("To", ""), form.get("From")
        service, body = form.get("MessagingServiceSid"), str(form.get("Body", ""))
        if not to:
            return self._error(400, 21604, "A 'To' phone number is required.")
        if not re.fullmatch(_E164, str(to)):
            return self._error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if not from_ and not service:
            return self._error(400, 21603, "A 'From' phone number is required.")
        if not body:
            return self._error(400, 21602, "Message body is required.")
        if len(body) > 1600:
            return self._error(400, 21617, "The concatenated message body exceeds the 1600 character limit.")
        sid = _sid("SM")
        msg = self._message_resource(
            sid, to=str(to), from_=from_ and str(from_), body=body, service=service and str(service)
        )
        self.messages[sid] = msg
        if callback := form.get("StatusCallback"):
            self._callbacks[sid] = (str(callback), set())
        await self._answer_later()
        return web.json_response(msg, status=201)

    async def _create_call(self, request: web.Request) -> web.Response:
        """POST Calls.json: validate like Twilio, then 201 with a queued call."""
        if refused := self._refused():
            return refused
        form = await request.post()
        to, from_ = str(form.get("To", "")), str(form.get("From", ""))
        if not to:
            return self._error(400, 21201, "No 'To' number is specified")
        if not from_:
            return self._error(400, 21213, "No 'From' number is specified")
        if not re.fullmatch(_E164, to) and not to.startswith(("client:", "sip:")):
            return self._error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if not (form.get("Url") or form.get("Twiml") or form.get("ApplicationSid")):
            return self._error(400, 21205, "Url parameter is required.")
        sid, now = _sid("CA"), _rfc2822(self.clock())
        call = {
            "account_sid": self.account_sid, "annotation": None, "answered_by": None,
            "api_version": "2010-04-01", "caller_name": None, "date_created": now,
            "date_updated": now, "direction": "outbound-api", "duration": None,
            "end_time": None, "forwarded_from": None, "from": from_, "from_formatted": from_,
            "group_sid": None, "parent_call_sid": None, "phone_number_sid": None,
            "price": None, "price_unit": "USD", "queue_time": "0", "sid": sid,
            "start_time": None, "status": "queued", "subresource_uris": {}, "to": to,
            "to_formatted": to, "trunk_sid": None, "uri": self._uri("Calls", sid),
        }  # fmt: skip
        self.calls[sid] = call
        if callback := form.get("StatusCallback"):
            # StatusCallbackEvent may repeat or be space-separated; Twilio's default is completed.
            events = {e for v in form.getall("StatusCallbackEvent", []) for e in str(v).split()}
            self._callbacks[sid] = (str(callback), events or {"completed"})
        await self._answer_later()
        return web.json_response(call, status=201)

    async def _answer_later(self) -> None:
        """Hold a create's answer for latency_s; the resource already exists."""
        if self.latency_s:
            await asyncio.sleep(self.latency_s)

    def _fetch(self, store: dict[str, dict[str, Any]]) -> Callable[..., Any]:
        """Return a handler for GET {kind}/{Sid}.json."""

        async def fetch(request: web.Request) -> web.Response:
            """Answer the current resource or 20404."""
            resource = store.get(request.match_info["sid"])
            return web.json_response(resource) if resource else self._error(404)

        return fetch

    def _list(
        self, key: str, store: dict[str, dict[str, Any]], params: tuple[dict[str, str], dict[str, str]]
    ) -> Callable[..., Any]:
        """Return a handler for GET {kind}.json: filters and Twilio's page shape."""
        equal, dated = params

        async def read(request: web.Request) -> web.Response:
            """Answer one page, newest first, with next_page_uri while more remain."""
            if self._list_script:
                answer = self._list_script.popleft()
                if not 200 <= answer.status < 300:
                    return self._error(answer.status, answer.code, answer.message, answer.retry_after_s)
            q = request.query
            items = list(reversed(store.values()))  # dicts keep insertion order: newest last
            for param, field in equal.items():
                if param in q:
                    items = [r for r in items if r.get(field) == q[param]]
            for param, field in dated.items():
                for op in ("", ">", "<"):
                    if param + op in q:
                        value = q[param + op]
                        items = [r for r in items if _date_matches(r.get(field), op, value)]
            size, page = int(q.get("PageSize", 50)), int(q.get("Page", 0))
            chunk = items[page * size : (page + 1) * size]
            filters = {k: v for k, v in q.items() if k not in ("Page", "PageSize", "PageToken")}

            def page_uri(n: int) -> str:
                """Return the URI of page n with the same filters."""
                query = urlencode({**filters, "PageSize": size, "Page": n})
                return f"{request.path}?{query}"

            more = (page + 1) * size < len(items)
            return web.json_response({
                key: chunk, "start": page * size, "end": page * size + max(len(chunk) - 1, 0),
                "page": page, "page_size": size, "uri": page_uri(page),
                "first_page_uri": page_uri(0),
                "next_page_uri": page_uri(page + 1) if more else None,
                "previous_page_uri": page_uri(page - 1) if page else None,
            })  # fmt: skip

        return read

    def _advance_message(
        self, msg: dict[str, Any], status: str, error_code: int | None, now: datetime
    ) -> dict[str, str]:
        """Set a message's status and return its status-callback form."""
        if status not in _MESSAGE_STATUSES:
            raise ValueError(f"not a message status: {status!r}")
        error_code = error_code or _DEFAULT_MESSAGE_ERROR.get(status)
        msg.update(status=status, date_updated=_rfc2822(now), error_code=error_code)
        if status in ("sent", "delivered", "undelivered", "read") and not msg["date_sent"]:
            msg["date_sent"] = _rfc2822(now)
        params = {
            "MessageSid": msg["sid"], "SmsSid": msg["sid"], "MessageStatus": status,
            "SmsStatus": status, "AccountSid": self.account_sid, "From": msg["from"] or "",
            "To": msg["to"], "ApiVersion": "2010-04-01",
        }  # fmt: skip
        if msg["messaging_service_sid"]:
            params["MessagingServiceSid"] = msg["messaging_service_sid"]
        if error_code:
            params["ErrorCode"] = str(error_code)
        return params

    def _advance_call(self, call: dict[str, Any], status: str, now: datetime) -> dict[str, str]:
        """Set a call's status (and times) and return its status-callback form."""
        if status not in {*_CALL_EVENT, *_CALL_END}:
            raise ValueError(f"not a call status: {status!r}")
        call.update(status=status, date_updated=_rfc2822(now))
        if status == "in-progress":
            call["start_time"] = _rfc2822(now)
        params = {
            "CallSid": call["sid"], "AccountSid": self.account_sid, "From": call["from"],
            "To": call["to"], "CallStatus": status, "Direction": call["direction"],
            "ApiVersion": "2010-04-01", "CallbackSource": "call-progress-events",
            "Timestamp": _rfc2822(now) or "",
        }  # fmt: skip
        if status in _CALL_END:
            started = call["start_time"]
            seconds = int((now - parsedate_to_datetime(started)).total_seconds()) if started else 0
            call.update(end_time=_rfc2822(now), duration=str(seconds))
            params["CallDuration"] = str(seconds)
        return params
