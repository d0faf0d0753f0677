"""`/api/v1/warnings`: issue, preview, list, show, deliveries, update, cancel."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any, cast
from zoneinfo import ZoneInfo

import structlog
from aiohttp import web
from pydantic import BaseModel

from warnd import jsonsafe, messages
from warnd.api.feeds import CAP_TYPES, cap_intake
from warnd.api.routes import Route, principal
from warnd.api.services import ApiServices, services
from warnd.intake import IN_FORCE, Actor, InputError
from warnd.model import CancelIn, UpdateIn, WarningIn, warning_json
from warnd.mqtt.devices import coverage_with_offline
from warnd.planner import (
    level_policy,
    schedule_view,
    step_counts,
    step_jobs,
    steps_for,
)
from warnd.report import escalations
from warnd.store import IdempotencyConflict, from_ts, new_warning_id

if TYPE_CHECKING:
    from datetime import datetime

    from warnd.config import Settings
    from warnd.directory import Directory, Person

log = structlog.get_logger("warnd.api")

JSON_TYPES = ("application/json",)
# What `?state=` takes on the list (active: in force, i.e. active or updated).
STATES = ("active", "updated", "cancelled", "expired", "awaiting_approval", "rejected")
# Channels whose providers may allow each number a daily quota (Aliyun, Tencent SMS).
QUOTA_CHANNELS = ("sms", "voice")
# A warning can send one person, on one channel, three messages in a day (the warning, an update
# or reminder, the all-clear): a number that many short of its quota may see the next one refused.
QUOTA_HEADROOM = 3



def actor(request: web.Request) -> Actor:
    """The audit identity of a request: token name and remote address."""
    return Actor(principal(request).name, request.remote)


def json_dumps(obj: Any) -> str:
    """JSON with Chinese text kept readable."""
    return json.dumps(obj, ensure_ascii=False)


async def read_json(request: web.Request, model: type[BaseModel]) -> Any:
    """Parse and validate a JSON body, answering 415 / 400 / 422 as the fault deserves."""
    if request.content_type not in JSON_TYPES:
        raise InputError(
            "unsupported_media_type",
            f"Content-Type {request.content_type or '(none)'} is not application/json",
            "Content-Type",
            status=415,
        )
    raw = await request.read()
    try:
        data = jsonsafe.loads(raw)
    except ValueError as exc:
        raise InputError("bad_json", f"body is not valid JSON: {exc}", "body", status=400) from None
    if not isinstance(data, dict):
        raise InputError("bad_json", "body must be a JSON object", "body", status=400)
    return model.model_validate(data)


def local_time(text: str | None, tz: str) -> str | None:
    """A store timestamp in the township's local time."""
    dt = from_ts(text)
    return dt.astimezone(ZoneInfo(tz)).isoformat(timespec="seconds") if dt else None


async def present(d: ApiServices, w: dict[str, Any]) -> dict[str, Any]:
    """A stored warning as `GET /api/v1/warnings/{id}` shows it."""
    tz = d.settings.policy.timezone
    return {
        "id": w["id"],
        **warning_json(w),
        "state": w["state"],
        "version": w["version"],
        "drafted_by": await d.store.drafter(w["id"]),
        "pending_change": _pending(await d.store.pending_change(w["id"]), tz),
        "msg_type": w["msg_type"],
        "source": w["source"],
        "created_at": local_time(w["created_at"], tz),
        "updated_at": local_time(w["updated_at"], tz),
        "villages": w["villages"],
        "schedule": schedule_view(await d.store.jobs_for(w["id"]), tz),
        "coverage": await coverage_with_offline(d.store, w["id"]),
        "escalations": await escalations(d.store, w["id"], tz),
    }


def _pending(change: dict[str, Any] | None, tz: str) -> dict[str, Any] | None:
    """An update or cancel waiting for sign-off, as the warning's page shows it."""
    if change is None:
        return None
    return {
        "kind": change["kind"],
        "body": change["body"],
        "drafted_by": change["drafted_by"],
        "created_at": local_time(change["created_at"], tz),
    }


async def create(request: web.Request) -> web.Response:
    """Issue a warning (预警发布): 202 with its id once it is durably stored."""
    d = services(request)
    if request.content_type in CAP_TYPES:
        return await cap_intake(request, d.feeds, source="api", actor=actor(request))
    w = await read_json(request, WarningIn)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= 200:
        raise InputError("invalid", "Idempotency-Key must be 1–200 characters", "Idempotency-Key", 400)
    try:
        result = await d.intake.accept(w, actor=actor(request), idempotency_key=key)
    except IdempotencyConflict as exc:
        # Answering 200 with the first id would tell the client its second warning went out.
        log.warning("warning.idempotency_key_reused", warning_id=exc.warning_id)
        raise InputError(
            "idempotency_key_reused",
            f"this Idempotency-Key was already used for warning {exc.warning_id} with other content;"
            " a new warning needs a new key",
            "Idempotency-Key",
        ) from None
    status = 202 if result.created else 200
    stored = await d.store.get_warning(result.id)
    # `awaiting_approval`: stored, nothing sent until an approver signs it off (审核签发).
    state = stored["state"] if stored is not None else None
    return web.json_response({"id": result.id, "created": result.created, "state": state}, status=status)


async def preview(request: web.Request) -> web.Response:
    """Who a warning would reach, on which channels, when: nothing is stored or sent."""
    d = services(request)
    w = await read_json(request, WarningIn)
    now = d.clock.now()
    available = d.dispatcher.channels()
    # A county-wide red is 60,000 receivers over its steps: worked out in a thread, over the
    # directory and policy in force now (a reload swaps them, never changes them in place).
    body, reached = await asyncio.to_thread(_preview, w, d.intake, d.directory(), d.settings, available, now)
    body["quota_warnings"] = await quota_warnings(d, reached)
    return web.json_response(body, dumps=json_dumps)


async def quota_warnings(d: ApiServices, reached: dict[str, dict[str, Person]]) -> list[dict[str, Any]]:
    """The people this warning reaches who are near a provider's daily quota per number today.

    A quota must not be what blocks a warning: the duty officer sees them before sending.
    """
    out = []
    for channel, people in reached.items():
        adapter = d.dispatcher.adapters.get(channel)
        if adapter is None or not people:
            continue
        for use in await adapter.quota_use(sorted(people)):
            if use.limit - use.used > QUOTA_HEADROOM:
                continue
            person = people[use.address]
            out.append(
                {
                    "person": person.id,
                    "name": person.name,
                    "channel": channel,
                    "provider": use.provider,
                    "used": use.used,
                    "limit": use.limit,
                }
            )
    return out


def _preview(
    w: WarningIn,
    intake: Any,
    directory: Directory,
    settings: Settings,
    available: Collection[str],
    now: datetime,
) -> tuple[dict[str, Any], dict[str, dict[str, Person]]]:
    """The preview's body (villages, schedule with counts per channel, the messages as sent), and
    who it reaches on the channels with quotas per number: {channel: {number: person}}."""
    villages = intake.match(w.area, required=True)
    row = {
        "id": new_warning_id(now),
        **w.model_dump(mode="json"),
        "villages": villages,
        "version": 1,
    }
    policy = settings.policy
    jobs = [j for j in step_jobs(row, steps_for(row, policy, now), now) if j["kind"] == "step"]
    out_steps = []
    reached: dict[str, dict[str, Person]] = {}
    # Steps alike in what the planner reads of them (channels, roles, kind) reach the same people:
    # a red's T-12h to onset are five such steps, each 60,000 receivers in a county.
    counted: dict[tuple[Any, ...], tuple[dict[str, int], int]] = {}
    # The same view as a stored warning's schedule: the times shown are the times the send keeps.
    for job, view in zip(jobs, schedule_view(jobs, policy.timezone), strict=True):
        payload = {**job["payload"], "channels": [c for c in job["payload"]["channels"] if c in available]}
        alike = (tuple(payload["channels"]), tuple(payload.get("roles") or ()), payload.get("kind"))
        if alike not in counted:
            counted[alike] = step_counts(row, payload, directory, policy, reached=reached)
        per_channel, ack_required = counted[alike]
        out_steps.append(
            {
                **view,
                "unavailable_channels": [c for c in job["payload"]["channels"] if c not in available],
                "targets": per_channel,
                "ack_required": ack_required,
            }
        )
    channels = level_policy(row, policy).channels
    return {
        "villages": [{"code": c, "name": directory.villages[c].name} for c in villages],
        "schedule": out_steps,
        # What each kind of message this warning can lead to says, per channel, as sent.
        "messages": messages.preview(row, settings, directory, channels, now=now),
    }, {channel: reached.get(channel, {}) for channel in QUOTA_CHANNELS if channel in reached}


async def list_(request: web.Request) -> web.Response:
    """Warnings, newest first; `?state=active` means in force (active or updated)."""
    d = services(request)
    state = request.query.get("state")
    if state is not None and state not in STATES:
        raise InputError("invalid", f"state must be one of {', '.join(STATES)}", "state", 400)
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        raise InputError("invalid", "limit must be an integer", "limit", 400) from None
    if not 1 <= limit <= 1000:
        raise InputError("invalid", "limit must be between 1 and 1000", "limit", 400)
    states = IN_FORCE if state == "active" else ((state,) if state else ())
    rows = await d.store.list_warnings(states, limit)
    tz = d.settings.policy.timezone
    return web.json_response(
        {
            "warnings": [
                {
                    "id": w["id"],
                    **warning_json(w),
                    "state": w["state"],
                    "version": w["version"],
                    "created_at": local_time(w["created_at"], tz),
                    "villages": len(w["villages"]),
                }
                for w in rows
            ]
        },
        dumps=json_dumps,
    )


