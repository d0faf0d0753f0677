"""`GET /api/v1/warnings/{id}/report`: the coverage report, as JSON or as CSV."""

from __future__ import annotations

from aiohttp import web

from warnd.api.routes import Route
from warnd.api.services import services
from warnd.api.warnings import _get_or_404, json_dumps
from warnd.intake import InputError
from warnd.report import report, to_csv


def wants_csv(request: web.Request) -> bool:
    """CSV when `?format=csv` or when the Accept header prefers text/csv over JSON."""
    fmt = request.query.get("format")
    if fmt is not None:
        if fmt not in ("csv", "json"):
            raise InputError("invalid", "format must be csv or json", "format", 400)
        return fmt == "csv"
    accept = request.headers.get("Accept", "")
    kinds = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    return "text/csv" in kinds and (
        "application/json" not in kinds or kinds.index("text/csv") < kinds.index("application/json")
    )


async def show_report(request: web.Request) -> web.Response:
    """A warning's coverage per channel and village, laggards, confirmation times, escalations."""
    d = services(request)
    w = await _get_or_404(d, request.match_info["id"])
    rep = await report(d.store, w, d.directory(), d.settings.policy.timezone, d.clock.now())
    if wants_csv(request):
        return web.Response(
            # With a byte order mark: Excel on a Chinese Windows reads BOM-less CSV as GBK.
            body=to_csv(rep).encode("utf-8-sig"),
            content_type="text/csv",
            charset="utf-8",
            headers={"Content-Disposition": f'attachment; filename="{w["id"]}-report.csv"'},
        )
    return web.json_response(rep, dumps=json_dumps)


ROUTES = [
    Route(
        "GET",
        "/api/v1/warnings/{id}/report",
        show_report,
        "viewer",
        "Coverage report of a warning (JSON, or CSV by Accept: text/csv or ?format=csv)",
        query={"format": {"description": "default: by the Accept header", "enum": ["csv", "json"]}},
    ),
]
