"""Voice 叫应 through Twilio: the warning said twice in Mandarin, key 1 confirms, anything else does not."""

from __future__ import annotations

import re
from pathlib import Path
from xml.etree import ElementTree

import pytest

from adapters.voice import VoiceAdapter
from tests.support.harness import warning_body
from tests.support.twilio_harness import FROM, deliveries, hook_url, twilio_harness


def _gather(twiml: str) -> ElementTree.Element:
    """The <Gather> element of a call's TwiML."""
    gather = ElementTree.fromstring(twiml).find("Gather")
    assert gather is not None, twiml
    return gather


async def test_key_1_confirms_other_keys_and_silence_do_not(tmp_path: Path) -> None:
    """Three unconfirmed officials are called: 1 acknowledges; 2 or no key is a failed attempt."""
    async with twilio_harness(tmp_path, [VoiceAdapter], directory={"officials": 3}) as (h, fake):
        wid = await h.issue(warning_body())
        await h.run_until_idle()
        rows = await deliveries(h, wid, "voice")
        assert sorted(rows) == ["off-0", "off-1", "off-2"]
        assert all(r["ack_required"] and r["state"] == "sent" for r in rows.values())
        creates = {r.form["To"]: r.form for r in fake.requests if r.method == "POST"}
        form = creates[rows["off-0"]["address"]]
        assert form["From"] == FROM
        gather = _gather(form["Twiml"])
        assert gather.get("numDigits") == "1"
        says = [s for s in gather.iter("Say") if "暴雨红色预警" in (s.text or "")]
        assert len(says) == 2
        assert {s.get("language") for s in says} == {"cmn-CN"}
        assert "请立即转移" in (says[0].text or "")
        assert gather.get("action", "").startswith(hook_url(h, "/hooks/twilio/voice/gather?"))

        actions = {t: _gather(creates[r["address"]]["Twiml"]).get("action", "") for t, r in rows.items()}
        pressed = await fake.press(rows["off-0"]["provider_ref"], "1", actions["off-0"])
        assert pressed.status == 200
        assert "已确认" in pressed.text
        other = await fake.press(rows["off-1"]["provider_ref"], "2", actions["off-1"])
        assert other.status == 200
        assert "已确认" not in other.text
        silent = await fake.press(rows["off-2"]["provider_ref"], "", actions["off-2"])
        assert silent.status == 200
        # The call ends after the key: the completed callback must not undo the confirmation.
        for r in rows.values():
            await fake.advance(r["provider_ref"], "completed")

        rows = await deliveries(h, wid, "voice")
        assert rows["off-0"]["state"] == "acknowledged"
        assert rows["off-1"]["state"] == "failed"
        assert "pressed 2" in rows["off-1"]["last_error"]
        assert rows["off-2"]["state"] == "failed"
        assert "no key" in rows["off-2"]["last_error"]
        w = await h.get(wid)
        assert w["coverage"]["voice"]["acknowledged"] == 1


@pytest.mark.parametrize("status", ["busy", "no-answer", "completed"])
async def test_unanswered_or_no_key_is_a_failed_attempt(tmp_path: Path, status: str) -> None:
    """Busy, no answer, or a call that ends without key 1 fails the attempt (the policy may retry)."""
    async with twilio_harness(tmp_path, [VoiceAdapter]) as (h, fake):
        wid = await h.issue(warning_body())
        await h.run_until_idle()
        row = (await deliveries(h, wid, "voice"))["off-0"]
        callback = next(r.form for r in fake.requests if r.method == "POST")
        assert callback["StatusCallback"].startswith(hook_url(h, "/hooks/twilio/voice/status?"))
        result = await fake.advance(row["provider_ref"], status)
        assert result is not None
        assert result.status == 200
        row = (await deliveries(h, wid, "voice"))["off-0"]
        assert row["state"] == "failed"
        assert (status if status != "completed" else "without key 1") in row["last_error"]


async def test_forged_key_press_is_refused(tmp_path: Path) -> None:
    """An unsigned or re-signed-elsewhere Digits=1 confirms nothing."""
    async with twilio_harness(tmp_path, [VoiceAdapter]) as (h, fake):
        wid = await h.issue(warning_body())
        await h.run_until_idle()
        row = (await deliveries(h, wid, "voice"))["off-0"]
        action = _gather(next(r.form for r in fake.requests if r.method == "POST")["Twiml"]).get("action", "")
        params = {"CallSid": row["provider_ref"], "AccountSid": fake.account_sid, "Digits": "1"}
        assert (await fake.post_unsigned(action, params)).status == 403
        bad = await fake.post_with_signature(action, params, "bm90IGEgc2lnbmF0dXJl")
        assert bad.status == 403
        assert (await deliveries(h, wid, "voice"))["off-0"]["state"] == "sent"
        assert re.search(r"m=.+&t=off-0", action)
        assert (await fake.post_signed(action, params)).status == 200
        assert (await deliveries(h, wid, "voice"))["off-0"]["state"] == "acknowledged"
