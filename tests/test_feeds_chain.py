"""Alert by push, Update by poll, Cancel by MQTT: one warning, updated then cancelled, with its history."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.support.feeds import feed, feed_harness, push_headers
from tests.support.harness import Harness
from tests.support.mqtt import Broker
from tests.support.wait import until

SENDER = "33050241600000"
ALERT_ID = "33050241600000_20260701080000_1"
UPDATE_ID = "33050241600000_20260701090000_2"
CANCEL_ID = "33050241600000_20260701110000_3"


def cap(
    identifier: str, msg_type: str, sent: str, *, refs: str = "", level: str = "黄色", head: str = ""
) -> bytes:
    """A 12379-style CAP message for the generated township's first village."""
    references = f"<references>{refs}</references>" if refs else ""
    info = (
        "<info><language>zh-CN</language><category>Met</category><event>暴雨</event>"
        "<urgency>Expected</urgency><severity>Moderate</severity><certainty>Likely</certainty>"
        "<expires>2026-07-02T08:00:00+08:00</expires><senderName>吴兴区气象台</senderName>"
        f"<headline>{head or '吴兴区气象台发布暴雨预警'}</headline>"
        "<description>预计未来6小时内降雨量将达50毫米以上。</description>"
        f"<parameter><valueName>预警颜色</valueName><value>{level}</value></parameter>"
        "<area><areaDesc>塘甸村</areaDesc><geocode><valueName>行政区划代码</valueName>"
        "<value>330502101201</value></geocode></area></info>"
    )
    if msg_type == "Cancel":
        info = ""
    return (
        '<?xml version="1.0" encoding="UTF-8"?><alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">'
        f"<identifier>{identifier}</identifier><sender>{SENDER}</sender><sent>{sent}</sent>"
        f"<status>Actual</status><msgType>{msg_type}</msgType><scope>Public</scope>{references}{info}</alert>"
    ).encode()


ALERT = cap(ALERT_ID, "Alert", "2026-07-01T08:00:00+08:00")
# The references' sent time is a second off the original's, as 12379 writes them (docs/architecture.md).
UPDATE = cap(
    UPDATE_ID,
    "Update",
    "2026-07-01T09:00:00+08:00",
    refs=f"{SENDER},{ALERT_ID},2026-07-01T08:00:01+08:00",
    level="橙色",
    head="吴兴区气象台将暴雨黄色预警升级为橙色",
)
CANCEL = cap(
    CANCEL_ID, "Cancel", "2026-07-01T11:00:00+08:00", refs=f"{SENDER},{UPDATE_ID},2026-07-01T09:00:00+08:00"
)


@pytest.fixture
async def update_server() -> AsyncIterator[TestServer]:
    """A loopback upstream publishing the Update."""
    app = web.Application()

    async def serve(_request: web.Request) -> web.Response:
        """The Update document."""
        return web.Response(body=UPDATE, content_type="application/cap+xml")

    app.router.add_get("/latest.cap", serve)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


async def wait_state(h: Harness, wid: str, state: str, timeout_s: float = 10.0) -> None:
    """Wait (real time: the broker delivers asynchronously) for the warning to reach a state."""

    async def current() -> str:
        return (await h.daemon.store.get_warning(wid) or {})["state"]

    await until(current, timeout_s, what=f"warning {wid} state", want=state)


async def test_alert_update_cancel_through_three_sources(
    tmp_path: Path, broker: Broker, update_server: TestServer
) -> None:
    feeds = [
        feed("push-in", "push"),
        feed("poll-in", "poll", url=str(update_server.make_url("/latest.cap"))),
        feed("mqtt-in", "mqtt", topic="upstream/cap/#"),
    ]
    h = await feed_harness(
        tmp_path, feeds, settings={"mqtt": {"url": broker.url, "client_id": "warnd-chain"}}
    )
    link = h.daemon.feeds.mqtt
    assert link is not None
    task = asyncio.create_task(link.link.run_loop())
    try:
        h.clock.set(h.clock.now().replace(hour=0))
        resp = await h.client.post("/api/v1/feeds/push-in/cap", data=ALERT, headers=push_headers())
        assert resp.status == 202, await resp.text()
        wid = (await resp.json())["id"]
        await h.run_until_idle()
        sent_before = len(h.adapter("sms").by_msg())
        assert sent_before > 0

        h.clock.advance(hours=1)
        report = await h.daemon.feeds.pollers["poll-in"].poll_once()
        assert report.results == 1
        w = await h.get(wid)
        assert (w["state"], w["level"], w["version"]) == ("updated", "orange", 2)
        await h.run_until_idle()

        h.clock.advance(hours=2)
        await link.link.wait_connected(10)
        async with aiomqtt.Client(broker.host, broker.port, identifier="upstream-publisher") as client:
            await client.publish("upstream/cap/wuxing", CANCEL, qos=1)
        await wait_state(h, wid, "cancelled")
        await h.run_until_idle()

        listing = await (await h.client.get("/api/v1/warnings", headers=h.headers("viewer"))).json()
        assert [x["id"] for x in listing["warnings"]] == [wid]
        history = [(a["action"], a["actor"]) for a in await h.daemon.store.audit_log(wid)]
        assert ("issue", "feed:push-in") in history
        assert ("update", "feed:poll-in") in history
        assert ("cancel", "feed:mqtt-in") in history
        assert [a for a, _ in history if a in ("issue", "update", "cancel")] == ["issue", "update", "cancel"]
        docs = await h.daemon.feeds.records.documents_for(wid)
        assert [(d["identifier"], d["source"], d["outcome"]) for d in docs] == [
            (ALERT_ID, "push", "accepted"),
            (UPDATE_ID, "poll", "updated"),
            (CANCEL_ID, "mqtt", "cancelled"),
        ]
        # A late re-delivery of the Alert or the Update, through any source, changes nothing.
        again = await h.client.post("/api/v1/feeds/push-in/cap", data=UPDATE, headers=push_headers())
        assert again.status == 200
        assert (await h.get(wid))["state"] == "cancelled"
        health = {
            f["name"]: f
            for f in (await (await h.client.get("/api/v1/feeds", headers=h.headers("viewer"))).json())[
                "feeds"
            ]
        }
        assert health["mqtt-in"]["counts"] == {"cancelled": 1}
        assert health["poll-in"]["counts"] == {"updated": 1}
        assert health["push-in"]["counts"] == {"accepted": 1, "duplicate": 1}
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await h.close()
