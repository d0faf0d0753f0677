"""Bearer tokens with roles, and the gate every bearer token passes (API, feed pushes, /metrics).

A presented token is looked up by its SHA-256 (warnd.tokenhash): one hash and a dict lookup,
whatever the number of configured tokens, so an unknown token costs nothing to refuse. Entries in
the old PBKDF2 form cannot be indexed that way; they are checked only for tokens shaped like the
ones they were made for, only after the caller's address has passed the failure limit, one at a
time in a worker thread (never on the event loop), and once per token per process: a success is
remembered by the token's SHA-256 (never the token itself).

Failures (no token, an unknown or a wrong one) are counted per client address in a token bucket
(`[http] auth_failure_burst`, `auth_failures_per_min`); an address out of budget gets 429 with
Retry-After instead of an answer, before any slow check. A token in the fast form (or an old one
already verified) still gets in from such an address: someone guessing behind the same NAT or
proxy cannot lock the duty officer out.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from warnd.api.errors import error_response
from warnd.tokenhash import digest, fast_digest, hash_token, is_slow, may_match_slow, new_token, verify_slow

if TYPE_CHECKING:
    from warnd.api.ratelimit import RateLimiter
    from warnd.config import Settings, TokenSettings
    from warnd.metrics import Metrics

__all__ = [
    "ROLE_RANK",
    "AuthGate",
    "Principal",
    "Refusal",
    "TokenBook",
    "hash_token",
    "new_token",
    "refusal_response",
    "slow_hash_keys",
]

log = structlog.get_logger("warnd.auth")

ROLE_RANK = {"viewer": 0, "operator": 1, "approver": 2, "admin": 3}
FAILURE_REASONS = ("missing", "unknown", "mismatch")


@dataclass(frozen=True)
class Principal:
    """Who a request is from."""

    name: str
    role: str

    def can(self, role: str) -> bool:
        """Whether this principal has at least `role`."""
        return ROLE_RANK[self.role] >= ROLE_RANK[role]


@dataclass(frozen=True)
class Refusal:
    """Why a token was not accepted: 401 with a reason, or 429 with seconds to wait."""

    status: int
    reason: str
    retry_after_s: int = 0


class TokenBook:
    """Configured tokens, indexed by their SHA-256; old PBKDF2 entries kept apart.

    Args:
        tokens: from `[[auth.tokens]]` and the `api_token_hashes` credential.
    """

    # Remembered PBKDF2 successes: far more than a township has tokens, so never reached in
    # practice, but it keeps the memory bounded if tokens are rotated for years.
    CACHE_MAX = 256

    def __init__(self, tokens: Sequence[TokenSettings]) -> None:
        """Index the tokens."""
        self._fast: dict[bytes, Principal] = {}
        self._slow: list[tuple[Principal, str]] = []
        self._verified: OrderedDict[bytes, Principal] = OrderedDict()
        self.generation = 0
        self.replace(tokens)

    @classmethod
    def single(cls, name: str, stored: str) -> TokenBook:
        """A book of one hash (a feed's token, /metrics'); the role does not matter there."""
        book = cls([])
        book._add(Principal(name, "viewer"), stored)
        return book

    def _add(self, who: Principal, stored: str) -> None:
        """One entry; of two entries with the same hash the first wins."""
        key = fast_digest(stored)
        if key is not None:
            self._fast.setdefault(key, who)
        elif is_slow(stored):
            self._slow.append((who, stored))

    def replace(self, tokens: Sequence[TokenSettings]) -> None:
        """Take a new set of tokens (reload): a removed token or a changed role counts at once."""
        self._fast, self._slow, self._verified = {}, [], OrderedDict()
        self.generation += 1
        for t in tokens:
            self._add(Principal(t.name, t.role), t.hash)

    def __len__(self) -> int:
        """How many tokens are configured."""
        return len(self._fast) + len(self._slow)

    @property
    def slow_entries(self) -> int:
        """How many entries are in the old PBKDF2 form (each costs a slow check per new token)."""
        return len(self._slow)

    def lookup(self, presented: str) -> Principal | None:
        """The principal of a token in the fast form or already verified; never runs a slow check."""
        key = digest(presented)
        # A dict lookup by SHA-256 leaks, through its timing, at most something about the
        # digest, which says nothing about a 256-bit token: no constant-time compare needed.
        who = self._fast.get(key) or self._verified.get(key)
        if who is not None and key in self._verified:
            self._verified.move_to_end(key)
        return who

    def needs_slow_check(self, presented: str) -> bool:
        """Whether a token not found by `lookup` could still match a PBKDF2 entry."""
        return bool(self._slow) and may_match_slow(presented)

    def verify_slowly(self, presented: str) -> Principal | None:
        """Check a token against every PBKDF2 entry (blocking: run it in a worker thread)."""
        found = None
        for who, stored in self._slow:
            # Every entry is checked, none short-circuits: the time says nothing about which.
            if verify_slow(presented, stored) and found is None:
                found = who
        return found

    def remember(self, presented: str, who: Principal, generation: int) -> None:
        """Remember a slow success by the token's SHA-256, unless the book was replaced meanwhile."""
        if generation != self.generation:
            return
        self._verified[digest(presented)] = who
        while len(self._verified) > self.CACHE_MAX:
            self._verified.popitem(last=False)


