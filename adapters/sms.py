"""The `sms` channel: SMS to people's phones through its providers, in the configured fallback order.

`[sms] providers` names them (twilio, aliyun, tencent); each provider's receipts and replies
arrive by its own callbacks or by pulling (adapters/providers/). Replies ("1" or 收到 confirms)
from any provider land in the same inbound table, which the operator reads here.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from adapters.providers.channel import ProviderChannel
from warnd import inbound
from warnd.adapter import Webhook


def _dumps(obj: Any) -> str:
    """JSON with Chinese text kept readable."""
    return json.dumps(obj, ensure_ascii=False)


class SmsAdapter(ProviderChannel):
    """SMS through the configured providers.

    Args:
        ctx: what the daemon lends the adapter.
    """

    kind = "sms"

    async def replies_view(self, request: web.Request) -> web.Response:
        """GET /api/v1/replies or /api/v1/warnings/{id}/replies: what people answered."""
        wid = request.match_info.get("id") or request.query.get("warning_id")
        rows = await inbound.replies(self.ctx.store, wid)
        directory = self.ctx.directory()
        for r in rows:
            person = directory.people.get(r["person_id"]) if r["person_id"] else None
            r["name"] = person.name if person else None
        return web.json_response({"warning_id": wid, "replies": rows}, dumps=_dumps)

    def routes(self) -> list[Any]:
        """The providers' callbacks and the operator's view of replies."""
        return [
            *super().routes(),
            Webhook("GET", "/api/v1/replies", self.replies_view, "SMS replies, newest first", role="viewer",
                    query={"warning_id": "only replies about this warning"}),
            Webhook("GET", "/api/v1/warnings/{id}/replies", self.replies_view,
                    "SMS replies about a warning: confirmations and feedback text", role="viewer"),
        ]  # fmt: skip
