"""Signed ack links: 收到 acknowledges exactly who pressed it; altered or stale links change nothing."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from adapters.wecom import WecomAdapter
from tests.fakes.wecom import FakeWecom
from tests.support import db
from tests.support.harness import Harness, warning_body
from tests.support.harness import test_settings as make_settings
from tests.support.live import close_live, live_harness
from warnd.acklink import AckLinkError, AckSigner, load_secret
from warnd.clock import FakeClock

SECRET = "app-secret-for-acks"


@pytest.fixture
async def fake() -> AsyncIterator[FakeWecom]:
    """A fake WeCom whose time is the test's fake clock."""
    f = FakeWecom(FakeClock(), secret=SECRET)
    f.base = await f.start()  # type: ignore[attr-defined]
    yield f
    await f.close()


async def start(tmp_path: Path, fake: FakeWecom) -> Harness:
    """warnd with five officials on WeCom and the real adapter."""
    return await live_harness(
        tmp_path,
        [WecomAdapter],
        clock=fake.clock,
        directory={"officials": 5},
        settings={
            "http": {"rate_limit_per_s": 0, "ack_rate_limit_per_s": 0},
            "wecom": {
                "api_base": fake.base,  # type: ignore[attr-defined]
                "corp_id": fake.corp_id,
                "agent_id": fake.agent_id,
                "secret": SECRET,
            },
        },
    )


def links(fake: FakeWecom) -> dict[str, str]:
    """WeCom user → the path of the ack link in the card they were sent."""
    return {c.touser: urlsplit(c.body["textcard"]["url"]).path for c in fake.app_calls if c.errcode == 0}


async def person_states(h: Harness, wid: str) -> dict[str, str]:
    """Person id → delivery state of the warning's WeCom application messages."""
    return {
        d["target"]: d["state"]
        for d in await h.store.deliveries_for(wid)
        if d["channel"] == "wechat" and not d["target"].startswith("robot:")
    }


async def test_three_of_five_press_and_exactly_those_are_acknowledged(
    tmp_path: Path, fake: FakeWecom
) -> None:
    """Five cards, three people open the link and press 收到: three acknowledged, two still sent."""
    h = await start(tmp_path, fake)
    try:
        wid = await h.issue(warning_body())
        await h.run_until_idle()
        paths = links(fake)
        assert sorted(paths) == [f"official{k}" for k in range(5)]
        pressers = ["official0", "official2", "official4"]
        for user in pressers:
            page = await h.client.get(paths[user])
            assert page.status == 200
            text = await page.text()
            assert "收到" in text
            assert "塘甸镇气象台发布暴雨红色预警" in text
            assert "#d0021b" in text  # red
            assert "请立即转移低洼地带" in text
            done = await h.client.post(paths[user])
            assert done.status == 200
            assert "已确认" in await done.text()
        states = await person_states(h, wid)
        assert states == {
            "off-0": "acknowledged",
            "off-1": "sent",
            "off-2": "acknowledged",
            "off-3": "sent",
            "off-4": "acknowledged",
        }
        # Opening the link again shows it is confirmed; the page itself changed nothing for the others.
        again = await h.client.get(paths["official0"])
        assert "已确认收到" in await again.text()
        w = await h.get(wid)
        assert w["coverage"]["wechat"]["acknowledged"] == 3
        acks = await db.query(h.store, "SELECT source, status, target FROM acks ORDER BY id")
        assert [(a["source"], a["status"], a["target"]) for a in acks] == [
            ("acklink", "acknowledged", p) for p in ("off-0", "off-2", "off-4")
        ]
    finally:
        await close_live(h)


