"""Provider outages in the middle of a fan-out: Twilio and WeCom answer 500, 429 with Retry-After,
nothing at all, or drop the connection, for 20 seconds; then they are healthy again.

A real warnd process sends a red warning to 200 people by SMS, voice call and WeCom application
message; the Twilio and WeCom fakes serve from threads of the test process. Each fake goes wrong
after its 60th send, so the outage always lands mid fan-out. Afterwards:

- every person has exactly one SMS, one call and one WeCom message for the warning's msg_id: a
  send that timed out or lost its connection after the provider took it is looked up at Twilio
  before it is made again, and WeCom drops a repeat of the identical card by its duplicate check;
- no message came back to a fake before the Retry-After its 429 gave had passed;
- no delivery is `dead` while the warning is in force, and the store shows what the fakes then
  report (delivered SMS, completed calls, cards confirmed behind their ack link) as such;
- nothing is half-written in the store, and warnd logged no error.

The outage is short against the retry budget of the test config (`dispatch.max_attempts` and
backoff), so the dispatcher's giving up is not what is tested here; the last test makes it longer
than the whole budget, and is expected to fail until a dependency that is away no longer kills
deliveries of a warning in force.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.fakes.outage import MODES, Mode, Outage
from tests.fakes.twilio import FakeTwilio
from tests.fakes.wecom import FakeWecom
from tests.faults.people import (
    AGENT_ID,
    APP_SECRET,
    CORP_ID,
    coverage,
    daemon,
    deliveries,
    error_lines,
    people_config,
    post,
    red_warning,
    store_problems,
    twilio_received,
    wecom_cards,
    wecom_people_received,
)
from tests.support.mqtt import free_port
from tests.support.threaded import ThreadedFake
from tests.support.wait import wait_for
from warnd.clock import SystemClock

pytestmark = pytest.mark.slow

# 99 villages with a secretary and a grid worker each, and two officials: 200 people.
VILLAGES, OFFICIALS = 99, 2
PEOPLE = 2 * VILLAGES + OFFICIALS
CHANNELS = ("sms", "voice", "wechat")
# Sends that go through at each fake before it goes wrong: mid fan-out, never before it.
OUTAGE_AFTER = 60
OUTAGE_S = 20.0
# warnd's patience per batch; the "timeout" fake holds answers twice that.
SEND_TIMEOUT_S = 3.0
# The retry budget: 40 attempts at most 2 s apart (plus a send timeout each) outlast a 20 s outage
# several times over, so no delivery may die of it.
PATIENT = {"max_attempts": 40, "backoff_base_s": 0.5, "backoff_cap_s": 2.0}


def _env(dispatch: dict[str, Any]) -> dict[str, str]:
    """The dispatch settings of this test, as warnd's environment overrides."""
    env = {f"WARND_DISPATCH__{k.upper()}": str(v) for k, v in dispatch.items()}
    return {**env, "WARND_DISPATCH__SEND_TIMEOUT_S": str(SEND_TIMEOUT_S)}


