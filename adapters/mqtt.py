"""The base of channels whose devices take commands over MQTT (loudspeakers, LED boards).

The connection and the device hub are not here: warnd.mqtt.link (the one device link, shared
by these channels), warnd.mqtt.devices (acks and status of every device) and warnd.mqtt.topics
(the topic contract). A channel adds only what its devices are told.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from warnd.adapter import Adapter, Message, Receipt
from warnd.mqtt.link import MAX_INFLIGHT as MAX_INFLIGHT  # bench/loudspeaker_fanout.py imports it from here

if TYPE_CHECKING:
    from warnd.adapter import AdapterContext
    from warnd.config import Settings


class MqttDeviceAdapter(Adapter):
    """Base of channels whose devices subscribe to warnd's broker (loudspeakers, LED boards).

    They share the daemon's one MQTT link and its device hub (acks and status for every device).

    Args:
        ctx: the daemon's adapter context.
    """

    def __init__(self, ctx: AdapterContext) -> None:
        """Share the daemon's one link and device hub (made by warnd.app)."""
        super().__init__(ctx)
        self.link = ctx.mqtt
        self.hub = ctx.devices

    @classmethod
    def configured(cls, settings: Settings) -> bool:
        """Devices need a broker, and `[mqtt] url` has a default."""
        return bool(settings.mqtt.url)

    def ready(self) -> bool:
        """Ready when enabled and connected to the broker."""
        return self.disabled_reason is None and self.link.connected

    def confirm_timeout_s(self) -> float | None:
        """Devices confirm what they carried out: what they do not is published again after this."""
        return float(getattr(self.ctx.settings, self.kind).confirm_timeout_s)

    def background(self) -> list[tuple[str, Any]]:
        """The shared link's loops (connection, acks), if no other channel has claimed them."""
        return self.link.background()

    def _now(self) -> datetime:
        """The daemon's time (a fake clock in tests)."""
        return self.ctx.clock.now()

    async def send(self, message: Message) -> Receipt:
        """One delivery: the batch path with a batch of one."""
        (result,) = await self.send_batch([message])
        if isinstance(result, BaseException):
            raise result
        return result
