"""Crash safety with a real process: SIGKILL right after a 202, and in the middle of dispatch."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from tests.support.county import write_directory
from tests.support.harness import warning_body
from tests.support.mqtt import free_port
from tests.support.process import DaemonProcess, write_config
from tests.support.recording import read_records
from tests.support.wait import wait_for

pytestmark = pytest.mark.slow


def _daemon(tmp_path: Path, delay_s: float = 0.0, **directory: object) -> DaemonProcess:
    """A recording daemon over a generated directory."""
    port = free_port()
    config = write_config(tmp_path, write_directory(tmp_path / "directory.toml", **directory), port)
    argv = ["-m", "tests.support.recording_daemon", str(config), str(tmp_path / "sent.jsonl"), str(delay_s)]
    return DaemonProcess(argv, port, tmp_path / "warnd.log")


def test_warning_answered_202_survives_sigkill(tmp_path: Path) -> None:
    """Kill -9 right after the 202: after restart the warning is there and goes out."""
    d = _daemon(tmp_path, villages=2, speakers=2).start()
    status, body = d.call("POST", "/api/v1/warnings", warning_body())
    assert status == 202
    d.kill()
    d.start()
    try:
        status, w = d.call("GET", f"/api/v1/warnings/{body['id']}", role="viewer")
        assert status == 200
        assert w["headline"] == warning_body()["headline"]
        wait_for(
            lambda: (
                {r["target"] for r in read_records(tmp_path / "sent.jsonl") if r["channel"] == "loudspeaker"}
                == {"spk-330502101201-1", "spk-330502101201-2"}
            )
        )
    finally:
        assert d.terminate() == 0


def test_sigkill_mid_dispatch_completes_after_restart_none_twice(tmp_path: Path) -> None:
    """Kill -9 while 200 speakers are sent to: after restart each is reached, with one msg_id."""
    d = _daemon(tmp_path, delay_s=0.02, villages=40, speakers=5, leds=0).start()
    codes = [f"330502101{201 + i:03d}" for i in range(40)]
    status, body = d.call("POST", "/api/v1/warnings", warning_body(area={"codes": codes}))
    assert status == 202
    record = tmp_path / "sent.jsonl"
    wait_for(lambda: sum(r["channel"] == "loudspeaker" for r in read_records(record)) >= 30)
    d.kill()
    before = sum(r["channel"] == "loudspeaker" for r in read_records(record))
    assert before < 200, "the kill came too late to interrupt anything"
    d.start()
    try:
        expected = {f"spk-{c}-{k}" for c in codes for k in range(1, 6)}
        wait_for(
            lambda: {r["target"] for r in read_records(record) if r["channel"] == "loudspeaker"} == expected
        )
        msg_ids: dict[str, set[str]] = defaultdict(set)
        sends: dict[str, int] = defaultdict(int)
        for r in read_records(record):
            if r["channel"] == "loudspeaker":
                msg_ids[r["target"]].add(r["msg_id"])
                sends[r["target"]] += 1
        # Effectively once: a resend after the crash carries the same msg_id, so a speaker plays it once.
        assert all(len(ids) == 1 for ids in msg_ids.values())
        # Only what was in flight at the kill (at most one claimed batch) may have gone out twice.
        assert sum(n - 1 for n in sends.values()) <= 20
        status, w = d.call("GET", f"/api/v1/warnings/{body['id']}", role="viewer")
        assert w["coverage"]["loudspeaker"]["expected"] == 200
        wait_for(
            lambda: (
                d.call("GET", f"/api/v1/warnings/{body['id']}", role="viewer")[1]["coverage"]["loudspeaker"][
                    "sent"
                ]
                == 200
            )
        )
    finally:
        assert d.terminate() == 0


def test_sigterm_lets_sends_in_flight_finish(tmp_path: Path) -> None:
    """SIGTERM mid-dispatch: the batch in flight completes and is recorded, nothing is left `sending`."""
    import sqlite3

    d = _daemon(tmp_path, delay_s=0.3, villages=10, speakers=4, leds=0).start()
    codes = [f"330502101{201 + i:03d}" for i in range(10)]
    status, _ = d.call("POST", "/api/v1/warnings", warning_body(area={"codes": codes}))
    assert status == 202
    record = tmp_path / "sent.jsonl"
    wait_for(lambda: len(read_records(record)) >= 1)
    assert d.terminate() == 0
    con = sqlite3.connect(tmp_path / "state" / "warnd.db")
    states = dict(con.execute("SELECT state, COUNT(*) FROM deliveries GROUP BY state").fetchall())
    assert "sending" not in states, states
    sent = {r[0] for r in con.execute("SELECT target FROM deliveries WHERE state = 'sent'")}
    recorded = {r["target"] for r in read_records(record)}
    assert sent == recorded and sent  # what was sent is recorded as sent: no send lost to the stop
    assert states.get("pending", 0) > 0  # and the rest waits, untouched, for the next start
