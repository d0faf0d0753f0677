"""Alibaba Cloud (阿里云) SMS through dysmsapi 2017-05-25, with the official async SDK.

Sends: one `SendSms` call per (template, filled variables, our id) with up to 1,000 numbers
(PhoneNumbers comma-separated), under the registered signature. `OutId` is our own id for the
deliveries planned together (base.out_id), so a send in doubt is found again by it.

Receipts (状态报告) and replies (上行短信): with `[aliyun] callback_token` set, Aliyun's HTTP
batch push posts them to `/hooks/aliyun/{token}/sms/report` and `/hooks/aliyun/{token}/sms/reply`
(Aliyun does not sign these: the path's token is the check); answers are fast and duplicates are
harmless (an ack never moves a delivery backwards, a reply is stored once by its sequence id).
Without it (an office behind NAT) receipts are pulled with `QuerySendDetails`; replies cannot be
pulled over HTTP (Aliyun hands them out through an MNS queue only), so they need the push.

A send in doubt (a timeout after the request left, a crash) is looked up with
`QuerySendDetails` by number and day: a record carrying our `OutId` is this delivery's message.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import aiohttp
import structlog
from aiohttp import web
from alibabacloud_dysmsapi20170525 import models as sms_models
from alibabacloud_dysmsapi20170525.client import Client as SmsClient
from alibabacloud_dyvmsapi20170525 import models as voice_models
from alibabacloud_dyvmsapi20170525.client import Client as VoiceClient
from alibabacloud_tea_openapi import models as openapi_models
from darabonba.runtime import RuntimeOptions
from Tea.exceptions import TeaException

from adapters.providers.base import Capabilities, Provider, mask_numbers, out_id
from warnd import inbound, messages, pacing, templates
from warnd.adapter import (
    AdapterContext,
    AuthError,
    Limits,
    Message,
    PermanentError,
    Receipt,
    TransientError,
    Webhook,
    classify_http,
)
from warnd.pacing import Pacer
from warnd.phone import mask_phone
from warnd.store import from_ts

if TYPE_CHECKING:
    from warnd.config import AliyunSettings, Settings

log = structlog.get_logger("warnd.aliyun")

# Aliyun keeps SMS records by day in Beijing time: QuerySendDetails asks for one day (yyyyMMdd).
BEIJING = ZoneInfo("Asia/Shanghai")
# SendSms takes at most 1,000 numbers a call.
MAX_NUMBERS = 1000
# Lookups and receipt pulls in flight at once (QuerySendDetails has a QPS quota of its own).
QUERY_CONCURRENCY = 8
# A record dated up to this long before a delivery's claim may still be its send (clock skew).
RECONCILE_SKEW = timedelta(minutes=10)
# What Aliyun's HTTP push expects as the answer to a batch it posted: anything else is pushed again.
PUSH_OK = {"code": 0, "msg": "成功"}

# Aliyun's codes (the Code field of an answer, HTTP 200 or not), each mapped on purpose:
# (kind, why) with kind "transient" (retry; the next provider sends it meanwhile), "permanent"
# (this provider will never send it; the next one may), "auth" (the account or its set-up is
# wrong: the provider is disabled and the operator told).
VENDOR_CODES: dict[str, tuple[str, str]] = {
    # 业务限流: this number had too many messages lately (1/min, 5/h, its daily cap by default).
    "isv.BUSINESS_LIMIT_CONTROL": ("transient", "Aliyun flow control for this number"),
    "isv.DAY_LIMIT_CONTROL": ("transient", "Aliyun daily limit reached"),  # 触发日发送限额
    "Throttling.User": ("transient", "Aliyun API throttling"),  # the account's QPS
    "isp.SYSTEM_ERROR": ("transient", "Aliyun system error"),  # 系统错误
    "isp.OUT_OF_SERVICE": ("auth", "Aliyun service stopped for this account"),  # 业务停机
    "isv.OUT_OF_SERVICE": ("auth", "Aliyun service stopped for this account"),
    "isv.AMOUNT_NOT_ENOUGH": ("auth", "Aliyun account balance exhausted"),  # 账户余额不足
    "isv.ACCOUNT_NOT_EXISTS": ("auth", "Aliyun account does not exist"),
    "isv.ACCOUNT_ABNORMAL": ("auth", "Aliyun account abnormal"),
    "isp.RAM_PERMISSION_DENY": ("auth", "the AccessKey may not send SMS (RAM permission)"),
    "InvalidAccessKeyId.NotFound": ("auth", "Aliyun does not know the AccessKey ID"),
    "SignatureDoesNotMatch": ("auth", "AccessKey secret wrong"),
    "isv.SMS_SIGNATURE_ILLEGAL": ("auth", "signature (签名) not approved: fix [aliyun] sign_name"),
    "isv.SMS_SIGN_ILLEGAL": ("auth", "signature (签名) not approved: fix [aliyun] sign_name"),
    "isv.DENY_IP_RANGE": ("auth", "this server's IP may not call Aliyun (allow list)"),
    "isv.SMS_TEMPLATE_ILLEGAL": ("permanent", "template not approved or not this account's"),
    "isv.TEMPLATE_MISSING_PARAMETERS": ("permanent", "template variables missing"),
    "isv.TEMPLATE_PARAMS_ILLEGAL": ("permanent", "template variable refused (URL, length)"),
    "isv.PARAM_LENGTH_LIMIT": ("permanent", "template variable too long"),
    "isv.INVALID_PARAMETERS": ("permanent", "request refused as invalid"),
    "isv.INVALID_JSON_PARAM": ("permanent", "template variables not valid JSON"),
    "isv.MOBILE_NUMBER_ILLEGAL": ("permanent", "invalid phone number"),  # 非法手机号
    "isv.MOBILE_COUNT_OVER_LIMIT": ("permanent", "too many numbers in one call"),
    "isv.BLACK_KEY_CONTROL_LIMIT": ("permanent", "text refused by Aliyun's keyword control"),
    "isv.DOMESTIC_NUMBER_NOT_SUPPORTED": ("permanent", "number not served by this account"),
}

# Delivery report codes (err_code / ErrCode) that mean the number will never get it.
DEAD_REPORT_CODES = {
    "MK:0001": "number not in service",  # 空号
    "IC:0001": "number not in service",
    "MN:0001": "number not in service",
    "MK:0005": "number refused by the carrier",
    "UNDELIV": "undeliverable",
}


def national(address: str | None) -> str:
    """A mainland number as Aliyun takes it (11 digits); anything else this provider cannot send."""
    a = (address or "").strip()
    if a.startswith("+86") and len(a) == 14 and a[3:].isdigit():
        return a[3:]
    raise PermanentError("aliyun sends to mainland China numbers only")


def ref(oid: str, phone: str) -> str:
    """The provider_ref of one number of one send: our OutId and the number (both in every report).

    The number in E.164, as warnd writes numbers (and masks them wherever they are logged).
    """
    return f"aliyun:{oid}:+86{phone}"


def vendor_error(code: str, message: str = "", status: int = 200) -> Exception:
    """What an Aliyun code means (see VENDOR_CODES); an unknown one by its HTTP status."""
    kind, why = VENDOR_CODES.get(code, ("", ""))
    if not kind:
        # Aliyun's message may quote the request: numbers are masked.
        err = classify_http(status if status >= 400 else 400, f"aliyun {code}: {mask_numbers(message)[:120]}")
        return err or PermanentError(f"aliyun {code}")
    reason = f"aliyun {code}: {why}"
    if kind == "transient":
        return TransientError(reason, 60.0)
    if kind == "auth":
        return AuthError(reason)
    return PermanentError(reason)


def sdk_error(exc: Exception) -> Exception:
    """An exception from the SDK as ours: an HTTP answer by its code, no answer as a send in doubt."""
    code = getattr(exc, "code", None)
    status = getattr(exc, "status_code", None) or getattr(exc, "statusCode", None)
    if isinstance(status, int) and code:
        return vendor_error(str(code), str(getattr(exc, "message", "") or ""), status)
    # No answer: only a connection that was never made proves nothing went out.
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, aiohttp.ClientConnectorError):
            return TransientError("aliyun unreachable", maybe_sent=False)
        inner = getattr(cause, "inner_exception", None)
        cause = inner if isinstance(inner, BaseException) else (cause.__cause__ or cause.__context__)
    return TransientError(f"aliyun: no answer ({type(exc).__name__})", maybe_sent=True)


def config(a: AliyunSettings, endpoint: str) -> openapi_models.Config:
    """The SDK's config: the AccessKey, the endpoint, timeouts (ms) below the dispatcher's."""
    ms = int(a.timeout_s * 1000)
    return openapi_models.Config(
        access_key_id=a.access_key_id,
        access_key_secret=a.access_key_secret,
        endpoint=endpoint,
        protocol=a.protocol,
        read_timeout=ms,
        connect_timeout=min(ms, 5000),
    )


class AliyunSms(Provider):
    """SMS through Aliyun's dysmsapi.

    Args:
        ctx: what the daemon lends the channel.
        pacer: the channel's pacer.
    """

    name = "aliyun"
    channel = "sms"

    def __init__(self, ctx: AdapterContext, pacer: Pacer) -> None:
        """Declare what Aliyun takes; the client is built in start()."""
        super().__init__(ctx, pacer)
        a = self.settings
        self.caps = Capabilities(free_text=False, batch_size=MAX_NUMBERS, rate_per_s=a.rate_per_s,
                                 daily_quota=a.daily_quota, concurrency=8)  # fmt: skip
        # Templated texts are short; the dispatcher may hand over two calls' worth at once.
        self.limits = Limits(max_text_chars=500, concurrency=8, batch_size=2 * MAX_NUMBERS)
        self.client: SmsClient | None = None
        self._queries = asyncio.Semaphore(QUERY_CONCURRENCY)

    @property
    def settings(self) -> AliyunSettings:
        """The [aliyun] settings."""
        return self.ctx.settings.aliyun

    @classmethod
    def configured(cls, settings: Settings) -> bool:
        """An AccessKey and at least one approved template for SMS."""
        a = settings.aliyun
        return bool(a.access_key_id and a.sms_templates)

    @property
    def sign_name(self) -> str:
        """The registered signature."""
        return self.settings.sign_name or self.ctx.settings.sms.signature

    async def start(self) -> None:
        """Build the SDK client; no secret or signature is an AuthError that disables this provider."""
        a = self.settings
        if not a.access_key_secret:
            raise AuthError("no AccessKey secret: set WARND_ALIYUN__ACCESS_KEY_SECRET or the credential")
        if not self.sign_name:
            raise AuthError("no signature: set [aliyun] sign_name or [sms] signature")
        self.client = SmsClient(config(a, a.sms_endpoint))
        log.info("aliyun.started", channel=self.channel, mode="push" if a.callback_token else "pull",
                 templates=sorted(a.sms_templates))  # fmt: skip

    def runtime(self) -> RuntimeOptions:
        """No SDK retries (the scheduler retries), timeouts from [aliyun] timeout_s."""
        ms = int(self.settings.timeout_s * 1000)
        return RuntimeOptions(autoretry=False, read_timeout=ms, connect_timeout=min(ms, 5000))

    # -- sending ----------------------------------------------------------------------------

    def template_for(self, message: Message) -> tuple[str, dict[str, str], str]:
        """(template code, filled variables, the text a person reads) for one message."""
        kind, values = messages.for_message(message, self.ctx.settings, self.ctx.directory())
        t = self.settings.sms_templates.get(kind)
        if t is None:
            raise PermanentError(f"aliyun: no approved template for {kind!r} ([aliyun.sms_templates])")
        ack = message.delivery.ack_required and t.ack_code is not None
        code, text = (t.ack_code, t.ack_text) if ack else (t.code, t.text)
        filled = templates.fill(self.name, t, values)
        return str(code), filled, templates.render(self.name, str(text), filled, self.sign_name)

    def daily_quota(self) -> int:
        """[aliyun] daily_quota as it is now."""
        return self.settings.daily_quota

    async def over_quota(self, messages_: Sequence[Message]) -> set[str]:
        """Numbers that already had today's quota from this provider (counted locally)."""
        counts = await self.quota_used(sorted({m.delivery.address or "" for m in messages_}))
        return {a for a, n in counts.items() if n >= self.settings.daily_quota}

    async def send_batch(self, messages_: Sequence[Message]) -> list[Receipt | BaseException]:
        """Group by template, variables and OutId; one SendSms call per group of up to 1,000 numbers."""
        results: list[Receipt | BaseException | None] = [None] * len(messages_)
        full = await self.over_quota(messages_)
        groups: dict[tuple[str, str, str], list[tuple[int, str]]] = {}
        for i, m in enumerate(messages_):
            try:
                phone = national(m.delivery.address)
                code, filled, _ = self.template_for(m)
            except PermanentError as exc:
                results[i] = exc
                continue
            # The quota is kept for what matters: a red warning is never the message it blocks, and
            # the last provider of the chain leaves the refusing to Aliyun (nobody else would send it).
            red = m.warning.get("level") == "red" and m.delivery.kind == "warning"
            if m.delivery.address in full and not red and self.hand_on:
                results[i] = PermanentError(
                    f"aliyun: daily quota of {self.settings.daily_quota} reached locally"
                )
                continue
            key = (code, json.dumps(filled, ensure_ascii=False, sort_keys=True), out_id(m.delivery))
            groups.setdefault(key, []).append((i, phone))
        calls = [(key, members[n : n + MAX_NUMBERS]) for key, members in groups.items()
                 for n in range(0, len(members), MAX_NUMBERS)]  # fmt: skip
        gate = asyncio.Semaphore(self.caps.concurrency)

        async def one(key: tuple[str, str, str], members: list[tuple[int, str]]) -> None:
            """One SendSms call; its answer is every member's."""
            async with gate:
                answer = await self._send_call(key, [p for _, p in members])
            for (i, _), r in zip(members, answer, strict=True):
                results[i] = r
            log.debug("aliyun.sent", numbers=len(members), template=key[0], out_id=key[2],
                      ok=sum(isinstance(r, Receipt) for r in answer))  # fmt: skip

        await asyncio.gather(*(one(k, ms) for k, ms in calls))
        return [r if r is not None else TransientError("aliyun: not sent") for r in results]

    async def _send_call(self, key: tuple[str, str, str], phones: list[str]) -> list[Receipt | BaseException]:
        """Make one SendSms call for these numbers; a Receipt or the error for each."""
        code, params, oid = key
        request = sms_models.SendSmsRequest(
            phone_numbers=",".join(phones), sign_name=self.sign_name, template_code=code,
            template_param=params, out_id=oid,
        )  # fmt: skip
        if self.client is None:
            return [TransientError("aliyun client not started")] * len(phones)
        try:
            async with self.paced():
                response = await self.client.send_sms_with_options_async(request, self.runtime())
        except (TeaException, aiohttp.ClientError, TimeoutError) as exc:
            return [sdk_error(exc)] * len(phones)
        body = response.body
        if body is None or body.code != "OK":
            err = vendor_error(getattr(body, "code", "") or "unknown", getattr(body, "message", "") or "")
            return [err] * len(phones)
        return [Receipt("sent", provider_ref=ref(oid, p), provider=self.name) for p in phones]

    @contextlib.asynccontextmanager
    async def paced(self) -> AsyncIterator[None]:
        """The account's declared rate between call starts (warnd.pacing keeps it)."""
        spacer = self.pacer.spacer(self.name, self.settings.access_key_id, self.caps.rate_per_s or 1.0)
        with pacing.bound(spacer):
            async with pacing.slot():
                # Aliyun counts calls as they arrive: the next may start one interval after this one.
                pacing.on_wire()
                yield

    # -- lookups ----------------------------------------------------------------------------

    async def details(self, phone: str, day: datetime) -> list[Any]:
        """Aliyun's records of messages to one number on one (Beijing) day, newest first."""
        if self.client is None:
            raise TransientError("aliyun client not started")
        found: list[Any] = []
        page = 1
        while True:
            request = sms_models.QuerySendDetailsRequest(
                phone_number=phone, send_date=day.astimezone(BEIJING).strftime("%Y%m%d"),
                page_size=50, current_page=page,
            )  # fmt: skip
            try:
                async with self._queries:
                    response = await self.client.query_send_details_with_options_async(
                        request, self.runtime()
                    )
            except (TeaException, aiohttp.ClientError, TimeoutError) as exc:
                raise sdk_error(exc) from None
            body = response.body
            if body is None or body.code != "OK":
                raise TransientError(f"aliyun QuerySendDetails: {getattr(body, 'code', '?')}")
            dtos = body.sms_send_detail_dtos.sms_send_detail_dto if body.sms_send_detail_dtos else None
            found.extend(dtos or [])
            total = int(body.total_count or 0)
            # Four pages at most: dozens of messages to one person in a day do not happen.
            if len(found) >= total or not dtos or page >= 4:
                return found
            page += 1

    async def reconcile(self, message: Message) -> Receipt | None:
        """Find the message by our OutId among the number's records of the claim's day (and today)."""
        d = message.delivery
        try:
            phone = national(d.address)
        except PermanentError:
            return None
        oid = out_id(d)
        assert d.maybe_sent_at is not None
        today = self.ctx.clock.now().astimezone(BEIJING).date()
        days = {(d.maybe_sent_at - RECONCILE_SKEW).astimezone(BEIJING).date(), today}
        for day in sorted(days):
            at = datetime(day.year, day.month, day.day, tzinfo=BEIJING)
            for r in await self.details(phone, at):
                # SendStatus 2 is a failure: such a message does not count as sent.
                if r.out_id == oid and r.send_status != 2:
                    state = "delivered" if r.send_status == 3 else "sent"
                    log.debug(
                        "aliyun.found", msg_id=d.msg_id, target=d.target, to=mask_phone(d.address or "")
                    )
                    return Receipt(state, provider_ref=ref(oid, phone), provider=self.name)
        return None

    # -- receipts and replies ---------------------------------------------------------------

    async def apply_report(self, oid: str, phone: str, success: bool | None, err_code: str) -> bool:
        """Apply one delivery report; True when it was final."""
        fb = self.ctx.feedback
        if success:
            await fb.ack(source="aliyun.sms", status="delivered", provider_ref=ref(oid, phone),
                         detail={"code": err_code or "DELIVERED"})  # fmt: skip
            return True
        if success is False:
            dead = DEAD_REPORT_CODES.get(err_code)
            status = "dead" if dead else "failed"
            why = f"aliyun {err_code}: {dead or 'not delivered'}"
            await fb.ack(
                source="aliyun.sms", status=status, provider_ref=ref(oid, phone), detail={"detail": why}
            )
            return True
        return False

    async def reply(self, phone: str, body: str, sequence: str) -> bool:
        """Apply one reply (上行短信); True when it was new. Aliyun sends no automatic answer."""
        sender = "+86" + phone if len(phone) == 11 else phone
        reply = await inbound.receive(
            self.ctx.store, self.ctx.feedback, channel="sms", phone=sender,
            body=body, provider_ref=f"aliyun-up:{sequence}", now=self.ctx.clock.now(),
        )  # fmt: skip
        return not reply.duplicate

    def authorised(self, request: web.Request) -> bool:
        """Whether a push came to our token's path (Aliyun does not sign its HTTP push)."""
        token = self.settings.callback_token or ""
        given = request.match_info.get("token", "")
        return (
            bool(token) and hashlib.sha256(given.encode()).digest() == hashlib.sha256(token.encode()).digest()
        )

    async def report_hook(self, request: web.Request) -> web.Response:
        """POST /hooks/aliyun/{token}/sms/report: a batch of delivery reports (SmsReport)."""
        if not self.authorised(request):
            return web.json_response({"code": 403, "msg": "forbidden"}, status=403)
        try:
            items = await request.json()
        except ValueError:
            return web.json_response({"code": 400, "msg": "not JSON"}, status=400)
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and item.get("out_id") and item.get("phone_number"):
                success, err = bool(item.get("success")), str(item.get("err_code") or "")
                await self.apply_report(str(item["out_id"]), str(item["phone_number"]), success, err)
        return web.json_response(PUSH_OK)

    async def reply_hook(self, request: web.Request) -> web.Response:
        """POST /hooks/aliyun/{token}/sms/reply: a batch of replies (SmsUp)."""
        if not self.authorised(request):
            return web.json_response({"code": 403, "msg": "forbidden"}, status=403)
        try:
            items = await request.json()
        except ValueError:
            return web.json_response({"code": 400, "msg": "not JSON"}, status=400)
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and item.get("phone_number"):
                await self.reply(str(item["phone_number"]), str(item.get("content") or ""),
                                 str(item.get("sequence_id") or item.get("send_time") or ""))  # fmt: skip
        return web.json_response(PUSH_OK)

    def webhooks(self) -> list[Webhook]:
        """Aliyun's HTTP push paths, behind the [aliyun] callback_token."""
        if not self.settings.callback_token:
            return []
        return [
            Webhook("POST", "/hooks/aliyun/{token}/sms/report", self.report_hook,
                    "Aliyun SMS delivery reports (HTTP batch push; the path's token is the check)"),
            Webhook("POST", "/hooks/aliyun/{token}/sms/reply", self.reply_hook,
                    "Aliyun SMS replies (HTTP batch push; the path's token is the check)"),
        ]  # fmt: skip

    def poll_interval_s(self) -> float | None:
        """Without a callback token, receipts are pulled every [aliyun] pull_interval_s."""
        return None if self.settings.callback_token else self.settings.pull_interval_s

    async def poll_once(self) -> int:
        """Pull the receipts of the messages in flight (QuerySendDetails per number and day)."""
        rows = await self.ctx.store.in_flight_of(self.channel, self.name)

        async def one(row: dict[str, Any]) -> int:
            """Look one delivery's message up and apply its report if it is final."""
            _, oid, e164 = str(row["provider_ref"]).split(":", 2)
            phone = e164.removeprefix("+86")
            sent = from_ts(row.get("sent_at")) or self.ctx.clock.now().astimezone(BEIJING)
            for r in await self.details(phone, sent):
                if r.out_id == oid:
                    final = {3: True, 2: False}.get(int(r.send_status or 1))
                    return int(await self.apply_report(oid, phone, final, r.err_code or ""))
            return 0

        return sum(await asyncio.gather(*(one(r) for r in rows)))


