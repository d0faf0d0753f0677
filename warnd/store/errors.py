"""What the store raises."""

from __future__ import annotations


class StoreError(Exception):
    """The store cannot do what was asked."""


class IdempotencyConflict(StoreError):
    """An Idempotency-Key already used for a different warning; `warning_id` is that warning."""

    def __init__(self, warning_id: str) -> None:
        """Keep the id of the warning the key belongs to."""
        super().__init__(f"Idempotency-Key already used for {warning_id}")
        self.warning_id = warning_id


class SchemaTooNew(StoreError):
    """The database was written by a newer warnd: refusing it beats corrupting it."""


class StoreUnavailable(StoreError):
    """The disk will not take a write (full, read-only, failing, held by another writer).

    Nothing of the transaction was stored. It is nobody's mistake and no bug: the same write
    works again once an operator frees space (the API answers 503 with Retry-After).

    Args:
        reason: what the disk said, short ("disk full", "read-only").
    """

    def __init__(self, reason: str) -> None:
        """Keep the reason for the API answer, /readyz and the log."""
        super().__init__(f"the store cannot write: {reason}")
        self.reason = reason


class DatabaseInUse(StoreError):
    """Another warnd writes this PostgreSQL database: two writers would send the same deliveries.

    A county runs each township's warnd against its own database on the one server.
    """
