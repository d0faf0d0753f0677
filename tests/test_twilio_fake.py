"""The Twilio fake speaks Twilio: the real twilio SDK's async client works against it."""

import base64
import re
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp import web
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from tests.fakes.twilio import Answer, FakeTwilio

FROM = "+15005550006"
TO = "+8613800000001"
T0 = datetime(2026, 7, 1, 0, 0, tzinfo=UTC)

# Response headers of the last Twilio request made in this task (one context per task, so
# concurrent sends do not see each other's headers).
last_headers: ContextVar[dict[str, str]] = ContextVar("last_headers")


class HeaderKeepingClient(AsyncTwilioHttpClient):
    """AsyncTwilioHttpClient that keeps response headers: TwilioRestException has none."""

    async def request(self, *args, **kwargs):
        """Make the request and remember its response headers for this task."""
        response = await super().request(*args, **kwargs)
        last_headers.set(dict(response.headers or {}))
        return response


class Clock:
    """A settable clock for the fake's date_created / date_sent."""

    def __init__(self) -> None:
        """Start at T0."""
        self.now = T0

    def __call__(self) -> datetime:
        """Return the current fake time."""
        return self.now


@pytest.fixture
def clock():
    """A clock the test moves by hand."""
    return Clock()


@pytest.fixture
async def fake(clock):
    """A running FakeTwilio."""
    async with FakeTwilio(clock=clock, api_keys={"SK" + "1" * 32: "key-secret"}) as fake:
        yield fake


def _client(fake: FakeTwilio, username: str, password: str) -> Client:
    """Return an SDK client with an async HTTP client, pointed at the fake."""
    client = Client(username, password, account_sid=fake.account_sid,
                    http_client=HeaderKeepingClient(), environment={})  # fmt: skip
    client.api.base_url = fake.base_url
    return client


@pytest.fixture
async def client(fake):
    """The real twilio SDK client, talking to the fake."""
    client = _client(fake, fake.account_sid, fake.auth_token)
    yield client
    await client.http_client.close()


