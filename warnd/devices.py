"""MQTT devices (loudspeakers, LED boards): their acknowledgements and their health.

Every device acknowledges on `warnd/v1/device/{id}/ack` and keeps a retained
`warnd/v1/device/{id}/status` (`{"online": bool, …}`, with a last will saying offline). One
`DeviceHub` per daemon subscribes to both on the shared MQTT link, whichever channel asks for it
first: acks go to the feedback stage, statuses to the `devices` table, shown at
`GET /api/v1/devices` and as `offline` in a warning's device coverage.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog

from warnd import jsonsafe
from warnd.feedback import AckReport

if TYPE_CHECKING:
    from aiohttp import web

    from warnd.adapter import AdapterContext
    from warnd.directory import Directory
    from warnd.store import Store

log = structlog.get_logger("warnd.devices")

TOPIC_ROOT = "warnd/v1"
ACK_FILTER = f"{TOPIC_ROOT}/device/+/ack"
STATUS_FILTER = f"{TOPIC_ROOT}/device/+/status"
# Device channels whose coverage says how many receivers are offline.
DEVICE_CHANNELS = ("loudspeaker", "led")
# An ack larger than this is not an ack; its size is logged, never its body.
MAX_PAYLOAD_BYTES = 16 * 1024
# Acks applied per store transaction: big enough that a 10,000-speaker fan-out needs few fsyncs,
# small enough that one transaction holds the store for tens of milliseconds, not seconds
# (bench: 30,000 acks of 10,000 speakers took 8.4–8.9 s at 1,000, 9–11 s at 500).
ACK_BATCH = 1000
# How long the device hub lets acks gather before writing a batch that is not yet full.
ACK_GATHER_S = 0.02


def device_topic(device_id: str, leaf: str) -> str:
    """`warnd/v1/device/{id}/{leaf}` (cmd, ack, status)."""
    return f"{TOPIC_ROOT}/device/{device_id}/{leaf}"


class DeviceHub:
    """Acks and health of every MQTT device, on a link shared by the MQTT channels.

    Args:
        link: the shared MQTT link (`adapters.mqtt.MqttLink`).
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
        self.directory, self.feedback, self.store, self.clock = directory, feedback, store, clock
        self.queue: asyncio.Queue[tuple[str, str, bytes]] = asyncio.Queue()
        self.online: dict[str, bool] = {}
        self._seen: dict[str, datetime] = {}
        link.subscribe(ACK_FILTER, self._on_message)
        link.subscribe(STATUS_FILTER, self._on_message)
        link.add_loop("warnd.mqtt.devices", self.devices_loop)

    def _on_message(self, message: Any) -> None:
        """Queue a message: the receive loop never waits for the store."""
        parts = str(message.topic).split("/")
        payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
        self.queue.put_nowait((parts[3], parts[4], payload))

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
            try:
                await self.handle_many(batch)
            except Exception as exc:
                if len(batch) == 1:
                    log.exception(
                        "device.message_failed", target=batch[0][0], leaf=batch[0][1], error=repr(exc)[:300]
                    )
                else:
                    # One poisonous message must not cost the batch: apply them one at a time.
                    log.warning("device.batch_failed", messages=len(batch), error=repr(exc)[:300])
                    for item in batch:
                        try:
                            await self.handle_many([item])
                        except Exception as one:
                            log.exception(
                                "device.message_failed", target=item[0], leaf=item[1], error=repr(one)[:300]
                            )
            try:
                if self.queue.empty() and self._seen:
                    seen, self._seen = self._seen, {}
                    await self.store.devices_seen(seen)
            except Exception as exc:
                log.exception("device.seen_failed", devices=len(self._seen), error=repr(exc)[:300])

    async def handle_many(self, batch: list[tuple[str, str, bytes]]) -> None:
        """Statuses one by one, then the batch's acks in one transaction."""
        acks: list[AckReport] = []
        kinds, now = self.directory().device_kind, self.clock.now()
        for device_id, leaf, payload in batch:
            if leaf == "ack" and device_id in kinds:
                report = self._ack_report(device_id, payload, now)
                if report is not None:
                    acks.append(report)
            else:
                await self.handle(device_id, leaf, payload)
        if acks:
            await self.feedback.ack_many(acks)

    async def handle(self, device_id: str, leaf: str, payload: bytes) -> None:
        """One ack or status from a device."""
        if leaf == "status" and not payload:
            return  # a retained status being cleared
        if device_id not in self.directory().device_kind:
            log.info(f"{leaf}.unknown_device", target=device_id, body_len=len(payload))
            return
        if leaf == "ack":
            await self._ack(device_id, payload)
        else:
            await self._status(device_id, _json_object(payload), len(payload))

    async def _ack(self, device_id: str, payload: bytes) -> None:
        """Hand one ack to feedback; malformed ones are logged and dropped."""
        report = self._ack_report(device_id, payload, self.clock.now())
        if report is not None:
            await self.feedback.ack_many([report])

    def _ack_report(self, device_id: str, payload: bytes, now: datetime) -> AckReport | None:
        """A device's ack as feedback takes it, or None (logged) when malformed."""
        try:
            report = parse_ack(device_id, payload)
        except MalformedAckError:
            log.warning("ack.malformed", target=device_id, body_len=len(payload))
            return None
        self._seen[device_id] = now
        return report

    async def _status(self, device_id: str, data: dict[str, Any] | None, size: int) -> None:
        """Record a status (or last will); log only changes of online/offline."""
        if data is None or not isinstance(data.get("online"), bool):
            log.warning("device.status_malformed", target=device_id, body_len=size)
            return
        online = data["online"]
        await self.store.device_status(device_id, online, data, self.clock.now())
        if self.online.get(device_id) != online:
            self.online[device_id] = online
            log.info("device.online" if online else "device.offline", target=device_id)


