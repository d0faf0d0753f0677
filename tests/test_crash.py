"""Crash safety with a real process: SIGKILL right after a 202, and in the middle of dispatch."""

from __future__ import annotations

import signal
import sqlite3
import time
from collections import defaultdict
from pathlib import Path

import pytest

from tests.support.county import county_toml, write_directory
from tests.support.harness import warning_body
from tests.support.mqtt import free_port
from tests.support.process import DaemonProcess, write_config
from tests.support.recording import read_records
from tests.support.wait import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    """The store a daemon is killed on: SQLite's file (None), or a fresh PostgreSQL database."""
    return None if request.param == "sqlite" else str(request.getfixturevalue("pg_url"))


def _daemon(
    tmp_path: Path, delay_s: float = 0.0, store_url: str | None = None, **directory: object
) -> DaemonProcess:
    """A recording daemon over a generated directory, on SQLite or on the PostgreSQL `store_url`."""
    port = free_port()
    extra = f'[store]\nurl = "{store_url}"\n' if store_url else ""
    config = write_config(tmp_path, write_directory(tmp_path / "directory.toml", **directory), port, extra)
    argv = ["-m", "tests.support.recording_daemon", str(config), str(tmp_path / "sent.jsonl"), str(delay_s)]
    return DaemonProcess(argv, port, tmp_path / "warnd.log")


def test_warning_answered_202_survives_sigkill(tmp_path: Path, store_url: str | None) -> None:
    """Kill -9 right after the 202: after restart the warning is there and goes out."""
    d = _daemon(tmp_path, store_url=store_url, villages=2, speakers=2).start()
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


def test_sigkill_mid_dispatch_completes_after_restart_none_twice(
    tmp_path: Path, store_url: str | None
) -> None:
    """Kill -9 while 200 speakers are sent to: after restart each is reached, with one msg_id.

    On PostgreSQL the killed daemon's session, and its lock on the database, end with its
    connection: the restarted one is not refused.
    """
    d = _daemon(tmp_path, delay_s=0.02, store_url=store_url, villages=40, speakers=5, leds=0).start()
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
    assert states.get("pending", 0) > 0  # and the rest waits, untouched, for the next start:
    # the batch the dispatcher had claimed to send next (it claims one ahead) was given back as it
    # was — no attempt counted, no send in doubt to look up at the next start.
    untouched = con.execute(
        "SELECT COUNT(*) FROM deliveries WHERE state = 'pending' AND attempts = 0 AND maybe_sent_at IS NULL"
    ).fetchone()[0]
    assert untouched == states["pending"], states


def _step_rows(db: Path, warning_id: str) -> tuple[int, str | None]:
    """(delivery rows, state of the first step's job) of a warning, read from the store's file."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        (rows,) = con.execute(
            "SELECT COUNT(*) FROM deliveries WHERE warning_id = ?", (warning_id,)
        ).fetchone()
        job = con.execute(
            "SELECT state FROM jobs WHERE warning_id = ? AND kind = 'step' ORDER BY due_at LIMIT 1",
            (warning_id,),
        ).fetchone()
        return rows, job[0] if job else None
    finally:
        con.close()


def test_sigkill_between_the_parts_of_a_county_wide_step_loses_and_doubles_nothing(tmp_path: Path) -> None:
    """Kill -9 after a 6,600-delivery step's first part is written, before its last: after the restart
    every speaker and board has its one delivery row and is reached with one msg_id."""
    directory = tmp_path / "directory.toml"
    directory.write_text(county_toml(villages=600, people_per_village=0, officials=1), encoding="utf-8")
    port = free_port()
    config = write_config(tmp_path, directory, port)
    argv = ["-m", "tests.support.recording_daemon", str(config), str(tmp_path / "sent.jsonl")]
    d = DaemonProcess(argv, port, tmp_path / "warnd.log").start()
    db = tmp_path / "state" / "warnd.db"
    status, body = d.call("POST", "/api/v1/warnings", warning_body(area={"codes": ["330502"]}))
    assert status == 202
    wid = body["id"]
    deadline = time.monotonic() + 60
    while _step_rows(db, wid)[0] == 0:
        assert time.monotonic() < deadline, "no part of the step written within 60 s"
        time.sleep(0.002)
    assert d.proc is not None
    d.proc.send_signal(signal.SIGSTOP)  # frozen at once: what the file holds now is what a kill leaves
    rows, job = _step_rows(db, wid)
    d.kill()
    # Part of the step written, its job still pending: the kill came between two parts.
    assert job == "pending" and rows > 0, f"the kill missed the step's parts: {rows} rows, job {job}"
    d.start()
    try:
        wait_for(lambda: _step_rows(db, wid)[1] == "done", 60)
        assert rows < _step_rows(db, wid)[0]
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            by_channel = dict(
                con.execute(
                    "SELECT channel, COUNT(*) FROM deliveries WHERE warning_id = ? GROUP BY channel", (wid,)
                ).fetchall()
            )
            doubled = con.execute(
                "SELECT COUNT(*) FROM (SELECT target FROM deliveries WHERE warning_id = ? AND step = 'issue'"
                " GROUP BY channel, target HAVING COUNT(*) > 1)",
                (wid,),
            ).fetchone()[0]
        finally:
            con.close()
        assert by_channel["loudspeaker"] == 6000 and by_channel["led"] == 600
        assert doubled == 0
        record = tmp_path / "sent.jsonl"
        wait_for(
            lambda: len({r["target"] for r in read_records(record) if r["channel"] == "loudspeaker"}) == 6000,
            120,
        )
        msg_ids: dict[str, set[str]] = defaultdict(set)
        for r in read_records(record):
            if r["channel"] == "loudspeaker":
                msg_ids[r["target"]].add(r["msg_id"])
        assert all(len(ids) == 1 for ids in msg_ids.values())
    finally:
        assert d.terminate() == 0
