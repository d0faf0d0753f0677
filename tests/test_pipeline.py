"""The spine end to end in one process: accept → schedule → dispatch → coverage, cancel, retries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.support import db
from tests.support.harness import Harness, warning_body
from warnd.planner import step_deliveries
from warnd.scheduler import step_parts
from warnd.store import NewDelivery, from_ts


async def test_red_warning_reaches_every_device_and_person(harness: Harness) -> None:
    """A red warning for one village: its speakers, board, people and officials are each sent once."""
    wid = await harness.issue(warning_body())
    await harness.run_until_idle()
    spk = harness.adapter("loudspeaker").by_msg()
    assert sorted(t for _, t in spk) == ["spk-330502101201-1", "spk-330502101201-2"]
    # The village's speakers share one msg_id: one publish per village.
    assert len({m for m, _ in spk}) == 1
    assert all(n == 1 for n in spk.values())
    sms_targets = sorted(t for _, t in harness.adapter("sms").by_msg())
    assert sms_targets == ["grid-0", "off-0", "sec-0"]
    voice = sorted(t for _, t in harness.adapter("voice").by_msg())
    assert voice == ["off-0"]
    w = await harness.get(wid)
    assert w["state"] == "active"
    assert w["villages"] == ["330502101201"]
    five = ("expected", "sent", "delivered", "acknowledged", "failed")
    assert {k: w["coverage"]["loudspeaker"][k] for k in five} == {
        "expected": 2,
        "sent": 2,
        "delivered": 0,
        "acknowledged": 0,
        "failed": 0,
    }
    assert w["coverage"]["sms"]["sent"] == 3
    assert [s["step"] for s in w["schedule"]] == ["issue"]


async def test_drill_reaches_only_test_entries(harness: Harness) -> None:
    """An exercise never reaches the public: only the test village and test people."""
    await harness.issue(warning_body(status="exercise", area={"codes": ["330502101"]}))
    await harness.run_until_idle()
    assert {t for _, t in harness.adapter("loudspeaker").by_msg()} == {"spk-test-1"}
    assert {t for _, t in harness.adapter("sms").by_msg()} == {"tester"}


async def test_only_a_step_that_reaches_devices_gets_them_ready(harness: Harness) -> None:
    """An exercise of villages without test devices asks no device channel to get ready (no MP3
    rendered in vain); one of the test village, and a real warning, do."""
    quiet = await harness.issue(warning_body(status="exercise", sender="t", identifier="drill-public"))
    test = await harness.issue(
        warning_body(status="exercise", sender="t", identifier="drill-test", area={"codes": ["330502101299"]})
    )
    real = await harness.issue(warning_body(sender="t", identifier="real"))
    await harness.run_until_idle()
    ready = {wid for wid, _ in harness.adapter("loudspeaker").prepared}
    assert quiet not in ready
    assert {test, real} <= ready
    assert quiet not in {wid for wid, _ in harness.adapter("led").prepared}


async def test_same_idempotency_key_or_identifier_is_stored_once(harness: Harness) -> None:
    """The same submission twice answers with the same id and sends once."""
    body = warning_body()
    headers = {**harness.headers(), "Idempotency-Key": "abc-1"}
    r1 = await harness.client.post("/api/v1/warnings", json=body, headers=headers)
    r2 = await harness.client.post("/api/v1/warnings", json=body, headers=headers)
    assert r1.status == 202 and r2.status == 200
    assert (await r1.json())["id"] == (await r2.json())["id"]
    upstream = warning_body(sender="cma@12379", identifier="33050241600000_20260701080000_1")
    a = await harness.issue(upstream)
    r3 = await harness.client.post("/api/v1/warnings", json=upstream, headers=harness.headers())
    assert r3.status == 200 and (await r3.json())["id"] == a
    listing = await (await harness.client.get("/api/v1/warnings", headers=harness.headers("viewer"))).json()
    assert len(listing["warnings"]) == 2


async def test_transient_failures_retry_with_backoff_then_succeed(tmp_path: Path) -> None:
    """A speaker failing twice is retried after the backoff and reached once; a permanent one is dead."""
    h = await Harness(
        tmp_path,
        script={"spk-330502101201-1": ["transient", "transient:30"], "spk-330502101201-2": ["permanent"]},
    ).start()
    try:
        wid = await h.issue(warning_body())
        await h.run_until_idle()
        rows = {d["target"]: d for d in (await h.store.deliveries_for(wid)) if d["channel"] == "loudspeaker"}
        assert rows["spk-330502101201-1"]["state"] == "failed"
        assert rows["spk-330502101201-2"]["state"] == "dead"
        assert rows["spk-330502101201-2"]["attempts"] == 1
        h.clock.advance(3)  # first backoff is 1–2 s
        await h.run_until_idle()
        row = next(d for d in await h.store.deliveries_for(wid) if d["target"] == "spk-330502101201-1")
        assert row["state"] == "failed" and row["attempts"] == 2
        h.clock.advance(20)  # Retry-After said 30 s: not yet
        await h.run_until_idle()
        assert h.adapter("loudspeaker").by_msg() == {}
        h.clock.advance(11)
        await h.run_until_idle()
        assert [t for _, t in h.adapter("loudspeaker").by_msg()] == ["spk-330502101201-1"]
        w = await h.get(wid)
        assert w["coverage"]["loudspeaker"]["sent"] == 1
        assert w["coverage"]["loudspeaker"]["failed"] == 1
    finally:
        await h.close()


async def test_a_warning_in_force_is_retried_past_max_attempts(tmp_path: Path) -> None:
    """Transient failures never leave a warning in force undelivered: past max_attempts the
    delivery keeps being retried at the capped backoff, and goes out once the far end is back."""
    h = await Harness(
        tmp_path,
        channels=["sms"],
        script={"off-0": ["transient"] * 8},
        settings={"dispatch": {"max_attempts": 3, "backoff_base_s": 1, "backoff_cap_s": 5}},
    ).start()
    try:
        wid = await h.issue(warning_body())
        await h.run_until_idle()
        (delivery,) = [
            d for d in await h.store.deliveries_for(wid) if d["channel"] == "sms" and d["target"] == "off-0"
        ]
        for _ in range(6):
            h.clock.advance(5)  # the cap: one retry each time
            await h.run_until_idle()
        row = next(d for d in await h.store.deliveries_for(wid) if d["id"] == delivery["id"])
        assert row["state"] == "failed"
        assert row["attempts"] == 7
        assert row["last_error"] == "scripted transient failure"
        assert h.clock.now() < from_ts(row["due_at"]) <= h.clock.now() + timedelta(seconds=5)
        for _ in range(3):
            h.clock.advance(5)
            await h.run_until_idle()
        row = next(d for d in await h.store.deliveries_for(wid) if d["id"] == delivery["id"])
        assert row["state"] == "sent"
        assert row["attempts"] == 9
    finally:
        await h.close()


async def test_retries_of_an_all_clear_stop_at_max_attempts(tmp_path: Path) -> None:
    """A warning no longer in force is not retried for ever: its all-clear is dead after max_attempts."""
    h = await Harness(
        tmp_path,
        channels=["loudspeaker"],
        script={"spk-330502101201-1": ["ok", *["transient"] * 10]},
        settings={"dispatch": {"max_attempts": 3, "backoff_base_s": 1, "backoff_cap_s": 5}},
    ).start()
    try:
        wid = await h.issue(warning_body())
        await h.run_until_idle()
        resp = await h.client.post(f"/api/v1/warnings/{wid}/cancel", json={}, headers=h.headers())
        assert resp.status == 202
        for _ in range(5):
            await h.run_until_idle()
            h.clock.advance(10)
        rows = [d for d in await h.store.deliveries_for(wid) if d["target"] == "spk-330502101201-1"]
        (clear,) = [d for d in rows if d["kind"] == "cancel"]
        assert clear["state"] == "dead"
        assert clear["attempts"] == 3
        assert "gave up after 3 attempts" in clear["last_error"]
    finally:
        await h.close()


async def test_cancel_stops_pending_and_sends_all_clear_to_those_reached(harness: Harness) -> None:
    """Cancel: nothing pending goes out; exactly the receivers already reached get the all-clear."""
    wid = await harness.issue(warning_body(onset="2026-07-03T08:00:00+00:00"))  # onset 56 h ahead
    await harness.run_until_idle()
    assert harness.adapter("sms").sent == []  # nothing is due before T-48h
    harness.clock.advance(hours=8)
    await harness.run_until_idle()
    assert {t for _, t in harness.adapter("sms").by_msg()} == {"off-0"}  # T-48h: officials prepare
    resp = await harness.client.post(
        f"/api/v1/warnings/{wid}/cancel", json={"reason": "解除"}, headers=harness.headers()
    )
    assert resp.status == 202
    await harness.run_until_idle()
    harness.clock.advance(hours=60)
    await harness.run_until_idle()
    kinds = [(r["kind"], r["target"]) for r in harness.adapter("sms").sent]
    assert kinds == [("warning", "off-0"), ("cancel", "off-0")]
    assert harness.adapter("loudspeaker").sent == []
    w = await harness.get(wid)
    assert w["state"] == "cancelled"
    states = [(s["step"], s["state"]) for s in w["schedule"]]
    assert states[0] == ("T-48h", "done")
    assert [st for _, st in states[1:]] == ["cancelled"] * 6  # T-24h … onset never fire


async def test_a_reported_failure_is_retried_with_backoff_then_given_up(tmp_path: Path) -> None:
    """A speaker that reports `failed` after the send is retried later, not at once; then dead."""
    h = await Harness(
        tmp_path,
        channels=["loudspeaker"],
        settings={"dispatch": {"max_attempts": 2, "backoff_base_s": 10, "backoff_cap_s": 60}},
    ).start()
    try:
        wid = await h.issue(warning_body())
        await h.run_until_idle()
        first = h.adapter("loudspeaker").sent[0]
        row = await h.daemon.feedback.ack(
            source="device",
            status="failed",
            msg_id=first["msg_id"],
            target=first["target"],
            detail={"detail": "download failed"},
        )
        assert row["state"] == "failed"
        await h.run_until_idle()
        assert len(h.adapter("loudspeaker").sent) == 2  # not re-sent at once
        h.clock.advance(11)
        await h.run_until_idle()
        assert len(h.adapter("loudspeaker").sent) == 3  # the retry, same msg_id
        assert h.adapter("loudspeaker").sent[2]["msg_id"] == first["msg_id"]
        row = await h.daemon.feedback.ack(
            source="device", status="failed", msg_id=first["msg_id"], target=first["target"]
        )
        assert row["state"] == "dead"  # two attempts used
        d = next(d for d in await h.store.deliveries_for(wid) if d["target"] == first["target"])
        assert "device reported failed" in d["last_error"]
    finally:
        await h.close()


async def test_recover_does_not_resend_a_warning_cancelled_meanwhile(harness: Harness) -> None:
    """A delivery left `sending` by a crash is not sent if its warning was cancelled; its all-clear is."""
    wid = await harness.issue(warning_body())
    await harness.daemon.scheduler.run_once()
    claimed = await harness.store.claim(harness.clock.now(), 100, ["sms"])  # a crash mid-send
    assert claimed
    await db.execute(harness.store, "UPDATE warnings SET state = 'cancelled' WHERE id = ?", (wid,))
    await harness.store.recover()
    states = {d["state"] for d in await harness.store.deliveries_for(wid) if d["channel"] == "sms"}
    assert states == {"cancelled"}


def _planned(n_villages: int, speakers: int, people: int) -> list[NewDelivery]:
    """Deliveries as a step plans them: a msg_id per village's speakers, one per person."""
    now = datetime(2026, 7, 1, tzinfo=UTC)
    rows = [
        NewDelivery(f"v{v}", "w", "issue", "warning", "loudspeaker", f"spk-{v}-{k}", now, village=f"{v}")
        for v in range(n_villages)
        for k in range(speakers)
    ]
    return rows + [NewDelivery(f"p{p}", "w", "issue", "warning", "sms", f"p-{p}", now) for p in range(people)]


