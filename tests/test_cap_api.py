"""`GET /api/v1/warnings/{id}.cap`: warnings read back as CAP 1.2 that the XSD and the reader accept."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from tests.support.data import read
from tests.support.feeds import feed, feed_harness, push_headers, villages_toml
from tests.support.harness import Harness, warning_body
from tests.test_feeds_chain import ALERT, ALERT_ID, CANCEL, CANCEL_ID, SENDER, UPDATE, UPDATE_ID
from warnd.cap import CapAlert, parse_cap, to_warning_fields, validate_cap_xsd


async def get_cap(h: Harness, wid: str) -> bytes:
    """The .cap of a warning, asserting 200 and the content type."""
    resp = await h.client.get(f"/api/v1/warnings/{wid}.cap", headers=h.headers("viewer"))
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "application/cap+xml"
    return await resp.read()


async def test_operator_warning_round_trip(harness: Harness) -> None:
    body = warning_body(
        area={
            "codes": ["330502101201"],
            "polygons": [[[30.0, 119.99], [30.01, 119.99], [30.01, 120.01]]],
            "circles": [{"lat": 30.018, "lon": 120.0, "radius_km": 0.5}],
        },
        onset="2026-07-01T10:00:00+08:00",
        expires="2026-07-02T08:00:00+08:00",
    )
    wid = await harness.issue(body)
    xml = await get_cap(harness, wid)
    validate_cap_xsd(xml)
    alert = parse_cap(xml, validate=True)
    assert alert.msg_type == "Alert"
    assert alert.status == "Actual"
    fields = to_warning_fields(alert)
    for key in ("event", "level", "headline", "description", "instruction"):
        assert fields[key] == body[key], key
    assert fields["area"]["codes"] == ["330502101201"]
    assert fields["area"]["circles"] == body["area"]["circles"]
    # The writer closes the ring; the reader keeps what was written.
    assert fields["area"]["polygons"][0][:3] == body["area"]["polygons"][0]
    assert fields["onset"] == body["onset"]
    # The plain warning route still answers JSON next to the .cap route.
    assert (await harness.get(wid))["id"] == wid
    assert (await harness.client.get(f"/api/v1/warnings/{wid}.cap")).status == 401
    missing = await harness.client.get(
        "/api/v1/warnings/W20260701-00000000.cap", headers=harness.headers("viewer")
    )
    assert missing.status == 404


async def test_updated_and_cancelled_warnings_as_cap(harness: Harness) -> None:
    wid = await harness.issue(warning_body(sender="cma@12379", identifier="33050241600000_20260701080000_1"))
    resp = await harness.client.post(
        f"/api/v1/warnings/{wid}/update",
        json={"level": "red", "headline": "升级为红色预警"},
        headers=harness.headers(),
    )
    assert resp.status == 202
    update = parse_cap(await get_cap(harness, wid), validate=True)
    assert update.msg_type == "Update"
    assert [(r.sender, r.identifier) for r in update.references] == [
        ("cma@12379", "33050241600000_20260701080000_1")
    ]
    assert update.infos[0].headline == "升级为红色预警"
    resp = await harness.client.post(f"/api/v1/warnings/{wid}/cancel", json={}, headers=harness.headers())
    assert resp.status == 202
    cancel = parse_cap(await get_cap(harness, wid), validate=True)
    assert cancel.msg_type == "Cancel"
    assert cancel.references[0].identifier == "33050241600000_20260701080000_1"


async def test_ingested_real_alert_round_trip(tmp_path: Path) -> None:
    """A real upstream alert read back keeps its sender, identifier, sent time, text and polygon."""
    data = read("cap/intl/seychelles_signed_polygon.xml")
    original = parse_cap(data)
    h = await feed_harness(
        tmp_path, [feed("upstream", "push")], villages_toml({"990000000001": (-9.3, 46.2)})
    )
    try:
        h.clock.set(original.sent)
        resp = await h.client.post("/api/v1/feeds/upstream/cap", data=data, headers=push_headers())
        assert resp.status == 202
        wid = (await resp.json())["id"]
        xml = await get_cap(h, wid)
        validate_cap_xsd(xml)
        back = parse_cap(xml)
        assert (back.sender, back.identifier, back.sent) == (
            original.sender,
            original.identifier,
            original.sent,
        )
        a, b = to_warning_fields(original), to_warning_fields(back)
        for key in ("event", "level", "headline", "description", "instruction", "expires"):
            assert b[key] == a[key], key
        assert b["area"]["polygons"] == a["area"]["polygons"]
        # Pushed back into warnd, it is the same message: a duplicate.
        again = await h.client.post("/api/v1/feeds/upstream/cap", data=xml, headers=push_headers())
        assert again.status == 200
        assert (await again.json())["id"] == wid
    finally:
        await h.close()


def message(alert: CapAlert) -> tuple[str, str, datetime]:
    """What a CAP reference names: (sender, identifier, sent)."""
    return (alert.sender, alert.identifier, alert.sent)


def refs(alert: CapAlert) -> list[tuple[str, str, datetime]]:
    """An alert's references as (sender, identifier, sent)."""
    return [(r.sender, r.identifier, r.sent) for r in alert.references]


