"""The built wheel carries what warnd reads from its package at run time: the console's static
files, the schema migrations and the CAP schema (an install from the wheel has no source tree)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# pip's words when it cannot fetch the build backend (no index, no network): nothing to test then.
OFFLINE = re.compile(
    r"No matching distribution found|Could not find a version that satisfies|Failed to establish"
    r"|Network is unreachable|Temporary failure in name resolution|ProxyError|Max retries exceeded"
)


def build_wheel(out: Path) -> Path:
    """`pip wheel . --no-deps` into `out`; the wheel's path (skips when the backend is out of reach)."""
    cmd = [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--quiet", "-w", str(out)]
    if importlib.util.find_spec("hatchling") is not None:
        cmd.append("--no-build-isolation")  # the backend is here: build offline
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        if OFFLINE.search(done.stdout + done.stderr):
            pytest.skip(f"the build backend cannot be fetched offline: {done.stderr.strip()[-200:]}")
        pytest.fail(f"pip wheel failed:\n{done.stdout}\n{done.stderr}")
    (wheel,) = out.glob("warnd-*.whl")
    return wheel


def package_files(folder: str, pattern: str) -> set[str]:
    """The files of a package folder in the source tree, as paths inside the wheel."""
    return {p.relative_to(ROOT).as_posix() for p in (ROOT / folder).glob(pattern) if p.is_file()}


def test_the_wheel_carries_the_console_migrations_and_schema(tmp_path: Path) -> None:
    """Every static file of the console, every migration and the CAP XSD are in the wheel."""
    names = set(zipfile.ZipFile(build_wheel(tmp_path)).namelist())
    static = package_files("warnd/console/static", "*")
    migrations = package_files("warnd/migrations", "*.sql")
    assert {"warnd/console/static/index.html", "warnd/console/static/app.js"} <= static
    assert "warnd/migrations/0001_initial.sql" in migrations
    assert static - names == set()
    assert migrations - names == set()
    assert "warnd/schema/CAP-v1.2.xsd" in names
    # The adapters are installed beside warnd (imported only by it), and no test rides along.
    assert "adapters/providers/aliyun.py" in names
    assert not any(n.startswith("tests/") for n in names)
