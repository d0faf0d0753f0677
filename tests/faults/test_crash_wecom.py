"""WeCom across a crash: SIGKILL warnd mid fan-out of application cards and robot messages, ten times.

A real warnd process sends a red warning by WeCom to 200 people (application text cards) and 10
work-group robots, through the WeCom fake, which serves from a thread of the test process and so
outlives every kill. The kill lands at a random moment of the fan-out, when cards have reached
people but warnd has not recorded them (the fake holds each answer a while after delivering it).

What README promises for WeCom, checked after each restart:
- every person received each warning's card exactly once: the cards in doubt are sent again, the
  very same cards, and WeCom's duplicate check drops the repeats;
- every group received each warning's robot message at least once and at most twice: a robot
  message has no lookup and no duplicate check, so one in flight at the kill may arrive twice.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from tests.fakes.wecom import FakeWecom
from tests.faults.people import (
    AGENT_ID,
    APP_SECRET,
    CORP_ID,
    coverage,
    daemon,
    error_lines,
    people_config,
    red_warning,
    robot_env,
    store_problems,
)
from tests.support.mqtt import free_port
from tests.support.threaded import ThreadedFake
from tests.support.wait import wait_for
from warnd.clock import SystemClock

pytestmark = pytest.mark.slow

ROUNDS = 10
# 99 villages with a secretary and a grid worker each, and two officials: 200 people; 10 robots.
VILLAGES, OFFICIALS, ROBOTS = 99, 2, 10
PEOPLE = 2 * VILLAGES + OFFICIALS
SENDS = PEOPLE + ROBOTS
# How long the fake holds an answer after the card reached the person: with warnd's 8 sends in
# flight, a fan-out takes about a second, and some 8 cards are delivered but unanswered at any moment.
LATENCY_S = 0.03
# warnd forgets its robot windows at every kill, so ten rounds in under a minute would run into
# WeCom's 20 calls a minute per robot and wait a minute: pacing is tests/test_wecom.py's subject,
# repeats are this test's, so the fake's robots take more here.
ROBOT_LIMIT_PER_MIN = 1000


def _received(
    fake: FakeWecom, headlines: list[str]
) -> tuple[Counter[tuple[int, str]], Counter[tuple[int, str]]]:
    """Per (round, person) the cards received, and per (round, robot key) the robot messages received."""
    cards: Counter[tuple[int, str]] = Counter()
    groups: Counter[tuple[int, str]] = Counter()
    for c in fake.app_calls:
        if c.received:
            text = c.body["textcard"]["description"]
            cards.update((n, c.touser) for n, h in enumerate(headlines) if h in text)
    for r in fake.robot_calls:
        if r.received:
            # A robot message may carry several warnings merged: each counts for its own round.
            groups.update((n, r.key) for n, h in enumerate(headlines) if h in r.content)
    return cards, groups


def test_sigkill_mid_wecom_fanout_ten_times_cards_once_robots_at_most_twice(tmp_path: Path) -> None:
    """Ten warnings, each interrupted by SIGKILL mid fan-out: one card per person, each group told."""
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    port = free_port()
    keys = robot_env(ROBOTS)
    fake = FakeWecom(
        SystemClock(), keys=set(keys.values()), corp_id=CORP_ID, secret=APP_SECRET, agent_id=AGENT_ID,
        latency_s=LATENCY_S, robot_limit_per_min=ROBOT_LIMIT_PER_MIN,
    )  # fmt: skip
    with ThreadedFake(fake) as wc:
        config = people_config(tmp_path, port, villages=VILLAGES, officials=OFFICIALS, channels=["wechat"],
                               wecom_base=wc.base_url, robots=ROBOTS)  # fmt: skip
        d = daemon(tmp_path, config, port, ["wechat"], keys).start()
        try:
            headlines: list[str] = []
            sent, interrupted, robot_repeats = 0, 0, 0
            for n in range(ROUNDS):
                headlines.append(f"塘甸镇气象台发布暴雨红色预警（第{n + 1}次）")
                status, answer = d.call("POST", "/api/v1/warnings", red_warning(VILLAGES, headlines[-1]))
                assert status == 202, answer
                # Kill after a random number of this round's sends (short of the last few: the
                # kill itself takes a moment).
                kill_after = sent + rng.randrange(1, SENDS - 8)
                wait_for(lambda k=kill_after: wc.run(lambda: len(fake.app_calls) + len(fake.robot_calls)) > k,
                         30, f"seed {seed} round {n}: the fan-out", poll_s=0.005)  # fmt: skip
                d.kill()
                at_kill = wc.run(lambda: len(fake.app_calls) + len(fake.robot_calls))
                interrupted += at_kill < sent + SENDS
                d.start()
                wait_for(lambda wid=answer["id"]: coverage(d, wid).get("wechat", {}).get("sent") == SENDS,
                         45, f"seed {seed} round {n}: all sent")  # fmt: skip
                sent = wc.run(lambda: len(fake.app_calls) + len(fake.robot_calls))
                cards, groups = wc.run(lambda h=list(headlines): _received(fake, h))
                for k in range(n + 1):
                    people = [c for (r, _), c in cards.items() if r == k]
                    assert len(people) == PEOPLE, f"seed {seed} round {n}: warning {k} missed people"
                    twice = sum(c > 1 for c in people)
                    assert not twice, f"seed {seed} round {n}: warning {k}: {twice} people got the card twice"
                    told = [c for (r, _), c in groups.items() if r == k]
                    assert len(told) == ROBOTS, f"seed {seed} round {n}: warning {k} missed groups"
                    assert max(told) <= 2, (
                        f"seed {seed} round {n}: warning {k} reached a group {max(told)} times"
                    )
                robot_repeats = sum(c - 1 for c in groups.values())
            # A loaded machine may let a round's fan-out finish before the kill lands; most must not.
            assert interrupted >= ROUNDS - 2, f"only {interrupted} of {ROUNDS} kills landed mid fan-out"
            print(f"seed {seed}: {interrupted} kills mid fan-out, {robot_repeats} robot messages repeated")
        finally:
            assert d.terminate() == 0
    assert not store_problems(tmp_path / "state")
    assert not error_lines(tmp_path / "warnd.log")
