"""WeCom: robots within 20 a minute with nothing lost, application cards, the access token."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from adapters.wecom import WecomAdapter
from tests.fakes.outage import Mode, Outage
from tests.fakes.wecom import FakeWecom
from tests.support.harness import Harness, warning_body
from tests.support.live import close_live, live_harness
from warnd.clock import FakeClock

KEYS = {"WARND_TEST_ROBOT_A": "key-aaaa-1111", "WARND_TEST_ROBOT_B": "key-bbbb-2222"}
SECRET = "app-secret-do-not-leak"
ROBOTS = """
[[wecom_robot]]
key_env = "WARND_TEST_ROBOT_A"
name = "村1工作群"
villages = ["330502101201"]

[[wecom_robot]]
key_env = "WARND_TEST_ROBOT_B"
name = "村2工作群"
villages = ["330502101202"]
"""


@pytest.fixture
async def fake() -> AsyncIterator[FakeWecom]:
    """A fake WeCom on loopback, its time the test's fake clock."""
    f = FakeWecom(FakeClock(), keys=set(KEYS.values()), secret=SECRET)
    f.base = await f.start()  # type: ignore[attr-defined]
    yield f
    await f.close()


async def start(
    tmp_path: Path, fake: FakeWecom, monkeypatch: pytest.MonkeyPatch, **directory: Any
) -> Harness:
    """warnd with the real WeCom adapter pointed at the fake (robot keys in the environment)."""
    for env, key in KEYS.items():
        monkeypatch.setenv(env, key)
    monkeypatch.setenv("WARND_WECOM__SECRET", SECRET)
    return await live_harness(
        tmp_path,
        [WecomAdapter],
        clock=fake.clock,
        directory={"extra": ROBOTS, **directory},
        settings={
            # The test reads the API far faster than a console would.
            "http": {"rate_limit_per_s": 0},
            "wecom": {
                "api_base": fake.base,  # type: ignore[attr-defined]
                "corp_id": fake.corp_id,
                "agent_id": fake.agent_id,
                "secret": SECRET,
            },
        },
    )


async def wechat_rows(h: Harness, wid: str) -> list[dict[str, Any]]:
    """The wechat deliveries of a warning, as the API lists them."""
    resp = await h.client.get(f"/api/v1/warnings/{wid}/deliveries", headers=h.headers("viewer"))
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    rows = body["deliveries"] if isinstance(body, dict) else body
    return [r for r in rows if r["channel"] == "wechat"]


async def test_two_robots_thirty_warnings_in_a_minute_nothing_lost(
    tmp_path: Path, fake: FakeWecom, monkeypatch: pytest.MonkeyPatch, log_events: list[dict[str, Any]]
) -> None:
    """Every warning reaches both groups; no robot gets more than 20 calls in any minute."""
    h = await start(tmp_path, fake, monkeypatch)
    try:
        ids = []
        for i in range(30):
            body = warning_body(headline=f"测试预警第{i:02d}号", area={"codes": ["330502101"]})
            ids.append(await h.issue(body))
            await h.run_until_idle()
            h.clock.advance(2)  # 30 warnings within one minute
        for _ in range(40):
            h.clock.advance(15)
            await h.run_until_idle()
        for key in KEYS.values():
            calls = [c for c in fake.robot_calls if c.key == key]
            assert all(c.errcode == 0 for c in calls), [c.errcode for c in calls]
            assert fake.max_per_minute(key) <= 20
            text = "\n".join(c.content for c in calls)
            for i in range(30):
                assert f"测试预警第{i:02d}号" in text, f"warning {i} never reached {key}"
            # The overflow went out merged, not one call per warning.
            assert len(calls) < 30
            assert any(c.content.count("测试预警第") > 1 for c in calls)
        for wid in ids:
            rows = await wechat_rows(h, wid)
            robots = [r for r in rows if r["target"].startswith("robot:")]
            assert sorted(r["target"] for r in robots) == [
                "robot:WARND_TEST_ROBOT_A",
                "robot:WARND_TEST_ROBOT_B",
            ]
            assert all(r["state"] == "sent" for r in rows), rows
            w = await h.get(wid)
            assert w["coverage"]["wechat"]["sent"] == w["coverage"]["wechat"]["expected"] == 3
        # Robot content names the area in the robot's own village and carries what to do.
        first = next(c for c in fake.robot_calls if c.key == KEYS["WARND_TEST_ROBOT_A"])
        assert "区域：村1" in first.content
        assert "村2" not in first.content
        assert "应对：请立即转移" in first.content
        assert "🟥" in first.content
        # No key or secret ever reaches a log line or a stored error.
        dumped = json.dumps(log_events, ensure_ascii=False, default=str)
        for secret in (*KEYS.values(), SECRET):
            assert secret not in dumped
    finally:
        await close_live(h)


