"""叫应: an unconfirmed official is escalated SMS → voice → superior; a confirmation stops the chain."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.support.harness import Harness, warning_body
from warnd.config import EscalationStep, LevelPolicy
from warnd.escalation import Confirmation, Watched, decide

T0 = datetime(2026, 7, 1, 2, 0, tzinfo=UTC)
CHAIN = LevelPolicy(
    channels=["sms", "voice"],
    escalation=[
        EscalationStep(after_min=10, channel="voice"),
        EscalationStep(after_min=20, channel="voice", to="superior"),
    ],
)


def watched(**kw: Any) -> Watched:
    """A chain guarding an SMS planned and sent at T0."""
    base: dict[str, Any] = {
        "person_id": "p1",
        "stage": 0,
        "created_at": T0,
        "sent_at": T0,
        "states": ("sent",),
        "warning_state": "active",
    }
    return Watched(**{**base, **kw})


def test_decide_waits_for_the_deadline_counted_from_the_send() -> None:
    """Before sent + after_min the chain waits until exactly then; a late send moves the deadline."""
    a = decide(watched(), [], CHAIN, T0 + timedelta(minutes=9))
    assert (a.verb, a.at) == ("wait", T0 + timedelta(minutes=10))
    late = watched(sent_at=T0 + timedelta(minutes=4))
    assert decide(late, [], CHAIN, T0 + timedelta(minutes=10)).at == T0 + timedelta(minutes=14)
    a = decide(watched(), [], CHAIN, T0 + timedelta(minutes=10))
    assert a.verb == "escalate"
    assert a.step == CHAIN.escalation[0]
    assert "not confirmed 10 min" in a.reason


def test_decide_stops_on_confirmation_end_of_chain_or_warning_out_of_force() -> None:
    """A confirmation since the message, a cancelled warning and an exhausted chain each stop it."""
    ack = Confirmation("p1", "sms", T0 + timedelta(minutes=3))
    a = decide(watched(), [ack], CHAIN, T0 + timedelta(minutes=10))
    assert a.verb == "stop"
    assert a.reason.startswith("confirmed by sms")
    boss = Confirmation("boss", "voice", T0 + timedelta(minutes=21))
    assert "boss confirmed" in decide(watched(stage=1), [boss], CHAIN, T0 + timedelta(minutes=30)).reason
    # A confirmation of an earlier message does not answer this one.
    old = Confirmation("p1", "sms", T0 - timedelta(hours=24))
    assert decide(watched(), [old], CHAIN, T0 + timedelta(minutes=10)).verb == "escalate"
    assert decide(watched(warning_state="cancelled"), [], CHAIN, T0 + timedelta(hours=1)).verb == "stop"
    a = decide(watched(stage=2), [], CHAIN, T0 + timedelta(hours=1))
    assert (a.verb, a.reason) == ("stop", "escalation chain exhausted")


def test_decide_escalates_at_once_when_the_message_is_dead_or_never_sent() -> None:
    """A dead SMS escalates without waiting; one still retrying escalates at the deadline anyway."""
    dead = watched(sent_at=None, states=("dead",))
    a = decide(dead, [], CHAIN, T0 + timedelta(minutes=1))
    assert a.verb == "escalate"
    assert "could not be delivered" in a.reason
    retrying = watched(sent_at=None, states=("failed",))
    assert decide(retrying, [], CHAIN, T0 + timedelta(minutes=5)).verb == "wait"
    a = decide(retrying, [], CHAIN, T0 + timedelta(minutes=10))
    assert a.verb == "escalate"
    assert "still not sent" in a.reason


async def ack(h: Harness, wid: str, target: str, channel: str = "sms", step: str | None = None) -> None:
    """The person replies 1 to their message on a channel (the recording adapter's stand-in)."""
    rows = [
        d
        for d in await h.store.deliveries_for(wid)
        if d["target"] == target and d["channel"] == channel and (step is None or d["step"] == step)
    ]
    assert rows, (target, channel)
    row = await h.daemon.feedback.ack(
        source=channel, status="acknowledged", msg_id=rows[-1]["msg_id"], target=target
    )
    assert row is not None


def voice_calls(h: Harness) -> list[tuple[str, str]]:
    """(target, step) of every voice call made so far."""
    return [(r["target"], r["step"]) for r in h.adapter("voice").sent]


async def planned_calls(h: Harness, wid: str) -> list[tuple[str, str, str]]:
    """(target, step, created_at) of every voice call written to the outbox."""
    rows = await h.store.deliveries_for(wid)
    return [(d["target"], d["step"], d["created_at"]) for d in rows if d["channel"] == "voice"]


async def test_unconfirmed_official_escalates_sms_voice_superior(
    tmp_path: Path, log_events: list[Any]
) -> None:
    """off-1 never confirms: voice at +10 min, its superior at +20 min; who confirms is not called."""
    h = await Harness(tmp_path, directory={"officials": 2}).start()
    try:
        t0 = h.clock.now()
        wid = await h.issue(warning_body(level="orange"))  # orange: SMS and WeChat, no voice at first
        await h.run_until_idle()
        assert voice_calls(h) == []
        assert {r["target"] for r in h.adapter("sms").sent} == {"off-0", "off-1", "sec-0", "grid-0"}
        h.clock.advance(minutes=4)
        await ack(h, wid, "sec-0")  # the secretary replies 1 to the SMS
        await ack(h, wid, "off-0", channel="wechat")  # off-0 confirms in WeCom
        h.clock.advance(minutes=5, seconds=59)
        await h.run_until_idle()
        assert voice_calls(h) == []  # 9:59 after the SMS: nobody is called yet
        h.clock.advance(seconds=1)
        await h.run_until_idle()
        assert voice_calls(h) == [("off-1", "issue/escalate-1")]
        h.clock.advance(minutes=9)
        await h.run_until_idle()
        assert len(voice_calls(h)) == 1
        h.clock.advance(minutes=1)
        await h.run_until_idle()
        # +20 min: the superior of off-1 is called (off-0, though it confirmed its own message).
        assert voice_calls(h) == [("off-1", "issue/escalate-1"), ("off-0", "issue/escalate-2")]
        h.clock.advance(hours=2)
        await h.run_until_idle()
        assert len(voice_calls(h)) == 2  # the chain has ended; sec-0 was never called
        stopped = [e for e in log_events if e["event"] == "escalation.stopped"]
        assert {(e["person_id"], e["reason"].split(" at ")[0]) for e in stopped} >= {
            ("sec-0", "confirmed by sms"),
            ("off-0", "confirmed by wechat"),
        }
        w = await h.get(wid)
        escalations = [
            (e["person_id"], e["stage"], e["channel"], e["to"], e["target"]) for e in w["escalations"]
        ]
        assert escalations == [
            ("off-1", 1, "voice", "self", "off-1"),
            ("off-1", 2, "voice", "superior", "off-0"),
        ]
        assert [e["at"] for e in w["escalations"]] == [
            "2026-07-01T08:10:00+08:00",
            "2026-07-01T08:20:00+08:00",
        ]
        audit = [a for a in await h.store.audit_log(wid) if a["action"] == "escalate"]
        assert [a["at"] for a in audit] == [
            (t0 + timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            (t0 + timedelta(minutes=20)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        ]
        # The escalated calls are deliveries like any other, in coverage. off-1 is asked to
        # confirm; its superior off-0, who already confirmed the warning, is told who has not.
        calls = {d["target"]: d for d in await h.store.deliveries_for(wid) if d["channel"] == "voice"}
        assert all(d["kind"] == "warning" for d in calls.values())
        assert calls["off-1"]["ack_required"]
        assert not calls["off-0"]["ack_required"]
    finally:
        await h.close()


async def test_confirming_the_voice_call_stops_the_chain_before_the_superior(tmp_path: Path) -> None:
    """off-1 answers the voice call (key 1) at +15 min: its superior is never called."""
    h = await Harness(tmp_path, directory={"officials": 2}).start()
    try:
        wid = await h.issue(warning_body(level="orange"))
        await h.run_until_idle()
        for who in ("off-0", "sec-0"):
            await ack(h, wid, who)
        h.clock.advance(minutes=10)
        await h.run_until_idle()
        assert voice_calls(h) == [("off-1", "issue/escalate-1")]
        h.clock.advance(minutes=5)
        await ack(h, wid, "off-1", channel="voice")
        h.clock.advance(minutes=30)
        await h.run_until_idle()
        assert voice_calls(h) == [("off-1", "issue/escalate-1")]
        assert [e["stage"] for e in (await h.get(wid))["escalations"]] == [1]
    finally:
        await h.close()


async def test_deadline_counts_from_a_late_send_and_missing_superior_is_recorded(tmp_path: Path) -> None:
    """An SMS held back 5 min by retries is escalated 10 min after it went out; no superior is noted."""
    h = await Harness(tmp_path, channels=["sms", "voice"], script={"off-0": ["transient:300"]}).start()
    try:
        t0 = h.clock.now()
        wid = await h.issue(warning_body(level="orange"))
        await h.run_until_idle()
        await ack(h, wid, "sec-0")
        h.clock.advance(minutes=5)
        await h.run_until_idle()  # the retry goes out at +5 min
        assert [r["target"] for r in h.adapter("sms").sent].count("off-0") == 1
        h.clock.advance(minutes=5)
        await h.run_until_idle()
        assert await planned_calls(h, wid) == []  # +10 min after the plan, but only 5 after the send
        h.clock.advance(minutes=5)
        await h.run_until_idle()
        # (the script fails off-0's first attempt on every channel, so the call is retried later)
        assert await planned_calls(h, wid) == [("off-0", "issue/escalate-1", "2026-07-01T00:15:00.000000Z")]
        h.clock.advance(minutes=10)
        await h.run_until_idle()
        assert len(await planned_calls(h, wid)) == 1  # off-0 has no superior
        esc = (await h.get(wid))["escalations"]
        assert [(e["stage"], e["skipped"]) for e in esc] == [(1, None), (2, "no superior in the directory")]
        assert h.clock.now() - t0 == timedelta(minutes=25)
    finally:
        await h.close()


async def test_cancel_stops_every_chain(tmp_path: Path) -> None:
    """A cancelled warning escalates nobody, and no escalation job is left pending."""
    h = await Harness(tmp_path, directory={"officials": 2}).start()
    try:
        wid = await h.issue(warning_body(level="orange"))
        await h.run_until_idle()
        h.clock.advance(minutes=5)
        resp = await h.client.post(f"/api/v1/warnings/{wid}/cancel", json={}, headers=h.headers())
        assert resp.status == 202
        await h.run_until_idle()
        h.clock.advance(hours=1)
        await h.run_until_idle()
        assert [r["kind"] for r in h.adapter("voice").sent] == []
        assert [j for j in await h.store.jobs_for(wid) if j["state"] == "pending"] == []
    finally:
        await h.close()
