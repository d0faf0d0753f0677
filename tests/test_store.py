"""The store: migrations, refusing a newer database, durability pragmas, crash recovery."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.support import db
from warnd.store import (
    ACK_LOOKUP_SQL,
    TS_FORMAT,
    NewDelivery,
    Outcome,
    SchemaTooNew,
    Store,
    from_ts,
    migrations,
    ts,
)


async def test_migrations_apply_once_and_record_versions(tmp_path: Path) -> None:
    """A new database gets every migration; opening it again applies nothing twice."""
    path = tmp_path / "w.db"
    async with Store(path):
        pass
    async with Store(path):
        pass
    con = sqlite3.connect(path)
    versions = [r[0] for r in con.execute("SELECT version FROM schema_version ORDER BY version")]
    assert versions == [n for n, _ in migrations()]
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"warnings", "audit", "jobs", "deliveries", "acks"} <= tables


async def test_a_database_from_a_newer_warnd_is_refused(tmp_path: Path) -> None:
    """An unknown schema version means a newer warnd wrote it: refuse rather than corrupt."""
    path = tmp_path / "w.db"
    async with Store(path):
        pass
    con = sqlite3.connect(path)
    con.execute("INSERT INTO schema_version (version) VALUES (9999)")
    con.commit()
    con.close()
    with pytest.raises(SchemaTooNew, match="9999"):
        await Store(path).open()


async def test_recover_puts_sending_back_to_pending(tmp_path: Path) -> None:
    """Deliveries a crash left `sending` are claimable again, with the same msg_id."""
    now = datetime(2026, 7, 1, tzinfo=UTC)
    async with Store(tmp_path / "w.db") as store:
        await store.accept(
            {
                "id": "W1",
                "source": "api",
                "event": "暴雨",
                "level": "red",
                "status": "actual",
                "headline": "h",
                "area": "{}",
                "villages": "[]",
                "state": "active",
                "created_at": "x",
                "updated_at": "x",
            },
            audit={"at": "x", "actor": "t", "action": "issue"},
            jobs=[],
        )
        await store.add_deliveries(
            [NewDelivery("m1", "W1", "issue", "warning", "sms", f"p{i}", now) for i in range(3)], now
        )
        claimed = await store.claim(now, 10, ["sms"])
        assert len(claimed) == 3
        assert await store.claim(now, 10, ["sms"]) == []  # nothing left to claim while sending
        assert await store.recover() == 3
        again = await store.claim(now, 10, ["sms"])
        assert [d.msg_id for d in again] == ["m1"] * 3
        assert [d.attempts for d in again] == [2, 2, 2]
        # Their send is in doubt since the first claim: they are looked up before being sent again.
        assert [d.maybe_sent_at for d in again] == [now] * 3


async def test_ack_lookup_goes_through_the_unique_index(tmp_path: Path) -> None:
    """Finding the deliveries a batch of acks names never scans the whole outbox.

    The outbox only grows (months of warnings); a scan per batch of acks made 10,000 speakers'
    confirmations cost seconds of store time.
    """
    path = tmp_path / "w.db"
    async with Store(path):
        pass
    con = sqlite3.connect(path)
    plan = [row[3] for row in con.execute("EXPLAIN QUERY PLAN " + ACK_LOOKUP_SQL, ['[["m", "t"]]'])]
    assert any("deliveries" in step and "USING INDEX" in step for step in plan), plan
    assert not any(step.startswith("SCAN d") or step == "SCAN deliveries" for step in plan), plan


async def test_due_times_are_scoped_to_jobs_and_to_one_channel(tmp_path: Path) -> None:
    """The scheduler sleeps on jobs only, a channel's worker on its own deliveries only.

    With one shared "next due" a backlog of due SMS kept the scheduler and every other channel's
    worker polling the store in a tight loop.
    """
    now = datetime(2026, 7, 1, 8, 0, tzinfo=UTC)
    async with Store(tmp_path / "w.db") as store:
        assert await store.next_job_due() is None
        assert await store.next_delivery_due("sms") is None
        await _warning_with(
            store,
            [
                ("m-sms", "sms", "t", "2026-07-01T07:00:00.000000Z"),
                ("m-loudspeaker", "loudspeaker", "t", "2026-07-01T09:00:00.000000Z"),
            ],
        )
        assert await store.next_job_due() is None
        assert await store.next_delivery_due("sms") == datetime(2026, 7, 1, 7, 0, tzinfo=UTC)
        assert await store.next_delivery_due("loudspeaker") == datetime(2026, 7, 1, 9, 0, tzinfo=UTC)
        assert await store.next_delivery_due("voice") is None
        # Claimed deliveries are no longer waiting.
        (claimed,) = await store.claim(now, 10, ["sms"])
        assert claimed.attempts == 1 and claimed.state == "sending"
        assert await store.next_delivery_due("sms") is None


async def test_a_failed_commit_leaves_the_store_usable(tmp_path: Path) -> None:
    """A transaction whose COMMIT fails is rolled back; the next one starts cleanly."""
    async with Store(tmp_path / "w.db") as store:

        def orphan(con: sqlite3.Connection) -> None:
            # A deferred foreign key fails at COMMIT, not at the INSERT.
            con.execute("PRAGMA defer_foreign_keys = ON")
            con.execute(
                "INSERT INTO deliveries (msg_id, warning_id, step, kind, channel, target, due_at, created_at,"
                " updated_at) VALUES ('m', 'no-such-warning', 'issue', 'warning', 'sms', 't', 'x', 'x', 'x')"
            )

        with pytest.raises(sqlite3.IntegrityError):
            await store.write(orphan)
        assert await store.claim(datetime(2026, 7, 1, tzinfo=UTC), 10, ["sms"]) == []
        assert (await db.query(store, "SELECT COUNT(*) AS n FROM deliveries"))[0]["n"] == 0


async def test_a_cancelled_transaction_finishes_before_the_store_is_free(tmp_path: Path) -> None:
    """Cancelling the caller (twice) neither interrupts the thread's transaction nor frees the lock early."""
    import asyncio
    import time

    async with Store(tmp_path / "w.db") as store:

        def slow_write(con: sqlite3.Connection) -> None:
            time.sleep(0.3)
            con.execute("INSERT INTO devices (id, last_seen) VALUES ('d1', 'x')")

        task = asyncio.create_task(store.write(slow_write))
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.sleep(0.05)
        assert store.writing  # the thread is still inside the transaction
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not store.writing
        assert await db.query(store, "SELECT id FROM devices") == [{"id": "d1"}]


