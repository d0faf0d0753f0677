"""Sign-off (审核签发): a draft sends nothing until an approver (not its drafter) releases it;
rejecting ends it; approvers are paged after remind_after_min; feed warnings go straight out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.feeds import feed, push_headers
from tests.support.harness import CHANNELS, Harness, warning_body
from tests.test_feeds_chain import ALERT
from warnd import messages

ALL_LEVELS = ["red", "orange", "yellow", "blue"]


def sign_off(**kw: Any) -> dict[str, Any]:
    """Settings with [approval] as shipped (every level of an operator's draft), plus `kw`."""
    return {"approval": {"levels": ALL_LEVELS, "remind_after_min": 15, **kw}}


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    """A harness whose operator drafts need sign-off (the default [approval])."""
    harness = await Harness(tmp_path, settings={**sign_off(), "feed": [feed("upstream", "push")]}).start()
    yield harness
    await harness.close()


def sends(h: Harness) -> list[dict[str, str]]:
    """Every send of every channel so far."""
    return [r for ch in CHANNELS for r in h.adapter(ch).sent]


async def draft(h: Harness, role: str = "operator", **kw: Any) -> str:
    """Issue a warning that must wait: 202 saying awaiting_approval."""
    resp = await h.client.post("/api/v1/warnings", json=warning_body(**kw), headers=h.headers(role))
    assert resp.status == 202, await resp.text()
    body = await resp.json()
    assert body["state"] == "awaiting_approval"
    return body["id"]


async def post(h: Harness, wid: str, verb: str, role: str, body: Any = None) -> Any:
    """POST approve/reject/update/cancel as a role; the response."""
    return await h.client.post(f"/api/v1/warnings/{wid}/{verb}", json=body, headers=h.headers(role))


async def audit(h: Harness, wid: str) -> list[dict[str, Any]]:
    """A warning's audit events, oldest first."""
    resp = await h.client.get(f"/api/v1/audit?warning_id={wid}", headers=h.headers("approver"))
    return (await resp.json())["events"]


async def test_a_draft_reaches_nobody_until_an_approver_releases_it(h: Harness) -> None:
    """Nothing reaches a speaker (or anyone) while it waits; approval plans the schedule from then."""
    wid = await draft(h)
    h.clock.advance(minutes=10)
    await h.run_until_idle()
    assert sends(h) == []
    w = await h.get(wid)
    assert (w["state"], w["schedule"], w["drafted_by"]) == ("awaiting_approval", [], "operator-1")
    # The drafter's role cannot sign off at all; an approver can.
    assert (await post(h, wid, "approve", "operator")).status == 403
    h.clock.advance(minutes=3)
    resp = await post(h, wid, "approve", "approver")
    assert resp.status == 202, await resp.text()
    assert (await resp.json())["state"] == "active"
    await h.run_until_idle()
    plays = h.adapter("loudspeaker").sent
    assert plays and h.adapter("sms").sent
    w = await h.get(wid)
    assert w["state"] == "active"
    # Planned from the moment of approval (08:13 Beijing), not from the draft (08:00).
    assert w["schedule"][0]["at"] == "2026-07-01T08:13:00+08:00"
    events = [(e["action"], e["actor"]) for e in await audit(h, wid)]
    assert events == [("issue", "operator-1"), ("approve", "approver-1")]
    assert (await audit(h, wid))[1]["remote"] == "127.0.0.1"
    # Once released there is nothing left to approve.
    assert (await post(h, wid, "approve", "admin")).status == 409


async def test_the_drafter_cannot_approve_their_own_draft(h: Harness) -> None:
    """Self-approval is 403 even for an approver; another approver (here the admin) may."""
    wid = await draft(h, role="approver")
    resp = await post(h, wid, "approve", "approver")
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "self_approval"
    await h.run_until_idle()
    assert sends(h) == []
    assert (await post(h, wid, "approve", "admin")).status == 202


async def test_self_approval_when_configured(tmp_path: Path) -> None:
    """`self_approval = true` lets the drafter release their own draft."""
    h = await Harness(tmp_path, settings=sign_off(self_approval=True)).start()
    try:
        wid = await draft(h, role="admin")
        assert (await post(h, wid, "approve", "admin")).status == 202
    finally:
        await h.close()


async def test_reject_ends_it_with_nothing_sent(h: Harness) -> None:
    """A rejected draft sends nothing, now or later, and its reminder never pages anyone."""
    wid = await draft(h)
    assert (await post(h, wid, "reject", "approver", {})).status == 422  # a reason is required
    resp = await post(h, wid, "reject", "approver", {"reason": "雨量数据有误"})
    assert resp.status == 200, await resp.text()
    h.clock.advance(hours=2)
    await h.run_until_idle()
    assert sends(h) == []
    assert (await h.get(wid))["state"] == "rejected"
    event = (await audit(h, wid))[-1]
    assert (event["action"], event["actor"], event["detail"]["reason"]) == (
        "reject",
        "approver-1",
        "雨量数据有误",
    )
    assert (await post(h, wid, "approve", "approver")).status == 409


async def test_a_waiting_draft_pages_the_approvers(h: Harness) -> None:
    """After remind_after_min the officials are paged on SMS, voice and WeCom; never the public."""
    wid = await draft(h)
    h.clock.advance(minutes=14)
    await h.run_until_idle()
    assert sends(h) == []
    h.clock.advance(minutes=1)
    await h.run_until_idle()
    paged = sorted((r["channel"], r["target"]) for r in sends(h))
    assert paged == [("sms", "off-0"), ("voice", "off-0"), ("wechat", "off-0")]
    assert {r["message"] for r in sends(h)} == {"approval_reminder"}
    # The pages are not the warning reaching anyone: its coverage is still empty.
    assert (await h.get(wid))["coverage"] == {}
    w = await h.daemon.store.get_warning(wid)
    assert w is not None
    values = messages.values_for(w, "approval_reminder", {"sent_at": w["created_at"]},
                                 settings=h.settings, directory=h.daemon.directory(), channel="sms",
                                 recipient_id="off-0")  # fmt: skip
    text = messages.channel_text("approval_reminder", values, h.settings, "sms", ack=False)
    assert "待签发：暴雨红色预警" in text and "7月1日08:00起等待审核签发" in text, text
    # Paged again as long later; approval stops the pages.
    h.clock.advance(minutes=15)
    await h.run_until_idle()
    assert len(h.adapter("sms").sent) == 2
    assert (await post(h, wid, "approve", "approver")).status == 202
    await h.run_until_idle()
    before = len([r for r in h.adapter("sms").sent if r["step"].startswith("approval")])
    h.clock.advance(minutes=30)
    await h.run_until_idle()
    assert len([r for r in h.adapter("sms").sent if r["step"].startswith("approval")]) == before == 2


async def test_a_feed_warning_goes_straight_out(h: Harness) -> None:
    """A warning pushed by an upstream feed was signed off upstream: it is sent at once."""
    h.clock.set(h.clock.now().replace(hour=0))
    resp = await h.client.post("/api/v1/feeds/upstream/cap", data=ALERT, headers=push_headers())
    assert resp.status == 202, await resp.text()
    body = await resp.json()
    assert body["state"] == "active"
    await h.run_until_idle()
    assert (await h.get(body["id"]))["state"] == "active"
    assert h.adapter("sms").sent


async def test_an_operators_cap_document_says_it_awaits_sign_off(h: Harness) -> None:
    """CAP posted by an operator waits like a JSON draft, and its 202 says so in `state`."""
    headers = {**h.headers("operator"), "Content-Type": "application/cap+xml"}
    resp = await h.client.post("/api/v1/warnings", data=ALERT, headers=headers)
    assert resp.status == 202, await resp.text()
    body = await resp.json()
    assert (body["state"], body["outcome"], body["created"]) == ("awaiting_approval", "accepted", True)
    # The same document again is a duplicate of the draft, still waiting.
    again = await h.client.post("/api/v1/warnings", data=ALERT, headers=headers)
    assert again.status == 200
    assert (await again.json())["state"] == "awaiting_approval"
    h.clock.advance(minutes=5)
    await h.run_until_idle()
    assert sends(h) == []


async def test_bypass_levels_go_straight_out(tmp_path: Path) -> None:
    """A level in bypass_levels skips sign-off; the others still wait."""
    h = await Harness(tmp_path, settings=sign_off(bypass_levels=["red"])).start()
    try:
        red = await h.issue(warning_body())
        assert (await h.get(red))["state"] == "active"
        await draft(h, level="yellow")
    finally:
        await h.close()


async def test_an_update_waits_for_sign_off_and_a_cancel_does_not(h: Harness) -> None:
    """An operator's update of a level needing sign-off waits; approved, it is applied; a cancel
    goes straight out (cancel_needs_approval = false)."""
    wid = await draft(h)
    assert (await post(h, wid, "approve", "approver")).status == 202
    await h.run_until_idle()
    resp = await post(h, wid, "update", "operator", {"headline": "暴雨红色预警（更新）"})
    assert resp.status == 202
    assert (await resp.json())["state"] == "awaiting_approval"
    w = await h.get(wid)
    assert (w["version"], w["pending_change"]["kind"]) == (1, "update")
    # One change waits at a time.
    assert (await post(h, wid, "update", "operator", {"headline": "又一次"})).status == 409
    assert (await post(h, wid, "approve", "operator")).status == 403
    assert (await post(h, wid, "approve", "approver")).status == 202
    w = await h.get(wid)
    assert (w["version"], w["headline"], w["pending_change"]) == (2, "暴雨红色预警（更新）", None)
    resp = await post(h, wid, "cancel", "operator", {"reason": "雨停"})
    assert (await resp.json())["state"] == "cancelled"
    assert (await h.get(wid))["state"] == "cancelled"


async def test_a_cancel_can_be_made_to_wait(tmp_path: Path) -> None:
    """With cancel_needs_approval the all-clear waits; rejected, the warning stays in force."""
    h = await Harness(tmp_path, settings=sign_off(cancel_needs_approval=True)).start()
    try:
        wid = await draft(h)
        assert (await post(h, wid, "approve", "approver")).status == 202
        resp = await post(h, wid, "cancel", "operator", {"reason": "雨停"})
        assert (await resp.json())["state"] == "awaiting_approval"
        assert (await post(h, wid, "reject", "approver", {"reason": "还在下"})).status == 200
        assert (await h.get(wid))["state"] == "active"
    finally:
        await h.close()


async def test_withdrawing_a_draft_sends_nothing(h: Harness) -> None:
    """A cancel of a draft withdraws it: no all-clear, since nobody heard the warning."""
    wid = await draft(h)
    resp = await post(h, wid, "cancel", "operator", {"reason": "录入错误"})
    assert (await resp.json())["state"] == "cancelled"
    h.clock.advance(hours=1)
    await h.run_until_idle()
    assert sends(h) == []
