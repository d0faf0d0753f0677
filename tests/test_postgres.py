"""warnd's store on PostgreSQL: one warnd per database, a server that goes away and comes back.

The store's behaviour is the same on both databases, and tested by the same tests: `make test`
runs the pipeline's modules a second time with `--store=postgres` (Makefile), `make test-pg` the
whole suite; tests/test_crash.py kills a daemon on each. Here is what only PostgreSQL has.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support import db
from tests.support.harness import Harness, warning_body
from tests.support.postgres import PostgresCluster
from tests.support.wait import until
from warnd.store import DatabaseInUse, Store, StoreUnavailable, postgres

NOW = datetime(2026, 7, 1, 8, 0, tzinfo=UTC)
LOST_ROW = "INSERT INTO audit (at, actor, action) VALUES ('2026-07-01T08:00:00.000000Z', 'x', 'lost')"


def _audit(action: str) -> dict[str, str]:
    """An audit event to write (the smallest write the store has)."""
    return {"at": "2026-07-01T08:00:00.000000Z", "actor": "test", "action": action}


@pytest.fixture
def own_cluster() -> Iterator[PostgresCluster]:
    """A server of this test's own, to stop and start without disturbing the session's."""
    cluster = PostgresCluster().start()
    yield cluster
    cluster.stop()


async def test_a_second_warnd_on_the_same_database_is_refused(pg_url: str) -> None:
    """Two writers would claim the same deliveries: the second is refused until the first closes."""
    first = await Store(url=pg_url).open()
    try:
        await first.add_audit(_audit("first"))
        with pytest.raises(DatabaseInUse, match="another warnd holds"):
            await Store(url=pg_url).open()
    finally:
        await first.close()
    async with Store(url=pg_url) as second:
        assert [e["action"] for e in await second.audit_log()] == ["first"]


async def test_the_password_never_reaches_a_message(pg_url: str) -> None:
    """A store names its database without the URL's password."""
    with_password = pg_url.replace("postgres@", "postgres:s3cret@")
    store = Store(url=with_password)
    assert "s3cret" not in store.where and "postgres:***@" in store.where


@pytest.mark.allow_error_logs  # store.write_failed: the outage is the point
async def test_the_store_says_unavailable_while_the_server_is_down_and_recovers(
    own_cluster: PostgresCluster,
) -> None:
    """Server down: writes and reads raise StoreUnavailable (not a driver error); back up: both work.

    The writer connects again by itself and takes its lock again: a second warnd is still refused.
    """
    url = own_cluster.new_database()
    async with Store(url=url) as store:
        await store.add_audit(_audit("before"))
        own_cluster.pause()
        with pytest.raises(StoreUnavailable, match=r"unreachable|shutting down"):
            await store.add_audit(_audit("during"))
        with pytest.raises(StoreUnavailable):
            await store.audit_log()
        assert await store.write_check() is not None
        own_cluster.resume()
        await store.add_audit(_audit("after"))
        assert store.write_problem is None
        assert await store.write_check() is None
        assert [e["action"] for e in await store.audit_log()] == ["after", "before"]  # newest first
        with pytest.raises(DatabaseInUse):
            await Store(url=url).open()


@pytest.mark.allow_error_logs  # store.write_failed, api.store_unavailable: the outage is the point
async def test_the_api_answers_503_while_the_server_is_down_and_202_after(
    tmp_path: Path, own_cluster: PostgresCluster
) -> None:
    """An operator posting while the database server restarts gets 503 + Retry-After, then 202."""
    h = await Harness(tmp_path, settings={"store": {"url": own_cluster.new_database()}}).start()
    try:
        own_cluster.pause()
        resp = await h.client.post("/api/v1/warnings", json=warning_body(), headers=h.headers())
        assert resp.status == 503, await resp.text()
        assert (await resp.json())["error"]["code"] == "store_unavailable"
        assert int(resp.headers["Retry-After"]) > 0
        resp = await h.client.get("/api/v1/warnings", headers=h.headers("viewer"))
        assert resp.status == 503, await resp.text()
        own_cluster.resume()
        wid = await h.issue(warning_body())
        await h.run_until_idle()
        assert {d["state"] for d in await h.store.deliveries_for(wid)} == {"sent"}
    finally:
        await h.close()


async def test_a_read_cannot_write(pg_url: str) -> None:
    """A read runs READ ONLY: a write slipped into it fails as the bug it is, not as an outage."""
    async with Store(url=pg_url) as store:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            await store.read(lambda con: con.execute("INSERT INTO devices (id) VALUES ('d1')"))
        assert await db.query(store, "SELECT id FROM devices") == []


@pytest.mark.allow_error_logs  # store.write_failed: the outage is the point
async def test_a_batch_sent_while_the_server_restarts_is_recorded_once_it_is_back(
    tmp_path: Path, own_cluster: PostgresCluster
) -> None:
    """Sent, then the outcomes cannot be written: written again until the server is back, not
    left `sending` (never retried, receipts matching nothing) until warnd restarts."""
    h = await Harness(
        tmp_path, channels=["sms"], settings={"store": {"url": own_cluster.new_database()}}
    ).start()
    try:
        wid = await h.issue(warning_body())
        assert await h.daemon.scheduler.run_once() == 1
        h.adapter("sms").delay_s = 1.0  # the batch is on the wire while the server stops
        sending = asyncio.create_task(h.daemon.dispatcher.run_channel_once("sms"))
        await until(lambda: h.daemon.dispatcher.in_flight > 0, 5, what="a batch claimed")
        await asyncio.to_thread(own_cluster.pause)
        await asyncio.sleep(1.5)  # the send is over; its record fails and is tried again
        assert not sending.done()
        await asyncio.to_thread(own_cluster.resume)
        handled = await asyncio.wait_for(sending, 60)
        assert handled > 0 and h.daemon.dispatcher.in_flight == 0
        states = [d["state"] for d in await h.store.deliveries_for(wid) if d["channel"] == "sms"]
        assert states.count("sent") == handled and "sending" not in states
    finally:
        await h.close()


@pytest.mark.allow_error_logs  # store.write_failed: the cut-off is the point
async def test_a_transaction_cut_off_before_its_commit_is_reported_not_stored(pg_url: str) -> None:
    """The server ends the session before COMMIT: its transaction is looked up (aborted), the
    write raises StoreUnavailable, nothing of it is there, and the next write works."""

    def cut_off(con: Any) -> None:
        """Write a row, then have the server end this very session before the COMMIT."""
        con.execute(LOST_ROW)
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (con.raw.info.backend_pid,))

    async with Store(url=pg_url) as store:
        with pytest.raises(StoreUnavailable):
            await store.write(cut_off)
        await store.add_audit(_audit("after"))
        assert [e["action"] for e in await store.audit_log()] == ["after"]


async def test_the_fate_of_a_committed_transaction_is_found(pg_url: str) -> None:
    """What an in-doubt COMMIT asks: the server knows a committed transaction as committed."""

    def with_xid(con: Any) -> str:
        """A write, and its transaction's id."""
        con.execute(LOST_ROW.replace("lost", "kept"))
        return str(con.execute("SELECT pg_current_xact_id()::text").fetchone()[0])

    async with Store(url=pg_url) as store:
        xid = await store.write(with_xid)
    assert postgres.transaction_status(pg_url, xid) == "committed"
    nowhere = "postgresql://postgres@127.0.0.1:1/none"
    assert postgres.transaction_status(nowhere, xid) is None  # no answer: in doubt stays in doubt
