"""The broker goes away mid fan-out, or for longer than every retry budget: nothing lost, nothing twice.

Real processes throughout: warnd (`python -m warnd.cli run`), its own Mosquitto stopped and
started on the same port, and the counting receiver standing in for 2,000 loudspeakers in 200
villages and their 200 LED boards (see tests/faults/fleet.py for what is asserted).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.fleet import CODES, Fleet
from tests.support.mqtt import Broker, mosquitto_binary
from tests.support.wait import wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto is not installed"),
]

OUTAGE_S = 20


@pytest.fixture
def brokers(tmp_path: Path) -> Iterator[list[Broker]]:
    """Brokers a test makes, stopped at its end."""
    made: list[Broker] = []
    yield made
    for b in made:
        b.stop()


def _broker(tmp_path: Path, brokers: list[Broker], **options: object) -> Broker:
    """A started broker of this test."""
    workdir = tmp_path / "broker"
    workdir.mkdir()
    b = Broker(workdir, **options)  # type: ignore[arg-type]
    b.start()
    brokers.append(b)
    return b


@pytest.mark.parametrize("persistence", [False, True], ids=["persistence-off", "persistence-on"])
def test_broker_stopped_mid_fan_out(tmp_path: Path, brokers: list[Broker], persistence: bool) -> None:
    """Broker down for 20 s in the middle of a 2,200-device fan-out, its queues lost or kept.

    Mosquitto's default window of 20 messages in flight per client, and a receiver that takes
    15 ms per command, keep most of the fan-out queued in the broker when it stops: without
    persistence those commands are gone, although warnd's store says they were sent.
    """
    broker = _broker(tmp_path, brokers, persistence=persistence, max_inflight_messages=20)
    fleet = Fleet(tmp_path, broker, receiver_delay_ms=15).start()
    try:
        fleet.issue(CODES)
        total = 2 * len(CODES)  # a command per village and one per board
        wait_for(lambda: fleet.commands_received() >= 20, 30, "the fan-out to start")
        broker.stop()
        at_stop = fleet.commands_received()
        assert at_stop < total, "the outage came too late to interrupt the fan-out"
        fleet.wait_ready(False)  # /readyz says not ready while the broker is away
        time.sleep(OUTAGE_S)
        broker.start()
        fleet.wait_ready(True)
        problems = fleet.wait_settled(60)
        assert not problems, f"{at_stop} of {total} commands received at the outage; then: {problems}"
    finally:
        fleet.close()


def test_outage_longer_than_every_retry_budget(tmp_path: Path, brokers: list[Broker]) -> None:
    """A red warning issued while the broker is down for longer than warnd would ever retry.

    The issue's outage lasts 5 minutes against the default budget (8 attempts, 2 s doubling to
    600 s: about 4 minutes). Here the budget is shrunk instead (3 attempts, 0.2 s doubling to
    1 s: under a second), so a 25 s outage still outlasts every retry budget many times over.
    """
    broker = _broker(tmp_path, brokers)
    env = {
        "WARND_DISPATCH__MAX_ATTEMPTS": "3",
        "WARND_DISPATCH__BACKOFF_BASE_S": "0.2",
        "WARND_DISPATCH__BACKOFF_CAP_S": "1.0",
    }
    fleet = Fleet(tmp_path, broker, env=env).start()
    try:
        broker.stop()
        fleet.wait_ready(False)
        started = time.monotonic()
        time.sleep(2)
        fleet.issue(CODES)
        time.sleep(max(0.0, 25 - (time.monotonic() - started)))
        dead = [r for r in fleet.deliveries() if r["state"] == "dead"]
        assert not dead, f"{len(dead)} deliveries dead during the outage: {dead[0]['last_error']}"
        broker.start()
        fleet.wait_ready(True)
        problems = fleet.wait_settled(60)
        assert not problems, problems
    finally:
        fleet.close()
