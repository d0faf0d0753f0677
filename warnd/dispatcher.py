"""The dispatcher: claims due deliveries per channel, hands them to the adapter, records outcomes.

What counts as an attempt, and when a delivery is given up:
- A channel that is not ready (its broker is down) is handed nothing: its deliveries wait,
  `pending`, no attempt counted, until it is ready again (the channel wakes the dispatcher).
- An attempt is a real send. One that fails for good (PermanentError: an invalid number) is
  `dead` at once; one that may work later (TransientError: a timeout, a 5xx, a 429) is retried
  with backoff, and after `max_attempts` it is `dead` — unless its warning is still in force:
  then it keeps being retried at the capped backoff, so a provider away for an hour never leaves
  a warning in force unsent. All-clears and stops end after `max_attempts` as before.
- Device channels publish again what their devices do not confirm (warnd.confirm).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog

from warnd import confirm
from warnd.adapter import Adapter, Message
from warnd.backoff import retry_delay_s
from warnd.clock import Clock, Wakeup
from warnd.config import DispatchSettings
from warnd.model import IN_FORCE
from warnd.store import Delivery, NewJob, Outcome, Store, StoreUnavailable

if TYPE_CHECKING:
    from warnd.metrics import Metrics

log = structlog.get_logger("warnd.dispatcher")

# A sent batch whose outcomes the store could not take is written again after this, doubling to
# the cap: a database server restarting for seconds must not leave the batch `sending` (never
# retried, its receipts matching nothing) until warnd itself restarts.
RECORD_RETRY_FIRST_S = 0.5
RECORD_RETRY_MAX_S = 30.0


def keeps_trying(message: Message) -> bool:
    """Whether a delivery is retried past max_attempts: a warning or update while the warning is in force."""
    return message.delivery.kind in confirm.IN_FORCE_KINDS and message.warning.get("state") in IN_FORCE


def next_state(
    outcome: Outcome,
    attempts: int,
    now: datetime,
    settings: DispatchSettings,
    rng: random.Random | None = None,
    *,
    keep_trying: bool = False,
) -> tuple[Outcome, datetime | None]:
    """Decide what a failed outcome becomes: a retry at a time, or dead when attempts run out.

    With `keep_trying` (its warning is in force) attempts never run out: the retry comes at the
    backoff, which is capped by then.
    """
    if outcome.state != "failed":
        return outcome, None
    if attempts >= settings.max_attempts and not keep_trying:
        error = f"{outcome.error} (gave up after {attempts} attempts)"
        return Outcome(outcome.delivery_id, "dead", error=error), None
    delay = retry_delay_s(
        attempts,
        outcome.retry_after_s,
        base_s=settings.backoff_base_s,
        cap_s=settings.backoff_cap_s,
        rng=rng,
    )
    return outcome, now + timedelta(seconds=delay)


class Dispatcher:
    """One worker per channel; a slow channel never holds up another.

    Args:
        store: the store.
        adapters: channel name → running adapter.
        clock: time.
        settings: batch size, attempts, backoff.
        wake: set when new deliveries are written.
    """

    def __init__(
        self,
        store: Store,
        adapters: Mapping[str, Adapter],
        clock: Clock,
        settings: DispatchSettings,
        wake: Wakeup,
        metrics: Metrics | None = None,
    ) -> None:
        """Keep the collaborators."""
        self.store, self.adapters, self.clock, self.settings = store, adapters, clock, settings
        self.wake = wake
        self.in_flight = 0
        self.claims_in_flight = 0
        self.stopping = False
        # Counts outcomes and times batches (None in tests that need no metrics).
        self.metrics = metrics

    def channels(self) -> set[str]:
        """Channels with an adapter that can send."""
        return {name for name, a in self.adapters.items() if a.disabled_reason is None}

    def ready(self, channel: str) -> bool:
        """Whether a channel can send right now (enabled, started, and its broker or provider reachable)."""
        adapter = self.adapters.get(channel)
        if adapter is None or adapter.disabled_reason is not None or adapter.not_ready_reason is not None:
            return False
        return adapter.ready()

    async def run_channel_once(self, channel: str) -> int:
        """Claim one batch for a channel, send it, record outcomes; return how many were handled."""
        claimed = await self._claim(channel)
        if claimed:
            try:
                sent = await self._send(channel, claimed)
            except BaseException:
                self.in_flight -= len(claimed)
                raise
            await self._record_then_done(channel, claimed, sent)
        return len(claimed)

    async def _claim(self, channel: str) -> list[Delivery]:
        """A batch of the channel's due deliveries, now `sending` and counted in flight.

        Not ready: claim nothing. A claim is an attempt; a broker that is down is not a failure.
        """
        adapter = self.adapters[channel]
        if self.stopping or not self.ready(channel):
            return []
        batch_size = min(self.settings.batch_size, adapter.limits.batch_size)
        # In flight from the moment the claim is asked for: a stop meanwhile (drain) waits for
        # what it claims to be sent or given back, rather than leave it `sending`.
        self.claims_in_flight += 1
        try:
            claimed = await self.store.claim(self.clock.now(), batch_size, [channel])
        finally:
            self.claims_in_flight -= 1
        self.in_flight += len(claimed)
        return claimed

    async def _send(
        self, channel: str, claimed: Sequence[Delivery]
    ) -> tuple[list[tuple[Outcome, datetime | None]], list[NewJob], float]:
        """Hand a claimed batch to its adapter: the decided outcomes, confirmation jobs, send time."""
        adapter = self.adapters[channel]
        messages = await self._messages(claimed)
        started = time.perf_counter()
        outcomes = await adapter.deliver(messages, timeout_s=self.settings.send_timeout_s)
        duration_s = time.perf_counter() - started
        after = self.clock.now()
        by_id = {m.delivery.id: m for m in messages}
        decided = [
            next_state(
                o,
                by_id[o.delivery_id].delivery.attempts,
                after,
                self.settings,
                keep_trying=keeps_trying(by_id[o.delivery_id]),
            )
            for o in outcomes
        ]
        for before, (o, _) in zip(outcomes, decided, strict=True):
            # The adapter already logged a permanent failure; this is for retries run out.
            if o.state == "dead" and before.state != "dead":
                d = by_id[o.delivery_id].delivery
                log.warning(
                    "delivery.dead",
                    warning_id=d.warning_id,
                    msg_id=d.msg_id,
                    channel=channel,
                    target=d.target,
                    reason=o.error,
                )
        jobs = self._confirm_jobs(adapter, messages, [o for o, _ in decided], after)
        return decided, jobs, duration_s

    async def _record(
        self,
        channel: str,
        decided: Sequence[tuple[Outcome, datetime | None]],
        jobs: Sequence[NewJob],
        duration_s: float,
    ) -> None:
        """Write a sent batch's outcomes and its confirmation jobs at once; count them."""
        await self.store.record(decided, self.clock.now(), jobs=jobs)
        if self.metrics is not None:
            self.metrics.observe_batch(channel, [o for o, _ in decided], duration_s)

    async def _release(self, claimed: Sequence[Delivery]) -> None:
        """Put a batch claimed but not sent back as it was: pending, due, its attempt given back."""
        await self.store.record(
            [(Outcome(d.id, "pending", refund=not d.republish), None) for d in claimed], self.clock.now()
        )

    def _confirm_jobs(
        self, adapter: Adapter, messages: Sequence[Message], outcomes: Sequence[Outcome], now: datetime
    ) -> list[NewJob]:
        """The first confirmation round for deliveries handed over for the first time (warnd.confirm).

        One chain per warning per batch; a delivery published again stays in its first chain.
        """
        timeout_s = adapter.confirm_timeout_s()
        if timeout_s is None:
            return []
        first: dict[str, list[tuple[int, datetime]]] = {}
        for m, o in zip(messages, outcomes, strict=True):
            if o.state in ("sent", "delivered") and m.delivery.sent_at is None:
                until = adapter.republish_until(m, now)
                first.setdefault(m.delivery.warning_id, []).append((m.delivery.id, until))
        cap_s = self.settings.backoff_cap_s
        due = now + timedelta(seconds=confirm.delay_s(1, timeout_s, cap_s))
        return [
            confirm.job(
                warning_id,
                confirm.chain_key(adapter.kind, min(i for i, _ in watched)),
                adapter.kind,
                1,
                watched,
                due,
                now,
                timeout_s=timeout_s,
                cap_s=cap_s,
            )
            for warning_id, watched in first.items()
        ]

    async def _messages(self, claimed: Sequence[Delivery]) -> list[Message]:
        """Attach each delivery's warning content (one read per warning)."""
        warnings: dict[str, dict[str, Any]] = {}
        for d in claimed:
            if d.warning_id not in warnings:
                row = await self.store.get_warning(d.warning_id)
                warnings[d.warning_id] = dict(row) if row else {}
        return [Message(d, warnings[d.warning_id]) for d in claimed]

    async def run_once(self) -> int:
        """One batch for every channel, concurrently."""
        counts = await asyncio.gather(*(self.run_channel_once(c) for c in self.adapters))
        return sum(counts)

    async def channel_loop(self, channel: str, idle_s: float = 1.0) -> None:
        """Send a channel's deliveries as they come due, forever.

        While one batch is on the wire the one before is recorded, and for a channel that says
        so (`Limits.claim_ahead`: brokers, not paced providers) the next is claimed. The store's
        two trips a batch (about 35 ms each for 500 village speakers, on its own thread) then run
        beside the wire's wait instead of between sends: a county's 10,000-speaker step took
        130 ms a batch, one after the other. Batches still go out one at a time and in claim
        order, so a `stop` never overtakes the `play` it stops.
        """
        ahead: asyncio.Task[list[Delivery]] | None = None  # the next batch, being claimed
        recording: asyncio.Task[None] | None = None  # the last batch's outcomes, being written
        try:
            while not self.stopping:
                handled = 0
                try:
                    claiming, ahead = ahead, None
                    claimed = await claiming if claiming is not None else await self._claim(channel)
                    if claimed:
                        handled = len(claimed)
                        if self.adapters[channel].limits.claim_ahead:
                            ahead = asyncio.create_task(self._claim(channel))
                        try:
                            sent = await self._send(channel, claimed)
                            # One write behind at most: the previous batch is in before this one goes.
                            await self._settle(recording)
                        except BaseException:
                            self.in_flight -= len(claimed)
                            raise
                        recording = asyncio.create_task(self._record_then_done(channel, claimed, sent))
                except StoreUnavailable:
                    handled = 0  # the store said so once (store.write_failed); the deliveries wait, due
                except Exception:
                    log.exception("dispatcher.error", channel=channel)
                    handled = 0
                if not handled:
                    # Recorded first: a retry's due time is what the idle wait looks at.
                    await self._settle(recording)
                    recording = None
                    await self._idle(channel, idle_s)
        finally:
            await self._settle(recording)
            if ahead is not None:
                await self._settle_ahead(ahead)

    async def _record_then_done(
        self,
        channel: str,
        claimed: Sequence[Delivery],
        sent: tuple[Sequence[tuple[Outcome, datetime | None]], Sequence[NewJob], float],
    ) -> None:
        """Record a sent batch; it is no longer in flight once written (or warnd stops trying).

        The write is made again while the store is unavailable (outcomes are idempotent: only
        rows still `sending` change, jobs are inserted once). Once warnd stops, the rows stay
        `sending` and the next start's recovery sends them again, in doubt.
        """
        delay = RECORD_RETRY_FIRST_S
        try:
            while True:
                try:
                    await self._record(channel, *sent)
                except StoreUnavailable:
                    if self.stopping:
                        raise
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RECORD_RETRY_MAX_S)
                else:
                    return
        finally:
            self.in_flight -= len(claimed)

    async def _settle(self, recording: asyncio.Task[None] | None) -> None:
        """Wait for a batch's record; a failure to write it was logged there and is logged here."""
        if recording is None:
            return
        try:
            await asyncio.shield(recording)
        except StoreUnavailable:
            pass  # warnd stops meanwhile: the rows stay `sending`, sent again at the next start
        except asyncio.CancelledError:
            if not recording.done():
                raise
        except Exception:
            log.exception("dispatcher.record_failed")

    async def _settle_ahead(self, ahead: asyncio.Task[list[Delivery]]) -> None:
        """Give back a batch claimed for sending next that will not be sent now (warnd stops)."""
        try:
            claimed = await asyncio.shield(ahead)
        except Exception:
            return  # claimed nothing, or the claim failed: nothing to give back
        try:
            if claimed:
                await self._release(claimed)
        except Exception:
            log.exception("dispatcher.release_failed")  # `sending` until the next start's recovery
        finally:
            self.in_flight -= len(claimed)

    async def _idle(self, channel: str, idle_s: float) -> None:
        """Wait for new work, the channel's next due time, or idle_s, whichever comes first.

        Only this channel's deliveries count: an SMS backlog waiting on its rate limit must not
        keep the loudspeaker worker spinning.
        """
        event = self.wake.waiter()
        wait = idle_s
        # A channel that is not ready waits for the wake it sends when it is (or idle_s): its due
        # deliveries must not make this loop spin.
        if self.ready(channel):
            nxt = await self.store.next_delivery_due(channel)
            if nxt is not None:
                wait = max(0.0, min(idle_s, (nxt - self.clock.now()).total_seconds()))
        await self.wake.wait(event, wait)

    async def drain(self, grace_s: float) -> None:
        """Stop claiming and let sends in flight finish within grace_s."""
        self.stopping = True
        deadline = asyncio.get_running_loop().time() + grace_s
        while (self.in_flight or self.claims_in_flight) and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110 - polls a counter
            await asyncio.sleep(0.05)
        if self.in_flight:
            log.warning("dispatcher.grace_expired", in_flight=self.in_flight)
