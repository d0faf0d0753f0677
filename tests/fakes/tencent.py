"""Loopback fake of Tencent Cloud's SMS API (2021-01-11), as its documentation shapes it.

Every call is `POST /` with a JSON body and the action in the `X-TC-Action` header (what the
official SDK sends). Answers are `{"Response": {..., "RequestId"}}`; a call refused whole answers
`{"Response": {"Error": {"Code", "Message"}, "RequestId"}}`. SendSms answers per number
(`SendStatusSet`: SerialNo, PhoneNumber, Code "Ok" or why not, SessionContext …).

Receipts and replies reach warnd by callback (`push_reports`, `push_reply`: Tencent's JSON arrays)
or are pulled: PullSmsSendStatus and PullSmsReplyStatus hand each out once, as Tencent does.

    fake = FakeTencent(templates={"100001": "{1}发布…"})
    base = await fake.start()             # point [tencent] sms_endpoint at it, protocol "http"
    fake.limit_numbers({"+8613800000005"})  # those numbers answer LimitExceeded.PhoneNumberDailyLimit
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web

MAX_NUMBERS = 200
# How Tencent answers the situations the conformance suite names by an HTTP status: the error
# Code of the whole call. Tencent answers every API error with HTTP 200 and a Code.
SITUATIONS: dict[int, str] = {
    429: "RequestLimitExceeded",
    500: "InternalError.OtherError",
    502: "InternalError.Timeout",
    503: "InternalError.OtherError",
    401: "AuthFailure.SecretIdNotFound",
    403: "AuthFailure.SignatureFailure",
    400: "InvalidParameterValue.TemplateParameterFormatError",
    404: "FailedOperation.TemplateIncorrectOrUnapproved",
    410: "FailedOperation.PhoneNumberInBlacklist",
}


@dataclass
class Sent:
    """One number of one SendSms call that Tencent took."""

    phone: str
    serial: str
    session: str
    template: str
    params: list[str]
    content: str
    at: datetime
    status: str = ""  # "", SUCCESS or FAIL once the carrier reported
    code: str = ""


@dataclass
class FakeTencent:
    """The fake server's state and script.

    Args:
        secret_id: the SecretId it accepts (others: AuthFailure.SecretIdNotFound).
        app_id: the SmsSdkAppId it knows.
        sign_name: the approved signature.
        templates: approved template ids and their texts ({1}, {2} …).
    """

    secret_id: str = "AKID-test"
    app_id: str = "1400000001"
    sign_name: str = "塘甸镇应急办"
    templates: dict[str, str] = field(default_factory=dict)
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    sends: list[Sent] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)
    limited: set[str] = field(default_factory=set)
    unpulled: list[Sent] = field(default_factory=list)
    replies: list[dict[str, Any]] = field(default_factory=list)
    # Voice messages (VMS, the same fake): the calls placed, as the request bodies plus "CallId".
    placed: list[dict[str, Any]] = field(default_factory=list)
    voice_app_id: str = "1400000009"
    # Seconds the next SendSms answers late, after taking the messages (a timeout after accept).
    stall_s: list[float] = field(default_factory=list)
    # Every call answered as in this situation (an HTTP status, see SITUATIONS); None: normally.
    situation: int | None = None
    _ids: Any = field(default_factory=lambda: itertools.count(1))
    _runner: web.AppRunner | None = None
    base: str = ""

    async def start(self) -> str:
        """Serve on 127.0.0.1 and an ephemeral port; returns host:port for the endpoint setting."""
        app = web.Application()
        app.router.add_post("/", self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base = f"127.0.0.1:{port}"
        return self.base

    async def close(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()

    def limit_numbers(self, phones: set[str]) -> None:
        """These numbers (E.164) answer LimitExceeded.PhoneNumberDailyLimit; the others are sent."""
        self.limited |= phones

    def answer_http(self, status: int | None, retry_after_s: int | None = None) -> None:
        """Every call from now on answered as Tencent does in the situation `status` names (SITUATIONS;
        2xx: taken); None: normally. Tencent sends no Retry-After: `retry_after_s` is not used."""
        self.situation = status

    def received(self, phone: str) -> list[Sent]:
        """What one number got."""
        return [s for s in self.sends if s.phone == phone]

    def deliver_all(self, status: str = "SUCCESS", code: str = "DELIVRD") -> None:
        """The carriers report every unreported message; the reports wait to be pulled."""
        for s in self.sends:
            if not s.status:
                s.status, s.code = status, code
                self.unpulled.append(s)

    def reply_waiting(self, phone: str, text: str) -> None:
        """A reply that waits to be pulled."""
        at = self.now()
        self.replies.append({
            "ExtendCode": "", "CountryCode": "86", "PhoneNumber": phone, "SignName": self.sign_name,
            "ReplyContent": text, "ReplyTime": at.strftime("%Y-%m-%d %H:%M:%S"),
            "SubscriberNumber": phone.removeprefix("+86"),
        })  # fmt: skip

    async def handle(self, request: web.Request) -> web.Response:
        """One API call."""
        action = request.headers.get("X-TC-Action", "")
        body = json.loads(await request.read() or b"{}")
        self.calls.append({"action": action, **body})
        if self.situation in SITUATIONS:
            return self._error(SITUATIONS[self.situation], f"scripted {self.situation}")
        if f"Credential={self.secret_id}/" not in request.headers.get("Authorization", ""):
            return self._error("AuthFailure.SecretIdNotFound", "The SecretId is not found")
        if action == "SendTtsVoice":
            return self._voice(body)
        if body.get("SmsSdkAppId") != self.app_id:
            return self._error("UnauthorizedOperation.SmsSdkAppIdVerifyFail", "SmsSdkAppId verify fail")
        if action == "SendSms":
            answer = self._send(body)
            if self.stall_s:
                await asyncio.sleep(self.stall_s.pop(0))
            return answer
        if action == "PullSmsSendStatus":
            taken, self.unpulled = self.unpulled[: body["Limit"]], self.unpulled[body["Limit"] :]
            return self._ok({"PullSmsSendStatusSet": [self._status(s) for s in taken]})
        if action == "PullSmsReplyStatus":
            taken, self.replies = self.replies[: body["Limit"]], self.replies[body["Limit"] :]
            return self._ok({"PullSmsReplyStatusSet": taken})
        if action == "PullSmsSendStatusByPhoneNumber":
            begin = body["BeginTime"]
            phone = body["PhoneNumber"]
            found = [
                self._status(s)
                for s in self.sends
                if s.phone == phone and s.status and s.at.timestamp() >= begin
            ]
            return self._ok({"PullSmsSendStatusSet": found[body["Offset"] : body["Offset"] + body["Limit"]]})
        return self._error("InvalidAction", action)

    def _send(self, body: dict[str, Any]) -> web.Response:
        """SendSms: up to 200 numbers; a status per number."""
        phones = body.get("PhoneNumberSet") or []
        if len(phones) > MAX_NUMBERS:
            return self._error("LimitExceeded.PhoneNumberCountLimit", "too many numbers")
        if body.get("SignName") != self.sign_name:
            return self._error("FailedOperation.SignatureIncorrectOrUnapproved", "signature")
        template = str(body.get("TemplateId", ""))
        if template not in self.templates:
            return self._error("FailedOperation.TemplateIncorrectOrUnapproved", "template")
        params = body.get("TemplateParamSet") or []
        text = re.sub(r"\{(\d+)\}", lambda m: params[int(m.group(1)) - 1], self.templates[template])
        out = []
        for p in phones:
            serial = f"2640:{next(self._ids):010d}"
            code, message = "Ok", "send success"
            if not re.fullmatch(r"\+861\d{10}", p):
                code, message = "InvalidParameterValue.IncorrectPhoneNumber", "incorrect phone number"
            elif p in self.limited:
                code, message = "LimitExceeded.PhoneNumberDailyLimit", "daily limit"
            else:
                self.sends.append(Sent(p, serial, body.get("SessionContext", ""), template, params,
                                       f"【{self.sign_name}】{text}", self.now()))  # fmt: skip
            out.append({"SerialNo": serial if code == "Ok" else "", "PhoneNumber": p, "Fee": 1,
                        "SessionContext": body.get("SessionContext", ""), "Code": code, "Message": message,
                        "IsoCode": "CN"})  # fmt: skip
        return self._ok({"SendStatusSet": out})

    def _voice(self, body: dict[str, Any]) -> web.Response:
        """SendTtsVoice: one call to one number with a TTS template."""
        if body.get("VoiceSdkAppid") != self.voice_app_id:
            return self._error("UnauthorizedOperation.SdkAppidVerifyFail", "VoiceSdkAppid verify fail")
        if str(body.get("TemplateId", "")) not in self.templates:
            return self._error("FailedOperation.TemplateIncorrectOrUnapproved", "template")
        call = {**body, "CallId": f"{next(self._ids):08d}-call"}
        self.placed.append(call)
        return self._ok(
            {"SendStatus": {"CallId": call["CallId"], "SessionContext": body.get("SessionContext", "")}}
        )

    async def push_key(self, url: str, call: dict[str, Any], key: str) -> int:
        """Call back the key pressed during a voice message (voicekey_callback)."""
        mobile = str(call["CalledNumber"]).removeprefix("+86")
        body = {"voicekey_callback": {"call_from": "", "callid": call["CallId"], "keypress": key,
                                      "mobile": mobile, "nationcode": "86"}}  # fmt: skip
        async with aiohttp.ClientSession() as http, http.post(url, json=body) as resp:
            return resp.status

    async def push_call_end(self, url: str, call: dict[str, Any], result: str) -> int:
        """Call back how a voice message ended (voiceprompt_callback: 0 answered, 1 not, 2 failed)."""
        at = str(int(self.now().timestamp()))
        body = {"voiceprompt_callback": {
            "result": result, "accept_time": at, "call_from": "", "callid": call["CallId"],
            "end_calltime": at, "fee": "1", "mobile": str(call["CalledNumber"]).removeprefix("+86"),
            "nationcode": "86", "start_calltime": at,
        }}  # fmt: skip
        async with aiohttp.ClientSession() as http, http.post(url, json=body) as resp:
            return resp.status

    @staticmethod
    def _status(s: Sent) -> dict[str, Any]:
        """A PullSmsSendStatus item."""
        return {
            "UserReceiveTime": int(s.at.timestamp()), "CountryCode": "86", "SubscriberNumber": s.phone[3:],
            "PhoneNumber": s.phone, "SerialNo": s.serial, "ReportStatus": s.status, "Description": s.code,
            "SessionContext": s.session,
        }  # fmt: skip

    @staticmethod
    def _ok(body: dict[str, Any]) -> web.Response:
        """A successful answer."""
        return _answer({"Response": {**body, "RequestId": "a0b1c2d3-e4f5"}})

    @staticmethod
    def _error(code: str, message: str) -> web.Response:
        """A call refused whole (HTTP 200, as Tencent answers)."""
        return _answer({"Response": {"Error": {"Code": code, "Message": message}, "RequestId": "e0"}})

    async def push_reports(self, url: str, *, status: str = "SUCCESS", code: str = "DELIVRD") -> int:
        """Report every unreported message by callback, as one JSON array; the HTTP status."""
        items = []
        for s in self.sends:
            if not s.status:
                s.status, s.code = status, code
                items.append({"user_receive_time": s.at.strftime("%Y-%m-%d %H:%M:%S"), "nationcode": "86",
                              "mobile": s.phone[3:], "report_status": status, "errmsg": code,
                              "description": "用户短信送达成功", "sid": s.serial})  # fmt: skip
        return await self._post(url, items)

    async def push_reply(self, url: str, phone: str, text: str) -> int:
        """Call back with one reply; the HTTP status."""
        item = {"extend": "", "mobile": phone.removeprefix("+86"), "nationcode": "86", "sign": self.sign_name,
                "text": text, "time": int(self.now().timestamp())}  # fmt: skip
        return await self._post(url, [item])

    @staticmethod
    async def _post(url: str, items: list[dict[str, Any]]) -> int:
        """POST a JSON array as Tencent's callbacks do."""
        async with aiohttp.ClientSession() as http, http.post(url, json=items) as resp:
            return resp.status


def _answer(body: dict[str, Any]) -> web.Response:
    """JSON with Tencent's exact Content-Type: the SDK reads an Error only under `application/json`
    with no charset (aiohttp's json_response adds one, and the SDK then took errors for answers)."""
    return web.Response(body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
