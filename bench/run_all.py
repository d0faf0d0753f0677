"""`make bench`: run every benchmark in bench/ and print their lines as one table.

Each benchmark runs in its own process (`python -m bench.<name> --json FILE`) with its defaults,
so one's logging, memory and event loop cannot colour another's. The exit code is 1 only when
a target is missed (or a benchmark crashed); every line is printed either way.

The fan-out and the ack backlog also run with warnd's store on PostgreSQL (EXTRA).
`WARND_BENCH_COUNTY=1` (or `--county`) adds the 5,000 villages × 10 speakers fan-out, which
takes a few minutes more than the rest together.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench._table import Line, load, render  # noqa: E402

# Runs beside each benchmark's default one: (module, its arguments). The fan-out with its accept
# line, and the ack backlog, again with warnd's store on PostgreSQL (a server the bench starts).
EXTRA = [("loudspeaker_fanout", ["--store", "postgres"]), ("ack_backlog", ["--store", "postgres"])]
# The larger runs behind --county.
COUNTY = [("loudspeaker_fanout", ["--villages", "5000", "--speakers", "10", "--accept-s", "0"])]


def benchmarks() -> list[str]:
    """The benchmarks: bench/*.py but this file; helpers such as the load peer start with `_`."""
    return [
        script.stem
        for script in sorted(HERE.glob("*.py"))
        if script.name != "run_all.py" and not script.name.startswith("_")
    ]


def machine() -> str:
    """One line naming the machine the table was measured on."""
    model = platform.processor() or platform.machine()
    try:
        for row in Path("/proc/cpuinfo").read_text().splitlines():
            if row.startswith("model name"):
                model = row.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{datetime.now(UTC):%Y-%m-%d}, {model}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def run_one(name: str, args: list[str], out: Path) -> tuple[list[Line], bool]:
    """One benchmark in its own process; its lines and whether it crashed."""
    print(f"== {name} {' '.join(args)}", file=sys.stderr, flush=True)
    started = time.monotonic()
    # Its progress and log lines go to stderr: stdout is for the table alone.
    result = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", *args, "--json", str(out)],
        cwd=HERE.parent,
        stdout=sys.stderr,
        check=False,
    )
    print(f"   {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    # 0: targets met, 1: a target missed; anything else (or no lines) is a crash.
    if result.returncode not in (0, 1) or not out.exists():
        return [], True
    return load(out), False


def main() -> int:
    """Run them all, print one table; 1 if any target was missed or any benchmark crashed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--county", action="store_true", help="also the 5,000 × 10 fan-out (slow)")
    county = parser.parse_args().county or os.environ.get("WARND_BENCH_COUNTY") == "1"
    runs = [(name, []) for name in benchmarks()] + EXTRA + (COUNTY if county else [])
    lines: list[Line] = []
    crashed = []
    with tempfile.TemporaryDirectory(prefix="warnd-bench-all-") as tmp:
        for i, (name, args) in enumerate(runs):
            got, crash = run_one(name, args, Path(tmp) / f"{i}.json")
            lines += got
            if crash:
                crashed.append(name)
    print(f"\nwarnd benchmarks — {machine()}\n")
    print("Each cell: min / median / max of the repetitions; a target is judged on the median.\n")
    print(render(lines))
    if crashed:
        print(f"\ncrashed: {', '.join(crashed)}")
    missed = [x.what for x in lines if x.ok is False]
    print(f"\n{'MISSED: ' + '; '.join(missed) if missed else 'every target met'}")
    return 1 if missed or crashed else 0


if __name__ == "__main__":
    sys.exit(main())
