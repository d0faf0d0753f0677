"""The endpoints channels declare (warnd.adapter.Webhook), mounted as routes of the API.

Most need no bearer token (`role` None): such a webhook checks its caller its own way (Twilio's
signature) or serves what anyone may fetch (audio by content hash): `/hooks/twilio/…` from the
SMS and voice channels, `/audio/{name}` from the loudspeaker channel. Which channel declares
which is in its module's `webhooks()`.
"""

from __future__ import annotations

from collections.abc import Iterable

from warnd.adapter import Webhook
from warnd.api.routes import Route


def routes(webhooks: Iterable[Webhook]) -> list[Route]:
    """One route per webhook, in the API's own route type."""
    return [
        Route(
            w.method,
            w.path,
            w.handler,
            w.role,
            w.summary,
            body_types=w.body_types,
            query=dict(w.query),
            responses=dict(w.responses),
        )
        for w in webhooks
    ]
