"""Accept, update and cancel warnings: validate, match the area, commit durably, schedule."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog

from warnd.approval import reminder_job
from warnd.clock import Clock, Wakeup, iso, parse_iso
from warnd.config import ApprovalSettings, PolicySettings
from warnd.directory import Directory
from warnd.model import IN_FORCE, Area, Level, State, UpdateIn, WarningIn, fingerprint
from warnd.planner import (
    Step,
    end_of_quiet,
    fired_steps,
    hold_at_night,
    holds_repeats,
    level_policy,
    reached_classes,
    repeat_job,
    step_jobs,
    steps_for,
)
from warnd.store import AcceptResult, JobKind, NewJob, Store, WarningRow, new_job, new_warning_id, ts

log = structlog.get_logger("warnd.intake")


class InputError(Exception):
    """A submission that cannot be accepted; `field` names what is wrong.

    Args:
        code: machine-readable error code.
        message: for the operator.
        field: dotted name of the offending field.
        status: HTTP status to answer with.
    """

    def __init__(self, code: str, message: str, field: str | None = None, status: int = 422) -> None:
        """Keep code, message, field and status for the error body."""
        super().__init__(message)
        self.code, self.message, self.field, self.status = code, message, field, status


@dataclass(frozen=True)
class Actor:
    """Who did something, and from where: for the audit trail."""

    name: str
    remote: str | None = None


class Intake:
    """The front door of the pipeline.

    Args:
        store: the store.
        directory: returns the current directory (reloadable).
        policy: returns the current policy (reloadable).
        clock: time.
        wake: set whenever new work is committed, so the loops look at once.
        approval: returns the `[approval]` settings (reloadable): a draft that needs sign-off is
            stored awaiting it, with only a reminder scheduled (warnd.approval). None: nothing waits.
    """

    def __init__(
        self,
        store: Store,
        directory: Callable[[], Directory],
        policy: Callable[[], PolicySettings],
        clock: Clock,
        wake: Wakeup,
        approval: Callable[[], ApprovalSettings] | None = None,
    ) -> None:
        """Keep the collaborators."""
        self.store, self.directory, self.policy, self.clock, self.wake = store, directory, policy, clock, wake
        self.approval = approval

    def match(self, area: Area, *, required: bool) -> list[str]:
        """The villages an area reaches; an operator's area that reaches none is refused."""
        villages = self.directory().match(area)
        if not villages and required:
            raise InputError("area_unmatched", "the area matches no village in the directory", "area")
        return villages

    async def accept(
        self,
        w: WarningIn,
        *,
        actor: Actor,
        source: str = "api",
        idempotency_key: str | None = None,
        msg_type: str = "alert",
        document: str | None = None,
        require_villages: bool = True,
    ) -> AcceptResult:
        """Commit a new warning, its audit event and its schedule in one transaction.

        Raises IdempotencyConflict when `idempotency_key` was used for other content.
        """
        now = self.clock.now()
        if w.expires is not None and w.expires <= now:
            raise InputError("expired", "expires is already in the past", "expires")
        villages = self.match(w.area, required=require_villages)
        row: dict[str, Any] = {
            "id": new_warning_id(now),
            "sender": w.sender,
            "identifier": w.identifier,
            "source": source,
            "msg_type": msg_type,
            "event": w.event,
            "level": w.level.value,
            "status": w.status.value,
            "headline": w.headline,
            "description": w.description,
            "instruction": w.instruction,
            "area": json.dumps(w.area.model_dump(), ensure_ascii=False),
            "villages": json.dumps(villages),
            "onset": iso(w.onset),
            "expires": iso(w.expires),
            "state": State.ACTIVE.value,
            "version": 1,
            "created_at": ts(now),
            "updated_at": ts(now),
            "document": document,
        }
        held = self.approval is not None and self.approval().needed(w.level, source)
        if held:
            assert self.approval is not None
            # Nothing is planned until an approver releases it; only the reminder is due.
            row["state"] = State.AWAITING_APPROVAL.value
            remind_at = now + timedelta(minutes=self.approval().remind_after_min)
            jobs = [reminder_job(row["id"], 1, remind_at, now)]
        else:
            jobs = step_jobs(row, steps_for(row, self.policy(), now), now)
        result = await self.store.accept(
            row,
            audit=_audit(
                now,
                actor,
                "issue",
                row["id"],
                {
                    "level": w.level.value,
                    "event": w.event,
                    "source": source,
                    "villages": len(villages),
                    "status": w.status.value,
                    **({"awaiting_approval": True} if held else {}),
                },
            ),
            jobs=jobs,
            idempotency_key=idempotency_key,
            fingerprint=fingerprint(w) if idempotency_key else None,
        )
        if result.created:
            log.info(
                "warning.accepted",
                warning_id=result.id,
                warning_level=w.level.value,
                hazard=w.event,
                villages=len(villages),
                source=source,
                steps=0 if held else len(jobs),
                awaiting_approval=held,
            )
            self.wake.set()
        else:
            log.info("warning.duplicate", warning_id=result.id, source=source)
        return result

    async def _in_force(self, warning_id: str) -> WarningRow:
        """The warning, which must exist and still be in force."""
        w = await self.store.get_warning(warning_id)
        if w is None:
            raise InputError("not_found", f"no warning {warning_id}", "id", status=404)
        if w["state"] not in IN_FORCE:
            raise InputError("not_in_force", f"warning {warning_id} is {w['state']}", "state", status=409)
        return w

    async def update(
        self, warning_id: str, u: UpdateIn, *, actor: Actor, message: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Replace content, reschedule what has not fired, announce the change (预警更新).

        `message` is the upstream CAP Update's {sender, identifier, sent}, kept in the audit event
        so that the CAP export of this version is that message.
        """
        now = self.clock.now()
        old = await self._in_force(warning_id)
        changes: dict[str, Any] = {}
        for name in ("level", "headline", "description", "instruction"):
            value = getattr(u, name)
            if value is not None:
                changes[name] = value.value if isinstance(value, Level) else value
        if u.area is not None:
            changes["area"] = json.dumps(u.area.model_dump(), ensure_ascii=False)
            changes["villages"] = json.dumps(self.match(u.area, required=True))
        for name in ("onset", "expires"):
            if getattr(u, name) is not None:
                changes[name] = iso(getattr(u, name))
        if not changes:
            raise InputError("empty_update", "an update must change at least one field", None)
        new = {
            **old,
            **changes,
            "area": changes.get("area", old["area"]),
            "villages": changes.get("villages", old["villages"]),
        }
        onset, expires = parse_iso(new["onset"]), parse_iso(new["expires"])
        if onset and expires and onset >= expires:
            raise InputError("invalid", "expires must be after onset", "expires")
        if expires is not None and expires <= now:
            raise InputError("expired", "expires is already in the past", "expires")
        new["version"] = old["version"] + 1
        changes["version"] = new["version"]
        changes["state"] = State.UPDATED.value
        if isinstance(new["villages"], str):
            new["villages"] = json.loads(new["villages"])
        policy = self.policy()
        upgraded = Level(new["level"]).rank < Level(old["level"]).rank
        # Steps already sent are not sent again; past steps that never fired go out now;
        # the rest move with the (possibly new) onset.
        old_jobs = await self.store.jobs_for(warning_id)
        fired = fired_steps(old_jobs)
        steps = steps_for(new, policy, now, fired)
        lp = level_policy(new, policy)
        rank_change = Level(new["level"]).rank - Level(old["level"]).rank
        told = "upgrade" if upgraded else "downgrade" if rank_change > 0 else "update"
        context = {"message": told, "old_level": old["level"]}
        if upgraded:
            # A higher level goes out at once, in full, to the new level's channels (its
            # loudspeakers at night as hold_at_night says for any step).
            covers = tuple(dict.fromkeys(c for s in steps if s.name == "issue" for c in s.covers))
            steps = [s for s in steps if s.name != "issue"]
            roles = tuple(sorted({r for rs in lp.roles.values() for r in rs}))
            issue = Step("issue", now, tuple(lp.channels), roles, covers)
            steps = hold_at_night(new, policy, [issue, *steps])
        jobs = step_jobs(
            new, steps, now, reached=reached_classes(old_jobs), first=context if upgraded else None
        )
        announce = _announce_job(new, "update", now, context)
        if upgraded:
            # Whoever the upgrade's own step (or its part held to the morning) reaches hears
            # the new level from it, once.
            announce["payload"]["except"] = [
                {"key": j["key"], "payload": j["payload"]}
                for j in jobs
                if j["kind"] == "step" and j["payload"]["step"] == "issue"
            ]
        jobs.append(announce)
        if lp.repeat_min and await self.store.last_due(warning_id, "loudspeaker") is not None:
            # Speakers already sounded: the new version keeps repeating at the new level's interval.
            due = now + timedelta(minutes=lp.repeat_min)
            if holds_repeats(new, policy):
                due = end_of_quiet(due, policy)
            expires = parse_iso(new["expires"])
            if expires is None or due < expires:
                jobs.append(repeat_job(new, due, now, 1, first=True))
        await self.store.change_warning(
            warning_id,
            changes,
            now=now,
            cancel_jobs=True,
            # An unconfirmed official stays unconfirmed across an update: the 叫应 goes on,
            # unless an upgrade sends afresh (and starts fresh chains).
            keep_job_kinds=() if upgraded else ("escalate",),
            audit=_audit(
                now,
                actor,
                "update",
                warning_id,
                {
                    "fields": sorted(k for k in changes if k not in ("version", "state", "villages")),
                    "version": new["version"],
                    "upgraded": upgraded,
                    **({"cap": message} if message else {}),
                },
            ),
            jobs=jobs,
        )
        log.info("warning.updated", warning_id=warning_id, version=new["version"], upgraded=upgraded)
        self.wake.set()
        return new

    async def cancel(
        self,
        warning_id: str,
        *,
        actor: Actor,
        reason: str = "",
        advice: str = "",
        message: dict[str, str] | None = None,
    ) -> None:
        """Stop everything pending and send the all-clear (解除预警) to everyone reached.

        The all-clear says what is lifted, `reason` and what to do now (`advice`, else the
        configured default) — never the lifted warning's instruction. `message` is the upstream
        CAP Cancel's {sender, identifier, sent}, as for `update`.
        """
        now = self.clock.now()
        w = await self._in_force(warning_id)
        context = {"message": "all_clear", "reason": reason, "advice": advice, "at": iso(now)}
        await self.store.change_warning(
            warning_id,
            {"state": State.CANCELLED.value},
            now=now,
            cancel_jobs=True,
            cancel_deliveries=True,
            audit=_audit(
                now,
                actor,
                "cancel",
                warning_id,
                {
                    "reason": reason,
                    **({"advice": advice} if advice else {}),
                    **({"cap": message} if message else {}),
                },
            ),
            jobs=[_announce_job(w, "cancel", now, context)],
        )
        log.info("warning.cancelled", warning_id=warning_id)
        self.wake.set()


def _announce_job(w: Mapping[str, Any], kind: str, now: Any, context: dict[str, Any]) -> NewJob:
    """A job that tells everyone already reached about an update or the all-clear."""
    version = w.get("version", 1)
    return new_job(
        JobKind.ANNOUNCE,
        f"{w['id']}:v{version}:{kind}",
        w["id"],
        due=now,
        now=now,
        payload={"step": kind, "kind": kind, "version": version, "context": context},
    )


def _audit(now: Any, actor: Actor, action: str, warning_id: str, detail: dict[str, Any]) -> dict[str, Any]:
    """An audit event row."""
    return {
        "at": ts(now),
        "actor": actor.name,
        "action": action,
        "warning_id": warning_id,
        "remote": actor.remote,
        "detail": detail,
    }
