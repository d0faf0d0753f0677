"""The scheduler: durable timed jobs, each fired exactly once (marked done in the transaction
that writes what it produced).

Job kinds: `step` (a pre-warning step), `repeat` (loudspeakers again while in force),
`escalate` (叫应: an ack deadline), `announce` (update or all-clear to those reached),
`confirm` (devices that have not confirmed get the same command again: warnd.confirm) and
`expire`. A job that produces another job (a repeat its successor, an escalation its next
step) writes it in the same transaction under a key derived from its own, so a crash or a
restart can neither lose nor double a link of the chain.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import structlog

from warnd import approval as signoff
from warnd import confirm
from warnd.clock import Clock, Wakeup, parse_iso
from warnd.config import ApprovalSettings, PolicySettings
from warnd.directory import Directory, Person
from warnd.escalation import Action, Confirmation, Watched, decide, next_due
from warnd.model import DEVICE_CHANNELS, IN_FORCE, PERSON_CHANNELS, State
from warnd.planner import (
    REMINDER,
    compact,
    end_of_quiet,
    holds_repeats,
    in_quiet_hours,
    level_policy,
    msg_id,
    repeat_job,
    step_deliveries,
    step_villages,
)
from warnd.retention import Retention
from warnd.store import Job, JobKind, NewDelivery, NewJob, Store, StoreUnavailable, from_ts, new_job, ts

log = structlog.get_logger("warnd.scheduler")
# Two loudspeaker plays closer than this are one play: a step and a repeat due together.
SAME_PLAY_S = 1.0
# An all-clear waits for sends in flight (each ends within dispatch.send_timeout_s, 30 s by
# default) by looking again every 2 s, at most 30 times: a stuck send cannot hold it for long.
ANNOUNCE_WAIT_S = 2.0
ANNOUNCE_WAITS = 30
# A step (or announcement) is written in parts of about this many deliveries, the job marked done
# with the last: the dispatcher claims the first villages' rows (four of its batches of 500)
# while the rest of a county-wide step's 50,000 are still being written, instead of after.
STEP_PART_ROWS = 2000


def step_parts(deliveries: Sequence[NewDelivery], rows: int = STEP_PART_ROWS) -> list[list[NewDelivery]]:
    """A step's deliveries in parts of about `rows`, every channel's first receivers in the first part.

    The deliveries of one message (a village's speakers share a msg_id) stay in one part, so the
    dispatcher can claim them together and publish once per village. Channels take turns a
    message at a time: the first part holds some speakers, some boards, some people.
    """
    by_channel: dict[str, list[NewDelivery]] = {}
    for d in deliveries:
        by_channel.setdefault(d.channel, []).append(d)
    parts: list[list[NewDelivery]] = []
    part: list[NewDelivery] = []
    for turn in itertools.zip_longest(*(_messages(ds) for ds in by_channel.values())):
        for group in turn:
            if group is None:
                continue
            part.extend(group)
            if len(part) >= rows:
                parts.append(part)
                part = []
    return [*parts, part] if part or not parts else parts


def _messages(deliveries: list[NewDelivery]) -> Iterator[list[NewDelivery]]:
    """One channel's deliveries message by message, in the order each message first appears.

    The planner puts a message's deliveries next to each other (a village's speakers), so a
    message is a run of one msg_id, taken as a slice when its turn comes. A list and a dict
    entry per message, made up front, held 11 MB more at a county-wide step's peak (50,000
    people, a message each); the check that no msg_id comes back later costs a set, 2 MB.
    """
    seen: set[str] = set()
    previous = None
    for d in deliveries:
        if d.msg_id != previous:
            if d.msg_id in seen:  # not adjacent (not from the planner): group them the long way
                yield from _grouped(deliveries)
                return
            seen.add(d.msg_id)
            previous = d.msg_id
    del seen
    start = 0
    for i in range(1, len(deliveries) + 1):
        if i == len(deliveries) or deliveries[i].msg_id != deliveries[start].msg_id:
            yield deliveries[start:i]
            start = i


def _grouped(deliveries: list[NewDelivery]) -> Iterator[list[NewDelivery]]:
    """Deliveries grouped by msg_id wherever they are, in the order each msg_id first appears."""
    messages: dict[str, list[NewDelivery]] = {}
    for d in deliveries:
        messages.setdefault(d.msg_id, []).append(d)
    yield from messages.values()


class Scheduler:
    """Fires due jobs: pre-warning steps, repeats, escalations, announcements and expiry.

    Args:
        store: the store.
        directory: returns the current directory.
        policy: returns the current policy.
        channels: returns the channels that have a running adapter.
        clock: time.
        wake: set when new deliveries are written (wakes the dispatcher).
        prepare: told (warning, channels, delivery kind) once a step is planned, so channels
            can get ready (render audio) while its deliveries are written.
        ready: whether a channel can send right now (a confirmation round waits while it cannot).
        approval: returns the `[approval]` settings: who is paged about a draft.
        retention: archives and deletes what ended long ago (a daily job); None: nothing is.
    """

    def __init__(
        self,
        store: Store,
        directory: Callable[[], Directory],
        policy: Callable[[], PolicySettings],
        channels: Callable[[], set[str]],
        clock: Clock,
        wake: Wakeup,
        prepare: Callable[[dict[str, Any], Iterable[str], str, dict[str, Any] | None], None] | None = None,
        ready: Callable[[str], bool] | None = None,
        approval: Callable[[], ApprovalSettings] | None = None,
        retention: Retention | None = None,
    ) -> None:
        """Keep the collaborators."""
        self.store, self.directory, self.policy = store, directory, policy
        self.channels, self.clock, self.wake = channels, clock, wake
        self.prepare = prepare
        self.ready = ready or (lambda channel: channel in self.channels())
        # `[approval]` settings (reloadable): who is paged about a draft (warnd.approval).
        self.approval = approval
        # Archives and deletes what ended long ago (warnd.retention); the first daily job is
        # planned by loop() once the store takes it.
        self.retention = retention
        self._retention_planned = False

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
        """Turn one job into deliveries (and state changes, and follow-up jobs), atomically."""
        blog = log.bind(warning_id=job.warning_id, job=job.key, kind=job.kind)
        if job.kind == JobKind.RETENTION:
            return await self._retain(job, now, blog)
        warning = await self.store.get_warning(job.warning_id) if job.warning_id else None
        if warning is None:
            blog.warning("job.orphaned")
            return await self.store.fire_job(job, [], now=now)
        handlers = {
            JobKind.STEP: self._step,
            JobKind.REPEAT: self._repeat,
            JobKind.ESCALATE: self._escalate,
            JobKind.ANNOUNCE: self._announce,
            JobKind.EXPIRE: self._expire,
            JobKind.CONFIRM: self._confirm,
            JobKind.APPROVAL_REMINDER: self._remind_approvers,
        }
        handler = handlers.get(job.kind)  # type: ignore[call-overload]  # a StrEnum key is its text
        if handler is None:
            blog.error("job.unknown_kind")
            return await self.store.fire_job(job, [], now=now)
        return await handler(job, warning, now, blog)

    # -- steps --------------------------------------------------------------------------------

    async def _step(self, job: Job, warning: dict[str, Any], now: datetime, blog: Any) -> bool:
        """A pre-warning step: its deliveries, an escalation chain per person who must confirm,
        and the start of the loudspeaker repeats."""
        if warning["state"] not in IN_FORCE or warning["version"] != job.payload.get("version"):
            blog.info("job.skipped", reason="warning changed", state=warning["state"])
            return await self.store.fire_job(job, [], now=now)
        policy = self.policy()
        payload = self._available(job.payload, blog)
        self._prepare_step(warning, payload)
        # Planned on a worker thread: a county-wide step is 50,000 rows, a second or more of
        # work that would hold up the loop, and with it the render just started, the acks coming
        # in and the API. The planner is pure: it reads the directory and policy it is given.
        deliveries = await asyncio.to_thread(
            step_deliveries, warning, job.key, payload, self.directory(), policy, now
        )
        self._prepare(warning, deliveries)
        jobs = self._chains(warning, job, deliveries, now)
        lp = level_policy(warning, policy)
        plays = [d for d in deliveries if d.channel == "loudspeaker" and d.kind == "warning"]
        if plays and lp.repeat_min:
            due = max(d.due_at for d in plays) + timedelta(minutes=lp.repeat_min)
            if holds_repeats(warning, policy):
                due = end_of_quiet(due, policy)
            if self._before_expiry(warning, due):
                jobs.append(repeat_job(warning, due, now, 1, first=True))
        ok = await self._fire_in_parts(job, deliveries, jobs=jobs, now=now)
        if ok:
            blog.info(
                "job.fired",
                step=job.payload.get("step"),
                deliveries=len(deliveries),
                chains=sum(j["kind"] == "escalate" for j in jobs),
                late_s=round((now - job.due_at).total_seconds(), 3),
            )
        return ok

    async def _fire_in_parts(
        self, job: Job, deliveries: list[NewDelivery], *, jobs: Sequence[NewJob] = (), now: datetime
    ) -> bool:
        """Write a job's deliveries part by part (`step_parts`), waking the dispatcher after each;
        the last part goes with the job's follow-up jobs and its `done`, in one transaction."""
        *first, last = step_parts(deliveries)
        for part in first:
            if not await self.store.fire_job_part(job, part, now=now):
                return False  # no longer pending: the warning was cancelled meanwhile
            self.wake.set()
        return await self.store.fire_job(job, last, jobs=jobs, now=now)

    def _chains(
        self, warning: dict[str, Any], job: Job, deliveries: list[NewDelivery], now: datetime
    ) -> list[NewJob]:
        """One escalation job per person with an ack-required delivery in this step."""
        lp = level_policy(warning, self.policy())
        if not lp.escalation:
            return []
        origin: dict[str, list[list[str]]] = {}
        for d in deliveries:
            if d.ack_required and d.person_id:
                origin.setdefault(d.person_id, []).append([d.msg_id, d.target])
        due = now + timedelta(minutes=lp.escalation[0].after_min)
        return [
            new_job(
                JobKind.ESCALATE,
                f"{job.key}:esc:{pid}:s0",
                warning["id"],
                due=due,
                now=now,
                payload={
                    "person_id": pid,
                    "stage": 0,
                    "step": job.payload["step"],
                    "origin": pairs,
                    "chain": f"{job.key}:esc:{pid}",
                    "reached": [],
                },
            )
            for pid, pairs in origin.items()
        ]

    def _available(self, payload: dict[str, Any], blog: Any) -> dict[str, Any]:
        """Drop channels no adapter serves, saying so once per step."""
        have = self.channels()
        missing = [c for c in payload["channels"] if c not in have]
        if missing:
            blog.warning("step.channels_unavailable", channels=missing)
        return {**payload, "channels": [c for c in payload["channels"] if c in have]}

    @staticmethod
    def _before_expiry(warning: dict[str, Any], when: datetime) -> bool:
        """Whether a time falls before the warning expires (the expire job stops devices)."""
        expires = parse_iso(warning.get("expires"))
        return expires is None or when < expires

    # -- repeats ------------------------------------------------------------------------------

    async def _repeat(self, job: Job, warning: dict[str, Any], now: datetime, blog: Any) -> bool:
        """Play again on the loudspeakers, unless a play was just made or quiet hours hold it."""
        if warning["state"] not in IN_FORCE or warning["version"] != job.payload.get("version"):
            blog.info("repeat.stopped", reason="warning changed", state=warning["state"])
            return await self.store.fire_job(job, [], now=now)
        policy = self.policy()
        lp = level_policy(warning, policy)
        if not lp.repeat_min:
            blog.info("repeat.stopped", reason="level does not repeat")
            return await self.store.fire_job(job, [], now=now)
        interval = timedelta(minutes=lp.repeat_min)
        hold = holds_repeats(warning, policy)
        n = job.payload.get("n", 1)
        deliveries: list[NewDelivery] = []
        last = await self._last_play(warning["id"])
        if hold and in_quiet_hours(now, policy):
            due, reason = end_of_quiet(now, policy), "quiet hours"
        elif last is not None and (last + interval - now).total_seconds() > SAME_PLAY_S:
            # A step (or a held play) already sounded within the interval: keep its rhythm.
            due, reason = last + interval, "played recently"
        elif "loudspeaker" not in self.channels():
            due, reason = now + interval, "loudspeaker channel unavailable"
        else:
            payload = {
                "step": f"repeat-{n}",
                "channels": ["loudspeaker"],
                "roles": [],
                "kind": "warning",
                "context": REMINDER,
                "new": [],
            }
            deliveries = step_deliveries(warning, job.key, payload, self.directory(), policy, now)
            due, reason, n = now + interval, "", n + 1
        if hold:
            due = end_of_quiet(due, policy)
        jobs = [repeat_job(warning, due, now, n, first=False)] if self._before_expiry(warning, due) else []
        ok = await self.store.fire_job(job, deliveries, jobs=jobs, now=now)
        if ok:
            if deliveries:
                blog.info(
                    "repeat.played", step=f"repeat-{n - 1}", deliveries=len(deliveries), next_at=ts(due)
                )
            else:
                blog.info("repeat.held", reason=reason, next_at=ts(due) if jobs else None)
        return ok

    async def _last_play(self, warning_id: str) -> datetime | None:
        """When the loudspeakers last were (or are next held to be) told to play this warning."""
        return await self.store.last_due(warning_id, "loudspeaker")

    # -- escalation ---------------------------------------------------------------------------

    async def _escalate(self, job: Job, warning: dict[str, Any], now: datetime, blog: Any) -> bool:
        """An ack deadline: stop if confirmed, else take the chain's next step and schedule the one after."""
        p = job.payload
        pid, stage = p["person_id"], p["stage"]
        blog = blog.bind(person_id=pid, stage=stage + 1)
        lp = level_policy(warning, self.policy())
        rows = await self.store.person_deliveries(warning["id"], [pid, *p["reached"]])
        origin_keys = {(m, t) for m, t in p["origin"]}
        origin = [r for r in rows if (r["msg_id"], r["target"]) in origin_keys]
        sent = [from_ts(r["sent_at"]) for r in origin if r["sent_at"]]
        created = [from_ts(r["created_at"]) for r in origin]
        watched = Watched(
            person_id=pid,
            stage=stage,
            created_at=min((c for c in created if c), default=job.due_at),
            sent_at=min((s for s in sent if s), default=None),
            states=tuple(r["state"] for r in origin),
            warning_state=warning["state"],
        )
        acks = [
            Confirmation(r["person_id"], r["channel"], from_ts(r["acked_at"]))  # type: ignore[arg-type]  # an ack row has acked_at
            for r in rows
            if r["state"] == "acknowledged" and r["acked_at"]
        ]
        action = decide(watched, acks, lp, now)
        if action.verb == "stop":
            blog.info("escalation.stopped", reason=action.reason)
            return await self.store.fire_job(job, [], now=now)
        if action.verb == "wait":
            assert action.at is not None
            nxt = self._chain_job(warning, job, stage, action.at, now, suffix=f"@{compact(action.at)}")
            blog.info("escalation.waiting", reason=action.reason)
            return await self.store.fire_job(job, [], jobs=[nxt], now=now)
        return await self._take_step(job, warning, watched, action, now, blog)

    async def _take_step(
        self, job: Job, warning: dict[str, Any], watched: Watched, action: Action, now: datetime, blog: Any
    ) -> bool:
        """Write the escalated delivery (or say why there is none), audit it, schedule the next step."""
        assert action.step is not None
        p = job.payload
        step, stage = action.step, action.stage
        directory = self.directory()
        reached = list(p["reached"])
        target: Person | None = directory.people.get(p["person_id"])
        skipped = None
        if step.to == "superior":
            climb = directory.people.get(reached[-1]) if reached else target
            sup = climb.superior if climb is not None else None
            target = directory.people.get(sup) if sup else None
            if target is None:
                skipped = "no superior in the directory"
        address = None
        if target is not None:
            address = target.phone if step.channel in ("sms", "voice") else target.wecom_user
            if step.channel not in self.channels():
                skipped = f"channel {step.channel} unavailable"
            elif step.channel not in PERSON_CHANNELS:
                skipped = f"channel {step.channel} cannot reach a person"
            elif not address:
                skipped = f"{target.id} has no address for {step.channel}"
            elif warning.get("status", "actual") != "actual" and not target.test:
                skipped = "a drill reaches only test people"
        deliveries: list[NewDelivery] = []
        if skipped is None and target is not None:
            unconfirmed = directory.people.get(p["person_id"])
            context: dict[str, Any] = {
                "message": "escalation_self",
                "person_id": p["person_id"],
                "role": unconfirmed.role if unconfirmed is not None else "",
                "sent_at": ts(watched.sent_at or watched.created_at),
            }
            ack = True
            if step.to == "superior":
                reached.append(target.id)
                context["message"] = "escalation_superior"
                context["phone"] = unconfirmed.phone if unconfirmed is not None else ""
                # A superior who already confirmed the warning is told who has not, not asked again.
                own = await self.store.person_deliveries(warning["id"], [target.id])
                ack = not any(r["state"] == "acknowledged" for r in own)
            deliveries.append(
                NewDelivery(
                    msg_id(job.key, step.channel, target.id),
                    warning["id"],
                    f"{p['step']}/escalate-{stage + 1}",
                    "warning",
                    step.channel,
                    target.id,
                    now,
                    person_id=target.id,
                    address=address,
                    ack_required=ack,
                    context=context,
                )
            )
        lp = level_policy(warning, self.policy())
        due = next_due(watched, lp, stage + 1, now)
        jobs: list[NewJob] = []
        if due is not None:
            jobs.append(self._chain_job(warning, job, stage + 1, due, now, reached=reached))
        audit = {
            "at": ts(now),
            "actor": "warnd",
            "action": "escalate",
            "warning_id": warning["id"],
            "detail": {
                "person_id": p["person_id"],
                "step": p["step"],
                "stage": stage + 1,
                "channel": step.channel,
                "to": step.to,
                "target": target.id if target is not None and skipped is None else None,
                "reason": action.reason,
                "skipped": skipped,
                "msg_id": deliveries[0].msg_id if deliveries else None,
            },
        }
        ok = await self.store.fire_job(job, deliveries, jobs=jobs, now=now, audit=audit)
        if ok:
            blog.info(
                "escalation.advanced",
                channel=step.channel,
                to=step.to,
                target=audit["detail"]["target"],
                reason=action.reason,
                skipped=skipped,
            )
        return ok

    @staticmethod
    def _chain_job(
        warning: dict[str, Any],
        job: Job,
        stage: int,
        due: datetime,
        now: datetime,
        *,
        suffix: str = "",
        reached: list[str] | None = None,
    ) -> NewJob:
        """The escalation job for a chain's step `stage`, keyed by chain, stage and (when waiting) time."""
        p = job.payload
        return new_job(
            JobKind.ESCALATE,
            f"{p['chain']}:s{stage}{suffix}",
            warning["id"],
            due=due,
            now=now,
            payload={**p, "stage": stage, "reached": p["reached"] if reached is None else reached},
        )

    # -- devices that have not confirmed -------------------------------------------------------

    async def _confirm(self, job: Job, warning: dict[str, Any], now: datetime, blog: Any) -> bool:
        """A confirmation round: publish again what devices have not confirmed, and plan the next round."""
        p = job.payload
        channel, round_no, timeout_s = p["channel"], p["round"], p["timeout_s"]
        if not self.ready(channel):
            # The broker is away: nothing can be published and nothing is given up; look again soon.
            due = now + timedelta(seconds=min(timeout_s, confirm.NOT_READY_RECHECK_S))
            nxt = confirm.job(
                warning["id"],
                p["chain"],
                channel,
                round_no,
                p["deliveries"],
                due,
                now,
                timeout_s=timeout_s,
                cap_s=p["cap_s"],
                suffix=f"@{compact(now)}",
            )
            blog.debug("confirm.waiting", channel=channel, reason="channel not ready")
            return await self.store.fire_job(job, [], jobs=[nxt], now=now)
        until = dict(p["deliveries"])
        rows = await self.store.deliveries_by_ids(list(until))
        decided = confirm.decide(rows, until, warning["state"] in IN_FORCE, now, timeout_s)
        jobs: list[NewJob] = []
        if decided.watch:
            due = now + timedelta(seconds=confirm.delay_s(round_no + 1, timeout_s, p["cap_s"]))
            jobs.append(
                confirm.job(
                    warning["id"],
                    p["chain"],
                    channel,
                    round_no + 1,
                    decided.watch,
                    due,
                    now,
                    timeout_s=timeout_s,
                    cap_s=p["cap_s"],
                )
            )
        reason = f"not confirmed within {timeout_s:g} s: published again"
        ok = await self.store.fire_job(
            job, [], jobs=jobs, now=now, republish=decided.republish, republish_reason=reason
        )
        if ok and decided.republish:
            blog.info(
                "delivery.unconfirmed", channel=channel, receivers=len(decided.republish), round=round_no
            )
        if ok and decided.gave_up:
            # Its first publish's not_after has passed: a device would refuse it now.
            blog.warning(
                "delivery.never_confirmed",
                channel=channel,
                receivers=len(decided.gave_up),
                targets=sorted(r["target"] for r in decided.gave_up)[:20],
            )
        return ok

    # -- sign-off (issue 15) ---------------------------------------------------------------------

    async def _remind_approvers(self, job: Job, warning: dict[str, Any], now: datetime, blog: Any) -> bool:
        """A draft still waits for sign-off: page the approvers, and plan the next page."""
        if warning["state"] != State.AWAITING_APPROVAL.value or self.approval is None:
            return await self.store.fire_job(job, [], now=now)
        settings = self.approval()
        directory, channels = self.directory(), self.channels()
        deliveries = signoff.reminder_deliveries(warning, job, settings, directory, channels, now)
        jobs = signoff.next_reminder(job, settings, now)
        ok = await self.store.fire_job(job, deliveries, jobs=jobs, now=now)
        if ok:
            blog.info("approval.reminded", n=job.payload.get("n", 1), deliveries=len(deliveries))
        return ok

    # -- retention ----------------------------------------------------------------------------

    async def _retain(self, job: Job, now: datetime, blog: Any) -> bool:
        """Archive and delete what ended long ago; the next run is planned as this one is marked done."""
        if self.retention is None:
            return await self.store.fire_job(job, [], now=now)
        try:
            result = await self.retention.run(now)
        except OSError as exc:
            # The archive could not be written (a full disk, an archive_dir warnd may not write):
            # nothing was deleted. Again in an hour; the warnings' jobs must not wait behind it.
            blog.error("retention.failed", error=f"{type(exc).__name__}: {exc}"[:300])
            return await self.store.fire_job(
                job, [], jobs=[self._retention_again(job, now, hours=1)], now=now
            )
        # A backlog (more than one run's share): the next share in a minute rather than tomorrow.
        more = result.left_for_next_run
        nxt = (
            self._retention_again(job, now, minutes=1)
            if more
            else self.retention.next_job(self.policy().timezone, now)
        )
        ok = await self.store.fire_job(job, [], jobs=[nxt], now=now)
        if ok:
            blog.info("retention.ran", **vars(result))
        return ok

    @staticmethod
    def _retention_again(job: Job, now: datetime, **after: float) -> NewJob:
        """The same retention run again a while after now (a backlog, a failed archive)."""
        due = now + timedelta(**after)
        return new_job(JobKind.RETENTION, f"{job.key}+{ts(now)}", None, due=due, now=now, payload={})

    async def plan_retention(self) -> None:
        """Write the first daily retention job once (a known key: a restart adds nothing)."""
        if self.retention is None or self._retention_planned:
            return
        await self.store.add_jobs([self.retention.next_job(self.policy().timezone, self.clock.now())])
        self._retention_planned = True

    # -- announcements and expiry -------------------------------------------------------------

    def _prepare_step(self, warning: dict[str, Any], payload: dict[str, Any]) -> None:
        """Let a step's channels get ready before it is planned, for what its new receivers are told.

        Planning a county-wide step (50,000 rows) and writing it take seconds; the loudspeakers'
        MP3 (1–3 s of rendering on a busy machine) renders meanwhile instead of after, so the
        first village command does not wait for it. Device channels told only a reminder at this
        step, and person channels of a step that tells some people afresh, are prepared after
        planning (`_prepare`), as before: nothing is rendered in vain.
        """
        if self.prepare is None:
            return
        context = payload.get("context") or {"message": "issue"}
        new = payload.get("new")
        channels = [c for c in payload["channels"] if new is None or c in new]
        # A device channel renders ahead only if the step reaches a device of it: an exercise of
        # villages without test speakers renders nothing (a burst of such warnings, each rendering
        # an MP3 nobody plays, once kept a real warning's render waiting).
        villages = step_villages(warning, self.directory())
        reached = {c for c, has in (("loudspeaker", any(v.speakers for v in villages)),
                                    ("led", any(v.led_boards for v in villages))) if has}  # fmt: skip
        channels = [c for c in channels if c not in DEVICE_CHANNELS or c in reached]
        if channels:
            self.prepare(warning, channels, payload.get("kind", "warning"), context)

    def _prepare(self, warning: dict[str, Any], deliveries: list[NewDelivery]) -> None:
        """Let the channels of planned deliveries get ready while the deliveries are written."""
        if self.prepare is None:
            return
        by_kind: dict[str, tuple[str, dict[str, Any] | None, set[str]]] = {}
        for d in deliveries:
            # Escalations differ per person; what is rendered ahead (audio) is per message kind.
            key = json.dumps([d.kind, d.context], sort_keys=True)
            by_kind.setdefault(key, (d.kind, d.context, set()))[2].add(d.channel)
        for kind, context, channels in by_kind.values():
            self.prepare(warning, sorted(channels), kind, context)

    async def _announce(self, job: Job, warning: dict[str, Any], now: datetime, blog: Any) -> bool:
        """Tell everyone reached of an update or the all-clear, once sends in flight have landed."""
        waited = job.payload.get("waited", 0)
        in_flight = await self.store.count_sending(warning["id"])
        if in_flight and waited < ANNOUNCE_WAITS:
            # A warning still on its way to someone: wait so the all-clear does not miss them.
            due = now + timedelta(seconds=ANNOUNCE_WAIT_S)
            nxt = new_job(
                JobKind.ANNOUNCE,
                f"{job.key}@{waited + 1}",
                warning["id"],
                due=due,
                now=now,
                payload={**job.payload, "waited": waited + 1},
            )
            blog.info("announce.waiting", in_flight=in_flight, retry_in_s=ANNOUNCE_WAIT_S)
            return await self.store.fire_job(job, [], jobs=[nxt], now=now)
        deliveries = await self._to_reached(warning, job, job.payload["kind"], None, now)
        told = job.payload.get("except") or ()
        if told:
            # An upgrade's own step tells these receivers of the new level in full: one message
            # (and one play on each speaker) each, not that step and an update seconds apart.
            directory, policy = self.directory(), self.policy()
            skip = {
                (d.channel, d.target)
                for t in told
                for d in step_deliveries(warning, t["key"], t["payload"], directory, policy, now)
            }
            deliveries = [d for d in deliveries if (d.channel, d.target) not in skip]
        self._prepare(warning, deliveries)
        ok = await self._fire_in_parts(job, deliveries, now=now)
        if ok:
            blog.info(
                "job.fired", step=job.payload.get("step"), deliveries=len(deliveries), in_flight=in_flight
            )
        return ok

    async def _expire(self, job: Job, warning: dict[str, Any], now: datetime, blog: Any) -> bool:
        """The warning ran out: stop speakers, clear boards, cancel what is still pending."""
        if warning["state"] not in IN_FORCE or warning["version"] != job.payload.get("version"):
            return await self.store.fire_job(job, [], now=now)
        # Device channels get a stop/clear on expiry; people are not told a warning simply ran out.
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
        if ok:
            blog.info("warning.expired", stops=len(deliveries))
        return ok

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
                    context=job.payload.get("context"),
                )
            )
        return out

    async def loop(self, idle_s: float = 1.0) -> None:
        """Fire jobs as they come due, forever."""
        while True:
            event = self.wake.waiter()
            try:
                await self.plan_retention()
                await self.run_once()
                # Jobs only: deliveries are the dispatcher's; a backlog of them must not spin this loop.
                nxt = await self.store.next_job_due()
            except StoreUnavailable:
                nxt = None  # the store said so once (store.write_failed); the jobs wait, due
            except Exception:
                log.exception("scheduler.error")
                nxt = None
            wait = idle_s
            if nxt is not None:
                wait = max(0.0, min(idle_s, (nxt - self.clock.now()).total_seconds()))
            await self.wake.wait(event, wait)
