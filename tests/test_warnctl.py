"""`warnctl` against a real township (warnd, Mosquitto, simulated speakers): sign-off, watch to
100 %, tables and --json, and the exit codes scripts rely on (0 done, 1 failed or timed out,
2 usage, 3 unreachable) with no traceback, not even on a broken pipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.harness import TOKENS, warning_body
from tests.support.mqtt import Broker, free_port
from tests.support.process import ROOT, DaemonProcess
from tests.support.township import VILLAGES, township

pytestmark = pytest.mark.slow


@pytest.fixture
def warnd(tmp_path: Path, broker: Broker) -> Iterator[DaemonProcess]:
    """A township with sign-off on."""
    with township(tmp_path, broker) as daemon:
        yield daemon


def ctl(
    url: str, *args: str, role: str | None = "operator", timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    """`warnctl --url URL …` with the role's token."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WARND_TOKEN": TOKENS[role] if role else ""}
    return subprocess.run(
        [sys.executable, "-m", "warnd.ctl", "--url", url, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def test_issue_sign_off_and_watch_to_100_percent(warnd: DaemonProcess, tmp_path: Path) -> None:
    """Issued, it waits; the drafter's approval is refused; an approver's releases it; watch sees 100 %."""
    url = warnd.url
    body = tmp_path / "w.json"
    body.write_text(json.dumps(warning_body(area={"codes": list(VILLAGES)}), ensure_ascii=False), "utf-8")
    r = ctl(url, "issue", "--file", str(body))
    assert r.returncode == 0, r.stderr
    wid = r.stdout.strip()
    assert "awaiting approval" in r.stderr
    shown = ctl(url, "show", wid, role="viewer").stdout
    assert "待签发 awaiting_approval" in shown
    # A watch of a draft that nobody signs off times out: exit 1.
    r = ctl(url, "watch", wid, "--timeout", "2", role="viewer")
    assert r.returncode == 1 and "within 2 s" in r.stderr, r.stderr
    # The operator may not approve (role), nor may anyone their own draft.
    r = ctl(url, "approve", wid)
    assert r.returncode == 1 and "HTTP 403" in r.stderr
    r = ctl(url, "approve", wid, role="approver")
    assert r.returncode == 0, r.stderr
    assert "approved (warning): active" in r.stdout
    r = ctl(url, "watch", wid, "--timeout", "60", role="viewer")
    assert r.returncode == 0, r.stderr + r.stdout
    assert "100 %" in r.stdout and "大喇叭 4/4" in r.stdout and "电子屏 2/2" in r.stdout
    assert "Traceback" not in r.stderr
    # Tables in Chinese; --json for scripts.
    shown = ctl(url, "show", wid, role="viewer").stdout
    assert "覆盖 coverage:" in shown and "大喇叭" in shown
    listed = json.loads(ctl(url, "list", "--json", role="viewer").stdout)
    assert [w["id"] for w in listed["warnings"]] == [wid]
    devices = ctl(url, "devices", role="viewer").stdout
    assert "在线" in devices and "spk-330502101201-1" in devices
    report = json.loads(ctl(url, "report", wid, "--json", role="viewer").stdout)
    assert report["confirmations"]["confirmed"] == report["confirmations"]["required"]
    assert ctl(url, "report", wid, "--csv", role="viewer").stdout.startswith("section,")
    r = ctl(url, "cancel", wid, "--reason", "雨停")
    assert (r.returncode, r.stdout.strip()) == (0, f"{wid} cancelled")


def test_reject_and_update_flags(warnd: DaemonProcess) -> None:
    """`reject` ends a draft; `update` takes flags and waits for sign-off as the level needs."""
    url = warnd.url
    flags = ["--event", "山洪", "--level", "orange", "--headline", "山洪橙色预警", "--code", VILLAGES[0]]
    draft = ctl(url, "issue", *flags).stdout.strip()
    r = ctl(url, "reject", draft, "--reason", "数据有误", role="approver")
    assert r.returncode == 0 and "rejected (warning): rejected" in r.stdout
    wid = ctl(url, "issue", *flags).stdout.strip()
    assert ctl(url, "approve", wid, role="admin").returncode == 0
    r = ctl(url, "update", wid, "--headline", "山洪橙色预警（更新）")
    assert (r.returncode, r.stdout.strip()) == (0, f"{wid} update awaits approval")
    r = ctl(url, "approve", wid, role="approver")
    assert "approved (update)" in r.stdout
    assert "山洪橙色预警（更新）" in ctl(url, "show", wid, role="viewer").stdout


def test_unreachable_is_exit_3_with_one_line() -> None:
    """Nothing listens: exit 3 and one line saying why, whatever the command."""
    url = f"http://127.0.0.1:{free_port()}"
    for args in (("list",), ("watch", "W20260101-00000000", "--timeout", "5"), ("approve", "W1")):
        r = ctl(url, *args, timeout_s=30)
        assert r.returncode == 3, (args, r.stderr)
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("warnctl: cannot reach warnd at"), r.stderr


def test_usage_is_exit_2() -> None:
    """A wrong command line: exit 2, as argparse says."""
    assert ctl("http://127.0.0.1:9", "frobnicate").returncode == 2
    assert ctl("http://127.0.0.1:9", "reject", "W1").returncode == 2  # --reason is required


def test_no_traceback_on_a_broken_pipe(warnd: DaemonProcess) -> None:
    """`warnctl preview … | head -1`: the reader goes away, warnctl goes quietly."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WARND_TOKEN": TOKENS["operator"]}
    flags = ["--event", "暴雨", "--level", "red", "--headline", "暴雨红色预警", "--code", VILLAGES[0]]
    cmd = [sys.executable, "-m", "warnd.ctl", "--url", warnd.url, "preview", *flags]
    ctl_proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert ctl_proc.stdout is not None and ctl_proc.stderr is not None
    # The reader is gone before warnctl writes a line (a pipe's buffer would hide a later close).
    ctl_proc.stdout.close()
    stderr = ctl_proc.stderr.read().decode()
    assert ctl_proc.wait(30) == 1
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr
