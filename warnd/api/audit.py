"""`GET /api/v1/audit`: who issued, approved, updated or cancelled what, when, and from where.

The audit table is append-only: the store only inserts, and migration 0007 makes SQLite
refuse any UPDATE or DELETE of its rows. Reading it needs the approver role: approvers
answer for what was released, and the log names every operator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from warnd.api.routes import Route
from warnd.api.services import services
from warnd.api.warnings import json_dumps, local_time
from warnd.intake import InputError

if TYPE_CHECKING:
    from warnd.api.services import ApiServices

# A page a person can read; older events by warning_id.
MAX_LIMIT = 1000


async def audit(request: web.Request) -> web.Response:
    """Audit events: newest first, or oldest first for one warning (`?warning_id=`)."""
    d = services(request)
    warning_id = request.query.get("warning_id") or None
    try:
        limit = int(request.query.get("limit", "200"))
    except ValueError:
        raise InputError("invalid", "limit must be an integer", "limit", 400) from None
    if not 1 <= limit <= MAX_LIMIT:
        raise InputError("invalid", f"limit must be between 1 and {MAX_LIMIT}", "limit", 400)
    return web.json_response(await audit_view(d, warning_id, limit), dumps=json_dumps)


async def audit_view(d: ApiServices, warning_id: str | None, limit: int) -> dict[str, Any]:
    """The audit page's body (also its live stream's snapshot, warnd.api.events)."""
    rows = await d.store.audit_log(warning_id, limit)
    tz = d.settings.policy.timezone
    events = [
        {
            "id": r["id"],
            "at": local_time(r["at"], tz),
            "actor": r["actor"],
            "action": r["action"],
            "warning_id": r["warning_id"],
            "remote": r["remote"],
            "detail": r["detail"],
        }
        for r in rows
    ]
    return {"events": events}


ROUTES = [
    Route(
        "GET",
        "/api/v1/audit",
        audit,
        "approver",
        "Audit log of operator actions (?warning_id=, ?limit=)",
        query={
            "warning_id": "only this warning's events, oldest first",
            "limit": {"description": f"1–{MAX_LIMIT} (default 200)", "pattern": "^(1000|[1-9][0-9]{0,2})$"},
        },
    ),
]
