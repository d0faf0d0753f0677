"""Update (预警更新) and cancel (解除预警): remaining steps move, upgrades send at once, the
all-clear reaches exactly those who received the warning, expiry stops devices only."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from tests.support.harness import CHANNELS, Harness, warning_body
from warnd.store import Outcome


def all_sent(h: Harness) -> list[dict[str, str]]:
    """Every send of every channel so far."""
    return [r for ch in CHANNELS for r in h.adapter(ch).sent]


def mark(h: Harness) -> dict[str, int]:
    """How many sends each channel has made so far."""
    return {ch: len(h.adapter(ch).sent) for ch in CHANNELS}


def since(h: Harness, marks: dict[str, int]) -> list[dict[str, str]]:
    """The sends made after `mark`."""
    return [r for ch in CHANNELS for r in h.adapter(ch).sent[marks[ch] :]]


async def post(h: Harness, wid: str, verb: str, body: dict[str, Any]) -> None:
    """POST an update or cancel and expect 202."""
    resp = await h.client.post(f"/api/v1/warnings/{wid}/{verb}", json=body, headers=h.headers())
    assert resp.status == 202, await resp.text()


async def typhoon(h: Harness, onset_h: float, **kw: Any) -> str:
    """Issue a typhoon warning with onset this many hours ahead."""
    onset = h.clock.now() + timedelta(hours=onset_h)
    return await h.issue(warning_body(event="台风", onset=onset.isoformat(), **kw))


def steps_at(w: dict[str, Any], state: str = "pending") -> list[tuple[str, str]]:
    """(step, local time) of a warning's schedule in one state."""
    return [(s["step"], s["at"]) for s in w["schedule"] if s["state"] == state]


async def test_update_moves_the_remaining_steps_when_onset_moves(harness: Harness) -> None:
    """Onset put back 6 h after T-48h fired: T-24h … onset move 6 h later, T-48h is not sent again."""
    h = harness
    wid = await typhoon(h, 50)  # 2026-07-03 02:00 UTC = 10:00 Beijing
    h.clock.advance(hours=3)
    await h.run_until_idle()
    assert [(r["step"], r["target"]) for r in h.adapter("sms").sent] == [("T-48h", "off-0")]
    later = (h.clock.now() + timedelta(hours=53)).isoformat()  # onset 6 h later than it was
    await post(h, wid, "update", {"onset": later, "headline": "台风红色预警（更新）"})
    w = await h.get(wid)
    assert w["version"] == 2
    assert w["state"] == "updated"
    assert steps_at(w) == [
        ("T-24h", "2026-07-02T16:00:00+08:00"),
        ("T-12h", "2026-07-03T04:00:00+08:00"),
        ("T-6h", "2026-07-03T10:00:00+08:00"),
        ("T-3h", "2026-07-03T13:00:00+08:00"),
        ("T-1h", "2026-07-03T15:00:00+08:00"),
        ("onset", "2026-07-03T16:00:00+08:00"),
    ]
    assert len(steps_at(w, "cancelled")) == 6  # version 1's T-24h … onset
    await h.run_until_idle()
    # Those already reached are told of the change at once (预警更新).
    assert [(r["kind"], r["target"]) for r in h.adapter("sms").sent[1:]] == [("update", "off-0")]
    h.clock.advance(hours=23, minutes=59)  # 26 h after the start: version 1's T-24h time
    await h.run_until_idle()
    assert len(h.adapter("sms").sent) == 2
    h.clock.advance(hours=6, minutes=1)  # 32 h: the moved T-24h
    await h.run_until_idle()
    t24 = [r for r in h.adapter("sms").sent if r["step"] == "T-24h"]
    assert sorted(r["target"] for r in t24) == ["grid-0", "off-0", "sec-0"]
    assert {r["headline"] for r in t24} == {"台风红色预警（更新）"}


