"""Inputs that used to answer 500 answer a 4xx naming what is wrong, over real HTTP.

Each came from a schemathesis run against main (77,866 cases): CAP in the encodings Chinese
upstream systems use, non-ASCII ack-link tokens, JSON nested 100,000 deep, dates in year 1 or
9999, multipart bodies on Twilio's webhooks; and a 405 without `Allow`, a client that hangs up
mid-body logged as an error.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.support.feeds import feed, push_headers
from tests.support.harness import Harness, warning_body
from tests.support.wait import until
from warnd.api import make_app

TWILIO = {"account_sid": "AC" + "0" * 32, "auth_token": "t" * 32, "from_number": "+15005550006"}

CAP = """<?xml version="1.0" encoding="{encoding}"?>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">
  <identifier>33050241600000_20260701075500_{n}</identifier>
  <sender>33050241600000</sender>
  <sent>{sent}</sent>
  <status>Actual</status>
  <msgType>Alert</msgType>
  <scope>Public</scope>
  <info>
    <language>zh-CN</language>
    <category>Met</category>
    <event>暴雨</event>
    <urgency>Immediate</urgency>
    <severity>Extreme</severity>
    <certainty>Likely</certainty>
    <onset>{onset}</onset>
    <expires>2026-07-02T08:00:00+08:00</expires>
    <headline>{headline}</headline>
    <area>
      <areaDesc>塘甸村</areaDesc>
      <geocode><valueName>{geocode}</valueName><value>330502101201</value></geocode>
    </area>
  </info>
</alert>
"""

# Each encoding with a headline only it (or its family) can write: 镕 is GBK beyond GB2312, 𠀀
# needs GB18030's four-byte form, 臺灣 is traditional (Big5), 㗎 is in HKSCS only.
ENCODED = [
    ("GB2312", "gb2312", "吴兴区气象台发布暴雨红色预警"),
    ("GBK", "gbk", "吴兴区气象台发布暴雨红色预警（朱镕基路段）"),
    ("GB18030", "gb18030", "吴兴区气象台发布暴雨红色预警𠀀"),
    ("gb_2312", "gb2312", "吴兴区暴雨红色预警"),
    ("Big5", "big5", "臺灣地區暴雨紅色預警"),
    ("Big5-HKSCS", "big5hkscs", "香港暴雨紅色預警㗎"),
]


def cap(encoding: str, codec: str, headline: str, n: int = 1, **times: str) -> bytes:
    """A 12379-style CAP Alert for the test township, in the given encoding."""
    text = CAP.format(
        encoding=encoding,
        n=n,
        headline=headline,
        # Big5 has no 区 or 划: a Taiwanese or Hong Kong sender names the code the ASCII way.
        geocode="GB2260" if codec.startswith("big5") else "行政区划代码",
        sent=times.get("sent", "2026-07-01T07:55:00+08:00"),
        onset=times.get("onset", "2026-07-01T08:00:00+08:00"),
    )
    return text.encode(codec)


@pytest.fixture
async def hostile(tmp_path: Path) -> AsyncIterator[tuple[Harness, TestClient]]:
    """A harness with a push feed and Twilio configured, served with every route."""
    h = await Harness(tmp_path, settings={"feed": [feed("cma", "push")], "twilio": TWILIO}).start()
    client = await h.serve_every_route()
    yield h, client
    await h.close()


def deep(levels: int) -> bytes:
    """A JSON array nested `levels` deep."""
    return b"[" * levels + b"]" * levels


async def error_of(resp: Any) -> tuple[int, dict[str, Any]]:
    """Status and the JSON error's body."""
    return resp.status, (await resp.json())["error"]


