"""Benchmark: warnd's start-up and memory with a county directory (1,000 villages, 50,010 people).

    .venv/bin/python -m bench.directory_load [--villages 1000] [--people 50] [--reps 3] [--json PATH]

The directory comes from tests/support/county.py: per village 10 speakers, an LED board, a
secretary, 9 grid workers and 40 residents, each with a phone and a superior; 10 officials over
the whole county. Lines, `--reps` times with warnd and the reference alternating:

- start-up: `warnd.daemon.run` from its call to ready (directory loaded and validated, store
  opened and migrated, HTTP API listening; no channels), against the reference, parsing the same
  file with the TOML parser warnd uses — the floor no validation can go under. Target ≤ 2 s.
- the same as a `warnd run` process, from its start until /healthz answers: the interpreter
  and warnd's imports included (no target: reported beside the line above).
- memory per person: what the loaded `Directory` keeps (tracemalloc, after the file's text and
  parse are freed), against what the parsed TOML itself holds for the same file.

Not a test: numbers depend on the machine; bench/README.md records them.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._table import Line, emit, order  # noqa: E402
from tests.support.county import county_toml  # noqa: E402
from tests.support.mqtt import free_port  # noqa: E402
from tests.support.process import DaemonProcess, write_config  # noqa: E402
from warnd.config import Settings, read_toml  # noqa: E402
from warnd.directory import Directory  # noqa: E402

TARGET_S = 2.0


async def start_up(workdir: Path, directory: Path) -> float:
    """Seconds from `run()` to ready with this directory, no channels; then stop it."""
    from warnd import log
    from warnd.daemon import run

    log.configure("warning")
    port = free_port()
    settings = Settings(
        state_dir=workdir / "state",
        directory={"path": directory},
        http={"port": port, "public_url": f"http://127.0.0.1:{port}"},
    )
    stop = asyncio.Event()
    ready = asyncio.Event()
    t0 = time.perf_counter()
    task = asyncio.create_task(
        run(settings, shutdown_trigger=stop.wait, adapters={}, on_ready=lambda _: ready.set())
    )
    await ready.wait()
    seconds = time.perf_counter() - t0
    stop.set()
    await task
    return seconds


def process_start_s(workdir: Path, directory: Path) -> float:
    """Seconds from starting a `warnd run` process (no channels) until its /healthz answers.

    What an operator waits for: the interpreter, warnd's imports, then `run()` to ready.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = write_config(workdir, directory, port)
    d = DaemonProcess(["-m", "tests.support.channels_daemon", str(config)], port, workdir / "warnd.log")
    t0 = time.perf_counter()
    d.start(timeout_s=120)  # polls /healthz every 50 ms
    seconds = time.perf_counter() - t0
    d.terminate()
    return seconds


def parse_s(directory: Path) -> float:
    """Seconds to parse the file with warnd's TOML parser, nothing else.

    With the cyclic collector off, as Directory.load parses: with it on, its full collections
    walk the growing parse, and the floor would be slower than warnd itself.
    """
    gc.disable()
    try:
        t0 = time.perf_counter()
        read_toml(directory)
        return time.perf_counter() - t0
    finally:
        gc.enable()


def kept_bytes(load: Any) -> int:
    """Bytes still allocated after `load()` returns, the result held (tracemalloc)."""
    gc.collect()
    tracemalloc.start()
    kept = load()
    gc.collect()
    size, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del kept
    return size


def main() -> int:
    """Run the repetitions and print (or write) the lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--villages", type=int, default=1000)
    parser.add_argument("--people", type=int, default=50, help="people per village (+10 officials)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", help="write the lines here for bench/run_all.py instead of printing")
    args = parser.parse_args()
    warnd_s: list[float] = []
    process_s: list[float] = []
    parse: list[float] = []
    with tempfile.TemporaryDirectory(prefix="warnd-bench-") as tmp:
        workdir = Path(tmp)
        directory = workdir / "directory.toml"
        directory.write_text(county_toml(args.villages, args.people), encoding="utf-8")
        people = args.villages * args.people + 10
        for rep in range(args.reps):
            for side in order(rep):
                if side == "warnd":
                    warnd_s.append(asyncio.run(start_up(workdir / f"run-{rep}", directory)))
                    process_s.append(process_start_s(workdir / f"process-{rep}", directory))
                else:
                    parse.append(parse_s(directory))
            print(f"  rep {rep + 1}: start-up {warnd_s[-1]:.2f} s (a process: {process_s[-1]:.2f} s), "
                  f"parse {parse[-1]:.2f} s", file=sys.stderr)  # fmt: skip
        directory_b = kept_bytes(lambda: Directory.load(directory)) / people
        raw_b = kept_bytes(lambda: read_toml(directory)) / people
    size = f"{args.villages:,} villages, {people:,} people"
    lines = [
        Line(f"start-up with a county directory ({size})", "s", warnd_s, parse,
             [w / p for w, p in zip(warnd_s, parse, strict=True)], "warnd / TOML parse alone",
             f"≤ {TARGET_S:g} s", statistics.median(warnd_s) <= TARGET_S,
             "reference: parsing the same file with warnd's TOML parser (tomli, mypyc-compiled), the floor"),
        Line(f"start-up of a `warnd run` process, imports included ({size})", "s", process_s, parse,
             [w / p for w, p in zip(process_s, parse, strict=True)], "process / TOML parse alone",
             note="from starting the interpreter until /healthz answers (polled every 50 ms), no channels"),
        Line("directory memory per person", "B", [directory_b], [raw_b], [directory_b / raw_b],
             "Directory / parsed TOML",
             note="tracemalloc after load, villages and devices included; reference: the parsed dicts"),
    ]  # fmt: skip
    return emit(lines, args.json)


if __name__ == "__main__":
    sys.exit(main())
