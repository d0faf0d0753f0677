"""The HTTP API: tokens and roles, 30 kinds of bad input, size limits, OpenAPI, preview."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.harness import Harness, warning_body

AREA = {"codes": ["330502101201"]}


def _without(key: str) -> dict[str, Any]:
    """A valid body missing one key."""
    body = warning_body()
    del body[key]
    return body


# (name, body or raw bytes, content type, expected status, field the error must name)
BAD_INPUTS: list[tuple[str, Any, str, int, str | None]] = [
    ("not json", b"{not json", "application/json", 400, "body"),
    ("json array", b"[1, 2]", "application/json", 400, "body"),
    ("json string", b'"red"', "application/json", 400, "body"),
    ("empty body", b"", "application/json", 400, "body"),
    ("truncated json", json.dumps(warning_body()).encode()[:40], "application/json", 400, "body"),
    ("invalid utf-8", b'{"event": "\xff\xfe"}', "application/json", 400, "body"),
    ("form content type", b"event=x", "application/x-www-form-urlencoded", 415, "Content-Type"),
    ("text content type", json.dumps(warning_body()).encode(), "text/plain", 415, "Content-Type"),
    ("unknown level", warning_body(level="purple"), "application/json", 422, "level"),
    ("level as number", warning_body(level=1), "application/json", 422, "level"),
    ("missing level", _without("level"), "application/json", 422, "level"),
    ("missing event", _without("event"), "application/json", 422, "event"),
    ("empty event", warning_body(event=""), "application/json", 422, "event"),
    ("missing headline", _without("headline"), "application/json", 422, "headline"),
    ("headline as list", warning_body(headline=["a"]), "application/json", 422, "headline"),
    ("headline too long", warning_body(headline="雨" * 201), "application/json", 422, "headline"),
    ("missing area", _without("area"), "application/json", 422, "area"),
    ("empty area", warning_body(area={}), "application/json", 422, "area"),
    ("area as string", warning_body(area="塘甸村"), "application/json", 422, "area"),
    ("bad admin code", warning_body(area={"codes": ["33050"]}), "application/json", 422, "area.codes"),
    ("area matching no village", warning_body(area={"codes": ["110101"]}), "application/json", 422, "area"),
    (
        "polygon of two points",
        warning_body(area={"polygons": [[[30.0, 120.0], [30.1, 120.1]]]}),
        "application/json",
        422,
        "area.polygons",
    ),
    (
        "point out of range",
        warning_body(area={"polygons": [[[95, 120], [30, 121], [31, 122]]]}),
        "application/json",
        422,
        "area.polygons",
    ),
    (
        "negative radius",
        warning_body(area={"circles": [{"lat": 30, "lon": 120, "radius_km": -1}]}),
        "application/json",
        422,
        "area.circles[0].radius_km",
    ),
    ("unknown area key", warning_body(area={**AREA, "county": "x"}), "application/json", 422, "area.county"),
    ("unknown top-level key", warning_body(colour="red"), "application/json", 422, "colour"),
    ("onset not a time", warning_body(onset="tomorrow"), "application/json", 422, "onset"),
    ("onset without offset", warning_body(onset="2026-07-01T08:00:00"), "application/json", 422, "onset"),
    (
        "onset after expiry",
        warning_body(onset="2026-07-02T08:00:00+08:00", expires="2026-07-01T08:00:00+08:00"),
        "application/json",
        422,
        "expires",
    ),
    (
        "expired already",
        warning_body(expires="2020-01-01T00:00:00+08:00"),
        "application/json",
        422,
        "expires",
    ),
    ("unknown status", warning_body(status="draft"), "application/json", 422, "status"),
    ("sender without identifier", warning_body(sender="cma"), "application/json", 422, "identifier"),
]


@pytest.mark.parametrize(
    ("name", "body", "ctype", "status", "field"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS]
)
async def test_bad_input_gets_4xx_naming_the_field(
    harness: Harness, name: str, body: Any, ctype: str, status: int, field: str | None
) -> None:
    """Each malformed warning gets the right status and an error body naming the field."""
    data = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
    resp = await harness.client.post(
        "/api/v1/warnings", data=data, headers={**harness.headers(), "Content-Type": ctype}
    )
    assert resp.status == status, await resp.text()
    err = (await resp.json())["error"]
    assert set(err) >= {"code", "message", "field"}
    assert err["message"]
    if field is not None:
        assert err["field"] is not None and err["field"].startswith(field), err
    # The daemon keeps serving, and nothing was stored.
    ok = await harness.client.get("/api/v1/warnings", headers=harness.headers("viewer"))
    assert ok.status == 200 and (await ok.json())["warnings"] == []


async def test_all_bad_inputs_in_a_row_leave_the_daemon_serving(harness: Harness) -> None:
    """After 30+ bad requests, a good one is still accepted and sent."""
    for _, body, ctype, _, _ in BAD_INPUTS:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        await harness.client.post(
            "/api/v1/warnings", data=data, headers={**harness.headers(), "Content-Type": ctype}
        )
    wid = await harness.issue(warning_body())
    await harness.run_until_idle()
    assert (await harness.get(wid))["coverage"]["loudspeaker"]["sent"] == 2


async def test_oversized_body_is_refused_before_it_is_read(harness: Harness) -> None:
    """A body over the limit is 413, whether declared by Content-Length or streamed chunked."""
    big = json.dumps(warning_body(description="x" * (2 * 1024 * 1024))).encode()
    resp = await harness.client.post(
        "/api/v1/warnings", data=big, headers={**harness.headers(), "Content-Type": "application/json"}
    )
    assert resp.status == 413
    assert (await resp.json())["error"]["field"] == "body"

    async def chunks():  # no Content-Length: aiohttp must stop reading at the limit
        for _ in range(40):
            yield b"x" * 65536

    resp = await harness.client.post(
        "/api/v1/warnings", data=chunks(), headers={**harness.headers(), "Content-Type": "application/json"}
    )
    assert resp.status == 413


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer nope"}, 401),
        ({"Authorization": "Basic dXNlcjpwdw=="}, 401),
        ({"Authorization": "Bearer viewer-token"}, 403),
        ({"Authorization": "Bearer operator-token"}, 202),
        ({"Authorization": "Bearer admin-token"}, 202),
    ],
)
async def test_tokens_and_roles(harness: Harness, headers: dict[str, str], status: int) -> None:
    """No token → 401, viewer creating → 403, operator (or more) → 202."""
    resp = await harness.client.post("/api/v1/warnings", json=warning_body(), headers=headers)
    assert resp.status == status
    if status >= 400:
        assert (await resp.json())["error"]["field"] == "Authorization"


async def test_viewer_reads_but_cannot_cancel(harness: Harness) -> None:
    """A viewer lists and shows, and gets 403 on cancel and update."""
    wid = await harness.issue(warning_body())
    v = harness.headers("viewer")
    assert (await harness.client.get(f"/api/v1/warnings/{wid}", headers=v)).status == 200
    assert (await harness.client.get(f"/api/v1/warnings/{wid}/deliveries", headers=v)).status == 200
    assert (await harness.client.post(f"/api/v1/warnings/{wid}/cancel", headers=v)).status == 403
    assert (await harness.client.post(f"/api/v1/warnings/{wid}/update", json={}, headers=v)).status == 403
    assert (await harness.client.get("/api/v1/warnings/W00000000-missing", headers=v)).status == 404


async def test_preview_sends_nothing(harness: Harness) -> None:
    """Preview shows villages, per-channel targets and the schedule, and stores nothing."""
    resp = await harness.client.post(
        "/api/v1/warnings/preview",
        json=warning_body(area={"codes": ["330502101"]}),
        headers=harness.headers(),
    )
    assert resp.status == 200
    body = await resp.json()
    assert [v["code"] for v in body["villages"]] == [
        "330502101201",
        "330502101202",
        "330502101203",
        "330502101299",
    ]
    issue = body["schedule"][0]
    assert issue["step"] == "issue"
    assert issue["targets"]["loudspeaker"] == 7  # 3 villages × 2 speakers + the test speaker
    assert issue["targets"]["voice"] == 2  # red: officials are called (off-0 and the test official)
    await harness.run_until_idle()
    assert harness.adapter("loudspeaker").sent == []
    listing = await harness.client.get("/api/v1/warnings", headers=harness.headers("viewer"))
    assert (await listing.json())["warnings"] == []


async def test_update_and_cancel_errors(harness: Harness) -> None:
    """Updating nothing is 422; cancelling twice is 409; an unknown id is 404."""
    wid = await harness.issue(warning_body())
    h = harness.headers()
    r = await harness.client.post(f"/api/v1/warnings/{wid}/update", json={}, headers=h)
    assert r.status == 422
    r = await harness.client.post(f"/api/v1/warnings/{wid}/update", json={"level": "mauve"}, headers=h)
    assert r.status == 422 and (await r.json())["error"]["field"] == "level"
    assert (await harness.client.post(f"/api/v1/warnings/{wid}/cancel", headers=h)).status == 202
    r = await harness.client.post(f"/api/v1/warnings/{wid}/cancel", headers=h)
    assert r.status == 409 and (await r.json())["error"]["field"] == "state"
    assert (await harness.client.post("/api/v1/warnings/nope/cancel", headers=h)).status == 404


async def test_openapi_describes_the_routes_that_exist(harness: Harness) -> None:
    """Every documented path answers (not 404/405) and every warning route is documented."""
    doc = await (await harness.client.get("/api/v1/openapi.json")).json()
    assert doc["openapi"].startswith("3.")
    paths = doc["paths"]
    for path in (
        "/api/v1/warnings",
        "/api/v1/warnings/preview",
        "/api/v1/warnings/{id}",
        "/api/v1/warnings/{id}/deliveries",
        "/api/v1/warnings/{id}/update",
        "/api/v1/warnings/{id}/cancel",
        "/healthz",
        "/readyz",
    ):
        assert path in paths, path
    assert paths["/api/v1/warnings"]["post"]["x-role"] == "operator"
    assert "level" in doc["components"]["schemas"]["WarningIn"]["properties"]
    for path, ops in paths.items():
        for method in ops:
            url = path.replace("{id}", "W-none").replace("{feed}", "none").replace("{name}", "app.js")
            resp = await harness.client.request(method.upper(), url, headers=harness.headers("admin"))
            assert resp.status not in (404, 405) or "{id}" in path, (method, path, resp.status)


async def test_health_and_readiness(harness: Harness) -> None:
    """healthz answers; readyz reports the store and every adapter."""
    assert (await harness.client.get("/healthz")).status == 200
    resp = await harness.client.get("/readyz")
    body = await resp.json()
    assert resp.status == 200 and body["ready"] is True
    assert body["checks"]["store"]["ok"] is True
    assert body["checks"]["adapter.loudspeaker"]["ok"] is True
