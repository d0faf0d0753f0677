"""The benchmarks still run: each at a tiny size, end to end, in its own process.

Their numbers are not judged here (a benchmark is not a timed test); that they produce them is.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_bench(*args: str) -> str:
    """`python -m bench.NAME …` from the repository root; its stdout."""
    proc = subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=240, check=False
    )
    # Exit 1 means a target was missed, which at this size says nothing; a traceback (exit 1
    # too) or 2+ is a crash.
    assert proc.returncode in (0, 1) and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    return proc.stdout


def test_loudspeaker_fanout_runs_and_every_speaker_plays() -> None:
    """12 speakers through warnd and through the bare loop, with accepts posted and the loop probed."""
    out = run_bench(
        "bench.loudspeaker_fanout", "--villages", "4", "--speakers", "3", "--reps", "1", "--accept-s", "0.5"
    )
    rows = [row for row in out.splitlines() if row.startswith("| ")]
    assert rows[0].startswith("| what | warnd (min / median / max) | reference, same run | ratio |")
    assert any("fan-out 4 villages × 3 (12 speakers, played): 202 → last played" in r for r in rows)
    assert any("accept p99 at 50/s during the fan-out" in r for r in rows)
    assert any("worst event-loop lag during the fan-out" in r for r in rows)
    assert all(r.endswith(("| OK |", "| MISSED |", "| — |")) for r in rows[2:])


def test_loudspeaker_fanout_on_postgres() -> None:
    """The same fan-out and accepts with warnd's store (and the reference's) on PostgreSQL."""
    out = run_bench(
        "bench.loudspeaker_fanout", "--villages", "3", "--speakers", "2", "--reps", "1",
        "--accept-s", "0.5", "--store", "postgres",
    )  # fmt: skip
    assert "fan-out 3 villages × 2 (6 speakers, played) on PostgreSQL: 202 → last played" in out
    assert "accept p99 at 50/s during the fan-out on PostgreSQL" in out
    assert "bare aiohttp + PostgreSQL" in out


def test_ack_backlog_on_postgres() -> None:
    """The ack backlog with warnd's store and the sinks' tables on PostgreSQL."""
    out = run_bench(
        "bench.ack_backlog", "--acks", "200", "--speakers", "10", "--reps", "1", "--store", "postgres"
    )
    assert "acks stored per second from a broker backlog of 200 on PostgreSQL" in out
    assert "committed to PostgreSQL" in out


def test_loudspeaker_fanout_with_progress_acks() -> None:
    """The three-ack variant (received, playing, played) also completes, on both sides."""
    out = run_bench(
        "bench.loudspeaker_fanout", "--villages", "2", "--speakers", "2", "--progress-acks",
        "--reps", "1", "--accept-s", "0",
    )  # fmt: skip
    assert "(4 speakers, 3 acks): 202 → last played" in out
    assert "accept p99" not in out


def test_ack_backlog_runs_on_every_sink() -> None:
    """200 acks queued by the broker, stored by warnd's receive path, the bare sink and the paho-less one."""
    out = run_bench("bench.ack_backlog", "--acks", "200", "--speakers", "10", "--reps", "1")
    assert "| acks stored per second from a broker backlog of 200 |" in out
    assert "(warnd / bare sink)" in out
    assert "minimal asyncio MQTT reader (no paho)" in out


def test_token_attack_runs_and_no_guess_costs_a_slow_hash() -> None:
    """4 speakers, quiet and under 20 guesses/s from 2 addresses."""
    out = run_bench(
        "bench.token_attack", "--villages", "2", "--speakers", "2", "--rate", "20", "--addresses", "2",
        "--reps", "1",
    )  # fmt: skip
    assert "| fan-out 4 speakers while 20 random tokens/s hit the API |" in out
    assert "(attack / quiet)" in out
    assert "slow hashes run: 0" in out


def test_sms_rate_counts_when_every_message_is_sent() -> None:
    """20 SMS against the rate-limited fake: the line names all 20 as sent."""
    out = run_bench("bench.sms_rate", "--count", "20", "--reps", "1")
    assert "| SMS rate, 20 sent (all) at a 50/s limit |" in out
    assert "(achieved / limit)" in out


def test_county_api_previews_reloads_and_scrapes() -> None:
    """20 villages of 5 people, 2,000 deliveries: the preview agrees with the bare count (the
    benchmark asserts it), and every line is there."""
    out = run_bench(
        "bench.county_api", "--villages", "20", "--people", "5", "--deliveries", "2000", "--reps", "1"
    )
    assert "| preview of a county-wide red, onset 48 h ahead (20 villages, 110 people) |" in out
    assert "| worst event-loop lag during a SIGHUP reload (20 villages, 110 people) |" in out
    assert "| GET /metrics with 2,000 deliveries, the store's writer held |" in out


def test_a_missed_target_is_the_only_failing_exit() -> None:
    """`emit` prints every line and answers 1 only when a line missed its target."""
    from bench._table import Line, emit, render

    met = Line("a", "s", [1.0, 2.0, 3.0], [1.0, 1.0, 1.0], [1.0, 2.0, 3.0], "x / y", "≤ 5 s", True)
    missed = Line("b", "ms", [9.0], target="≤ 1 ms", ok=False, note="why")
    plain = Line("c", "MB", [4.0])
    assert emit([met, plain], None) == 0
    assert emit([met, missed, plain], None) == 1
    table = render([met, missed, plain])
    assert (
        "| a | 1.00 / 2.00 / 3.00 s | 1.00 / 1.00 / 1.00 s | 1.00 / 2.00 / 3.00 (x / y) | ≤ 5 s | OK |"
        in table
    )
    assert "| b | 9.00 ms | — | — | ≤ 1 ms | MISSED |" in table
    assert "- b: why" in table


def test_make_bench_runs_only_benchmarks_and_each_takes_its_defaults() -> None:
    """`make bench` runs each listed module without arguments: helpers must not be listed."""
    from bench.run_all import benchmarks

    names = benchmarks()
    assert "loudspeaker_fanout" in names and "sms_rate" in names and "token_attack" in names
    for name in names:
        proc = subprocess.run(
            [sys.executable, "-m", f"bench.{name}", "--help"],
            cwd=ROOT,
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, (name, proc.stderr)


def test_peak_rss_runs_a_warnd_process_with_every_channel() -> None:
    """A 3-village county: a warnd process plans a red on every channel; its peak beside the parse's."""
    out = run_bench("bench.peak_rss", "--villages", "3", "--people", "5", "--reps", "1", "--send-s", "0")
    assert "| peak RSS, county directory (25 people), a county-wide red on every channel |" in out
    assert "(warnd / the parsed file held)" in out
    assert "loudspeaker, sms, voice, led, wechat" in out


def test_retention_soak_keeps_the_database_bounded_only_with_retention() -> None:
    """12 warnings, 2 villages: both sides run; the note says how each database grew."""
    out = run_bench("bench.retention_soak", "--warnings", "12", "--villages", "2", "--reps", "1")
    assert "| database after a 12-warning soak, `[retention] days = 1` |" in out
    assert "(warnd / never pruned)" in out


def test_directory_load_times_run_and_a_whole_process() -> None:
    """A 3-village county: start-up in process and as a `warnd run` process, beside the parse."""
    out = run_bench("bench.directory_load", "--villages", "3", "--people", "5", "--reps", "1")
    assert "| start-up with a county directory (3 villages, 25 people) |" in out
    assert "| start-up of a `warnd run` process, imports included (3 villages, 25 people) |" in out
    assert "(process / TOML parse alone)" in out
