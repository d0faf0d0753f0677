"""Bearer tokens with roles; tokens are stored as salted hashes (warnd.tokenhash)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from warnd.tokenhash import hash_token, legacy_hash, new_token, verify_token

if TYPE_CHECKING:
    from warnd.config import TokenSettings

__all__ = ["ROLE_RANK", "Principal", "TokenBook", "hash_token", "legacy_hash", "new_token", "verify_token"]

ROLE_RANK = {"viewer": 0, "operator": 1, "approver": 2, "admin": 3}


@dataclass(frozen=True)
class Principal:
    """Who a request is from."""

    name: str
    role: str

    def can(self, role: str) -> bool:
        """Whether this principal has at least `role`."""
        return ROLE_RANK[self.role] >= ROLE_RANK[role]


class TokenBook:
    """The configured tokens.

    Args:
        tokens: from `[[auth.tokens]]` and the `api_token_hashes` credential.
    """

    # A bound on remembered successes: far more than a township has tokens, so never reached
    # in practice, but it keeps the cache from growing if tokens are rotated for years.
    CACHE_MAX = 1024

    def __init__(self, tokens: Sequence[TokenSettings]) -> None:
        """Keep name, role and stored hash for each token."""
        self._tokens: list[tuple[str, str, str]] = []
        # sha256(presented) → principal, for tokens already verified: PBKDF2 runs once per token.
        self._verified: dict[bytes, Principal] = {}
        self.replace(tokens)

    def replace(self, tokens: Sequence[TokenSettings]) -> None:
        """Take a new set of tokens (reload): a removed token or a changed role counts at once."""
        self._tokens = [(t.name, t.role, t.hash) for t in tokens]
        self._verified = {}

    def __len__(self) -> int:
        """How many tokens are configured."""
        return len(self._tokens)

    def lookup(self, presented: str) -> Principal | None:
        """The principal a presented token belongs to; every entry is checked, none short-circuits."""
        key = hashlib.sha256(presented.encode()).digest()
        cached = self._verified.get(key)
        if cached is not None:
            return cached
        found = None
        for name, role, stored in self._tokens:
            if verify_token(presented, stored) and found is None:
                found = Principal(name, role)
        if found is not None:
            if len(self._verified) >= self.CACHE_MAX:
                self._verified.clear()
            self._verified[key] = found
        return found
