"""Upstream feeds: CAP 1.2 by push, poll and MQTT, one ingest path for all of them.

`Feeds` is made by the composition root (warnd.app) and runs `loops()` there. Its HTTP
endpoints are declared in warnd.api.feeds: `POST /api/v1/feeds/{feed}/cap` (push, the feed's own
token), CAP XML on `POST /api/v1/warnings` (both `take`), `GET /api/v1/feeds` (`health`) and
`GET /api/v1/warnings/{id}.cap` (`cap_view`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import structlog

from warnd.cap import CapError
from warnd.feeds.ingest import CapIngest, IngestResult
from warnd.feeds.mqtt import MqttFeeds
from warnd.feeds.poll import Poller
from warnd.feeds.records import FeedRecords
from warnd.intake import Actor, InputError
from warnd.store import from_ts

if TYPE_CHECKING:
    from warnd.clock import Clock
    from warnd.config import FeedSettings, Settings
    from warnd.intake import Intake
    from warnd.store import Store

log = structlog.get_logger("warnd.feeds")


class Feeds:
    """Everything upstream: CAP ingest for every source, feed health.

    Args:
        settings: warnd's settings (`[[feed]]`, the township's zone, the public URL).
        store: the store.
        clock: the daemon's time.
        intake: where warnings go in.
    """

    def __init__(self, settings: Settings, store: Store, clock: Clock, intake: Intake) -> None:
        """Make one ingest path, one poller per poll feed, the MQTT feeds' link if any."""
        self.settings, self.store, self.clock = settings, store, clock
        self.records = FeedRecords(store)
        self.ingest = CapIngest(intake, store, clock, self.records)
        feeds = settings.feed
        self.pollers = {f.name: Poller(self, f) for f in feeds if f.kind == "poll"}
        mqtt_feeds = [f for f in feeds if f.kind == "mqtt"]
        self.mqtt = MqttFeeds(self, mqtt_feeds) if mqtt_feeds else None

    def feed(self, name: str) -> FeedSettings | None:
        """A configured feed by name."""
        return next((f for f in self.settings.feed if f.name == name), None)

    async def take(
        self, body: bytes, *, feed: str, source: str, actor: Actor, settings: FeedSettings | None
    ) -> Sequence[IngestResult]:
        """Ingest a document that came over HTTP and record how the feed fared; CapError if refused."""
        now = self.clock.now
        try:
            results: Sequence[IngestResult] = await self.ingest.ingest_bytes(
                body, feed=feed, source=source, actor=actor, settings=settings
            )
        except CapError as exc:
            await self.records.failed(feed, now(), str(exc))
            log.warning(
                "feed.document_refused", feed=feed, reason=str(exc), status=exc.status, body_len=len(body)
            )
            raise
        except InputError as exc:
            await self.records.failed(feed, now(), f"{exc.field}: {exc.message}")
            log.warning("feed.document_refused", feed=feed, reason=exc.message, status=exc.status)
            raise
        for r in results:
            await self.records.succeeded(feed, now(), r.outcome)
        return results

    async def health(self) -> dict[str, Any]:
        """Per-feed health (last success, last error, counts) and what waits for an operator."""
        tz = ZoneInfo(self.settings.policy.timezone)
        health = await self.records.health()

        def local(text: str | None) -> str | None:
            """A store time in the township's zone."""
            dt = from_ts(text)
            return dt.astimezone(tz).isoformat(timespec="seconds") if dt else None

        names: list[tuple[str, str]] = [(f.name, f.kind) for f in self.settings.feed]
        names += [(n, "api") for n in health if n not in {f.name for f in self.settings.feed}]
        out = []
        for name, kind in names:
            h = health.get(name, {})
            item: dict[str, Any] = {
                "name": name,
                "kind": kind,
                "last_success": local(h.get("last_success")),
                "last_error": h.get("last_error"),
                "last_error_at": local(h.get("last_error_at")),
                "failures": h.get("failures", 0),
                "counts": h.get("counts", {}),
            }
            poller = self.pollers.get(name)
            if poller is not None:
                item["next_poll_in_s"] = round(poller.next_delay_s, 1)
            out.append(item)
        attention = await self.records.flagged()
        for a in attention:
            a["received_at"] = local(a["received_at"])
        return {"feeds": out, "attention": attention}

    def default_sender(self) -> str:
        """Who warnd's own warnings come from: warnd@<public host>."""
        host = urlsplit(self.settings.http.public_url).hostname or "localhost"
        return f"warnd@{host}"

    async def cap_view(self, w: Mapping[str, Any]) -> dict[str, Any]:
        """A stored warning as the CAP writer needs it: the latest message of its chain.

        The chain is the warning's first message, one message per update, then the cancel, if
        any; the warning exports as the latest: an Alert, an Update referencing every earlier
        message, or a Cancel referencing all of them (CAP 1.2 §3.2.1 references). A message that
        came from upstream keeps its own sender, identifier and sent (kept in its audit event).
        One that warnd made is sent when it was made, in the township's zone, and is identified
        `{identifier}_v{version}` (an update) or `{identifier}_cancel`: derived, not stored, so
        every export and every later reference names a version the same way.
        """
        tz = ZoneInfo(self.settings.policy.timezone)

        def local(text: str) -> str:
            """A store time as CAP's sent: the township's offset, whole seconds."""
            return from_ts(text).astimezone(tz).isoformat(timespec="seconds")  # type: ignore[union-attr]  # never called with None

        sender = w.get("sender") or self.default_sender()
        identifier = w.get("identifier") or f"warnd-{w['id']}"
        doc = await self.records.document(sender, identifier)
        sent = doc["sent"] if doc and doc["sent"] else local(w["created_at"])
        chain = [{"sender": sender, "identifier": identifier, "sent": sent}]
        cancel: dict[str, str] | None = None
        for event in await self.store.version_events(w["id"]):
            is_update = event["action"] == "update"
            suffix = f"v{event['detail'].get('version', len(chain) + 1)}" if is_update else "cancel"
            made = {"sender": sender, "identifier": f"{identifier}_{suffix}", "sent": local(event["at"])}
            message = event["detail"].get("cap") or made
            if is_update:
                chain.append(message)
            else:
                cancel = message
        if cancel is not None:
            msg_type, current, references = "cancel", cancel, chain
        else:
            msg_type, current, references = ("update" if len(chain) > 1 else "alert"), chain[-1], chain[:-1]
        return {
            **w,
            "created_at": from_ts(w["created_at"]),
            "msg_type": msg_type,
            **current,
            "references": references,
        }

    def loops(self) -> list[tuple[str, Any]]:
        """Poll loops and the MQTT feeds' link."""
        out: list[tuple[str, Any]] = [(f"warnd.feed.{n}", p.loop()) for n, p in self.pollers.items()]
        if self.mqtt is not None:
            out += self.mqtt.background()
        return out