async def test_an_ack_with_odd_detail_does_not_spoil_its_batch(tmp_path: Path) -> None:
    """Details are stored as reported, one per ack: a device's NaN or Chinese text is kept, not fatal."""
    import json

    from warnd.store import AckIn

    now = datetime(2026, 7, 1, 8, 0, tzinfo=UTC)
    async with Store(tmp_path / "w.db") as store:
        await _warning_with(store, [("m", "loudspeaker", t, ts(now)) for t in ("spk-1", "spk-2")])
        assert len(await store.claim(now, 10, ["loudspeaker"])) == 2
        acks = [
            AckIn("mqtt", "played", "acknowledged", "m", "spk-1", detail={"level": float("nan")}),
            AckIn("mqtt", "played", "acknowledged", "m", "spk-2", detail={"detail": "功放正常"}),
        ]
        rows = await store.apply_acks(acks, now=now)
        assert [r["state"] for r in rows] == ["acknowledged", "acknowledged"]  # type: ignore[index]
        stored = {r["target"]: r["detail"] for r in await db.query(store, "SELECT target, detail FROM acks")}
        assert json.loads(stored["spk-2"]) == {"detail": "功放正常"}
        assert "NaN" in stored["spk-1"]


async def test_devices_seen_adds_devices_and_only_moves_last_seen_forward(tmp_path: Path) -> None:
    """One statement for every device: new ones are added, a later time wins, an earlier one does not."""
    t0 = datetime(2026, 7, 1, tzinfo=UTC)
    async with Store(tmp_path / "w.db") as store:
        await store.devices_seen({"a": t0, "b": t0})
        await store.devices_seen({"a": t0 + timedelta(seconds=5), "b": t0 - timedelta(seconds=5), "c": t0})
        seen = {d["id"]: d["last_seen"] for d in await store.devices()}
    assert seen == {"a": ts(t0 + timedelta(seconds=5)), "b": ts(t0), "c": ts(t0)}