async def test_update_bringing_onset_near_sends_the_skipped_steps_at_once(harness: Harness) -> None:
    """Onset brought forward to 5 h away: T-24h … T-6h never fired, so they go out now, once."""
    h = harness
    wid = await typhoon(h, 50)
    h.clock.advance(hours=3)
    await h.run_until_idle()
    await post(h, wid, "update", {"onset": (h.clock.now() + timedelta(hours=5)).isoformat()})
    w = await h.get(wid)
    assert [s for s, _ in steps_at(w)] == ["issue", "T-3h", "T-1h", "onset"]
    await h.run_until_idle()
    public = [r for r in all_sent(h) if r["step"] == "issue"]
    assert {r["channel"] for r in public} == set(CHANNELS)
    assert sorted(r["target"] for r in public if r["channel"] == "sms") == ["grid-0", "off-0", "sec-0"]


async def test_higher_level_sends_at_once(harness: Harness) -> None:
    """Yellow → red 3 h after issue (onset 50 h away): the red warning goes out now, in full."""
    h = harness
    wid = await typhoon(h, 50, level="yellow")
    h.clock.advance(hours=3)
    await h.run_until_idle()
    assert {r["step"] for r in all_sent(h)} == {"T-48h"}
    reached = {(r["channel"], r["target"]) for r in all_sent(h)}
    before = mark(h)
    await post(h, wid, "update", {"level": "red"})
    await h.run_until_idle()
    issued = [r for r in since(h, before) if r["step"] == "issue"]
    assert {r["channel"] for r in issued} == set(CHANNELS)
    assert {r["target"] for r in issued if r["channel"] == "voice"} == {"off-0"}
    # One message per receiver, and it says "upgraded": no 「预警更新」 on top of the new level.
    after = since(h, before)
    per_receiver = Counter((r["channel"], r["target"]) for r in after)
    assert set(per_receiver.values()) == {1}, per_receiver
    assert {r["message"] for r in issued} == {"upgrade"}
    assert reached <= set(per_receiver)  # those reached before hear of the upgrade too
    w = await h.get(wid)
    assert w["level"] == "red"
    assert [s for s, _ in steps_at(w)] == ["T-24h", "T-12h", "T-6h", "T-3h", "T-1h", "onset"]


async def test_cancel_at_t_minus_6h_clears_exactly_those_reached(tmp_path: Path) -> None:
    """Cancel just after T-6h: nothing stays pending; the all-clear goes to each receiver reached, once."""
    # One speaker never works: it was never reached, so it gets no all-clear either.
    h = await Harness(tmp_path, script={"spk-330502101201-2": ["permanent"] * 100}).start()
    try:
        wid = await typhoon(h, 50)
        for _ in range(44 * 6):  # to T-6h in 10-minute ticks; nobody confirms, so 叫应 escalates
            h.clock.advance(minutes=10)
            await h.run_until_idle()
        assert {r["step"] for r in all_sent(h) if r["channel"] == "loudspeaker"} >= {"T-12h", "T-6h"}
        h.clock.advance(minutes=5)  # mid-chain: escalations of T-6h are pending now
        pending = [j for j in await h.store.jobs_for(wid) if j["state"] == "pending"]
        assert {j["kind"] for j in pending} >= {"step", "repeat", "escalate", "expire"} - {"expire"}
        rows = await h.store.deliveries_for(wid, limit=100_000)
        reached = {
            (d["channel"], d["target"])
            for d in rows
            if d["kind"] == "warning" and d["state"] in ("sent", "delivered", "acknowledged")
        }
        assert ("loudspeaker", "spk-330502101201-1") in reached
        assert ("loudspeaker", "spk-330502101201-2") not in reached
        assert ("voice", "sec-0") in reached  # reached only by an escalated call
        before = mark(h)
        await post(h, wid, "cancel", {"reason": "台风转向"})
        await h.run_until_idle()
        assert [j for j in await h.store.jobs_for(wid) if j["state"] == "pending"] == []
        rows = await h.store.deliveries_for(wid, limit=100_000)
        assert [d for d in rows if d["state"] in ("pending", "failed", "sending")] == []
        clears = since(h, before)
        assert {r["kind"] for r in clears} == {"cancel"}
        assert {r["message"] for r in clears} == {"all_clear"}
        assert sorted((r["channel"], r["target"]) for r in clears) == sorted(reached)
        h.clock.advance(hours=60)
        await h.run_until_idle()
        assert since(h, before) == clears
        w = await h.get(wid)
        assert w["state"] == "cancelled"
        assert {s["state"] for s in w["schedule"]} == {"done", "cancelled"}
    finally:
        await h.close()