def _run_outage(tmp_path: Path, mode: Mode, outage_s: float, dispatch: dict[str, Any]) -> None:
    """The whole scenario: fan-out, outage at both providers, recovery, receipts, and every check."""
    port = free_port()
    tw_fake = FakeTwilio()
    wc_fake = FakeWecom(SystemClock(), corp_id=CORP_ID, secret=APP_SECRET, agent_id=AGENT_ID)
    with ThreadedFake(tw_fake) as tw, ThreadedFake(wc_fake) as wc:
        hold_s = 2 * SEND_TIMEOUT_S
        tw_out = tw.run(lambda: tw_fake.outage(Outage(mode, outage_s, after=OUTAGE_AFTER, hold_s=hold_s)))
        wc_out = wc.run(lambda: wc_fake.outage(Outage(mode, outage_s, after=OUTAGE_AFTER, hold_s=hold_s)))
        config = people_config(
            tmp_path, port, villages=VILLAGES, officials=OFFICIALS, channels=CHANNELS, twilio=tw_fake,
            wecom_base=wc.base_url,
        )  # fmt: skip
        d = daemon(tmp_path, config, port, CHANNELS, _env(dispatch)).start()
        try:
            status, answer = d.call("POST", "/api/v1/warnings", red_warning(VILLAGES))
            assert status == 202, answer
            wid = answer["id"]
            wait_for(
                lambda: (
                    all(coverage(d, wid).get(c, {}).get("sent") == PEOPLE for c in CHANNELS)
                    or any(r["state"] == "dead" for r in deliveries(d, wid))
                ),
                outage_s + 40,
                f"{mode}: every delivery sent",
            )
            for fake_thread, out in ((tw, tw_out), (wc, wc_out)):
                assert fake_thread.run(out.over), "the fan-out ended before the outage did"

            # Nothing dead while the warning is in force.
            rows = deliveries(d, wid)
            dead = [f"{r['channel']} {r['target']}: {r['last_error']}" for r in rows if r["state"] == "dead"]
            assert not dead, f"{mode}: {len(dead)} dead while in force, e.g. {dead[:3]}"
            assert d.call("GET", f"/api/v1/warnings/{wid}", role="viewer")[1]["state"] == "active"

            # Exactly one SMS, one call and one WeCom message per person.
            got = tw.run(lambda: twilio_received(tw_fake))
            for channel in ("sms", "voice"):
                expected = {(r["msg_id"], r["target"]) for r in rows if r["channel"] == channel}
                assert set(got[channel]) == expected, f"{mode}: {channel} not received by everyone"
                twice = {k: n for k, n in got[channel].items() if n > 1}
                assert not twice, f"{mode}: {len(twice)} {channel} received more than once"
            cards = wc.run(lambda: wecom_people_received(wc_fake))
            users = {r["target"]: r for r in rows if r["channel"] == "wechat"}
            assert len(users) == PEOPLE and len(cards) == PEOPLE, f"{mode}: WeCom not received by everyone"
            twice_wc = {u: n for u, n in cards.items() if n > 1}
            assert not twice_wc, f"{mode}: {len(twice_wc)} people got the WeCom card more than once"

            # Retry-After: nothing came back before the fake said.
            for name, fake_thread, out in (("Twilio", tw, tw_out), ("WeCom", wc, wc_out)):
                assert mode != "429" or fake_thread.run(lambda o=out: len(o.throttled)) > 0
                early = fake_thread.run(out.too_soon)
                assert not early, f"{name}: {len(early)} before Retry-After, e.g. {early[:3]}"

            # The providers report back; the store shows it.
            created = tw.run(lambda: [*((s, "delivered") for s in tw_fake.messages),
                                      *((s, "completed") for s in tw_fake.calls)])  # fmt: skip
            for sid, final in created:
                result = tw.run(lambda s=sid, f=final: tw_fake.advance(s, f))
                assert result is None or result.status == 200, result
            for url in wc.run(lambda: wecom_cards(wc_fake)):
                assert post(url) == 200
            wait_for(
                lambda: (
                    [c.get("delivered") for c in (coverage(d, wid).get(ch, {}) for ch in CHANNELS)]
                    == [PEOPLE] * 3
                ),
                20,
                f"{mode}: receipts recorded",
            )
            rows = deliveries(d, wid)
            want = {"sms": "delivered", "voice": "delivered", "wechat": "acknowledged"}
            wrong = [f"{r['channel']} {r['target']}: {r['state']}" for r in rows
                     if r["state"] != want[r["channel"]]]  # fmt: skip
            assert not wrong, f"{mode}: {wrong[:5]}"
        finally:
            assert d.terminate() == 0
    assert not store_problems(tmp_path / "state")
    assert not error_lines(tmp_path / "warnd.log")


@pytest.mark.parametrize("mode", MODES)
def test_outage_mid_fanout_everyone_gets_one_of_each(tmp_path: Path, mode: Mode) -> None:
    """Twilio and WeCom fail 20 s mid fan-out (500, 429, no answer, dropped line): one of each per person."""
    _run_outage(tmp_path, mode, OUTAGE_S, PATIENT)


def test_outage_longer_than_the_retry_budget_kills_nothing_in_force(tmp_path: Path) -> None:
    """500s for 20 s against a retry budget of about 3 s: the deliveries wait, none is dead."""
    _run_outage(tmp_path, "500", OUTAGE_S, {"max_attempts": 3, "backoff_base_s": 0.5, "backoff_cap_s": 1.0})
