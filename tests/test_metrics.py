"""/metrics: parses as Prometheus text, and moves as a warning is sent, fails, retries and is confirmed."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.support import db
from tests.support.harness import Harness, warning_body
from warnd.api.auth import hash_token

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(h: Harness, **kw: object) -> Samples:
    """GET /metrics and parse it with prometheus-client's own parser."""
    resp = await h.client.get("/metrics", **kw)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/plain; version=")
    out: Samples = {}
    for family in text_string_to_metric_families(await resp.text()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value, 0 when absent (a labelled counter appears on first use)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_counters_move_as_a_warning_is_delivered_and_confirmed(harness: Harness) -> None:
    """Issue, send, confirm: gauges from the store and the pipeline's counters all follow."""
    before = await scrape(harness)
    assert value(before, "warnd_outbox_depth", channel="loudspeaker") == 0
    assert value(before, "warnd_adapter_up", channel="loudspeaker") == 1
    # The process collector is registered in the daemon's own registry too.
    assert ("process_virtual_memory_bytes", ()) in before or ("process_cpu_seconds_total", ()) in before

    wid = await harness.issue(warning_body())
    queued = await scrape(harness)
    assert value(queued, "warnd_warnings", level="red", state="active") == 1
    assert value(queued, "warnd_jobs_pending", kind="step") >= 1

    await harness.run_until_idle()
    sent = await scrape(harness)
    assert value(sent, "warnd_delivery_outcomes_total", channel="loudspeaker", outcome="sent") == 2
    assert value(sent, "warnd_delivery_outcomes_total", channel="sms", outcome="sent") == 3
    assert value(sent, "warnd_deliveries", channel="loudspeaker", state="sent") == 2
    assert value(sent, "warnd_outbox_depth", channel="loudspeaker") == 0
    assert value(sent, "warnd_send_duration_seconds_count", channel="loudspeaker") >= 1
    assert value(sent, "warnd_time_to_ack_seconds_count", channel="loudspeaker") == 0

    harness.clock.advance(42)
    rows = [d for d in await harness.store.deliveries_for(wid) if d["channel"] == "loudspeaker"]
    for d in rows:
        assert await harness.daemon.feedback.ack(
            source="mqtt", status="played", msg_id=d["msg_id"], target=d["target"]
        )
    # A second report for a confirmed delivery counts as an ack, not as a second confirmation.
    await harness.daemon.feedback.ack(
        source="mqtt", status="played", msg_id=rows[0]["msg_id"], target=rows[0]["target"]
    )
    confirmed = await scrape(harness)
    assert value(confirmed, "warnd_acks_total", channel="loudspeaker", status="played") == 3
    assert value(confirmed, "warnd_time_to_ack_seconds_count", channel="loudspeaker") == 2
    assert value(confirmed, "warnd_time_to_ack_seconds_sum", channel="loudspeaker") == 84
    assert value(confirmed, "warnd_time_to_ack_seconds_bucket", channel="loudspeaker", le="30.0") == 0
    assert value(confirmed, "warnd_time_to_ack_seconds_bucket", channel="loudspeaker", le="60.0") == 2
    assert value(confirmed, "warnd_deliveries", channel="loudspeaker", state="acknowledged") == 2


async def test_retries_dead_and_errors_by_reason(tmp_path: Path) -> None:
    """A transient failure is a retry and an error; a permanent one is dead; the outbox shows the wait."""
    h = await Harness(
        tmp_path,
        channels=["loudspeaker"],
        script={"spk-330502101201-1": ["transient:60"], "spk-330502101201-2": ["permanent"]},
    ).start()
    try:
        await h.issue(warning_body())
        await h.run_until_idle()
        h.clock.advance(90)  # the retry is now 30 s overdue: nothing sends it in this test
        m = await scrape(h)
        assert value(m, "warnd_delivery_retries_total", channel="loudspeaker") == 1
        assert value(m, "warnd_deliveries_dead_total", channel="loudspeaker") == 1
        assert value(m, "warnd_adapter_errors_total", channel="loudspeaker", reason="transient") == 1
        assert value(m, "warnd_adapter_errors_total", channel="loudspeaker", reason="permanent") == 1
        assert value(m, "warnd_outbox_depth", channel="loudspeaker") == 1
        assert 29 <= value(m, "warnd_outbox_oldest_overdue_seconds", channel="loudspeaker") <= 31
        assert value(m, "warnd_deliveries", channel="loudspeaker", state="dead") == 1
    finally:
        await h.close()


async def test_each_daemon_has_its_own_registry(tmp_path: Path) -> None:
    """Two daemons in one process count separately."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = await Harness(tmp_path / "a", channels=["led"]).start()
    b = await Harness(tmp_path / "b", channels=["led"]).start()
    try:
        await a.issue(warning_body())
        await a.run_until_idle()
        ma, mb = await scrape(a), await scrape(b)
        assert value(ma, "warnd_delivery_outcomes_total", channel="led", outcome="sent") == 1
        assert value(mb, "warnd_delivery_outcomes_total", channel="led", outcome="sent") == 0
    finally:
        await a.close()
        await b.close()


async def test_metrics_token_when_configured(tmp_path: Path) -> None:
    """With [http] metrics_token_hash, /metrics wants that bearer token and no other."""
    h = await Harness(
        tmp_path,
        channels=["led"],
        settings={"http": {"port": 0, "metrics_token_hash": hash_token("scrape-me")}},
    ).start()
    try:
        assert (await h.client.get("/metrics")).status == 401
        wrong = await h.client.get("/metrics", headers=h.headers("admin"))
        assert wrong.status == 401
        assert (await wrong.json())["error"]["code"] == "unauthorized"
        m = await scrape(h, headers={"Authorization": "Bearer scrape-me"})
        assert ("warnd_adapter_up", (("channel", "led"),)) in m
    finally:
        await h.close()


async def test_devices_and_feeds_from_the_store(harness: Harness) -> None:
    """Devices by last status (unknown when never reported) and feed health come from their tables."""
    await db.execute(
        harness.store,
        "INSERT INTO devices (id, online) VALUES ('spk-330502101201-1', 1), ('spk-330502101201-2', 0),"
        " ('led-330502101201-1', 0), ('not-in-the-directory', 0)",
    )
    await db.execute(
        harness.store,
        "INSERT INTO feed_health (feed, last_success, failures) VALUES"
        " ('cma', '2026-07-01T00:00:00.000000Z', 0), ('never', NULL, 3)",
    )
    m = await scrape(harness)
    speakers = sum(len(v.speakers) for v in harness.daemon.directory().villages.values())
    assert value(m, "warnd_devices", kind="loudspeaker", status="online") == 1
    assert value(m, "warnd_devices", kind="loudspeaker", status="offline") == 1
    assert value(m, "warnd_devices", kind="loudspeaker", status="unknown") == speakers - 2
    assert value(m, "warnd_devices", kind="led", status="offline") == 1
    assert value(m, "warnd_feed_last_success_timestamp_seconds", feed="cma") == 1782864000
    assert value(m, "warnd_feed_last_success_timestamp_seconds", feed="never") == 0
    assert value(m, "warnd_feed_consecutive_failures", feed="never") == 3


async def test_metrics_and_a_warning_answer_while_the_writer_is_held(harness: Harness) -> None:
    """/metrics and GET /api/v1/warnings/{id} read on their own connection: no write lock taken."""
    wid = await harness.issue(warning_body())
    await harness.run_until_idle()
    async with db.writer_held(harness.store, hold_s=30):
        assert harness.store.writing
        # Each would wait for `release` (30 s) if it needed the writer.
        samples = await asyncio.wait_for(scrape(harness), 5)
        assert value(samples, "warnd_deliveries", channel="loudspeaker", state="sent") == 2
        shown = await asyncio.wait_for(harness.get(wid), 5)
        assert shown["coverage"]["loudspeaker"]["sent"] == 2


async def test_event_loop_lag_is_exported_and_shows_a_blocked_loop(harness: Harness) -> None:
    """warnd_event_loop_lag_seconds is on /metrics; a loop blocked 0.3 s shows as ≥ 0.25 s of lag."""
    assert ("warnd_event_loop_lag_seconds", ()) in await scrape(harness)
    probe = asyncio.create_task(harness.daemon.metrics.loop_lag_loop(interval_s=0.02))
    try:
        await asyncio.sleep(0.1)
        time.sleep(0.3)  # noqa: ASYNC251 - blocking the loop is the point: the probe must see it
        await asyncio.sleep(0.1)
        assert value(await scrape(harness), "warnd_event_loop_lag_seconds") >= 0.25
    finally:
        probe.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await probe