@pytest.mark.parametrize(("encoding", "codec", "headline"), ENCODED)
async def test_cap_in_chinese_encodings_is_taken(
    hostile: tuple[Harness, TestClient], encoding: str, codec: str, headline: str
) -> None:
    """GB2312, GBK, GB18030 and Big5 CAP is read, on the API and on a feed, headline intact."""
    h, client = hostile
    resp = await client.post(
        "/api/v1/warnings",
        data=cap(encoding, codec, headline, n=1),
        headers={**h.headers(), "Content-Type": "application/cap+xml"},
    )
    assert resp.status == 202, await resp.text()
    assert (await h.get((await resp.json())["id"]))["headline"] == headline
    resp = await client.post(
        "/api/v1/feeds/cma/cap", data=cap(encoding, codec, headline, n=2), headers=push_headers()
    )
    assert resp.status == 202, await resp.text()
    stored = await h.get((await resp.json())["id"])
    assert stored["headline"] == headline and stored["villages"] == ["330502101201"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (cap("x-unknown-charset", "utf-8", "暴雨"), "x-unknown-charset"),
        (cap("Shift_JIS", "utf-8", "大雨"), "Shift_JIS"),  # expat reads no multi-byte encoding
        (cap("hex", "utf-8", "暴雨"), "hex"),
        # Declared GBK, written in UTF-8: not GBK.
        (cap("GBK", "utf-8", "暴雨红色预警"), "not valid"),
        (cap("Big5", "utf-8", "暴雨红色预警"), "not valid"),
    ],
)
async def test_unknown_or_undecodable_encoding_is_422(
    hostile: tuple[Harness, TestClient], body: bytes, message: str
) -> None:
    """An encoding warnd cannot read, or bytes that are not in it, is a 422 naming `encoding`."""
    h, client = hostile
    for path, headers in (
        ("/api/v1/warnings", {**h.headers(), "Content-Type": "application/cap+xml"}),
        ("/api/v1/feeds/cma/cap", push_headers()),
    ):
        status, error = await error_of(await client.post(path, data=body, headers=headers))
        assert (status, error["field"]) == (422, "encoding"), (path, error)
        assert message in error["message"]


@pytest.mark.parametrize("token", ["é", "中文.签名", "abc.dé", "eyJkIjoxfQ.签名", "%00.x"])
async def test_non_ascii_ack_token_is_403(hostile: tuple[Harness, TestClient], token: str) -> None:
    """An ack link whose token is not base64url is refused like any altered link."""
    _h, client = hostile
    for method in ("GET", "POST"):
        resp = await client.request(method, f"/ack/{token}")
        assert resp.status == 403, (method, token, resp.status)
        assert "链接无效" in await resp.text()


JSON_ROUTES = [
    "/api/v1/warnings",
    "/api/v1/warnings/preview",
    "/api/v1/warnings/{id}/update",
    "/api/v1/warnings/{id}/cancel",
    "/api/v1/hydro/readings",
]


@pytest.mark.parametrize("path", JSON_ROUTES)
@pytest.mark.parametrize("levels", [33, 100_000])
async def test_deep_json_is_400_naming_body(
    hostile: tuple[Harness, TestClient], path: str, levels: int
) -> None:
    """JSON nested past 32 levels is refused before it is parsed: 400 naming `body`."""
    h, client = hostile
    wid = await h.issue(warning_body())
    resp = await client.post(
        path.format(id=wid), data=deep(levels), headers={**h.headers(), "Content-Type": "application/json"}
    )
    status, error = await error_of(resp)
    assert (status, error["code"], error["field"]) == (400, "bad_json", "body"), error
    assert "deeper than 32" in error["message"]


async def test_json_at_the_depth_limit_is_read(hostile: tuple[Harness, TestClient]) -> None:
    """32 levels is still JSON warnd reads (and then refuses for its shape, as a 422)."""
    h, client = hostile
    body = json.dumps({**warning_body(), "area": json.loads(deep(31))})
    resp = await client.post(
        "/api/v1/warnings", data=body, headers={**h.headers(), "Content-Type": "application/json"}
    )
    status, error = await error_of(resp)
    assert (status, error["field"]) == (422, "area"), error


