"""Benchmark: the database through a 100-warning soak, with `[retention]` and without.

    .venv/bin/python -m bench.retention_soak [--warnings 100] [--villages 10] [--reps 3] [--json PATH]

warnd in this process (tests/support/harness.py: the real store, scheduler, dispatcher and
retention job; recording adapters; a fake clock), a directory of `--villages` villages with 10
speakers, an LED board, a secretary and a grid worker each. One warning after the other, each a
day after the last: a red for every village, sent, every speaker's `played` ack stored, then
cancelled and its all-clear sent; the daily retention job runs when due. Each repetition,
warnd and the reference alternating:

- **warnd**: `[retention] days = 1`: a warning's deliveries and acks are archived and deleted
  the first night after it has been over for a day;
- **the reference**: the same soak, `days = 36500`: the same job runs and finds nothing old
  enough, as before retention (the database only grows).

Reported: the database (warnd.db and its WAL) after the last warning, and how it grew from the
10th warning to the last. Target: warnd's grows ≤ 1.5× (bounded; what it keeps for ever — each
warning's row and audit trail — is a few kB a warning).

Not a test: numbers depend on the machine; bench/README.md records them.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._table import Line, emit, order  # noqa: E402
from tests.support.county import village_code  # noqa: E402
from tests.support.harness import Harness, warning_body  # noqa: E402
from warnd import log  # noqa: E402
from warnd.feedback import AckReport  # noqa: E402

# The warning after which the database is first measured: retention has run a few nights by then.
EARLY = 10
TARGET_GROWTH = 1.5
NEVER_DAYS = 36500


def db_bytes(state: Path) -> int:
    """The database on disk: the file and its write-ahead log."""
    return sum(p.stat().st_size for p in (state / "warnd.db", state / "warnd.db-wal") if p.exists())


def archive_bytes(state: Path) -> int:
    """What the retention job archived (gzip JSON lines)."""
    return sum(p.stat().st_size for p in (state / "archive").rglob("*") if p.is_file())


async def one_warning(h: Harness, villages: int) -> None:
    """A red to every village, sent and played, then cancelled and its all-clear sent."""
    body = warning_body(area={"codes": [village_code(i) for i in range(villages)]})
    wid = await h.issue(body)
    await h.run_until_idle()
    played = [
        AckReport("mqtt", "played", d["msg_id"], d["target"], None, None)
        for d in await h.store.deliveries_for(wid)
        if d["channel"] == "loudspeaker"
    ]
    await h.daemon.feedback.ack_many(played)
    resp = await h.client.post(f"/api/v1/warnings/{wid}/cancel", json={"reason": "雨停"}, headers=h.headers())
    assert resp.status == 202, await resp.text()
    await h.run_until_idle()


async def soak(workdir: Path, warnings: int, villages: int, days: int) -> dict[str, Any]:
    """`warnings` warnings a day apart with `[retention] days`; database sizes along the way."""
    h = await Harness(
        workdir,
        directory={"villages": villages, "speakers": 10, "leds": 1},
        settings={"retention": {"days": days}},
    ).start()
    state = h.settings.state_dir
    sizes: dict[int, int] = {}
    t0 = time.perf_counter()
    try:
        await h.daemon.scheduler.plan_retention()
        for n in range(1, warnings + 1):
            await one_warning(h, villages)
            h.clock.advance(timedelta(days=1).total_seconds())
            await h.run_until_idle()  # the night's retention job, when due
            sizes[n] = db_bytes(state)
    finally:
        await h.close()
    return {"sizes": sizes, "archive": archive_bytes(state), "seconds": time.perf_counter() - t0}


def main() -> int:
    """Run the repetitions and print (or write) the lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warnings", type=int, default=100)
    parser.add_argument("--villages", type=int, default=10)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", help="write the lines here for bench/run_all.py instead of printing")
    args = parser.parse_args()
    log.configure("warning")
    kept: list[dict[str, Any]] = []
    never: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="warnd-bench-soak-") as tmp:
        for rep in range(args.reps):
            for side in order(rep):
                workdir = Path(tmp) / f"{side}-{rep}"
                workdir.mkdir()
                if side == "warnd":
                    kept.append(asyncio.run(soak(workdir, args.warnings, args.villages, 1)))
                else:
                    never.append(asyncio.run(soak(workdir, args.warnings, args.villages, NEVER_DAYS)))
            k, r = kept[-1], never[-1]
            print(f"  rep {rep + 1}: with retention {k['sizes'][args.warnings] / 1e6:.2f} MB "
                  f"(after {EARLY}: {k['sizes'][EARLY] / 1e6:.2f} MB, {k['seconds']:.0f} s), "
                  f"never pruned {r['sizes'][args.warnings] / 1e6:.2f} MB "
                  f"(after {EARLY}: {r['sizes'][EARLY] / 1e6:.2f} MB, {r['seconds']:.0f} s)",
                  file=sys.stderr)  # fmt: skip
    last = args.warnings
    warnd_mb = [k["sizes"][last] / 1e6 for k in kept]
    ref_mb = [r["sizes"][last] / 1e6 for r in never]
    growth = [k["sizes"][last] / k["sizes"][EARLY] for k in kept]
    ref_growth = [r["sizes"][last] / r["sizes"][EARLY] for r in never]
    first = [k["sizes"][1] / 1e6 for k in kept]
    archive = [k["archive"] / 1e6 for k in kept]
    lines = [
        Line(f"database after a {last}-warning soak, `[retention] days = 1`", "MB", warnd_mb, ref_mb,
             [w / r for w, r in zip(warnd_mb, ref_mb, strict=True)], "warnd / never pruned",
             f"≤ {TARGET_GROWTH:g}× its size after warning {EARLY}",
             statistics.median(growth) <= TARGET_GROWTH,
             f"{args.villages} villages, one red a day (sent, played, cancelled, all-clear); warnd's "
             f"database grew {min(growth):.2f}–{max(growth):.2f}× from warning {EARLY} to {last}"
             f" (after the first: "
             f"{min(first):.2f}–{max(first):.2f} MB), archives {min(archive):.2f}–{max(archive):.2f} MB; "
             f"reference: the same soak with `days = {NEVER_DAYS}` (nothing old enough), grew "
             f"{min(ref_growth):.1f}–{max(ref_growth):.1f}×"),
    ]  # fmt: skip
    return emit(lines, args.json)


if __name__ == "__main__":
    sys.exit(main())
