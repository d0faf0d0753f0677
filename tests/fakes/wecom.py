"""Loopback fake of WeCom's API: robot webhooks with the 20/min limit, gettoken, message/send.

Time comes from the test's FakeClock, so "a minute" passes when the test advances it (a test
against a real warnd process passes warnd.clock.SystemClock). Every request is recorded; answers
follow WeCom's shapes (`{"errcode", "errmsg", …}`, HTTP 200 even for errors, as WeCom does).

Application messages keep WeCom's documented duplicate check (发送应用消息, enable_duplicate_check):
with `"enable_duplicate_check": 1`, a message with the same content — the same request JSON — as
one accepted within `duplicate_check_interval` seconds (default 1800, at most 4 hours) is not
received again. The documentation says nothing of the answer; the fake answers ok, as for the
first, and records the call with `duplicate=True`, `received=False`.

    fake = FakeWecom(clock, keys={"k-a", "k-b"}, corp_id="ww1", secret="s3cret")
    base = await fake.start()          # point [wecom] api_base at it
    fake.expire_token_once()           # the next message/send answers 42001
    await fake.close()
"""

from __future__ import annotations

import asyncio
import json
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web

from tests.fakes.outage import Outage

ROBOT_LIMIT_PER_MIN = 20
# enable_duplicate_check: the interval WeCom uses when none is given, and the most it takes.
DUPLICATE_CHECK_DEFAULT_S = 1800
DUPLICATE_CHECK_MAX_S = 4 * 3600


@dataclass
class RobotCall:
    """One webhook call: which key, when (fake time), what, and what was answered."""

    key: str
    at: datetime
    content: str
    errcode: int

    @property
    def received(self) -> bool:
        """Whether the group got the message."""
        return self.errcode == 0


@dataclass
class AppCall:
    """One message/send call; `received`: the person got it (accepted, and not a duplicate)."""

    touser: str
    at: datetime
    body: dict[str, Any]
    errcode: int
    duplicate: bool = False

    @property
    def received(self) -> bool:
        """Whether the person got the message."""
        return self.errcode == 0 and not self.duplicate


