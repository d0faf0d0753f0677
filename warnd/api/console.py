"""The duty officer's console at `/`: static files from the package, and the few reads it needs
beyond the API (who am I, the villages for the picker and the map, a draft's audio).

The console is plain ES modules, HTML and CSS in warnd/console/static: no build step, no CDN,
nothing fetched from outside the township LAN. The token is kept in the browser's sessionStorage
and sent as a bearer header; it never appears in a URL.
"""

from __future__ import annotations

import mimetypes
from importlib import resources
from typing import Any

from aiohttp import web

from warnd import messages
from warnd.api.errors import error_response
from warnd.api.routes import Route, principal
from warnd.api.services import services
from warnd.api.warnings import json_dumps, read_json
from warnd.audio import AudioCache, AudioError
from warnd.intake import InputError
from warnd.model import WarningIn

STATIC = resources.files("warnd.console") / "static"
# The console's files change only with warnd itself; a browser may keep them for a minute.
STATIC_MAX_AGE_S = 60
# The page itself may only load what warnd serves (no CDN, no inline script).
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self' blob:; connect-src 'self'; frame-ancestors 'none'"
)
PAGE = {"description": "the console (HTML)", "content": {"text/html": {}}}
ROLE_NAMES = {"viewer": "查看员", "operator": "值班员", "approver": "带班领导", "admin": "管理员"}


def _file(name: str) -> web.Response:
    """One packaged static file, or the API's JSON 404."""
    entry = STATIC / name
    if "/" in name or "\\" in name or name.startswith(".") or not name or not entry.is_file():
        return error_response(404, "not_found", f"no console file {name}", "name")
    kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if name.endswith(".js"):
        kind = "text/javascript"  # some systems' mime tables lack it; a module needs it
    return web.Response(
        body=entry.read_bytes(),
        content_type=kind,
        charset="utf-8" if kind.startswith("text/") or kind.endswith("javascript") else None,
        headers={
            "Cache-Control": f"max-age={STATIC_MAX_AGE_S}",
            "Content-Security-Policy": CSP,
            "X-Content-Type-Options": "nosniff",
        },
    )


async def index(_request: web.Request) -> web.Response:
    """The console's page."""
    return _file("index.html")


async def static(request: web.Request) -> web.Response:
    """The console's scripts, styles and icons."""
    return _file(request.match_info["name"])


async def me(request: web.Request) -> web.Response:
    """Who the token is and what its role allows: the console shows only that."""
    who = principal(request)
    return web.json_response(
        {
            "name": who.name,
            "role": who.role,
            "role_name": ROLE_NAMES[who.role],
            "can": {r: who.can(r) for r in ROLE_NAMES},
        },
        dumps=json_dumps,
    )


async def villages(request: web.Request) -> web.Response:
    """The directory's villages for the area picker and the map (no people, no phone numbers)."""
    d = services(request)
    directory = d.directory()
    out: list[dict[str, Any]] = [
        {
            "code": v.code,
            "name": v.name,
            "township": v.code[:9],
            "lat": v.lat,
            "lon": v.lon,
            "speakers": len(v.speakers),
            "led_boards": len(v.led_boards),
            "test": v.test,
        }
        for v in sorted(directory.villages.values(), key=lambda v: v.code)
    ]
    return web.json_response({"villages": out}, dumps=json_dumps)


async def preview_audio(request: web.Request) -> web.Response:
    """The loudspeaker audio a draft would play (MP3), rendered as the speakers will get it."""
    d = services(request)
    w = await read_json(request, WarningIn)
    villages_ = d.intake.match(w.area, required=True)
    row = {**w.model_dump(mode="json"), "villages": villages_, "version": 1}
    text = messages.preview(row, d.settings, d.directory(), ["loudspeaker"], now=d.clock.now())["issue"][
        "loudspeaker"
    ]
    cache = AudioCache(d.settings.state_dir / "audio", d.settings.tts)
    kind = "drill" if w.status.value != "actual" else "warning"
    try:
        audio = await cache.render(text, w.level.value, kind=kind)
    except (AudioError, OSError) as exc:
        raise InputError("audio_unavailable", f"the audio could not be rendered: {exc}", None, 503) from None
    return web.Response(body=audio.path.read_bytes(), content_type="audio/mpeg")


ROUTES = [
    Route("GET", "/", index, None, "The duty officer's console", responses={200: PAGE}),
    Route(
        "GET",
        "/console/{name}",
        static,
        None,
        "The console's scripts and styles",
        responses={200: {"description": "the file"}, 404: "no such file"},
    ),
    Route("GET", "/api/v1/me", me, "viewer", "The token's name and role"),
    Route("GET", "/api/v1/villages", villages, "viewer", "Villages of the directory: code, name, point"),
    Route(
        "POST",
        "/api/v1/warnings/preview/audio",
        preview_audio,
        "operator",
        "The loudspeaker audio (MP3) a draft would play; nothing is stored or sent",
        body="WarningIn",
        responses={200: {"description": "MP3", "content": {"audio/mpeg": {}}}, 503: "no audio engine"},
    ),
]
