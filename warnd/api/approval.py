"""`POST /api/v1/warnings/{id}/approve|reject`: sign-off (审核签发) by an approver, never the drafter."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator

from warnd.api.routes import Route
from warnd.api.services import services
from warnd.api.warnings import actor, json_dumps, read_json
from warnd.model import crlf_to_lf, multi_line


class RejectIn(BaseModel):
    """Why a draft (or a waiting update or cancel) is turned down; told to the drafter."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    reason: str = Field(min_length=1, max_length=500)

    _crlf = field_validator("reason", mode="before")(crlf_to_lf)
    _multi_line = field_validator("reason")(multi_line)


async def approve(request: web.Request) -> web.Response:
    """Release a waiting draft (its schedule planned from now) or apply a waiting change."""
    d = services(request)
    result = await d.signoff.approve(request.match_info["id"], actor(request))
    return web.json_response(result, status=202, dumps=json_dumps)


async def reject(request: web.Request) -> web.Response:
    """End a waiting draft with nothing sent, or drop a waiting update or cancel."""
    d = services(request)
    body = await read_json(request, RejectIn)
    result = await d.signoff.reject(request.match_info["id"], actor(request), body.reason)
    return web.json_response(result, dumps=json_dumps)


ROUTES = [
    Route(
        "POST",
        "/api/v1/warnings/{id}/approve",
        approve,
        "approver",
        "Sign off (审核签发) a draft or a waiting update or cancel; not the drafter's own",
        body_required=False,
        responses={
            202: "released: the draft's schedule starts now, or the change is applied",
            403: "the drafter may not sign off their own draft",
            409: "nothing of this warning awaits sign-off",
        },
    ),
    Route(
        "POST",
        "/api/v1/warnings/{id}/reject",
        reject,
        "approver",
        "Reject (驳回) a draft or a waiting update or cancel, with a reason",
        body=RejectIn,
        responses={200: "rejected: nothing of it was sent", 409: "nothing of this warning awaits sign-off"},
    ),
]
