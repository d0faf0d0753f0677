"""The `voice` channel: calls (叫应 by phone) through its providers, in the configured fallback order.

`[voice] providers` names them; each provider says the warning and gathers key 1 its own way
(Twilio TwiML <Gather>), and reports answered, unanswered and key presses by callback or pulling.
"""

from __future__ import annotations

from adapters.providers.channel import ProviderChannel


class VoiceAdapter(ProviderChannel):
    """Calls through the configured providers.

    Args:
        ctx: what the daemon lends the adapter.
    """

    kind = "voice"
