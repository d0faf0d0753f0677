"""Loopback fake of Alibaba Cloud's SMS API (dysmsapi 2017-05-25), as its documentation shapes it.

RPC style: every call is `POST /` with the action in the `x-acs-action` header and its parameters
in the query (what the official SDK sends). Answers are JSON: `{"Code": "OK", "Message": "OK",
"RequestId", "BizId"}` for SendSms, `{"Code", "TotalCount", "SmsSendDetailDTOs":
{"SmsSendDetailDTO": [{PhoneNum, SendStatus 1/2/3, ErrCode, TemplateCode, Content, SendDate,
ReceiveDate, OutId}]}}` for QuerySendDetails. A refused send answers HTTP 200 with its Code
(isv.BUSINESS_LIMIT_CONTROL …), as Aliyun does; a refused AccessKey answers HTTP 404/400 with one.

Pushes (HTTP batch push, 消息回执): `push_reports(url)` posts the SmsReport items of sends not yet
reported; `push_reply(url, phone, text)` posts one SmsUp item.

    fake = FakeAliyun(templates={"SMS_1": "${org}发布…"})
    base = await fake.start()           # point [aliyun] sms_endpoint at it, protocol "http"
    fake.limit_numbers({"13800000005"})  # calls containing these answer isv.BUSINESS_LIMIT_CONTROL
    fake.stall_next_send(5.0)           # the next SendSms is accepted, its answer comes after 5 s
    fake.answer_http(429)               # every call from now on answered as Aliyun does when throttled
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
from aiohttp import web

BEIJING = ZoneInfo("Asia/Shanghai")
MAX_NUMBERS = 1000
# How Aliyun answers the situations the conformance suite names by an HTTP status: (HTTP status,
# Code). Its gateway answers some errors with a 4xx/5xx and a Code, and a refused send with 200.
SITUATIONS: dict[int, tuple[int, str]] = {
    429: (400, "Throttling.User"),  # the account's QPS
    500: (500, "InternalError"),
    502: (502, "BadGateway"),
    503: (503, "ServiceUnavailable"),
    401: (400, "SignatureDoesNotMatch"),  # the AccessKey secret is wrong
    403: (200, "isp.RAM_PERMISSION_DENY"),  # the AccessKey may not send
    400: (200, "isv.INVALID_PARAMETERS"),
    404: (200, "isv.MOBILE_NUMBER_ILLEGAL"),
    410: (200, "isv.DOMESTIC_NUMBER_NOT_SUPPORTED"),
}


@dataclass
class Sent:
    """One number of one accepted SendSms call."""

    phone: str
    biz_id: str
    out_id: str
    template: str
    params: dict[str, str]
    sign_name: str
    content: str
    at: datetime
    status: int = 1  # 1 waiting for the carrier, 2 failed, 3 delivered
    err_code: str = ""
    reported: bool = False


@dataclass
class Call:
    """One accepted SingleCallByTts or IvrCall (voice service dyvmsapi, served by the same fake)."""

    call_id: str
    phone: str
    out_id: str
    action: str
    code: str
    params: dict[str, str]
    keys: dict[str, str]


@dataclass
class FakeAliyun:
    """The fake server's state and script.

    Args:
        access_key_id: the AccessKey ID it accepts (others: InvalidAccessKeyId.NotFound).
        sign_name: the approved signature.
        templates: approved template codes and their texts.
    """

    access_key_id: str = "LTAI-test"
    sign_name: str = "塘甸镇应急办"
    templates: dict[str, str] = field(default_factory=dict)
    sends: list[Sent] = field(default_factory=list)
    placed: list[Call] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)
    limited: set[str] = field(default_factory=set)
    stall_s: list[float] = field(default_factory=list)
    # Answers for the next SendSms calls, in order, instead of taking them: (HTTP status, Code).
    refusals: list[tuple[int, str]] = field(default_factory=list)
    # Aliyun's clock: the test's fake clock, so "today" is the same day for warnd and the fake.
    now: Callable[[], datetime] = field(default=lambda: datetime.now(BEIJING))
    # Every call answered as in this situation (an HTTP status, see SITUATIONS); None: normally.
    situation: int | None = None
    _ids: Any = field(default_factory=lambda: itertools.count(1))
    _runner: web.AppRunner | None = None
    base: str = ""

    async def start(self) -> str:
        """Serve on 127.0.0.1 and an ephemeral port; returns host:port for the endpoint setting."""
        app = web.Application()
        app.router.add_post("/", self.handle)
        # The SDK puts SendSms's parameters in the query: 1,000 numbers make a URL of ~12 KB.
        self._runner = web.AppRunner(app, max_line_size=65536)
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
        """Calls that contain any of these numbers answer isv.BUSINESS_LIMIT_CONTROL."""
        self.limited |= phones

    def stall_next_send(self, seconds: float) -> None:
        """The next SendSms is taken (the messages go out) but its answer comes only after `seconds`."""
        self.stall_s.append(seconds)

    def refuse_next_send(self, status: int, code: str) -> None:
        """The next SendSms (after any stalled one) is refused with this status and Code; nothing is sent."""
        self.refusals.append((status, code))

    def answer_http(self, status: int | None, retry_after_s: int | None = None) -> None:
        """Every call from now on answered as Aliyun does in the situation `status` names (SITUATIONS;
        2xx: taken); None: normally. Aliyun sends no Retry-After: `retry_after_s` is not used."""
        self.situation = status

    def received(self, phone: str) -> list[Sent]:
        """What one number got."""
        return [s for s in self.sends if s.phone == phone]

    def deliver_all(self, status: int = 3, err_code: str = "DELIVERED") -> None:
        """The carriers report every waiting message (3 delivered, 2 failed with err_code)."""
        for s in self.sends:
            if s.status == 1:
                s.status, s.err_code = status, err_code

    async def handle(self, request: web.Request) -> web.Response:
        """One RPC call."""
        action = request.headers.get("x-acs-action", "")
        q = dict(request.query)
        self.calls.append({"action": action, **q})
        if self.situation in SITUATIONS:
            status, code = SITUATIONS[self.situation]
            return self._json({"Code": code, "Message": f"scripted {self.situation}"}, status)
        if self.access_key_id not in request.headers.get("Authorization", ""):
            unknown = {"Code": "InvalidAccessKeyId.NotFound", "Message": "Specified access key is not found."}
            return self._json(unknown, 404)
        if action == "SendSms":
            return await self._send(q)
        if action == "QuerySendDetails":
            return self._query(q)
        if action in ("SingleCallByTts", "IvrCall"):
            return self._call(action, q)
        return self._json({"Code": "InvalidAction.NotFound", "Message": action}, 404)

    async def _send(self, q: dict[str, str]) -> web.Response:
        """SendSms: up to 1,000 numbers, one template, one OutId."""
        phones = [p for p in q.get("PhoneNumbers", "").split(",") if p]
        if self.refusals and not self.stall_s:
            status, code = self.refusals.pop(0)
            return self._json({"Code": code, "Message": "scripted"}, status)
        if len(phones) > MAX_NUMBERS:
            return self._json({"Code": "isv.MOBILE_COUNT_OVER_LIMIT", "Message": "手机号码数量超过限制"})
        if q.get("SignName") != self.sign_name:
            return self._json({"Code": "isv.SMS_SIGNATURE_ILLEGAL", "Message": "签名不合法"})
        code = q.get("TemplateCode", "")
        if code not in self.templates:
            return self._json({"Code": "isv.SMS_TEMPLATE_ILLEGAL", "Message": "模板不合法"})
        if any(not re.fullmatch(r"1\d{10}", p) for p in phones):
            return self._json({"Code": "isv.MOBILE_NUMBER_ILLEGAL", "Message": "非法手机号"})
        if self.limited & set(phones):
            return self._json({"Code": "isv.BUSINESS_LIMIT_CONTROL", "Message": "触发号码天级流控"})
        params = json.loads(q.get("TemplateParam") or "{}")
        text = re.sub(r"\$\{(\w+)\}", lambda m: params.get(m.group(1), ""), self.templates[code])
        biz = f"{next(self._ids)}^0"
        now = self.now().astimezone(BEIJING)
        for p in phones:
            self.sends.append(Sent(p, biz, q.get("OutId", ""), code, params, q["SignName"],
                                   f"【{q['SignName']}】{text}", now))  # fmt: skip
        if self.stall_s:
            await asyncio.sleep(self.stall_s.pop(0))
        return self._json({"Code": "OK", "Message": "OK", "BizId": biz})

    def _call(self, action: str, q: dict[str, str]) -> web.Response:
        """One call to one number: a TTS template, or an IVR start template with its key map."""
        code = q.get("TtsCode") or q.get("StartCode") or ""
        if code not in self.templates:
            return self._json({"Code": "isv.TTS_TEMPLATE_ILLEGAL", "Message": "模板不合法"})
        params = json.loads(q.get("TtsParam") or q.get("StartTtsParams") or "{}")
        # The SDK flattens the key map: MenuKeyMap.1.Key, MenuKeyMap.1.Code …
        keys = {
            q[k]: q.get(k[: -len("Key")] + "Code", "") for k in q if re.fullmatch(r"MenuKeyMap\.\d+\.Key", k)
        }
        call = Call(
            f"{next(self._ids)}^1", q.get("CalledNumber", ""), q.get("OutId", ""), action, code, params, keys
        )
        self.placed.append(call)
        return self._json({"Code": "OK", "Message": "OK", "CallId": call.call_id})

    async def push_call_report(self, url: str, call: Call, status_code: str, dtmf: str = "") -> int:
        """Push one VoiceReport item (the call ended, with the key pressed); the HTTP status."""
        at = self.now().astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S")
        item = {"call_id": call.call_id, "out_id": call.out_id, "status_code": status_code, "dtmf": dtmf,
                "start_time": at, "end_time": at, "duration": "20", "status_msg": ""}  # fmt: skip
        return await self._post(url, [item])

    def _query(self, q: dict[str, str]) -> web.Response:
        """QuerySendDetails: one number's messages of one day, paged, newest first."""
        phone, day = q.get("PhoneNumber", ""), q.get("SendDate", "")
        found = [s for s in reversed(self.sends) if s.phone == phone and s.at.strftime("%Y%m%d") == day
                 and (not q.get("BizId") or s.biz_id == q["BizId"])]  # fmt: skip
        size, page = int(q.get("PageSize", "10")), int(q.get("CurrentPage", "1"))
        rows = found[(page - 1) * size : page * size]
        dtos = [
            {"PhoneNum": s.phone, "SendStatus": s.status, "ErrCode": s.err_code, "TemplateCode": s.template,
             "Content": s.content, "SendDate": s.at.strftime("%Y-%m-%d %H:%M:%S"),
             "ReceiveDate": s.at.strftime("%Y-%m-%d %H:%M:%S") if s.status == 3 else "", "OutId": s.out_id}
            for s in rows
        ]  # fmt: skip
        return self._json({"Code": "OK", "Message": "OK", "TotalCount": len(found),
                           "SmsSendDetailDTOs": {"SmsSendDetailDTO": dtos}})  # fmt: skip

    @staticmethod
    def _json(body: dict[str, Any], status: int = 200) -> web.Response:
        """An answer with a RequestId, as every Aliyun answer has."""
        return web.json_response({"RequestId": "F655A8D5-B967-440B-8683-DAD6FF8DE990", **body}, status=status)

    async def push_reports(self, url: str, *, status: int = 3, err_code: str = "DELIVERED") -> int:
        """Deliver every unreported message and push their SmsReport items in one batch; the HTTP status."""
        items = []
        for s in self.sends:
            if not s.reported:
                s.reported, s.status, s.err_code = True, status, err_code
                items.append({
                    "phone_number": s.phone, "send_time": s.at.strftime("%Y-%m-%d %H:%M:%S"),
                    "report_time": s.at.strftime("%Y-%m-%d %H:%M:%S"), "success": status == 3,
                    "err_code": err_code, "err_msg": "用户接收成功" if status == 3 else "失败",
                    "sms_size": "1", "biz_id": s.biz_id, "out_id": s.out_id,
                })  # fmt: skip
        return await self._post(url, items)

    async def push_reply(self, url: str, phone: str, content: str, sequence_id: int) -> int:
        """Push one SmsUp item (a reply); the HTTP status."""
        at = self.now().astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S")
        item = {"phone_number": phone, "send_time": at, "content": content, "sign_name": self.sign_name,
                "dest_code": "1234", "sequence_id": sequence_id}  # fmt: skip
        return await self._post(url, [item])

    @staticmethod
    async def _post(url: str, items: list[dict[str, Any]]) -> int:
        """POST a JSON batch as Aliyun's push does."""
        async with aiohttp.ClientSession() as http, http.post(url, json=items) as resp:
            return resp.status
