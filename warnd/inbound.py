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
from warnd.store import Store, ts

log = structlog.get_logger("warnd.inbound")

ANSWER_ACK = "已确认收到，谢谢。请按预警要求做好防范。"
ANSWER_TEXT = "已收到您的回复，值班员会查看。如确认收到预警请回复1。"

# Delivery states that mean the delivery actually went out to the person.
_SENT_STATES = ("sent", "delivered", "acknowledged", "failed")


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
    marks = ",".join("?" * len(_SENT_STATES))
    extra = " AND ack_required = 1 AND kind = 'warning'" if ack_required else ""
    return await store._one(
        # A receipt can beat the dispatcher's own bookkeeping (sent_at) when a batch is long:
        # delivered_at then says it went out.
        "SELECT * FROM deliveries WHERE address = ? AND channel IN ('sms', 'voice')"  # noqa: S608
        f" AND COALESCE(sent_at, delivered_at, acked_at) IS NOT NULL AND state IN ({marks}){extra}"
        " ORDER BY COALESCE(sent_at, delivered_at, acked_at) DESC, id DESC LIMIT 1",
        (phone, *_SENT_STATES),
    )


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
    async with store.transaction() as db:
        if provider_ref is not None and await store._one(
            "SELECT 1 FROM inbound WHERE provider_ref = ?", (provider_ref,)
        ):
            return Reply(duplicate=True)
        # Answer only someone warnd wrote to, and only once per warning: no reply storms.
        answered = warning_id is not None and not await store._one(
            "SELECT 1 FROM inbound WHERE phone = ? AND warning_id = ? AND answered = 1",
            (phone, warning_id),
        )
        await db.execute(
            "INSERT INTO inbound (provider_ref, channel, phone, person_id, warning_id, delivery_id,"
            " body, is_ack, answered, received_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                provider_ref,
                channel,
                phone,
                person_id,
                warning_id,
                target["id"] if target else None,
                body,
                int(target is not None),
                int(answered),
                ts(now),
            ),
        )
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
    if warning_id is not None:
        rows = await store._all(
            "SELECT * FROM inbound WHERE warning_id = ? ORDER BY id DESC LIMIT ?", (warning_id, limit)
        )
    else:
        rows = await store._all("SELECT * FROM inbound ORDER BY id DESC LIMIT ?", (limit,))
    for r in rows:
        r["is_ack"], r["answered"] = bool(r["is_ack"]), bool(r["answered"])
    return rows


async def in_flight(store: Store, channel: str, limit: int = 2000) -> list[dict[str, Any]]:
    """Sent deliveries of a channel still waiting for a receipt (polling mode)."""
    return await store._all(
        "SELECT id, msg_id, target, provider_ref, ack_required FROM deliveries"
        " WHERE channel = ? AND state = 'sent' AND provider_ref IS NOT NULL ORDER BY id LIMIT ?",
        (channel, limit),
    )