def test_step_parts_keep_a_village_whole_and_start_every_channel_at_once() -> None:
    """Parts of about the size asked; a village's speakers never split; both channels in the first part."""
    planned = _planned(n_villages=1000, speakers=7, people=3000)
    parts = step_parts(planned, rows=2000)
    assert sorted(map(id, (d for part in parts for d in part))) == sorted(map(id, planned))
    assert all(2000 <= len(part) < 2007 for part in parts[:-1]) and 0 < len(parts[-1]) <= 2006
    where = {d.msg_id: i for i, part in enumerate(parts) for d in part}
    for i, part in enumerate(parts):
        assert all(where[d.msg_id] == i for d in part)  # every row of a msg_id in this part
    assert {d.channel for d in parts[0]} == {"loudspeaker", "sms"}
    assert step_parts([]) == [[]]


async def test_a_step_written_in_parts_is_written_once_after_a_crash_between_them(tmp_path: Path) -> None:
    """A crash after the first part of a step: fired again, every delivery is there once, the job done once.

    The first part is written as the scheduler writes it (`fire_job_part`) and the daemon is then
    replaced, as a restart replaces it; the restarted scheduler fires the still pending job.
    """
    county = {"villages": 90, "speakers": 40, "leds": 0}
    h = await Harness(tmp_path, directory=county).start()
    try:
        wid = await h.issue(warning_body(area={"codes": ["330502101"]}))
        (job,) = [j for j in await h.store.due_jobs(h.clock.now()) if j.warning_id == wid]
        warning = await h.store.get_warning(wid)
        planned = step_deliveries(
            dict(warning), job.key, job.payload, h.daemon.directory(), h.daemon.settings.policy, h.clock.now()
        )
        assert len(planned) > 3000  # more than one part
        first = step_parts(planned)[0]
        assert await h.store.fire_job_part(job, first, now=h.clock.now())
        assert len(await h.store.deliveries_for(wid)) == len(first)
        assert (await h.store.jobs_for(wid))[0]["state"] == "pending"
        now = h.clock.now()
        await h.close()
        h = await Harness(tmp_path, directory=county).start()  # the same store, as after a restart
        h.clock.set(now)
        assert await h.daemon.scheduler.run_once() == 1
        rows = await h.store.deliveries_for(wid)
        assert len(rows) == len(planned)
        assert len({(r["msg_id"], r["target"]) for r in rows}) == len(planned)
        jobs = await h.store.jobs_for(wid)
        assert [j["state"] for j in jobs if j["key"] == job.key] == ["done"]
        # The follow-ups of the step (loudspeaker repeats, escalation chains) were written once.
        keys = [j["key"] for j in jobs]
        assert len(keys) == len(set(keys))
        await h.run_until_idle()
        spk = h.adapter("loudspeaker").by_msg()
        assert all(n == 1 for n in spk.values())
        assert {t for _, t in spk} == {d.target for d in planned if d.channel == "loudspeaker"}
    finally:
        await h.close()


async def test_a_step_cancelled_between_parts_writes_nothing_more(harness: Harness) -> None:
    """A part for a job no longer pending (its warning cancelled) is refused, nothing written."""
    wid = await harness.issue(warning_body())
    (job,) = [j for j in await harness.store.due_jobs(harness.clock.now()) if j.warning_id == wid]
    status = (
        await harness.client.post(f"/api/v1/warnings/{wid}/cancel", json={}, headers=harness.headers())
    ).status
    assert status in (200, 202)
    warning = await harness.store.get_warning(wid)
    planned = step_deliveries(
        dict(warning),
        job.key,
        job.payload,
        harness.daemon.directory(),
        harness.daemon.settings.policy,
        harness.clock.now(),
    )
    assert planned
    assert not await harness.store.fire_job_part(job, planned, now=harness.clock.now())
    assert [d for d in await harness.store.deliveries_for(wid) if d["step"] == job.payload["step"]] == []
