"""`make bench`: run every benchmark in bench/ in turn; each prints its own ratios."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    """Run each bench/*.py (but this file) as `python -m bench.<name>`; fail if any fails."""
    failed = []
    for script in sorted(HERE.glob("*.py")):
        if script.name in ("run_all.py", "__init__.py") or script.name.startswith("_"):
            continue
        print(f"== {script.stem}", flush=True)
        result = subprocess.run([sys.executable, "-m", f"bench.{script.stem}"], cwd=HERE.parent, check=False)
        if result.returncode != 0:
            failed.append(script.stem)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
