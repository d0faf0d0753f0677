"""A disk that will not take writes, in process: the store says so honestly, never a 500.

SQLite itself plays the disk: `PRAGMA max_page_count` makes a growing write fail with
SQLITE_FULL ("database or disk is full"), `PRAGMA query_only` makes every write fail with
SQLITE_READONLY, exactly as a full or read-only file system does. tests/faults/test_disk.py does
the same to a real warnd process on a real, filled file system.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.support import db
from tests.support.harness import Harness, warning_body
from tests.support.mqtt import Broker
from tests.test_loudspeaker import VILLAGES, Rig
from warnd.daemon import watchdog_loop
from warnd.sdnotify import Notifier
from warnd.store import Store, StoreUnavailable

pytestmark = pytest.mark.allow_error_logs  # store.write_failed is the point of these tests

ROW = {"id": "W1", "source": "api", "event": "暴雨", "level": "red", "status": "actual", "headline": "h",
       "area": "{}", "villages": "[]", "state": "active", "created_at": "x", "updated_at": "x"}  # fmt: skip
AUDIT = {"at": "x", "actor": "t", "action": "issue"}


async def _fill(store: Store) -> None:
    """The database may not grow by one page: the next write that needs a page gets SQLITE_FULL."""
    pages = await db.pragma(store, "PRAGMA page_count")
    await db.pragma(store, f"PRAGMA max_page_count = {pages}")


async def _unfill(store: Store) -> None:
    """Room again."""
    await db.pragma(store, "PRAGMA max_page_count = 1073741823")


def _big(warning_id: str) -> dict[str, Any]:
    """A warning row large enough to need new pages."""
    return {**ROW, "id": warning_id, "description": "雨" * 20_000}


async def _integrity(store: Store) -> str:
    """PRAGMA integrity_check's verdict."""
    return str(await db.pragma(store, "PRAGMA integrity_check"))


async def test_a_full_disk_is_store_unavailable_inside_the_lock_and_remembered(
    tmp_path: Path, log_events: list[dict[str, Any]]
) -> None:
    """SQLITE_FULL: StoreUnavailable, nothing stored, lock free, no open transaction; logged once."""
    async with Store(tmp_path / "w.db") as store:
        await _fill(store)
        for wid in ("W1", "W2"):
            with pytest.raises(StoreUnavailable) as caught:
                await store.accept(_big(wid), audit=AUDIT, jobs=[])
            assert caught.value.reason == "disk full"
            assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
            assert not store.writing
            assert not await db.in_transaction(store)
        assert store.write_problem == "disk full"
        assert [e["reason"] for e in log_events if e["event"] == "store.write_failed"] == ["disk full"]
        # The whole-in-the-thread path (claims, outcomes, acks) says the same.
        with pytest.raises(StoreUnavailable):
            await store.devices_seen({f"spk-{i}": datetime(2026, 7, 1, tzinfo=UTC) for i in range(2000)})
        assert not store.writing
        await _unfill(store)
        assert (await store.accept(_big("W3"), audit=AUDIT, jobs=[])).created
        assert store.write_problem is None
        assert [e["event"] for e in log_events if e["event"].startswith("store.write_")] == [
            "store.write_failed",
            "store.write_recovered",
        ]
        assert [w["id"] for w in await store.list_warnings()] == ["W3"]  # nothing half-written
        assert await _integrity(store) == "ok"


async def test_a_failed_commit_is_rolled_back_inside_the_lock(tmp_path: Path) -> None:
    """A COMMIT that fails raises its own error (not "Lock is not acquired"); the next write works."""
    async with Store(tmp_path / "w.db") as store:

        def orphan(con: sqlite3.Connection) -> None:
            # A deferred foreign key fails at COMMIT, not at the INSERT.
            con.execute("PRAGMA defer_foreign_keys = ON")
            con.execute(
                "INSERT INTO deliveries (msg_id, warning_id, step, kind, channel, target, due_at,"
                " created_at, updated_at)"
                " VALUES ('m', 'no-such-warning', 'issue', 'warning', 'sms', 't', 'x', 'x', 'x')"
            )

        with pytest.raises(sqlite3.IntegrityError):
            await store.write(orphan)
        assert not store.writing
        assert not await db.in_transaction(store)
        assert store.write_problem is None  # a bad write is not a full disk
        assert (await store.accept(ROW, audit=AUDIT, jobs=[])).created
        assert (await db.query(store, "SELECT COUNT(*) AS n FROM deliveries"))[0]["n"] == 0


