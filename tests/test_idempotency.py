"""Idempotency-Key: a replay answers with the first warning, a reused key with new content is refused."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import pytest

from tests.support.harness import Harness, warning_body

KEY = "duty-2026-07-01-001"
BODY = warning_body(onset="2026-07-01T20:00:00+08:00", expires="2026-07-02T08:00:00+08:00")


async def _post_raw(h: Harness, data: bytes, key: str = KEY) -> tuple[int, dict[str, Any]]:
    """POST raw JSON bytes with an Idempotency-Key."""
    headers = {**h.headers(), "Content-Type": "application/json", "Idempotency-Key": key}
    resp = await h.client.post("/api/v1/warnings", data=data, headers=headers)
    return resp.status, await resp.json()


async def _count(h: Harness) -> int:
    """How many warnings are stored."""
    resp = await h.client.get("/api/v1/warnings", headers=h.headers("viewer"))
    return len((await resp.json())["warnings"])


async def test_replay_is_200_and_a_reused_key_with_other_content_is_422(harness: Harness) -> None:
    """Same key, same warning however written: 200, first id. Same key, other warning: 422, none stored."""
    status, first = await _post_raw(harness, json.dumps(BODY, ensure_ascii=False).encode())
    assert status == 202, first

    # The same warning written another way: keys reversed, pretty-printed, ASCII escapes, blanks
    # around the headline, the default status spelled out, the times in UTC.
    same = dict(reversed(list(BODY.items())))
    same["headline"] = "  " + BODY["headline"] + "\n"
    same["status"] = "actual"
    same["onset"] = "2026-07-01T12:00:00Z"
    same["expires"] = "2026-07-02T00:00:00+00:00"
    status, replay = await _post_raw(harness, json.dumps(same, indent=4).encode())
    assert (status, replay) == (200, {"id": first["id"], "created": False, "state": "active"})

    for change in (
        {"headline": "塘甸镇暴雨橙色预警"},
        {"level": "orange"},
        {"area": {"codes": ["330502101202"]}},
    ):
        status, answer = await _post_raw(harness, json.dumps({**BODY, **change}).encode())
        assert status == 422, (change, answer)
        error = answer["error"]
        assert (error["code"], error["field"]) == ("idempotency_key_reused", "Idempotency-Key")
        assert first["id"] in error["message"]
    assert await _count(harness) == 1

    # A new key is a new warning; the pipeline sends the first one once and the second one once.
    status, second = await _post_raw(harness, json.dumps({**BODY, "level": "orange"}).encode(), key="dup-2")
    assert status == 202 and second["id"] != first["id"]
    assert await _count(harness) == 2
    await harness.run_until_idle()
    warned = [r["warning_id"] for r in harness.adapter("loudspeaker").sent]
    assert sorted(warned) == sorted([first["id"]] * 2 + [second["id"]] * 2)  # two speakers each


@pytest.mark.sqlite_only
async def test_rows_from_before_fingerprints_replay_as_before(harness: Harness) -> None:
    """A key stored without a fingerprint (schema before 9) answers 200 with its id, whatever comes."""
    status, first = await _post_raw(harness, json.dumps(BODY).encode())
    assert status == 202
    db = sqlite3.connect(harness.settings.state_dir / "warnd.db", isolation_level=None)
    try:
        stored = db.execute("SELECT idempotency_fingerprint FROM warnings WHERE id = ?", (first["id"],))
        assert len(stored.fetchone()[0]) == 64  # sha256 hex kept with the key
        db.execute("UPDATE warnings SET idempotency_fingerprint = NULL WHERE id = ?", (first["id"],))
    finally:
        db.close()
    status, answer = await _post_raw(harness, json.dumps({**BODY, "headline": "另一条预警"}).encode())
    assert (status, answer["id"]) == (200, first["id"])
    assert await _count(harness) == 1


@pytest.mark.sqlite_only
async def test_warnings_without_a_key_keep_no_fingerprint(harness: Harness) -> None:
    """No key, nothing to compare later: the column stays empty and duplicates go by sender/identifier."""
    wid = await harness.issue(BODY)
    db = sqlite3.connect(harness.settings.state_dir / "warnd.db", isolation_level=None)
    try:
        row = db.execute("SELECT idempotency_key, idempotency_fingerprint FROM warnings WHERE id = ?", (wid,))
        assert row.fetchone() == (None, None)
    finally:
        db.close()
