"""Upstream feeds (CAP 1.2 by push, poll and MQTT) and hydrological readings, wired into the daemon.

`Feeds(daemon)` is made by the daemon; it sets `daemon.cap_intake` (CAP XML on
`POST /api/v1/warnings`), serves `routes()` through `Daemon.extra_routes` and runs `loops()`
through `Daemon.background`:

- `POST /api/v1/feeds/{feed}/cap` — push (the feed's own token; see warnd.feeds.push)
- `GET /api/v1/feeds` — per-feed health and the messages waiting for an operator (viewer)
- `GET /api/v1/warnings/{id}.cap` — a warning as CAP 1.2 (viewer)
- `POST /api/v1/hydro/readings`, `GET /api/v1/hydro/stations` — see warnd.hydro
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import structlog
from aiohttp import web

from warnd.api.routes import Route
from warnd.cap import CapError, to_cap_xml, validate_cap_xsd
from warnd.feeds.ingest import CapIngest, IngestResult
from warnd.feeds.poll import Poller
from warnd.feeds.push import CAP_TYPES, PushEndpoint, cap_error_response, results_response
from warnd.feeds.records import FeedRecords
from warnd.hydro import HydroMonitor
from warnd.intake import Actor, InputError
from warnd.store import from_ts

if TYPE_CHECKING:
    from warnd.config import FeedSettings
    from warnd.daemon import Daemon
    from warnd.feeds.mqtt import MqttFeeds

log = structlog.get_logger("warnd.feeds")


class Feeds:
    """Everything upstream: CAP ingest for every source, feed health, hydrology.

    Args:
        daemon: the daemon being built (its store need not be open yet).
    """

    def __init__(self, daemon: Daemon) -> None:
        """Make one ingest path, one poller per poll feed, the MQTT feeds' link if any."""
        self.daemon = daemon
        self.records = FeedRecords(daemon.store)
        self.ingest = CapIngest(daemon, self.records)
        self.push = PushEndpoint(self)
        self.hydro = HydroMonitor(daemon)
        feeds = daemon.settings.feed
        self.pollers = {f.name: Poller(self, f) for f in feeds if f.kind == "poll"}
        mqtt_feeds = [f for f in feeds if f.kind == "mqtt"]
        self.mqtt: MqttFeeds | None = None
        if mqtt_feeds:
            from warnd.feeds.mqtt import MqttFeeds

            self.mqtt = MqttFeeds(self, mqtt_feeds)
        daemon.cap_intake = self.push.api_intake

    def feed(self, name: str) -> FeedSettings | None:
        """A configured feed by name."""
        return next((f for f in self.daemon.settings.feed if f.name == name), None)

    async def take(
        self, body: bytes, *, feed: str, source: str, actor: Actor, settings: FeedSettings | None
    ) -> web.Response:
        """Ingest a document from an HTTP request and answer as the push contract says."""
        now = self.daemon.clock.now
        try:
            results: Sequence[IngestResult] = await self.ingest.ingest_bytes(
                body, feed=feed, source=source, actor=actor, settings=settings
            )
        except CapError as exc:
            await self.records.failed(feed, now(), str(exc))
            log.warning(
                "feed.document_refused", feed=feed, reason=str(exc), status=exc.status, body_len=len(body)
            )
            return cap_error_response(exc)
        except InputError as exc:
            await self.records.failed(feed, now(), f"{exc.field}: {exc.message}")
            log.warning("feed.document_refused", feed=feed, reason=exc.message, status=exc.status)
            raise
        for r in results:
            await self.records.succeeded(feed, now(), r.outcome)
        return results_response(results)

    # -- HTTP ---------------------------------------------------------------------------------

    async def list_feeds(self, _request: web.Request) -> web.Response:
        """Per-feed health (last success, last error, counts) and what waits for an operator."""
        tz = ZoneInfo(self.daemon.settings.policy.timezone)
        health = await self.records.health()

        def local(text: str | None) -> str | None:
            """A store time in the township's zone."""
            dt = from_ts(text)
            return dt.astimezone(tz).isoformat(timespec="seconds") if dt else None

        names: list[tuple[str, str]] = [(f.name, f.kind) for f in self.daemon.settings.feed]
        names += [(n, "api") for n in health if n not in {f.name for f in self.daemon.settings.feed}]
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
        return web.json_response(
            {"feeds": out, "attention": attention}, dumps=lambda o: json.dumps(o, ensure_ascii=False)
        )

    async def warning_cap(self, request: web.Request) -> web.Response:
        """A warning as a CAP 1.2 document that the reader accepts and the OASIS XSD validates."""
        d = self.daemon
        wid = request.match_info["id"]
        w = await d.store.get_warning(wid)
        if w is None:
            raise InputError("not_found", f"no warning {wid}", "id", status=404)
        view = await self.cap_view(w)
        # Urgency is judged when this message (the alert, an update, the cancel) was sent.
        now = datetime.fromisoformat(view["sent"])
        xml = to_cap_xml(view, sender_default=self.default_sender(), now=now)
        validate_cap_xsd(xml)
        return web.Response(body=xml, content_type="application/cap+xml", charset="utf-8")

    def default_sender(self) -> str:
        """Who warnd's own warnings come from: warnd@<public host>."""
        host = urlsplit(self.daemon.settings.http.public_url).hostname or "localhost"
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
        tz = ZoneInfo(self.daemon.settings.policy.timezone)

        def local(text: str) -> str:
            """A store time as CAP's sent: the township's offset, whole seconds."""
            return from_ts(text).astimezone(tz).isoformat(timespec="seconds")  # type: ignore[union-attr]  # never called with None

        sender = w.get("sender") or self.default_sender()
        identifier = w.get("identifier") or f"warnd-{w['id']}"
        doc = await self.records.document(sender, identifier)
        sent = doc["sent"] if doc and doc["sent"] else local(w["created_at"])
        chain = [{"sender": sender, "identifier": identifier, "sent": sent}]
        cancel: dict[str, str] | None = None
        for event in await self.daemon.store.version_events(w["id"]):
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

    def routes(self) -> list[Route]:
        """The feeds' and hydrology's endpoints."""
        return [
            Route(
                "POST",
                "/api/v1/feeds/{feed}/cap",
                self.push.handle,
                None,
                "Push a CAP document (the feed's own bearer token; optional X-Warnd-Signature)",
                body_types=(*CAP_TYPES, "application/octet-stream"),
                responses={
                    202: "taken",
                    200: "duplicate",
                    401: "bad feed token or signature",
                    429: "too many failed token checks from this address; see Retry-After",
                    503: "the feed's signature secret is not set, or store_unavailable (the disk is full)",
                },
            ),
            Route("GET", "/api/v1/feeds", self.list_feeds, "viewer", "Feed health and messages to look at"),
            Route("GET", "/api/v1/warnings/{id}.cap", self.warning_cap, "viewer", "A warning as CAP 1.2 XML"),
            *self.hydro.routes(),
        ]

    def loops(self) -> list[tuple[str, Any]]:
        """Poll loops, the MQTT feeds' link, the hydrology poller."""
        out: list[tuple[str, Any]] = [(f"warnd.feed.{n}", p.loop()) for n, p in self.pollers.items()]
        if self.mqtt is not None:
            out += self.mqtt.background()
        return out + self.hydro.loops()
