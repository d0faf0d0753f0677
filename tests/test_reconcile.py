"""A send a crash left in doubt is looked up at Twilio before it is made again.

Each test stages the crash in this process: deliveries are claimed, some are sent to the fake
and never recorded, then `recover()` runs as it does at the next start. The fake runs on the
harness's clock, so Twilio's dates and warnd's claim times agree as they would in the field.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from adapters.sms import SmsAdapter
from adapters.voice import VoiceAdapter
from tests.fakes.outage import Mode, Outage
from tests.fakes.twilio import Answer, FakeTwilio
from tests.support.harness import Harness, warning_body
from tests.support.twilio_harness import deliveries, twilio_harness
from warnd.adapter import Message

# Five villages, each with a secretary and a grid worker, and one official: the issue's 11 people.
DIRECTORY = {"villages": 5, "test_village": False}
AREA = {"codes": ["330502101"]}


async def _crash_after(h: Harness, channel: str, sent: int) -> list[Any]:
    """Claim a channel's due deliveries, send the first `sent` of them, then crash and recover.

    Returns the claimed deliveries, in claim order.
    """
    await h.daemon.scheduler.run_once()  # the issue step writes the deliveries
    claimed = await h.store.claim(h.clock.now(), 500, [channel])
    adapter = h.daemon.adapters[channel]
    for d in claimed[:sent]:
        await adapter.send(Message(d, await h.store.get_warning(d.warning_id) or {}))
    assert await h.store.recover() == len(claimed)
    return claimed


def _reconciled(log_events: list[dict[str, Any]]) -> Counter[bool]:
    """How many lookups found their send, and how many did not."""
    return Counter(e["found"] for e in log_events if e["event"] == "delivery.reconciled")


def _on_harness_clock(fake: FakeTwilio, h: Harness) -> None:
    """Date the fake's messages and calls by the harness's clock, as warnd dates its claims."""
    fake.clock = h.clock.now


async def test_sms_that_reached_twilio_before_a_crash_is_not_sent_again(
    tmp_path: Path, log_events: list[dict[str, Any]]
) -> None:
    """11 people, 4 SMS at Twilio when warnd died: after the restart 11 messages, not 15.

    One of the four was already delivered, one was undelivered: that one is sent again.
    """
    async with twilio_harness(tmp_path, [SmsAdapter], webhooks=False, directory=DIRECTORY) as (h, fake):
        _on_harness_clock(fake, h)
        wid = await h.issue(warning_body(area=AREA))
        claimed = await _crash_after(h, "sms", 4)
        assert len(claimed) == 11 and len(fake.messages) == 4
        before = {m["to"]: m["sid"] for m in fake.messages.values()}
        first, failed = (d.address for d in claimed[:2])
        await fake.advance(before[first], "delivered")
        await fake.advance(before[failed], "undelivered")
        h.clock.advance(5)  # the restart

        await h.run_until_idle()
        rows = await deliveries(h, wid, "sms")
        assert all(r["state"] in ("sent", "delivered") and r["maybe_sent_at"] is None for r in rows.values())
        per_phone = Counter(m["to"] for m in fake.messages.values())
        assert len(fake.messages) == 12 and per_phone[failed] == 2
        assert all(n == 1 for phone, n in per_phone.items() if phone != failed)
        by_phone = {r["address"]: r for r in rows.values()}
        # The messages found keep their SIDs (status callbacks and polling find them by it).
        for phone in set(before) - {failed}:
            assert by_phone[phone]["provider_ref"] == before[phone]
        assert by_phone[first]["state"] == "delivered"
        assert by_phone[failed]["provider_ref"] != before[failed]
        assert _reconciled(log_events) == {True: 3, False: 8}
        # Looked up by number and sender, newest first, without a DateSent filter.
        lists = [r.query for r in fake.requests if r.method == "GET" and r.path.endswith("/Messages.json")]
        assert len(lists) == 11 and all(set(q) == {"To", "From", "PageSize"} for q in lists)


async def test_a_lookup_twilio_cannot_answer_is_retried_never_a_blind_send(
    tmp_path: Path, log_events: list[dict[str, Any]]
) -> None:
    """Twilio down at the restart: the deliveries in doubt wait and are looked up again, not sent."""
    async with twilio_harness(tmp_path, [SmsAdapter], webhooks=False, directory=DIRECTORY) as (h, fake):
        _on_harness_clock(fake, h)
        wid = await h.issue(warning_body(area=AREA))
        await _crash_after(h, "sms", 11)
        fake.script_lists([Answer(503)] * 11)
        assert await h.daemon.dispatcher.run_once() == 11
        rows = await deliveries(h, wid, "sms")
        assert {r["state"] for r in rows.values()} == {"failed"}
        assert all("twilio 20503" in r["last_error"] for r in rows.values())
        assert len(fake.messages) == 11  # nothing sent blindly

        h.clock.advance(60)  # past the retry
        await h.run_until_idle()
        rows = await deliveries(h, wid, "sms")
        assert {r["state"] for r in rows.values()} == {"sent"}
        assert len(fake.messages) == 11
        assert _reconciled(log_events) == {True: 11}


@pytest.mark.parametrize("mode", ["timeout", "close"])
async def test_a_send_whose_answer_was_lost_is_looked_up_before_it_is_sent_again(
    tmp_path: Path, log_events: list[dict[str, Any]], mode: Mode
) -> None:
    """Twilio takes every SMS but, after the fourth, answers none in time (or drops the line): no repeats."""
    async with twilio_harness(tmp_path, [SmsAdapter], webhooks=False, directory=DIRECTORY) as (h, fake):
        _on_harness_clock(fake, h)
        h.settings.dispatch.send_timeout_s = 0.5
        outage = fake.outage(Outage(mode, 60, after=4, hold_s=1.0))
        wid = await h.issue(warning_body(area=AREA))
        await h.run_until_idle()
        rows = await deliveries(h, wid, "sms")
        assert len(fake.messages) == 11  # all at Twilio
        assert {r["state"] for r in rows.values()} <= {"sent", "failed"}
        doubtful = [r for r in rows.values() if r["state"] == "failed"]
        assert len(doubtful) >= 7 and all(r["maybe_sent_at"] for r in doubtful)

        outage.end()
        h.clock.advance(60)  # past the retry
        await h.run_until_idle()
        rows = await deliveries(h, wid, "sms")
        assert {r["state"] for r in rows.values()} == {"sent"}
        assert len(fake.messages) == 11
        assert sorted(m["to"] for m in fake.messages.values()) == sorted(r["address"] for r in rows.values())
        assert _reconciled(log_events) == {True: len(doubtful)}


async def test_a_message_another_delivery_holds_is_not_taken(tmp_path: Path) -> None:
    """Two warnings with the same text minutes apart: the second's lookup must not take the first's SMS."""
    async with twilio_harness(tmp_path, [SmsAdapter], webhooks=False, directory=DIRECTORY) as (h, fake):
        _on_harness_clock(fake, h)
        await h.issue(warning_body(area=AREA))
        await h.run_until_idle()
        first = {(m["to"], m["body"]) for m in fake.messages.values()}
        assert len(first) == 11
        h.clock.advance(60)
        second = await h.issue(warning_body(area=AREA))
        await _crash_after(h, "sms", 0)  # claimed, none sent
        await h.run_until_idle()
        assert len(fake.messages) == 22
        assert Counter((m["to"], m["body"]) for m in fake.messages.values()) == dict.fromkeys(first, 2)
        assert {r["state"] for r in (await deliveries(h, second, "sms")).values()} == {"sent"}


async def test_messages_of_a_messaging_service_are_found_by_its_sid(tmp_path: Path) -> None:
    """With a messaging service the list is filtered by To alone; the service's SID tells ours apart."""
    twilio = {"messaging_service_sid": "MG" + "0" * 32}
    harness = twilio_harness(tmp_path, [SmsAdapter], webhooks=False, directory=DIRECTORY, twilio=twilio)
    async with harness as (h, fake):
        _on_harness_clock(fake, h)
        await h.issue(warning_body(area=AREA))
        await _crash_after(h, "sms", 6)
        await h.run_until_idle()
        assert len(fake.messages) == 11
        lists = [r.query for r in fake.requests if r.method == "GET"]
        assert len(lists) == 11 and all(set(q) == {"To", "PageSize"} for q in lists)


