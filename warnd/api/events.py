"""`GET /api/v1/events`: server-sent events for the console — the board, one warning, the devices
or the audit log, live.

A client that does not ask for `text/event-stream` (Accept) gets one snapshot as JSON instead.

Each stream sends a whole snapshot (`event: board`, `warning`, `devices` or `audit`: the body of
GET /api/v1/devices or /api/v1/audit) when it differs from the last one sent: when the pipeline
wakes (new work committed) and at most every REFRESH_S in between (acks and device statuses
arrive without waking it). The browser reads the stream with fetch(), so the token
stays in a header; there is no polling loop in the page. Streams end when warnd shuts down.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from warnd.api.audit import audit_view
from warnd.api.devices import devices_view
from warnd.api.routes import Route, principal
from warnd.api.services import ApiServices, services
from warnd.api.warnings import _get_or_404, json_dumps, local_time, present
from warnd.inbound import replies
from warnd.intake import IN_FORCE, InputError
from warnd.model import State
from warnd.mqtt.devices import coverage_with_offline
from warnd.report import report

# Longest a change waits to be seen when nothing wakes the pipeline (an ack, a device status):
# one second keeps "within seconds" while a township's handful of warnings costs little to read.
REFRESH_S = 1.0
# A comment line this often keeps proxies and the browser from closing a quiet stream.
KEEPALIVE_S = 15.0
BOARD_STATES = (*IN_FORCE, State.AWAITING_APPROVAL.value)
# What `?view=` streams (a warning's page is `?warning_id=`).
VIEWS = ("board", "devices", "audit")
# The audit page's newest events: a township's weeks of actions, a page a person reads.
AUDIT_EVENTS = 500
STOPS: web.AppKey[set[asyncio.Event]] = web.AppKey("event_stream_stops")


async def board(d: ApiServices) -> dict[str, Any]:
    """Warnings in force and awaiting sign-off, with coverage per channel."""
    tz = d.settings.policy.timezone
    directory = d.directory()
    out = []
    for w in await d.store.list_warnings(BOARD_STATES, 200):
        names = [directory.villages[c].name for c in w["villages"] if c in directory.villages]
        out.append(
            {
                "id": w["id"],
                "event": w["event"],
                "level": w["level"],
                "status": w["status"],
                "headline": w["headline"],
                "state": w["state"],
                "version": w["version"],
                "onset": w["onset"],
                "expires": w["expires"],
                "created_at": local_time(w["created_at"], tz),
                "villages": names,
                "coverage": await coverage_with_offline(d.store, w["id"]),
                "pending_change": (await d.store.pending_change(w["id"])) is not None,
            }
        )
    return {"warnings": out}


async def warning_view(d: ApiServices, warning_id: str, *, phones: bool) -> dict[str, Any]:
    """One warning as its page shows it: coverage per village and channel, who has not
    confirmed (with full phone numbers for operators), silent speakers, escalations, replies."""
    w = await _get_or_404(d, warning_id)
    tz = d.settings.policy.timezone
    directory = d.directory()
    rep = await report(d.store, w, directory, tz, d.clock.now())
    for u in rep["unconfirmed"]:
        person = directory.people.get(u["person_id"])
        # The duty officer calls them: the whole number, for those allowed to act on it.
        u["phone"] = person.phone if phones and person is not None else u["phone"]
    said = [
        {
            "at": local_time(r["received_at"], tz),
            "person_id": r["person_id"],
            "name": directory.people[r["person_id"]].name if r["person_id"] in directory.people else None,
            "phone": r["phone"] if phones else None,
            "body": r["body"],
        }
        for r in await replies(d.store, warning_id, 200)
        if not r["is_ack"]
    ]
    return {"warning": await present(d, w), "report": rep, "replies": said}


async def events(request: web.Request) -> web.StreamResponse:
    """A stream of snapshots: the board, `?warning_id=` one warning, or `?view=` devices or audit."""
    d = services(request)
    warning_id = request.query.get("warning_id") or None
    view = request.query.get("view", "board")
    if view not in VIEWS:
        raise InputError("invalid", f"view must be one of {', '.join(VIEWS)}", "view", 400)
    who = principal(request)
    if view == "audit" and not who.can("approver"):
        # As GET /api/v1/audit: the log names every operator, approvers answer for it.
        raise InputError("forbidden", f"role {who.role} may not read the audit log", "view", 403)
    phones = who.can("operator")
    if warning_id is not None:
        await _get_or_404(d, warning_id)
    if "text/event-stream" not in request.headers.get("Accept", ""):
        # Not an event-stream reader (a script, curl): one snapshot as JSON.
        name, snap = await _snapshot(d, warning_id, view, phones)
        return web.json_response({"event": name, "data": snap}, dumps=json_dumps)
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await resp.prepare(request)
    stop = asyncio.Event()
    stops = request.app[STOPS]
    stops.add(stop)
    last, quiet_s = "", 0.0
    try:
        while not stop.is_set():
            woken = d.wake.waiter()
            name, snap = await _snapshot(d, warning_id, view, phones)
            text = json_dumps(snap)
            if text != last:
                await resp.write(f"event: {name}\ndata: {text}\n\n".encode())
                last, quiet_s = text, 0.0
            elif quiet_s >= KEEPALIVE_S:
                await resp.write(b": keep-alive\n\n")
                quiet_s = 0.0
            await _wait_any(d, woken, stop)
            quiet_s += REFRESH_S
    except (ConnectionResetError, asyncio.CancelledError):
        # The browser went away (or warnd is stopping): nothing to finish.
        pass
    finally:
        stops.discard(stop)
    return resp


async def _snapshot(
    d: ApiServices, warning_id: str | None, view: str, phones: bool
) -> tuple[str, dict[str, Any]]:
    """The event name and snapshot of a stream: one warning, the board, the devices or the audit log."""
    if warning_id is not None:
        return "warning", await warning_view(d, warning_id, phones=phones)
    if view == "devices":
        return "devices", await devices_view(d)
    if view == "audit":
        return "audit", await audit_view(d, None, AUDIT_EVENTS)
    return "board", await board(d)


async def _wait_any(d: ApiServices, woken: asyncio.Event, stop: asyncio.Event) -> None:
    """Until the pipeline wakes, the server stops, or REFRESH_S passes."""
    waits = {asyncio.ensure_future(woken.wait()), asyncio.ensure_future(stop.wait())}
    try:
        await asyncio.wait(waits, timeout=REFRESH_S, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
        await d.wake.wait(woken, 0)  # unregisters the waiter without waiting


async def _end_streams(app: web.Application) -> None:
    """On shutdown, end every open stream so the server need not wait for them."""
    stops = app[STOPS]
    for stop in list(stops):
        stop.set()


def setup(app: web.Application) -> None:
    """Keep track of open streams, and end them when the app shuts down."""
    app[STOPS] = set()
    app.on_shutdown.append(_end_streams)


ROUTES = [
    Route(
        "GET",
        "/api/v1/events",
        events,
        "viewer",
        "Live snapshots of the board, of one warning (?warning_id=), or of the devices or the audit"
        " log (?view=devices|audit; audit needs the approver role): server-sent events when Accept"
        " says text/event-stream, else one snapshot as JSON {event, data}",
        query={
            "warning_id": "this warning's page instead of the board",
            "view": {
                "type": "string",
                "description": "board (default), devices, or audit (approver)",
                "enum": list(VIEWS),
            },
        },
        responses={
            200: {
                "description": "snapshots as server-sent events, or one as JSON",
                "content": {"text/event-stream": {}, "application/json": {}},
            },
            400: "unknown view",
            403: "the audit log below the approver role",
            404: "no such warning",
        },
    ),
]