async def _get_or_404(d: ApiServices, warning_id: str) -> dict[str, Any]:
    """The warning, or a 404 naming the id."""
    w = await d.store.get_warning(warning_id)
    if w is None:
        raise InputError("not_found", f"no warning {warning_id}", "id", status=404)
    # Read as a plain mapping by the views (present, report), which also add keys of their own.
    return cast("dict[str, Any]", w)


async def show(request: web.Request) -> web.Response:
    """One warning with its schedule and coverage."""
    d = services(request)
    w = await _get_or_404(d, request.match_info["id"])
    return web.json_response(await present(d, w), dumps=json_dumps)


async def deliveries(request: web.Request) -> web.Response:
    """Every delivery of a warning: channel, target, state, attempts, last error."""
    d = services(request)
    w = await _get_or_404(d, request.match_info["id"])
    tz = d.settings.policy.timezone
    rows = await d.store.deliveries_for(w["id"])
    keep = (
        "msg_id",
        "step",
        "kind",
        "channel",
        "target",
        "village",
        "person_id",
        "state",
        "attempts",
        "ack_required",
        "last_error",
        "provider_ref",
    )
    out = []
    for row in rows:
        # A delivery row read by field name (the TypedDict's keys are the columns).
        r = cast("Mapping[str, Any]", row)
        item = {k: r[k] for k in keep}
        item["ack_required"] = bool(item["ack_required"])
        for k in ("due_at", "sent_at", "delivered_at", "acked_at"):
            item[k] = local_time(r[k], tz)
        out.append(item)
    return web.json_response({"warning_id": w["id"], "deliveries": out}, dumps=json_dumps)


async def update(request: web.Request) -> web.Response:
    """Update a warning in force (预警更新): new content, rescheduled steps, an announcement."""
    d = services(request)
    await _get_or_404(d, request.match_info["id"])
    u = await read_json(request, UpdateIn)
    held = await d.signoff.hold_update(request.match_info["id"], u, actor(request))
    if held is not None:
        return web.json_response({"id": request.match_info["id"], "state": held}, status=202)
    new = await d.intake.update(request.match_info["id"], u, actor=actor(request))
    return web.json_response({"id": new["id"], "version": new["version"], "state": new["state"]}, status=202)


async def cancel(request: web.Request) -> web.Response:
    """Cancel a warning (解除预警): stop what is pending, send the all-clear."""
    d = services(request)
    await _get_or_404(d, request.match_info["id"])
    body = CancelIn()
    if request.can_read_body:
        body = await read_json(request, CancelIn)
    held = await d.signoff.hold_cancel(request.match_info["id"], body, actor(request))
    if held is not None:
        return web.json_response({"id": request.match_info["id"], "state": held}, status=202)
    await d.intake.cancel(
        request.match_info["id"], actor=actor(request), reason=body.reason, advice=body.advice
    )
    return web.json_response({"id": request.match_info["id"], "state": "cancelled"}, status=202)


ROUTES = [
    Route(
        "POST",
        "/api/v1/warnings",
        create,
        "operator",
        "Issue a warning (JSON or CAP XML)",
        body="WarningIn",
        body_types=(*JSON_TYPES, *CAP_TYPES),
        responses={
            202: "accepted (state awaiting_approval: stored, nothing sent until signed off)",
            200: "duplicate of an accepted warning",
        },
    ),
    Route(
        "POST",
        "/api/v1/warnings/preview",
        preview,
        "operator",
        "Preview targets, channels and schedule without sending",
        body="WarningIn",
    ),
    Route(
        "GET",
        "/api/v1/warnings",
        list_,
        "viewer",
        "List warnings (?state=active|cancelled|expired)",
        query={
            "state": {"description": "active means in force (active or updated)", "enum": list(STATES)},
            "limit": {
                "description": "1–1000, newest first (default 100)",
                "pattern": "^(1000|[1-9][0-9]{0,2})$",
            },
        },
    ),
    Route("GET", "/api/v1/warnings/{id}", show, "viewer", "A warning with its schedule and coverage"),
    Route("GET", "/api/v1/warnings/{id}/deliveries", deliveries, "viewer", "A warning's deliveries"),
    Route(
        "POST",
        "/api/v1/warnings/{id}/update",
        update,
        "operator",
        "Update a warning in force",
        body="UpdateIn",
        responses={
            202: "updated, or (state awaiting_approval) held for sign-off",
            409: "the warning is no longer in force",
        },
    ),
    Route(
        "POST",
        "/api/v1/warnings/{id}/cancel",
        cancel,
        "operator",
        "Cancel a warning (all-clear)",
        body="CancelIn",
        body_required=False,
        responses={
            202: "cancelled, or (state awaiting_approval) held for sign-off",
            409: "the warning is no longer in force",
        },
    ),
]
