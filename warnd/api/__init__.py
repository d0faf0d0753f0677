"""The HTTP API (aiohttp): routes, auth, errors, health and the OpenAPI document."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from warnd.adapter import Webhook
from warnd.api import approval, audit, console, devices, events, warnings
from warnd.api import report as report_api
from warnd.api.auth import SLOW_HASH_ADVICE, AuthGate, slow_hash_keys
from warnd.api.errors import error_middleware, error_response
from warnd.api.openapi import openapi
from warnd.api.routes import GATE, Route, auth_middleware
from warnd.metrics import metrics_handler
from warnd.ratelimit import auth_failure_limiter, rate_limit_middleware, rate_limiters, token_limiter

if TYPE_CHECKING:
    from warnd.daemon import Daemon

log = structlog.get_logger("warnd.api")


def _size_middleware(max_bytes: int) -> Any:
    """Refuse a declared-too-large body before reading any of it."""

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        """413 on Content-Length over the limit; aiohttp enforces the limit on chunked bodies."""
        if request.content_length is not None and request.content_length > max_bytes:
            return error_response(413, "too_large", f"body over {max_bytes} bytes", "body")
        return await handler(request)

    return middleware


async def healthz(_request: web.Request) -> web.Response:
    """Alive: the event loop answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready: store open, every adapter up (a broker that is down makes this 503)."""
    d = warnings.daemon(request)
    checks = await d.readiness()
    ok = all(c["ok"] for c in checks.values())
    return web.json_response({"ready": ok, "checks": checks}, status=200 if ok else 503)


def as_route(r: Route | Webhook) -> Route:
    """An adapter's Webhook as a Route of the API (a Route stays as it is)."""
    if isinstance(r, Webhook):
        return Route(r.method, r.path, r.handler, r.role, r.summary, body_types=r.body_types,
                     query=dict(r.query), responses=dict(r.responses))  # fmt: skip
    return r


def make_app(daemon: Daemon, extra_routes: Sequence[Route | Webhook] = ()) -> web.Application:
    """Build the aiohttp application for a daemon."""
    from warnd import __version__
    from warnd.daemon import DAEMON

    routes: list[Route] = [
        Route("GET", "/healthz", healthz, None, "Liveness"),
        Route(
            "GET",
            "/readyz",
            readyz,
            None,
            "Readiness: store, broker, adapters",
            responses={200: "ready", 503: {"description": "not ready: the checks say which part"}},
        ),
        Route(
            "GET",
            "/metrics",
            metrics_handler,
            None,
            "Prometheus metrics (a bearer token only if [http] metrics_token_hash is set)",
            responses={200: "Prometheus text exposition", 401: "metrics_token_hash is set"},
        ),
        *warnings.ROUTES,
        *approval.ROUTES,  # sign-off (issue 15)
        *console.ROUTES,  # the console and its live events (issue 15)
        *events.ROUTES,
        *report_api.ROUTES,
        *audit.ROUTES,
        *devices.ROUTES,
        *(as_route(r) for r in extra_routes),
    ]

    async def openapi_json(_request: web.Request) -> web.Response:
        """The OpenAPI description of this API."""
        return web.json_response(document)

    # Appended before the document is made, so that it describes itself too.
    routes.append(Route("GET", "/api/v1/openapi.json", openapi_json, None, "This document"))
    limiters = rate_limiters(daemon.settings.http)
    document = openapi(routes, __version__, limited=tuple(limiters))
    max_bytes = daemon.settings.http.max_body_bytes
    app = web.Application(
        client_max_size=max_bytes,
        middlewares=[
            error_middleware,
            rate_limit_middleware(
                limiters,
                known=lambda request: app[GATE].known(request.headers.get("Authorization", "")),
                per_token=token_limiter(daemon.settings.http),
            ),
            _size_middleware(max_bytes),
            auth_middleware({(r.method, r.path): r.role for r in routes}),
        ],
    )
    app[DAEMON] = daemon
    events.setup(app)  # the console's event streams end at shutdown (issue 15)
    app[GATE] = AuthGate(daemon.tokens, auth_failure_limiter(daemon.settings.http), daemon.metrics)
    slow = slow_hash_keys(daemon.settings)
    if slow:
        log.warning("auth.slow_hashes", keys=slow, advice=SLOW_HASH_ADVICE)
    # A path with text after a parameter (/warnings/{id}.cap) goes before the bare parameter
    # (/warnings/{id}) that would otherwise match it; the rest keep their order.
    for r in sorted(routes, key=lambda r: "}." not in r.path):
        app.router.add_route(r.method, r.path, r.handler)
    return app
