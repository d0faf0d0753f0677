"""Tencent Cloud (腾讯云) SMS through its API 2021-01-11, with the official SDK.

The SDK is synchronous (requests): every call runs in a worker thread (`asyncio.to_thread`), so
the event loop never waits on it.

Sends: one `SendSms` call per (template, filled variables, our id) with up to 200 numbers;
`SessionContext` is our own id for the deliveries planned together (base.out_id), and Tencent
answers per number (`SendStatusSet`): a number refused (over its daily limit, in the blacklist)
fails alone, and the next provider sends it.

Receipts (状态报告) and replies (上行短信): with `[tencent] callback_token` set, Tencent posts them
to `/hooks/tencent/{token}/sms/report` and `/hooks/tencent/{token}/sms/reply` (unsigned: the path's
token is the check); without it (behind NAT) they are pulled with PullSmsSendStatus and
PullSmsReplyStatus, each status and reply handed out once.

A send in doubt is looked up with PullSmsSendStatusByPhoneNumber since the claim: a status with
our SessionContext is this delivery's message. Limit: Tencent lists a message there only once the
carrier reported it, so one accepted but not yet reported is not found and is sent again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web
from tencentcloud.common import credential
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.sms.v20210111 import models as sms_models
from tencentcloud.sms.v20210111.sms_client import SmsClient
from tencentcloud.vms.v20200902 import models as vms_models
from tencentcloud.vms.v20200902.vms_client import VmsClient

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
)
from warnd.pacing import Pacer

if TYPE_CHECKING:
    from warnd.config import Settings, TencentSettings

log = structlog.get_logger("warnd.tencent")

# SendSms takes at most 200 numbers a call.
MAX_NUMBERS = 200
# A status dated up to this long before a delivery's claim may still be its send (clock skew).
RECONCILE_SKEW = timedelta(minutes=10)
# Statuses and replies pulled per call (Tencent's most).
PULL_LIMIT = 100
# What Tencent expects as the answer to a callback.
CALLBACK_OK = {"result": 0, "errmsg": "OK"}

# Tencent's codes (per number in SendStatusSet, or for the whole call), each mapped on purpose.
VENDOR_CODES: dict[str, tuple[str, str]] = {
    "LimitExceeded.PhoneNumberDailyLimit": ("transient", "number over its daily limit at Tencent"),
    "LimitExceeded.PhoneNumberOneHourLimit": ("transient", "number over its hourly limit at Tencent"),
    "LimitExceeded.PhoneNumberThirtySecondLimit": ("transient", "number over its 30-second limit"),
    "LimitExceeded.PhoneNumberSameContentDailyLimit": (
        "transient",
        "same text to this number too often today",
    ),
    "LimitExceeded.DeliveryFrequencyLimit": ("transient", "Tencent delivery frequency limit"),
    "LimitExceeded.AppDailyLimit": ("transient", "the application's daily limit at Tencent"),
    "RequestLimitExceeded": ("transient", "Tencent API rate limit"),
    "InternalError.Timeout": ("transient", "Tencent internal timeout"),
    "InternalError.RequestTimeException": ("transient", "Tencent refused the request time (clock skew?)"),
    "InternalError.OtherError": ("transient", "Tencent internal error"),
    "FailedOperation.InsufficientBalanceInSmsPackage": ("auth", "Tencent SMS package exhausted"),
    "FailedOperation.SignatureIncorrectOrUnapproved": (
        "auth",
        "signature (签名) not approved: fix [tencent]",
    ),
    "UnauthorizedOperation.SmsSdkAppIdVerifyFail": (
        "auth",
        "SmsSdkAppId wrong: fix [tencent] sms_sdk_app_id",
    ),
    "UnauthorizedOperation.IndividualUserMarketingSmsPermissionDeny": ("auth", "account may not send this"),
    "AuthFailure.SecretIdNotFound": ("auth", "Tencent does not know the SecretId"),
    "AuthFailure.SignatureFailure": ("auth", "SecretKey wrong"),
    "FailedOperation.TemplateIncorrectOrUnapproved": ("permanent", "template not approved"),
    "InvalidParameterValue.TemplateParameterFormatError": ("permanent", "template variable refused"),
    "InvalidParameterValue.TemplateParameterLengthLimit": ("permanent", "template variable too long"),
    "InvalidParameterValue.IncorrectPhoneNumber": ("permanent", "invalid phone number"),
    "FailedOperation.PhoneNumberInBlacklist": ("permanent", "number unsubscribed (blacklist)"),
    "FailedOperation.ContainSensitiveWord": ("permanent", "text refused for a sensitive word"),
    "LimitExceeded.PhoneNumberCountLimit": ("permanent", "too many numbers in one call"),
}
# Receipt codes (errmsg / Description) that mean the number will never get it.
DEAD_REPORT_CODES = {"MK:0001": "number not in service", "UNDELIV": "undeliverable"}


def vendor_error(code: str, message: str = "") -> Exception:
    """What a Tencent code means (VENDOR_CODES); an unknown one is permanent for this provider."""
    kind, why = VENDOR_CODES.get(code, ("permanent", mask_numbers(message)[:120] or "refused"))
    reason = f"tencent {code}: {why}"
    if kind == "transient":
        return TransientError(reason, 60.0)
    if kind == "auth":
        return AuthError(reason)
    return PermanentError(reason)


def sdk_error(exc: TencentCloudSDKException) -> Exception:
    """An SDK exception as ours: an answer by its code, no answer as a send in doubt."""
    code = exc.get_code() or ""
    if code == "ClientNetworkError":
        # The SDK wraps every requests error in one code; only a refused connection proves that
        # nothing went out (requests says "Failed to establish a new connection").
        refused = re.search(
            r"Failed to establish a new connection|Connection refused", exc.get_message() or ""
        )
        return TransientError("tencent unreachable", maybe_sent=not refused)
    if code == "ServerNetworkError":
        return TransientError("tencent: HTTP error from its gateway")
    return vendor_error(code, exc.get_message() or "")


def client(t: TencentSettings, endpoint: str) -> Any:
    """A Tencent SDK client profile pointed at the endpoint, no retries, timeout below the dispatcher's."""
    http = HttpProfile(protocol=t.protocol, endpoint=endpoint, reqTimeout=int(t.timeout_s))
    return credential.Credential(t.secret_id, t.secret_key or ""), ClientProfile(httpProfile=http)


