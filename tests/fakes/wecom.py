"""Loopback fake of WeCom's API: robot webhooks with the 20/min limit, gettoken, message/send.

Time comes from the test's FakeClock, so "a minute" passes when the test advances it. Every
request is recorded; answers follow WeCom's shapes (`{"errcode", "errmsg", …}`, HTTP 200 even
for errors, as WeCom does).

    fake = FakeWecom(clock, keys={"k-a", "k-b"}, corp_id="ww1", secret="s3cret")
    base = await fake.start()          # point [wecom] api_base at it
    fake.expire_token_once()           # the next message/send answers 42001
    await fake.close()
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web

ROBOT_LIMIT_PER_MIN = 20


@dataclass
class RobotCall:
    """One webhook call: which key, when (fake time), what, and what was answered."""

    key: str
    at: datetime
    content: str
    errcode: int


@dataclass
class AppCall:
    """One message/send call."""

    touser: str
    at: datetime
    body: dict[str, Any]
    errcode: int


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
    """

    clock: Any
    keys: set[str] = field(default_factory=set)
    corp_id: str = "ww-test-corp"
    secret: str = "test-app-secret"
    agent_id: int = 1000002
    users: set[str] | None = None
    token_ttl_s: int = 7200
    robot_calls: list[RobotCall] = field(default_factory=list)
    app_calls: list[AppCall] = field(default_factory=list)
    token_requests: int = 0
    _tokens: dict[str, datetime] = field(default_factory=dict)
    _expire_next: int = 0
    _robot_script: dict[str, list[int]] = field(default_factory=dict)
    _runner: web.AppRunner | None = None

    async def start(self) -> str:
        """Serve on 127.0.0.1, a free port; return the base URL."""
        app = web.Application()
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

    def expire_token_once(self) -> None:
        """The next message/send answers 42001 (token expired) whatever token it carries."""
        self._expire_next += 1

    def script_robot(self, key: str, errcodes: list[int]) -> None:
        """The next calls to this robot answer these errcodes (e.g. 45009) before normal handling."""
        self._robot_script.setdefault(key, []).extend(errcodes)

    def calls_in_window(self, key: str, end: datetime, window_s: float = 60) -> int:
        """How many calls this robot got in the window (end - window_s, end]."""
        start = end - timedelta(seconds=window_s)
        return sum(1 for c in self.robot_calls if c.key == key and start < c.at <= end)

    def max_per_minute(self, key: str) -> int:
        """The most calls this robot got in any 60-second window."""
        times = [c.at for c in self.robot_calls if c.key == key]
        return max((self.calls_in_window(key, t) for t in times), default=0)

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
        elif self.calls_in_window(key, now) >= ROBOT_LIMIT_PER_MIN:
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
        self.app_calls.append(AppCall(user, now, body, errcode))
        return web.json_response({"errcode": errcode, "errmsg": errmsg, "invaliduser": invalid, **extra})
