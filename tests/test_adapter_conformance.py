"""What every channel adapter promises, checked for each one against its real counterpart.

Loudspeaker and LED against Mosquitto, SMS and voice through each provider (Twilio, Aliyun, Tencent)
against its loopback fake, WeCom against the loopback WeCom. Each adapter sends deliveries warnd
itself planned (an issued warning, the scheduler run, the deliveries claimed from the store), and
is held to the same rules:

- no secret (auth token, app secret, robot key, MQTT password, AccessKey secret, SecretKey,
  callback token) in an exception, a Receipt, an outcome or a log line, whatever the far end answers;
- an HTTP answer means the same on every HTTP channel: 2xx sent; 429 and 5xx a retry, not before
  Retry-After; 401/403 the channel's credentials (AuthError: the adapter disables itself); any
  other 4xx never worth retrying. Aliyun and Tencent answer in codes more than in statuses: their
  fakes answer each status's situation as the provider does (throttled, its own error, the
  AccessKey refused, a request or number refused), and it must mean the same;
- the text that reaches the far end fits the adapter's declared `limits.max_text_chars`;
- `deliver()` accounts for every message whatever went wrong (the far end gone: a retry, or for a
  broker that is down, no attempt at all).

A new adapter is one `Case` in CASES (with a `rig` that starts it against its counterpart).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from adapters import registry
from adapters.led import LedAdapter
from adapters.loudspeaker import LoudspeakerAdapter
from adapters.sms import SmsAdapter
from adapters.voice import VoiceAdapter
from adapters.wecom import WecomAdapter
from tests.fakes.twilio import Answer
from tests.fakes.wecom import FakeWecom
from tests.support.china_harness import china_harness
from tests.support.harness import Harness, warning_body
from tests.support.live import close_live, live_harness
from tests.support.mqtt import Broker, stop_client_task
from tests.support.twilio_harness import twilio_harness
from tests.support.wait import until
from warnd.adapter import Adapter, AuthError, Message, PermanentError, Receipt, TransientError
from warnd.clock import FakeClock
from warnd.dispatcher import next_state

MQTT_PASSWORD = "mqtt-password-do-not-leak"
WECOM_SECRET = "wecom-app-secret-do-not-leak"
ROBOT_KEY = "robot-key-do-not-leak-0042"
# Long enough that every channel must cut it (the API takes 10,000 characters of description).
LONG_DESCRIPTION = "预计未来3小时内降雨量将达100毫米以上，山洪、泥石流风险极高。" * 300
# Asked of the far end in the retry tests: far beyond any backoff the rigs configure.
RETRY_AFTER_S = 600
SEND_TIMEOUT_S = 30.0


@dataclass
class Rig:
    """One adapter, started against its real counterpart, inside a harness driven by the test.

    Args:
        h: the harness (store, scheduler, API, fake clock).
        adapter: the adapter under test.
        secrets: every secret it was configured with.
        received: the texts the far end has been given so far.
        answer: HTTP channels: every request from now on is answered with this status (and
            Retry-After); None restores normal answers. None for channels without HTTP.
        away: take the far end away (stop the broker, close the fake).
        retry_after: whether the far end says when to retry (Retry-After); Aliyun and Tencent do
            not, and their transient codes carry the provider's own wait.
    """

    h: Harness
    adapter: Adapter
    secrets: tuple[str, ...]
    received: Callable[[], list[str]]
    answer: Callable[[int | None, int | None], None] | None
    away: Callable[[], Awaitable[None]]
    retry_after: bool = True


RigFactory = Callable[[Path, pytest.FixtureRequest], AbstractAsyncContextManager[Rig]]


@dataclass(frozen=True)
class Case:
    """An adapter class, how to start it against its counterpart, whether it speaks HTTP, its provider."""

    cls: type[Adapter]
    rig: RigFactory
    http: bool
    provider: str = ""

    def __str__(self) -> str:
        """The channel name (and provider), as test ids show it."""
        return f"{self.cls.kind}-{self.provider}" if self.provider else self.cls.kind


def _texts(payload: bytes | bytearray) -> list[str]:
    """The text of a device command (an MQTT payload), if it is one."""
    try:
        cmd = json.loads(payload)
    except ValueError:
        return []
    return [cmd["text"]] if isinstance(cmd, dict) and "msg_id" in cmd and cmd.get("text") else []


@asynccontextmanager
async def mqtt_rig(cls: type[Adapter], tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    """A device channel on the test's Mosquitto (with a password), and a client that hears every command."""
    broker: Broker = request.getfixturevalue("broker")
    h = await live_harness(
        tmp_path,
        [cls],
        directory={"villages": 1},
        settings={
            "mqtt": {
                "url": broker.url,
                "client_id": f"warnd-{uuid.uuid4().hex[:8]}",
                "username": "warnd",
                "password": MQTT_PASSWORD,
                "reconnect_max_s": 1.0,
            },
        },
    )
    adapter = h.daemon.adapters[cls.kind]
    tasks = [asyncio.create_task(coro) for _, coro in h.daemon.background()]
    heard: list[str] = []
    subscribed = asyncio.Event()

    async def listen() -> None:
        async with aiomqtt.Client(broker.host, broker.port, identifier=f"ear-{uuid.uuid4().hex}") as c:
            await c.subscribe("warnd/v1/#", qos=1)
            subscribed.set()
            async for m in c.messages:
                heard.extend(_texts(m.payload))  # type: ignore[arg-type]  # aiomqtt types payload loosely

    async def outage() -> None:
        broker.stop()

    ear = asyncio.create_task(listen())
    try:
        await until(lambda: adapter.ready() and subscribed.is_set(), what=f"{cls.kind} connected")
        yield Rig(h, adapter, (MQTT_PASSWORD,), lambda: list(heard), None, outage)
    finally:
        with contextlib.suppress(aiomqtt.MqttError):  # the ear lost its broker with the test's outage
            await stop_client_task(ear)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await close_live(h)


