"""API errors: always `{"error": {"code", "message", "field"}}`; 4xx, or 503 when the disk is full."""

from __future__ import annotations

import json
from typing import Any

import structlog
from aiohttp import web
from pydantic import ValidationError

from warnd.config import _dotted
from warnd.intake import InputError
from warnd.store import StoreUnavailable

log = structlog.get_logger("warnd.api")

# Retry-After on 503 store_unavailable: a full disk waits for a person to free space, so a client
# asking again sooner than this only adds load (and log lines) while nothing can change.
STORE_RETRY_AFTER_S = 30


def error_response(
    status: int, code: str, message: str, field: str | None = None, **extra: Any
) -> web.Response:
    """A JSON error body."""
    body: dict[str, Any] = {"error": {"code": code, "message": message, "field": field, **extra}}
    return web.json_response(body, status=status, dumps=lambda o: json.dumps(o, ensure_ascii=False))


def validation_response(exc: ValidationError, prefix: str = "") -> web.Response:
    """422 naming the first bad field, listing all of them."""
    errors = [
        {"field": prefix + _field(e["loc"]), "message": _clean(e["msg"]), "type": e["type"]}
        for e in exc.errors()
    ]
    first = errors[0]
    return error_response(422, "invalid", first["message"], first["field"], errors=errors)


def _field(loc: tuple[Any, ...]) -> str:
    """A pydantic location as the JSON field path an operator would read (area.polygons[0])."""
    # Model-level validators report no location; tagged unions add their tag: drop those.
    return _dotted(p for p in loc if p not in ("function-after", "function-before"))


def _clean(msg: str) -> str:
    """Pydantic prefixes custom errors with 'Value error, ': the message is enough."""
    return msg.removeprefix("Value error, ")


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Turn every failure into the JSON error shape; an unexpected one is a 500 that is logged."""
    try:
        return await handler(request)
    except InputError as exc:
        return error_response(exc.status, exc.code, exc.message, exc.field)
    except ValidationError as exc:
        return validation_response(exc)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app._client_max_size
        return error_response(413, "too_large", f"body over {limit} bytes", "body")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_")
        response = error_response(exc.status, code, exc.text or exc.reason, None)
        if "Allow" in exc.headers:
            # A 405 says which methods the resource takes (RFC 9110 §15.5.6).
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except ConnectionResetError:
        # The client went away mid-request (while its body was read or our answer written):
        # nothing is wrong here and nobody will read an answer.
        log.info("api.client_gone", path=request.path, method=request.method)
        return error_response(400, "client_gone", "the client closed the connection", None)
    except StoreUnavailable as exc:
        # Neither the client's mistake nor a bug: the disk is full or read-only, nothing of the
        # request was stored (the store logged it, once per outage), and the same request works
        # once the disk is back; an Idempotency-Key makes that retry safe.
        message = f"warnd cannot store anything now ({exc.reason}); nothing was stored, try again later"
        response = error_response(503, "store_unavailable", message, None)
        response.headers["Retry-After"] = str(STORE_RETRY_AFTER_S)
        return response
    except Exception:
        log.exception("api.error", path=request.path, method=request.method)
        return error_response(500, "internal", "internal error; see the daemon log", None)
