"""WeCom (企业微信): work-group robots (webhook markdown) and application text cards with ack links.

Group robots (`cgi-bin/webhook/send?key=…`) take 20 messages a minute each. The adapter keeps a
sliding window per robot: deliveries beyond it come back as TransientError with the time the
window frees up, so the dispatcher retries them then; when several are pending for one robot at
that point they go out merged into one markdown message (every merged delivery gets the same
receipt), so nothing is dropped and the robot is never pushed past its limit.

Application messages (`cgi-bin/message/send`) go to people with a `wecom_user`: a `textcard`
whose link is a signed ack link (warnd.acklink). The access token is cached until shortly before
it expires and refreshed once when WeCom says it is stale (40014, 42001). WeCom has no way to
look a message up, so a card whose answer was lost (a timeout, a dropped connection, a crash) is
sent again; it is sent with WeCom's duplicate check and is built only from what every attempt of
its delivery shares (its text, the time it was planned, its ack link), so WeCom drops the repeat.

Keys and the application secret never appear in errors or logs: URLs carrying them are built
here and never put into an exception message.
"""

from __future__ import annotations

import asyncio
import os
from collections import defaultdict, deque
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar
from zoneinfo import ZoneInfo

import aiohttp
import structlog

from warnd import messages
from warnd.acklink import AckSigner, link, load_secret
from warnd.adapter import (
    Adapter,
    AdapterContext,
    Limits,
    Message,
    PermanentError,
    Receipt,
    TransientError,
    classify_http,
    retry_after_s,
)
from warnd.store import from_ts

if TYPE_CHECKING:
    from warnd.config import Settings

log = structlog.get_logger("adapters.wecom")

ROBOT_PREFIX = "robot:"
ROBOT_WINDOW_S = 60.0
# WeCom caps a markdown message at 4096 bytes of UTF-8; keep a little room for the merge header.
MARKDOWN_MAX_BYTES = 4096
# A single warning's section stays well under the cap so that several fit into one merged message.
SECTION_MAX_BYTES = 1500
# textcard limits (WeCom docs): title 128 bytes, description 512 bytes, button text 4 characters.
CARD_TITLE_MAX_BYTES = 128
CARD_DESCRIPTION_MAX_BYTES = 512
# Refresh the access token this long before WeCom says it expires: a send in flight must not race it.
TOKEN_MARGIN_S = 300.0
# WeCom sends no Retry-After. After a frequency error it may keep a robot blocked for a while:
# wait at least a whole window before trying again.
FREQUENCY_BACKOFF_S = 60.0
# Errcode -1 is "system busy": try again soon.
BUSY_BACKOFF_S = 5.0
HTTP_TIMEOUT_S = 15.0
# enable_duplicate_check's window: WeCom's most, 4 hours. A retry comes within minutes, but a
# delivery may wait out a long outage; a later resend of the same card would reach the person again.
DUPLICATE_CHECK_S = 4 * 3600

# -- WeCom errcodes, each mapped on purpose -------------------------------------------------------
ERR_OK = 0
ERR_BUSY = -1  # 系统繁忙: transient
ERR_FREQUENCY = 45009  # 接口调用超过限制 (a robot's 20/min, an app's quota): transient, after a window
ERR_ROBOT_FREQUENCY = 130101  # robot frequency block: transient, after a window
ERR_INVALID_KEY = 93000  # 无效的webhook url (the robot was removed or the key is wrong): dead, reported
ERR_INVALID_TOKEN = 40014  # 不合法的access_token: refresh once
ERR_TOKEN_EXPIRED = 42001  # access_token已过期: refresh once
ERR_INVALID_SECRET = 40001  # 不合法的secret (gettoken): the application's credentials are wrong
ERR_INVALID_CORPID = 40013  # 不合法的CorpID (gettoken): the application's credentials are wrong
ERR_INVALID_AGENT = 40056  # 不合法的agentid: config error, dead
ERR_USER_UNKNOWN = 81013  # UserID、部门ID、标签ID全部非法或无权限: the person is not in WeCom, dead
ERR_IP_NOT_ALLOWED = 60020  # 不安全的访问IP: the server's IP is not on the app's allow list, dead

FREQUENCY_ERRORS = {ERR_FREQUENCY, ERR_ROBOT_FREQUENCY}
STALE_TOKEN_ERRORS = {ERR_INVALID_TOKEN, ERR_TOKEN_EXPIRED}
CREDENTIAL_ERRORS = {ERR_INVALID_SECRET, ERR_INVALID_CORPID}