async def test_a_transaction_that_fails_midway_leaves_nothing_and_one_not_started_never_runs(
    tmp_path: Path,
) -> None:
    """A write that raises after a statement is rolled back; one cancelled while queued never runs."""
    async with Store(tmp_path / "w.db") as store:

        def half(con: sqlite3.Connection) -> None:
            con.execute("INSERT INTO devices (id, last_seen) VALUES ('d1', 'x')")
            raise RuntimeError("midway")

        with pytest.raises(RuntimeError, match="midway"):
            await store.write(half)
        assert not store.writing
        assert not await db.in_transaction(store)
        assert await db.query(store, "SELECT id FROM devices") == []

        started = threading.Event()

        def slow(con: sqlite3.Connection) -> None:
            started.set()
            time.sleep(0.2)

        first = asyncio.create_task(store.write(slow))
        await asyncio.to_thread(started.wait)
        queued = asyncio.create_task(
            store.write(lambda con: con.execute("INSERT INTO devices (id) VALUES ('d3')"))
        )
        await asyncio.sleep(0.01)  # handed to the thread, behind `slow`
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        await first
        assert not store.writing
        await store.device_status("d2", True, {}, datetime(2026, 7, 1, tzinfo=UTC))
        assert [r["id"] for r in await db.query(store, "SELECT id FROM devices")] == ["d2"]


async def test_read_only_store_answers_503_and_readyz_says_why_until_it_can_write(harness: Harness) -> None:
    """Accepts get 503 store_unavailable with Retry-After, never 500 or 202; /readyz recovers by itself."""
    client, store = harness.client, harness.store
    assert (await client.get("/readyz")).status == 200
    await db.refuse_writes(store, True)
    try:
        resp = await client.post("/api/v1/warnings", json=warning_body(), headers=harness.headers())
        assert resp.status == 503, await resp.text()
        assert resp.headers["Retry-After"] == "30"
        error = (await resp.json())["error"]
        assert error["code"] == "store_unavailable" and error["field"] is None
        assert "read-only" in error["message"]
        for _ in range(2):  # a probe that fails keeps it not ready
            resp = await client.get("/readyz")
            body = await resp.json()
            assert resp.status == 503 and body["ready"] is False
            assert body["checks"]["store"] == {"ok": False, "detail": "not writable: read-only"}
        # Reads still work: the operator can see what there is.
        resp = await client.get("/api/v1/warnings", headers=harness.headers("viewer"))
        assert resp.status == 200 and (await resp.json())["warnings"] == []
    finally:
        await db.refuse_writes(store, False)
    # Writable again: /readyz's probe write finds out without waiting for a warning to come.
    resp = await client.get("/readyz")
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["checks"]["store"] == {"ok": True}
    wid = await harness.issue(warning_body())
    assert (await harness.get(wid))["id"] == wid


@pytest.mark.sqlite_only  # SQLite plays the full disk; PostgreSQL's server away: tests/test_postgres.py
async def test_full_disk_accept_is_503_and_nothing_is_stored(harness: Harness) -> None:
    """SQLITE_FULL on accept: 503 store_unavailable; the warning is not there afterwards."""
    await _fill(harness.store)
    try:
        body = warning_body(description="雨" * 1900)
        for _ in range(3):
            resp = await harness.client.post("/api/v1/warnings", json=body, headers=harness.headers())
            assert resp.status == 503, await resp.text()
            assert (await resp.json())["error"]["code"] == "store_unavailable"
    finally:
        await _unfill(harness.store)
    assert await harness.store.list_warnings() == []
    await harness.issue(warning_body())