class TencentSms(Provider):
    """SMS through Tencent Cloud SMS.

    Args:
        ctx: what the daemon lends the channel.
        pacer: the channel's pacer.
    """

    name = "tencent"
    channel = "sms"

    def __init__(self, ctx: AdapterContext, pacer: Pacer) -> None:
        """Declare what Tencent takes; the client is built in start()."""
        super().__init__(ctx, pacer)
        t = self.settings
        self.caps = Capabilities(free_text=False, batch_size=MAX_NUMBERS, rate_per_s=t.rate_per_s,
                                 daily_quota=t.daily_quota, concurrency=8)  # fmt: skip
        self.limits = Limits(max_text_chars=500, concurrency=8, batch_size=10 * MAX_NUMBERS)
        self.client: SmsClient | None = None

    @property
    def settings(self) -> TencentSettings:
        """The [tencent] settings."""
        return self.ctx.settings.tencent

    def daily_quota(self) -> int:
        """[tencent] daily_quota as it is now (Tencent refuses past it; warnd counts for the preview)."""
        return self.settings.daily_quota

    @classmethod
    def configured(cls, settings: Settings) -> bool:
        """A SecretId, an SMS application and at least one approved template."""
        t = settings.tencent
        return bool(t.secret_id and t.sms_sdk_app_id and t.sms_templates)

    @property
    def sign_name(self) -> str:
        """The registered signature."""
        return self.settings.sign_name or self.ctx.settings.sms.signature

    async def start(self) -> None:
        """Build the SDK client; no SecretKey or signature is an AuthError that disables this provider."""
        t = self.settings
        if not t.secret_key:
            raise AuthError("no SecretKey: set WARND_TENCENT__SECRET_KEY or the credential")
        if not self.sign_name:
            raise AuthError("no signature: set [tencent] sign_name or [sms] signature")
        cred, profile = client(t, t.sms_endpoint)
        self.client = SmsClient(cred, t.region, profile)
        log.info("tencent.started", channel=self.channel, mode="push" if t.callback_token else "pull")

    async def _call(self, method: str, request: Any) -> Any:
        """One SDK call in a worker thread; SDK exceptions as ours."""
        if self.client is None:
            raise TransientError("tencent client not started")
        try:
            return await asyncio.to_thread(getattr(self.client, method), request)
        except TencentCloudSDKException as exc:
            raise sdk_error(exc) from None

    # -- sending ----------------------------------------------------------------------------

    def template_for(self, message: Message) -> tuple[str, list[str]]:
        """(template id, its variables in order {1}, {2} …) for one message."""
        kind, values = messages.for_message(message, self.ctx.settings, self.ctx.directory())
        t = self.settings.sms_templates.get(kind)
        if t is None:
            raise PermanentError(f"tencent: no approved template for {kind!r} ([tencent.sms_templates])")
        ack = message.delivery.ack_required and t.ack_code is not None
        filled = templates.fill(self.name, t, values)
        return str(t.ack_code if ack else t.code), [filled[k] for k in sorted(filled, key=int)]

    async def send_batch(self, messages_: Sequence[Message]) -> list[Receipt | BaseException]:
        """Group by template, variables and our id; one SendSms call per group of up to 200 numbers."""
        results: list[Receipt | BaseException | None] = [None] * len(messages_)
        groups: dict[tuple[str, str, str], list[int]] = {}
        for i, m in enumerate(messages_):
            try:
                code, params = self.template_for(m)
            except PermanentError as exc:
                results[i] = exc
                continue
            key = (code, json.dumps(params, ensure_ascii=False), out_id(m.delivery))
            groups.setdefault(key, []).append(i)
        calls = [(key, members[n : n + MAX_NUMBERS]) for key, members in groups.items()
                 for n in range(0, len(members), MAX_NUMBERS)]  # fmt: skip
        gate = asyncio.Semaphore(self.caps.concurrency)

        async def one(key: tuple[str, str, str], members: list[int]) -> None:
            """One SendSms call; Tencent answers per number."""
            phones = [messages_[i].delivery.address or "" for i in members]
            async with gate:
                answer = await self._send_call(key, phones)
            for i, r in zip(members, answer, strict=True):
                results[i] = r

        await asyncio.gather(*(one(k, ms) for k, ms in calls))
        return [r if r is not None else TransientError("tencent: not sent") for r in results]

    async def _send_call(self, key: tuple[str, str, str], phones: list[str]) -> list[Receipt | BaseException]:
        """Make one SendSms call; a Receipt or the error for each number."""
        code, params, oid = key
        request = sms_models.SendSmsRequest()
        request.PhoneNumberSet = phones
        request.SmsSdkAppId = self.settings.sms_sdk_app_id
        request.SignName = self.sign_name
        request.TemplateId = code
        request.TemplateParamSet = json.loads(params)
        request.SessionContext = oid
        spacer = self.pacer.spacer(self.name, self.settings.sms_sdk_app_id, self.caps.rate_per_s or 1.0)
        try:
            with pacing.bound(spacer):
                async with pacing.slot():
                    pacing.on_wire()  # Tencent counts calls as they arrive
                    response = await self._call("SendSms", request)
        except (TransientError, PermanentError) as exc:
            return [exc] * len(phones)
        by_phone = {s.PhoneNumber: s for s in response.SendStatusSet or []}
        out: list[Receipt | BaseException] = []
        for p in phones:
            s = by_phone.get(p)
            if s is None:
                out.append(TransientError("tencent: no status for this number", maybe_sent=True))
            elif s.Code == "Ok":
                out.append(Receipt("sent", provider_ref=f"tencent:{s.SerialNo}", provider=self.name))
            else:
                out.append(vendor_error(s.Code, s.Message or ""))
        return out

    async def reconcile(self, message: Message) -> Receipt | None:
        """Find the message by our SessionContext among the number's statuses since the claim."""
        d = message.delivery
        assert d.maybe_sent_at is not None
        request = sms_models.PullSmsSendStatusByPhoneNumberRequest()
        request.BeginTime = int((d.maybe_sent_at - RECONCILE_SKEW).timestamp())
        request.EndTime = int(self.ctx.clock.now().timestamp()) + 60
        request.Offset = 0
        request.Limit = PULL_LIMIT
        request.PhoneNumber = d.address or ""
        request.SmsSdkAppId = self.settings.sms_sdk_app_id
        response = await self._call("PullSmsSendStatusByPhoneNumber", request)
        oid = out_id(d)
        for s in response.PullSmsSendStatusSet or []:
            if s.SessionContext == oid and s.ReportStatus != "FAIL":
                return Receipt("delivered", provider_ref=f"tencent:{s.SerialNo}", provider=self.name)
        return None

    # -- receipts and replies ---------------------------------------------------------------

    async def apply_report(self, serial: str, status: str, code: str) -> bool:
        """Apply one receipt (SUCCESS / FAIL); True when it was one."""
        fb, by = self.ctx.feedback, {"provider_ref": f"tencent:{serial}"}
        if status == "SUCCESS":
            await fb.ack(source="tencent.sms", status="delivered", detail={"code": code}, **by)
            return True
        if status == "FAIL":
            dead = DEAD_REPORT_CODES.get(code)
            why = f"tencent {code}: {dead or 'not delivered'}"
            await fb.ack(
                source="tencent.sms", status="dead" if dead else "failed", detail={"detail": why}, **by
            )
            return True
        return False

    async def reply(self, nation: str, phone: str, text: str, at: str) -> bool:
        """Apply one reply; True when it was new."""
        sender = phone if phone.startswith("+") else f"+{nation or '86'}{phone}"
        key = hashlib.sha256(f"{sender}|{at}|{text}".encode()).hexdigest()[:24]
        reply = await inbound.receive(
            self.ctx.store, self.ctx.feedback, channel="sms", phone=sender, body=text,
            provider_ref=f"tencent-up:{key}", now=self.ctx.clock.now(),
        )  # fmt: skip
        return not reply.duplicate

    def authorised(self, request: web.Request) -> bool:
        """Whether a callback came to our token's path (Tencent does not sign its callbacks)."""
        token = self.settings.callback_token or ""
        given = request.match_info.get("token", "")
        return (
            bool(token) and hashlib.sha256(given.encode()).digest() == hashlib.sha256(token.encode()).digest()
        )

    async def _items(self, request: web.Request) -> list[dict[str, Any]] | None:
        """A callback's JSON array (a single object counts as one), or None when it is not JSON."""
        try:
            body = await request.json()
        except ValueError:
            return None
        items = body if isinstance(body, list) else [body]
        return [i for i in items if isinstance(i, dict)]

    async def report_hook(self, request: web.Request) -> web.Response:
        """POST /hooks/tencent/{token}/sms/report: receipts (sid = SerialNo)."""
        if not self.authorised(request):
            return web.json_response({"result": 403, "errmsg": "forbidden"}, status=403)
        items = await self._items(request)
        if items is None:
            return web.json_response({"result": 400, "errmsg": "not JSON"}, status=400)
        for i in items:
            await self.apply_report(
                str(i.get("sid", "")), str(i.get("report_status", "")), str(i.get("errmsg", ""))
            )
        return web.json_response(CALLBACK_OK)

    async def reply_hook(self, request: web.Request) -> web.Response:
        """POST /hooks/tencent/{token}/sms/reply: replies (mobile, nationcode, text, time)."""
        if not self.authorised(request):
            return web.json_response({"result": 403, "errmsg": "forbidden"}, status=403)
        items = await self._items(request)
        if items is None:
            return web.json_response({"result": 400, "errmsg": "not JSON"}, status=400)
        for i in items:
            await self.reply(str(i.get("nationcode", "86")), str(i.get("mobile", "")), str(i.get("text", "")),
                             str(i.get("time", "")))  # fmt: skip
        return web.json_response(CALLBACK_OK)

    def webhooks(self) -> list[Webhook]:
        """Tencent's callback paths, behind the [tencent] callback_token."""
        if not self.settings.callback_token:
            return []
        return [
            Webhook("POST", "/hooks/tencent/{token}/sms/report", self.report_hook,
                    "Tencent SMS receipts (callback; the path's token is the check)"),
            Webhook("POST", "/hooks/tencent/{token}/sms/reply", self.reply_hook,
                    "Tencent SMS replies (callback; the path's token is the check)"),
        ]  # fmt: skip

    def poll_interval_s(self) -> float | None:
        """Without a callback token, receipts and replies are pulled every [tencent] pull_interval_s."""
        return None if self.settings.callback_token else self.settings.pull_interval_s

    async def poll_once(self) -> int:
        """Pull receipts and replies (each handed out once by Tencent) until none are left."""
        found = 0
        while True:
            request = sms_models.PullSmsSendStatusRequest()
            request.Limit, request.SmsSdkAppId = PULL_LIMIT, self.settings.sms_sdk_app_id
            statuses = (await self._call("PullSmsSendStatus", request)).PullSmsSendStatusSet or []
            for s in statuses:
                found += await self.apply_report(s.SerialNo, s.ReportStatus, s.Description or "")
            if len(statuses) < PULL_LIMIT:
                break
        while True:
            request = sms_models.PullSmsReplyStatusRequest()
            request.Limit, request.SmsSdkAppId = PULL_LIMIT, self.settings.sms_sdk_app_id
            replies = (await self._call("PullSmsReplyStatus", request)).PullSmsReplyStatusSet or []
            for r in replies:
                found += await self.reply(r.CountryCode, r.PhoneNumber, r.ReplyContent, str(r.ReplyTime))
            if len(replies) < PULL_LIMIT:
                break
        return found


