"""The Twilio voice provider (叫应 by phone): the warning spoken twice in Mandarin, key 1 confirms.

With `[twilio] public_base_url` the call's TwiML gathers one key and Twilio posts it to
`/hooks/twilio/voice/gather`: 1 acknowledges; another key, no key, busy or no answer is a failed
attempt the policy may retry. Without a public URL the call cannot gather anything (Twilio has
no REST resource for gathered digits): the call still speaks the warning, polling sees whether
it was answered, and an answered call counts as delivered, never as confirmed.

A call a crash left in doubt is looked up before it is placed again: warnd calls a person once
per delivery, so a call to that number from ours since the claim is this delivery's call.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape, quoteattr

import structlog
from aiohttp import web

from adapters.providers.twilio import (
    FORBIDDEN,
    FORM,
    HOOK_RESPONSES,
    TwilioProvider,
    phone_of,
    query,
    twilio_configured,
    twiml,
)
from warnd import messages
from warnd.adapter import Message, Receipt, Webhook
from warnd.phone import mask_phone
from warnd.speech import spoken_text

if TYPE_CHECKING:
    from warnd.config import Settings

log = structlog.get_logger("warnd.adapters.voice")

# Seconds Twilio waits for the key after the prompt: long enough for an elderly official to find
# the key, short enough that a call nobody listens to ends soon.
_GATHER_TIMEOUT_S = 10
# Call states that end a call without anyone hearing it.
_UNANSWERED = {"busy", "no-answer", "failed", "canceled"}
POLLING_NOTE = "answered; a key press cannot be seen without [twilio] public_base_url (polling mode)"


def script(message: Message, settings: Settings, directory: Any) -> str:
    """What the call says: the kind's spoken form, numbers and times as words (the details go by SMS)."""
    kind, values = messages.for_message(message, settings, directory)
    return spoken_text(messages.render(kind, values, settings.messages).speech)


def call_twiml(message: Message, text: str, gather_url: str | None) -> str:
    """TwiML: the text said twice, inside a one-key <Gather> when there is a URL to post it to."""
    say = f'<Say language="cmn-CN">{escape(text)}</Say>'
    if gather_url is None or not message.delivery.ack_required:
        return f'<Response>{say}<Pause length="1"/>{say}</Response>'
    prompt = f'<Say language="cmn-CN">{messages.CALL_ACK_PROMPT}</Say>'
    # actionOnEmptyResult: no key is reported too, so "nobody pressed" is known at once.
    gather = (
        f'<Gather numDigits="1" timeout="{_GATHER_TIMEOUT_S}" method="POST" actionOnEmptyResult="true"'
        f' action={quoteattr(gather_url)}>{say}<Pause length="1"/>{say}{prompt}</Gather>'
    )
    return f"<Response>{gather}</Response>"