async def export(h: Harness, wid: str) -> tuple[CapAlert, str]:
    """The warning's CAP now, validated against the XSD: parsed, and its raw <sent> text."""
    xml = await get_cap(h, wid)
    validate_cap_xsd(xml)
    sent = re.search(rb"<sent>([^<]*)</sent>", xml)
    assert sent is not None
    return parse_cap(xml, validate=True), sent.group(1).decode()


async def test_operator_chain_cancel_references_every_version(harness: Harness) -> None:
    """Issue, update twice, cancel: each export is sent when that version was made, in +08:00 whole
    seconds, and references every message before it."""
    harness.clock.set(datetime(2026, 7, 1, 0, 0, 0, 250_000, tzinfo=UTC))
    wid = await harness.issue(warning_body(level="yellow"))
    alert, sent_text = await export(harness, wid)
    assert (alert.msg_type, alert.references, sent_text) == ("Alert", (), "2026-07-01T08:00:00+08:00")
    versions = [message(alert)]

    for minutes, level, v in ((30, "orange", 2), (25, "red", 3)):
        harness.clock.advance(minutes=minutes, seconds=7.9)
        resp = await harness.client.post(
            f"/api/v1/warnings/{wid}/update", json={"level": level}, headers=harness.headers()
        )
        assert resp.status == 202, await resp.text()
        update, sent_text = await export(harness, wid)
        local = harness.clock.now().astimezone(alert.sent.tzinfo)
        assert update.msg_type == "Update"
        assert update.identifier == f"{alert.identifier}_v{v}"
        assert sent_text == local.replace(microsecond=0).isoformat()
        assert refs(update) == versions
        assert to_warning_fields(update)["level"] == level
        versions.append(message(update))

    harness.clock.advance(hours=1, seconds=42.9)
    resp = await harness.client.post(f"/api/v1/warnings/{wid}/cancel", json={}, headers=harness.headers())
    assert resp.status == 202
    cancel, sent_text = await export(harness, wid)
    assert cancel.msg_type == "Cancel"
    assert sent_text == "2026-07-01T09:55:58+08:00"
    assert cancel.sent > versions[-1][2]
    assert refs(cancel) == versions
    assert len({v[1] for v in [*versions, message(cancel)]}) == 4, "every message has its own identifier"


async def test_upstream_chain_exports_the_upstream_messages(tmp_path: Path) -> None:
    """An upstream Alert, Update and Cancel read back as those very messages, the Cancel naming both."""
    h = await feed_harness(tmp_path, [feed("upstream", "push")])
    try:
        wids = []
        for doc in (ALERT, UPDATE, CANCEL):
            h.clock.set(parse_cap(doc).sent)
            resp = await h.client.post("/api/v1/feeds/upstream/cap", data=doc, headers=push_headers())
            assert resp.status == 202, await resp.text()
            wids.append((await resp.json())["id"])
            h.clock.advance(seconds=3)
        assert len(set(wids)) == 1
        cancel, sent_text = await export(h, wids[0])
        assert (cancel.msg_type, cancel.sender, cancel.identifier) == ("Cancel", SENDER, CANCEL_ID)
        assert sent_text == "2026-07-01T11:00:00+08:00"
        assert refs(cancel) == [message(parse_cap(ALERT)), message(parse_cap(UPDATE))]
        assert [r.identifier for r in cancel.references] == [ALERT_ID, UPDATE_ID]
    finally:
        await h.close()
