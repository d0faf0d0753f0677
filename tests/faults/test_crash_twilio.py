"""Effectively-once SMS and calls across a crash: SIGKILL warnd mid fan-out, ten times in a row.

A real warnd process sends a red warning by SMS and by voice call to 200 people through the
Twilio fake, which serves from a thread of the test process and so outlives every kill. The kill
lands at a random moment of the fan-out, when some messages are at Twilio but warnd has not
recorded them (the fake holds each answer a while after creating the message). After the restart
every person must have exactly one SMS and one call per msg_id: what may have gone out before the
crash is looked up at Twilio, not sent again.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.support.county import village_code, write_directory
from tests.support.harness import warning_body
from tests.support.mqtt import free_port
from tests.support.process import DaemonProcess, write_config
from tests.support.twilio_harness import FROM, FakeTwilioThread
from tests.support.wait import wait_for

pytestmark = pytest.mark.slow

ROUNDS = 10
# 99 villages with a secretary and a grid worker each, and two officials: 200 people.
VILLAGES, OFFICIALS = 99, 2
PEOPLE = 2 * VILLAGES + OFFICIALS
CHANNELS = ("sms", "voice")
# 400 SMS and 400 calls a second: a fan-out takes half a second, so ten rounds with a restart
# each (~1 s to import and start warnd) stay well under a minute on a loaded machine.
RATE_PER_S = 400
# How long the fake holds a create's answer after the message or call exists: with sends 2.5 ms
# apart, about 40 per channel are at Twilio but unanswered at any moment of the fan-out.
LATENCY_S = 0.1


def _config(tmp_path: Path, port: int, api_base: str, fake: Any) -> Path:
    """A warnd.toml: Twilio at the fake, webhooks at warnd itself, red = SMS and calls to everyone."""
    directory = write_directory(
        tmp_path / "directory.toml", villages=VILLAGES, speakers=0, leds=0, officials=OFFICIALS,
        test_village=False,
    )  # fmt: skip
    roles = '["official", "village_secretary", "grid_worker"]'
    extra = (
        f'[twilio]\naccount_sid = "{fake.account_sid}"\nauth_token = "{fake.auth_token}"\n'
        f'from_number = "{FROM}"\napi_base = "{api_base}"\n'
        # Webhook mode: no polling requests, and every create names its msg_id in the callback URL.
        f'public_base_url = "http://127.0.0.1:{port}"\n'
        f"rate_per_s = {RATE_PER_S}\ncalls_per_s = {RATE_PER_S}\n\n"
        '[policy.levels.red]\nchannels = ["sms", "voice"]\nack_roles = []\nquiet_hours = false\n'
        f"roles = {{ sms = {roles}, voice = {roles} }}\n"
    )
    return write_config(tmp_path, directory, port, extra=extra)


def _creates(fake: Any) -> dict[str, list[tuple[str, str]]]:
    """Per channel, the (msg_id, target) of every message and call created at the fake, in order."""
    out: dict[str, list[tuple[str, str]]] = {c: [] for c in CHANNELS}
    for r in fake.requests:
        if r.method == "POST" and r.path.endswith(("/Messages.json", "/Calls.json")):
            q = parse_qs(urlsplit(r.form["StatusCallback"]).query)
            out["sms" if r.path.endswith("/Messages.json") else "voice"].append((q["m"][0], q["t"][0]))
    # Nothing is refused in this test: every create request made a message or a call.
    assert len(out["sms"]) == len(fake.messages) and len(out["voice"]) == len(fake.calls)
    return out


def _all_sent(d: DaemonProcess, wid: str) -> bool:
    """Whether every SMS and call of the warning is recorded sent."""
    status, w = d.call("GET", f"/api/v1/warnings/{wid}", role="viewer")
    cov = w.get("coverage", {}) if status == 200 else {}
    return all(cov.get(c, {}).get("sent") == PEOPLE for c in CHANNELS)


def test_sigkill_mid_fanout_ten_times_each_person_gets_one_sms_and_one_call(tmp_path: Path) -> None:
    """Ten warnings, each interrupted by SIGKILL mid fan-out: one SMS and one call per person each."""
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    port = free_port()
    codes = [village_code(i) for i in range(VILLAGES)]
    with FakeTwilioThread(latency_s=LATENCY_S) as ft:
        config = _config(tmp_path, port, ft.fake.base_url, ft.fake)
        argv = ["-m", "tests.support.twilio_daemon", str(config)]
        d = DaemonProcess(argv, port, tmp_path / "warnd.log").start()
        try:
            created, interrupted = 0, 0
            for n in range(ROUNDS):
                headline = f"塘甸镇气象台发布暴雨红色预警（第{n + 1}次）"
                body = warning_body(area={"codes": codes}, headline=headline)
                status, answer = d.call("POST", "/api/v1/warnings", body)
                assert status == 202, answer
                # Kill after a random number of this round's 2 × 200 creates (short of the last few:
                # the kill itself takes a moment).
                kill_after = created + rng.randrange(1, 2 * PEOPLE - 40)
                def past(k: int = kill_after) -> bool:
                    """The fake has taken more than k sends."""
                    return len(ft.fake.messages) + len(ft.fake.calls) > k

                wait_for(past, 30, "the fan-out", poll_s=0.002)
                d.kill()
                at_kill = ft.run(lambda: len(ft.fake.messages) + len(ft.fake.calls))
                interrupted += at_kill < created + 2 * PEOPLE
                d.start()
                wait_for(lambda wid=answer["id"]: _all_sent(d, wid), 45, f"seed {seed} round {n}: all sent")
                creates = ft.run(lambda: _creates(ft.fake))
                created = sum(len(v) for v in creates.values())
                for channel in CHANNELS:
                    counts = Counter(creates[channel])
                    twice = {k: v for k, v in counts.items() if v > 1}
                    assert not twice, f"seed {seed} round {n}: {channel} sent {len(twice)} twice ({at_kill=})"
                    assert len(counts) == (n + 1) * PEOPLE
            # A loaded machine may let a round's fan-out finish before the kill lands; most must not.
            assert interrupted >= ROUNDS - 2, f"only {interrupted} of {ROUNDS} kills landed mid fan-out"
        finally:
            assert d.terminate() == 0
