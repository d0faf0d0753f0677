"""`GET /api/v1/devices`: every loudspeaker and LED board, online / offline / unknown and last seen.

What it shows is what the device hub (warnd.mqtt.devices) stored from the devices' statuses and acks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from warnd.api.routes import Route
from warnd.api.services import services
from warnd.api.warnings import json_dumps, local_time

if TYPE_CHECKING:
    from warnd.api.services import ApiServices


async def list_devices(request: web.Request) -> web.Response:
    """Every device of the directory with online / offline / unknown and when it was last heard from."""
    q = request.query
    body = await devices_view(services(request), wanted_state=q.get("state"), wanted_village=q.get("village"))
    return web.json_response(body, dumps=json_dumps)


async def devices_view(
    d: ApiServices, *, wanted_state: str | None = None, wanted_village: str | None = None
) -> dict[str, Any]:
    """The devices page's body (also its live stream's snapshot, warnd.api.events)."""
    tz = d.settings.policy.timezone
    rows = {r["id"]: r for r in await d.store.devices()}
    directory = d.directory()
    out = []
    for device_id, kind in sorted(directory.device_kind.items()):
        village = directory.device_village[device_id]
        r = rows.get(device_id, {})
        online = r.get("online")
        state = "unknown" if online is None else ("online" if online else "offline")
        if (wanted_state and state != wanted_state) or (wanted_village and village != wanted_village):
            continue
        out.append(
            {
                "id": device_id,
                "kind": kind,
                "village": village,
                "state": state,
                "online": None if online is None else bool(online),
                "last_seen": local_time(r.get("last_seen"), tz),
                "status_at": local_time(r.get("status_at"), tz),
                "status": r.get("status", {}),
            }
        )
    return {"devices": out}


ROUTES = [
    Route(
        "GET",
        "/api/v1/devices",
        list_devices,
        "viewer",
        "Loudspeakers and LED boards: online/offline and last seen (?state=, ?village=)",
    )
]
