"""`POST /api/v1/feeds/{feed}/cap`: upstream pushes CAP with the feed's own bearer token.

The route needs no API role: the feed's `token_hash` is checked here, through the same gate as
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
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from warnd.api.auth import Refusal, refusal_response
from warnd.api.errors import error_response
from warnd.api.routes import GATE
from warnd.cap import CapError
from warnd.feeds.ingest import IngestResult
from warnd.intake import Actor

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


class PushEndpoint:
    """Serves the push route of every `kind = "push"` feed.

    Args:
        feeds: the daemon's feeds.
    """

    def __init__(self, feeds: Feeds) -> None:
        """Index the push feeds by name."""
        self.feeds = feeds

    def _feed(self, name: str) -> FeedSettings | None:
        """The push feed of this name, if there is one."""
        return next((f for f in self.feeds.daemon.settings.feed if f.name == name and f.kind == "push"), None)

    async def handle(self, request: web.Request) -> web.Response:
        """Take one pushed CAP document."""
        name = request.match_info["feed"]
        feed = self._feed(name)
        gate = request.app[GATE]
        # An unknown feed is checked against no hash and answers like a wrong token: which
        # feeds exist is nobody's business. Failures count against the address like the API's.
        book = gate.book_for(f"feed:{name}", feed.token_hash if feed is not None else None)
        who = await gate.check(request.remote, request.headers.get("Authorization", ""), book)
        if isinstance(who, Refusal) or feed is None:  # (an empty book accepts no token)
            refusal = who if isinstance(who, Refusal) else Refusal(401, "unknown")
            if refusal.status == 401:
                log.warning("feed.unauthorized", feed=name, remote=request.remote, known=feed is not None)
            return refusal_response(
                refusal, "feed_unauthorized", "a valid feed token is required", "feed_token"
            )
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
                return error_response(
                    401, "bad_signature", "signature does not match the body", SIGNATURE_HEADER
                )
        return await self.feeds.take(
            body, feed=name, source="push", actor=Actor(f"feed:{name}", request.remote), settings=feed
        )

    async def api_intake(self, request: web.Request, *, source: str, actor: Actor) -> web.Response:
        """CAP XML on `POST /api/v1/warnings` (the operator's token was checked by the API)."""
        body = await request.read()
        return await self.feeds.take(body, feed="api", source=source, actor=actor, settings=None)