async def test_expiry_stops_devices_only_and_leaves_nothing_pending(harness: Harness) -> None:
    """At expiry speakers and boards reached get stop/clear; people get nothing; repeats and chains end."""
    h = harness
    wid = await h.issue(warning_body(expires=(h.clock.now() + timedelta(minutes=125)).isoformat()))
    await h.run_until_idle()
    for _ in range(11):
        h.clock.advance(minutes=10)
        await h.run_until_idle()
    assert any(r["step"].startswith("repeat-") for r in h.adapter("loudspeaker").sent)
    assert any(r["step"].endswith("escalate-1") for r in h.adapter("voice").sent)
    assert [j for j in await h.store.jobs_for(wid) if j["state"] == "pending" and j["kind"] == "repeat"]
    before = mark(h)
    h.clock.advance(minutes=10)
    await h.run_until_idle()  # 120 min: the last repeat before expiry
    h.clock.advance(minutes=10)
    await h.run_until_idle()  # 130 min: expired at 125
    stops = since(h, before)
    assert sorted((r["kind"], r["channel"], r["target"]) for r in stops if r["kind"] != "warning") == [
        ("expire", "led", "led-330502101201-1"),
        ("expire", "loudspeaker", "spk-330502101201-1"),
        ("expire", "loudspeaker", "spk-330502101201-2"),
    ]
    assert [j for j in await h.store.jobs_for(wid) if j["state"] == "pending"] == []
    h.clock.advance(hours=5)
    assert await h.run_until_idle() == 0
    assert (await h.get(wid))["state"] == "expired"


async def test_update_restarts_repeats_for_the_new_version(harness: Harness) -> None:
    """An update stops version 1's repeats; version 2 repeats at the new level's interval."""
    h = harness
    wid = await h.issue(warning_body(level="orange"))  # orange repeats hourly (08:00 Beijing: no quiet)
    await h.run_until_idle()
    h.clock.advance(minutes=20)
    await post(h, wid, "update", {"level": "red"})
    await h.run_until_idle()
    h.clock.advance(minutes=30)  # 50 min after issue: red's 30-min repeat of version 2, not orange's
    await h.run_until_idle()
    repeats = [r for r in h.adapter("loudspeaker").sent if r["step"].startswith("repeat-")]
    assert len(repeats) == 2  # two speakers, once
    jobs = await h.store.jobs_for(wid)
    assert {j["key"].split(":")[1] for j in jobs if j["kind"] == "repeat" and j["state"] == "pending"} == {
        "v2"
    }
    h.clock.advance(minutes=10)  # 60 min: version 1's hourly repeat would have been due
    await h.run_until_idle()
    assert len([r for r in h.adapter("loudspeaker").sent if r["step"].startswith("repeat-")]) == 2


async def test_all_clear_waits_for_a_send_in_flight(harness: Harness, log_events: list[Any]) -> None:
    """Speakers mid-send when the cancel comes get the all-clear; what never left gets none."""
    h = harness
    wid = await h.issue(warning_body())
    assert await h.daemon.scheduler.run_once() == 1  # the issue step is written, nothing sent yet
    claimed = await h.store.claim(h.clock.now(), 10, ["loudspeaker"])  # in an adapter's hands
    assert len(claimed) == 2
    await post(h, wid, "cancel", {})
    await h.run_until_idle()
    assert all_sent(h) == []  # SMS & co. were cancelled before leaving; the all-clear waits
    assert any(e["event"] == "announce.waiting" for e in log_events)
    await h.store.record([(Outcome(d.id, "sent"), None) for d in claimed], h.clock.now())
    h.clock.advance(seconds=2)
    await h.run_until_idle()
    assert sorted((r["kind"], r["target"]) for r in all_sent(h)) == [
        ("cancel", "spk-330502101201-1"),
        ("cancel", "spk-330502101201-2"),
    ]
    assert [j for j in await h.store.jobs_for(wid) if j["state"] == "pending"] == []
