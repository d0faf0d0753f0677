"""The sysadmin's files: alert rules name real metrics; `make install` stages cleanly and can be re-run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.feeds import feed, feed_harness
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
    assert "usage:" in run("warnd-sim", "--help")
    where = run("python", "-c", "import sys, warnd; print(sys.prefix, warnd.__file__)")
    venv_prefix, warnd_file = where.split()
    assert venv_prefix == str(prefix / "venv")
    assert warnd_file.startswith(str(prefix / "venv/lib/"))

async def test_only_feeds_expected_to_speak_have_an_expected_interval(tmp_path: Path) -> None:
    """Poll feeds and push/MQTT feeds with expected_interval_s get the series; quiet ones and `api` do not."""
    feeds = [
        feed("cma", "push"),
        feed("beat", "push", expected_interval_s=600),
        feed("county", "poll", url="http://127.0.0.1:9/cap.xml", interval_s=120),
        feed("slow", "poll", url="http://127.0.0.1:9/slow.xml", expected_interval_s=7200),
        feed("bridge", "mqtt", topic="cap/alerts"),
    ]
    h = await feed_harness(tmp_path, feeds)
    try:
        for name in ("cma", "beat", "county", "slow", "bridge", "api"):
            await h.daemon.feeds.records.succeeded(name, h.clock.now())
        text = await (await h.client.get("/metrics")).text()
    finally:
        await h.close()

    def series(metric: str) -> dict[str, float]:
        """feed → value of one metric family."""
        found = re.findall(rf'^{metric}{{feed="([^"]+)"}} (\S+)$', text, flags=re.MULTILINE)
        return {name: float(value) for name, value in found}

    assert series("warnd_feed_expected_interval_seconds") == {"beat": 600, "county": 120, "slow": 7200}
    assert set(series("warnd_feed_last_success_timestamp_seconds")) == {
        "cma",
        "beat",
        "county",
        "slow",
        "bridge",
        "api",
    }


def _rule(name: str) -> str:
    """One alert rule's text from deploy/warnd-alerts.yml."""
    text = ALERTS.read_text(encoding="utf-8")
    assert f"- alert: {name}\n" in text, name
    return text.split(f"- alert: {name}\n", 1)[1].split("- alert:", 1)[0]


def test_feed_stale_alert_needs_an_expected_interval() -> None:
    """The stale-feed rule compares silence with the expected interval: a feed without one never matches."""
    rule = _rule("WarndFeedStale")
    assert "warnd_feed_expected_interval_seconds" in rule
    assert "1800" in rule  # the floor that keeps a short outage from paging at night


# Four feeds of one warnd, from t=0 for two hours: last success stuck at t=1 s, except `fresh`.
_FEED_SERIES = """
      - series: 'warnd_feed_last_success_timestamp_seconds{job="warnd", instance="w:8080", feed="quiet"}'
        values: '1x120'
      - series: 'warnd_feed_last_success_timestamp_seconds{job="warnd", instance="w:8080", feed="county"}'
        values: '1x120'
      - series: 'warnd_feed_last_success_timestamp_seconds{job="warnd", instance="w:8080", feed="beat"}'
        values: '1x120'
      - series: 'warnd_feed_last_success_timestamp_seconds{job="warnd", instance="w:8080", feed="fresh"}'
        values: '0+60x120'
      - series: 'warnd_feed_expected_interval_seconds{job="warnd", instance="w:8080", feed="county"}'
        values: '60x120'
      - series: 'warnd_feed_expected_interval_seconds{job="warnd", instance="w:8080", feed="beat"}'
        values: '1200x120'
      - series: 'warnd_feed_expected_interval_seconds{job="warnd", instance="w:8080", feed="fresh"}'
        values: '60x120'
"""


_FEED_STALE_DESCRIPTION = (
    "Check the feed's URL and token, and the county network link; GET /api/v1/feeds shows last_error."
)


def _stale(feed_name: str, silence: str) -> str:
    """An expected WarndFeedStale alert."""
    return f"""
          - exp_labels: {{severity: page, job: warnd, instance: "w:8080", feed: {feed_name}}}
            exp_annotations:
              summary: "warnd feed {feed_name} has not succeeded for {silence}"
              description: "{_FEED_STALE_DESCRIPTION}"
"""


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool (Debian package prometheus) is not installed"
)
def test_feed_stale_alert_with_promtool(tmp_path: Path) -> None:
    """Quiet push feed: never. Stuck 1-min poll feed: after the 30-min floor. 20-min heartbeat: after 60."""
    # Each of those fires `for: 5m` after its threshold; a feed that keeps succeeding never does.
    tests = tmp_path / "feed_stale_test.yml"
    tests.write_text(
        f"""rule_files: ["{ALERTS}"]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:{_FEED_SERIES}
    alert_rule_test:
      - eval_time: 34m
        alertname: WarndFeedStale
        exp_alerts: []
      - eval_time: 40m
        alertname: WarndFeedStale
        exp_alerts:{_stale("county", "39m 59s")}
      - eval_time: 70m
        alertname: WarndFeedStale
        exp_alerts:{_stale("county", "1h 9m 59s")}{_stale("beat", "1h 9m 59s")}
      - eval_time: 120m
        alertname: WarndFeedStale
        exp_alerts:{_stale("county", "1h 59m 59s")}{_stale("beat", "1h 59m 59s")}
""",
        encoding="utf-8",
    )
    checked = subprocess.run(
        ["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    done = subprocess.run(
        ["promtool", "test", "rules", str(tests)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