# Call results in Aliyun's reports (status_code): 200000 the call was answered and ended normally;
# every other final code (busy 200002, no answer 200005, powered off 200010, rejected …) means
# nobody heard it, which is a failed attempt the policy may retry.
CALL_ANSWERED = "200000"
# Seconds IvrCall waits for the key after the prompt (its Timeout is in ms): as Twilio's gather.
IVR_TIMEOUT_MS = 10_000


class AliyunVoice(Provider):
    """Calls through Aliyun's voice service: SingleCallByTts, and IvrCall where key 1 confirms (叫应).

    Reports come only by push (VoiceReport / VoiceCallReport, with the key pressed in `dtmf`) to
    `/hooks/aliyun/{token}/voice/report`, so this provider needs `[aliyun] callback_token`. A call
    cannot be looked up by our id (QueryCallDetailByCallId needs Aliyun's call id), so a call in
    doubt is placed again.

    Args:
        ctx: what the daemon lends the channel.
        pacer: the channel's pacer.
    """

    name = "aliyun"
    channel = "voice"

    def __init__(self, ctx: AdapterContext, pacer: Pacer) -> None:
        """Declare what Aliyun takes; the client is built in start()."""
        super().__init__(ctx, pacer)
        self.caps = Capabilities(
            free_text=False, batch_size=1, rate_per_s=self.settings.rate_per_s, concurrency=8
        )
        self.limits = Limits(max_text_chars=500, concurrency=8, batch_size=100)
        self.client: Any = None

    @property
    def settings(self) -> AliyunSettings:
        """The [aliyun] settings."""
        return self.ctx.settings.aliyun

    @classmethod
    def configured(cls, settings: Settings) -> bool:
        """An AccessKey, a calling number, voice templates and a push URL token."""
        a = settings.aliyun
        return bool(a.access_key_id and a.called_show_number and a.voice_templates and a.callback_token)

    async def start(self) -> None:
        """Build the voice SDK client."""
        a = self.settings
        if not a.access_key_secret:
            raise AuthError("no AccessKey secret: set WARND_ALIYUN__ACCESS_KEY_SECRET or the credential")
        self.client = VoiceClient(config(a, a.voice_endpoint))

    def runtime(self) -> RuntimeOptions:
        """No SDK retries, timeouts from [aliyun] timeout_s."""
        ms = int(self.settings.timeout_s * 1000)
        return RuntimeOptions(autoretry=False, read_timeout=ms, connect_timeout=min(ms, 5000))

    async def send(self, message: Message) -> Receipt:
        """Place one call: IvrCall (key 1) when the delivery asks for a confirmation, else SingleCallByTts."""
        d = message.delivery
        phone = national(d.address)
        kind, values = messages.for_message(message, self.ctx.settings, self.ctx.directory())
        t = self.settings.voice_templates.get(kind)
        if t is None:
            raise PermanentError(
                f"aliyun: no approved voice template for {kind!r} ([aliyun.voice_templates])"
            )
        params = json.dumps(templates.fill(self.name, t, values), ensure_ascii=False)
        a, oid = self.settings, out_id(d)
        ivr = d.ack_required and bool(t.ack_code and a.ivr_confirm_code)
        if self.client is None:
            raise TransientError("aliyun client not started")
        try:
            async with self.paced():
                if ivr:
                    keys = [voice_models.IvrCallRequestMenuKeyMap(key="1", code=a.ivr_confirm_code)]
                    request = voice_models.IvrCallRequest(
                        called_show_number=a.called_show_number, called_number=phone, start_code=t.ack_code,
                        start_tts_params=params, menu_key_map=keys, timeout=IVR_TIMEOUT_MS, play_times=2,
                        out_id=oid,
                    )  # fmt: skip
                    response = await self.client.ivr_call_with_options_async(request, self.runtime())
                else:
                    request = voice_models.SingleCallByTtsRequest(
                        called_show_number=a.called_show_number, called_number=phone, tts_code=t.code,
                        tts_param=params, play_times=2, out_id=oid,
                    )  # fmt: skip
                    response = await self.client.single_call_by_tts_with_options_async(
                        request, self.runtime()
                    )
        except (TeaException, aiohttp.ClientError, TimeoutError) as exc:
            raise sdk_error(exc) from None
        body = response.body
        if body is None or body.code != "OK":
            raise vendor_error(getattr(body, "code", "") or "unknown", getattr(body, "message", "") or "")
        log.debug("aliyun.called", msg_id=d.msg_id, target=d.target, ivr=ivr, to=mask_phone(d.address or ""))
        return Receipt("sent", provider_ref=f"aliyun-call:{body.call_id}", provider=self.name)

    @contextlib.asynccontextmanager
    async def paced(self) -> AsyncIterator[None]:
        """The account's declared call rate between call starts (warnd.pacing keeps it)."""
        spacer = self.pacer.spacer(self.name, self.settings.called_show_number, self.caps.rate_per_s or 1.0)
        with pacing.bound(spacer):
            async with pacing.slot():
                pacing.on_wire()
                yield

    async def apply_report(self, call_id: str, status_code: str, dtmf: str) -> bool:
        """Apply one call report: key 1 confirms; answered without it, or unanswered, is a failed attempt."""
        row = await self.ctx.store.delivery_by_provider_ref(f"aliyun-call:{call_id}")
        if row is None:
            return False
        fb, by = self.ctx.feedback, {"msg_id": row["msg_id"], "target": row["target"]}
        detail: dict[str, Any] = {"call_id": call_id, "status": status_code}
        if "1" in dtmf:
            await fb.ack(
                source="aliyun.voice", status="acknowledged", detail={**detail, "digits": dtmf}, **by
            )
        elif not status_code:
            return False  # an intermediate report without a key: nothing to record yet
        elif status_code != CALL_ANSWERED:
            failed = {**detail, "detail": f"call {status_code}"}
            await fb.ack(source="aliyun.voice", status="failed", detail=failed, **by)
        elif row["ack_required"] and row["state"] != "acknowledged":
            why = f"pressed {dtmf}" if dtmf else "call ended without key 1"
            await fb.ack(source="aliyun.voice", status="failed", detail={**detail, "detail": why}, **by)
        else:
            await fb.ack(source="aliyun.voice", status="delivered", detail=detail, **by)
        return True

    async def report_hook(self, request: web.Request) -> web.Response:
        """POST /hooks/aliyun/{token}/voice/report: VoiceReport / VoiceCallReport items."""
        token = self.settings.callback_token or ""
        given = request.match_info.get("token", "")
        if not token or hashlib.sha256(given.encode()).digest() != hashlib.sha256(token.encode()).digest():
            return web.json_response({"code": 403, "msg": "forbidden"}, status=403)
        try:
            items = await request.json()
        except ValueError:
            return web.json_response({"code": 400, "msg": "not JSON"}, status=400)
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and item.get("call_id"):
                await self.apply_report(str(item["call_id"]), str(item.get("status_code") or ""),
                                        str(item.get("dtmf") or ""))  # fmt: skip
        return web.json_response(PUSH_OK)

    def webhooks(self) -> list[Webhook]:
        """Aliyun's voice report push, behind the [aliyun] callback_token."""
        return [
            Webhook("POST", "/hooks/aliyun/{token}/voice/report", self.report_hook,
                    "Aliyun call reports, with the key pressed (HTTP push; the path's token is the check)"),
        ]  # fmt: skip
