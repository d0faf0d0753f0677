"""The device hub: acknowledgements and health of every MQTT device (loudspeakers, LED boards).

Every device acknowledges on `warnd/v1/device/{id}/ack` and keeps a retained
`warnd/v1/device/{id}/status` (`{"online": bool, …}`, with a last will saying offline; topics in
warnd.mqtt.topics). One `DeviceHub` per daemon, built by warnd.app, subscribes to both on the
shared device link: acks go to the feedback stage,
statuses (online/offline, last seen) to the `devices` table, shown at `GET /api/v1/devices`
(warnd.api.devices) and as `offline` in a warning's device coverage.

Nothing is lost on the way in: the hub acknowledges a message to the broker only once what it
says is committed to the store (the link's manual acknowledgement). A store that cannot write
(a full disk) is waited for, the batch kept and nothing acknowledged; if warnd dies meanwhile,
the broker delivers the messages again from warnd's persistent session.

Nothing hostile gets far: each ack is parsed and checked on its own before its batch is written
(a malformed or deeply nested one is dropped from the batch, never spoiling it). Refused acks
are counted in `warnd_device_acks_refused_total{reason}` and logged at most once a minute per
device (one line a minute for all devices not in the directory), with how many were not logged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog

from warnd import jsonsafe
from warnd.feedback import AckReport
from warnd.model import DEVICE_CHANNELS
from warnd.mqtt import topics
from warnd.store import StoreError, is_database_error

if TYPE_CHECKING:
    from warnd.directory import Directory
    from warnd.store import Store

log = structlog.get_logger("warnd.devices")

# An ack larger than this is not an ack; its size is logged, never its body.
MAX_PAYLOAD_BYTES = 16 * 1024
# An ack is flat ({"msg_id", "status", "at", "detail"}); a detail object may nest a little. Deeper
# is refused before anything else touches it (encoding it again would recurse that deep).
MAX_DEPTH = 8
# warnd's msg_ids are 24 hex digits; one much longer names nothing warnd sent.
MAX_MSG_ID_CHARS = 128
# What a device may report (docs/mqtt.md); other channels' statuses (delivered, dead …) are not for it.
DEVICE_STATUSES = frozenset({"received", "playing", "played", "shown", "failed", "cancelled"})
# Acks applied per store transaction: big enough that a 10,000-speaker fan-out needs few fsyncs,
# small enough that one transaction holds the store for tens of milliseconds, not seconds
# (bench: 30,000 acks of 10,000 speakers took 8.4–8.9 s at 1,000, 9–11 s at 500).
ACK_BATCH = 1000
# How long the device hub lets acks gather before writing a batch that is not yet full.
ACK_GATHER_S = 0.02
# Messages checked between two passes of the event loop: a batch of 1,000 checked at once held
# the loop ~15 ms, and with the feedback stage's share after the commit, up to 90-130 ms.
CHECK_SLICE = 250
# A refused message is logged at most this often per device: a terminal (or an intruder)
# sending rubbish 50,000 times is one line a minute, well under journald's 10,000 per 30 s.
REFUSAL_LOG_INTERVAL_S = 60.0
# A store that cannot write is tried again after 0.5 s, doubling up to 10 s: soon after the disk
# has room again, without spinning while it has none.
STORE_RETRY_FIRST_S = 0.5
STORE_RETRY_MAX_S = 10.0
# Log lines name at most this much of a topic's device id (an unknown one is anybody's text).
MAX_LOGGED_ID_CHARS = 64


class Refusals:
    """Refused device messages: counted, and logged at most once per device per interval.

    Args:
        metrics: returns warnd.metrics.Metrics (or None), for `warnd_device_acks_refused_total`.
        interval_s: the least time between two lines about one device.
    """

    def __init__(self, metrics: Callable[[], Any], interval_s: float = REFUSAL_LOG_INTERVAL_S) -> None:
        """Nothing refused yet."""
        self.metrics, self.interval_s = metrics, interval_s
        self._last: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    def refuse(self, device_id: str, leaf: str, reason: str, *, known: bool, size: int) -> None:
        """Count one refused ack or status, and log it unless this device was logged lately."""
        metrics = self.metrics()
        if metrics is not None and leaf == "ack":
            metrics.acks_refused.labels(reason).inc()
        # Devices not in the directory share one key: their ids are whatever an intruder chooses.
        key = device_id if known else ""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._unlogged[key] = self._unlogged.get(key, 0) + 1
            return
        self._last[key] = now
        log.warning(
            f"{leaf}.refused",
            target=device_id[:MAX_LOGGED_ID_CHARS],
            reason=reason,
            body_len=size,
            known_device=known,
            unlogged=self._unlogged.pop(key, 0),
        )


class DeviceHub:
    """Acks and health of every MQTT device, on a link shared by the MQTT channels.

    Args:
        link: the shared device link (`warnd.mqtt.link.MqttLink`).
        directory: returns the current directory (which devices exist).
        feedback: the feedback stage acks are handed to.
        store: where device health is kept.
        clock: time for health records.
    """

    def __init__(
        self,
        link: Any,
        *,
        directory: Callable[[], Directory],
        feedback: Any,
        store: Store,
        clock: Any,
    ) -> None:
        """Subscribe to acks and statuses; the link runs `devices_loop` beside its connection."""
        self.link = link
        self.directory, self.feedback, self.store, self.clock = directory, feedback, store, clock
        # (device id, leaf, payload, what acknowledges it to the broker once it is stored).
        self.queue: asyncio.Queue[tuple[str, str, bytes, Any]] = asyncio.Queue()
        self.online: dict[str, bool] = {}
        self._seen: dict[str, datetime] = {}
        self.refusals = Refusals(lambda: getattr(self.feedback, "metrics", None))
        link.subscribe(topics.ACK_FILTER, self._on_message, acks=True)
        link.subscribe(topics.STATUS_FILTER, self._on_message, acks=True)
        link.add_loop("warnd.mqtt.devices", self.devices_loop)

    def _on_message(self, message: Any) -> None:
        """Queue a message: the receive loop never waits for the store."""
        token = self.link.token(message)
        parsed = topics.parse_device(str(message.topic))
        if parsed is None:  # not a device topic: nothing to store, so nothing to wait for
            self.link.ack(token)
            return
        payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
        self.queue.put_nowait((*parsed, payload, token))

    async def devices_loop(self) -> None:
        """Apply queued acks and statuses, many at a time, forever."""
        while True:
            batch = [await self.queue.get()]
            if self.queue.qsize() < ACK_BATCH:
                # Acks come in bursts (a village's speakers at once): a moment's wait lets one
                # transaction take many of them instead of one each.
                await asyncio.sleep(ACK_GATHER_S)
            # Whatever else has arrived goes in the same store transaction: 10,000 speakers
            # acking at once cost one fsync per batch, not one each.
            while len(batch) < ACK_BATCH and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            await self._apply(batch)
            try:
                # When the acks pause: last_seen can wait, the acks' own commits cannot.
                if self.queue.empty() and self._seen:
                    seen, self._seen = self._seen, {}
                    await self.store.devices_seen(seen)
            except Exception as exc:
                log.exception("device.seen_failed", devices=len(self._seen), error=repr(exc)[:300])

    async def _apply(self, batch: list[tuple[str, str, bytes, Any]]) -> None:
        """Store a batch, then acknowledge it to the broker; wait out a store that cannot write."""
        acks: list[AckReport] = []
        statuses: list[tuple[str, dict[str, Any]]] = []
        for start in range(0, len(batch), CHECK_SLICE):
            if start:
                await asyncio.sleep(0)  # let the loop run (and receive) between slices
            more_acks, more_statuses = self._sort(batch[start : start + CHECK_SLICE])
            acks += more_acks
            statuses += more_statuses
        delay, failing = STORE_RETRY_FIRST_S, False
        while True:
            try:
                await self._write(acks, statuses)
                break
            except Exception as exc:
                if not _store_trouble(exc):
                    # Not the store: something in one message. Apply them one by one.
                    log.warning("device.batch_failed", messages=len(batch), error=repr(exc)[:300])
                    await self._one_by_one(acks, statuses)
                    break
                if not failing:
                    # Once per outage; the broker keeps every message until it is stored.
                    log.error("device.store_failed", messages=len(batch), error=repr(exc)[:300])
                failing = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, STORE_RETRY_MAX_S)
        if failing:
            log.info("device.store_recovered", messages=len(batch))
        self.link.ack_many([token for *_, token in batch])

    def _sort(
        self, batch: list[tuple[str, str, bytes, Any]]
    ) -> tuple[list[AckReport], list[tuple[str, dict[str, Any]]]]:
        """Check every message on its own: the acks and statuses to store; the rest refused here."""
        acks: list[AckReport] = []
        statuses: list[tuple[str, dict[str, Any]]] = []
        kinds, now = self.directory().device_kind, self.clock.now()
        for device_id, leaf, payload, _ in batch:
            if leaf == "status" and not payload:
                continue  # a retained status being cleared
            if device_id not in kinds:
                self.refusals.refuse(device_id, leaf, "unknown_device", known=False, size=len(payload))
                continue
            if leaf == "ack":
                fields, reason = parse_ack(payload)
                if fields is None:
                    self.refusals.refuse(
                        device_id, leaf, reason or "malformed", known=True, size=len(payload)
                    )
                    continue
                self._seen[device_id] = now
                acks.append(
                    AckReport("mqtt", fields["status"], fields["msg_id"], device_id, None, fields["detail"])
                )
            else:
                data, reason = _json_object(payload)
                if data is not None and not isinstance(data.get("online"), bool):
                    data, reason = None, "malformed"
                if data is None:
                    self.refusals.refuse(
                        device_id, leaf, reason or "malformed", known=True, size=len(payload)
                    )
                    continue
                statuses.append((device_id, data))
        return acks, statuses

    async def _write(self, acks: list[AckReport], statuses: list[tuple[str, dict[str, Any]]]) -> None:
        """Statuses, then the acks in one transaction; acks that match no delivery are refused."""
        for device_id, data in statuses:
            await self._status(device_id, data)
        if acks:
            rows = await self.feedback.ack_many(acks, log_unmatched=False)
            for report, row in zip(acks, rows, strict=True):
                if row is None:
                    self.refusals.refuse(report.target or "", "ack", "unmatched", known=True, size=0)

    async def _one_by_one(self, acks: list[AckReport], statuses: list[tuple[str, dict[str, Any]]]) -> None:
        """Store each message on its own; one that still fails is dropped, and said so."""
        for device_id, data in statuses:
            try:
                await self._write([], [(device_id, data)])
            except Exception as exc:
                log.exception("device.message_failed", target=device_id, leaf="status", error=repr(exc)[:300])
        for report in acks:
            try:
                await self._write([report], [])
            except Exception as exc:
                log.exception(
                    "device.message_failed", target=report.target, leaf="ack", error=repr(exc)[:300]
                )

    async def _status(self, device_id: str, data: dict[str, Any]) -> None:
        """Record a status (or last will); log only changes of online/offline."""
        online = data["online"]
        await self.store.device_status(device_id, online, data, self.clock.now())
        if self.online.get(device_id) != online:
            self.online[device_id] = online
            log.info("device.online" if online else "device.offline", target=device_id)


def parse_ack(payload: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """A device's ack as `{"msg_id", "status", "detail"}`, or None and why it is refused.

    Lenient beyond what warnd needs (docs/mqtt.md): `at` and `detail` are kept as sent, unknown
    fields ignored; but a status must be one the contract lets a device say.
    """
    data, reason = _json_object(payload)
    if data is None:
        return None, reason
    msg_id, status = data.get("msg_id"), data.get("status")
    if not isinstance(msg_id, str) or not isinstance(status, str) or not 0 < len(msg_id) <= MAX_MSG_ID_CHARS:
        return None, "malformed"
    if status not in DEVICE_STATUSES:
        return None, "unknown_status"
    detail = {k: data[k] for k in ("at", "detail") if data.get(k) is not None}
    # Text no database can hold (an unpaired surrogate, from a "\ud800" escape) or no msg_id of
    # warnd's has (a control character: PostgreSQL refuses "\u0000" in its JSON) is malformed:
    # it would fail its whole batch's transaction, not just match nothing.
    if not msg_id.isprintable() or not all(_storable(v) for v in (msg_id, *detail.values())):
        return None, "malformed"
    return {"msg_id": msg_id, "status": status, "detail": detail}, None


def _storable(value: Any) -> bool:
    """Whether a decoded JSON value encodes as UTF-8 (no unpaired surrogate anywhere in it)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, dict):
        return all(_storable(k) and _storable(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_storable(v) for v in value)
    return True


def _json_object(payload: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """The payload as a JSON object nested at most MAX_DEPTH deep, or None and why not."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        return None, "too_large"
    try:
        data = jsonsafe.loads(payload, max_depth=MAX_DEPTH)
    except jsonsafe.JsonDepthError:
        return None, "too_deep"
    except (ValueError, UnicodeDecodeError):
        return None, "malformed"
    if not isinstance(data, dict):
        return None, "malformed"
    return data, None


def _store_trouble(exc: BaseException) -> bool:
    """Whether an error is the store's (a full disk, a failed write), not one message's."""
    return is_database_error(exc) or isinstance(exc, OSError | StoreError)


async def coverage_with_offline(store: Store, warning_id: str) -> dict[str, dict[str, int]]:
    """A warning's coverage; device channels also count targeted receivers that are offline."""
    coverage = await store.coverage(warning_id)
    offline = await store.offline_targets(warning_id)
    for channel, counts in coverage.items():
        if channel in DEVICE_CHANNELS:
            counts["offline"] = offline.get(channel, 0)
    return coverage