LEVEL_SQUARE = {"red": "🟥", "orange": "🟧", "yellow": "🟨", "blue": "🟦"}
# WeCom markdown knows three font colours: warning (orange-red), info (green), comment (grey).
LEVEL_FONT = {"red": "warning", "orange": "warning", "yellow": "warning", "blue": "comment"}


class FrequencyError(TransientError):
    """WeCom refused a call for frequency (45009, 130101): the robot waits a whole window."""


class _StaleToken(Exception):
    """WeCom says the access token is no longer good."""


def cut_bytes(text: str, limit: int) -> str:
    """Cut text so its UTF-8 form fits in limit bytes, marking a cut with an ellipsis."""
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[: max(0, limit - 3)].decode("utf-8", errors="ignore") + "…"


def errcode_error(errcode: int, errmsg: str, *, robot: bool) -> Exception | None:
    """The failure a WeCom errcode means, or None for success. Token errors are the caller's."""
    reason = f"wecom errcode {errcode}: {errmsg[:80]}"
    if errcode == ERR_OK:
        return None
    if errcode in FREQUENCY_ERRORS:
        return FrequencyError(reason, FREQUENCY_BACKOFF_S)
    if errcode == ERR_BUSY:
        return TransientError(reason, BUSY_BACKOFF_S)
    if errcode == ERR_INVALID_KEY:
        return PermanentError(f"robot key rejected ({reason})")
    if errcode in STALE_TOKEN_ERRORS and not robot:
        return _StaleToken(reason)
    if errcode == ERR_USER_UNKNOWN:
        return PermanentError(f"person not found in WeCom ({reason})")
    # Anything else (40056 agentid, 60020 IP, 40008 bad type …) is a request that cannot succeed.
    return PermanentError(reason)


def http_error(status: int, retry_after: str | None = None) -> Exception | None:
    """An HTTP status outside WeCom's errcodes: 2xx ok, 429/5xx retry, 401/403 auth, other 4xx permanent.

    WeCom itself answers 200 with an errcode; a 429 or 503 comes from a gateway in between, and
    its Retry-After (delta-seconds or an HTTP date) is the earliest retry. A 401 or 403 means
    warnd is not let through (a proxy's credentials, an IP allow-list): as on every HTTP channel,
    the channel stops until the operator fixes it.
    """
    # The one status table every HTTP adapter shares (warnd.adapter.classify_http).
    return classify_http(status, f"wecom HTTP {status}", retry_after_s(retry_after))


