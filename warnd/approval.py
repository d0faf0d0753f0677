"""Sign-off (审核签发): a draft waits, an approver releases or rejects it, approvers are paged.

A warning that needs sign-off (`[approval]`, ApprovalSettings.needed) is stored with state
`awaiting_approval` and no step scheduled: its only job is a reminder, due `remind_after_min`
later, that pages the approvers on the normal channels. Approving plans its schedule from that
moment; rejecting ends it with nothing sent. An update or a cancel of a warning in force that
needs sign-off waits in `pending_changes` until it is approved (then applied as if just made)
or rejected. The drafter may not sign off their own draft unless `self_approval` is set.

This module is the pure part (the reminder job, who is paged, on which channels); approving and
rejecting go through the intake, in warnd.signoff.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import structlog

from warnd.config import ApprovalSettings
from warnd.directory import Directory, Person
from warnd.model import State
from warnd.planner import msg_id
from warnd.store import Job, JobKind, NewDelivery, NewJob, new_job

log = structlog.get_logger("warnd.approval")

AWAITING = State.AWAITING_APPROVAL.value
REMINDER_KIND = JobKind.APPROVAL_REMINDER.value
# Pages after remind_after_min, then twice more as long apart: a leader asleep through the first
# call gets two more; past that the duty officer phones (the page shows who has been paged).
REMINDERS_MAX = 3
PAGING_CHANNELS = ("sms", "voice", "wechat")


def reminder_job(warning_id: str, n: int, due: datetime, now: datetime) -> NewJob:
    """The job that pages the approvers for the n-th time about a waiting draft."""
    return new_job(
        JobKind.APPROVAL_REMINDER,
        f"{warning_id}:approval-reminder-{n}",
        warning_id,
        due=due,
        now=now,
        payload={"n": n},
    )


def approvers(approval: ApprovalSettings, directory: Directory) -> list[Person]:
    """The people paged about a waiting draft: those configured, else every official (not test ones)."""
    if approval.remind_people:
        return [directory.people[p] for p in approval.remind_people if p in directory.people]
    return [p for p in directory.people.values() if p.role == "official" and not p.test]


def reminder_deliveries(
    warning: dict[str, Any],
    job: Job,
    approval: ApprovalSettings,
    directory: Directory,
    channels: Iterable[str],
    now: datetime,
) -> list[NewDelivery]:
    """One page per approver and channel that can reach them (pure)."""
    have = set(channels)
    n = job.payload.get("n", 1)
    out = []
    for person in approvers(approval, directory):
        for channel in approval.remind_channels:
            if channel not in have or channel not in PAGING_CHANNELS:
                continue
            address = person.phone if channel in ("sms", "voice") else person.wecom_user
            if not address:
                continue
            out.append(
                NewDelivery(
                    msg_id(job.key, channel, person.id),
                    warning["id"],
                    f"approval-reminder-{n}",
                    # Not "warning": a page about the draft is not the warning reaching anyone
                    # (coverage, the all-clear and updates count only those).
                    "approval",
                    channel,
                    person.id,
                    now,
                    person_id=person.id,
                    address=address,
                    context={"message": "approval_reminder", "sent_at": warning["created_at"]},
                )
            )
    return out


def next_reminder(job: Job, approval: ApprovalSettings, now: datetime) -> list[NewJob]:
    """The job after this reminder, if any are left."""
    n = job.payload.get("n", 1)
    if n >= REMINDERS_MAX or job.warning_id is None:
        return []
    return [reminder_job(job.warning_id, n + 1, now + timedelta(minutes=approval.remind_after_min), now)]
