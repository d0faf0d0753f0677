"""Behind NAT (no public_base_url): receipts, replies and call outcomes arrive by polling Twilio."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from xml.etree import ElementTree

from adapters.providers.twilio_voice import POLLING_NOTE
from adapters.sms import SmsAdapter
from adapters.voice import VoiceAdapter
from tests.support import db
from tests.support.harness import warning_body
from tests.support.twilio_harness import FROM, deliveries, twilio_harness
from tests.support.wait import until

TOWNSHIP = {"codes": ["330502101"]}


async def test_sms_receipts_and_replies_by_polling(tmp_path: Path) -> None:
    """Status and replies are polled: delivered, dead by code, acks for exactly the confirmers."""
    directory = {"test_village": False}
    async with twilio_harness(tmp_path, [SmsAdapter], webhooks=False, directory=directory) as (h, fake):
        wid = await h.issue(warning_body(area=TOWNSHIP))
        await h.run_until_idle()
        rows = await deliveries(h, wid, "sms")
        assert sorted(rows) == ["grid-0", "grid-1", "grid-2", "off-0", "sec-0", "sec-1", "sec-2"]
        assert all("StatusCallback" not in r.form for r in fake.requests if r.method == "POST")
        for target, r in rows.items():
            if target == "grid-2":
                assert await fake.advance(r["provider_ref"], "undelivered", error_code=30005) is None
            elif target != "sec-2":  # sec-2's message stays "sent": still in flight
                assert await fake.advance(r["provider_ref"], "delivered") is None
        outbound = len(fake.messages)
        for target, body in [("sec-0", "1"), ("sec-1", "１"), ("off-0", "收到"), ("grid-0", "请问几点撤离"),
                             ("sec-0", "1")]:  # fmt: skip
            fake.inject_inbound(rows[target]["address"], FROM, body)

        sms = h.daemon.adapters["sms"]
        assert await sms.poll_once() == 6 + 5  # 6 final statuses, 5 new replies
        rows = await deliveries(h, wid, "sms")
        states = {t: r["state"] for t, r in rows.items()}
        assert states == {
            "off-0": "acknowledged", "sec-0": "acknowledged", "sec-1": "acknowledged",
            "sec-2": "sent", "grid-0": "delivered", "grid-1": "delivered", "grid-2": "dead",
        }  # fmt: skip
        assert "30005" in rows["grid-2"]["last_error"]
        # One automatic answer per person, sent through the REST API (no TwiML to answer with).
        answers = [m for m in fake.messages.values() if m["direction"] == "outbound-api"][outbound:]
        assert len(answers) == 4  # sec-0, sec-1, off-0 and grid-0; sec-0's second "1" gets none
        answered = sorted(m["to"] for m in answers if "谢谢" in m["body"])
        assert answered == sorted(rows[t]["address"] for t in ("sec-0", "sec-1", "off-0"))
        assert len([m for m in answers if "值班员会查看" in m["body"]]) == 1  # grid-0's question

        # The next poll overlaps the last one: nothing is applied or answered twice.
        before = len(fake.messages)
        await fake.advance(rows["sec-2"]["provider_ref"], "delivered")
        assert await sms.poll_once() == 1
        assert len(fake.messages) == before
        replies = await h.client.get("/api/v1/replies", headers=h.headers("viewer"))
        assert len((await replies.json())["replies"]) == 5


async def test_poll_loop_runs_in_polling_mode_only(tmp_path: Path) -> None:
    """background() polls without a public URL; the loop applies receipts on its own."""
    twilio = {"poll_interval_s": 0.05}
    async with twilio_harness(tmp_path, [SmsAdapter], webhooks=False, twilio=twilio) as (h, fake):
        sms = h.daemon.adapters["sms"]
        [(name, loop)] = sms.background()
        assert name == "warnd.twilio.sms.poll"
        wid = await h.issue(warning_body())
        await h.run_until_idle()
        row = (await deliveries(h, wid, "sms"))["sec-0"]
        await fake.advance(row["provider_ref"], "delivered")
        task = asyncio.create_task(loop)
        try:

            async def state() -> str:
                return (await deliveries(h, wid, "sms"))["sec-0"]["state"]

            await until(state, 4, what="the polled status", want="delivered")
        finally:
            task.cancel()
        h.settings.twilio.public_base_url = "https://warnd.example.org"
        assert sms.background() == []


async def test_voice_by_polling_is_delivered_never_confirmed(tmp_path: Path) -> None:
    """Without webhooks a call cannot gather key 1: answered is delivered (and says why), busy failed."""
    two = {"officials": 2}
    async with twilio_harness(tmp_path, [VoiceAdapter], webhooks=False, directory=two) as (h, fake):
        wid = await h.issue(warning_body())
        await h.run_until_idle()
        rows = await deliveries(h, wid, "voice")
        creates = {r.form["To"]: r.form for r in fake.requests if r.method == "POST"}
        twiml = ElementTree.fromstring(creates[rows["off-0"]["address"]]["Twiml"])
        assert twiml.find("Gather") is None  # nowhere to post a key press
        assert [s.get("language") for s in twiml.iter("Say")] == ["cmn-CN", "cmn-CN"]
        assert "StatusCallback" not in creates[rows["off-0"]["address"]]
        await fake.advance(rows["off-0"]["provider_ref"], "in-progress")
        await fake.advance(rows["off-0"]["provider_ref"], "completed")
        await fake.advance(rows["off-1"]["provider_ref"], "busy")

        assert await h.daemon.adapters["voice"].poll_once() == 2
        rows = await deliveries(h, wid, "voice")
        assert rows["off-0"]["state"] == "delivered"
        assert rows["off-1"]["state"] == "failed"
        assert "busy" in rows["off-1"]["last_error"]
        acks = await db.query(h.store, "SELECT * FROM acks WHERE target = 'off-0'")
        assert json.loads(acks[-1]["detail"])["note"] == POLLING_NOTE
        assert fake.gathered == {}
