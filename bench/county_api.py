"""Benchmark: a county behind the API — a county-wide preview, a reload, `/metrics` at 1 M deliveries.

    .venv/bin/python -m bench.county_api [--villages 1000] [--people 50] [--deliveries 1000000]
        [--reps 3] [--json PATH]

warnd is built in this process as `warnd run` builds it (`warnd.app.build`, through the tests'
harness: recording adapters for loudspeaker, SMS, voice and LED, nothing sent), over the county
directory of `tests/support/county.py` (1,000 villages, 50,010 people). A 10 ms timer in the same
loop measures how late it fires while each operation runs (the worst lateness is the loop's
longest stall); its reference is the same timer over the same span with the loop idle.

Lines:
- **preview of a county-wide red, onset 48 h ahead** (`POST /api/v1/warnings/preview`, seven
  steps, up to 61,020 receivers each), against a bare count of the same receivers: each step's
  people by role in the matched villages, deduplicated, and the devices — the least any
  implementation must touch. Target ≤ 200 ms.
- **worst event-loop lag during the preview** and **during a SIGHUP reload** of the county
  directory (`Reloader.reload_now`, which loads it beside the running loop), against the idle
  timer. Target ≤ 50 ms: the loop never blocked.
- **`GET /metrics` with 1 M deliveries stored**, scraped while a write transaction holds the
  store's writer (it must not wait for it), against `GET /healthz` in the same run. Target
  ≤ 20 ms. The deliveries are written once, before the repetitions, through the store (its
  counter triggers run as for real deliveries).

Not a test: numbers depend on the machine; bench/README.md records them.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import structlog  # noqa: E402

from bench._table import Line, emit, order  # noqa: E402
from bench.loudspeaker_fanout import lag_probe  # noqa: E402
from tests.support.county import county_toml  # noqa: E402
from tests.support.db import writer_held  # noqa: E402
from tests.support.harness import Harness, warning_body  # noqa: E402
from tests.support.process import write_config  # noqa: E402
from warnd.daemon import Reloader  # noqa: E402
from warnd.planner import level_policy, step_jobs, step_villages, steps_for  # noqa: E402
from warnd.sdnotify import Notifier  # noqa: E402
from warnd.store import NewDelivery  # noqa: E402

T = TypeVar("T")
CHANNELS = ["loudspeaker", "sms", "voice", "led"]
# Deliveries written per store transaction while filling: a step's part, as the scheduler writes.
FILL_PART = 20_000
SCRAPES = 20


async def probed(work: Callable[[], Awaitable[T]]) -> tuple[T, float, float]:
    """Run work with the fan-out bench's lag probe beside it: (result, seconds, worst lateness in ms)."""
    done = asyncio.Event()
    task = asyncio.create_task(lag_probe(done))
    started = time.perf_counter()
    try:
        result = await work()
    finally:
        elapsed = time.perf_counter() - started
        done.set()
    return result, elapsed, await task


async def idle_lag(seconds: float) -> float:
    """The probe's worst lateness over `seconds` of an idle loop (ms): the reference for a lag."""
    _, _, lag = await probed(lambda: asyncio.sleep(seconds))
    return lag


def bare_count(warning: dict[str, Any], h: Harness) -> int:
    """The receivers of every step of the preview, counted by a plain pass over the directory."""
    directory, policy = h.daemon.directory(), h.settings.policy
    now = h.clock.now()
    lp = level_policy(warning, policy)
    villages = step_villages(warning, directory)
    codes = [v.code for v in villages]
    total = 0
    for job in step_jobs(warning, steps_for(warning, policy, now), now):
        if job["kind"] != "step":
            continue
        payload = job["payload"]
        roles = set(payload.get("roles") or ())
        for channel in payload["channels"]:
            if channel not in CHANNELS or channel not in lp.channels:
                continue  # a channel this warnd has not, or the level does not use
            if channel == "loudspeaker":
                total += sum(len(v.speakers) for v in villages)
            elif channel == "led":
                total += sum(len(v.led_boards) for v in villages)
            else:
                wanted = set(lp.roles.get(channel, ()))
                if roles:
                    wanted &= roles
                seen = {p.id for c in codes for p in directory.people_in([c], wanted) if p.phone}
                total += len(seen)
    return total


async def fill(h: Harness, deliveries: int) -> str:
    """Store one warning and `deliveries` delivery rows for it; its id."""
    resp = await h.client.post("/api/v1/warnings", json=warning_body(), headers=h.headers())
    assert resp.status == 202, await resp.text()
    wid = (await resp.json())["id"]
    now = h.clock.now()
    for start in range(0, deliveries, FILL_PART):
        part = [
            NewDelivery(f"bench-{i // 10}", wid, "issue", "warning", "loudspeaker", f"spk-{i}", now)
            for i in range(start, min(deliveries, start + FILL_PART))
        ]
        await h.store.add_deliveries(part, now)
    return wid


async def timed_get(h: Harness, path: str) -> float:
    """One GET's round trip (ms), its body read."""
    t0 = time.perf_counter()
    resp = await h.client.get(path, headers=h.headers("admin"))
    await resp.read()
    assert resp.status == 200, path
    return (time.perf_counter() - t0) * 1000