@pytest.mark.parametrize(
    "when", ["0001-01-01T00:00:00+08:00", "9999-12-31T23:59:59-08:00", "1999-12-31T23:00:00Z"]
)
@pytest.mark.parametrize("field", ["onset", "expires"])
async def test_absurd_years_are_422_naming_the_field(
    hostile: tuple[Harness, TestClient], field: str, when: str
) -> None:
    """Onset or expiry in year 1 or 9999 (or before 2000) is a 422 naming it, on issue, preview and update."""
    h, client = hostile
    wid = await h.issue(warning_body())
    for path, body in (
        ("/api/v1/warnings", warning_body(**{field: when})),
        ("/api/v1/warnings/preview", warning_body(**{field: when})),
        (f"/api/v1/warnings/{wid}/update", {field: when}),
    ):
        status, error = await error_of(await client.post(path, json=body, headers=h.headers()))
        assert (status, error["field"]) == (422, field), (path, error)
        assert "2000–2100" in error["message"]


async def test_hydro_reading_in_year_1_is_422(tmp_path: Path) -> None:
    """A gauge reading stamped in year 1 or 9999 is refused with the reading's field."""
    station = {
        "id": "st-1",
        "name": "塘甸站",
        "villages": ["330502101201"],
        "warning_stage": 3.0,
        "guarantee_stage": 4.0,
    }
    h = await Harness(tmp_path, settings={"hydro": {"station": [station]}}).start()
    try:
        for at in ("0001-01-01T00:00:00+08:00", "9999-12-31T23:59:59-08:00"):
            body = {"readings": [{"station": "st-1", "at": at, "level_m": 3.5}]}
            resp = await h.client.post("/api/v1/hydro/readings", json=body, headers=h.headers())
            status, error = await error_of(resp)
            assert (status, error["field"]) == (422, "readings[0].at"), error
    finally:
        await h.close()


@pytest.mark.parametrize(
    ("times", "path"),
    [
        ({"onset": "0001-01-01T00:00:00+08:00"}, "/alert/info[1]/onset"),
        ({"onset": "9999-12-31T23:59:59-08:00"}, "/alert/info[1]/onset"),
        ({"sent": "0001-01-01T00:00:00+08:00"}, "/alert/sent"),
        ({"sent": "9999-12-31T23:59:59-08:00"}, "/alert/sent"),
    ],
)
async def test_cap_times_in_absurd_years_are_422(
    hostile: tuple[Harness, TestClient], times: dict[str, str], path: str
) -> None:
    """A CAP time in year 1 or 9999 is refused at its element, on the API and on a feed."""
    h, client = hostile
    body = cap("UTF-8", "utf-8", "暴雨红色预警", **times)
    for url, headers in (
        ("/api/v1/warnings", {**h.headers(), "Content-Type": "application/cap+xml"}),
        ("/api/v1/feeds/cma/cap", push_headers()),
    ):
        status, error = await error_of(await client.post(url, data=body, headers=headers))
        assert (status, error["field"]) == (422, path), (url, error)


@pytest.mark.parametrize(
    "path", ["/hooks/twilio/status", "/hooks/twilio/inbound", "/hooks/twilio/voice/status"]
)
@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data", b"--x\r\n"),
        ("application/json", b"{}"),
        ("application/x-www-form-urlencoded; charset=x-unknown", b"Body=1"),
        ("application/x-www-form-urlencoded", b"Body=%FF%FE\xff"),
    ],
)
async def test_twilio_webhook_that_is_no_form_is_403(
    hostile: tuple[Harness, TestClient], path: str, content_type: str, body: bytes
) -> None:
    """A webhook body that is not a readable form cannot be signed: refused like a forgery."""
    _h, client = hostile
    resp = await client.post(
        path, data=body, headers={"Content-Type": content_type, "X-Twilio-Signature": "x"}
    )
    assert resp.status == 403, (content_type, resp.status, await resp.text())


