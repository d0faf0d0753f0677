"""The scheduler: durable timed jobs, each fired exactly once (marked done in the transaction
that writes what it produced)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import structlog

from warnd.clock import Clock, Wakeup
from warnd.config import PolicySettings
from warnd.directory import Directory
from warnd.model import State
from warnd.planner import msg_id, step_deliveries
from warnd.store import Job, NewDelivery, Store, ts

log = structlog.get_logger("warnd.scheduler")

# Device channels get a stop/clear on expiry; people are not told a warning simply ran out.
DEVICE_CHANNELS = ("loudspeaker", "led")
IN_FORCE = (State.ACTIVE.value, State.UPDATED.value)


class Scheduler:
    """Fires due jobs: pre-warning steps, announcements (update, all-clear) and expiry.

    Args:
        store: the store.
        directory: returns the current directory.
        policy: returns the current policy.
        channels: returns the channels that have a running adapter.
        clock: time.
        wake: set when new deliveries are written (wakes the dispatcher).
    """

    def __init__(
        self,
        store: Store,
        directory: Callable[[], Directory],
        policy: Callable[[], PolicySettings],
        channels: Callable[[], set[str]],
        clock: Clock,
        wake: Wakeup,
    ) -> None:
        """Keep the collaborators."""
        self.store, self.directory, self.policy = store, directory, policy
        self.channels, self.clock, self.wake = channels, clock, wake

    async def run_once(self, limit: int = 100) -> int:
        """Fire every job due now; return how many fired."""
        now = self.clock.now()
        fired = 0
        for job in await self.store.due_jobs(now, limit):
            if await self._fire(job, now):
                fired += 1
        if fired:
            self.wake.set()
        return fired

    async def _fire(self, job: Job, now: datetime) -> bool:
        """Turn one job into deliveries (and state changes), atomically."""
        blog = log.bind(warning_id=job.warning_id, job=job.key, kind=job.kind)
        warning = await self.store.get_warning(job.warning_id) if job.warning_id else None
        if warning is None:
            blog.warning("job.orphaned")
            return await self.store.fire_job(job, [], now=now)
        deliveries: list[NewDelivery] = []
        if job.kind == "step":
            if warning["state"] not in IN_FORCE or warning["version"] != job.payload.get("version"):
                blog.info("job.skipped", reason="warning changed", state=warning["state"])
                return await self.store.fire_job(job, [], now=now)
            payload = self._available(job.payload, blog)
            deliveries = step_deliveries(warning, job.key, payload, self.directory(), self.policy(), now)
        elif job.kind == "announce":
            deliveries = await self._to_reached(warning, job, job.payload["kind"], None, now)
        elif job.kind == "expire":
            if warning["state"] not in IN_FORCE or warning["version"] != job.payload.get("version"):
                return await self.store.fire_job(job, [], now=now)
            deliveries = await self._to_reached(warning, job, "expire", DEVICE_CHANNELS, now)
            ok = await self.store.fire_job(
                job,
                deliveries,
                now=now,
                set_state=State.EXPIRED.value,
                audit={
                    "at": ts(now),
                    "actor": "warnd",
                    "action": "expire",
                    "warning_id": warning["id"],
                    "detail": {"stops": len(deliveries)},
                },
            )
            blog.info("warning.expired", stops=len(deliveries))
            return ok
        else:
            blog.error("job.unknown_kind")
        ok = await self.store.fire_job(job, deliveries, now=now)
        if ok:
            blog.info(
                "job.fired",
                step=job.payload.get("step"),
                deliveries=len(deliveries),
                late_s=round((now - job.due_at).total_seconds(), 3),
            )
        return ok

    def _available(self, payload: dict[str, Any], blog: Any) -> dict[str, Any]:
        """Drop channels no adapter serves, saying so once per step."""
        have = self.channels()
        missing = [c for c in payload["channels"] if c not in have]
        if missing:
            blog.warning("step.channels_unavailable", channels=missing)
        return {**payload, "channels": [c for c in payload["channels"] if c in have]}

    async def _to_reached(
        self, warning: dict[str, Any], job: Job, kind: str, only: tuple[str, ...] | None, now: datetime
    ) -> list[NewDelivery]:
        """Deliveries of an update, all-clear or expiry to the receivers the warning reached."""
        have = self.channels()
        out = []
        for r in await self.store.reached(warning["id"]):
            channel = r["channel"]
            if channel not in have or (only is not None and channel not in only):
                continue
            group = r["village"] if channel == "loudspeaker" and r["village"] else r["target"]
            out.append(
                NewDelivery(
                    msg_id(job.key, channel, group),
                    warning["id"],
                    job.payload.get("step", kind),
                    kind,
                    channel,
                    r["target"],
                    now,
                    village=r["village"],
                    person_id=r["person_id"],
                    address=r["address"],
                )
            )
        return out

    async def loop(self, idle_s: float = 1.0) -> None:
        """Fire jobs as they come due, forever."""
        while True:
            event = self.wake.waiter()
            try:
                await self.run_once()
                nxt = await self.store.next_due()
            except Exception:
                log.exception("scheduler.error")
                nxt = None
            wait = idle_s
            if nxt is not None:
                wait = max(0.0, min(idle_s, (nxt - self.clock.now()).total_seconds()))
            await self.wake.wait(event, wait)
