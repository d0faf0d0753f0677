"""Water levels through the API: raise at 警戒水位, upgrade at 保证水位, cancel after the fall, no flap."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.support.county import village_code
from tests.support.harness import Harness

T0 = datetime.fromisoformat("2026-07-01T08:00:00+08:00")


def station(**overrides: Any) -> dict[str, Any]:
    """A station threatening the first two villages of the generated township."""
    st = {
        "id": "63201400",
        "name": "塘甸站",
        "villages": [village_code(0), village_code(1)],
        "warning_stage": 5.0,
        "guarantee_stage": 6.0,
        "rise_rate_m_per_h": 1.0,
        "hysteresis_m": 0.1,
        "clear_after_min": 60,
    }
    st.update(overrides)
    return st


@pytest.fixture
async def hydro(tmp_path: Path) -> AsyncIterator[Harness]:
    """A harness with one station; the clock starts at T0."""
    h = await Harness(tmp_path, settings={"hydro": {"station": [station()]}}).start()
    h.clock.set(T0)
    yield h
    await h.close()


async def post(
    h: Harness, series: list[tuple[float, float]], role: str = "operator", sid: str = "63201400"
) -> Any:
    """POST (minutes after T0, level) readings; the clock follows the newest."""
    readings = [
        {"station": sid, "at": (T0 + timedelta(minutes=m)).isoformat(), "level_m": v} for m, v in series
    ]
    newest = max(T0 + timedelta(minutes=m) for m, _ in series)
    if newest > h.clock.now():
        h.clock.set(newest)
    resp = await h.client.post("/api/v1/hydro/readings", json={"readings": readings}, headers=h.headers(role))
    return resp


async def warnings(h: Harness) -> list[dict[str, Any]]:
    """All warnings, newest first."""
    return (await (await h.client.get("/api/v1/warnings", headers=h.headers("viewer"))).json())["warnings"]


async def test_rise_through_both_stages_and_fall_back(hydro: Harness) -> None:
    series = [(0, 4.0), (60, 4.6), (120, 5.1), (180, 5.6), (240, 6.1), (300, 6.3), (360, 5.8), (420, 5.3),
              (480, 4.95), (540, 4.85), (570, 4.8), (600, 4.7), (660, 4.5), (720, 4.3)]  # fmt: skip
    actions = []
    for m, v in series:
        resp = await post(hydro, [(m, v)])
        assert resp.status == 200, await resp.text()
        (result,) = (await resp.json())["results"]
        assert result["accepted"], result
        actions.append(result["action"])
        await hydro.run_until_idle()
    assert actions == ["none", "none", "raise", "none", "upgrade", "none", "none", "none",
                       "none", "arm", "none", "cancel", "none", "none"]  # fmt: skip
    (w,) = await warnings(hydro)
    assert w["state"] == "cancelled"
    assert w["level"] == "orange"
    assert w["event"] == "洪水"
    full = await hydro.get(w["id"])
    assert full["villages"] == [village_code(0), village_code(1)]
    history = [a["action"] for a in await hydro.daemon.store.audit_log(w["id"])]
    assert [a for a in history if a in ("issue", "update", "cancel")] == ["issue", "update", "cancel"]
    # The villages were told: the yellow issue, the orange upgrade and the all-clear.
    sent = [r for r in hydro.adapter("loudspeaker").sent if r["warning_id"] == w["id"]]
    assert {r["target"] for r in sent} >= {f"spk-{village_code(0)}-1", f"spk-{village_code(1)}-1"}
    assert {r["kind"] for r in sent} >= {"warning", "cancel"}
    assert any("保证水位" in r["headline"] for r in sent)
    stored = await hydro.daemon.hydro.readings("63201400")
    assert len(stored) == len(series)
    assert all(r["accepted"] for r in stored)


async def test_level_hovering_at_the_stage_does_not_flap(hydro: Harness) -> None:
    levels = [4.95, 5.01, 4.98, 5.02, 4.93, 5.0, 4.96, 5.03, 4.91, 4.99, 5.01, 4.94] * 3
    series = [(i * 10, v) for i, v in enumerate(levels)]
    # A short dip below the clearing line (4.9) that comes back within the hour cancels nothing.
    series += [(len(levels) * 10 + 10, 4.85), (len(levels) * 10 + 40, 4.88), (len(levels) * 10 + 60, 4.97)]
    resp = await post(hydro, series)
    body = await resp.json()
    assert body["rejected"] == 0, body
    acts = [r["action"] for r in body["results"]]
    assert acts.count("raise") == 1
    assert "cancel" not in acts
    assert "upgrade" not in acts
    assert acts.count("arm") == 1
    assert acts.count("disarm") == 1
    (w,) = await warnings(hydro)
    assert w["state"] == "active"
    assert w["level"] == "yellow"
    assert w["version"] == 1


async def test_fast_rise_raises_the_rise_level(hydro: Harness) -> None:
    resp = await post(hydro, [(0, 4.0), (60, 5.2)])
    body = await resp.json()
    assert [r["action"] for r in body["results"]] == ["none", "raise"]
    (w,) = await warnings(hydro)
    assert w["level"] == "orange"


async def test_bad_readings_rejected_with_reasons(hydro: Harness) -> None:
    resp = await post(hydro, [(0, 4.0), (60, 4.2)])
    assert (await resp.json())["accepted"] == 2
    cases = [
        ([(60, 4.3)], "duplicate"),
        ([(30, 4.1)], "out_of_order"),
        ([(70, -0.5)], "absurd"),
        ([(70, 9.0)], "absurd"),
    ]
    for series, reason in cases:
        body = await (await post(hydro, series)).json()
        (r,) = body["results"]
        assert not r["accepted"]
        assert r["reason"].startswith(reason), r
    future = [{"station": "63201400", "at": (T0 + timedelta(days=1)).isoformat(), "level_m": 4.3}]
    r = await hydro.client.post("/api/v1/hydro/readings", json=future, headers=hydro.headers())
    assert (await r.json())["results"][0]["reason"].startswith("future")
    unknown = await (await post(hydro, [(90, 4.3)], sid="nope")).json()
    assert unknown["results"][0]["reason"].startswith("unknown_station")
    naive = {"station": "63201400", "at": "2026-07-01T12:00:00", "level_m": 4.3}
    r = await hydro.client.post("/api/v1/hydro/readings", json=naive, headers=hydro.headers())
    assert r.status == 422
    assert (await r.json())["error"]["field"] == "readings[0].at"
    assert (await post(hydro, [(120, 4.3)], role="viewer")).status == 403
    stored = await hydro.daemon.hydro.readings("63201400")
    assert [bool(s["accepted"]) for s in stored] == [True, True, False, False, False, False, False]
    assert await warnings(hydro) == []
    stations = await (
        await hydro.client.get("/api/v1/hydro/stations", headers=hydro.headers("viewer"))
    ).json()
    assert stations["stations"][0]["last"]["level_m"] == 4.2


async def test_operator_cancel_then_new_rise_raises_a_new_warning(hydro: Harness) -> None:
    await post(hydro, [(0, 4.8), (30, 5.1)])
    (w,) = await warnings(hydro)
    r = await hydro.client.post(f"/api/v1/warnings/{w['id']}/cancel", json={}, headers=hydro.headers())
    assert r.status == 202
    body = await (await post(hydro, [(60, 5.15)])).json()
    assert body["results"][0]["action"] == "raise"
    assert len(await warnings(hydro)) == 2


async def actions_of(h: Harness, series: list[tuple[float, float]]) -> list[str]:
    """POST readings one at a time, the pipeline run after each; the action each one took."""
    actions = []
    for m, v in series:
        resp = await post(h, [(m, v)])
        (result,) = (await resp.json())["results"]
        assert result["accepted"], result
        actions.append(result["action"])
        await h.run_until_idle()
    return actions


async def test_noisy_step_does_not_upgrade(hydro: Harness) -> None:
    """A 5 cm step 87 s after the last reading is 2 m/h between two points, not a rise of 2 m/h."""
    flat = [(0, 5.10), (5, 5.11), (10, 5.10), (15, 5.09), (20, 5.10), (25, 5.10)]
    step = (25 + 87 / 60, 5.15)
    assert await actions_of(hydro, [*flat, step]) == ["raise", "none", "none", "none", "none", "none", "none"]
    (w,) = await warnings(hydro)
    assert (w["level"], w["version"]) == ("yellow", 1)


async def test_noisy_step_right_after_the_first_reading_does_not_upgrade(hydro: Harness) -> None:
    """With no history, two readings 87 s apart are too short a span to tell a rate."""
    assert await actions_of(hydro, [(0, 5.10), (87 / 60, 5.15)]) == ["raise", "none"]
    (w,) = await warnings(hydro)
    assert w["level"] == "yellow"


async def test_sustained_rise_upgrades_once_it_spans_the_minimum(tmp_path: Path) -> None:
    """0.6 m/h over 5-minute readings (±1 cm of gauge noise) upgrades at 0.5 m/h when 20 minutes span."""
    h = await Harness(tmp_path, settings={"hydro": {"station": [station(rise_rate_m_per_h=0.5)]}}).start()
    try:
        h.clock.set(T0)
        noise = [0.0, 0.01, -0.01, 0.0, 0.01, -0.01, 0.0]
        series = [(5 * k, round(5.05 + 0.05 * k + noise[k], 3)) for k in range(7)]
        actions = await actions_of(h, series)
        assert actions == ["raise", "none", "none", "none", "upgrade", "none", "none"]
        (w,) = await warnings(h)
        assert w["level"] == "orange"
    finally:
        await h.close()


async def test_falling_water_never_upgrades(hydro: Harness) -> None:
    """A fast fall (1.2 m/h) is no rise: the warning stays yellow until the level clears the line."""
    series = [(5 * k, round(5.9 - 0.1 * k, 2)) for k in range(12)]  # 5.9 … 4.8
    actions = await actions_of(hydro, series)
    assert actions == ["raise"] + ["none"] * 10 + ["arm"]
    (w,) = await warnings(hydro)
    assert (w["level"], w["version"]) == ("yellow", 1)


async def test_rate_does_not_reach_across_a_gap(hydro: Harness) -> None:
    """After 70 minutes without readings, the rate waits for 20 minutes of new ones, then counts."""
    before = [(5 * k, 4.6) for k in range(7)]  # flat until minute 30, then nothing until 100
    after = [(100, 5.10), (101 + 27 / 60, 5.15), (105, 5.20), (110, 5.30), (115, 5.40), (120, 5.50)]
    actions = await actions_of(hydro, before + after)
    assert actions[:7] == ["none"] * 7
    assert actions[7:] == ["raise", "none", "none", "none", "none", "upgrade"]
    (w,) = await warnings(hydro)
    assert w["level"] == "orange"