@pytest.fixture
async def hook(fake):
    """A webhook receiver that checks X-Twilio-Signature the way warnd must; yields its URL."""
    validator = RequestValidator(fake.auth_token)
    received = []

    async def handle(request: web.Request) -> web.Response:
        """Accept only correctly signed requests, as a Twilio webhook endpoint must."""
        form = dict(await request.post())
        ok = validator.validate(str(request.url), form, request.headers.get("X-Twilio-Signature", ""))
        received.append((form, ok))
        return web.Response(text="<Response/>", content_type="text/xml", status=200 if ok else 403)

    app = web.Application()
    app.router.add_post("/hooks/twilio/{kind}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/hooks/twilio"
    yield url, received
    await runner.cleanup()


async def test_create_message_as_twilio_documents(fake, client, hook):
    """Create answers 201 with a queued SM resource; the fake saw path, Basic auth and form."""
    url, _ = hook
    body = "【warnd】暴雨红色预警" + "中" * 60  # 72 UCS-2 characters: 2 segments
    msg = await client.messages.create_async(to=TO, from_=FROM, body=body,
                                             status_callback=f"{url}/sms")  # fmt: skip
    assert re.fullmatch(r"SM[0-9a-f]{32}", msg.sid)
    assert msg.status == "queued"
    assert msg.direction == "outbound-api"
    assert msg.num_segments == "2"
    assert msg.to == TO
    assert msg.from_ == FROM
    assert msg.date_created == T0
    assert msg.account_sid == fake.account_sid

    sent = fake.requests[-1]
    assert sent.method == "POST"
    assert sent.path == f"/2010-04-01/Accounts/{fake.account_sid}/Messages.json"
    credentials = base64.b64encode(f"{fake.account_sid}:{fake.auth_token}".encode()).decode()
    assert sent.authorization == f"Basic {credentials}"
    assert sent.form == {"To": TO, "From": FROM, "Body": body, "StatusCallback": f"{url}/sms"}


async def test_fetch_follows_lifecycle_and_callback_is_signed(fake, client, hook, clock):
    """advance() changes what fetch returns and posts a status callback that validates."""
    url, received = hook
    msg = await client.messages.create_async(to=TO, from_=FROM, body="test",
                                             status_callback=f"{url}/sms")  # fmt: skip
    clock.now = T0 + timedelta(seconds=5)
    result = await fake.advance(msg.sid, "delivered")
    assert result.status == 200
    form, ok = received[-1]
    assert ok
    assert form["MessageSid"] == msg.sid
    assert form["MessageStatus"] == "delivered"
    assert form["AccountSid"] == fake.account_sid
    assert (form["From"], form["To"]) == (FROM, TO)
    assert "ErrorCode" not in form

    fetched = await client.messages(msg.sid).fetch_async()
    assert fetched.status == "delivered"
    assert fetched.date_sent == T0 + timedelta(seconds=5)


async def test_undelivered_callback_carries_error_code(fake, client, hook):
    """An undelivered message reports Twilio's error code in the resource and the callback."""
    url, received = hook
    msg = await client.messages.create_async(to=TO, from_=FROM, body="test",
                                             status_callback=f"{url}/sms")  # fmt: skip
    await fake.advance(msg.sid, "undelivered", error_code=30005)
    assert received[-1][0]["ErrorCode"] == "30005"
    assert (await client.messages(msg.sid).fetch_async()).error_code == 30005


async def test_no_callback_without_status_callback(fake, client):
    """A message created without StatusCallback gets no webhook."""
    msg = await client.messages.create_async(to=TO, from_=FROM, body="test")
    assert await fake.advance(msg.sid, "sent") is None
    assert fake.webhooks == []


async def test_list_inbound_replies_with_filters_and_paging(fake, client, clock):
    """Inbound replies are listed with To/From/DateSent> filters, across pages."""
    await client.messages.create_async(to=TO, from_=FROM, body="outbound, not a reply")
    early = fake.inject_inbound(TO, FROM, "收到")
    clock.now = T0 + timedelta(hours=2)
    for body in ("1", "１", "确认"):
        fake.inject_inbound(TO, FROM, body)
    fake.inject_inbound("+8613900000002", FROM, "ok")

    replies = await client.messages.list_async(to=FROM, from_=TO, page_size=2)
    assert [m.body for m in replies] == ["确认", "１", "1", "收到"]  # newest first
    assert {m.direction for m in replies} == {"inbound"}
    assert {m.status for m in replies} == {"received"}
    assert sum(1 for r in fake.requests if r.path.endswith("/Messages.json")
               and r.method == "GET") == 2  # fmt: skip

    later = await client.messages.list_async(to=FROM, date_sent_after=T0 + timedelta(hours=1))
    assert sorted(m.body for m in later) == sorted(["1", "１", "确认", "ok"])
    assert early["sid"] not in {m.sid for m in later}


async def test_scripted_429_surfaces_status_code_and_retry_after(fake, client):
    """A scripted 429 raises TwilioRestException(429, 20429) and Retry-After is readable."""
    fake.script([Answer(status=429, retry_after_s=2)])
    with pytest.raises(TwilioRestException) as caught:
        await client.messages.create_async(to=TO, from_=FROM, body="test")
    assert caught.value.status == 429
    assert caught.value.code == 20429
    assert last_headers.get()["Retry-After"] == "2"
    # The script is used up: the next create goes through.
    assert (await client.messages.create_async(to=TO, from_=FROM, body="test")).status == "queued"


async def test_scripted_vendor_code_is_readable(fake, client):
    """A scripted 400 with Twilio code 21211 keeps code and message."""
    message = "The 'To' number +86138 is not a valid phone number."
    fake.script([Answer(status=400, code=21211, message=message)])
    with pytest.raises(TwilioRestException) as caught:
        await client.messages.create_async(to=TO, from_=FROM, body="test")
    assert (caught.value.status, caught.value.code) == (400, 21211)
    assert "not a valid phone number" in caught.value.msg


async def test_scripted_500(fake, client):
    """A scripted 500 answers Twilio's 20500 error body."""
    fake.script([Answer(status=500)])
    with pytest.raises(TwilioRestException) as caught:
        await client.calls.create_async(to=TO, from_=FROM, twiml="<Response/>")
    assert (caught.value.status, caught.value.code) == (500, 20500)


async def test_invalid_to_number_is_21211_without_script(fake, client):
    """The fake validates To like Twilio does."""
    with pytest.raises(TwilioRestException) as caught:
        await client.messages.create_async(to="13800000001", from_=FROM, body="test")
    assert (caught.value.status, caught.value.code) == (400, 21211)


async def test_wrong_credentials_get_401_20003(fake):
    """A wrong auth token is refused with Twilio's 401 body."""
    client = _client(fake, fake.account_sid, "not-the-token")
    try:
        with pytest.raises(TwilioRestException) as caught:
            await client.messages.create_async(to=TO, from_=FROM, body="test")
    finally:
        await client.http_client.close()
    assert (caught.value.status, caught.value.code) == (401, 20003)
    assert fake.messages == {}


async def test_api_key_credentials_are_accepted(fake):
    """An API key SID and secret authenticate like the account's own token."""
    client = _client(fake, "SK" + "1" * 32, "key-secret")
    try:
        msg = await client.messages.create_async(to=TO, from_=FROM, body="test")
    finally:
        await client.http_client.close()
    assert msg.sid in fake.messages


async def test_rate_limit_answers_429_when_too_fast(fake, client):
    """Beyond the allowed rate, creates get 429 20429 and the fake counts them."""
    fake.limit_rate(per_s=0.2)  # one token per 5 s: the next three requests arrive sooner
    statuses = []
    for _ in range(3):
        try:
            await client.messages.create_async(to=TO, from_=FROM, body="test")
            statuses.append(201)
        except TwilioRestException as exc:
            statuses.append((exc.status, exc.code))
    assert statuses == [201, (429, 20429), (429, 20429)]
    assert fake.too_fast == 2
    assert int(last_headers.get()["Retry-After"]) >= 1


async def test_call_lifecycle_with_requested_events(fake, client, hook):
    """A call is created queued; each requested status event is posted signed; fetch agrees."""
    url, received = hook
    call = await client.calls.create_async(
        to=TO,
        from_=FROM,
        twiml="<Response><Say language='cmn-CN'>暴雨红色预警</Say></Response>",
        status_callback=f"{url}/call",
        status_callback_event=["initiated", "ringing", "answered", "completed"],
    )
    assert re.fullmatch(r"CA[0-9a-f]{32}", call.sid)
    assert call.status == "queued"
    for status in ("ringing", "in-progress", "completed"):
        result = await fake.advance(call.sid, status)
        assert result.status == 200
    assert [form["CallStatus"] for form, ok in received if ok] == [
        "ringing",
        "in-progress",
        "completed",
    ]
    assert received[-1][0]["CallSid"] == call.sid
    assert received[-1][0]["CallDuration"] == "0"
    assert (await client.calls(call.sid).fetch_async()).status == "completed"
    assert [c.sid for c in await client.calls.list_async(to=TO)] == [call.sid]


async def test_call_callback_defaults_to_completed_only(fake, client, hook):
    """Without StatusCallbackEvent, Twilio calls back only when the call ends."""
    url, received = hook
    call = await client.calls.create_async(to=TO, from_=FROM, url=f"{url}/twiml",
                                           status_callback=f"{url}/call")  # fmt: skip
    assert await fake.advance(call.sid, "ringing") is None
    result = await fake.advance(call.sid, "no-answer")
    assert result.params["CallStatus"] == "no-answer"
    assert len(received) == 1


async def test_gather_and_inbound_sms_webhooks_validate(fake, client, hook):
    """press() and reply() post Twilio's signed webhooks; the digits are recorded."""
    url, received = hook
    call = await client.calls.create_async(to=TO, from_=FROM, twiml="<Response/>")
    pressed = await fake.press(call.sid, "1", f"{url}/gather?delivery=42")
    assert pressed.status == 200
    assert received[-1][0]["Digits"] == "1"
    assert fake.gathered[call.sid] == ["1"]

    replied = await fake.reply(TO, FROM, "收到", f"{url}/sms-in")
    assert replied.status == 200
    form = received[-1][0]
    assert (form["From"], form["To"], form["Body"]) == (TO, FROM, "收到")
    assert form["MessageSid"] in fake.messages


@pytest.mark.parametrize("forgery", ["unsigned", "wrong_signature", "wrong_token", "tampered"])
async def test_forged_webhooks_do_not_validate(fake, hook, forgery):
    """Unsigned, mis-signed or tampered webhooks fail RequestValidator."""
    url, received = hook
    target = f"{url}/sms"
    params = {"MessageSid": "SM" + "0" * 32, "MessageStatus": "delivered",
              "AccountSid": fake.account_sid}  # fmt: skip
    if forgery == "unsigned":
        result = await fake.post_unsigned(target, params)
    elif forgery == "wrong_signature":
        result = await fake.post_with_signature(target, params, "bm90IGEgc2lnbmF0dXJl")
    elif forgery == "wrong_token":
        sig = RequestValidator("another-token").compute_signature(target, params)
        result = await fake.post_with_signature(target, params, sig)
    else:
        sig = RequestValidator(fake.auth_token).compute_signature(target, params)
        result = await fake.post_with_signature(target, {**params, "MessageStatus": "read"}, sig)
    assert result.status == 403
    assert received[-1][1] is False
    # The same params, signed properly, do validate: the receiver is not simply refusing all.
    assert (await fake.post_signed(target, params)).status == 200
