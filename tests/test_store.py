"""The store: migrations, refusing a newer database, durability pragmas, crash recovery."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from warnd.store import NewDelivery, SchemaTooNew, Store, _migrations


async def test_migrations_apply_once_and_record_versions(tmp_path: Path) -> None:
    """A new database gets every migration; opening it again applies nothing twice."""
    path = tmp_path / "w.db"
    async with Store(path):
        pass
    async with Store(path):
        pass
    con = sqlite3.connect(path)
    versions = [r[0] for r in con.execute("SELECT version FROM schema_version ORDER BY version")]
    assert versions == [n for n, _ in _migrations()]
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
        await store._begin()
        await store._insert_deliveries(
            [NewDelivery("m1", "W1", "issue", "warning", "sms", f"p{i}", now) for i in range(3)], now
        )
        await store._end("COMMIT")
        claimed = await store.claim(now, 10, ["sms"])
        assert len(claimed) == 3
        assert await store.claim(now, 10, ["sms"]) == []  # nothing left to claim while sending
        assert await store.recover() == 3
        again = await store.claim(now, 10, ["sms"])
        assert [d.msg_id for d in again] == ["m1"] * 3
        assert [d.attempts for d in again] == [2, 2, 2]
