"""Prometheus metrics at `/metrics`: what a sysadmin pages on.

Two kinds:

- **Gauges read from the store at scrape time** (warnings by level and state, deliveries by
  channel and state, outbox depth and age, jobs pending, devices online, feed last success;
  beside them each feed's expected interval, from the config):
  they are always true, survive restarts and need no bookkeeping in the pipeline. A scrape is
  one read transaction on a reader connection: it never takes or waits for the store's write
  lock, and it reads the counters the store keeps beside the deliveries (Store.gauges), so
  it costs the same at 1,000,000 deliveries as at 10.
- **Counters and histograms fed by the pipeline** (send duration, time to acknowledge,
  outcomes, retries, dead deliveries, adapter errors, acks) through two hooks: the dispatcher
  calls `observe_batch`, feedback calls `observe_ack`. They count since the daemon started.

Each daemon has its own `CollectorRegistry`, never the global one: tests run several daemons
in one process, and a library registering into the global registry cannot leak into ours.

`/metrics` needs no token unless `[http] metrics_token_hash` is set; warnd listens on
127.0.0.1 by default, so a Prometheus on the same host scrapes it as it is.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from warnd.model import DEVICE_CHANNELS
from warnd.store import Outcome, from_ts

if TYPE_CHECKING:
    from warnd.config import FeedSettings
    from warnd.directory import Directory
    from warnd.store import Store


class Channel(Protocol):
    """What the metrics read of a channel (warnd.adapter.Adapter has it)."""

    def ready(self) -> bool:
        """Whether it can send now."""
        ...


# Handing a batch to a broker takes milliseconds; a Twilio batch at 1 message/s, minutes.
SEND_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# A speaker confirms in seconds; a person replies within the 10-minute ack deadline, or the
# escalation chain (calls, the superior) takes tens of minutes more.
ACK_BUCKETS_S = (1, 5, 15, 30, 60, 120, 300, 600, 900, 1200, 1800, 3600, 7200, 21600)
OUTBOX_STATES = ("pending", "failed", "sending")
# The lag probe wakes 10 times a second: a 50 ms stall (the limit) cannot hide between
# two wake-ups, and 10 timer callbacks a second cost the loop nothing measurable.
LAG_PROBE_INTERVAL_S = 0.1
# The gauge shows the worst lag of the last 15 s: Prometheus' default scrape interval, so a
# stall between two scrapes is still there at the next one.
LAG_WINDOW_S = 15.0


def device_counts(
    directory: Directory | None, rows: list[dict[str, Any]] | None
) -> dict[tuple[str, str], int] | None:
    """(kind, online/offline/unknown) → how many of the directory's devices; None without a table.

    A device that never reported its status is `unknown`: new, never powered, or never set up.
    """
    if directory is None or rows is None:
        return None
    online = {r["id"]: r["online"] for r in rows}
    out: dict[tuple[str, str], int] = {}
    for v in directory.villages.values():
        for kind, ids in (("loudspeaker", v.speakers), ("led", v.led_boards)):
            for device in ids:
                state = online.get(device)
                status = "unknown" if state is None else "online" if state else "offline"
                out[(kind, status)] = out.get((kind, status), 0) + 1
    return out


def expected_interval_s(feed: FeedSettings) -> float | None:
    """How often a feed should succeed, or None for one that may stay quiet (push, MQTT).

    A poll feed is asked every interval_s, and any answer (304 Not Modified too) is a success;
    a push or MQTT feed speaks when upstream has something to say, unless the config says it
    speaks regularly (`expected_interval_s`, a heartbeat).
    """
    if feed.expected_interval_s is not None:
        return feed.expected_interval_s
    return feed.interval_s if feed.kind == "poll" else None


def error_reason(outcome: Outcome) -> str:
    """A failed outcome's reason as a label of few values (the free text goes to the log)."""
    error = outcome.error or ""
    if error.startswith("auth:"):
        return "auth"
    if error.startswith("no answer within"):
        return "timeout"
    if error.startswith("adapter error:"):
        return "adapter_bug"
    if outcome.state == "dead" and "(gave up after" not in error:
        return "permanent"
    return "transient"