class TencentVoice(Provider):
    """Voice messages through Tencent Cloud VMS (语音消息, SendTtsVoice), key 1 confirms (叫应).

    A delivery that asks for a confirmation is sent with the kind's `ack_code` template, which
    ends with the key prompt ("收到请按1"); Tencent calls back the key pressed (voicekey_callback)
    and how the call ended (voiceprompt_callback: 0 answered, 1 not answered, 2 failed) on
    `/hooks/tencent/{token}/voice`, so this provider needs `[tencent] callback_token`. Tencent
    offers no lookup of a call by our id, so a call in doubt is placed again.

    Args:
        ctx: what the daemon lends the channel.
        pacer: the channel's pacer.
    """

    name = "tencent"
    channel = "voice"

    def __init__(self, ctx: AdapterContext, pacer: Pacer) -> None:
        """Declare what Tencent takes; the client is built in start()."""
        super().__init__(ctx, pacer)
        self.caps = Capabilities(
            free_text=False, batch_size=1, rate_per_s=self.settings.rate_per_s, concurrency=8
        )
        self.limits = Limits(max_text_chars=350, concurrency=8, batch_size=100)
        self.client: Any = None

    @property
    def settings(self) -> TencentSettings:
        """The [tencent] settings."""
        return self.ctx.settings.tencent

    @classmethod
    def configured(cls, settings: Settings) -> bool:
        """A SecretId, a voice application, voice templates and a callback token."""
        t = settings.tencent
        return bool(t.secret_id and t.voice_sdk_app_id and t.voice_templates and t.callback_token)

    async def start(self) -> None:
        """Build the VMS SDK client."""
        t = self.settings
        if not t.secret_key:
            raise AuthError("no SecretKey: set WARND_TENCENT__SECRET_KEY or the credential")
        cred, profile = client(t, t.vms_endpoint)
        self.client = VmsClient(cred, t.region, profile)

    async def send(self, message: Message) -> Receipt:
        """Place one voice message; the template with the key prompt when a confirmation is asked."""
        d = message.delivery
        kind, values = messages.for_message(message, self.ctx.settings, self.ctx.directory())
        t = self.settings.voice_templates.get(kind)
        if t is None:
            raise PermanentError(
                f"tencent: no approved voice template for {kind!r} ([tencent.voice_templates])"
            )
        filled = templates.fill(self.name, t, values)
        request = vms_models.SendTtsVoiceRequest()
        request.TemplateId = str(t.ack_code if d.ack_required and t.ack_code else t.code)
        request.CalledNumber = d.address or ""
        request.VoiceSdkAppid = self.settings.voice_sdk_app_id
        request.TemplateParamSet = [filled[k] for k in sorted(filled, key=int)]
        request.PlayTimes = 2
        request.SessionContext = out_id(d)
        if self.client is None:
            raise TransientError("tencent client not started")
        spacer = self.pacer.spacer(self.name, self.settings.voice_sdk_app_id, self.caps.rate_per_s or 1.0)
        try:
            with pacing.bound(spacer):
                async with pacing.slot():
                    pacing.on_wire()
                    response = await asyncio.to_thread(self.client.SendTtsVoice, request)
        except TencentCloudSDKException as exc:
            raise sdk_error(exc) from None
        return Receipt("sent", provider_ref=f"tencent-call:{response.SendStatus.CallId}", provider=self.name)

    async def apply(self, call_id: str, *, keypress: str = "", result: str = "") -> bool:
        """Apply a key press or the call's end: 1 confirms; answered without it, or unanswered, fails."""
        row = await self.ctx.store.delivery_by_provider_ref(f"tencent-call:{call_id}")
        if row is None:
            return False
        fb, by = self.ctx.feedback, {"msg_id": row["msg_id"], "target": row["target"]}
        detail: dict[str, Any] = {"call_id": call_id}
        if keypress == "1":
            await fb.ack(
                source="tencent.voice", status="acknowledged", detail={**detail, "digits": "1"}, **by
            )
        elif keypress:
            pressed = {**detail, "detail": f"pressed {keypress}"}
            await fb.ack(source="tencent.voice", status="failed", detail=pressed, **by)
        elif result in ("1", "2"):
            why = "call not answered" if result == "1" else "call failed"
            await fb.ack(source="tencent.voice", status="failed", detail={**detail, "detail": why}, **by)
        elif result == "0":
            # Answered: the key press, when there was one, came first (and decides).
            if row["state"] in ("acknowledged", "failed"):
                return True
            if row["ack_required"]:
                why = "call ended without key 1"
                await fb.ack(source="tencent.voice", status="failed", detail={**detail, "detail": why}, **by)
            else:
                await fb.ack(source="tencent.voice", status="delivered", detail=detail, **by)
        else:
            return False
        return True

    async def hook(self, request: web.Request) -> web.Response:
        """POST /hooks/tencent/{token}/voice: voicekey_callback and voiceprompt_callback."""
        token = self.settings.callback_token or ""
        given = request.match_info.get("token", "")
        if not token or hashlib.sha256(given.encode()).digest() != hashlib.sha256(token.encode()).digest():
            return web.json_response({"result": 403, "errmsg": "forbidden"}, status=403)
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"result": 400, "errmsg": "not JSON"}, status=400)
        if isinstance(body, dict):
            key = body.get("voicekey_callback")
            prompt = body.get("voiceprompt_callback")
            if isinstance(key, dict):
                await self.apply(str(key.get("callid", "")), keypress=str(key.get("keypress", "")))
            if isinstance(prompt, dict):
                await self.apply(str(prompt.get("callid", "")), result=str(prompt.get("result", "")))
        return web.json_response(CALLBACK_OK)

    def webhooks(self) -> list[Webhook]:
        """Tencent's voice callbacks, behind the [tencent] callback_token."""
        return [
            Webhook("POST", "/hooks/tencent/{token}/voice", self.hook,
                    "Tencent voice key presses and call ends (callback; the path's token is the check)"),
        ]  # fmt: skip
