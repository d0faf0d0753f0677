"""`GET /api/v1/replies`: what people answered by SMS, whichever provider carried it (warnd.inbound)."""

from __future__ import annotations

from aiohttp import web

from warnd import inbound
from warnd.api.routes import Route
from warnd.api.services import services
from warnd.api.warnings import json_dumps


async def replies(request: web.Request) -> web.Response:
    """GET /api/v1/replies or /api/v1/warnings/{id}/replies: confirmations and feedback text."""
    s = services(request)
    wid = request.match_info.get("id") or request.query.get("warning_id")
    rows = await inbound.replies(s.store, wid)
    directory = s.directory()
    for r in rows:
        person = directory.people.get(r["person_id"]) if r["person_id"] else None
        r["name"] = person.name if person else None
    return web.json_response({"warning_id": wid, "replies": rows}, dumps=json_dumps)


ROUTES = [
    Route("GET", "/api/v1/replies", replies, "viewer", "SMS replies, newest first",
          query={"warning_id": "only replies about this warning"}),
    Route("GET", "/api/v1/warnings/{id}/replies", replies, "viewer",
          "SMS replies about a warning: confirmations and feedback text"),
]  # fmt: skip
