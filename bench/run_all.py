"""`make bench`: run every benchmark in bench/ in turn; each prints its own ratios."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def benchmarks() -> list[str]:
    """The benchmarks: bench/*.py but this file; helpers such as the load peer start with `_`."""
    return [
        script.stem
        for script in sorted(HERE.glob("*.py"))
        if script.name != "run_all.py" and not script.name.startswith("_")
    ]


def main() -> int:
    """Run each benchmark as `python -m bench.<name>`; fail if any fails."""
    failed = []
    for name in benchmarks():
        print(f"== {name}", flush=True)
        result = subprocess.run([sys.executable, "-m", f"bench.{name}"], cwd=HERE.parent, check=False)
        if result.returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
