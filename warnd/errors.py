"""What a send, or a channel's start, can fail with: the adapter contract's three kinds.

TransientError (try again later; NotReadyError: nothing was sent, the channel cannot send now),
PermanentError (never), AuthError (the channel is misconfigured: disable it and tell the
operator). Re-exported by warnd.adapter, where channels name them.
"""

from __future__ import annotations


class TransientError(Exception):
    """A failure worth retrying: timeouts, 429, 5xx, a broker that is down.

    `maybe_sent`: the request may have reached the far end (no answer in time, the connection
    dropped after it went out), so the retry looks it up first instead of sending it blind.
    """

    def __init__(self, reason: str, retry_after_s: float | None = None, *, maybe_sent: bool = False) -> None:
        """Keep the reason, the far end's earliest retry time, and whether the send is in doubt."""
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s
        self.maybe_sent = maybe_sent


class NotReadyError(TransientError):
    """Nothing was sent: the channel cannot send right now (its broker is down).

    Not an attempt: the delivery goes back to `pending`, its attempt given back, and waits for
    the channel to be ready (the dispatcher claims nothing for a channel that is not).
    """


class PermanentError(Exception):
    """A failure no retry will fix: an invalid number, an unknown device."""

    def __init__(self, reason: str) -> None:
        """Keep the reason."""
        super().__init__(reason)
        self.reason = reason


class AuthError(PermanentError):
    """Credentials are wrong: the adapter is disabled until the operator fixes its config."""
