"""Signed acknowledgement links: `/ack/{token}` opens a small page with a 「收到」 button.

The token is the credential: base64url(JSON {"d": delivery id, "p": person id, "e": expiry})
"." base64url(HMAC-SHA256(secret, first part)). It binds one delivery to one person, cannot be
altered without the secret, and stops working at its expiry. Nothing changes on GET; the
button POSTs back to the same link and acknowledges through feedback like any other channel.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import json
import os
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import structlog
from aiohttp import web

from warnd import messages
from warnd.store import from_ts

if TYPE_CHECKING:
    from warnd.config import Settings

log = structlog.get_logger("warnd.acklink")

KEY_FILE = "ack_link.key"
# A signing key shorter than this is a typo or a placeholder, not a secret.
MIN_SECRET_BYTES = 16

# Level colours as the page paints them (the national warning-signal colours).
LEVEL_HEX = {"red": "#d0021b", "orange": "#f5760c", "yellow": "#e5b800", "blue": "#1464d2"}


class AckLinkError(Exception):
    """A token that must be refused: `status` is 403 (altered) or 410 (expired)."""

    def __init__(self, status: int, reason: str) -> None:
        """Keep the HTTP status and the reason."""
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class AckClaim:
    """What a valid token says."""

    delivery_id: int
    person_id: str
    expires: datetime


def _b64(data: bytes) -> str:
    """base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    """base64url with or without padding."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_secret(settings: Settings) -> bytes:
    """The signing key: `[ack_links] secret` (file, env or credential), else one kept under state_dir."""
    configured = settings.ack_links.secret
    if configured:
        key = configured.encode()
        if len(key) < MIN_SECRET_BYTES:
            raise ValueError(f"ack_links.secret must be at least {MIN_SECRET_BYTES} bytes")
        return key
    path = settings.state_dir / KEY_FILE
    try:
        return bytes.fromhex(path.read_text(encoding="ascii").strip())
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    # O_EXCL: two processes starting at once must not each write a different key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return bytes.fromhex(path.read_text(encoding="ascii").strip())
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(key.hex() + "\n")
    log.info("acklink.key_generated", path=str(path))
    return key


class AckSigner:
    """Makes and checks ack-link tokens.

    Args:
        secret: the HMAC key.
        ttl: how long a link stays valid.
    """

    def __init__(self, secret: bytes, ttl: timedelta) -> None:
        """Keep the key and lifetime."""
        self._secret = secret
        self.ttl = ttl

    def _mac(self, body: str) -> str:
        """The signature of a token's first part."""
        return _b64(hmac.new(self._secret, body.encode("ascii"), hashlib.sha256).digest())

    def sign(self, delivery_id: int, person_id: str, now: datetime) -> str:
        """A token for this delivery and person, valid for `ttl` from now."""
        expires = int((now + self.ttl).timestamp())
        payload = json.dumps({"d": delivery_id, "p": person_id, "e": expires}, separators=(",", ":"))
        body = _b64(payload.encode())
        return f"{body}.{self._mac(body)}"

    def verify(self, token: str, now: datetime) -> AckClaim:
        """The claim of a genuine, unexpired token; AckLinkError(403 or 410) otherwise."""
        body, dot, mac = token.partition(".")
        # A token is base64url and a dot: anything else (é, 中) was altered, and cannot be MAC'd.
        if not dot or not body or not mac or not token.isascii():
            raise AckLinkError(403, "malformed")
        # Constant time: a timing side channel must not reveal how much of a forged MAC is right.
        if not hmac.compare_digest(self._mac(body).encode(), mac.encode()):
            raise AckLinkError(403, "bad signature")
        try:
            data = json.loads(_unb64(body))
            claim = AckClaim(
                int(data["d"]), str(data["p"]), datetime.fromtimestamp(int(data["e"]), tz=now.tzinfo)
            )
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise AckLinkError(403, "malformed") from None
        if now >= claim.expires:
            raise AckLinkError(410, "expired")
        return claim


def link(public_url: str, token: str) -> str:
    """The URL a person opens."""
    return f"{public_url.rstrip('/')}/ack/{token}"


_PAGE = """<!DOCTYPE html>
<html lang="zh-CN"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 0; padding: 1em; background: #f6f6f6; color: #222; }}
.card {{ background: #fff; border-radius: 8px; padding: 1em; max-width: 36em; margin: auto;
  border-top: 8px solid {colour}; }}
.level {{ color: {colour}; font-weight: bold; }}
h1 {{ font-size: 1.2em; }}
button {{ font-size: 1.3em; width: 100%; padding: .6em; border: 0; border-radius: 6px;
  background: {colour}; color: #fff; }}
.done {{ font-size: 1.2em; color: #1a7f37; font-weight: bold; }}
.gray {{ color: #777; font-size: .9em; }}
</style></head>
<body><div class="card">{body}</div></body></html>
"""


