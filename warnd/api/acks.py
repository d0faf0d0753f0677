"""`/ack/{token}`: the signed ack links a channel sends (WeCom cards); warnd.acklink serves them."""

from __future__ import annotations

from warnd.acklink import REFUSALS, AckLinks
from warnd.api.routes import Route


def routes(links: AckLinks) -> list[Route]:
    """GET and POST /ack/{token}; no bearer token: the link is the credential."""
    return [
        Route(
            "GET",
            "/ack/{token}",
            links.show,
            None,
            "Ack link page (signed token)",
            responses={200: "page", **REFUSALS},
        ),
        Route(
            "POST",
            "/ack/{token}",
            links.confirm,
            None,
            "Acknowledge through an ack link",
            responses={200: "acknowledged", **REFUSALS},
        ),
    ]