async def scrape_while_writer_held(h: Harness) -> tuple[float, float]:
    """Median /metrics and /healthz round trips (ms), the store's writer held by a transaction."""
    metrics, healthz = [], []
    async with writer_held(h.store):
        for _ in range(SCRAPES):
            metrics.append(await timed_get(h, "/metrics"))
            healthz.append(await timed_get(h, "/healthz"))
    return statistics.median(metrics), statistics.median(healthz)


async def run(args: argparse.Namespace) -> list[Line]:
    """Build warnd over the county, then measure every line --reps times."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only
    tmp = Path(tempfile.mkdtemp(prefix="warnd-bench-county-"))
    county = tmp / "county.toml"
    county.write_text(county_toml(villages=args.villages, people_per_village=args.people), encoding="utf-8")
    h = await Harness(tmp, channels=CHANNELS).start()
    try:
        services = replace(h.daemon, config_path=write_config(tmp, county))
        reloader = Reloader(services, Notifier())
        await reloader.reload_now()  # the county in force; the timed reloads load it again
        people = len(h.daemon.directory().people)
        onset = (h.clock.now() + timedelta(hours=48)).isoformat()
        body = warning_body(area={"codes": ["330502"]}, onset=onset)
        print(f"filling the store with {args.deliveries:,} deliveries …", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        await fill(h, args.deliveries)
        print(f"  {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

        async def preview() -> dict[str, Any]:
            """The preview's body."""
            resp = await h.client.post("/api/v1/warnings/preview", json=body, headers=h.headers())
            assert resp.status == 200, await resp.text()
            return await resp.json()

        warning = {"id": "W-bench", **body, "villages": h.daemon.directory().by_prefix("330502")}
        warning.setdefault("status", "actual")
        warning.setdefault("version", 1)
        p_ms, p_ref, p_lag, p_idle = [], [], [], []
        r_s, r_lag, r_idle = [], [], []
        m_ms, m_ref = [], []
        receivers = 0
        for rep in range(args.reps):
            for side in order(rep):
                if side == "warnd":
                    out, seconds, lag = await probed(preview)
                    receivers = sum(sum(s["targets"].values()) for s in out["schedule"])
                    p_ms.append(seconds * 1000)
                    p_lag.append(lag)
                    _, seconds, lag = await probed(reloader.reload_now)
                    r_s.append(seconds)
                    r_lag.append(lag)
                    metrics, healthz = await scrape_while_writer_held(h)
                    m_ms.append(metrics)
                    m_ref.append(healthz)
                else:
                    t0 = time.perf_counter()
                    bare = bare_count(warning, h)
                    p_ref.append((time.perf_counter() - t0) * 1000)
                    p_idle.append(await idle_lag(max(p_ms[-1] / 1000 if p_ms else 0.5, 0.2)))
                    r_idle.append(await idle_lag(max(r_s[-1] if r_s else 2.0, 0.5)))
            print(f"  rep {rep + 1}: preview {p_ms[-1]:.0f} ms, reload {r_s[-1]:.2f} s, "
                  f"/metrics {m_ms[-1]:.1f} ms", file=sys.stderr, flush=True)  # fmt: skip
        assert receivers == bare, f"the preview counted {receivers} receivers, the bare count {bare}"
    finally:
        await h.close()
    size = f"{args.villages:,} villages, {people:,} people"
    return [
        Line(f"preview of a county-wide red, onset 48 h ahead ({size})", "ms", p_ms, p_ref,
             [w / r for w, r in zip(p_ms, p_ref, strict=True)], "warnd / bare count", "≤ 200 ms",
             statistics.median(p_ms) <= 200,
             f"{receivers:,} receivers over the steps; reference: a plain pass counting them"),
        Line("worst event-loop lag during the preview", "ms", p_lag, p_idle,
             [w / max(r, 0.01) for w, r in zip(p_lag, p_idle, strict=True)], "warnd / idle loop",
             "≤ 50 ms", statistics.median(p_lag) <= 50, "a 10 ms timer in warnd's loop"),
        Line(f"worst event-loop lag during a SIGHUP reload ({size})", "ms", r_lag, r_idle,
             [w / max(r, 0.01) for w, r in zip(r_lag, r_idle, strict=True)], "warnd / idle loop",
             "≤ 50 ms (no stall)", statistics.median(r_lag) <= 50,
             f"the reload took {min(r_s):.2f}–{max(r_s):.2f} s, the directory loaded beside the loop"),
        Line(f"GET /metrics with {args.deliveries:,} deliveries, the store's writer held", "ms", m_ms,
             m_ref, [w / r for w, r in zip(m_ms, m_ref, strict=True)], "warnd / GET /healthz",
             "≤ 20 ms, no store lock", statistics.median(m_ms) <= 20,
             f"median of {SCRAPES} scrapes per repetition, each while a write transaction is open"),
    ]  # fmt: skip


def main() -> int:
    """Parse arguments, run, print or write the lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--villages", type=int, default=1000)
    parser.add_argument("--people", type=int, default=50, help="people per village")
    parser.add_argument("--deliveries", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", help="write the lines here for bench/run_all.py instead of printing")
    args = parser.parse_args()
    return emit(asyncio.run(run(args)), args.json)


if __name__ == "__main__":
    sys.exit(main())
