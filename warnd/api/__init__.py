"""The HTTP API (aiohttp): routes, auth, errors, health and the OpenAPI document."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import structlog
from aiohttp import web

from warnd import __version__
from warnd.adapter import Webhook
from warnd.api import (
    acks,
    approval,
    audit,
    console,
    devices,
    events,
    feeds,
    hydro,
    metrics,
    replies,
    warnings,
    webhooks,
)
from warnd.api import report as report_api
from warnd.api.auth import SLOW_HASH_ADVICE, AuthGate, slow_hash_keys
from warnd.api.errors import error_middleware, error_response
from warnd.api.openapi import openapi
from warnd.api.ratelimit import auth_failure_limiter, rate_limit_middleware, rate_limiters, token_limiter
from warnd.api.routes import GATE, Route, auth_middleware
from warnd.api.services import SERVICES, ApiServices, services

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
    checks = await services(request).readiness()
    ok = all(c["ok"] for c in checks.values())
    return web.json_response({"ready": ok, "checks": checks}, status=200 if ok else 503)


def make_app(svc: ApiServices, extra_webhooks: Iterable[Webhook] = ()) -> web.Application:
    """The aiohttp application serving every route of a running warnd.

    Each module of this package declares its routes; the channels' webhooks (warnd.adapter.Webhook)
    are mounted through warnd.api.webhooks. `extra_webhooks`: more to mount (tests that serve the
    routes of channels they do not run).
    """
    hooks = [w for a in svc.adapters.values() for w in a.webhooks()]
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
        *metrics.ROUTES,
        *warnings.ROUTES,
        *approval.ROUTES,  # sign-off (issue 15)
        *console.ROUTES,  # the console and its live events (issue 15)
        *events.ROUTES,
        *report_api.ROUTES,
        *audit.ROUTES,
        *devices.ROUTES,
        *replies.ROUTES,
        *feeds.ROUTES,
        *hydro.ROUTES,
        *(acks.routes(svc.ack_links) if svc.ack_links is not None else ()),
        *webhooks.routes([*hooks, *extra_webhooks]),
    ]

    limiters = rate_limiters(svc.settings.http)

    @functools.cache
    def document() -> dict[str, Any]:
        """The document, made at its first request: its pydantic JSON schemas took 30–60 ms of
        every start-up (a county's ~1.3 s), for a document a client may never ask for."""
        return openapi(routes, __version__, limited=tuple(limiters))

    async def openapi_json(_request: web.Request) -> web.Response:
        """The OpenAPI description of this API."""
        return web.json_response(document())

    # Appended before the document is made, so that it describes itself too.
    routes.append(Route("GET", "/api/v1/openapi.json", openapi_json, None, "This document"))
    max_bytes = svc.settings.http.max_body_bytes
    app = web.Application(
        client_max_size=max_bytes,
        middlewares=[
            error_middleware,
            rate_limit_middleware(
                limiters,
                known=lambda request: app[GATE].known(request.headers.get("Authorization", "")),
                per_token=token_limiter(svc.settings.http),
            ),
            _size_middleware(max_bytes),
            auth_middleware({(r.method, r.path): r.role for r in routes}),
        ],
    )
    app[SERVICES] = svc
    events.setup(app)  # the console's event streams end at shutdown (issue 15)
    app[GATE] = AuthGate(svc.tokens, auth_failure_limiter(svc.settings.http), svc.metrics)
    slow = slow_hash_keys(svc.settings)
    if slow:
        log.warning("auth.slow_hashes", keys=slow, advice=SLOW_HASH_ADVICE)
    # A path with text after a parameter (/warnings/{id}.cap) goes before the bare parameter
    # (/warnings/{id}) that would otherwise match it; the rest keep their order.
    for r in sorted(routes, key=lambda r: "}." not in r.path):
        app.router.add_route(r.method, r.path, r.handler)
    return app