class AuthGate:
    """Checks a request's bearer token against a book, limiting failures per client address.

    Args:
        book: the API tokens (the daemon's; reload replaces its contents).
        limiter: failed checks per client address (None: no limit).
        metrics: where failures, refusals for too many failures and slow checks are counted.
        clock: monotonic seconds.
    """

    # Books of one hash (feeds, /metrics) are kept so that their remembered successes last;
    # a reload may change a hash, so old ones are dropped past this many.
    SINGLES_MAX = 64

    def __init__(
        self,
        book: TokenBook,
        limiter: RateLimiter | None,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Nothing checked yet."""
        self.book, self.limiter, self.metrics, self.clock = book, limiter, metrics, clock
        # One slow check at a time: a flood of them queues here instead of taking every CPU.
        self._slow_lock = asyncio.Lock()
        self._singles: dict[tuple[str, str], TokenBook] = {}
        for reason in FAILURE_REASONS:
            metrics.auth_failures.labels(reason)

    def book_for(self, name: str, stored: str | None) -> TokenBook:
        """The one-entry book of a feed's or /metrics' hash (an empty one for None)."""
        if stored is None:
            return TokenBook([])
        book = self._singles.get((name, stored))
        if book is None:
            if len(self._singles) >= self.SINGLES_MAX:
                self._singles.clear()
            book = self._singles[(name, stored)] = TokenBook.single(name, stored)
        return book

    def known(self, authorization: str) -> str | None:
        """The name of a bearer token this gate already knows (the API's, or a feed's it checked).

        For choosing a rate limit before the route's own check: never a slow hash, never counted
        as a failure. A feed's token is known from its first accepted push on.
        """
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        for book in (self.book, *self._singles.values()):
            who = book.lookup(token)
            if who is not None:
                return who.name
        return None

    async def check(
        self, remote: str | None, authorization: str, book: TokenBook | None = None
    ) -> Principal | Refusal:
        """The principal of an `Authorization: Bearer …` header, or why it is refused."""
        book = book if book is not None else self.book
        remote = remote or "?"
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return self._failed(remote, "missing")
        who = book.lookup(token)
        if who is not None:
            return who
        if not book.needs_slow_check(token):
            return self._failed(remote, "unknown")
        # The failure is taken before the slow check, so that concurrent guesses from one
        # address cannot queue more slow checks than its budget; a match gives it back.
        refused = self._take(remote)
        if refused is not None:
            return refused
        who = await self._check_slowly(book, token)
        if who is not None:
            if self.limiter is not None:
                self.limiter.give_back(remote)
            return who
        self.metrics.auth_failures.labels("mismatch").inc()
        return Refusal(401, "mismatch")

    def _failed(self, remote: str, reason: str) -> Refusal:
        """A failure that needed no slow check: counted against the address."""
        refused = self._take(remote)
        if refused is not None:
            return refused
        self.metrics.auth_failures.labels(reason).inc()
        return Refusal(401, reason)

    def _take(self, remote: str) -> Refusal | None:
        """Spend one failure of the address's budget; a 429 refusal when there is none left."""
        if self.limiter is None:
            return None
        wait_s = self.limiter.take(remote, self.clock())
        if wait_s <= 0:
            return None
        retry = max(1, math.ceil(wait_s))
        self.metrics.auth_throttled.inc()
        if self.limiter.first_refusal(remote):
            log.warning("auth.throttled", remote=remote, retry_after_s=retry)
        return Refusal(429, "throttled", retry)

    async def _check_slowly(self, book: TokenBook, token: str) -> Principal | None:
        """The PBKDF2 check in a worker thread, one at a time, at most once per token."""
        async with self._slow_lock:
            # A request with the same token may have verified it while this one waited.
            who = book.lookup(token)
            if who is not None:
                return who
            generation = book.generation
            self.metrics.auth_slow_hashes.inc(book.slow_entries)
            who = await asyncio.to_thread(book.verify_slowly, token)
        if who is not None:
            book.remember(token, who, generation)
        return who


def refusal_response(refusal: Refusal, code: str, message: str, field: str | None) -> web.Response:
    """A refused token as the API's JSON error: 429 with Retry-After, or 401 with `code`."""
    if refusal.status == 429:
        retry = refusal.retry_after_s
        resp = error_response(
            429, "rate_limited", f"too many failed token checks from this address; retry in {retry} s", field
        )
        resp.headers["Retry-After"] = str(retry)
        return resp
    return error_response(401, code, message, field)


def slow_hash_keys(settings: Settings) -> list[str]:
    """The config keys holding a hash in the old PBKDF2 form (check-config and start name them)."""
    keys = [f"auth.tokens[{i}] ({t.name})" for i, t in enumerate(settings.auth.tokens) if is_slow(t.hash)]
    keys += [
        f"feed[{i}].token_hash ({f.name})"
        for i, f in enumerate(settings.feed)
        if f.token_hash is not None and is_slow(f.token_hash)
    ]
    if settings.http.metrics_token_hash is not None and is_slow(settings.http.metrics_token_hash):
        keys.append("http.metrics_token_hash")
    return keys


SLOW_HASH_ADVICE = (
    "each new token checked against them costs a slow hash; `warnd hash-token --rehash` reads the "
    "token from stdin and prints its fast `sha256:` form (the holder keeps the token)"
)