def test_timestamps_keep_the_stored_format() -> None:
    """ts() writes TS_FORMAT (sortable UTC text) from any zone; from_ts() reads it back."""
    from datetime import timedelta, timezone

    for dt in (
        datetime(2026, 7, 1, 8, 0, tzinfo=UTC),
        datetime(2026, 7, 1, 8, 0, 0, 123456, tzinfo=timezone(timedelta(hours=8))),
    ):
        assert ts(dt) == dt.astimezone(UTC).strftime(TS_FORMAT)
        assert from_ts(ts(dt)) == dt
    assert from_ts(None) is None


async def _warning_with(store: Store, deliveries: list[tuple[str, str, str, str]]) -> None:
    """Warning W1 with pending deliveries (msg_id, channel, target, due_at), written as rows."""
    await db.execute(
        store,
        "INSERT INTO warnings (id, source, msg_type, event, level, status, headline, description,"
        " instruction, area, villages, state, version, created_at, updated_at, document)"
        " VALUES ('W1', 'api', 'Alert', 'e', 'red', 'actual', 'h', '', '', '{}', '[]', 'active', 1,"
        " 'x', 'x', '{}')",
    )
    await db.executemany(
        store,
        "INSERT INTO deliveries (msg_id, warning_id, step, kind, channel, target, due_at, created_at,"
        " updated_at) VALUES (?1, 'W1', 'issue', 'warning', ?2, ?3, ?4, ?4, ?4)",
        deliveries,
    )


async def test_a_send_in_doubt_stays_in_doubt_until_one_succeeds(tmp_path: Path) -> None:
    """maybe_sent_at keeps the earliest claim across crashes and failures; a success clears it."""
    t0 = datetime(2026, 7, 1, tzinfo=UTC)
    t1 = t0 + timedelta(minutes=1)
    async with Store(tmp_path / "w.db") as store:
        warning = {"id": "W1", "source": "api", "event": "暴雨", "level": "red", "status": "actual",
                   "headline": "h", "area": "{}", "villages": "[]", "state": "active", "created_at": "x",
                   "updated_at": "x"}  # fmt: skip
        await store.accept(warning, audit={"at": "x", "actor": "t", "action": "issue"}, jobs=[])
        await store.add_deliveries(
            [NewDelivery("m1", "W1", "issue", "warning", "sms", f"p{i}", t0) for i in range(2)], t0
        )
        first = await store.claim(t0, 10, ["sms"])
        assert [d.maybe_sent_at for d in first] == [None, None]  # a first claim doubts nothing
        await store.recover()
        second = await store.claim(t1, 10, ["sms"])
        await store.recover()  # a second crash: still in doubt since the first claim
        third = await store.claim(t1, 10, ["sms"])
        assert [d.maybe_sent_at for d in second] == [t0, t0] == [d.maybe_sent_at for d in third]
        sent, failed = Outcome(third[0].id, "sent", provider_ref="SM1"), Outcome(third[1].id, "failed")
        await store.record([(sent, None), (failed, t1)], t1)
        rows = {r["target"]: r for r in await store.deliveries_for("W1")}
        assert rows["p0"]["maybe_sent_at"] is None
        assert rows["p1"]["maybe_sent_at"] == ts(t0)  # a failure may have reached the provider too
        assert await store.provider_refs_taken(["SM1", "SM2"]) == {"SM1"}


