"""What the API's handlers are given: the running warnd's parts, typed, under one app key.

The composition root (warnd.app) builds them; `make_app` stores them at `SERVICES` and every
handler takes what it needs from `services(request)`. The API names the parts it uses as a
Protocol so that it imports only the core, never the root that satisfies it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

if TYPE_CHECKING:
    from warnd.acklink import AckLinks
    from warnd.adapter import Adapter
    from warnd.api.auth import TokenBook
    from warnd.clock import Clock, Wakeup
    from warnd.config import Settings
    from warnd.directory import Directory
    from warnd.dispatcher import Dispatcher
    from warnd.feeds import Feeds
    from warnd.hydro import HydroMonitor
    from warnd.intake import Intake
    from warnd.metrics import Metrics
    from warnd.signoff import SignOff
    from warnd.store import Store


class ApiServices(Protocol):
    """The parts of a running warnd the API uses (warnd.app.Services has them all)."""

    @property
    def settings(self) -> Settings:
        """The loaded settings (policy and tokens replaced on reload)."""

    @property
    def store(self) -> Store:
        """The store."""

    @property
    def clock(self) -> Clock:
        """The daemon's time."""

    @property
    def directory(self) -> Callable[[], Directory]:
        """The current directory (replaced on reload)."""

    @property
    def tokens(self) -> TokenBook:
        """The API's bearer tokens."""

    @property
    def wake(self) -> Wakeup:
        """Set when anything changes (the console's event streams wait on it)."""

    @property
    def metrics(self) -> Metrics:
        """Prometheus metrics."""

    @property
    def intake(self) -> Intake:
        """Accept, update, cancel."""

    @property
    def signoff(self) -> SignOff:
        """Approve, reject, hold changes that need sign-off."""

    @property
    def dispatcher(self) -> Dispatcher:
        """Which channels can send."""

    @property
    def adapters(self) -> Mapping[str, Adapter]:
        """The channels, by name."""

    @property
    def feeds(self) -> Feeds:
        """Upstream CAP feeds."""

    @property
    def hydro(self) -> HydroMonitor:
        """Water-level readings."""

    @property
    def ack_links(self) -> AckLinks | None:
        """The ack-link handlers, when a channel sends ack links (WeCom)."""

    async def readiness(self) -> dict[str, dict[str, Any]]:
        """The checks behind /readyz."""
        ...


SERVICES: web.AppKey[ApiServices] = web.AppKey("services")


def services(request: web.Request) -> ApiServices:
    """The running warnd this request is served by."""
    return request.app[SERVICES]