async def test_frequency_error_waits_a_window_then_sends(
    tmp_path: Path, fake: FakeWecom, monkeypatch: pytest.MonkeyPatch
) -> None:
    """45009 from WeCom: retried, but not before a whole minute has passed."""
    h = await start(tmp_path, fake, monkeypatch)
    try:
        fake.script_robot(KEYS["WARND_TEST_ROBOT_A"], [45009])
        wid = await h.issue(warning_body())
        await h.run_until_idle()
        row = next(r for r in await wechat_rows(h, wid) if r["target"] == "robot:WARND_TEST_ROBOT_A")
        assert row["state"] == "failed"
        assert "45009" in row["last_error"]
        h.clock.advance(50)
        await h.run_until_idle()
        assert len([c for c in fake.robot_calls if c.key == KEYS["WARND_TEST_ROBOT_A"]]) == 1
        h.clock.advance(15)
        await h.run_until_idle()
        calls = [c for c in fake.robot_calls if c.key == KEYS["WARND_TEST_ROBOT_A"]]
        assert [c.errcode for c in calls] == [45009, 0]
        row = next(r for r in await wechat_rows(h, wid) if r["target"] == "robot:WARND_TEST_ROBOT_A")
        assert row["state"] == "sent"
    finally:
        await close_live(h)


async def test_invalid_key_and_missing_env_are_dead_with_a_reason(
    tmp_path: Path, fake: FakeWecom, monkeypatch: pytest.MonkeyPatch
) -> None:
    """93000 (robot removed) and an unset key variable: dead at once, never retried."""
    h = await start(tmp_path, fake, monkeypatch)
    try:
        monkeypatch.setenv("WARND_TEST_ROBOT_A", "key-that-wecom-does-not-know")
        monkeypatch.delenv("WARND_TEST_ROBOT_B")
        wid = await h.issue(warning_body(area={"codes": ["330502101"]}))
        await h.run_until_idle()
        rows = {r["target"]: r for r in await wechat_rows(h, wid)}
        a, b = rows["robot:WARND_TEST_ROBOT_A"], rows["robot:WARND_TEST_ROBOT_B"]
        assert a["state"] == "dead"
        assert "93000" in a["last_error"]
        assert b["state"] == "dead"
        assert "WARND_TEST_ROBOT_B is not set" in b["last_error"]
        assert "key-that-wecom-does-not-know" not in a["last_error"]
        assert rows["off-0"]["state"] == "sent"  # the application message is unaffected
        h.clock.advance(3600)
        await h.run_until_idle()
        assert len(fake.robot_calls) == 0  # unknown keys are not even counted by the fake
    finally:
        await close_live(h)


async def test_token_expired_mid_run_refreshes_once(
    tmp_path: Path, fake: FakeWecom, monkeypatch: pytest.MonkeyPatch
) -> None:
    """42001 on every card of a batch: one gettoken, then every card is sent."""
    h = await start(tmp_path, fake, monkeypatch, officials=5)
    try:
        await h.issue(warning_body())
        await h.run_until_idle()
        assert fake.token_requests == 1
        assert len([c for c in fake.app_calls if c.errcode == 0]) == 5
        fake.expire_token_once()
        fake.expire_token_once()
        fake.expire_token_once()
        fake.expire_token_once()
        fake.expire_token_once()  # all five concurrent sends of the next warning hear 42001
        wid = await h.issue(warning_body(headline="第二次预警"))
        await h.run_until_idle()
        assert fake.token_requests == 2
        adapter = h.daemon.adapters["wechat"]
        assert isinstance(adapter, WecomAdapter)
        assert adapter.token_refreshes == 1
        people = [r for r in await wechat_rows(h, wid) if not r["target"].startswith("robot:")]
        assert len(people) == 5
        assert all(r["state"] == "sent" for r in people)
        second = [c for c in fake.app_calls if "第二次预警" in json.dumps(c.body, ensure_ascii=False)]
        assert [c.errcode for c in second].count(42001) == 5
        assert [c.errcode for c in second].count(0) == 5
    finally:
        await close_live(h)