async def test_a_send_that_may_have_gone_out_is_in_doubt_from_its_claim(tmp_path: Path) -> None:
    """A failure flagged maybe_sent (timed out, line dropped) dates its doubt from its claim; others not."""
    t0 = datetime(2026, 7, 1, tzinfo=UTC)
    t1 = t0 + timedelta(minutes=1)
    async with Store(tmp_path / "w.db") as store:
        await _warning_with(store, [("m1", "sms", f"p{i}", ts(t0)) for i in range(3)])
        claimed = await store.claim(t0, 10, ["sms"])
        doubtful, refused, other = (d.id for d in claimed)
        await store.record(
            [
                (Outcome(doubtful, "failed", error="no answer", maybe_sent=True), t1),
                (Outcome(refused, "failed", error="HTTP 500"), t1),
                (Outcome(other, "failed", error="no answer", maybe_sent=True), t1),
            ],
            t0,
        )
        again = {d.target: d for d in await store.claim(t1, 10, ["sms"])}
        assert again["p0"].maybe_sent_at == t0 == again["p2"].maybe_sent_at
        assert again["p1"].maybe_sent_at is None  # a refusal proves it was not sent
        # A second doubtful attempt keeps the first doubt's time; a success ends it.
        await store.record(
            [
                (Outcome(doubtful, "failed", error="no answer", maybe_sent=True), t1),
                (Outcome(other, "sent", provider_ref="SM1", maybe_sent=True), None),
            ],
            t1,
        )
        rows = {r["target"]: r for r in await store.deliveries_for("W1")}
        assert rows["p0"]["maybe_sent_at"] == ts(t0)
        assert rows["p2"]["maybe_sent_at"] is None


async def test_work_due_when_written_stays_due_after_the_clock_steps_back(tmp_path: Path) -> None:
    """An hour back: what was due at once is still claimed; a retry or a held play still waits."""
    t0 = datetime(2026, 7, 1, 8, 0, tzinfo=UTC)
    back = t0 - timedelta(hours=1)
    async with Store(tmp_path / "w.db") as store:
        await _warning_with(store, [("now", "sms", "p-1", ts(t0)), ("now", "sms", "p-2", ts(t0))])
        # p-3 was written at t0 to wait until the morning (quiet hours): not due either way.
        await db.execute(
            store,
            "INSERT INTO deliveries (msg_id, warning_id, step, kind, channel, target, due_at, created_at,"
            " updated_at) VALUES ('held', 'W1', 'issue', 'warning', 'sms', 'p-3', ?, ?, ?)",
            (ts(t0 + timedelta(hours=2)), ts(t0), ts(t0)),
        )
        claimed = await store.claim(back, 10, ["sms"])
        assert sorted(d.target for d in claimed) == ["p-1", "p-2"]
        # p-1 fails: its retry (due in 30 s of the stepped-back clock) waits by the wall clock.
        retry = back + timedelta(seconds=30)
        await store.record([(Outcome(claimed[0].id, "failed", error="x"), retry)], back)
        await store.record([(Outcome(claimed[1].id, "sent"), None)], back)
        assert await store.claim(back, 10, ["sms"]) == []
        assert [d.target for d in await store.claim(back + timedelta(seconds=31), 10, ["sms"])] == ["p-1"]