async def test_all_clear_card_and_page_say_lifted_never_the_old_instruction(
    tmp_path: Path, fake: FakeWecom
) -> None:
    """The all-clear's card and the page behind its link say what was lifted and why, not 'evacuate'."""
    h = await start(tmp_path, fake)
    try:
        wid = await h.issue(warning_body())
        await h.run_until_idle()
        sent = len(fake.app_calls)
        resp = await h.client.post(
            f"/api/v1/warnings/{wid}/cancel", json={"reason": "雨势减弱"}, headers=h.headers()
        )
        assert resp.status == 202
        await h.run_until_idle()
        cards = [c for c in fake.app_calls[sent:] if c.errcode == 0]
        assert len(cards) == 5
        for call in cards:
            card = call.body["textcard"]
            assert card["title"] == "解除暴雨红色预警"
            assert "雨势减弱" in card["description"]
            assert "请立即转移" not in card["description"]
            page = await (await h.client.get(urlsplit(card["url"]).path)).text()
            assert "解除暴雨红色预警" in page and "雨势减弱" in page
            assert "请立即转移" not in page
    finally:
        await close_live(h)


async def test_tampered_and_expired_links_are_refused_and_change_nothing(
    tmp_path: Path, fake: FakeWecom
) -> None:
    """An altered signature or payload gets 403, an expired link 410; no delivery moves."""
    h = await start(tmp_path, fake)
    try:
        wid = await h.issue(warning_body())
        await h.run_until_idle()
        paths = links(fake)
        token = paths["official1"].removeprefix("/ack/")
        body, mac = token.split(".")
        # 1. a flipped character in the signature
        flipped = mac[:-1] + ("A" if mac[-1] != "A" else "B")
        # 2. the payload rewritten to name another person's delivery, signature kept
        claim = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        claim["d"] += 1
        forged = base64.urlsafe_b64encode(json.dumps(claim).encode()).rstrip(b"=").decode()
        for bad in (f"{body}.{flipped}", f"{forged}.{mac}", body, "not-a-token"):
            for method in ("GET", "POST"):
                resp = await h.client.request(method, f"/ack/{bad}")
                assert resp.status == 403, (bad, method)
                assert "链接无效" in await resp.text()
        assert set((await person_states(h, wid)).values()) == {"sent"}
        # 3. the genuine link after its lifetime (72 h by default)
        h.clock.advance(hours=72, seconds=1)
        for method in ("GET", "POST"):
            resp = await h.client.request(method, paths["official1"])
            assert resp.status == 410
            assert "已过期" in await resp.text()
        assert set((await person_states(h, wid)).values()) == {"sent"}
        acks = await db.query(h.store, "SELECT COUNT(*) AS n FROM acks")
        assert acks[0]["n"] == 0
    finally:
        await close_live(h)


def test_signer_binds_delivery_person_and_expiry() -> None:
    """A token verifies only with its own key and before its expiry, and says what it was made for."""
    now = datetime(2026, 7, 1, tzinfo=UTC)
    signer = AckSigner(b"k" * 32, timedelta(hours=1))
    token = signer.sign(42, "p-0001", now)
    claim = signer.verify(token, now + timedelta(minutes=59))
    assert (claim.delivery_id, claim.person_id) == (42, "p-0001")
    with pytest.raises(AckLinkError) as exc:
        signer.verify(token, now + timedelta(hours=1))
    assert exc.value.status == 410
    with pytest.raises(AckLinkError) as exc:
        AckSigner(b"x" * 32, timedelta(hours=1)).verify(token, now)
    assert exc.value.status == 403


def test_secret_is_generated_once_and_kept(tmp_path: Path) -> None:
    """Without a configured secret one is generated under state_dir and reused after a restart."""
    (tmp_path / "d.toml").write_text("")
    settings = make_settings(tmp_path, tmp_path / "d.toml")
    first = load_secret(settings)
    assert len(first) == 32
    key_file = settings.state_dir / "ack_link.key"
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert load_secret(settings) == first
    configured = make_settings(tmp_path, tmp_path / "d.toml", ack_links={"secret": "s" * 20})
    assert load_secret(configured) == b"s" * 20
    with pytest.raises(ValueError, match="at least 16 bytes"):
        load_secret(make_settings(tmp_path, tmp_path / "d.toml", ack_links={"secret": "short"}))
