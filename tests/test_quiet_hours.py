"""Quiet hours and pre-warning steps: a loudspeaker step due at night waits for the morning
(unless the onset comes first), the preview and the schedule show the time the send keeps."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.support.harness import Harness, warning_body

BJ = ZoneInfo("Asia/Shanghai")


def bj(day: int, hour: int, minute: int = 0) -> datetime:
    """A Beijing time in July 2026."""
    return datetime(2026, 7, day, hour, minute, tzinfo=BJ)


def at(day: int, hour: int, minute: int = 0) -> str:
    """A Beijing time as the API writes it."""
    return bj(day, hour, minute).isoformat(timespec="seconds")


def rainstorm(level: str, onset: datetime, **kw: Any) -> dict[str, Any]:
    """A rainstorm warning of a level with its onset, in force until the evening after it."""
    return warning_body(
        level=level,
        headline=f"暴雨{level}预警",
        onset=onset.isoformat(),
        expires=(onset + timedelta(hours=8)).isoformat(),
        **kw,
    )


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    """The pipeline, its fake clock at 15:00 on 1 July (Beijing)."""
    harness = await Harness(tmp_path).start()
    harness.clock.set(bj(1, 15))
    yield harness
    await harness.close()


async def preview(h: Harness, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The schedule `POST /api/v1/warnings/preview` shows."""
    resp = await h.client.post("/api/v1/warnings/preview", json=body, headers=h.headers())
    assert resp.status == 200, await resp.text()
    return (await resp.json())["schedule"]


def steps(schedule: list[dict[str, Any]]) -> list[tuple[str, str, str, str | None]]:
    """(at, step, channels, held) of each scheduled step."""
    return [(s["at"], s["step"], ",".join(s["channels"]), s.get("held")) for s in schedule]


async def drive(h: Harness, until: datetime) -> dict[str, list[str]]:
    """Run the pipeline in 10-minute ticks until `until`; per channel, "DD HH:MM step" of its sends."""
    seen = dict.fromkeys(h.channels, 0)
    out: dict[str, list[str]] = {c: [] for c in h.channels}
    while h.clock.now() <= until:
        await h.run_until_idle()
        stamp = h.clock.now().astimezone(BJ).strftime("%d %H:%M")
        for c in h.channels:
            for r in h.adapter(c).sent[seen[c] :]:
                if r["kind"] == "warning" and f"{stamp} {r['step']}" not in out[c]:
                    out[c].append(f"{stamp} {r['step']}")
            seen[c] = len(h.adapter(c).sent)
        h.clock.advance(minutes=10)
    return out


SPEAKER = "loudspeaker"
PERSON = "sms,voice,wechat,led"


async def test_orange_t12h_loudspeaker_waits_for_the_morning(h: Harness) -> None:
    """Onset 13:00 tomorrow: T-12h (01:00) tells officials at 01:00, the villages at 06:00."""
    body = rainstorm("orange", bj(2, 13))
    expected = [
        (at(1, 15), "issue", "sms,voice,wechat", None),
        (at(2, 1), "T-12h", PERSON, None),
        (at(2, 6), "T-12h", SPEAKER, "quiet hours"),
        (at(2, 7), "T-6h", f"{SPEAKER},{PERSON}", None),
        (at(2, 10), "T-3h", f"{SPEAKER},{PERSON}", None),
        (at(2, 12), "T-1h", f"{SPEAKER},{PERSON}", None),
        (at(2, 13), "onset", f"{SPEAKER},{PERSON}", None),
    ]
    assert steps(await preview(h, body)) == expected
    wid = await h.issue(body)
    shown = (await h.get(wid))["schedule"]
    assert steps(shown) == expected
    sent = await drive(h, bj(2, 7, 30))
    assert sent["sms"] == ["01 15:00 issue", "02 01:00 T-12h", "02 07:00 T-6h"]
    # Nothing between 22:00 and 06:00 on the loudspeakers; the held play, then T-6h an hour later.
    assert sent["loudspeaker"] == ["02 06:00 T-12h", "02 07:00 T-6h"]
    assert sent["led"] == ["02 01:00 T-12h", "02 07:00 T-6h"]
    speaker_due = {d["due_at"] for d in await h.store.deliveries_for(wid) if d["channel"] == "loudspeaker"}
    assert "2026-07-01T22:00:00.000000Z" in speaker_due  # 06:00 Beijing
    assert {s["state"] for s in (await h.get(wid))["schedule"] if s["at"] <= at(2, 7)} == {"done"}


async def test_red_is_never_held(h: Harness) -> None:
    """The same warning in red: T-12h sounds at 01:00, as the level table says."""
    body = rainstorm("red", bj(2, 13))
    shown = await preview(h, body)
    assert all(s.get("held") is None for s in shown)
    assert (at(2, 1), "T-12h", f"{SPEAKER},{PERSON}", None) in steps(shown)
    await h.issue(body)
    sent = await drive(h, bj(2, 1, 10))
    assert sent["loudspeaker"][0] == "02 01:00 T-12h"


async def test_a_step_is_not_held_past_the_onset(h: Harness) -> None:
    """Onset 03:00: the morning would come after it, so T-3h (00:00) and T-1h (02:00) sound at night."""
    body = rainstorm("orange", bj(2, 3))
    expected = [
        (at(1, 15), "issue", f"{SPEAKER},sms,voice,wechat,led", None),
        (at(1, 21), "T-6h", f"{SPEAKER},{PERSON}", None),
        (at(2, 0), "T-3h", f"{SPEAKER},{PERSON}", None),
        (at(2, 2), "T-1h", f"{SPEAKER},{PERSON}", None),
        (at(2, 3), "onset", f"{SPEAKER},{PERSON}", None),
    ]
    assert steps(await preview(h, body)) == expected
    wid = await h.issue(body)
    assert steps((await h.get(wid))["schedule"]) == expected
    sent = await drive(h, bj(2, 3))
    assert [p for p in sent["loudspeaker"] if "T-" in p or "onset" in p] == [
        "01 21:00 T-6h",
        "02 00:00 T-3h",
        "02 02:00 T-1h",
        "02 03:00 onset",
    ]