@dataclass
class FakeWecom:
    """The fake server's state and script.

    Args:
        clock: the test's clock (anything with `now()`).
        keys: robot keys that exist; any other key gets 93000.
        corp_id: the corp id gettoken accepts.
        secret: the app secret gettoken accepts.
        agent_id: the agent id message/send accepts.
        users: WeCom user ids that exist (None: every user exists).
        robot_limit_per_min: calls a robot takes per minute (WeCom's is 20).
        latency_s: how long a send takes to answer once it is done (the message is already
            with the person or the group: a client that dies meanwhile sent it without knowing).
    """

    clock: Any
    keys: set[str] = field(default_factory=set)
    corp_id: str = "ww-test-corp"
    secret: str = "test-app-secret"
    agent_id: int = 1000002
    users: set[str] | None = None
    token_ttl_s: int = 7200
    robot_limit_per_min: int = ROBOT_LIMIT_PER_MIN
    latency_s: float = 0.0
    # A provider outage in progress or to come (tests/fakes/outage.py), set by outage().
    fault: Outage | None = None
    robot_calls: list[RobotCall] = field(default_factory=list)
    app_calls: list[AppCall] = field(default_factory=list)
    token_requests: int = 0
    _tokens: dict[str, datetime] = field(default_factory=dict)
    _expire_next: int = 0
    _robot_script: dict[str, list[int]] = field(default_factory=dict)
    # (HTTP status, Retry-After) a gateway in front of WeCom answers to every request, or None.
    _http_answer: tuple[int, int | None] | None = None
    # request JSON of an accepted application message with its duplicate check → when it came
    _accepted: dict[str, datetime] = field(default_factory=dict)
    _runner: web.AppRunner | None = None

    async def start(self) -> str:
        """Serve on 127.0.0.1, a free port; return the base URL."""
        app = web.Application(middlewares=[self._gate])
        app.router.add_post("/cgi-bin/webhook/send", self._webhook)
        app.router.add_get("/cgi-bin/gettoken", self._gettoken)
        app.router.add_post("/cgi-bin/message/send", self._message_send)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()

    def outage(self, fault: Outage) -> Outage:
        """Misbehave as `fault` says, from its `after`+1-th send (robot or application) on."""
        self.fault = fault
        return fault

    def expire_token_once(self) -> None:
        """The next message/send answers 42001 (token expired) whatever token it carries."""
        self._expire_next += 1

    def script_robot(self, key: str, errcodes: list[int]) -> None:
        """The next calls to this robot answer these errcodes (e.g. 45009) before normal handling."""
        self._robot_script.setdefault(key, []).extend(errcodes)

    def answer_http(self, status: int | None, retry_after_s: int | None = None) -> None:
        """Every request from now on gets this HTTP status (a gateway in front of WeCom); None: normal."""
        self._http_answer = None if status is None else (status, retry_after_s)

    def calls_in_window(self, key: str, end: datetime, window_s: float = 60) -> int:
        """How many calls this robot got in the window (end - window_s, end]."""
        start = end - timedelta(seconds=window_s)
        return sum(1 for c in self.robot_calls if c.key == key and start < c.at <= end)

    def max_per_minute(self, key: str) -> int:
        """The most calls this robot got in any 60-second window."""
        times = [c.at for c in self.robot_calls if c.key == key]
        return max((self.calls_in_window(key, t) for t in times), default=0)

    @web.middleware
    async def _gate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Apply an outage: refuse, or do the send and lose its answer; then hold a sent answer latency_s."""
        send = request.method == "POST"
        if self._http_answer is not None:
            status, retry_after_s = self._http_answer
            headers = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else {}
            return web.json_response({"error": status}, status=status, headers=headers)
        fault = self.fault
        if fault is not None:
            # An application message is for its user, a robot message for its group.
            who = None
            if send:
                who = str((await request.json()).get("touser") or "") or request.query.get("key")
            fault.arrive(who, send=send)
            if fault.active():
                if refused := fault.refuse(who):
                    return refused
                answer = await handler(request) if send else web.json_response({}, status=503)
                return await fault.withhold(request, answer)
        answer = await handler(request)
        if send and self.latency_s:
            await asyncio.sleep(self.latency_s)
        return answer

    async def _webhook(self, request: web.Request) -> web.Response:
        """POST webhook/send?key=…: markdown or text, 20 a minute per key."""
        key = request.query.get("key", "")
        body = await request.json()
        now = self.clock.now()
        content = (body.get(body.get("msgtype", ""), {}) or {}).get("content", "")
        if key not in self.keys:
            errcode, errmsg = 93000, "invalid webhook url"
        elif self._robot_script.get(key):
            errcode = self._robot_script[key].pop(0)
            errmsg = "scripted"
        elif self.calls_in_window(key, now) >= self.robot_limit_per_min:
            errcode, errmsg = 45009, "api freq out of limit"
        elif body.get("msgtype") not in ("markdown", "text") or not content:
            errcode, errmsg = 40008, "invalid message type"
        elif len(content.encode()) > 4096:
            errcode, errmsg = 40058, "markdown.content exceed max length 4096"
        else:
            errcode, errmsg = 0, "ok"
        if key in self.keys:
            # WeCom counts every call against the robot, refused or not.
            self.robot_calls.append(RobotCall(key, now, content, errcode))
        return web.json_response({"errcode": errcode, "errmsg": errmsg})

    async def _gettoken(self, request: web.Request) -> web.Response:
        """GET gettoken?corpid&corpsecret."""
        self.token_requests += 1
        if request.query.get("corpid") != self.corp_id:
            return web.json_response({"errcode": 40013, "errmsg": "invalid corpid"})
        if request.query.get("corpsecret") != self.secret:
            return web.json_response({"errcode": 40001, "errmsg": "invalid credential"})
        token = secrets.token_urlsafe(24)
        self._tokens[token] = self.clock.now() + timedelta(seconds=self.token_ttl_s)
        return web.json_response(
            {"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": self.token_ttl_s}
        )

    async def _message_send(self, request: web.Request) -> web.Response:
        """POST message/send?access_token=…: a textcard to one or more users."""
        token = request.query.get("access_token", "")
        body = await request.json()
        now = self.clock.now()
        user = str(body.get("touser", ""))
        invalid = ""
        extra: dict[str, Any] = {}
        duplicate = False
        if self._expire_next:
            self._expire_next -= 1
            errcode, errmsg = 42001, "access_token expired"
        elif token not in self._tokens:
            errcode, errmsg = 40014, "invalid access_token"
        elif now >= self._tokens[token]:
            errcode, errmsg = 42001, "access_token expired"
        elif body.get("agentid") != self.agent_id:
            errcode, errmsg = 40056, "invalid agentid"
        elif body.get("msgtype") != "textcard" or not (body.get("textcard") or {}).get("url"):
            errcode, errmsg = 40008, "invalid message type"
        else:
            wanted = user.split("|")
            unknown = [u for u in wanted if self.users is not None and u not in self.users]
            invalid = "|".join(unknown)
            if unknown and len(unknown) == len(wanted):
                errcode, errmsg = 81013, "user & party & tag all invalid"
            else:
                errcode, errmsg = 0, "ok"
                extra["msgid"] = secrets.token_hex(8)
                duplicate = self._duplicate(body, now)
        self.app_calls.append(AppCall(user, now, body, errcode, duplicate))
        return web.json_response({"errcode": errcode, "errmsg": errmsg, "invaliduser": invalid, **extra})

    def _duplicate(self, body: dict[str, Any], now: datetime) -> bool:
        """WeCom's duplicate check: a request JSON accepted within the interval is not received again."""
        if body.get("enable_duplicate_check") != 1:
            return False
        interval = min(int(body.get("duplicate_check_interval") or DUPLICATE_CHECK_DEFAULT_S),
                       DUPLICATE_CHECK_MAX_S)  # fmt: skip
        key = json.dumps(body, sort_keys=True, ensure_ascii=False)
        first = self._accepted.get(key)
        if first is not None and (now - first).total_seconds() < interval:
            return True
        self._accepted[key] = now
        return False
