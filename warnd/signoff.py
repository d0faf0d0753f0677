"""Sign-off's actions: approve, reject, hold an update or a cancel (the rules: warnd.approval)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from warnd.approval import AWAITING
from warnd.clock import parse_iso
from warnd.config import ApprovalSettings
from warnd.intake import IN_FORCE, Actor, InputError, Intake, _audit
from warnd.model import CancelIn, Level, State, UpdateIn
from warnd.planner import step_jobs, steps_for

log = structlog.get_logger("warnd.approval")


class SignOff:
    """Approve, reject, and hold updates and cancels that need sign-off.

    Args:
        intake: the front door (store, policy, clock, wake-up, update and cancel).
        approval: returns the current `[approval]` settings (reloadable).
    """

    def __init__(self, intake: Intake, approval: Callable[[], ApprovalSettings]) -> None:
        """Keep the collaborators."""
        self.intake, self.approval = intake, approval
        self.store = intake.store

    async def _get(self, warning_id: str) -> dict[str, Any]:
        """The warning, or a 404."""
        w = await self.store.get_warning(warning_id)
        if w is None:
            raise InputError("not_found", f"no warning {warning_id}", "id", status=404)
        return dict(w)  # the planner and the hold take a plain mapping

    def _not_self(self, drafter: str | None, actor: Actor) -> None:
        """Refuse the drafter's own sign-off (403) unless self_approval is configured."""
        if drafter == actor.name and not self.approval().self_approval:
            raise InputError(
                "self_approval",
                "the drafter may not sign off their own draft; another approver must (审核签发)",
                "id",
                status=403,
            )

    async def approve(self, warning_id: str, actor: Actor) -> dict[str, Any]:
        """Release a waiting draft (planned from now) or apply a waiting update or cancel."""
        w = await self._get(warning_id)
        now = self.intake.clock.now()
        if w["state"] == AWAITING:
            self._not_self(await self.store.drafter(warning_id), actor)
            expires = parse_iso(w.get("expires"))
            if expires is not None and expires <= now:
                raise InputError("expired", "the draft expired while it waited; reject it", "expires", 409)
            jobs = step_jobs(w, steps_for(w, self.intake.policy(), now), now)
            await self.store.change_warning(
                warning_id,
                {"state": State.ACTIVE.value},
                now=now,
                cancel_jobs=True,
                audit=_audit(now, actor, "approve", warning_id, {"released": "warning", "steps": len(jobs)}),
                jobs=jobs,
            )
            log.info("warning.approved", warning_id=warning_id, steps=len(jobs))
            self.intake.wake.set()
            return {"id": warning_id, "state": State.ACTIVE.value, "released": "warning"}
        change = await self.store.pending_change(warning_id)
        if change is None:
            raise InputError(
                "nothing_to_approve", f"nothing of warning {warning_id} awaits sign-off", "id", 409
            )
        self._not_self(change["drafted_by"], actor)
        drafter = Actor(change["drafted_by"], change["remote"])
        if change["kind"] == "update":
            new = await self.intake.update(warning_id, UpdateIn.model_validate(change["body"]), actor=drafter)
            state = new["state"]
        else:
            body = CancelIn.model_validate(change["body"])
            await self.intake.cancel(warning_id, actor=drafter, reason=body.reason, advice=body.advice)
            state = State.CANCELLED.value
        await self.store.decide_pending_change(
            change["id"],
            "approved",
            by=actor.name,
            now=now,
            audit=_audit(now, actor, "approve", warning_id, {"released": change["kind"]}),
        )
        log.info("change.approved", warning_id=warning_id, change=change["kind"])
        return {"id": warning_id, "state": state, "released": change["kind"]}

    async def reject(self, warning_id: str, actor: Actor, reason: str) -> dict[str, Any]:
        """End a waiting draft with nothing sent, or drop a waiting update or cancel."""
        w = await self._get(warning_id)
        now = self.intake.clock.now()
        if w["state"] == AWAITING:
            await self.store.change_warning(
                warning_id,
                {"state": State.REJECTED.value},
                now=now,
                cancel_jobs=True,
                audit=_audit(now, actor, "reject", warning_id, {"rejected": "warning", "reason": reason}),
            )
            log.info("warning.rejected", warning_id=warning_id)
            return {"id": warning_id, "state": State.REJECTED.value, "rejected": "warning"}
        change = await self.store.pending_change(warning_id)
        if change is None:
            raise InputError(
                "nothing_to_reject", f"nothing of warning {warning_id} awaits sign-off", "id", 409
            )
        await self.store.decide_pending_change(
            change["id"],
            "rejected",
            by=actor.name,
            now=now,
            audit=_audit(now, actor, "reject", warning_id, {"rejected": change["kind"], "reason": reason}),
        )
        log.info("change.rejected", warning_id=warning_id, change=change["kind"])
        return {"id": warning_id, "state": w["state"], "rejected": change["kind"]}

    async def hold_update(self, warning_id: str, u: UpdateIn, actor: Actor) -> str | None:
        """Keep an operator's update for sign-off when the old or new level needs it.

        Returns `awaiting_approval` when held, None when the update goes straight out.
        """
        w = await self._get(warning_id)
        if w["state"] == AWAITING:
            raise InputError(
                "awaiting_approval",
                "a draft waiting for sign-off cannot be updated: reject it and issue it anew",
                "state",
                409,
            )
        levels = {w["level"], *([u.level.value] if u.level is not None else [])}
        if w["state"] not in IN_FORCE or not any(self.approval().needed(Level(lv), "api") for lv in levels):
            return None
        body = u.model_dump(mode="json", exclude_none=True)
        if not body:
            raise InputError("empty_update", "an update must change at least one field", None)
        if u.area is not None:
            self.intake.match(u.area, required=True)
        return await self._hold(w, "update", body, actor)

    async def hold_cancel(self, warning_id: str, body: CancelIn, actor: Actor) -> str | None:
        """Withdraw a waiting draft, or keep a cancel for sign-off when configured.

        Returns `cancelled` (a draft withdrawn), `awaiting_approval` (held) or None (cancel now).
        """
        w = await self._get(warning_id)
        now = self.intake.clock.now()
        if w["state"] == AWAITING:
            # Nothing was sent: withdrawing the draft needs no all-clear and no sign-off.
            await self.store.change_warning(
                warning_id,
                {"state": State.CANCELLED.value},
                now=now,
                cancel_jobs=True,
                audit=_audit(now, actor, "cancel", warning_id, {"withdrawn": True, "reason": body.reason}),
            )
            log.info("warning.withdrawn", warning_id=warning_id)
            return State.CANCELLED.value
        approval = self.approval()
        if w["state"] not in IN_FORCE or not (
            approval.cancel_needs_approval and approval.needed(Level(w["level"]), "api")
        ):
            return None
        return await self._hold(w, "cancel", body.model_dump(mode="json"), actor)

    async def _hold(self, w: dict[str, Any], kind: str, body: dict[str, Any], actor: Actor) -> str:
        """Store a change for sign-off (409 when another one already waits)."""
        now = self.intake.clock.now()
        audit = _audit(now, actor, f"{kind}_drafted", w["id"], {"awaiting_approval": True, **body})
        if not await self.store.add_pending_change(w["id"], kind, body, audit=audit, now=now):
            raise InputError(
                "change_pending", f"another change of warning {w['id']} already awaits sign-off", "id", 409
            )
        log.info("change.awaiting_approval", warning_id=w["id"], change=kind)
        return AWAITING
