"""The feeds' endpoints: CAP pushed by upstream, CAP on the warnings route, feed health, CAP export.

- `POST /api/v1/feeds/{feed}/cap` — push (the feed's own token, below)
- CAP XML on `POST /api/v1/warnings` — `cap_intake` (the operator's token)
- `GET /api/v1/feeds` — per-feed health and the messages waiting for an operator (viewer)
- `GET /api/v1/warnings/{id}.cap` — a warning as CAP 1.2 (viewer)

The push route needs no API role: the feed's `token_hash` is checked here, through the same gate as
API tokens (warnd.api.auth: the same hash forms, the same failure limit per address). With
`hmac_secret_env` set, the body must also carry `X-Warnd-Signature: sha256=<hex HMAC-SHA256 of
the body>` under the secret that environment variable holds. The token is checked before the
body is read; the signature before it is parsed.

Answers: 202 when a message was new, 200 when every message was a duplicate, 400 not XML or
hostile, 401 bad token (`feed_unauthorized`, field `feed_token`; an unknown feed answers
the same) or bad signature, 413 too large, 415 not XML,
422 not valid CAP (with the element path in the error's `field`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from warnd.api.auth import Refusal, refusal_response
from warnd.api.errors import error_response
from warnd.api.routes import GATE, Route
from warnd.api.services import services
from warnd.cap import CapError, to_cap_xml, validate_cap_xsd
from warnd.feeds.ingest import IngestResult
from warnd.intake import Actor, InputError

if TYPE_CHECKING:
    from warnd.config import FeedSettings
    from warnd.feeds import Feeds

log = structlog.get_logger("warnd.feeds")

SIGNATURE_HEADER = "X-Warnd-Signature"
CAP_TYPES = ("application/cap+xml", "application/xml", "text/xml")
_CAP_CODES = {400: "bad_xml", 413: "too_large", 422: "invalid_cap"}


def cap_error_response(exc: CapError) -> web.Response:
    """A refused CAP document as the API's JSON error, the element path in `field`."""
    return error_response(exc.status, _CAP_CODES.get(exc.status, "invalid_cap"), exc.message, exc.path)


def results_response(results: Sequence[IngestResult]) -> web.Response:
    """202 if anything was new, 200 if all was already held; one alert answers flat."""
    status = 202 if any(r.created for r in results) else 200
    if len(results) == 1:
        return web.json_response(results[0].as_json(), status=status)
    first = results[0] if results else None
    return web.json_response(
        {
            "id": first.warning_id if first else None,
            "created": status == 202,
            "state": first.state if first else None,
            "results": [r.as_json() for r in results],
        },
        status=status,
    )


def sign(secret: bytes, body: bytes) -> str:
    """The signature header value for a body: `sha256=` and the hex HMAC."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def _push_feed(feeds: Feeds, name: str) -> FeedSettings | None:
    """The push feed of this name, if there is one."""
    return next((f for f in feeds.settings.feed if f.name == name and f.kind == "push"), None)


async def _take(
    feeds: Feeds, body: bytes, *, feed: str, source: str, actor: Actor, settings: FeedSettings | None
) -> web.Response:
    """Ingest a document and answer as the push contract says."""
    try:
        results = await feeds.take(body, feed=feed, source=source, actor=actor, settings=settings)
    except CapError as exc:
        return cap_error_response(exc)
    return results_response(results)


async def push(request: web.Request) -> web.Response:
    """Take one pushed CAP document."""
    feeds = services(request).feeds
    name = request.match_info["feed"]
    feed = _push_feed(feeds, name)
    gate = request.app[GATE]
    # An unknown feed is checked against no hash and answers like a wrong token: which
    # feeds exist is nobody's business. Failures count against the address like the API's.
    book = gate.book_for(f"feed:{name}", feed.token_hash if feed is not None else None)
    who = await gate.check(request.remote, request.headers.get("Authorization", ""), book)
    if isinstance(who, Refusal) or feed is None:  # (an empty book accepts no token)
        refusal = who if isinstance(who, Refusal) else Refusal(401, "unknown")
        if refusal.status == 401:
            log.warning("feed.unauthorized", feed=name, remote=request.remote, known=feed is not None)
        return refusal_response(refusal, "feed_unauthorized", "a valid feed token is required", "feed_token")
    if request.content_type not in (*CAP_TYPES, "application/octet-stream"):
        return error_response(
            415,
            "unsupported_media_type",
            f"Content-Type {request.content_type} is not CAP XML",
            "Content-Type",
        )
    body = await request.read()
    if feed.hmac_secret_env is not None:
        secret = os.environ.get(feed.hmac_secret_env)
        if not secret:
            log.error("feed.hmac_secret_missing", feed=name, env=feed.hmac_secret_env)
            return error_response(503, "misconfigured", "the feed's signature secret is not set", None)
        given = request.headers.get(SIGNATURE_HEADER, "")
        if not hmac.compare_digest(given.encode(), sign(secret.encode(), body).encode()):
            log.warning("feed.bad_signature", feed=name, remote=request.remote)
            return error_response(401, "bad_signature", "signature does not match the body", SIGNATURE_HEADER)
    return await _take(
        feeds, body, feed=name, source="push", actor=Actor(f"feed:{name}", request.remote), settings=feed
    )


async def cap_intake(request: web.Request, feeds: Feeds, *, source: str, actor: Actor) -> web.Response:
    """CAP XML on `POST /api/v1/warnings` (the operator's token was checked by the API)."""
    body = await request.read()
    return await _take(feeds, body, feed="api", source=source, actor=actor, settings=None)


async def list_feeds(request: web.Request) -> web.Response:
    """Per-feed health (last success, last error, counts) and what waits for an operator."""
    health = await services(request).feeds.health()
    return web.json_response(health, dumps=lambda o: json.dumps(o, ensure_ascii=False))


async def warning_cap(request: web.Request) -> web.Response:
    """A warning as a CAP 1.2 document that the reader accepts and the OASIS XSD validates."""
    s = services(request)
    wid = request.match_info["id"]
    w = await s.store.get_warning(wid)
    if w is None:
        raise InputError("not_found", f"no warning {wid}", "id", status=404)
    view = await s.feeds.cap_view(w)
    # Urgency is judged when this message (the alert, an update, the cancel) was sent.
    now = datetime.fromisoformat(view["sent"])
    xml = to_cap_xml(view, sender_default=s.feeds.default_sender(), now=now)
    validate_cap_xsd(xml)
    return web.Response(body=xml, content_type="application/cap+xml", charset="utf-8")


ROUTES = [
    Route(
        "POST",
        "/api/v1/feeds/{feed}/cap",
        push,
        None,
        "Push a CAP document (the feed's own bearer token; optional X-Warnd-Signature)",
        body_types=(*CAP_TYPES, "application/octet-stream"),
        responses={
            202: "taken",
            200: "duplicate",
            401: "bad feed token or signature",
            429: "too many failed token checks from this address; see Retry-After",
            503: "the feed's signature secret is not set, or store_unavailable (the disk is full)",
        },
    ),
    Route("GET", "/api/v1/feeds", list_feeds, "viewer", "Feed health and messages to look at"),
    Route("GET", "/api/v1/warnings/{id}.cap", warning_cap, "viewer", "A warning as CAP 1.2 XML"),
]