@pytest.fixture
def notify_socket(tmp_path: Path) -> Any:
    """A bound, non-blocking datagram socket standing in for systemd's notify socket."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    yield str(path), sock
    sock.close()


async def _pings(sock: socket.socket, within_s: float) -> int:
    """WATCHDOG=1 datagrams arriving within `within_s` seconds."""
    loop = asyncio.get_running_loop()
    n = 0
    deadline = loop.time() + within_s
    while (left := deadline - loop.time()) > 0:
        try:
            async with asyncio.timeout(left):
                data = await loop.sock_recv(sock, 4096)
        except TimeoutError:
            break
        n += data.decode().splitlines().count("WATCHDOG=1")
    return n


async def test_watchdog_stops_while_the_store_cannot_write_and_resumes(
    harness: Harness, notify_socket: tuple[str, socket.socket]
) -> None:
    """The watchdog's check is a write that reaches the disk: a read-only store gets no pings."""
    address, sock = notify_socket
    notifier = Notifier(address, watchdog_usec=200_000)  # a ping every 0.1 s
    task = asyncio.create_task(watchdog_loop(harness.store, notifier))
    try:
        assert await _pings(sock, 0.5) >= 2
        await db.refuse_writes(harness.store, True)
        await _pings(sock, 0.3)  # a check already under way may still report healthy
        assert await _pings(sock, 1.0) == 0, "pinged while the store could not write"
        await db.refuse_writes(harness.store, False)
        assert await _pings(sock, 1.0) >= 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        notifier.close()


@pytest.fixture
async def rig(tmp_path: Path, broker: Broker) -> AsyncIterator[Rig]:
    """Two villages of three speakers each, all online (tests/test_loudspeaker.py's rig)."""
    r = await Rig(tmp_path, broker).start()
    yield r
    await r.close()


async def test_audio_that_cannot_be_written_goes_out_as_text(
    rig: Rig, log_events: list[dict[str, Any]]
) -> None:
    """An OSError while rendering (ENOTDIR here, ENOSPC on a full disk): text, audio null; logged once."""
    tmp = rig.settings.state_dir / "audio" / "tmp"
    shutil.rmtree(tmp)
    tmp.write_bytes(b"")  # renders make their work directory in here: now an OSError
    first = await rig.issue(warning_body(area={"codes": VILLAGES}))
    second = await rig.issue(warning_body(area={"codes": VILLAGES}, headline="塘甸镇暴雨红色预警（第二次）"))
    await rig.run_until_idle()
    await rig.wait_acknowledged(first, 6)
    await rig.wait_acknowledged(second, 6)
    for s in rig.sim.speakers.values():
        assert [c["audio"] for c in s.played] == [None, None]
        assert all("红色预警" in c["text"] for c in s.played)
    failed = [e for e in log_events if e["event"] == "audio.render_failed"]
    assert len(failed) == 1 and failed[0]["fallback"] == "text"
    assert "NotADirectoryError" in failed[0]["reason"]
    assert rig.daemon.metrics.audio_fallbacks._value.get() >= 2  # each render tried, counted
    # Space back: the next warning has its audio again.
    tmp.unlink()
    tmp.mkdir()
    third = await rig.issue(warning_body(area={"codes": VILLAGES}, headline="塘甸镇暴雨红色预警（第三次）"))
    await rig.run_until_idle()
    await rig.wait_acknowledged(third, 6)
    for s in rig.sim.speakers.values():
        assert s.played[-1]["audio"] is not None and s.verified[s.played[-1]["msg_id"]]
    ups_and_downs = ("audio.render_failed", "audio.render_recovered", "audio.render_crashed")
    assert [e["event"] for e in log_events if e["event"] in ups_and_downs] == [
        "audio.render_failed",
        "audio.render_recovered",
    ]
