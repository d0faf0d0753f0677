"""What people read and hear, end to end through the real Twilio adapters and the loopback fake.

An all-clear must say what was lifted and why, never the old instruction; an escalation to a
superior must name who has not confirmed; a superior who already confirmed is told, not asked.
"""

from __future__ import annotations

from pathlib import Path

from adapters.sms import SmsAdapter
from adapters.voice import VoiceAdapter
from tests.fakes.twilio import FakeTwilio
from tests.support.harness import warning_body
from tests.support.twilio_harness import FROM, deliveries, hook_url, twilio_harness
from warnd.speech import spoken_text

INSTRUCTION = "立即撤离到安置点"
REASON = "雨势明显减弱，山洪风险解除"
ONE_VILLAGE = {"villages": 1, "test_village": False}


def sms_bodies(fake: FakeTwilio, since: int = 0) -> dict[str, str]:
    """SMS bodies sent after request `since`, by recipient."""
    return {r.form["To"]: r.form["Body"] for r in fake.requests[since:] if r.path.endswith("/Messages.json")
            and r.method == "POST"}  # fmt: skip


def call_scripts(fake: FakeTwilio, since: int = 0) -> dict[str, str]:
    """TwiML of calls placed after request `since`, by recipient."""
    return {r.form["To"]: r.form["Twiml"] for r in fake.requests[since:] if r.path.endswith("/Calls.json")
            and r.method == "POST"}  # fmt: skip


async def test_all_clear_sms_and_call_say_the_reason_never_the_old_instruction(tmp_path: Path) -> None:
    """Cancel a red warning that said 立即撤离到安置点: every all-clear names the reason, not the order."""
    async with twilio_harness(tmp_path, [SmsAdapter, VoiceAdapter], directory=ONE_VILLAGE) as (h, fake):
        h.settings.sms.signature = "塘甸镇应急办"
        wid = await h.issue(warning_body(level="red", instruction=INSTRUCTION, area={"codes": ["330502101"]}))
        await h.run_until_idle()
        issued = sms_bodies(fake)
        assert issued and all(INSTRUCTION in b for b in issued.values())
        assert all(b.startswith("【塘甸镇应急办】暴雨红色预警") for b in issued.values())
        mark = len(fake.requests)
        url = f"/api/v1/warnings/{wid}/cancel"
        resp = await h.client.post(url, json={"reason": REASON}, headers=h.headers())
        assert resp.status == 202
        await h.run_until_idle()
        clears, calls = sms_bodies(fake, mark), call_scripts(fake, mark)
        assert set(clears) == set(issued)  # everyone reached by SMS hears it is lifted
        assert calls  # and the official reached by phone
        for text in [*clears.values(), *calls.values()]:
            assert INSTRUCTION not in text
            assert REASON in text
            assert "解除暴雨红色预警" in text
        for body in clears.values():
            assert body.startswith("【塘甸镇应急办】解除暴雨红色预警")
            assert "回复1确认" not in body  # nothing to confirm in an all-clear
        assert all("收到请按1" not in t for t in calls.values())


async def test_escalation_to_a_superior_names_who_has_not_confirmed(tmp_path: Path) -> None:
    """书记0 never confirms: 20 min on 领导0 is called about 书记0 — told, not asked (he confirmed)."""
    async with twilio_harness(tmp_path, [SmsAdapter, VoiceAdapter], directory=ONE_VILLAGE) as (h, fake):
        wid = await h.issue(warning_body(level="red", instruction=INSTRUCTION, area={"codes": ["330502101"]}))
        await h.run_until_idle()
        rows = await deliveries(h, wid, "sms")
        # The official confirms at once; the village secretary never does.
        result = await fake.reply(rows["off-0"]["address"], FROM, "1", hook_url(h, "/hooks/twilio/inbound"))
        assert result.status == 200
        mark = len(fake.requests)
        h.clock.advance(minutes=10)
        await h.run_until_idle()
        own = call_scripts(fake, mark)
        sec_phone = rows["sec-0"]["address"]
        assert list(own) == [sec_phone]
        # Calls say numbers as words, the directory's test names too (书记0 → 书记零).
        assert spoken_text("书记0您好") in own[sec_phone] and "您还没有确认" in own[sec_phone]
        assert "收到请按1" in own[sec_phone]
        mark = len(fake.requests)
        h.clock.advance(minutes=10)
        await h.run_until_idle()
        up = call_scripts(fake, mark)
        boss = rows["off-0"]["address"]
        assert list(up) == [boss]
        script = up[boss]
        assert spoken_text("领导0您好") in script
        assert spoken_text("书记0") in script and "未确认暴雨红色预警" in script
        assert "收到请按1" not in script  # 领导0 already confirmed the warning: told, not asked again
        voice = await deliveries(h, wid, "voice")
        assert voice["off-0"]["ack_required"] == 0
