"""Replies people send back by SMS: matched to a person by phone, acks applied, the rest kept.

The rules (issue 5, "reply safety"): a reply is matched to its sender by the phone number in
E.164; an ack reply ("1", "收到", "确认", "OK", "１" …) confirms that person's most recent
ack-required delivery and nobody else's; anything else is kept as feedback text for the
operator; warnd answers a person at most once per warning, so a chatty sender or an
auto-responder cannot start a reply storm.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from warnd.phone import mask_phone, to_e164
from warnd.smstext import is_ack_reply
from warnd.store import Store

log = structlog.get_logger("warnd.inbound")

ANSWER_ACK = "已确认收到，谢谢。请按预警要求做好防范。"
ANSWER_TEXT = "已收到您的回复，值班员会查看。如确认收到预警请回复1。"

# The channels a reply can answer: what warnd sent a person to their phone.
_PHONE_CHANNELS = ("sms", "voice")


@dataclass(frozen=True)
class Reply:
    """What became of one inbound message.

    Args:
        duplicate: already stored (a replayed webhook, an overlapping poll): nothing was done.
        delivery: the delivery it acknowledged, if it was an ack reply matched to one.
        answer: the text to answer with, or None (not the first answer for this warning).
    """

    duplicate: bool
    delivery: dict[str, Any] | None = None
    answer: str | None = None


def normalize(phone: str) -> str:
    """The sender in E.164, or as received when it is no phone number (a short code, a name)."""
    try:
        return to_e164(phone)
    except ValueError:
        return phone.strip()


async def _latest(store: Store, phone: str, *, ack_required: bool) -> dict[str, Any] | None:
    """The person's most recently sent SMS/voice delivery (ack-required ones only, if asked)."""
    row = await store.latest_sent_to(phone, _PHONE_CHANNELS, ack_required=ack_required)
    return dict(row) if row is not None else None


async def receive(
    store: Store,
    feedback: Any,
    *,
    channel: str,
    phone: str,
    body: str,
    provider_ref: str | None,
    now: datetime,
) -> Reply:
    """Store one inbound message once; acknowledge or keep it; decide whether to answer."""
    phone = normalize(phone)
    wants_ack = is_ack_reply(body)
    target = await _latest(store, phone, ack_required=True) if wants_ack else None
    context = target or await _latest(store, phone, ack_required=False)
    warning_id = context["warning_id"] if context else None
    person_id = context["person_id"] if context else None
    answered = await store.add_inbound(
        provider_ref=provider_ref,
        channel=channel,
        phone=phone,
        person_id=person_id,
        warning_id=warning_id,
        delivery_id=target["id"] if target else None,
        body=body,
        is_ack=target is not None,
        now=now,
    )
    if answered is None:
        return Reply(duplicate=True)
    row = None
    if target is not None:
        row = await feedback.ack(
            source=f"twilio.{channel}_reply",
            status="acknowledged",
            msg_id=target["msg_id"],
            target=target["target"],
            detail={"reply_sid": provider_ref},
        )
    log.info(
        "reply.received",
        channel=channel,
        phone=mask_phone(phone),
        warning_id=warning_id,
        target=person_id,
        is_ack=target is not None,
        body_len=len(body),
        answered=answered,
    )
    log.debug("reply.body", phone=mask_phone(phone), body=body)
    answer = (ANSWER_ACK if target is not None else ANSWER_TEXT) if answered else None
    return Reply(duplicate=False, delivery=row, answer=answer)


async def replies(store: Store, warning_id: str | None = None, limit: int = 500) -> list[dict[str, Any]]:
    """Inbound messages, newest first, optionally those about one warning."""
    return await store.inbound(warning_id, limit)


async def in_flight(store: Store, channel: str, limit: int = 2000) -> list[dict[str, Any]]:
    """Sent deliveries of a channel still waiting for a receipt (polling mode)."""
    return await store.awaiting_receipt(channel, limit)
