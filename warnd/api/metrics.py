"""`GET /metrics`: the Prometheus text exposition (warnd.metrics keeps the numbers)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from warnd.api.auth import Refusal, refusal_response
from warnd.api.routes import GATE, Route
from warnd.api.services import services


async def metrics(request: web.Request) -> web.Response:
    """The Prometheus text exposition (a bearer token only if `[http] metrics_token_hash` is set)."""
    s = services(request)
    wanted = s.settings.http.metrics_token_hash
    if wanted is not None:
        gate = request.app[GATE]
        who = await gate.check(
            request.remote, request.headers.get("Authorization", ""), gate.book_for("metrics", wanted)
        )
        if isinstance(who, Refusal):
            return refusal_response(who, "unauthorized", "/metrics needs its bearer token", "Authorization")
    await s.metrics.refresh(s.store, s.adapters, s.clock.now(), s.directory(), s.settings.feed)
    return web.Response(body=s.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


ROUTES = [
    Route(
        "GET",
        "/metrics",
        metrics,
        None,
        "Prometheus metrics (a bearer token only if [http] metrics_token_hash is set)",
        responses={200: "Prometheus text exposition", 401: "metrics_token_hash is set"},
    ),
]