class MalformedAckError(ValueError):
    """A payload on an ack topic that is not an ack."""


def parse_ack(device_id: str, payload: bytes) -> AckReport:
    """A device's ack payload as feedback takes it; MalformedAckError for anything else (pure)."""
    data = _json_object(payload)
    if data is None or not isinstance(data.get("msg_id"), str) or not isinstance(data.get("status"), str):
        raise MalformedAckError(f"not an ack: {len(payload)} bytes")
    detail = {k: data[k] for k in ("at", "detail") if data.get(k) is not None}
    return AckReport("mqtt", data["status"], data["msg_id"], device_id, None, detail)


def _json_object(payload: bytes) -> dict[str, Any] | None:
    """The payload as a JSON object, or None."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        return None
    try:
        data = jsonsafe.loads(payload)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def device_hub(ctx: AdapterContext, link: Any) -> DeviceHub:
    """The daemon's one DeviceHub on this link, created by the first MQTT channel that asks."""
    hub = ctx.extra.get("devices")
    if hub is None:
        hub = ctx.extra["devices"] = DeviceHub(
            link, directory=ctx.directory, feedback=ctx.feedback, store=ctx.store, clock=ctx.clock
        )
    return hub


async def coverage_with_offline(store: Store, warning_id: str) -> dict[str, dict[str, int]]:
    """A warning's coverage; device channels also count targeted receivers that are offline."""
    coverage = await store.coverage(warning_id)
    offline = await store.offline_targets(warning_id)
    for channel, counts in coverage.items():
        if channel in DEVICE_CHANNELS:
            counts["offline"] = offline.get(channel, 0)
    return coverage


async def list_devices(request: web.Request) -> web.Response:
    """Every device of the directory with online / offline / unknown and when it was last heard from."""
    from aiohttp import web

    from warnd.api.warnings import daemon, json_dumps, local_time

    d = daemon(request)
    tz = d.settings.policy.timezone
    rows = {r["id"]: r for r in await d.store.devices()}
    directory = d.directory()
    wanted_state = request.query.get("state")
    wanted_village = request.query.get("village")
    out = []
    for device_id, kind in sorted(directory.device_kind.items()):
        village = directory.device_village[device_id]
        r = rows.get(device_id, {})
        online = r.get("online")
        state = "unknown" if online is None else ("online" if online else "offline")
        if (wanted_state and state != wanted_state) or (wanted_village and village != wanted_village):
            continue
        out.append(
            {
                "id": device_id,
                "kind": kind,
                "village": village,
                "state": state,
                "online": None if online is None else bool(online),
                "last_seen": local_time(r.get("last_seen"), tz),
                "status_at": local_time(r.get("status_at"), tz),
                "status": r.get("status", {}),
            }
        )
    return web.json_response({"devices": out}, dumps=json_dumps)


def routes() -> list[Any]:
    """The devices API (`GET /api/v1/devices?state=offline&village=CODE`)."""
    from warnd.api.routes import Route

    return [
        Route(
            "GET",
            "/api/v1/devices",
            list_devices,
            "viewer",
            "Loudspeakers and LED boards: online/offline and last seen (?state=, ?village=)",
            query={"state": "online, offline or unknown", "village": "a village code"},
        )
    ]
