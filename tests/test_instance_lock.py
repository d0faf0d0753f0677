"""One warnd per state directory (flock on warnd.lock), and an MQTT client id unique per host and township."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.county import TOWNSHIP, write_directory
from tests.support.feeds import feed
from tests.support.harness import Harness
from tests.support.mqtt import Broker, free_port
from tests.support.process import ROOT, DaemonProcess, write_config
from tests.support.wait import wait_for
from warnd.config import mqtt_client_id

# The host part as the default id spells it: first DNS label, letters, digits and hyphens.
HOST = re.sub(r"[^A-Za-z0-9-]+", "-", socket.gethostname().split(".")[0]).strip("-") or "host"


def _connected_as(log: Path, within_s: float = 20) -> str:
    """The client id of the first `mqtt.connected` line in a daemon's log."""

    def first() -> str | None:
        lines = [ln for ln in log.read_text(encoding="utf-8").splitlines() if '"mqtt.connected"' in ln]
        return lines[0] if lines else None

    return json.loads(wait_for(first, within_s, "an mqtt.connected line in the log"))["client_id"]


def test_a_second_warnd_on_the_same_state_directory_exits_at_once(tmp_path: Path, broker: Broker) -> None:
    """The second prints one line naming the holder's pid and the lock, exits non-zero; the first serves on.

    After the first is SIGKILLed the kernel has dropped its lock: the pid left in the file keeps
    nobody out.
    """
    port = free_port()
    directory = write_directory(tmp_path / "d.toml")
    config = write_config(tmp_path, directory, port, extra=f'[mqtt]\nurl = "{broker.url}"\n')
    argv = ["-m", "warnd.cli", "run", "--config", str(config)]
    lock = tmp_path / "state" / "warnd.lock"
    first = DaemonProcess(argv, port, tmp_path / "first.log").start()
    third = None
    try:
        assert first.proc is not None
        assert _connected_as(first.log_path) == f"warnd-{HOST}-{TOWNSHIP}"
        assert lock.read_text().strip() == str(first.proc.pid)

        started = time.monotonic()
        second = subprocess.run(
            [sys.executable, *argv],
            cwd=ROOT,
            # Another HTTP port: what stops it must be the lock, not a port in use.
            env={**first.env, "WARND_HTTP__PORT": str(free_port())},
            capture_output=True,
            timeout=60,
            check=False,
        )
        elapsed = time.monotonic() - started
        assert second.returncode == os.EX_TEMPFAIL, second
        assert second.stderr.decode().splitlines() == [
            f"warnd: another warnd (pid {first.proc.pid}) holds {lock}"
        ]
        assert b"warnd.started" not in second.stdout
        assert elapsed < 15, elapsed  # an interpreter start and the imports, no waiting
        assert first.call("GET", "/api/v1/warnings", role="viewer")[0] == 200
        assert lock.read_text().strip() == str(first.proc.pid)

        first.kill()
        third = DaemonProcess(argv, port, tmp_path / "third.log").start()
        assert third.proc is not None
        assert lock.read_text().strip() == str(third.proc.pid)
        assert third.terminate() == 0
    finally:
        for d in (first, third):
            if d is not None and d.proc is not None and d.proc.poll() is None:
                d.kill()


@pytest.mark.parametrize(
    ("hostname", "codes", "expected"),
    [
        ("dutyroom", ["330502101201", "330502101202", "330502101299"], "warnd-dutyroom-330502101"),
        ("duty-pc.tangdian.example.cn", ["330502101201"], "warnd-duty-pc-330502101201"),
        ("warnd_01", ["330502101201", "330502102201"], "warnd-warnd-01-330502"),
        ("warnd", ["330502101201", "110101001001"], "warnd-warnd"),
        ("值班室", [], "warnd-host"),
    ],
)
def test_default_client_id_names_host_and_township(hostname: str, codes: list[str], expected: str) -> None:
    """Township (9 digits), single village (12), county (6); no shared county or no host: left out."""
    assert mqtt_client_id(hostname, codes) == expected


async def test_the_daemon_fills_the_default_and_an_explicit_id_wins(tmp_path: Path) -> None:
    """Left unset: warnd-{host}-{township}, also for the feeds' own link. Set: kept as it is."""
    mqtt_feed = feed("county", "mqtt", topic="county/cap")
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
    h = await Harness(tmp_path / "a", settings={"feed": [mqtt_feed]}).start()
    try:
        assert h.daemon.settings.mqtt.client_id == f"warnd-{HOST}-{TOWNSHIP}"
        assert h.daemon.feeds.mqtt is not None
        assert h.daemon.feeds.mqtt.link.client_id == f"warnd-{HOST}-{TOWNSHIP}-feeds"
    finally:
        await h.close()
    h = await Harness(tmp_path / "b", settings={"mqtt": {"client_id": "tangdian-warnd"}}).start()
    try:
        assert h.daemon.settings.mqtt.client_id == "tangdian-warnd"
    finally:
        await h.close()