class TwilioVoice(TwilioProvider):
    """Voice calls through Twilio's Calls API.

    Args:
        ctx: what the daemon lends the channel.
        pacer: the channel's pacer, which keeps the calling number's rate.
    """

    channel = "voice"

    @classmethod
    def configured(cls, settings: Settings) -> bool:
        """Account SID, a calling number and an auth token (a messaging service cannot call)."""
        return twilio_configured(settings, voice=True)

    @property
    def rate_per_s(self) -> float:
        """Calls per second: [twilio] calls_per_s (Twilio's CPS, not the message rate)."""
        return self.tw.calls_per_s

    async def send(self, message: Message) -> Receipt:
        """Place one call; the gather action, status callback or polling report how it went."""
        d = message.delivery
        to = phone_of(d)
        base, q = self.public_base, query(d.msg_id, d.target)
        params: dict[str, Any] = {
            "to": to,
            "from_": self.tw.from_number,
            "twiml": call_twiml(
                message,
                script(message, self.ctx.settings, self.ctx.directory()),
                f"{base}/hooks/twilio/voice/gather?{q}" if base else None,
            ),
        }
        if base:
            params["status_callback"] = f"{base}/hooks/twilio/voice/status?{q}"
            params["status_callback_event"] = ["completed"]
        assert self.client is not None
        call = await self.call(self.tw.from_number, self.client.calls.create_async, **params)
        log.debug("voice.created", msg_id=d.msg_id, target=d.target, to=mask_phone(to), sid=call.sid)
        return Receipt("sent", provider_ref=call.sid)

    async def reconcile(self, message: Message) -> Receipt | None:
        """Find at Twilio the call a crash left in doubt, or None when it was not placed.

        A call that ended unanswered (busy, no answer, failed) does not count: it is placed again,
        as the retry after such a call would. Limit: two voice deliveries to one person claimed
        in the same moment (an escalation meeting a repeat) could both take the same call.
        """
        d = message.delivery
        assert self.client is not None
        c = await self.find_sent(
            self.client.calls.stream_async, d, match=lambda c: c.status not in _UNANSWERED,
            sent_at=lambda c: c.start_time, to=phone_of(d), from_=self.tw.from_number,
        )  # fmt: skip
        if c is None:
            return None
        log.debug("voice.found", msg_id=d.msg_id, target=d.target, sid=c.sid, status=c.status)
        return Receipt("sent", provider_ref=c.sid)

    async def _call_status(self, sid: str, status: str, row: dict[str, Any], *, webhook: bool) -> bool:
        """Apply a call's final status; returns whether it was final."""
        fb, by = self.ctx.feedback, {"msg_id": row["msg_id"], "target": row["target"]}
        if status in _UNANSWERED:
            await fb.ack(source="twilio.voice", status="failed",
                         detail={"sid": sid, "detail": f"call {status}"}, **by)  # fmt: skip
        elif status == "completed":
            if webhook and row.get("state") in ("failed", "acknowledged"):
                # The gather action already said how this call went (and why).
                pass
            elif webhook and row.get("ack_required"):
                # Answered but key 1 never came (hung up during the message): not confirmed.
                # If 1 was pressed, the gather action came first and this changes nothing.
                await fb.ack(source="twilio.voice", status="failed",
                             detail={"sid": sid, "detail": "call ended without key 1"}, **by)  # fmt: skip
            else:
                note = POLLING_NOTE if not webhook else "answered"
                detail = {"sid": sid, "note": note}
                await fb.ack(source="twilio.voice", status="delivered", detail=detail, **by)
        else:
            return False
        return True

    async def status_hook(self, request: web.Request) -> web.Response:
        """POST /hooks/twilio/voice/status: the call ended (completed, busy, no answer …)."""
        form = await self.verified_form(request)
        if form is None:
            return web.Response(status=403, text=FORBIDDEN)
        row = await self._delivery(request.query.get("m"), request.query.get("t"))
        if row is not None:
            await self._call_status(form.get("CallSid", ""), form.get("CallStatus", ""), row, webhook=True)
        return twiml("")

    async def gather_hook(self, request: web.Request) -> web.Response:
        """POST /hooks/twilio/voice/gather: the key pressed (or none); 1 acknowledges."""
        form = await self.verified_form(request)
        if form is None:
            return web.Response(status=403, text=FORBIDDEN)
        msg_id, target = request.query.get("m"), request.query.get("t")
        digits = form.get("Digits", "")
        sid = form.get("CallSid", "")
        if digits == "1":
            await self.ctx.feedback.ack(source="twilio.voice", status="acknowledged", msg_id=msg_id,
                                        target=target, detail={"sid": sid, "digits": digits})  # fmt: skip
            return twiml('<Say language="cmn-CN">已确认，谢谢。</Say>')
        why = f"pressed {digits}" if digits else "no key pressed"
        await self.ctx.feedback.ack(source="twilio.voice", status="failed", msg_id=msg_id, target=target,
                                    detail={"sid": sid, "digits": digits, "detail": why})  # fmt: skip
        return twiml('<Say language="cmn-CN">未确认。</Say>')

    async def _delivery(self, msg_id: str | None, target: str | None) -> dict[str, Any] | None:
        """The delivery a callback URL names."""
        if not msg_id or not target:
            return None
        row = await self.ctx.store.delivery_to(msg_id, target)
        return dict(row) if row is not None else None

    def webhooks(self) -> list[Webhook]:
        """Twilio's call webhooks: signature-checked, no token."""
        return [
            Webhook("POST", "/hooks/twilio/voice/status", self.status_hook,
                    "Twilio call status callback (X-Twilio-Signature)", body_types=(FORM,),
                    query={"m": "our msg_id", "t": "the target"}, responses=HOOK_RESPONSES),
            Webhook("POST", "/hooks/twilio/voice/gather", self.gather_hook,
                    "Twilio <Gather> action: the key pressed (X-Twilio-Signature)", body_types=(FORM,),
                    query={"m": "our msg_id", "t": "the target"}, responses=HOOK_RESPONSES),
        ]  # fmt: skip

    async def poll_once(self) -> int:
        """Fetch calls in flight; answered ones are delivered (never confirmed), others failed."""
        assert self.client is not None
        gate = asyncio.Semaphore(8)

        async def one(row: dict[str, Any]) -> int:
            """Fetch one call and apply its status if it ended."""
            async with gate:
                c = await self.call(None, self.client.calls(row["provider_ref"]).fetch_async)  # type: ignore[union-attr]
            return int(await self._call_status(c.sid, c.status, row, webhook=False))

        rows = await self.ctx.store.in_flight_of("voice", self.name, unrecorded=True)
        return sum(await asyncio.gather(*(one(r) for r in rows)))
