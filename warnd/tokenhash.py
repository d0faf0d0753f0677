"""Salted token hashes: make them, check their form, verify a presented token in constant time.

Two stored forms are accepted:

- `pbkdf2_sha256$<iterations>$<salt>$<hash>` (salt and hash in unpadded URL-safe base64):
  what `warnd hash-token` prints. The salt makes two installations' hashes of one token differ.
- `sha256:<64 hex digits>`: the unsalted form warnd first used, still accepted so
  existing configs keep working. Safe only for high-entropy tokens like the ones warnd makes.

Dependency-free so that config validation can use it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

# Tokens warnd makes carry 256 random bits, so iterations add little; they are there for a
# hand-picked token. 100 000 rounds cost ~40 ms once per token: a success is cached afterwards.
DEFAULT_ITERATIONS = 100_000
# Fewer rounds than this is no longer a slow hash; more than this makes every unknown-token
# request a CPU burner.
MIN_ITERATIONS, MAX_ITERATIONS = 1_000, 10_000_000
SALTED = re.compile(r"^pbkdf2_sha256\$(\d+)\$([A-Za-z0-9_-]{16,})\$([A-Za-z0-9_-]{43})$")
LEGACY = re.compile(r"^sha256:([0-9a-f]{64})$")


def _b64(raw: bytes) -> str:
    """Unpadded URL-safe base64 (no `$` or `=` to confuse the stored form)."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    """The inverse of `_b64`."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_token(token: str, *, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None) -> str:
    """The config form of a token: `pbkdf2_sha256$iterations$salt$hash` with a fresh random salt."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", token.encode(), salt, iterations)
    return f"pbkdf2_sha256${iterations}${_b64(salt)}${_b64(digest)}"


def legacy_hash(token: str) -> str:
    """The unsalted `sha256:<hex>` form (warnd's first form; still accepted)."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def hash_form_problem(stored: str) -> str | None:
    """Why a stored hash is not usable, or None when it is (config validation calls this)."""
    if LEGACY.match(stored):
        return None
    m = SALTED.match(stored)
    if m is None:
        return (
            "must be 'pbkdf2_sha256$<iterations>$<salt>$<hash>' or 'sha256:' and 64 hex digits "
            "(see `warnd hash-token`)"
        )
    if not MIN_ITERATIONS <= int(m[1]) <= MAX_ITERATIONS:
        return f"iterations must be between {MIN_ITERATIONS} and {MAX_ITERATIONS}"
    return None


def verify_token(presented: str, stored: str) -> bool:
    """Whether a presented token matches a stored hash (either form), in constant time."""
    m = SALTED.match(stored)
    if m is not None:
        digest = hashlib.pbkdf2_hmac("sha256", presented.encode(), _unb64(m[2]), int(m[1]))
        return hmac.compare_digest(digest, _unb64(m[3]))
    legacy = LEGACY.match(stored)
    if legacy is not None:
        return hmac.compare_digest(hashlib.sha256(presented.encode()).digest(), bytes.fromhex(legacy[1]))
    return False


def new_token() -> str:
    """A fresh random token (256 bits)."""
    return "wd_" + secrets.token_urlsafe(32)
