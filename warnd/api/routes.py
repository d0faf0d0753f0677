"""The route table: each route names the least role it needs; auth and OpenAPI read the same table."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from warnd.api.auth import AuthGate, Principal, Refusal, refusal_response
from warnd.api.errors import error_response

PRINCIPAL = web.RequestKey("principal", Principal)
GATE = web.AppKey("auth_gate", AuthGate)


@dataclass(frozen=True)
class Route:
    """One endpoint.

    Args:
        method: HTTP method.
        path: aiohttp path pattern.
        handler: the coroutine serving it.
        role: least role needed; None means no token (health, webhooks that sign their own way).
        summary: one line for the OpenAPI document.
        body: the JSON request body's model (or its name in warnd.api.openapi.SCHEMAS), if any.
        body_types: media types the body may come in; CAP XML types are documented as CAP.
        body_required: False when the handler also takes no body at all.
        query: query parameters the handler reads: what each means, or its JSON schema (with a
            description) when it takes only some strings.
        responses: the route's own status codes and what they mean (its errors beyond those every
            route of its kind answers: see warnd.api.openapi); an error given as text is the
            JSON error shape, one given as an OpenAPI response object (a page) is that.
    """

    method: str
    path: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    role: str | None
    summary: str
    body: str | type[BaseModel] | None = None
    body_types: tuple[str, ...] = ("application/json",)
    body_required: bool = True
    query: dict[str, str | dict[str, Any]] = field(default_factory=dict)
    responses: dict[int, str | dict[str, Any]] = field(default_factory=dict)


def principal(request: web.Request) -> Principal:
    """The authenticated principal of a request (set by the auth middleware)."""
    return request[PRINCIPAL]


def auth_middleware(roles: dict[tuple[str, str], str | None]) -> Any:
    """Require a bearer token with at least the route's role: 401 without one, 403 below it."""

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        """Check the token before the handler runs (and before the body is read)."""
        info = request.match_info.route.resource
        pattern = info.canonical if info is not None else request.path
        method = "GET" if request.method == "HEAD" else request.method
        needed = roles.get((method, pattern))
        if needed is None:
            return await handler(request)
        who = await request.app[GATE].check(request.remote, request.headers.get("Authorization", ""))
        if isinstance(who, Refusal):
            message = "a bearer token is required" if who.reason == "missing" else "unknown token"
            return refusal_response(who, "unauthorized", message, "Authorization")
        if not who.can(needed):
            return error_response(
                403, "forbidden", f"role {who.role} may not do this; {needed} needed", "Authorization"
            )
        request[PRINCIPAL] = who
        return await handler(request)

    return middleware
