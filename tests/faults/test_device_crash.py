"""SIGKILL warnd ten times at random moments of a 2,200-device fan-out: nothing lost, nothing twice.

Real processes: warnd (`python -m warnd.cli run`), Mosquitto set up as docs/deploy.md says
(persistence, queues sized for a county), and the counting receiver for 2,000 loudspeakers in
200 villages and their 200 LED boards (tests/faults/fleet.py). The broker and the devices stay
up; warnd dies with commands half published and acks half stored, and starts again.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from tests.faults.fleet import CODES, Fleet
from tests.support.mqtt import Broker, mosquitto_binary

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto is not installed"),
]

KILLS = 10


def test_sigkill_ten_times_mid_fan_out(tmp_path: Path) -> None:
    """Ten kills, each restarted; a second warning arrives half way through."""
    # A seed per run (printed on failure), or WARND_FAULT_SEED to replay one.
    seed = int(os.environ.get("WARND_FAULT_SEED") or random.randrange(1 << 30))
    rng = random.Random(seed)
    (tmp_path / "broker").mkdir()
    broker = Broker(tmp_path / "broker", persistence=True, max_inflight_messages=1000)
    broker.start()
    fleet = Fleet(tmp_path, broker)
    try:
        fleet.start()
        fleet.issue(CODES)
        for i in range(KILLS):
            time.sleep(rng.uniform(0.2, 2.0))
            fleet.warnd.kill()
            fleet.warnd.start()
            if i == KILLS // 2:
                fleet.issue(CODES[:100], event="山洪", headline="塘甸镇山洪灾害红色预警")
        problems = fleet.wait_settled(60)
        assert not problems, f"seed {seed}: {problems}"
    finally:
        fleet.close()
        broker.stop()