async def test_a_call_placed_before_a_crash_is_not_placed_again_unless_unanswered(
    tmp_path: Path, log_events: list[dict[str, Any]]
) -> None:
    """Calls at Twilio at the crash count as placed; one that went unanswered is placed again."""
    # A red warning calls the officials: six of them.
    directory = {"villages": 1, "officials": 6, "test_village": False}
    async with twilio_harness(tmp_path, [VoiceAdapter], webhooks=False, directory=directory) as (h, fake):
        _on_harness_clock(fake, h)
        wid = await h.issue(warning_body(area=AREA))
        claimed = await _crash_after(h, "voice", 3)
        assert len(claimed) == 6 and len(fake.calls) == 3
        before = {c["to"]: c["sid"] for c in fake.calls.values()}
        unanswered = claimed[0].address
        await fake.advance(before[unanswered], "no-answer")
        h.clock.advance(5)

        await h.run_until_idle()
        rows = {r["address"]: r for r in (await deliveries(h, wid, "voice")).values()}
        per_phone = Counter(c["to"] for c in fake.calls.values())
        assert per_phone[unanswered] == 2 and sum(per_phone.values()) == 7
        for phone in set(before) - {unanswered}:
            assert rows[phone]["provider_ref"] == before[phone]
        assert _reconciled(log_events) == {True: 2, False: 4}
        lists = [r.query for r in fake.requests if r.method == "GET" and r.path.endswith("/Calls.json")]
        assert all(set(q) == {"To", "From", "PageSize"} for q in lists)
