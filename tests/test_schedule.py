"""The 48-hour pre-warning schedule and loudspeaker re-broadcast, on the fake clock, across restarts."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import CHANNELS, Harness, warning_body

SPK = ("spk-330502101201-1", "spk-330502101201-2")
LED = ("led-330502101201-1",)
PEOPLE = ("grid-0", "off-0", "sec-0")
STEP_HOURS = {"T-48h": 48, "T-24h": 24, "T-12h": 12, "T-6h": 6, "T-3h": 3, "T-1h": 1, "onset": 0}


def expected_typhoon(onset_h: float, expires_h: float) -> Counter[tuple[float, str, str, str, str]]:
    """(hour after start, step, kind, channel, target) of every send the default red policy makes."""
    out: Counter[tuple[float, str, str, str, str]] = Counter()
    for step, before in STEP_HOURS.items():
        at = onset_h - before
        if step == "T-48h":  # officials prepare: SMS and WeCom
            sends = [("sms", "off-0"), ("wechat", "off-0")]
        elif step == "T-24h":  # officials and work groups; voice only reaches officials
            sends = [("sms", p) for p in PEOPLE] + [("voice", "off-0"), ("wechat", "off-0")]
        else:  # the public too
            sends = [("loudspeaker", s) for s in SPK] + [("led", b) for b in LED]
            sends += [("sms", p) for p in PEOPLE] + [("voice", "off-0"), ("wechat", "off-0")]
        for channel, target in sends:
            out[(at, step, "warning", channel, target)] += 1
    # Red repeats every 30 min from the first public step until expiry, except where a step plays.
    step_times = {onset_h - b for b in STEP_HOURS.values()}
    n, t = 0, onset_h - 12 + 0.5
    while t < expires_h:
        if t not in step_times:
            n += 1
            for s in SPK:
                out[(t, f"repeat-{n}", "warning", "loudspeaker", s)] += 1
        t += 0.5
    # Expiry stops the speakers and clears the board; people are not told.
    for channel, target in [("loudspeaker", s) for s in SPK] + [("led", b) for b in LED]:
        out[(expires_h, "expire", "expire", channel, target)] += 1
    return out


class Run:
    """A warnd that can be stopped and started again on the same state directory."""

    def __init__(self, tmp_path: Path) -> None:
        """Nothing is running yet."""
        self.tmp_path = tmp_path
        self.h: Harness
        self.start_at = datetime(2026, 7, 1, tzinfo=UTC)
        self.sent: list[tuple[float, str, str, str, str, str]] = []
        self._seen: dict[str, int] = {}
        self.restarts = 0

    async def start(self, now: datetime | None = None) -> None:
        """Open the store and build a fresh daemon (new adapters, new clock at `now`)."""
        self.h = await Harness(self.tmp_path).start()
        self.h.clock.set(now or self.start_at)
        await self.h.store.recover()
        self._seen = dict.fromkeys(CHANNELS, 0)

    async def restart(self) -> None:
        """Stop everything and start again where the clock stood."""
        self.collect()
        now = self.h.clock.now()
        await self.h.close()
        await self.start(now)
        self.restarts += 1

    def collect(self) -> None:
        """Take the sends made since the last look, stamped with the fake hour."""
        hour = (self.h.clock.now() - self.start_at).total_seconds() / 3600
        for channel in CHANNELS:
            records = self.h.adapter(channel).sent
            for r in records[self._seen[channel] :]:
                self.sent.append((hour, r["step"], r["kind"], r["channel"], r["target"], r["msg_id"]))
            self._seen[channel] = len(records)

    async def confirm_all(self, wid: str) -> None:
        """Everyone who must confirm does so at once (reply 1), so no escalation is due."""
        for d in await self.h.store.deliveries_for(wid):
            if d["ack_required"] and d["state"] == "sent":
                await self.h.daemon.feedback.ack(
                    source=d["channel"], status="acknowledged", msg_id=d["msg_id"], target=d["target"]
                )


async def test_typhoon_50h_ahead_fires_every_step_once_at_its_time_across_restarts(tmp_path: Path) -> None:
    """A red typhoon warning, onset in 50 h: each step, repeat and expiry exactly once, on time."""
    run = Run(tmp_path)
    await run.start()
    onset_h, expires_h = 50, 56
    onset = run.start_at + timedelta(hours=onset_h)
    body = warning_body(
        event="台风",
        headline="台风红色预警",
        onset=onset.isoformat(),
        expires=(run.start_at + timedelta(hours=expires_h)).isoformat(),
    )
    wid = await run.h.issue(body)
    w = await run.h.get(wid)
    assert [s["step"] for s in w["schedule"]] == list(STEP_HOURS)
    assert w["schedule"][0]["at"] == "2026-07-01T10:00:00+08:00"  # T-48h = 02:00 UTC
    tick = timedelta(minutes=10)
    try:
        for i in range(57 * 6):
            hour = i / 6
            if hour in (30, 47.5):
                await run.restart()  # between steps
            if hour == 38:
                # Crash after the T-12h step is written, before anything is sent.
                assert await run.h.daemon.scheduler.run_once() >= 1
                await run.restart()
            await run.h.run_until_idle()
            await run.confirm_all(wid)
            run.collect()
            run.h.clock.advance(tick.total_seconds())
        assert run.restarts == 3
        got = Counter(s[:5] for s in run.sent)
        want = expected_typhoon(onset_h, expires_h)
        assert got - want == Counter(), "sent but not expected"
        assert want - got == Counter(), "expected but not sent"
        # Exactly once at the receiver: no (msg_id, target) twice.
        assert max(Counter((s[5], s[4]) for s in run.sent).values()) == 1
        w = await run.h.get(wid)
        assert w["state"] == "expired"
        assert {s["state"] for s in w["schedule"]} == {"done"}
        jobs = await run.h.store.jobs_for(wid)
        assert [j for j in jobs if j["state"] == "pending"] == []
        # Everyone confirmed: the escalation chains all stopped without a call.
        assert all(s[1].count("escalate") == 0 for s in run.sent)
        assert w["escalations"] == []
    finally:
        await run.h.close()


async def test_onset_already_near_collapses_past_steps_into_one_issue(harness: Harness) -> None:
    """Onset in 5 h: T-48h … T-6h are past and go out once, now; T-3h, T-1h and onset follow."""
    now = harness.clock.now()
    wid = await harness.issue(warning_body(onset=(now + timedelta(hours=5)).isoformat()))
    w = await harness.get(wid)
    assert [s["step"] for s in w["schedule"]] == ["issue", "T-3h", "T-1h", "onset"]
    await harness.run_until_idle()
    assert {r["step"] for r in harness.adapter("sms").sent} == {"issue"}
    assert sorted(r["target"] for r in harness.adapter("sms").sent) == list(PEOPLE)
    jobs = await harness.store.jobs_for(wid)
    issue = next(j for j in jobs if j["payload"]["step"] == "issue")
    assert issue["payload"]["covers"] == ["T-48h", "T-24h", "T-12h", "T-6h"]


async def plays_overnight(tmp_path: Path, level: str, settings: dict[str, Any] | None = None) -> list[str]:
    """Issue at 20:30 Beijing time and list the local times the speakers were told to play until 07:30."""
    h = await Harness(tmp_path, channels=["loudspeaker"], settings=settings).start()
    try:
        start = datetime(2026, 7, 1, 12, 30, tzinfo=UTC)  # 20:30 in Beijing
        h.clock.set(start)
        wid = await h.issue(warning_body(level=level))
        plays: list[str] = []
        seen = 0
        while h.clock.now() <= start + timedelta(hours=11):
            await h.run_until_idle()
            sent = h.adapter("loudspeaker").sent
            if len(sent) > seen:
                stamp = (h.clock.now() + timedelta(hours=8)).strftime("%H:%M")
                plays.append(f"{stamp} {sent[-1]['step']}")
                seen = len(sent)
            h.clock.advance(minutes=10)
        assert (await h.get(wid))["state"] == "active"
        return plays
    finally:
        await h.close()


BLUE_REPEATING = {
    "policy": {
        "levels": {
            "blue": {
                "channels": ["loudspeaker", "sms", "wechat", "led"],
                "roles": {"sms": ["official"], "wechat": ["official"]},
                "daytime_only": ["loudspeaker"],
                "repeat_min": 60,
            }
        }
    }
}


async def test_quiet_hours_hold_a_blue_repeat(tmp_path: Path) -> None:
    """Blue repeating hourly: 20:30, 21:30, then nothing until quiet hours end at 06:00."""
    plays = await plays_overnight(tmp_path, "blue", BLUE_REPEATING)
    assert plays == ["20:30 issue", "21:30 repeat-1", "06:00 repeat-2", "07:00 repeat-3"]


@pytest.mark.parametrize("quiet_hours", [False, True], ids=["default", "configured-quiet"])
async def test_quiet_hours_never_hold_red(tmp_path: Path, quiet_hours: bool) -> None:
    """Red repeats every 30 min all night, even where a config asks quiet hours of it."""
    settings = None
    if quiet_hours:
        red = {"channels": ["loudspeaker"], "repeat_min": 30, "quiet_hours": True}
        settings = {"policy": {"levels": {"red": red}}}
    plays = await plays_overnight(tmp_path, "red", settings)
    assert plays[0] == "20:30 issue"
    times = [p.split()[0] for p in plays]
    expected = [
        (datetime(2026, 7, 1, 20, 30) + timedelta(minutes=30 * k)).strftime("%H:%M") for k in range(23)
    ]
    assert times == expected  # 20:30, 21:00, … 07:30: straight through 22:00–06:00
    assert plays[-1] == "07:30 repeat-22"