async def test_reads_answer_while_a_write_transaction_is_held(tmp_path: Path) -> None:
    """Reads run on their own connection: a write holding the lock does not hold them up."""
    import asyncio
    import threading

    now = datetime(2026, 7, 1, 8, 0, tzinfo=UTC)
    async with Store(tmp_path / "w.db") as store:
        await _warning_with(store, [("m", "sms", "p1", ts(now))])
        inside, release = threading.Event(), threading.Event()

        def held(con: sqlite3.Connection) -> None:
            con.execute("INSERT INTO devices (id, last_seen) VALUES ('d1', 'x')")
            inside.set()
            release.wait(30)

        writing = asyncio.create_task(store.write(held))
        try:
            await asyncio.to_thread(inside.wait, 10)
            assert store.writing
            # Each would wait for `release` (30 s) if it queued behind the writer.
            (delivery,) = await asyncio.wait_for(store.deliveries_for("W1"), 5)
            assert delivery["state"] == "pending"
            assert (await asyncio.wait_for(store.gauges(), 5))["deliveries"] == [
                {"channel": "sms", "state": "pending", "n": 1}
            ]
            # A read sees the last commit, not the write in progress.
            assert await asyncio.wait_for(db.query(store, "SELECT id FROM devices"), 5) == []
        finally:
            release.set()
            await writing
        # …and once it is committed, the next read sees it.
        assert await db.query(store, "SELECT id FROM devices") == [{"id": "d1"}]


async def test_a_read_cannot_write(tmp_path: Path) -> None:
    """read() runs on a query-only connection: a write slipped into it fails instead of racing the writer."""
    async with Store(tmp_path / "w.db") as store:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            await store.read(lambda con: con.execute("INSERT INTO devices (id) VALUES ('d1')"))
        assert await db.query(store, "SELECT id FROM devices") == []


async def test_an_operators_write_goes_ahead_of_the_fan_outs_queued_bulk_writes(tmp_path: Path) -> None:
    """Five bulk writes wait behind a running one; an accept-like write queued after them runs
    next, before them — and the bulk writes keep their own order."""

    async with Store(tmp_path / "w.db") as store:
        order: list[str] = []
        running, release = threading.Event(), threading.Event()

        def hold(_con: object) -> None:
            """The bulk write on the thread while the others queue."""
            running.set()
            release.wait(10)
            order.append("running")

        def note(name: str) -> object:
            """A write that records when it ran."""
            return lambda _con: order.append(name)

        first = asyncio.ensure_future(store.write(hold, bulk=True))
        await asyncio.to_thread(running.wait, 10)
        bulk = [asyncio.ensure_future(store.write(note(f"bulk{i}"), bulk=True)) for i in range(5)]
        await asyncio.sleep(0.05)  # queued in this order
        urgent = asyncio.ensure_future(store.write(note("accept")))
        await asyncio.sleep(0.05)
        release.set()
        await asyncio.gather(first, *bulk, urgent)
        assert order == ["running", "accept", "bulk0", "bulk1", "bulk2", "bulk3", "bulk4"]


async def test_writes_that_end_in_a_statement_never_misuse_the_connection(tmp_path: Path) -> None:
    """Many batches recording their providers at once (an `executemany` whose cursor was handed
    back to the loop and finalized there while the store's thread ran the same statement made
    SQLite answer "bad parameter or other API misuse"): every one is written."""
    async with Store(tmp_path / "w.db") as store:
        now = datetime.now(UTC).isoformat()
        await _warning_with(store, [(f"m{i}", "sms", f"p{i}", now) for i in range(500)])
        ids = [r["id"] for r in await db.query(store, "SELECT id FROM deliveries ORDER BY id")]

        async def batches(k: int) -> None:
            """Twenty batches of 25 deliveries, each recorded as sent by provider k."""
            for n in range(20):
                await store.set_delivery_providers([(i, f"p{k}") for i in ids[n * 25 : (n + 1) * 25]])

        await asyncio.gather(*(batches(k) for k in range(8)))
        rows = await db.query(store, "SELECT DISTINCT provider FROM deliveries")
        assert {r["provider"] for r in rows} <= {f"p{k}" for k in range(8)} and len(rows) >= 1
