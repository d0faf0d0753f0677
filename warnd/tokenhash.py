"""Token hashes: make them, check their form, verify a presented token.

Two stored forms are accepted:

- `sha256:<64 hex digits>`: what `warnd hash-token` prints. The tokens warnd makes carry 256
  random bits, so a plain SHA-256 of one cannot be reversed or guessed, salt or no salt: a slow
  hash (KDF) protects only tokens a person could guess. The check is one SHA-256 and a dict
  lookup, so a wrong token costs a caller as little as a right one.
- `pbkdf2_sha256$<iterations>$<salt>$<hash>` (salt and hash in unpadded URL-safe base64): what
  `warnd hash-token` printed before. Still accepted so that configs keep working, but each
  check costs ~40 ms of CPU: warnd runs it off the event loop, only for tokens shaped like the
  ones `warnd hash-token` made then (`wd_` and 43 characters), after the caller's address has
  passed the failure limit, and once per token per process (warnd.api.auth). `warnd hash-token
  --rehash` turns such a token into the fast form.

Dependency-free so that config validation can use it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

# The old form's default; kept so that tests can make hashes of it.
DEFAULT_ITERATIONS = 100_000
# Fewer rounds than this is no longer a slow hash; more than this makes every check a CPU burner.
MIN_ITERATIONS, MAX_ITERATIONS = 1_000, 10_000_000
SLOW = re.compile(r"^pbkdf2_sha256\$(\d+)\$([A-Za-z0-9_-]{16,})\$([A-Za-z0-9_-]{43})$")
FAST = re.compile(r"^sha256:([0-9a-f]{64})$")
# Tokens `warnd hash-token` made while it printed PBKDF2 hashes: only these can match one.
OLD_TOKEN = re.compile(r"^wd_[A-Za-z0-9_-]{43}$")
# `--rehash` refuses shorter tokens: 32 URL-safe characters are 192 bits if random, and a
# shorter one is likely chosen by a person, which only a slow hash would protect.
MIN_REHASH_CHARS = 32


def _b64(raw: bytes) -> str:
    """Unpadded URL-safe base64 (no `$` or `=` to confuse the stored form)."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    """The inverse of `_b64`."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def digest(token: str) -> bytes:
    """SHA-256 of a token: the fast form's value, and the key of every lookup and cache."""
    return hashlib.sha256(token.encode()).digest()


def hash_token(token: str) -> str:
    """The config form of a token: `sha256:<hex>` (for random tokens, as `new_token` makes)."""
    return "sha256:" + digest(token).hex()


def pbkdf2_hash(token: str, *, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None) -> str:
    """The old config form, `pbkdf2_sha256$iterations$salt$hash` with a fresh random salt."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    raw = hashlib.pbkdf2_hmac("sha256", token.encode(), salt, iterations)
    return f"pbkdf2_sha256${iterations}${_b64(salt)}${_b64(raw)}"


def fast_digest(stored: str) -> bytes | None:
    """The 32 bytes of a `sha256:` form, or None for any other form."""
    m = FAST.match(stored)
    return bytes.fromhex(m[1]) if m is not None else None


def is_slow(stored: str) -> bool:
    """Whether a stored hash is the old PBKDF2 form."""
    return SLOW.match(stored) is not None


def may_match_slow(presented: str) -> bool:
    """Whether a presented token has the shape of those the PBKDF2 hashes were made for."""
    return OLD_TOKEN.match(presented) is not None


def hash_form_problem(stored: str) -> str | None:
    """Why a stored hash is not usable, or None when it is (config validation calls this)."""
    if FAST.match(stored):
        return None
    m = SLOW.match(stored)
    if m is None:
        return (
            "must be 'sha256:' and 64 hex digits (see `warnd hash-token`) "
            "or the older 'pbkdf2_sha256$<iterations>$<salt>$<hash>'"
        )
    if not MIN_ITERATIONS <= int(m[1]) <= MAX_ITERATIONS:
        return f"iterations must be between {MIN_ITERATIONS} and {MAX_ITERATIONS}"
    return None


def verify_fast(presented: str, stored: str) -> bool:
    """Whether a presented token matches a `sha256:` form, in constant time (False for others)."""
    want = fast_digest(stored)
    return want is not None and hmac.compare_digest(digest(presented), want)


def verify_slow(presented: str, stored: str) -> bool:
    """Whether a presented token matches a PBKDF2 form: the slow check, ~40 ms at 100,000 rounds.

    Blocks: warnd calls it only through `warnd.api.auth.SlowChecks`, in a worker thread.
    """
    m = SLOW.match(stored)
    if m is None:
        return False
    raw = hashlib.pbkdf2_hmac("sha256", presented.encode(), _unb64(m[2]), int(m[1]))
    return hmac.compare_digest(raw, _unb64(m[3]))


def verify_token(presented: str, stored: str) -> bool:
    """Whether a presented token matches a stored hash of either form (blocking for the old one)."""
    return verify_fast(presented, stored) or verify_slow(presented, stored)


def new_token() -> str:
    """A fresh random token: 256 bits, with a prefix that never reaches a PBKDF2 check."""
    return "wnd_" + secrets.token_urlsafe(32)
