"""Every route is declared in warnd/api/; a channel's webhooks are mounted from its declaration."""

from __future__ import annotations

import inspect
from pathlib import Path

from aiohttp import web

from adapters import registry
from tests.support.harness import Harness
from warnd.adapter import Webhook

TWILIO = {"account_sid": "AC" + "0" * 32, "auth_token": "t" * 32, "from_number": "+15005550006"}


def declared_in(app: web.Application) -> dict[tuple[str, str], str]:
    """(method, path) → the module the handler's route was declared with."""
    out = {}
    for route in app.router.routes():
        info = route.resource.canonical if route.resource is not None else ""
        handler = inspect.unwrap(route.handler)
        owner = getattr(handler, "__self__", None)
        module = type(owner).__module__ if owner is not None else handler.__module__
        out[(route.method, info)] = module
    return out


async def test_replies_are_served_without_twilio(tmp_path: Path) -> None:
    """`GET /api/v1/replies` is the API's, not the SMS provider's: it is there with no SMS channel."""
    h = await Harness(tmp_path, channels=["loudspeaker"]).start()
    try:
        resp = await h.client.get("/api/v1/replies", headers=h.headers("viewer"))
        assert resp.status == 200, await resp.text()
        assert await resp.json() == {"warning_id": None, "replies": []}
    finally:
        await h.close()


async def test_every_route_is_declared_by_the_api_or_by_a_channel_as_a_webhook(tmp_path: Path) -> None:
    """Handlers of the API's own routes live in warnd.api; the rest are the channels' Webhooks."""
    h = await Harness(tmp_path, settings={"twilio": TWILIO}).start()
    try:
        app = h.every_route_app()
        ctx = h.daemon.context
        hooks: list[Webhook] = [
            w for cls in registry().values() if cls.configured(h.settings) for w in cls(ctx).webhooks()
        ]
        declared = {(w.method, w.path) for w in hooks}
        modules = declared_in(app)
        outside = {key for key, module in modules.items() if not module.startswith("warnd.api")}
        # The channels' webhooks (Twilio's and the loudspeakers' audio), and the ack links, whose
        # handlers warnd.acklink serves behind the routes warnd.api.acks declares.
        assert {p for _m, p in declared} >= {
            "/hooks/twilio/status",
            "/hooks/twilio/voice/gather",
            "/audio/{name}",
        }
        assert outside - declared == {("GET", "/ack/{token}"), ("POST", "/ack/{token}")}
        assert declared <= set(modules)
    finally:
        await h.close()