async def test_a_held_play_landing_on_the_next_one_is_merged(h: Harness) -> None:
    """Onset 11:00: T-12h (23:00) and T-6h (05:00) would both play at 06:00; they play once."""
    body = rainstorm("orange", bj(2, 11))
    expected = [
        (at(1, 15), "issue", "sms,voice,wechat", None),
        (at(1, 23), "T-12h", PERSON, None),
        (at(2, 5), "T-6h", PERSON, None),
        (at(2, 6), "T-6h", SPEAKER, "quiet hours"),
        (at(2, 8), "T-3h", f"{SPEAKER},{PERSON}", None),
        (at(2, 10), "T-1h", f"{SPEAKER},{PERSON}", None),
        (at(2, 11), "onset", f"{SPEAKER},{PERSON}", None),
    ]
    assert steps(await preview(h, body)) == expected
    wid = await h.issue(body)
    assert steps((await h.get(wid))["schedule"]) == expected
    held = next(j for j in await h.store.jobs_for(wid) if j["payload"].get("held"))
    assert held["payload"]["covers"] == ["T-12h"]
    sent = await drive(h, bj(2, 8))
    assert sent["loudspeaker"] == ["02 06:00 T-6h", "02 07:00 repeat-1", "02 08:00 T-3h"]
    morning = [r for r in h.adapter("loudspeaker").sent if r["step"] == "T-6h"]
    assert sorted(r["target"] for r in morning) == ["spk-330502101201-1", "spk-330502101201-2"]


@pytest.mark.parametrize(
    ("onset_hour", "speakers", "first_play"),
    [
        (6, f"{SPEAKER},sms,voice,wechat,led", "02 02:00 issue"),  # the rainstorm comes at 06:00
        (13, "sms,voice,wechat,led", "02 06:00 issue"),  # the morning comes first
    ],
    ids=["onset-at-dawn", "onset-after-the-morning"],
)
async def test_a_warning_accepted_at_night_sounds_before_its_onset(
    h: Harness, onset_hour: int, speakers: str, first_play: str
) -> None:
    """Accepted at 02:00: officials are told at once; the villages at once if the hazard is due
    by the end of quiet hours, else at 06:00."""
    h.clock.set(bj(2, 2))
    body = rainstorm("orange", bj(2, onset_hour))
    shown = steps(await preview(h, body))
    assert shown[0] == (at(2, 2), "issue", speakers, None)
    await h.issue(body)
    sent = await drive(h, bj(2, 6))
    assert sent["sms"][0] == "02 02:00 issue"
    assert sent["loudspeaker"][0] == first_play


async def test_an_update_between_a_step_and_its_held_play_keeps_the_play(h: Harness) -> None:
    """Updated at 03:00, after T-12h reached officials at 01:00: the villages still hear it at
    06:00, with the new text, and officials are not sent T-12h again."""
    wid = await h.issue(rainstorm("orange", bj(2, 13)))
    await drive(h, bj(2, 2, 50))
    resp = await h.client.post(
        f"/api/v1/warnings/{wid}/update", json={"headline": "暴雨橙色预警（更新）"}, headers=h.headers()
    )
    assert resp.status == 202, await resp.text()
    shown = steps((await h.get(wid))["schedule"])
    assert (at(2, 6), "issue", SPEAKER, "quiet hours") in shown
    before = len(h.adapter("sms").sent)
    sent = await drive(h, bj(2, 6, 30))
    assert sent["loudspeaker"] == ["02 06:00 issue"]
    assert {r["headline"] for r in h.adapter("loudspeaker").sent} == {"暴雨橙色预警（更新）"}
    assert [r for r in h.adapter("sms").sent[before:] if r["kind"] == "warning"] == []


async def test_an_upgrade_at_night_tells_officials_at_once_and_villages_in_the_morning(h: Harness) -> None:
    """Yellow raised to orange at 02:00, onset 13:00: the new level's SMS at 02:00, speakers at 06:00."""
    wid = await h.issue(rainstorm("yellow", bj(2, 13)))
    await drive(h, bj(2, 1, 50))
    resp = await h.client.post(
        f"/api/v1/warnings/{wid}/update", json={"level": "orange"}, headers=h.headers()
    )
    assert resp.status == 202, await resp.text()
    sent = await drive(h, bj(2, 6))
    assert "02 02:00 issue" in sent["sms"]
    assert [p for p in sent["loudspeaker"] if p < "02 06:00"] == []
    assert sent["loudspeaker"][0] == "02 06:00 issue"


async def test_blue_loudspeakers_wait_for_daytime_in_the_preview_too(h: Harness) -> None:
    """Blue at 23:00 without an onset: the preview shows the speakers at 06:00, where they play."""
    h.clock.set(bj(1, 23))
    body = warning_body(level="blue", headline="大风蓝色预警")
    expected = [
        (at(1, 23), "issue", "sms,wechat,led", None),
        (at(2, 6), "issue", SPEAKER, "quiet hours"),
    ]
    assert steps(await preview(h, body)) == expected
    wid = await h.issue(body)
    assert steps((await h.get(wid))["schedule"]) == expected
    sent = await drive(h, bj(2, 6))
    assert sent["loudspeaker"] == ["02 06:00 issue"]
    assert sent["sms"] == ["01 23:00 issue"]