@asynccontextmanager
async def twilio_rig(
    cls: type[Adapter], tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Rig]:
    """An SMS or voice channel against the loopback Twilio."""
    field = "Body" if cls is SmsAdapter else "Twiml"
    async with twilio_harness(tmp_path, [cls], directory={"villages": 1}) as (h, fake):

        def answer(status: int | None, retry_after_s: int | None) -> None:
            # The fake takes a queue of answers: enough for every send the tests make.
            fake.unscript()
            if status is not None:
                fake.script([Answer(status, retry_after_s=retry_after_s)] * 200)

        def received() -> list[str]:
            return [r.form[field] for r in fake.requests if r.method == "POST" and field in r.form]

        yield Rig(h, h.daemon.adapters[cls.kind], (fake.auth_token,), received, answer, fake.close)


def _filled(template: str, params: dict[str, str] | list[str]) -> str:
    """A template's text with its variables (Aliyun ${name}, Tencent {1}) filled in."""
    if isinstance(params, dict):
        return re.sub(r"\$\{(\w+)\}", lambda m: params.get(m.group(1), ""), template)
    return re.sub(r"\{(\d+)\}", lambda m: params[int(m.group(1)) - 1], template)


@asynccontextmanager
async def provider_rig(
    cls: type[Adapter], provider: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Rig]:
    """An SMS or voice channel through one Chinese provider (Aliyun, Tencent) against its loopback fake."""
    voice = (provider,) if cls is VoiceAdapter else ()
    async with china_harness(tmp_path, villages=1, providers=(provider,), voice=voice) as (h, ali, tc, _):
        fake: Any = ali if provider == "aliyun" else tc

        def received() -> list[str]:
            """What reached a person: the SMS as sent, or the call's template as filled."""
            if cls is SmsAdapter:
                return [s.content for s in fake.sends]
            if provider == "aliyun":
                return [_filled(fake.templates[c.code], c.params) for c in ali.placed]
            return [_filled(tc.templates[str(c["TemplateId"])], c["TemplateParamSet"]) for c in tc.placed]

        a, t = h.settings.aliyun, h.settings.tencent
        configured = (a.access_key_secret, a.callback_token, t.secret_key, t.callback_token)
        secrets = tuple(x for x in configured if x)
        adapter = h.daemon.adapters[cls.kind]
        yield Rig(h, adapter, secrets, received, fake.answer_http, fake.close, retry_after=False)