def _page(title: str, body: str, colour: str = "#777", status: int = 200) -> web.Response:
    """An HTML page that is never cached (it shows live state)."""
    text = _PAGE.format(title=html.escape(title), colour=colour, body=body)
    return web.Response(
        text=text,
        status=status,
        content_type="text/html",
        charset="utf-8",
        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )


def _page_doc(text: str) -> dict[str, Any]:
    """An answer that is a page, as the OpenAPI document states it."""
    return {"description": text, "content": {"text/html": {"schema": {"type": "string"}}}}


REFUSALS: dict[int, str | dict[str, Any]] = {403: _page_doc("altered link"), 410: _page_doc("expired link")}


def _refused(err: AckLinkError) -> web.Response:
    """The error page for an altered, expired or unknown link."""
    if err.status == 410:
        msg = "此确认链接已过期。如仍需确认，请联系乡镇应急办值班员。"
        title = "链接已过期"
    else:
        msg = "此确认链接无效（可能被改动或不完整）。请从原消息重新打开。"
        title = "链接无效"
    return _page(title, f"<h1>{title}</h1><p>{msg}</p>", status=err.status)


class AckLinks:
    """The two handlers behind ack links (mounted at /ack/{token} by warnd.api.acks).

    Args:
        signer: checks tokens.
        store: reads the delivery and its warning.
        feedback: records the acknowledgement.
        clock: the daemon's clock (expiry).
        settings: warnd's settings (time zone, message templates).
        directory: returns the current directory (names in messages).
    """

    def __init__(
        self, signer: AckSigner, store: Any, feedback: Any, clock: Any, settings: Any, directory: Any
    ) -> None:
        """Keep the collaborators."""
        self.signer, self.store, self.feedback, self.clock = signer, store, feedback, clock
        self.settings, self.directory = settings, directory
        self.zone = ZoneInfo(settings.policy.timezone)

    async def _resolve(self, token: str) -> tuple[AckClaim, dict[str, Any], dict[str, Any]]:
        """Token → (claim, delivery, warning); the delivery must belong to the claimed person."""
        claim = self.signer.verify(token, self.clock.now())
        delivery = await self.store.get_delivery(claim.delivery_id)
        if delivery is None or delivery["target"] != claim.person_id:
            raise AckLinkError(403, "no such delivery")
        warning = await self.store.get_warning(delivery["warning_id"]) or {}
        return claim, delivery, warning

    def _warning_html(self, w: dict[str, Any], delivery: dict[str, Any]) -> tuple[str, str]:
        """The warning's colour and the message this link came with (its kind's title and text)."""
        colour = LEVEL_HEX.get(w.get("level", "blue"), "#777")
        context = json.loads(delivery["context"]) if delivery.get("context") else {}
        kind = messages.kind_of(delivery["kind"], context)
        values = messages.values_for(
            w, kind, context, settings=self.settings, directory=self.directory(), channel="wechat",
            recipient_id=delivery.get("person_id"),
        )  # fmt: skip
        r = messages.render(kind, values, self.settings.messages)
        first, *rest = r.text.splitlines() or [""]
        created = from_ts(w.get("created_at"))
        when = created.astimezone(self.zone).strftime("%Y-%m-%d %H:%M") if created else ""
        parts = [
            f'<p class="level">{html.escape(r.title)}</p>',
            f"<h1>{html.escape(first)}</h1>",
            *(f"<p>{html.escape(line)}</p>" for line in rest),
            f'<p class="gray">发布时间：{when}</p>',
        ]
        return colour, "\n".join(parts)

    async def show(self, request: web.Request) -> web.Response:
        """GET: the warning and a 「收到」 button (or that it is already confirmed)."""
        try:
            _claim, delivery, warning = await self._resolve(request.match_info["token"])
        except AckLinkError as err:
            log.info("acklink.refused", reason=err.reason, status=err.status)
            return _refused(err)
        colour, block = self._warning_html(warning, delivery)
        if delivery["state"] == "acknowledged":
            action = '<p class="done">✔ 已确认收到</p>'
        else:
            action = '<form method="post"><button type="submit">收到</button></form>'
        return _page(warning.get("headline", "预警"), block + action, colour)

    async def confirm(self, request: web.Request) -> web.Response:
        """POST: acknowledge the delivery (叫应) and say so."""
        try:
            claim, delivery, warning = await self._resolve(request.match_info["token"])
        except AckLinkError as err:
            log.info("acklink.refused", reason=err.reason, status=err.status)
            return _refused(err)
        await self.feedback.ack(
            source="acklink",
            status="acknowledged",
            msg_id=delivery["msg_id"],
            target=delivery["target"],
            detail={"person_id": claim.person_id, "remote": request.remote},
        )
        colour, block = self._warning_html(warning, delivery)
        return _page("已确认", block + '<p class="done">✔ 已确认收到，谢谢。</p>', colour)
