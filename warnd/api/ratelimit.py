"""Per-IP token buckets for the API and the ack links: 429 with Retry-After when a bucket is empty.

Two buckets per client address, one for `/api/` and one for `/ack/` (ack links are
unauthenticated and guessable only by brute force, so they get the tighter limit). Health,
metrics and provider webhooks (`/hooks/`, signature-checked, arriving in bursts from a few
provider addresses) are not limited.

A request whose bearer token is known (`AuthGate.known`: one hash and dict lookups, never a
slow check) is not an anonymous client: it spends from its token's own, larger bucket
(`[http] token_rate_limit_per_s`), wherever it comes from. Guessed tokens are not known, so
guessing stays under the address's limit and the auth gate's failure budget.

Behind a reverse proxy every request comes from the proxy's address: set the limits for the
whole township then, or let the proxy limit.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web

from warnd.api.errors import error_response
from warnd.config import HttpSettings

log = structlog.get_logger("warnd.ratelimit")


@dataclass
class Bucket:
    """A token bucket: `tokens` left, refilled at `rate_per_s` up to `burst`."""

    tokens: float
    updated: float
    limited: bool = False


class RateLimiter:
    """Token buckets keyed by client address, oldest forgotten first.

    Args:
        rate_per_s: sustained requests per second per address.
        burst: requests an address may make at once.
        max_clients: addresses remembered; the least recently seen is dropped beyond it.
    """

    def __init__(self, rate_per_s: float, burst: int, max_clients: int = 10_000) -> None:
        """Start with no buckets."""
        self.rate_per_s, self.burst, self.max_clients = rate_per_s, burst, max_clients
        self._buckets: OrderedDict[str, Bucket] = OrderedDict()

    def take(self, key: str, now: float) -> float:
        """Take one token for `key` at monotonic time `now`; 0 if allowed, else seconds to wait."""
        b = self._buckets.get(key)
        if b is None:
            b = Bucket(float(self.burst), now)
            self._buckets[key] = b
            if len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            b.tokens = min(float(self.burst), b.tokens + (now - b.updated) * self.rate_per_s)
            b.updated = now
        if b.tokens >= 1:
            b.tokens -= 1
            b.limited = False
            return 0.0
        return (1 - b.tokens) / self.rate_per_s

    def give_back(self, key: str) -> None:
        """Return a token taken for `key` (a failure that turned out not to be one)."""
        b = self._buckets.get(key)
        if b is not None:
            b.tokens = min(float(self.burst), b.tokens + 1)

    def first_refusal(self, key: str) -> bool:
        """Whether this refusal starts a run of them (log once per run, not per request)."""
        b = self._buckets[key]
        first, b.limited = not b.limited, True
        return first


def rate_limit_middleware(
    limiters: dict[str, RateLimiter],
    clock: Callable[[], float] = time.monotonic,
    *,
    known: Callable[[web.Request], str | None] | None = None,
    per_token: RateLimiter | None = None,
) -> Any:
    """Limit requests whose path starts with one of `limiters`' prefixes, per remote address.

    known: the name of a request's token if it is a known one (None: anonymous); such a request
        spends from `per_token`'s bucket for that name instead (no limit when that is None).
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        """429 with Retry-After (whole seconds, at least 1) when the request's bucket is empty."""
        for prefix, limiter in limiters.items():
            if request.path.startswith(prefix):
                remote = request.remote or "?"
                name = known(request) if known is not None else None
                if name is not None:
                    if per_token is None:
                        break
                    limiter, remote = per_token, f"token:{name}"
                wait_s = limiter.take(remote, clock())
                if wait_s > 0:
                    retry = max(1, math.ceil(wait_s))
                    if limiter.first_refusal(remote):
                        log.warning("http.rate_limited", remote=remote, prefix=prefix, retry_after_s=retry)
                    resp = error_response(429, "rate_limited", f"too many requests; retry in {retry} s", None)
                    resp.headers["Retry-After"] = str(retry)
                    return resp
                break
        return await handler(request)

    return middleware


def rate_limiters(http: HttpSettings) -> dict[str, RateLimiter]:
    """The limiters `[http]` asks for, by path prefix (a rate of 0 turns one off)."""
    out = {}
    if http.rate_limit_per_s > 0:
        out["/api/"] = RateLimiter(http.rate_limit_per_s, http.rate_limit_burst)
    if http.ack_rate_limit_per_s > 0:
        out["/ack/"] = RateLimiter(http.ack_rate_limit_per_s, http.ack_rate_limit_burst)
    return out


def token_limiter(http: HttpSettings) -> RateLimiter | None:
    """The bucket per known token `[http]` asks for, or None when turned off."""
    if http.token_rate_limit_per_s <= 0:
        return None
    return RateLimiter(http.token_rate_limit_per_s, http.token_rate_limit_burst)


def auth_failure_limiter(http: HttpSettings) -> RateLimiter | None:
    """Failed bearer-token checks per client address (warnd.api.auth), or None when turned off."""
    if http.auth_failures_per_min <= 0:
        return None
    return RateLimiter(http.auth_failures_per_min / 60, http.auth_failure_burst)
