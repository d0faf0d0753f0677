"""A county directory (1,000 villages, 50,010 people): reloading it and previewing a county-wide red
leave the event loop free — `/healthz` keeps answering meanwhile. Not timed: counted."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from tests.support.county import county_toml
from tests.support.harness import Harness, warning_body
from tests.support.process import write_config
from warnd.daemon import Reloader
from warnd.planner import step_counts, step_deliveries
from warnd.sdnotify import Notifier

T = TypeVar("T")
# A loop blocked for the whole of the work answers the probe once or twice (before it starts,
# and the one request waiting when it ends); a free loop answered 100–300 times here.
FREE = 20


async def healthz_answers_while(h: Harness, work: Awaitable[T]) -> tuple[int, T]:
    """Run `work` while GETting /healthz back to back; how many were answered before it finished."""
    task: asyncio.Future[T] = asyncio.ensure_future(work)
    answered = 0
    while not task.done():
        resp = await h.client.get("/healthz")
        assert resp.status == 200
        answered += 1
    return answered, await task


async def reload_county(h: Harness, tmp_path: Path) -> int:
    """Point the daemon's config at a county directory and reload; /healthz answers during it."""
    county = tmp_path / "county.toml"
    county.write_text(county_toml(), encoding="utf-8")
    # The running warnd's parts, read from the county's config (as `warnd run --config` would).
    services = replace(h.daemon, config_path=write_config(tmp_path, county))
    answered, _ = await healthz_answers_while(h, Reloader(services, Notifier()).reload_now())
    return answered


async def test_a_county_reload_runs_off_the_loop_and_swaps_the_directory_in(tmp_path: Path) -> None:
    """SIGHUP's reload loads 50,010 people in a thread; the new directory is in force when it ends."""
    h = await Harness(tmp_path, channels=["loudspeaker", "sms"]).start()
    try:
        old = h.daemon.directory()
        answered = await reload_county(h, tmp_path)
        assert answered >= FREE, f"/healthz answered {answered} times during the reload"
        new = h.daemon.directory()
        assert new is not old and len(new.people) == 50_010 and len(new.villages) == 1000
        assert h.daemon.intake.directory() is new  # the pipeline reads the same, swapped whole
    finally:
        await h.close()


async def test_a_county_wide_red_preview_leaves_healthz_answering(tmp_path: Path) -> None:
    """Preview of a red for the whole county, onset 48 h ahead: counted in a thread, loop free."""
    h = await Harness(tmp_path, channels=["loudspeaker", "sms", "voice", "led"]).start()
    try:
        await reload_county(h, tmp_path)
        onset = (h.clock.now() + timedelta(hours=48)).isoformat()
        body = warning_body(area={"codes": ["330502"]}, onset=onset)

        async def preview() -> dict[str, Any]:
            """POST the preview; its body."""
            resp = await h.client.post("/api/v1/warnings/preview", json=body, headers=h.headers())
            assert resp.status == 200, await resp.text()
            return await resp.json()

        answered, out = await healthz_answers_while(h, preview())
        assert answered >= FREE, f"/healthz answered {answered} times during the preview"
        assert len(out["villages"]) == 1000
        assert len(out["schedule"]) >= 5  # T-48 h … T-1 h
        steps = {s["step"]: s for s in out["schedule"]}
        assert steps["issue"]["targets"] == {"sms": 10}  # officials told at once, 48 h ahead
        assert steps["T-1h"]["targets"] == {"loudspeaker": 10_000, "sms": 50_010, "voice": 10, "led": 1000}
        assert steps["T-1h"]["ack_required"] == 1020  # officials and secretaries: sms and voice
    finally:
        await h.close()


async def test_preview_counts_are_the_rows_a_step_makes(tmp_path: Path) -> None:
    """step_counts agrees with step_deliveries: every channel, drills, a roles subset, a reminder."""
    h = await Harness(tmp_path, directory={"villages": 3, "robots": 2, "wecom_users": True}).start()
    try:
        directory, policy, now = h.daemon.directory(), h.settings.policy, h.clock.now()
        channels = ["loudspeaker", "led", "sms", "voice", "wechat"]
        codes = sorted(directory.villages)
        cases = [
            ({"status": "actual"}, {"step": "issue", "channels": channels}),
            ({"status": "exercise"}, {"step": "issue", "channels": channels}),
            ({"status": "actual"}, {"step": "T-1h", "channels": channels, "roles": ["grid_worker"]}),
            ({"status": "actual"}, {"step": "r1", "channels": channels, "kind": "reminder"}),
        ]
        for extra, payload in cases:
            warning = {"id": "W1", "level": "red", "event": "暴雨", "villages": codes, **extra}
            rows = step_deliveries(warning, "W1:v1:x", payload, directory, policy, now)
            per_channel, ack_required = step_counts(warning, payload, directory, policy)
            assert per_channel == dict(Counter(r.channel for r in rows)), (extra, payload)
            assert ack_required == sum(r.ack_required for r in rows), (extra, payload)
            assert rows or extra["status"] != "actual"
    finally:
        await h.close()
