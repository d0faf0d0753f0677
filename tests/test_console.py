"""The console's server side: its page and files from the package, who-am-I, the villages, the
live event streams (board, one warning, devices, audit log) and a draft's loudspeaker audio."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.support.harness import Harness, warning_body
from tests.support.phonemes import needs_espeak
from warnd.api.events import REFRESH_S


async def next_event(resp: Any, timeout_s: float = 10) -> tuple[str, dict[str, Any]]:
    """The next `event:` of a server-sent event stream, with its JSON data."""
    name, data = "message", []
    async with asyncio.timeout(timeout_s):
        while True:
            line = (await resp.content.readline()).decode().rstrip("\n")
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
            elif line == "" and data:
                return name, json.loads("\n".join(data))


async def test_the_page_and_its_files_are_served_from_the_package(harness: Harness) -> None:
    """`/` is the console; its scripts come from warnd, with a policy that allows nothing else."""
    resp = await harness.client.get("/")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
    page = await resp.text()
    assert "/console/app.js" in page and "http" not in page.replace("http-equiv", "")
    for name, kind in (
        ("app.js", "text/javascript"),
        ("style.css", "text/css"),
        ("i18n.js", "text/javascript"),
    ):
        r = await harness.client.get(f"/console/{name}")
        assert (r.status, r.content_type) == (200, kind), name
    assert (await harness.client.get("/console/nope.js")).status == 404
    assert (await harness.client.get("/console/..%2f__init__.py")).status == 404


async def test_me_and_villages(harness: Harness) -> None:
    """Who the token is (and what it may do); the villages with their points, no people."""
    resp = await harness.client.get("/api/v1/me", headers=harness.headers("operator"))
    me = await resp.json()
    assert (me["name"], me["role"], me["can"]["operator"], me["can"]["approver"]) == (
        "operator-1",
        "operator",
        True,
        False,
    )
    assert (await harness.client.get("/api/v1/me", headers={"Authorization": "Bearer wrong"})).status == 401
    resp = await harness.client.get("/api/v1/villages", headers=harness.headers("viewer"))
    villages = (await resp.json())["villages"]
    first = villages[0]
    assert set(first) == {"code", "name", "township", "lat", "lon", "speakers", "led_boards", "test"}
    assert "phone" not in json.dumps(villages)


async def test_the_board_stream_shows_a_new_warning_and_its_coverage_live(harness: Harness) -> None:
    """One stream: a snapshot at once, another when a warning is issued, another as it is sent."""
    h = harness
    stream = {**h.headers("viewer"), "Accept": "text/event-stream"}
    async with h.client.get("/api/v1/events", headers=stream) as resp:
        assert resp.content_type == "text/event-stream"
        assert await next_event(resp) == ("board", {"warnings": []})
        wid = await h.issue(warning_body())
        name, snap = await next_event(resp)
        assert (name, [w["id"] for w in snap["warnings"]]) == ("board", [wid])
        await h.run_until_idle()
        _, snap = await next_event(resp, timeout_s=REFRESH_S * 5)
        assert snap["warnings"][0]["coverage"]["loudspeaker"]["expected"] >= 1


async def test_the_warning_stream_gives_operators_whole_phone_numbers(harness: Harness) -> None:
    """Unconfirmed people: the whole number for a duty officer to call, masked for a viewer."""
    h = harness
    wid = await h.issue(warning_body())
    await h.run_until_idle()
    seen = {}
    stream = {**h.headers("operator"), "Accept": "text/event-stream"}
    async with h.client.get(f"/api/v1/events?warning_id={wid}", headers=stream) as resp:
        name, snap = await next_event(resp)
    assert (name, snap["warning"]["id"]) == ("warning", wid)
    seen["operator"] = {u["person_id"]: u["phone"] for u in snap["report"]["unconfirmed"]}
    # Without Accept: text/event-stream, one snapshot as JSON.
    resp = await h.client.get(f"/api/v1/events?warning_id={wid}", headers=h.headers("viewer"))
    once = await resp.json()
    assert once["event"] == "warning"
    seen["viewer"] = {u["person_id"]: u["phone"] for u in once["data"]["report"]["unconfirmed"]}
    assert seen["operator"]["off-0"] == "+8613800000000"
    assert seen["viewer"]["off-0"] != "+8613800000000"
    missing = await h.client.get("/api/v1/events?warning_id=W20260101-00000000", headers=h.headers())
    assert missing.status == 404


async def test_the_devices_stream_shows_a_speaker_going_offline_live(harness: Harness) -> None:
    """`?view=devices`: the devices page's body at once, again when a device's status changes."""
    h = harness
    stream = {**h.headers("viewer"), "Accept": "text/event-stream"}
    async with h.client.get("/api/v1/events?view=devices", headers=stream) as resp:
        name, snap = await next_event(resp)
        assert name == "devices"
        first = snap["devices"][0]
        assert first["state"] == "unknown"
        # What the device hub writes when a speaker's last will arrives.
        await h.store.device_status(first["id"], False, {"reason": "lwt"}, h.clock.now())
        name, snap = await next_event(resp, timeout_s=REFRESH_S * 5)
        assert name == "devices"
        assert {d["id"]: d["state"] for d in snap["devices"]}[first["id"]] == "offline"
    # The same body as GET /api/v1/devices.
    listed = await (await h.client.get("/api/v1/devices", headers=h.headers("viewer"))).json()
    assert listed == snap


async def test_the_audit_stream_is_live_and_for_approvers(harness: Harness) -> None:
    """`?view=audit`: a new action appears without asking again; below approver it is refused."""
    h = harness
    stream = {**h.headers("approver"), "Accept": "text/event-stream"}
    async with h.client.get("/api/v1/events?view=audit", headers=stream) as resp:
        name, snap = await next_event(resp)
        assert (name, snap["events"]) == ("audit", [])
        wid = await h.issue(warning_body())
        name, snap = await next_event(resp, timeout_s=REFRESH_S * 5)
        assert name == "audit"
        assert [(e["action"], e["warning_id"]) for e in snap["events"]] == [("issue", wid)]
    for role in ("viewer", "operator"):
        refused = await h.client.get("/api/v1/events?view=audit", headers=h.headers(role))
        assert refused.status == 403, role
    unknown = await h.client.get("/api/v1/events?view=nope", headers=h.headers("viewer"))
    assert unknown.status == 400


@needs_espeak
async def test_a_draft_s_audio_can_be_played_before_it_is_sent(harness: Harness) -> None:
    """The preview audio is an MP3 of what the loudspeakers would say; nothing is stored."""
    h = harness
    resp = await h.client.post("/api/v1/warnings/preview/audio", json=warning_body(), headers=h.headers())
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "audio/mpeg"
    mp3 = await resp.read()
    assert mp3[:3] == b"ID3" or mp3[0] == 0xFF
    listing = await (await h.client.get("/api/v1/warnings", headers=h.headers("viewer"))).json()
    assert listing["warnings"] == []
    viewer = await h.client.post(
        "/api/v1/warnings/preview/audio", json=warning_body(), headers=h.headers("viewer")
    )
    assert viewer.status == 403