class WecomAdapter(Adapter):
    """The `wechat` channel: robots for work groups, application messages for people.

    Args:
        ctx: what the daemon lends (settings, directory, store, feedback, clock, HTTP session).
    """

    kind: ClassVar[str] = "wechat"
    sends_ack_links: ClassVar[bool] = True
    limits: ClassVar[Limits] = Limits(max_text_chars=2000, concurrency=8, batch_size=200)

    def __init__(self, ctx: AdapterContext) -> None:
        """Prepare windows, the token cache and the ack-link signer; `start()` opens HTTP."""
        super().__init__(ctx)
        s = ctx.settings.wecom
        self.api_base = s.api_base.rstrip("/")
        self.per_minute = s.robot_per_minute
        self.clock = ctx.clock
        self.zone = ZoneInfo(ctx.settings.policy.timezone)
        self._session: aiohttp.ClientSession | None = None
        # Per request: the session is the daemon's, shared with other channels.
        self._timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
        # robot key_env → times of calls made in the last window
        self._windows: dict[str, deque[datetime]] = defaultdict(deque)
        self._blocked_until: dict[str, datetime] = {}
        self._robot_locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._token: str | None = None
        self._token_expires: datetime | None = None
        self._token_lock = asyncio.Lock()
        self.token_refreshes = 0
        self.signer = AckSigner(load_secret(ctx.settings), timedelta(hours=ctx.settings.ack_links.ttl_h))

    @classmethod
    def configured(cls, settings: Settings) -> bool:
        """On unless `[wecom] enabled = false`: robots need only keys in the environment."""
        return settings.wecom.enabled

    async def start(self) -> None:
        """Send through the daemon's one HTTP session."""
        self._session = self.ctx.http
        if not self._app_config():
            log.info("wecom.app_not_configured", channel=self.kind)

    async def aclose(self) -> None:
        """Let go of the session (the daemon closes it)."""
        self._session = None

    # -- sending ------------------------------------------------------------------------------

    async def send(self, message: Message) -> Receipt:
        """Send one message (robots go through the same window and merge logic as batches)."""
        result = (await self.send_batch([message]))[0]
        if isinstance(result, BaseException):
            raise result
        return result

    async def send_batch(self, messages: Sequence[Message]) -> list[Receipt | BaseException]:
        """Robots: one sequence of (possibly merged) calls per robot; people: one card each."""
        results: list[Receipt | BaseException | None] = [None] * len(messages)
        robots: dict[str, list[int]] = defaultdict(list)
        people: list[int] = []
        for i, m in enumerate(messages):
            if m.delivery.target.startswith(ROBOT_PREFIX):
                robots[m.delivery.target.removeprefix(ROBOT_PREFIX)].append(i)
            else:
                people.append(i)
        gate = asyncio.Semaphore(self.limits.concurrency)

        async def robot(key_env: str, idx: list[int]) -> None:
            """One robot's share of the batch, in order."""
            async with gate:
                out = await self._robot_send(key_env, [messages[i] for i in idx])
            for i, r in zip(idx, out, strict=True):
                results[i] = r

        async def person(i: int) -> None:
            """One application message."""
            async with gate:
                try:
                    results[i] = await self._app_send(messages[i])
                except (TransientError, PermanentError) as exc:
                    results[i] = exc

        await asyncio.gather(*(robot(k, v) for k, v in robots.items()), *(person(i) for i in people))
        return [r if r is not None else TransientError("not attempted") for r in results]

    # -- robots -------------------------------------------------------------------------------

    async def _robot_send(self, key_env: str, msgs: list[Message]) -> list[Receipt | BaseException]:
        """Send a robot's pending messages within its window; merge when they would not fit."""
        key = os.environ.get(key_env)
        if not key:
            return [PermanentError(f"robot key: environment variable {key_env} is not set")] * len(msgs)
        async with self._robot_locks[key_env]:
            now = self.clock.now()
            blocked = self._blocked_until.get(key_env)
            if blocked is not None and now < blocked:
                wait = (blocked - now).total_seconds()
                return [TransientError("robot blocked by WeCom after a frequency error", wait)] * len(msgs)
            window = self._windows[key_env]
            while window and (now - window[0]).total_seconds() >= ROBOT_WINDOW_S:
                window.popleft()
            capacity = self.per_minute - len(window)
            sections = [self._markdown(m, key_env) for m in msgs]
            chunks = [[i] for i in range(len(msgs))] if len(msgs) <= capacity else _pack(sections)
            results: list[Receipt | BaseException | None] = [None] * len(msgs)
            for chunk in chunks[: max(0, capacity)]:
                content = _merge([sections[i] for i in chunk])
                window.append(self.clock.now())  # WeCom counts the call, whatever it answers
                try:
                    await self._post_robot(key, content)
                except (TransientError, PermanentError) as exc:
                    if isinstance(exc, FrequencyError):
                        self._blocked_until[key_env] = self.clock.now() + timedelta(
                            seconds=FREQUENCY_BACKOFF_S
                        )
                    if isinstance(exc, PermanentError):
                        log.warning("wecom.robot_rejected", robot=key_env, reason=exc.reason)
                    for i in range(len(msgs)):
                        if results[i] is None:
                            results[i] = exc
                    return results  # type: ignore[return-value]  # the None slots were replaced just above  # every slot filled just above
                receipt = Receipt("sent")
                for i in chunk:
                    results[i] = receipt
                if len(chunk) > 1:
                    log.info("wecom.robot_merged", robot=key_env, warnings=len(chunk), body_len=len(content))
            if any(r is None for r in results):
                oldest = window[0] if window else self.clock.now()
                wait = max(1.0, ROBOT_WINDOW_S - (self.clock.now() - oldest).total_seconds())
                reason = f"robot limit {self.per_minute}/min reached; queued to merge"
                results = [r if r is not None else TransientError(reason, wait) for r in results]
            return results  # type: ignore[return-value]

    async def _post_robot(self, key: str, content: str) -> None:
        """POST one markdown message to a robot's webhook."""
        body = {"msgtype": "markdown", "markdown": {"content": content}}
        data = await self._post(f"{self.api_base}/cgi-bin/webhook/send", {"key": key}, body)
        err = errcode_error(int(data.get("errcode", -1)), str(data.get("errmsg", "")), robot=True)
        if err is not None:
            raise err

    def _markdown(self, m: Message, key_env: str) -> str:
        """A message as a robot's markdown section: coloured title, its kind's text, time."""
        w = m.warning
        kind, values = messages.for_message(m, self.ctx.settings, self.ctx.directory())
        values["area"] = self._area(w, key_env)  # the villages of this robot's group
        r = messages.render(kind, values, self.ctx.settings.messages)
        font = LEVEL_FONT.get(w.get("level", "blue"), "comment")
        mark = "✅" if kind == "all_clear" else LEVEL_SQUARE.get(w.get("level", ""), "")
        first, *rest = r.text.splitlines() or [""]
        lines = [f"### {mark} {_md(r.title)}", f'**<font color="{font}">{_md(first)}</font>**']
        lines.extend(f"> {_md(line)}" for line in rest)
        created = from_ts(w.get("created_at"))
        if created is not None and kind != "all_clear":
            lines.append(
                f'> <font color="comment">发布时间：{created.astimezone(self.zone):%Y-%m-%d %H:%M}</font>'
            )
        if w.get("expires") and kind != "all_clear":
            expires = datetime.fromisoformat(w["expires"]).astimezone(self.zone)
            lines.append(f'> <font color="comment">有效至：{expires:%m-%d %H:%M}</font>')
        return cut_bytes("\n".join(lines), SECTION_MAX_BYTES)

    def _area(self, w: dict[str, Any], key_env: str) -> str:
        """The villages of this warning in this robot's group, by name."""
        directory = self.ctx.directory()
        robot = next((r for r in directory.robots if r.key_env == key_env), None)
        codes = [c for c in w.get("villages", []) if robot is None or c in robot.villages]
        names = [directory.villages[c].name for c in codes if c in directory.villages]
        if len(names) > 8:
            return "、".join(names[:8]) + f"等{len(names)}个村（社区）"
        return "、".join(names)

    # -- application messages -----------------------------------------------------------------

    def _app_config(self) -> tuple[str, int, str] | None:
        """(corp_id, agent_id, secret) when application messages are configured."""
        s = self.ctx.settings.wecom
        secret = s.secret  # from warnd.toml, WARND_WECOM__SECRET or the credential warnd_wecom_secret
        if s.corp_id and s.agent_id is not None and secret:
            return s.corp_id, s.agent_id, secret
        return None

    async def _app_send(self, m: Message) -> Receipt:
        """A textcard with the person's ack link; the token is refreshed once if WeCom says stale."""
        config = self._app_config()
        if config is None:
            raise PermanentError(
                "wecom application messages are not configured (wecom.corp_id/agent_id/secret)"
            )
        _corp, agent_id, _secret = config
        user = m.delivery.address
        if not user:
            raise PermanentError("person has no wecom_user")
        body = {
            "touser": user,
            "msgtype": "textcard",
            "agentid": agent_id,
            "textcard": self._card(m),
            # WeCom drops a message whose request JSON equals one it took within the interval: a
            # resend after a lost answer (the card is the same on every attempt) is not received twice.
            "enable_duplicate_check": 1,
            "duplicate_check_interval": DUPLICATE_CHECK_S,
        }
        token = await self._access_token()
        for attempt in (1, 2):
            data = await self._post(f"{self.api_base}/cgi-bin/message/send", {"access_token": token}, body)
            err = errcode_error(int(data.get("errcode", -1)), str(data.get("errmsg", "")), robot=False)
            if err is None:
                if user in str(data.get("invaliduser", "")).split("|"):
                    raise PermanentError("person not found in WeCom (invaliduser)")
                return Receipt("sent", provider_ref=data.get("msgid") or None)
            if isinstance(err, _StaleToken):
                if attempt == 1:
                    token = await self._access_token(stale=token)
                    continue
                raise TransientError(f"access token refused after refresh ({err})")
            raise err
        raise TransientError("access token refused after refresh")  # pragma: no cover - loop returns

    def _card(self, m: Message) -> dict[str, str]:
        """The textcard: title, time, the message kind's text, and the signed ack link.

        Time and link date from when the delivery was planned, not from this attempt: every
        attempt sends the same card, which WeCom's duplicate check needs to drop a repeat.
        """
        d = m.delivery
        kind, values = messages.for_message(m, self.ctx.settings, self.ctx.directory())
        r = messages.render(kind, values, self.ctx.settings.messages)
        planned = d.created_at or self.clock.now()
        first, *rest = r.text.splitlines() or [""]
        description = (
            f'<div class="gray">{_esc(f"{planned.astimezone(self.zone):%Y-%m-%d %H:%M}")}</div>'
            f'<div class="highlight">{_esc(first)}</div>'
            f'<div class="normal">{_esc(cut_bytes(chr(10).join(rest), 300))}</div>'
        )
        token = self.signer.sign(d.id, d.target, planned)
        return {
            "title": cut_bytes(r.title, CARD_TITLE_MAX_BYTES),
            "description": cut_bytes(description, CARD_DESCRIPTION_MAX_BYTES),
            "url": link(self.ctx.settings.http.public_url, token),
            "btntxt": "收到",
        }

    async def _access_token(self, stale: str | None = None) -> str:
        """The cached access token; fetched when missing, near expiry, or equal to `stale`."""
        async with self._token_lock:
            now = self.clock.now()
            fresh = self._token is not None and self._token_expires is not None and now < self._token_expires
            if fresh and (stale is None or self._token != stale):
                return self._token  # type: ignore[return-value]  # `fresh` says it is set
            config = self._app_config()
            if config is None:
                raise PermanentError("wecom application messages are not configured")
            corp_id, _agent, secret = config
            data = await self._get(
                f"{self.api_base}/cgi-bin/gettoken", {"corpid": corp_id, "corpsecret": secret}
            )
            errcode = int(data.get("errcode", -1))
            if errcode in CREDENTIAL_ERRORS:
                log.error("wecom.auth_failed", channel=self.kind, errcode=errcode)
                raise PermanentError(f"wecom application credentials rejected (errcode {errcode})")
            err = errcode_error(errcode, str(data.get("errmsg", "")), robot=False)
            if err is not None:
                raise err if not isinstance(err, _StaleToken) else TransientError(str(err))
            token = str(data.get("access_token") or "")
            if not token:
                raise TransientError("gettoken answered without a token")
            expires_in = float(data.get("expires_in", 7200))
            self._token = token
            self._token_expires = now + timedelta(seconds=max(0.0, expires_in - TOKEN_MARGIN_S))
            if stale is not None:
                self.token_refreshes += 1
                log.info("wecom.token_refreshed", channel=self.kind)
            return token

    # -- HTTP ---------------------------------------------------------------------------------

    async def _post(self, url: str, params: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        """POST JSON and return WeCom's JSON answer; network trouble is transient."""
        return await self._call("POST", url, params, body)

    async def _get(self, url: str, params: dict[str, str]) -> dict[str, Any]:
        """GET and return WeCom's JSON answer."""
        return await self._call("GET", url, params, None)

    async def _call(
        self, method: str, url: str, params: dict[str, str], body: dict[str, Any] | None
    ) -> dict[str, Any]:
        """One request. Errors name the exception type only: the URL carries keys and secrets."""
        if self._session is None:
            raise TransientError("wecom adapter not started")
        try:
            request = self._session.request(method, url, params=params, json=body, timeout=self._timeout)
            async with request as resp:
                err = http_error(resp.status, resp.headers.get("Retry-After"))
                if err is not None:
                    raise err
                data = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            # Only a connection that was never made proves nothing went out.
            doubt = body is not None and not isinstance(exc, aiohttp.ClientConnectorError)
            raise TransientError(f"wecom unreachable: {type(exc).__name__}", maybe_sent=doubt) from None
        if not isinstance(data, dict):
            raise TransientError("wecom answered something that is not a JSON object")
        return data


def _md(text: str) -> str:
    """Text for WeCom markdown: no stray markup, no line breaks that would end a quote."""
    return " ".join(str(text).replace("<", "＜").replace(">", "＞").split())


def _esc(text: str) -> str:
    """Text for a textcard's HTML-ish description."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


MERGE_SEPARATOR = "\n\n"


def _merge_header(n: int) -> str:
    """The first line of a merged message."""
    return f"**应急预警汇总（{n}条）**"


def _merge(sections: list[str]) -> str:
    """One section as it is; several under a header."""
    if len(sections) == 1:
        return sections[0]
    return MERGE_SEPARATOR.join([_merge_header(len(sections)), *sections])


def _pack(sections: list[str]) -> list[list[int]]:
    """Group sections, in order, into as few messages as fit WeCom's markdown size."""
    budget = MARKDOWN_MAX_BYTES - len(_merge_header(999).encode()) - len(MERGE_SEPARATOR)
    chunks: list[list[int]] = []
    used = 0
    for i, s in enumerate(sections):
        size = len(s.encode()) + len(MERGE_SEPARATOR)
        if chunks and used + size <= budget:
            chunks[-1].append(i)
            used += size
        else:
            chunks.append([i])
            used = size
    return chunks
