"""The coverage report: per channel and village, laggards, confirmation times; JSON and CSV."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from pathlib import Path
from typing import Any

from tests.support.harness import Harness, warning_body

V1, V2 = "330502101201", "330502101202"


async def ack(h: Harness, wid: str, target: str, channel: str, status: str) -> None:
    """A receiver confirms (a person replies 1, a speaker reports it played)."""
    rows = [d for d in await h.store.deliveries_for(wid) if d["target"] == target and d["channel"] == channel]
    assert await h.daemon.feedback.ack(source=channel, status=status, msg_id=rows[0]["msg_id"], target=target)


async def scenario(tmp_path: Path) -> tuple[Harness, str]:
    """Red for two villages: one speaker dead, one played; sec-0 and off-0 confirm, sec-1 never does."""
    h = await Harness(tmp_path, script={f"spk-{V1}-2": ["permanent"]}).start()
    wid = await h.issue(warning_body(area={"codes": [V1, V2]}))
    await h.run_until_idle()
    await ack(h, wid, f"spk-{V1}-1", "loudspeaker", "played")
    await ack(h, wid, f"spk-{V2}-1", "loudspeaker", "received")
    h.clock.advance(minutes=3)
    await ack(h, wid, "sec-0", "sms", "acknowledged")
    h.clock.advance(minutes=4)
    await ack(h, wid, "off-0", "voice", "acknowledged")
    h.clock.advance(minutes=3)  # +10 min: sec-1 is called (叫应)
    await h.run_until_idle()
    return h, wid


async def get_report(h: Harness, wid: str, **kw: Any) -> Any:
    """GET the report as the viewer."""
    headers = {**h.headers("viewer"), **kw.pop("headers", {})}
    return await h.client.get(f"/api/v1/warnings/{wid}/report", headers=headers, **kw)


async def test_report_counts_per_channel_and_village_and_names_the_laggards(tmp_path: Path) -> None:
    """Counts per channel and village, unconfirmed people, silent speakers, time to confirmation."""
    h, wid = await scenario(tmp_path)
    try:
        resp = await get_report(h, wid)
        assert resp.status == 200
        rep = await resp.json()
        assert rep["channels"]["loudspeaker"] == {
            "expected": 4,
            "sent": 3,
            "delivered": 2,
            "acknowledged": 1,
            "failed": 1,
        }
        # sms: off-0, sec-0, grid-0, sec-1, grid-1; the one who confirmed by voice counts under voice.
        assert rep["channels"]["sms"] == {
            "expected": 5,
            "sent": 5,
            "delivered": 1,
            "acknowledged": 1,
            "failed": 0,
        }
        # voice: off-0 (issue, confirmed) and sec-1 (escalated call).
        assert rep["channels"]["voice"]["expected"] == 2
        assert rep["channels"]["voice"]["acknowledged"] == 1
        villages = {v["code"]: v for v in rep["villages"]}
        assert list(villages) == [V1, V2]
        assert villages[V1]["name"] == "村1"
        assert villages[V1]["channels"]["loudspeaker"] == {
            "expected": 2,
            "sent": 1,
            "delivered": 1,
            "acknowledged": 1,
            "failed": 1,
        }
        assert villages[V2]["channels"]["loudspeaker"] == {
            "expected": 2,
            "sent": 2,
            "delivered": 1,
            "acknowledged": 0,
            "failed": 0,
        }
        # The township official is attached to both villages and counted in each.
        assert villages[V1]["channels"]["sms"]["expected"] == 3
        assert villages[V2]["channels"]["sms"]["expected"] == 3
        assert [u["person_id"] for u in rep["unconfirmed"]] == ["sec-1"]
        sec1 = rep["unconfirmed"][0]
        assert sec1["villages"] == [V2]
        assert sec1["escalated"] is True
        assert sec1["phone"] != "+8613900000001"  # masked
        assert sec1["channels"] == ["sms", "voice"]
        assert villages[V2]["unconfirmed"] == ["sec-1"]
        assert villages[V1]["unconfirmed"] == []
        silent = {s["device"]: s["state"] for s in rep["speakers_not_played"]}
        assert silent == {f"spk-{V1}-2": "dead", f"spk-{V2}-1": "delivered", f"spk-{V2}-2": "sent"}
        assert villages[V1]["speakers_not_played"] == [f"spk-{V1}-2"]
        assert rep["confirmations"] == {
            "required": 3,  # the ack roles: off-0, sec-0, sec-1
            "confirmed": 2,
            "first_at": "2026-07-01T08:03:00+08:00",
            "last_at": "2026-07-01T08:07:00+08:00",
            "first_after_s": 180.0,
            "last_after_s": 420.0,
        }
        assert [(e["person_id"], e["target"]) for e in rep["escalations"]] == [("sec-1", "sec-1")]
    finally:
        await h.close()


async def test_report_as_csv_by_query_or_accept_header(tmp_path: Path) -> None:
    """?format=csv and Accept: text/csv both give the same table; JSON stays the default."""
    h, wid = await scenario(tmp_path)
    try:
        r1 = await get_report(h, wid, params={"format": "csv"})
        r2 = await get_report(h, wid, headers={"Accept": "text/csv"})
        assert r1.status == 200
        assert r1.headers["Content-Type"] == "text/csv; charset=utf-8"
        raw = await r1.read()
        assert raw == await r2.read()
        # A UTF-8 byte order mark, or Excel on a Chinese Windows reads the names as GBK mojibake.
        assert raw.startswith(b"\xef\xbb\xbf")
        reader = csv.DictReader(io.StringIO(raw.decode("utf-8-sig")))
        assert reader.fieldnames is not None and reader.fieldnames[0] == "section"
        rows = list(reader)
        total = next(r for r in rows if r["section"] == "total" and r["channel"] == "loudspeaker")
        assert (total["expected"], total["sent"], total["acknowledged"], total["failed"]) == (
            "4",
            "3",
            "1",
            "1",
        )
        v2 = next(
            r
            for r in rows
            if r["section"] == "village" and r["village"] == V2 and r["channel"] == "loudspeaker"
        )
        assert v2["village_name"] == "村2"
        assert v2["sent"] == "2"
        assert [r["target"] for r in rows if r["section"] == "unconfirmed"] == ["sec-1"]
        assert sorted(r["target"] for r in rows if r["section"] == "not_played") == [
            f"spk-{V1}-2",
            f"spk-{V2}-1",
            f"spk-{V2}-2",
        ]
        assert [r["target"] for r in rows if r["section"] == "escalation"] == ["sec-1"]
        r3 = await get_report(h, wid, headers={"Accept": "application/json, text/csv"})
        assert r3.content_type == "application/json"
        assert (await get_report(h, wid, params={"format": "xml"})).status == 400
    finally:
        await h.close()


async def test_report_needs_a_token_and_a_known_warning(tmp_path: Path) -> None:
    """401 without a token, 404 for an unknown id."""
    h = await Harness(tmp_path).start()
    try:
        resp = await h.client.get("/api/v1/warnings/W20260701-00000000/report")
        assert resp.status == 401
        assert (await get_report(h, "W20260701-00000000")).status == 404
        wid = await h.issue(warning_body(onset=(h.clock.now() + timedelta(hours=60)).isoformat()))
        rep = await (await get_report(h, wid)).json()
        assert rep["channels"] == {}
        assert rep["confirmations"]["first_after_s"] is None
    finally:
        await h.close()