@asynccontextmanager
async def wecom_rig(cls: type[Adapter], tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    """WeCom's robots and application messages against the loopback WeCom."""
    monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
    fake = FakeWecom(FakeClock(), keys={ROBOT_KEY}, secret=WECOM_SECRET)
    base = await fake.start()
    monkeypatch.setenv("WARND_TEST_ROBOT", ROBOT_KEY)
    robots = (
        '[[wecom_robot]]\nkey_env = "WARND_TEST_ROBOT"\nname = "村1工作群"\nvillages = ["330502101201"]\n'
    )
    h = await live_harness(
        tmp_path,
        [cls],
        clock=fake.clock,
        directory={"villages": 1, "extra": robots, "wecom_users": True},
        settings={
            "wecom": {
                "api_base": base,
                "corp_id": fake.corp_id,
                "agent_id": fake.agent_id,
                "secret": WECOM_SECRET,
            }
        },
    )

    def received() -> list[str]:
        robot = [c.content for c in fake.robot_calls]
        app = [c.body["textcard"]["description"] for c in fake.app_calls if "textcard" in c.body]
        return robot + app

    try:
        yield Rig(
            h, h.daemon.adapters[cls.kind], (WECOM_SECRET, ROBOT_KEY), received, fake.answer_http, fake.close
        )
    finally:
        await close_live(h)
        await fake.close()


# Every adapter warnd ships. A new one is one line here.
CASES = [
    Case(LoudspeakerAdapter, lambda p, r: mqtt_rig(LoudspeakerAdapter, p, r), http=False),
    Case(LedAdapter, lambda p, r: mqtt_rig(LedAdapter, p, r), http=False),
    Case(SmsAdapter, lambda p, r: twilio_rig(SmsAdapter, p, r), http=True, provider="twilio"),
    Case(VoiceAdapter, lambda p, r: twilio_rig(VoiceAdapter, p, r), http=True, provider="twilio"),
    *(
        Case(cls, lambda p, r, cls=cls, name=name: provider_rig(cls, name, p, r), http=True, provider=name)
        for name in ("aliyun", "tencent")
        for cls in (SmsAdapter, VoiceAdapter)
    ),
    Case(WecomAdapter, lambda p, r: wecom_rig(WecomAdapter, p, r), http=True),
]
HTTP_CASES = [c for c in CASES if c.http]


@pytest.fixture(params=CASES, ids=str)
async def rig(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Rig]:
    """Each adapter in turn, started against its counterpart."""
    async with request.param.rig(tmp_path, request) as r:
        yield r


@pytest.fixture(params=HTTP_CASES, ids=str)
async def http_rig(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Rig]:
    """Each HTTP adapter in turn, started against its loopback fake."""
    async with request.param.rig(tmp_path, request) as r:
        assert r.answer is not None
        yield r


async def planned(rig: Rig, **body: Any) -> list[Message]:
    """Issue a warning for village 1, let the scheduler plan it, claim this channel's deliveries."""
    h = rig.h
    wid = await h.issue(warning_body(**body))
    while await h.daemon.scheduler.run_once():
        pass
    claimed = await h.store.claim(h.clock.now(), 100, [rig.adapter.kind])
    warning = await h.store.get_warning(wid)
    assert claimed and warning is not None, f"nothing planned on {rig.adapter.kind}"
    return [Message(d, warning) for d in claimed]


def leaks(rig: Rig, *things: Any) -> list[str]:
    """The secrets found in these things (exceptions by str and repr, anything else as JSON)."""
    out = []
    for thing in things:
        if isinstance(thing, BaseException):
            text = f"{thing!s} {thing!r} {vars(thing)!r}"
        else:
            text = json.dumps(thing, default=repr, ensure_ascii=False)
        out.extend(f"{s!r} in {text[:300]}" for s in rig.secrets if s in text)
    return out


def test_every_registered_adapter_is_checked() -> None:
    """The suite covers the registry: an adapter added there and not here fails this."""
    assert {c.cls for c in CASES} == set(registry().values())
    assert {c.cls for c in HTTP_CASES} == {SmsAdapter, VoiceAdapter, WecomAdapter}
    # The person channels through every provider warnd ships.
    for cls in (SmsAdapter, VoiceAdapter):
        assert {c.provider for c in CASES if c.cls is cls} == {"twilio", "aliyun", "tencent"}


async def test_text_fits_the_declared_limit(rig: Rig) -> None:
    """A warning longer than any channel takes arrives cut to the adapter's max_text_chars."""
    messages = await planned(rig, description=LONG_DESCRIPTION)
    outcomes = await rig.adapter.deliver(messages, timeout_s=SEND_TIMEOUT_S)
    assert {o.state for o in outcomes} <= {"sent", "delivered"}, outcomes
    texts = await until(rig.received, what=f"{rig.adapter.kind} texts at the far end")
    limit = rig.adapter.limits.max_text_chars
    for text in texts:
        spoken = re.findall(r"<Say[^>]*>(.*?)</Say>", text, re.S) or [text]  # voice: what is said
        assert all(0 < len(s) <= limit for s in spoken), [len(s) for s in spoken]
    assert all(LONG_DESCRIPTION not in t for t in texts)


@pytest.mark.allow_error_logs  # an auth failure is logged as the error it is
async def test_no_secret_in_errors_receipts_outcomes_or_logs(
    rig: Rig, log_events: list[dict[str, Any]]
) -> None:
    """Whatever the far end answers (or if it is gone), no configured secret is repeated anywhere."""
    messages = await planned(rig)
    seen: list[Any] = []
    answers = [None, 401, 403, 429, 500, 400, 404] if rig.answer is not None else [None]
    for status in answers:
        if rig.answer is not None:
            rig.answer(status, 5)
        seen += await rig.adapter.send_batch(messages)
        seen += await rig.adapter.deliver(messages, timeout_s=SEND_TIMEOUT_S)
    assert any(isinstance(r, Receipt) for r in seen)
    await rig.away()
    seen += await rig.adapter.send_batch(messages)
    seen += await rig.adapter.deliver(messages, timeout_s=SEND_TIMEOUT_S)
    seen.append(rig.adapter.disabled_reason)
    assert not leaks(rig, *seen)
    assert log_events
    assert not leaks(rig, *log_events)


@pytest.mark.parametrize(
    ("status", "raised", "state"),
    [
        (200, None, "sent"),
        (201, None, "sent"),
        (429, TransientError, "failed"),
        (500, TransientError, "failed"),
        (502, TransientError, "failed"),
        (503, TransientError, "failed"),
        (401, AuthError, "failed"),
        (403, AuthError, "failed"),
        (400, PermanentError, "dead"),
        (404, PermanentError, "dead"),
        (410, PermanentError, "dead"),
    ],
)
@pytest.mark.allow_error_logs  # an auth failure is logged as the error it is
async def test_http_status_means_the_same_on_every_channel(
    http_rig: Rig, status: int, raised: type[Exception] | None, state: str
) -> None:
    """2xx sent; 429/5xx retried no sooner than Retry-After; 401/403 disable the channel; other 4xx dead."""
    rig = http_rig
    assert rig.answer is not None
    messages = await planned(rig)
    if raised is not None:
        rig.answer(status, RETRY_AFTER_S)
        (result, *_) = await rig.adapter.send_batch(messages[:1])
        assert type(result) is raised, result
        if raised is TransientError:
            assert isinstance(result, TransientError)
            if rig.retry_after:
                assert result.retry_after_s is not None and result.retry_after_s >= RETRY_AFTER_S - 1
    outcomes = await rig.adapter.deliver(messages, timeout_s=SEND_TIMEOUT_S)
    if raised is None:
        assert {o.state for o in outcomes} <= {"sent", "delivered"}, outcomes
        assert rig.adapter.ready()
        return
    assert {o.state for o in outcomes} == {state}, outcomes
    assert rig.adapter.ready() is (raised is not AuthError)
    if raised is AuthError:
        assert all(o.error and o.error.startswith("auth: ") for o in outcomes), outcomes
    if raised is TransientError:
        # The dispatcher's rule makes the retry due no sooner than the far end (or the provider's
        # code) asked.
        now = rig.h.clock.now()
        for o, m in zip(outcomes, messages, strict=True):
            _, due = next_state(o, m.delivery.attempts, now, rig.h.settings.dispatch)
            wait_s = RETRY_AFTER_S if rig.retry_after else (o.retry_after_s or 0)
            assert due is not None and due >= now + timedelta(seconds=wait_s - 1), (o, due)


async def test_deliver_accounts_for_every_message_when_the_far_end_is_gone(rig: Rig) -> None:
    """The far end away: every message gets an outcome; a broker that is down costs no attempt."""
    messages = await planned(rig)
    await rig.away()
    if rig.answer is None:
        await until(lambda: not rig.adapter.ready(), what="the adapter to notice")
    outcomes = await rig.adapter.deliver(messages, timeout_s=SEND_TIMEOUT_S)
    assert [o.delivery_id for o in outcomes] == [m.delivery.id for m in messages]
    if rig.answer is None:
        assert {(o.state, o.refund) for o in outcomes} == {("pending", True)}, outcomes
    else:
        assert {o.state for o in outcomes} == {"failed"}, outcomes
        assert all(o.error for o in outcomes)
