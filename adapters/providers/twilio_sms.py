"""The Twilio SMS provider: one message per person, receipts and replies by webhook or by polling.

Webhooks (with `[twilio] public_base_url`): `POST /hooks/twilio/status` moves a delivery to
delivered or failed; `POST /hooks/twilio/inbound` takes replies ("1" confirms). Both check
X-Twilio-Signature. Without a public URL the adapter polls Messages.json instead.

A message a crash left in doubt is looked up before it is sent again: one to the same number,
from our sender, with exactly the text this delivery sends, created since its claim. No reference
is added to the text to tell messages apart: a villager reads every character of it.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape

import structlog
from aiohttp import web

from adapters.providers.twilio import (
    FORBIDDEN,
    FORM,
    HOOK_RESPONSES,
    TwilioProvider,
    delivery_failure,
    phone_of,
    query,
    twilio_configured,
    twiml,
)
from warnd import inbound, messages
from warnd.adapter import Message, PermanentError, Receipt, TransientError, Webhook
from warnd.pacing import Pacer
from warnd.phone import mask_phone

if TYPE_CHECKING:
    from warnd.config import Settings

log = structlog.get_logger("warnd.adapters.sms")

# Polling mode: how far back the first poll looks for replies (a restart must not lose the
# night's confirmations), and how much each later poll overlaps the previous one (clock skew
# between warnd and Twilio; replies already stored are recognised by their MessageSid).
_FIRST_LOOKBACK = timedelta(hours=24)
_OVERLAP = timedelta(minutes=10)
# Receipts polled at once: Twilio allows ~100 concurrent REST requests per account.
_POLL_CONCURRENCY = 8
# Message statuses that mean it never reached the phone: such a message does not count as sent.
_NOT_SENT = {"failed", "undelivered", "canceled"}


def sms_text(message: Message, settings: Settings, directory: Any, max_segments: int) -> str:
    """The text of one delivery (its kind's template), within max_segments SMS segments."""
    kind, values = messages.for_message(message, settings, directory)
    return messages.compose_sms(
        kind,
        values,
        settings.messages,
        signature=settings.sms.signature,
        ack=message.delivery.ack_required,
        max_segments=max_segments,
    )


class TwilioSms(TwilioProvider):
    """SMS to people's phones through Twilio's Messages API.

    Args:
        ctx: what the daemon lends the channel.
        pacer: the channel's pacer, which keeps the sender's rate.
    """

    channel = "sms"

    def __init__(self, ctx: Any, pacer: Pacer) -> None:
        """Set up; the client is built in start()."""
        super().__init__(ctx, pacer)
        self._cursor: datetime | None = None

    @classmethod
    def configured(cls, settings: Settings) -> bool:
        """Account SID, a number or messaging service, and an auth token."""
        return twilio_configured(settings)

    @property
    def sender(self) -> str:
        """The messaging service if configured (Twilio picks the number), else the number."""
        return self.tw.messaging_service_sid or self.tw.from_number or ""

    def _sender_params(self) -> dict[str, str]:
        """From or MessagingServiceSid."""
        if self.tw.messaging_service_sid:
            return {"messaging_service_sid": self.tw.messaging_service_sid}
        return {"from_": self.tw.from_number or ""}

    def body(self, message: Message) -> str:
        """The text this delivery is sent with (and recognised by at Twilio after a crash)."""
        return sms_text(message, self.ctx.settings, self.ctx.directory(), self.tw.max_segments)

    async def send(self, message: Message) -> Receipt:
        """Send one SMS; the status callback (or polling) reports whether it arrived."""
        d = message.delivery
        to = phone_of(d)
        body = self.body(message)
        params: dict[str, Any] = {"to": to, "body": body, **self._sender_params()}
        if self.public_base:
            params["status_callback"] = f"{self.public_base}/hooks/twilio/status?{query(d.msg_id, d.target)}"
        assert self.client is not None
        msg = await self.call(self.sender, self.client.messages.create_async, **params)
        log.debug("sms.created", msg_id=d.msg_id, target=d.target, to=mask_phone(to), body_len=len(body),
                  sid=msg.sid)  # fmt: skip
        return Receipt("sent", provider_ref=msg.sid)

    async def reconcile(self, message: Message) -> Receipt | None:
        """Find at Twilio the message a crash left in doubt, or None when it was not sent.

        Same number, same sender, the very text, created since the claim (less RECONCILE_SKEW).
        Limits: a text warnd composes differently after the restart (the warning was updated,
        or a newer warnd words it otherwise), or that Twilio stored rewritten (a messaging
        service's Smart Encoding), is not recognised and is sent again; a second delivery with
        the same text to the same person claimed in the same moment could take this one's
        message for its own (the person then has the text once, not twice).
        """
        d = message.delivery
        to = phone_of(d)
        body = self.body(message)
        service = self.tw.messaging_service_sid
        # Messages.json filters by To and From only: a messaging service's messages are told by
        # their MessagingServiceSid, since the number Twilio picked for them is not known here.
        filters: dict[str, Any] = {"to": to} if service else {"to": to, "from_": self.tw.from_number}

        def ours(m: Any) -> bool:
            """This delivery's text, from our sender, not failed."""
            return (
                m.body == body
                and m.direction != "inbound"
                and m.status not in _NOT_SENT
                and (not service or m.messaging_service_sid == service)
            )

        assert self.client is not None
        m = await self.find_sent(self.client.messages.stream_async, d, match=ours,
                                 sent_at=lambda m: m.date_sent, **filters)  # fmt: skip
        if m is None:
            return None
        log.debug("sms.found", msg_id=d.msg_id, target=d.target, sid=m.sid, status=m.status)
        return Receipt("delivered" if m.status in ("delivered", "read") else "sent", provider_ref=m.sid)

    async def answer(self, phone: str, text: str) -> None:
        """Send an automatic answer outside the outbox (polling mode: no TwiML to answer with)."""
        assert self.client is not None
        await self.call(self.sender, self.client.messages.create_async,
                        to=phone, body=text, **self._sender_params())  # fmt: skip

    # -- receipts and replies ---------------------------------------------------------------

    async def _status(
        self, sid: str, status: str, error_code: Any, msg_id: str | None, target: str | None
    ) -> None:
        """Apply one message status, from a callback or a poll."""
        fb = self.ctx.feedback
        by = {"msg_id": msg_id, "target": target} if msg_id and target else {"provider_ref": sid}
        if status in ("delivered", "read"):
            await fb.ack(source="twilio.sms", status="delivered", detail={"sid": sid}, **by)
        elif status in ("undelivered", "failed"):
            state, reason = delivery_failure(error_code, status)
            await fb.ack(source="twilio.sms", status=state, detail={"sid": sid, "detail": reason}, **by)

    async def status_hook(self, request: web.Request) -> web.Response:
        """POST /hooks/twilio/status: a message's status callback."""
        form = await self.verified_form(request)
        if form is None:
            return web.Response(status=403, text=FORBIDDEN)
        status = form.get("MessageStatus") or form.get("SmsStatus") or ""
        await self._status(form.get("MessageSid", ""), status, form.get("ErrorCode"),
                           request.query.get("m"), request.query.get("t"))  # fmt: skip
        return twiml("")

    async def inbound_hook(self, request: web.Request) -> web.Response:
        """POST /hooks/twilio/inbound: a reply; answered in TwiML at most once per warning."""
        form = await self.verified_form(request)
        if form is None:
            return web.Response(status=403, text=FORBIDDEN)
        reply = await inbound.receive(
            self.ctx.store, self.ctx.feedback, channel="sms", phone=form.get("From", ""),
            body=form.get("Body", ""), provider_ref=form.get("MessageSid"), now=self.ctx.clock.now(),
        )  # fmt: skip
        if reply.answer:
            return twiml(f"<Message>{escape(reply.answer)}</Message>")
        return twiml("")

    def webhooks(self) -> list[Webhook]:
        """Twilio's webhooks: signature-checked, no token."""
        return [
            Webhook("POST", "/hooks/twilio/status", self.status_hook,
                    "Twilio SMS status callback (X-Twilio-Signature)", body_types=(FORM,),
                    query={"m": "our msg_id", "t": "the target"}, responses=HOOK_RESPONSES),
            Webhook("POST", "/hooks/twilio/inbound", self.inbound_hook,
                    "Twilio incoming SMS (X-Twilio-Signature)", body_types=(FORM,), responses=HOOK_RESPONSES),
        ]  # fmt: skip

    # -- polling ---------------------------------------------------------------------------

    async def poll_once(self) -> int:
        """Fetch the status of messages in flight and list new inbound replies."""
        assert self.client is not None
        changed = 0
        gate = asyncio.Semaphore(_POLL_CONCURRENCY)

        async def one(row: dict[str, Any]) -> int:
            """Fetch one message and apply its status if it is final."""
            async with gate:
                m = await self.call(None, self.client.messages(row["provider_ref"]).fetch_async)  # type: ignore[union-attr]
            if m.status in ("delivered", "read", "undelivered", "failed"):
                await self._status(m.sid, m.status, m.error_code, row["msg_id"], row["target"])
                return 1
            return 0

        rows = await self.ctx.store.in_flight_of("sms", self.name, unrecorded=True)
        changed += sum(await asyncio.gather(*(one(r) for r in rows)))
        started = datetime.now(UTC)  # Twilio's clock, not the pipeline's: DateSent is wall time
        since = self._cursor or started - _FIRST_LOOKBACK
        filters: dict[str, Any] = {"date_sent_after": since}
        if self.tw.from_number and not self.tw.messaging_service_sid:
            filters["to"] = self.tw.from_number
        found = await self.call(None, self.client.messages.list_async, **filters)
        for m in sorted(found, key=lambda m: m.date_sent or started):
            if m.direction != "inbound":
                continue
            reply = await inbound.receive(
                self.ctx.store, self.ctx.feedback, channel="sms", phone=m.from_ or "",
                body=m.body or "", provider_ref=m.sid, now=self.ctx.clock.now(),
            )  # fmt: skip
            if reply.duplicate:
                continue
            changed += 1
            if reply.answer:
                try:
                    await self.answer(inbound.normalize(m.from_ or ""), reply.answer)
                except (TransientError, PermanentError) as exc:
                    # The reply itself is stored and applied; only the courtesy answer is lost.
                    log.warning("reply.answer_failed", reason=exc.reason)
        self._cursor = started - _OVERLAP
        return changed
