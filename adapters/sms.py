"""The `sms` channel: SMS to people's phones through its providers, in the configured fallback order.

`[sms] providers` names them (twilio, aliyun, tencent); each provider's receipts and replies
arrive by its own callbacks or by pulling (adapters/providers/). Replies ("1" or 收到 confirms)
from any provider land in the same inbound table, which the operator reads at `GET /api/v1/replies`
(warnd.api.replies, there whichever providers are configured).
"""

from __future__ import annotations

from adapters.providers.channel import ProviderChannel


class SmsAdapter(ProviderChannel):
    """SMS through the configured providers.

    Args:
        ctx: what the daemon lends the adapter.
    """

    kind = "sms"
