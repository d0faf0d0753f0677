"""`/api/v1/hydro/…`: water-level readings in, stations and their state out (warnd.hydro decides)."""

from __future__ import annotations

import json

from aiohttp import web

from warnd import jsonsafe
from warnd.api.routes import Route, principal
from warnd.api.services import services
from warnd.hydro import ReadingsIn, parse_readings
from warnd.intake import Actor, InputError


async def post_readings(request: web.Request) -> web.Response:
    """`POST /api/v1/hydro/readings`: JSON, one reading or {"readings": [...]}."""
    if request.content_type != "application/json":
        raise InputError(
            "unsupported_media_type", "Content-Type must be application/json", "Content-Type", 415
        )
    try:
        data = jsonsafe.loads(await request.read())
    except ValueError as exc:
        raise InputError("bad_json", f"body is not valid JSON: {exc}", "body", status=400) from None
    readings = parse_readings(data)
    who = principal(request)
    results = await services(request).hydro.submit(readings, Actor(who.name, request.remote))
    accepted = sum(1 for r in results if r["accepted"])
    return web.json_response(
        {"accepted": accepted, "rejected": len(results) - accepted, "results": results},
        dumps=lambda o: json.dumps(o, ensure_ascii=False),
    )


async def stations(request: web.Request) -> web.Response:
    """`GET /api/v1/hydro/stations`: each station's thresholds, last reading and warning."""
    out = await services(request).hydro.station_views()
    return web.json_response({"stations": out}, dumps=lambda o: json.dumps(o, ensure_ascii=False))


ROUTES = [
    Route(
        "POST",
        "/api/v1/hydro/readings",
        post_readings,
        "operator",
        "Water-level readings (one or many)",
        body=ReadingsIn,
        responses={200: "per-reading results"},
    ),
    Route("GET", "/api/v1/hydro/stations", stations, "viewer", "Stations and their state"),
]
