"""Retention on the fake clock: what ended over `[retention] days` ago is archived, then deleted.

The archive is a gzip JSON-lines file per warning holding its row, deliveries and acks as they
were stored; the warning row and the audit log stay. A delete the disk refuses after the archive
is written leaves every row where it was, and the next run finishes the job.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.support import db
from tests.support.harness import Harness, warning_body
from warnd.retention import archive_path, read_archive
from warnd.store import StoreUnavailable

DAYS = 400


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    """A pipeline with recording adapters."""
    harness = await Harness(tmp_path).start()
    try:
        yield harness
    finally:
        await harness.close()


async def _ended_warning(h: Harness) -> str:
    """A warning sent, confirmed by its speakers and cancelled (its all-clear sent too)."""
    wid = await h.issue(warning_body())
    await h.run_until_idle()
    for d in await h.store.deliveries_for(wid):
        if d["channel"] == "loudspeaker":
            assert await h.daemon.feedback.ack(
                source="mqtt", status="played", msg_id=d["msg_id"], target=d["target"]
            )
    resp = await h.client.post(f"/api/v1/warnings/{wid}/cancel", json={"reason": "雨停"}, headers=h.headers())
    assert resp.status == 202, await resp.text()
    await h.run_until_idle()
    return wid


async def _records(h: Harness, wid: str) -> dict[str, list[dict[str, Any]]]:
    """A warning's rows as stored: the warning, its deliveries and acks, its jobs, its audit events."""
    return {
        "warning": await db.query(h.store, "SELECT * FROM warnings WHERE id = ?", (wid,)),
        "delivery": await db.query(
            h.store, "SELECT * FROM deliveries WHERE warning_id = ? ORDER BY id", (wid,)
        ),
        "ack": await db.query(
            h.store,
            "SELECT * FROM acks WHERE delivery_id IN (SELECT id FROM deliveries WHERE warning_id = ?)"
            " ORDER BY id",
            (wid,),
        ),
        "job": await db.query(h.store, "SELECT * FROM jobs WHERE warning_id = ? ORDER BY id", (wid,)),
        "audit": await db.query(h.store, "SELECT * FROM audit WHERE warning_id = ? ORDER BY id", (wid,)),
    }


def _archived(path: Path) -> dict[str, list[dict[str, Any]]]:
    """An archive's lines by type, without the type tag."""
    out: dict[str, list[dict[str, Any]]] = {}
    for line in read_archive(path):
        out.setdefault(line.pop("type"), []).append(line)
    return out


async def test_the_daily_job_archives_then_deletes_and_keeps_the_audit_log(h: Harness) -> None:
    """401 days after a warning ended the daily job archives it whole and deletes its rows, nothing more."""
    await h.daemon.scheduler.plan_retention()
    old = await _ended_warning(h)
    before = await _records(h, old)
    assert before["delivery"] and before["ack"] and before["audit"] and before["job"]
    assert all(j["state"] != "pending" for j in before["job"])  # its steps ran, the rest cancelled

    h.clock.advance(timedelta(days=DAYS + 1).total_seconds())
    recent = await _ended_warning(h)  # ended today: kept
    kept = await _records(h, recent)
    await h.run_until_idle()

    # Archived: complete, as stored.
    archive = _archived(archive_path(h.settings.state_dir / "archive", old))
    assert archive["archive"] == [{"format": 1, "warning_id": old, "at": archive["archive"][0]["at"]}]
    assert archive["warning"] == before["warning"]
    assert archive["delivery"] == before["delivery"]
    assert archive["ack"] == before["ack"]
    assert archive["job"] == before["job"]
    # Deleted: the deliveries, acks, jobs and the counters; the warning and its audit trail stay.
    after = await _records(h, old)
    assert after["delivery"] == [] and after["ack"] == [] and after["job"] == []
    assert after["warning"] == before["warning"] and after["audit"] == before["audit"]
    assert await db.query(h.store, "SELECT * FROM delivery_counts WHERE warning_id = ?", (old,)) == []
    assert await h.store.coverage(old) == {}
    shown = await h.get(old)
    assert shown["state"] == "cancelled" and not any(c["expected"] for c in shown["coverage"].values())
    # The recent warning is untouched, and has no archive.
    assert await _records(h, recent) == kept
    assert not archive_path(h.settings.state_dir / "archive", recent).exists()
    # The run is done and the next one planned, due at tomorrow's run_at.
    jobs = await db.query(h.store, "SELECT key, state, due_at FROM jobs WHERE kind = 'retention' ORDER BY id")
    assert [j["state"] for j in jobs] == ["done", "pending"]
    assert jobs[1]["due_at"] > h.clock.now().isoformat()[:19]