class Metrics:
    """The metrics of one daemon."""

    def __init__(self) -> None:
        """Create the registry, the pipeline's counters and the scrape-time collector."""
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        r = self.registry
        self.send_seconds = Histogram(
            "warnd_send_duration_seconds",
            "Time to hand one batch of deliveries to a channel (broker, provider API)",
            ["channel"],
            buckets=SEND_BUCKETS_S,
            registry=r,
        )
        self.ack_seconds = Histogram(
            "warnd_time_to_ack_seconds",
            "From a delivery being sent to its first confirmation (played, shown, replied)",
            ["channel"],
            buckets=ACK_BUCKETS_S,
            registry=r,
        )
        self.outcomes = Counter(
            "warnd_delivery_outcomes",
            "Delivery attempts by outcome: sent, delivered, failed (retry scheduled), dead",
            ["channel", "outcome"],
            registry=r,
        )
        self.retries = Counter(
            "warnd_delivery_retries",
            "Delivery attempts that failed and were rescheduled",
            ["channel"],
            registry=r,
        )
        self.dead = Counter(
            "warnd_deliveries_dead",
            "Deliveries given up on at sending (late provider refusals: warnd_deliveries{state=dead})",
            ["channel"],
            registry=r,
        )
        self.adapter_errors = Counter(
            "warnd_adapter_errors",
            "Failed delivery attempts by reason: transient, timeout, permanent, auth, adapter_bug",
            ["channel", "reason"],
            registry=r,
        )
        self.acks = Counter(
            "warnd_acks",
            "Acknowledgements matched to a delivery, by reported status",
            ["channel", "status"],
            registry=r,
        )
        # Their labelled children by (channel, status) and channel (observe_ack).
        self._ack_counters: dict[tuple[str, str], Any] = {}
        self._ack_timers: dict[str, Any] = {}
        # The last send time parsed for a confirmation's delay: (as stored, as a datetime).
        self._sent_parsed: tuple[str | None, datetime | None] = (None, None)
        self.audio_fallbacks = Counter(
            "warnd_audio_render_failures",
            "Loudspeaker audio that could not be rendered (engine failed, disk full): sent as text only",
            registry=r,
        )
        self.acks_refused = Counter(
            "warnd_device_acks_refused",
            "Device acks refused: unknown_device, malformed, too_large, too_deep, unknown_status, unmatched",
            ["reason"],
            registry=r,
        )
        self.reload_failures = Counter(
            "warnd_config_reload_failures",
            "Reloads (SIGHUP) refused because warnd.toml or the directory has errors; the old config stays",
            registry=r,
        )
        self.auth_failures = Counter(
            "warnd_auth_failures",
            "Bearer-token checks that failed (API, feed pushes, /metrics): missing, unknown, mismatch",
            ["reason"],
            registry=r,
        )
        self.auth_throttled = Counter(
            "warnd_auth_throttled",
            "Requests answered 429 because their address failed token checks too often",
            registry=r,
        )
        self.auth_slow_hashes = Counter(
            "warnd_auth_slow_hashes",
            "PBKDF2 computations for presented tokens (only hashes in the old form need any)",
            registry=r,
        )
        self.loop_lag = Gauge(
            "warnd_event_loop_lag_seconds",
            f"Worst lateness of a periodic event-loop wake-up over the last {LAG_WINDOW_S:g} s "
            "(how long the loop was blocked: every request and ack waited that long)",
            registry=r,
        )
        self.state = StoreCollector()
        r.register(self.state)

    async def loop_lag_loop(self, interval_s: float = LAG_PROBE_INTERVAL_S) -> None:
        """Wake every interval_s and record how late the wake-up ran (the loop was busy meanwhile)."""
        # Real time on purpose (not warnd's Clock): this measures the process, not the schedule.
        recent: deque[float] = deque(maxlen=max(1, round(LAG_WINDOW_S / interval_s)))
        while True:
            before = time.monotonic()
            await asyncio.sleep(interval_s)
            recent.append(max(0.0, time.monotonic() - before - interval_s))
            self.loop_lag.set(max(recent))

    # -- hooks --------------------------------------------------------------------------------

    def observe_batch(self, channel: str, outcomes: Sequence[Outcome], duration_s: float) -> None:
        """Count one dispatched batch (outcomes after the retry decision)."""
        self.send_seconds.labels(channel).observe(duration_s)
        for o in outcomes:
            if o.state == "pending":
                continue  # not sent: the channel was not ready (no attempt)
            self.outcomes.labels(channel, o.state).inc()
            if o.state == "failed":
                self.retries.labels(channel).inc()
            elif o.state == "dead":
                self.dead.labels(channel).inc()
            if o.state in ("failed", "dead"):
                self.adapter_errors.labels(channel, error_reason(o)).inc()

    def observe_ack(self, row: Mapping[str, Any], status: str, now: datetime) -> None:
        """Count a matched ack; the first confirmation of a delivery also times it.

        `row` is the delivery as `Store.apply_acks` returns it after this ack, with
        `first_confirmation` true when this ack confirmed it for the first time.
        """
        channel = row["channel"]
        # The labelled children, looked up once: `labels()` takes a lock and builds a key per call,
        # which 10,000 acks a second notice.
        counter = self._ack_counters.get((channel, status))
        if counter is None:
            counter = self._ack_counters[(channel, status)] = self.acks.labels(channel, status)
        counter.inc()
        sent_at = row.get("sent_at")
        if row.get("first_confirmation") and sent_at:
            # A village's speakers share one send time: parsed once, not once per speaker.
            if self._sent_parsed[0] != sent_at:
                self._sent_parsed = (sent_at, from_ts(sent_at))
            sent = self._sent_parsed[1]
            timer = self._ack_timers.get(channel)
            if timer is None:
                timer = self._ack_timers[channel] = self.ack_seconds.labels(channel)
            timer.observe(max(0.0, (now - sent).total_seconds()))  # type: ignore[operator]  # sent_at checked above

    # -- scrape -------------------------------------------------------------------------------

    async def refresh(
        self,
        store: Store,
        adapters: Mapping[str, Channel],
        now: datetime,
        directory: Directory | None = None,
        feeds: Sequence[FeedSettings] = (),
    ) -> None:
        """Read the store's current counts for the next `render()`."""
        self.state.snapshot = await store.gauges()
        self.state.expected = {
            f.name: interval for f in feeds if (interval := expected_interval_s(f)) is not None
        }
        self.state.adapters = {name: a.ready() for name, a in adapters.items()}
        self.state.now = now
        self.state.devices = device_counts(directory, self.state.snapshot.get("devices"))

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class StoreCollector(Collector):
    """Gauges from the last `Metrics.refresh` (the store is async; a collector cannot await)."""

    def __init__(self) -> None:
        """Nothing read yet."""
        self.snapshot: dict[str, list[dict[str, Any]]] = {}
        self.adapters: dict[str, bool] = {}
        self.now: datetime | None = None
        self.devices: dict[tuple[str, str], int] | None = None
        self.expected: dict[str, float] = {}

    def describe(self) -> list[Any]:
        """Nothing to describe up front: the families depend on what the store holds."""
        return []

    def collect(self) -> Iterator[Any]:
        """One family per gauge."""
        s = self.snapshot
        g = GaugeMetricFamily("warnd_warnings", "Warnings by level and state", labels=["level", "state"])
        for r in s.get("warnings", []):
            g.add_metric([r["level"], r["state"]], r["n"])
        yield g
        g = GaugeMetricFamily(
            "warnd_deliveries", "Deliveries by channel and state", labels=["channel", "state"]
        )
        depth: dict[str, int] = {}
        for r in s.get("deliveries", []):
            g.add_metric([r["channel"], r["state"]], r["n"])
            if r["state"] in OUTBOX_STATES:
                depth[r["channel"]] = depth.get(r["channel"], 0) + r["n"]
        yield g
        g = GaugeMetricFamily(
            "warnd_outbox_depth",
            "Deliveries not yet handed over (pending, failed awaiting retry, sending)",
            labels=["channel"],
        )
        for channel in sorted(set(depth) | set(self.adapters)):
            g.add_metric([channel], depth.get(channel, 0))
        yield g
        g = GaugeMetricFamily(
            "warnd_outbox_oldest_overdue_seconds",
            "How long the oldest due, unsent delivery of a channel has waited (0 when none is due)",
            labels=["channel"],
        )
        for r in s.get("oldest_due", []):
            due = from_ts(r["due_at"])
            late = (self.now - due).total_seconds() if due and self.now else 0.0
            g.add_metric([r["channel"]], max(0.0, late))
        yield g
        g = GaugeMetricFamily("warnd_jobs_pending", "Scheduled jobs not yet fired, by kind", labels=["kind"])
        for r in s.get("jobs", []):
            g.add_metric([r["kind"]], r["n"])
        yield g
        g = GaugeMetricFamily(
            "warnd_adapter_up",
            "1 when a channel can send (broker connected, credentials ok)",
            labels=["channel"],
        )
        for name, ok in sorted(self.adapters.items()):
            g.add_metric([name], 1 if ok else 0)
        yield g
        if self.devices is not None:
            g = GaugeMetricFamily(
                "warnd_devices",
                "Directory loudspeakers and LED boards by last reported status: online, offline, unknown",
                labels=["kind", "status"],
            )
            for kind in DEVICE_CHANNELS:
                for status in ("online", "offline", "unknown"):
                    g.add_metric([kind, status], self.devices.get((kind, status), 0))
            yield g
        if "feeds" in s:
            g = GaugeMetricFamily(
                "warnd_feed_last_success_timestamp_seconds",
                "Unix time of a feed's last successful fetch or push (0: never)",
                labels=["feed"],
            )
            f = GaugeMetricFamily(
                "warnd_feed_consecutive_failures",
                "Failures of a feed since its last success",
                labels=["feed"],
            )
            for r in s["feeds"]:
                last = from_ts(r["last_success"])
                g.add_metric([r["feed"]], last.timestamp() if last else 0.0)
                f.add_metric([r["feed"]], r["failures"])
            yield g
            yield f
        # Only feeds expected to speak have a series: the stale-feed alert divides by nothing else.
        g = GaugeMetricFamily(
            "warnd_feed_expected_interval_seconds",
            "How often a feed should succeed: a poll feed's interval, a push or MQTT feed's"
            " expected_interval_s (no series: the feed may stay quiet)",
            labels=["feed"],
        )
        for name, interval in sorted(self.expected.items()):
            g.add_metric([name], interval)
        yield g
