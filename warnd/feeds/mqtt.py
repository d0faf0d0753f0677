"""MQTT feeds: CAP documents published on a broker topic (`[[feed]] kind = "mqtt"`, `topic`).

The feeds use warnd's `warnd.mqtt.link.MqttLink` (reconnect with a capped random delay,
subscriptions renewed on every connect, persistent session) on a connection of their own,
client id `<mqtt.client_id>-feeds`: they must run whether or not an MQTT channel (loudspeakers,
LED boards) is enabled, and a persistent session keeps QoS-1 documents published while warnd
restarts. A message has no one to answer to: a refused document is logged and counted in the
feed's health.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog

from warnd.cap import CapError
from warnd.intake import Actor, InputError
from warnd.mqtt import topics
from warnd.mqtt.link import MqttLink

if TYPE_CHECKING:
    import aiomqtt

    from warnd.config import FeedSettings
    from warnd.feeds import Feeds

log = structlog.get_logger("warnd.feeds")


class MqttFeeds:
    """Every `kind = "mqtt"` feed, on one broker connection.

    Args:
        feeds: the daemon's feeds.
        settings: the mqtt feeds' entries.
    """

    def __init__(self, feeds: Feeds, settings: list[FeedSettings]) -> None:
        """Make the link and subscribe each feed's topic."""
        self.feeds = feeds
        mqtt = feeds.settings.mqtt
        # `[mqtt] client_id` is filled in (warnd-{host}-{township}) before the feeds are made.
        client_id = str(mqtt.client_id)
        self.link = MqttLink(mqtt, client_id=topics.feeds_client_id(client_id), name="warnd.feeds.mqtt")
        for feed in settings:
            self.link.subscribe(feed.topic or "", self._handler(feed))

    def _handler(self, feed: FeedSettings) -> Any:
        """The message handler of one feed."""

        async def handle(message: aiomqtt.Message) -> None:
            """Ingest a CAP document from the topic."""
            await self.take(feed, bytes(message.payload) if message.payload is not None else b"")

        return handle

    async def take(self, feed: FeedSettings, payload: bytes) -> None:
        """Ingest one payload, recording the outcome in the feed's health."""
        now = self.feeds.clock.now
        try:
            results = await self.feeds.ingest.ingest_bytes(
                payload, feed=feed.name, source="mqtt", actor=Actor(f"feed:{feed.name}"), settings=feed
            )
        except (CapError, InputError) as exc:
            message = str(exc) if isinstance(exc, CapError) else f"{exc.field}: {exc.message}"
            await self.feeds.records.failed(feed.name, now(), message)
            log.warning("feed.document_refused", feed=feed.name, reason=message, body_len=len(payload))
            return
        for r in results:
            await self.feeds.records.succeeded(feed.name, now(), r.outcome)

    def background(self) -> list[tuple[str, Any]]:
        """The link's loop."""
        return self.link.background()