async def test_card_is_a_textcard_with_a_signed_link(
    tmp_path: Path, fake: FakeWecom, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The card has the level, headline, instruction, 收到 and an /ack/ link on public_url."""
    h = await start(tmp_path, fake, monkeypatch)
    try:
        await h.issue(warning_body(level="orange", status="actual"))
        await h.run_until_idle()
        (call,) = fake.app_calls
        card = call.body["textcard"]
        assert call.touser == "official0"
        assert card["title"] == "暴雨橙色预警"
        assert "塘甸镇气象台发布暴雨红色预警" in card["description"]
        assert "请立即转移" in card["description"]
        assert card["btntxt"] == "收到"
        assert card["url"].startswith("http://127.0.0.1:8080/ack/")
        assert len(card["description"].encode()) <= 512
    finally:
        await close_live(h)


@pytest.mark.allow_error_logs
async def test_wrong_app_secret_is_dead_and_reported(
    tmp_path: Path, fake: FakeWecom, monkeypatch: pytest.MonkeyPatch, log_events: list[dict[str, Any]]
) -> None:
    """gettoken 40001: cards are dead with a reason, robots still go out, the secret is not logged."""
    fake.secret = "the-real-one"
    h = await start(tmp_path, fake, monkeypatch)
    try:
        wid = await h.issue(warning_body())
        await h.run_until_idle()
        rows = {r["target"]: r for r in await wechat_rows(h, wid)}
        assert rows["off-0"]["state"] == "dead"
        assert "40001" in rows["off-0"]["last_error"]
        assert rows["robot:WARND_TEST_ROBOT_A"]["state"] == "sent"
        assert any(e["event"] == "wecom.auth_failed" for e in log_events)
        assert SECRET not in json.dumps(log_events, ensure_ascii=False, default=str)
    finally:
        await close_live(h)


@pytest.mark.parametrize("mode", ["close", "429"])
async def test_a_card_sent_again_is_the_same_card_and_reaches_no_one_twice(
    tmp_path: Path, fake: FakeWecom, monkeypatch: pytest.MonkeyPatch, mode: Mode
) -> None:
    """WeCom took the cards but the line dropped (or a gateway said 429, Retry-After 30): one card each.

    The resend comes minutes later, yet it is the very card of the first attempt (time and ack
    link date from when the delivery was planned), so WeCom's duplicate check drops it.
    """
    h = await start(tmp_path, fake, monkeypatch, officials=3)
    try:
        outage = fake.outage(Outage(mode, 3600, retry_after_s=30))
        wid = await h.issue(warning_body())
        await h.run_until_idle()
        people = [r for r in await wechat_rows(h, wid) if not r["target"].startswith("robot:")]
        assert len(people) == 3 and {r["state"] for r in people} == {"failed"}
        outage.end()
        if mode == "429":
            asked = len(outage.seen)
            fake.clock.advance(25)  # Retry-After said 30 s: not yet
            await h.run_until_idle()
            assert len(outage.seen) == asked
        fake.clock.advance(300)
        await h.run_until_idle()
        people = [r for r in await wechat_rows(h, wid) if not r["target"].startswith("robot:")]
        assert {r["state"] for r in people} == {"sent"}
        cards = [c for c in fake.app_calls if c.errcode == 0]
        received = Counter(c.touser for c in cards if c.received)
        assert received == dict.fromkeys(("official0", "official1", "official2"), 1)
        if mode == "close":
            assert len(cards) == 6 and sum(c.duplicate for c in cards) == 3  # each sent twice, got once
    finally:
        await close_live(h)
