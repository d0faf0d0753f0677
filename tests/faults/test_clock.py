"""The wall clock stepped an hour back and an hour forward under a running warnd.

A real warnd process runs under libfaketime: its wall clock (time.time, datetime.now, SQLite's
'now') is the real one plus an offset read from a file the test rewrites, while its monotonic
clock (asyncio's timers) stays real, as when NTP or an operator steps a server's clock. The
warning's pre-warning schedule has five steps seconds apart (policy steps a few hundredths of
an hour before the onset), each an SMS to the township's people through a recording channel.

- Steps fire by the wall clock, each exactly once: an hour back does not fire a done step again,
  an hour forward fires every step it skips over, once, and back again fires nothing twice.
- The sends of a step that has fired are due now, whatever the clock does next: an hour back in
  the middle of a step's sends must not hold the rest of them for an hour.
"""

from __future__ import annotations

import glob
import os
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.support.county import write_directory
from tests.support.harness import warning_body
from tests.support.mqtt import free_port
from tests.support.process import DaemonProcess, write_config
from tests.support.recording import read_records
from tests.support.wait import wait_for

pytestmark = pytest.mark.slow

# Debian's libfaketime (package libfaketime); the MT build is the one for threaded programs
# (the store's thread).
LIBFAKETIME = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))
# Steps before the onset, in hours: 32.4, 21.6, 14.4 and 7.2 s, and the onset itself.
STEP_HOURS = (0.009, 0.006, 0.004, 0.002, 0.0)
ONSET_S = 40.0
# libfaketime reads the offset file again at most this often (FAKETIME_CACHE_DURATION).
REREAD_S = 1


def _step(hours: float) -> str:
    """A step's name as warnd gives it (planner.step_name)."""
    return f"T-{hours:g}h" if hours else "onset"


class SteppedClock:
    """The offset of the daemon's wall clock, in the file libfaketime reads.

    Args:
        path: the offset file.
    """

    def __init__(self, path: Path) -> None:
        """Start at the real time."""
        self.path = path
        self.set("+0")

    def set(self, offset: str) -> None:
        """Step the daemon's wall clock to real time plus offset ("+0", "-1h", "+1h"), atomically."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(offset + "\n", encoding="ascii")
        os.replace(tmp, self.path)

    def env(self) -> dict[str, str]:
        """The environment that puts a process under this clock."""
        return {
            "LD_PRELOAD": LIBFAKETIME[0],
            "FAKETIME_TIMESTAMP_FILE": str(self.path),
            "FAKETIME_CACHE_DURATION": str(REREAD_S),
            # asyncio's timers and warnd's send timeouts run on the real monotonic clock.
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }


def _daemon(tmp_path: Path, clock: SteppedClock, villages: int, delay_s: float) -> DaemonProcess:
    """A recording warnd under the stepped clock: red is an SMS to everyone at each of five steps."""
    port = free_port()
    directory = write_directory(tmp_path / "directory.toml", villages=villages, speakers=0, leds=0,
                                test_village=False)  # fmt: skip
    roles = '["official", "village_secretary", "grid_worker"]'
    steps = "".join(f'[[policy.steps]]\nhours_before = {h}\nchannels = ["sms"]\nroles = {roles}\n\n'
                    for h in STEP_HOURS)  # fmt: skip
    extra = (
        '[policy.levels.red]\nchannels = ["sms"]\nack_roles = []\nquiet_hours = false\n'
        f"roles = {{ sms = {roles} }}\n\n{steps}"
    )
    config = write_config(tmp_path, directory, port, extra=extra)
    argv = ["-m", "tests.support.recording_daemon", str(config), str(tmp_path / "sent.jsonl"), str(delay_s)]
    return DaemonProcess(argv, port, tmp_path / "warnd.log", env=clock.env())


def _issue(d: DaemonProcess, villages: int) -> str:
    """A red warning for every village, its onset ONSET_S from now (real time: the clock is at +0)."""
    onset = datetime.now(UTC) + timedelta(seconds=ONSET_S)
    codes = [f"330502101{201 + i:03d}" for i in range(villages)]
    status, answer = d.call("POST", "/api/v1/warnings",
                            warning_body(area={"codes": codes}, onset=onset.isoformat()))  # fmt: skip
    assert status == 202, answer
    return answer["id"]


def _sends(record: Path) -> Counter[tuple[str, str]]:
    """How many SMS each (step, person) got."""
    return Counter((r["step"], r["target"]) for r in read_records(record) if r["channel"] == "sms")


def _steps_sent(record: Path) -> set[str]:
    """The steps that have sent anything."""
    return {step for step, _ in _sends(record)}


@pytest.fixture
def clock(tmp_path: Path) -> SteppedClock:
    """The offset file of a daemon under libfaketime."""
    if not LIBFAKETIME:
        pytest.skip("libfaketime is not installed (make test installs it)")
    return SteppedClock(tmp_path / "faketime")


def test_an_hour_back_and_forward_fires_every_step_once(tmp_path: Path, clock: SteppedClock) -> None:
    """Back after the first step, forward again, an hour ahead, back: five steps, each once to each person."""
    villages = 3
    people = 2 * villages + 1
    d = _daemon(tmp_path, clock, villages, 0.0).start()
    record = tmp_path / "sent.jsonl"
    names = [_step(h) for h in STEP_HOURS]
    try:
        started = time.monotonic()
        wid = _issue(d, villages)
        wait_for(lambda: names[0] in _steps_sent(record), 20, "the first step")
        clock.set("-1h")  # an hour back: the first step is an hour ahead again, and done
        # Past the second step's time, then an hour forward again (back to real time).
        time.sleep(max(0.0, started + ONSET_S - STEP_HOURS[1] * 3600 + 2 * REREAD_S - time.monotonic()))
        clock.set("+0")
        wait_for(lambda: names[1] in _steps_sent(record), 10, "the second step, once the clock is back")
        clock.set("+1h")  # an hour ahead: the last three steps are all past
        wait_for(lambda: set(names) <= _steps_sent(record), 10, "every step")
        clock.set("+0")  # and back: every step is done
        time.sleep(3 * REREAD_S)
        sends = _sends(record)
        assert {step for step, _ in sends} == set(names)
        assert len(sends) == len(names) * people, "a step missed someone"
        twice = {k: n for k, n in sends.items() if n > 1}
        assert not twice, f"sent more than once: {twice}"
        status, w = d.call("GET", f"/api/v1/warnings/{wid}", role="viewer")
        assert status == 200
        assert [s["state"] for s in w["schedule"]] == ["done"] * len(names)
    finally:
        assert d.terminate() == 0


def test_an_hour_back_mid_send_holds_none_of_the_step(tmp_path: Path, clock: SteppedClock) -> None:
    """The clock goes an hour back while a step's 81 SMS are going out: the rest still go, at once."""
    villages = 40
    people = 2 * villages + 1
    # 81 SMS, 4 at a time, 0.1 s each: the step takes about 2 s to send.
    d = _daemon(tmp_path, clock, villages, 0.1).start()
    record = tmp_path / "sent.jsonl"
    first = _step(STEP_HOURS[0])
    try:
        _issue(d, villages)
        wait_for(lambda: sum(step == first for step, _ in _sends(record)) >= 4, 20, "the first sends")
        clock.set("-1h")
        at_step = sum(step == first for step, _ in _sends(record))
        wait_for(lambda: sum(step == first for step, _ in _sends(record)) == people, 15,
                 f"the step's other SMS after an hour back ({at_step} of {people} had gone)")  # fmt: skip
    finally:
        assert d.terminate() == 0
