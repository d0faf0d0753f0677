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
    # Exit 1 means a target was missed, which at this size says nothing; 2+ is a crash.
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    return proc.stdout


def test_loudspeaker_fanout_runs_and_every_speaker_plays() -> None:
    """12 speakers through warnd and through the bare loop, with the swarm peer acking `played`."""
    out = run_bench("bench.loudspeaker_fanout", "--villages", "4", "--speakers", "3")
    assert "speakers:                 12 (4 villages × 3), acking played" in out
    assert "warnd 202 → last played:" in out
    assert "bare aiomqtt publish+ack:" in out
    assert out.strip().splitlines()[-1] in ("OK", "MISSED")


def test_loudspeaker_fanout_with_progress_acks() -> None:
    """The three-ack variant (received, playing, played) also completes."""
    out = run_bench("bench.loudspeaker_fanout", "--villages", "2", "--speakers", "2", "--progress-acks")
    assert "acking received, playing, played" in out
    assert "warnd 202 → last played:" in out


def test_token_attack_runs_and_no_guess_costs_a_slow_hash() -> None:
    """4 speakers, quiet and under 20 guesses/s from 2 addresses."""
    out = run_bench(
        "bench.token_attack", "--villages", "2", "--speakers", "2", "--rate", "20", "--addresses", "2"
    )
    assert "speakers:                   4 (2 villages × 2), 5 PBKDF2 tokens" in out
    assert "attack / quiet:" in out
    assert "slow hashes run: 0" in out


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
