"""The sysadmin's files: alert rules name real metrics; `make install` stages cleanly and can be re-run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.harness import Harness
from warnd.config import load_settings

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "warnd-alerts.yml"
SUFFIXES = ("", "_total", "_created", "_bucket", "_sum", "_count")


async def test_alert_rules_use_only_metrics_warnd_exposes(harness: Harness) -> None:
    """Every warnd_* name in an alert expression is a metric /metrics declares (a renamed metric fails)."""
    text = await (await harness.client.get("/metrics")).text()
    families = re.findall(r"^# TYPE (\S+) ", text, flags=re.MULTILINE)
    exposed = {f + s for f in families for s in SUFFIXES}
    exprs = re.findall(r"expr: (\|\n(?:\s{10,}.*\n)+|.*)", ALERTS.read_text(encoding="utf-8"))
    used = {name for e in exprs for name in re.findall(r"\bwarnd_[a-z_]+", e)}
    assert len(used) >= 6, used
    assert used <= exposed, used - exposed


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_install_config_writes_once_and_keeps_edits(tmp_path: Path) -> None:
    """install-config writes a server config (no demo token) once; a second run keeps the sysadmin's edits."""
    makefile = tmp_path / "Makefile"
    makefile.write_text(f"PYTHON ?= python3\ninclude {ROOT}/mk/install.mk\n", encoding="utf-8")
    root = tmp_path / "root"

    def make() -> str:
        done = subprocess.run(
            ["make", "-f", str(makefile), "install-config", f"DESTDIR={root}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    make()
    config = root / "etc/warnd/warnd.toml"
    assert (root / "usr/lib/systemd/system/warnd.service").exists()
    assert (root / "usr/lib/sysusers.d/warnd.conf").exists()
    assert (root / "etc/warnd/directory.toml").exists()
    settings = load_settings(config)
    assert str(settings.state_dir) == "/var/lib/warnd"
    assert str(settings.directory.path) == "/etc/warnd/directory.toml"
    assert settings.auth.tokens == [], "the demo token must not open a server's API"
    config.write_text(config.read_text(encoding="utf-8") + "\n# edited by the sysadmin\n", encoding="utf-8")
    assert "keeping" in make()
    assert config.read_text(encoding="utf-8").endswith("# edited by the sysadmin\n")



# One real venv with every dependency from the package index: ~30 s with pip's cache, minutes without.
@pytest.mark.timeout(900)
@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_install_destdir_stages_a_venv_that_runs_from_its_prefix(tmp_path: Path) -> None:
    """`make install DESTDIR=…` as a packager runs it: no staged file names the stage; moved, it runs."""
    stage = tmp_path / "stage"
    prefix = tmp_path / "final" / "opt" / "warnd"
    done = subprocess.run(
        ["make", "install", f"DESTDIR={stage}", f"WARND_PREFIX={prefix}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=880,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (stage / prefix.relative_to("/") / "venv/bin/warnctl").exists()
    needle = str(stage).encode()
    leaks = []
    for dirpath, dirs, files in os.walk(stage):
        for name in dirs + files:
            path = Path(dirpath) / name
            if path.is_symlink():
                data = os.readlink(path).encode()
            elif path.is_file():
                data = path.read_bytes()
            else:
                continue
            if needle in data:
                leaks.append(str(path.relative_to(stage)))
    assert leaks == [], f"{len(leaks)} staged files name the staging dir, e.g. {leaks[:10]}"
    assert os.readlink(stage / "usr/local/bin/warnctl") == str(prefix / "venv/bin/warnctl")

    # What the package manager does: the staged tree lands at its final place and the stage is gone.
    prefix.parent.mkdir(parents=True)
    (stage / prefix.relative_to("/")).rename(prefix)
    shutil.rmtree(stage)

    def run(*argv: str) -> str:
        """Run a program of the installed venv with a bare PATH; its stdout."""
        ran = subprocess.run(
            [str(prefix / "venv/bin" / argv[0]), *argv[1:]],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=60,
            check=False,
            env={"PATH": "/usr/bin:/bin"},
        )
        assert ran.returncode == 0, ran.stdout + ran.stderr
        return ran.stdout

    assert "usage:" in run("warnctl", "--help")
    assert "usage:" in run("warnd", "--help")
    where = run("python", "-c", "import sys, warnd; print(sys.prefix, warnd.__file__)")
    venv_prefix, warnd_file = where.split()
    assert venv_prefix == str(prefix / "venv")
    assert warnd_file.startswith(str(prefix / "venv/lib/"))