async def test_405_says_allow(hostile: tuple[Harness, TestClient]) -> None:
    """A method a resource does not take is 405 with `Allow` and the JSON error."""
    h, client = hostile
    resp = await client.request("DELETE", "/api/v1/warnings", headers=h.headers("admin"))
    assert resp.status == 405
    assert set(resp.headers["Allow"].split(",")) == {"GET", "POST"}
    assert (await resp.json())["error"]["code"] == "method_not_allowed"


async def test_client_hanging_up_mid_body_is_info_not_error(
    harness: Harness, log_events: list[dict[str, Any]]
) -> None:
    """A client that promises a body and hangs up is `api.client_gone` at info, no traceback."""
    h = harness
    # Served as `warnd run` serves it: aiohttp's TestServer cancels the handler instead.
    runner = web.AppRunner(make_app(h.daemon), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /api/v1/warnings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {h.headers()['Authorization'].split()[1]}\r\n".encode()
        + b'Content-Length: 5000\r\n\r\n{"event": '
    )
    await writer.drain()
    await asyncio.sleep(0.2)  # the handler is waiting for the rest of the body
    writer.close()
    await writer.wait_closed()
    await until(lambda: any(e["event"] == "api.client_gone" for e in log_events), 2, what="api.client_gone")
    gone = [e for e in log_events if e["event"] == "api.client_gone"]
    assert gone and gone[0]["log_level"] == "info" and gone[0]["path"] == "/api/v1/warnings"
    assert "exc_info" not in gone[0]
    assert not [e for e in log_events if e["log_level"] in ("error", "exception", "critical")]
    del reader
    await runner.cleanup()


async def test_openapi_documents_the_errors_the_server_answers(tmp_path: Path) -> None:
    """404, 409, 413, 415, 422 and 429 (with a rate limit on) are documented with the error shape."""
    h = await Harness(tmp_path, settings={"http": {"port": 0, "rate_limit_per_s": 5}}).start()
    try:
        doc = await (await h.client.get("/api/v1/openapi.json")).json()
    finally:
        await h.close()
    update = doc["paths"]["/api/v1/warnings/{id}/update"]["post"]["responses"]
    for status in ("400", "401", "403", "404", "409", "413", "415", "422", "429"):
        assert update[status]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Error"
        }
    create = doc["paths"]["/api/v1/warnings"]["post"]
    assert {"application/json", "application/cap+xml"} <= set(create["requestBody"]["content"])
    assert doc["paths"]["/healthz"]["get"]["responses"].keys() == {"200", "413"}  # not rate-limited
    readings = doc["paths"]["/api/v1/hydro/readings"]["post"]["requestBody"]["content"]["application/json"]
    assert readings["schema"] == {"$ref": "#/components/schemas/ReadingsIn"}


async def test_openapi_area_schema_refuses_what_the_server_refuses(
    hostile: tuple[Harness, TestClient],
) -> None:
    """`area: {}` and empty lists are invalid in the document as on the server; a code is valid in both."""
    h, client = hostile
    doc = await (await client.get("/api/v1/openapi.json")).json()
    schema = {**doc["components"]["schemas"]["WarningIn"], "components": doc["components"]}
    validator = jsonschema.Draft202012Validator(schema)
    for area, ok in (
        ({}, False),
        ({"codes": [], "polygons": [], "circles": []}, False),
        ({"codes": ["３３０５０２"]}, False),  # full-width digits are no code
        ({"codes": ["330502101201"]}, True),
        ({"codes": ["330502101"], "polygons": []}, True),
    ):
        body = warning_body(area=area)
        assert validator.is_valid(body) == ok, area
        resp = await client.post("/api/v1/warnings", json=body, headers=h.headers())
        assert (resp.status == 202) == ok, (area, resp.status, await resp.text())
