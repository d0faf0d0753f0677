"""A big batch of device acks is worked through in slices, the event loop running between them.

The device hub takes up to 1,000 acks per store transaction; checking them (and, after the
commit, counting and grouping them in the feedback stage) in one go held the loop 90–130 ms
in bench/ack_backlog.py. Observed here through the metrics each slice moves, once per pass of
the loop: never more than a slice between two passes. Counted, not timed.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.support.wait import until
from warnd.clock import FakeClock, Wakeup
from warnd.config import MqttSettings
from warnd.directory import Directory, DirectoryFile
from warnd.feedback import YIELD_EVERY, AckReport, Feedback
from warnd.metrics import Metrics
from warnd.mqtt.devices import ACK_BATCH, CHECK_SLICE, DeviceHub
from warnd.mqtt.link import MqttLink
from warnd.store import NewDelivery, Outcome, Store


async def steps_per_pass(sample: Any, work: Any) -> list[float]:
    """Run `work` while a task samples `sample()` once per pass of the loop; the increases seen."""
    values: list[float] = []

    async def ticks() -> None:
        while True:
            values.append(sample())
            await asyncio.sleep(0)

    ticker = asyncio.create_task(ticks())
    try:
        await work()
    finally:
        ticker.cancel()
    values.append(sample())
    return [b - a for a, b in itertools.pairwise(values)]


async def test_the_hub_checks_a_batch_a_slice_per_pass_of_the_loop(tmp_path: Path) -> None:
    """1,000 acks from devices warnd does not know: refused (and counted) a slice at a time."""
    metrics = Metrics()
    clock = FakeClock()
    async with Store(tmp_path / "w.db") as store:
        feedback = Feedback(store, clock, Wakeup(), metrics=metrics)
        link = MqttLink(MqttSettings(url="mqtt://127.0.0.1:1"), manual_ack=True, name="test")
        directory = Directory(DirectoryFile())
        hub = DeviceHub(link, directory=lambda: directory, feedback=feedback, store=store, clock=clock)
        body = json.dumps({"msg_id": "m", "status": "played"}).encode()
        for i in range(ACK_BATCH):
            hub.queue.put_nowait((f"spk-{i}", "ack", body, None))
        loop = asyncio.create_task(hub.devices_loop())

        def refused() -> float:
            labels = {"reason": "unknown_device"}
            return metrics.registry.get_sample_value("warnd_device_acks_refused_total", labels) or 0.0

        async def all_refused() -> None:
            await until(lambda: refused() >= ACK_BATCH, 10, what="every ack refused")

        try:
            steps = await steps_per_pass(refused, all_refused)
        finally:
            loop.cancel()
            await asyncio.gather(loop, return_exceptions=True)
    assert sum(steps) == ACK_BATCH
    assert max(steps) == CHECK_SLICE


async def test_feedback_counts_a_big_batch_a_slice_per_pass_of_the_loop(tmp_path: Path) -> None:
    """1,000 matched acks in one call: stored in one transaction, counted a slice at a time."""
    metrics = Metrics()
    clock = FakeClock()
    now = datetime(2026, 7, 1, tzinfo=UTC)
    n = 1000
    async with Store(tmp_path / "w.db") as store:
        warning = {"id": "W1", "source": "api", "event": "暴雨", "level": "red", "status": "actual",
                   "headline": "h", "area": "{}", "villages": "[]", "state": "active",
                   "created_at": "x", "updated_at": "x"}  # fmt: skip
        await store.accept(warning, audit={"at": "x", "actor": "t", "action": "issue"}, jobs=[])
        planned = [
            NewDelivery(f"m{i // 10}", "W1", "issue", "warning", "loudspeaker", f"spk-{i}", now)
            for i in range(n)
        ]
        await store.add_deliveries(planned, now)
        claimed = await store.claim(now, n, ["loudspeaker"])
        await store.record([(Outcome(d.id, "sent"), None) for d in claimed], now)
        feedback = Feedback(store, clock, Wakeup(), metrics=metrics)
        reports = [AckReport("mqtt", "played", d.msg_id, d.target) for d in planned]

        def counted() -> float:
            labels = {"channel": "loudspeaker", "status": "played"}
            return metrics.registry.get_sample_value("warnd_acks_total", labels) or 0.0

        rows: list[Any] = []

        async def work() -> None:
            rows.extend(await feedback.ack_many(reports))

        steps = await steps_per_pass(counted, work)
    assert all(r is not None and r["state"] == "acknowledged" for r in rows)
    assert sum(steps) == n
    assert max(steps) == YIELD_EVERY