@pytest.mark.allow_error_logs  # store.write_failed: the refused delete is the point
async def test_a_delete_refused_after_the_archive_leaves_every_row(h: Harness) -> None:
    """A refused delete (as a crash would stop it) leaves the rows and a whole archive; a rerun ends it."""
    retention = h.daemon.scheduler.retention
    assert retention is not None
    old = await _ended_warning(h)
    before = await _records(h, old)
    h.clock.advance(timedelta(days=DAYS + 1).total_seconds())

    await db.refuse_writes(h.store, True)  # the writer can no longer write
    try:
        with pytest.raises(StoreUnavailable):
            await retention.run(h.clock.now())
    finally:
        await db.refuse_writes(h.store, False)
    path = archive_path(h.settings.state_dir / "archive", old)
    assert _archived(path)["delivery"] == before["delivery"]
    assert _archived(path)["ack"] == before["ack"]
    assert await _records(h, old) == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left

    result = await retention.run(h.clock.now())
    assert (result.warnings, result.deliveries, result.acks) == (
        1,
        len(before["delivery"]),
        len(before["ack"]),
    )
    assert (await _records(h, old))["delivery"] == []
    assert _archived(path)["delivery"] == before["delivery"]


async def test_audio_unused_for_the_retention_period_is_listed_then_deleted(h: Harness) -> None:
    """An MP3 neither rendered nor found in the cache for `days` goes with its index entry; others stay."""
    retention = h.daemon.scheduler.retention
    assert retention is not None
    audio = h.settings.state_dir / "audio"
    (audio / "index").mkdir(parents=True, exist_ok=True)
    now = h.clock.now()
    cutoff = (now - timedelta(days=DAYS)).timestamp()
    # a: rendered and last found long ago; b: rendered long ago, found in the cache lately;
    # c: rendered lately.
    for name, rendered, found in (
        ("a", cutoff - 86400, cutoff - 3600),
        ("b", cutoff - 86400, cutoff + 3600),
        ("c", cutoff + 86400, cutoff + 86400),
    ):
        mp3, entry = audio / f"{name * 64}.mp3", audio / "index" / f"key-{name}.json"
        mp3.write_bytes(b"ID3" + name.encode() * 64)
        entry.write_text(json.dumps({"sha256": name * 64, "size": 67}))
        os.utime(mp3, (rendered, rendered))
        os.utime(entry, (found, found))

    result = await retention.run(now)

    assert result.audio_files == 1
    assert sorted(p.name for p in audio.glob("*.mp3")) == [f"{'b' * 64}.mp3", f"{'c' * 64}.mp3"]
    assert sorted(p.name for p in (audio / "index").iterdir()) == ["key-b.json", "key-c.json"]
    (listing,) = (h.settings.state_dir / "archive" / "audio").iterdir()
    (line,) = list(read_archive(listing))
    assert (line["type"], line["sha256"], line["size"]) == ("audio", "a" * 64, 67)


@pytest.mark.allow_error_logs  # retention.failed is the point
async def test_an_archive_that_cannot_be_written_deletes_nothing_and_is_tried_again(h: Harness) -> None:
    """archive_dir unusable: the rows stay, the operator is told, the run is again in an hour; jobs go on."""
    blocked = h.tmp_path / "not-a-directory"
    blocked.write_text("")
    h.settings.retention.archive_dir = blocked
    await h.daemon.scheduler.plan_retention()
    old = await _ended_warning(h)
    before = await _records(h, old)
    h.clock.advance(timedelta(days=DAYS + 1).total_seconds())

    await h.run_until_idle()

    assert await _records(h, old) == before
    jobs = await db.query(h.store, "SELECT key, state, due_at FROM jobs WHERE kind = 'retention' ORDER BY id")
    assert [j["state"] for j in jobs] == ["done", "pending"]
    assert jobs[1]["due_at"][:13] == (h.clock.now() + timedelta(hours=1)).isoformat()[:13]
