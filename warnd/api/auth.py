"""Bearer tokens with roles; tokens are stored hashed and compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from warnd.config import TokenSettings

ROLE_RANK = {"viewer": 0, "operator": 1, "approver": 2, "admin": 3}


def hash_token(token: str) -> str:
    """The config form of a token: 'sha256:' and the hex digest."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random token (256 bits): high entropy, so an unsalted hash cannot be guessed back."""
    return "wd_" + secrets.token_urlsafe(32)


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
        tokens: from `[[auth.tokens]]`.
    """

    def __init__(self, tokens: Sequence[TokenSettings]) -> None:
        """Keep name, role and digest for each token."""
        self._tokens = [(t.name, t.role, bytes.fromhex(t.hash.removeprefix("sha256:"))) for t in tokens]

    def lookup(self, presented: str) -> Principal | None:
        """The principal a presented token belongs to, checking every entry in constant time."""
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for name, role, expected in self._tokens:
            if hmac.compare_digest(digest, expected):
                found = Principal(name, role)
        return found
