"""Plan: a warning becomes timed steps, and a step becomes delivery rows. Pure functions of `now`."""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from warnd.clock import parse_iso
from warnd.config import LevelPolicy, PolicySettings
from warnd.directory import Directory, Person, Village
from warnd.model import DEVICE_CHANNELS, Level
from warnd.store import JobKind, NewDelivery, NewJob, new_job

REMINDER = {"message": "reminder"}


@dataclass(frozen=True)
class Step:
    """A send of a warning at a time, to some channels and roles."""

    name: str
    at: datetime
    channels: tuple[str, ...]
    roles: tuple[str, ...]
    # The policy steps this step stands in for: past ones an immediate "issue" sends now, or
    # night-time plays merged into this one (see hold_at_night).
    covers: tuple[str, ...] = ()
    # Why this part of a step waits past its policy time ("quiet hours"); "" when it does not.
    held: str = ""


def msg_id(job_key: str, channel: str, group: str) -> str:
    """A stable message id: the same step to the same receiver always gets the same id."""
    return hashlib.sha256(f"{job_key}|{channel}|{group}".encode()).hexdigest()[:24]


def level_policy(warning: dict[str, Any], policy: PolicySettings) -> LevelPolicy:
    """The level policy that applies to a stored warning."""
    return policy.for_warning(Level(warning["level"]), warning["event"])


def step_name(hours_before: float) -> str:
    """The name of a policy step: T-48h … T-1h, and onset."""
    return f"T-{hours_before:g}h" if hours_before else "onset"


def steps_for(
    warning: dict[str, Any], policy: PolicySettings, now: datetime, fired: Collection[str] = ()
) -> list[Step]:
    """The pre-warning schedule: steps relative to onset; those already past collapse into one now.

    `fired` names what an earlier version of the warning already sent, as "step/channel" (see
    fired_steps): that is not sent again, and a past step that never fired still goes out now.
    Night-time loudspeaker plays are then held as hold_at_night says.
    """
    lp = level_policy(warning, policy)
    onset = parse_iso(warning.get("onset"))
    all_roles = tuple(sorted({r for roles in lp.roles.values() for r in roles}))
    if onset is None:
        channels = tuple(c for c in lp.channels if f"issue/{c}" not in fired)
        return hold_at_night(warning, policy, [Step("issue", now, channels, all_roles)] if channels else [])
    past_channels: set[str] = set()
    past_roles: set[str] = set()
    covers: list[str] = []
    future: list[Step] = []
    for sp in sorted(policy.steps, key=lambda s: -s.hours_before):
        at = onset - timedelta(hours=sp.hours_before)
        name = step_name(sp.hours_before)
        channels = tuple(c for c in lp.channels if c in sp.channels and f"{name}/{c}" not in fired)
        if not channels:
            continue
        if at <= now:
            past_channels.update(channels)
            past_roles.update(sp.roles)
            covers.append(name)
        else:
            future.append(Step(name, at, channels, tuple(sp.roles)))
    steps = []
    if past_channels or not (future or fired):
        # Whatever the schedule would already have said goes out now, once.
        chans = tuple(c for c in lp.channels if c in past_channels) or tuple(lp.channels)
        steps.append(Step("issue", now, chans, tuple(sorted(past_roles)) or all_roles, tuple(covers)))
    return hold_at_night(warning, policy, steps + future)


def hold_at_night(warning: dict[str, Any], policy: PolicySettings, steps: list[Step]) -> list[Step]:
    """Move the loudspeaker part of steps due in quiet hours to the morning, where the level asks it.

    The rule, with the duty officer in mind:
    - A level that honours quiet hours (`quiet_hours`, never red) plays a step due at night on
      the loudspeakers at the end of quiet hours, unless the onset comes first (the morning at or
      after the onset): a play held past the hazard is no warning. This goes for the immediate
      "issue" step too: an orange warning accepted at 02:00 for a rainstorm at 06:00 sounds at
      02:00; one for a rainstorm at 13:00 sounds at 06:00. Without an onset the hazard is now and
      the issue sounds at once.
    - Channels the level sends only in daytime (`daytime_only`, blue loudspeakers) wait for the
      morning whatever the onset.
    - Only those channels wait: SMS, calls and WeCom to officials and LED boards go at the step's
      time, so the people on duty know at once.
    - A held play that lands at or after the next play of the same channel is merged into that
      play (which then covers it): one play, not two minutes apart.
    """
    lp = level_policy(warning, policy)
    onset = parse_iso(warning.get("onset"))
    quiet = holds_repeats(warning, policy)
    split: list[Step] = []
    for s in steps:
        morning = end_of_quiet(s.at, policy)
        before_onset = onset is not None and morning < onset
        held = [
            c for c in s.channels if c in lp.daytime_only or (c == "loudspeaker" and quiet and before_onset)
        ]
        if morning == s.at or not held:
            split.append(s)
            continue
        rest = tuple(c for c in s.channels if c not in held)
        if rest:
            split.append(replace(s, channels=rest))
        split.append(replace(s, at=morning, channels=tuple(held), held="quiet hours"))
    # From the last step back, so a play merged into a later one is merged into where that went.
    kept: list[Step] = []
    next_play: dict[str, int] = {}  # channel → index in `kept` of its next send
    for s in reversed(split):
        if s.held:
            into = {c: next_play[c] for c in s.channels if c in next_play and kept[next_play[c]].at <= s.at}
            for k in set(into.values()):
                kept[k] = replace(kept[k], covers=tuple(dict.fromkeys((*kept[k].covers, s.name, *s.covers))))
            s = replace(s, channels=tuple(c for c in s.channels if c not in into))
            if not s.channels:
                continue
        kept.append(s)
        next_play.update(dict.fromkeys(s.channels, len(kept) - 1))
    return sorted(reversed(kept), key=lambda s: s.at)


def fired_steps(jobs: list[dict[str, Any]]) -> set[str]:
    """What a warning's done step jobs sent, as "step/channel" (a step counts for those it covers).

    Per channel, because a step's loudspeaker part may be held to the morning after its other
    channels went: an update in between must still play it.
    """
    out: set[str] = set()
    for j in jobs:
        if j["kind"] == "step" and j.get("state") == "done":
            p = j["payload"]
            for name in (p["step"], *p.get("covers", ())):
                out.update(f"{name}/{c}" for c in p["channels"])
    return out


def receiver_classes(channels: Collection[str], roles: Collection[str]) -> list[str]:
    """Who a step reaches, as classes: "loudspeaker", "led" and "sms:official", "wechat:grid_worker" …"""
    out = []
    for c in channels:
        out.extend([c] if c in DEVICE_CHANNELS else [f"{c}:{r}" for r in roles])
    return out


def reached_classes(jobs: list[dict[str, Any]]) -> set[str]:
    """The receiver classes a warning's done steps already reached."""
    out: set[str] = set()
    for j in jobs:
        if j["kind"] == "step" and j.get("state") == "done":
            p = j["payload"]
            out.update(receiver_classes(p["channels"], p.get("roles") or ()))
    return out


def step_jobs(
    warning: dict[str, Any],
    steps: list[Step],
    now: datetime,
    *,
    kind: str = "warning",
    reached: Collection[str] = (),
    first: dict[str, Any] | None = None,
) -> list[NewJob]:
    """Job rows for steps (and the warning's expiry).

    Each step's payload says which receiver classes hear the warning for the first time there
    (`new`: they get the issue message, everyone else a reminder). `reached` are classes an
    earlier version already told; `first` replaces the first step's message (an upgrade: everyone
    it reaches is told of the new level, {"message": "upgrade", "old_level": …}).
    """
    version = warning.get("version", 1)
    seen = set(reached)
    jobs: list[NewJob] = []
    for s in steps:
        classes = receiver_classes(s.channels, s.roles)
        message: dict[str, Any] = {"message": "issue"}
        if first is not None and s.name == steps[0].name:
            # The first step and its part held to the morning.
            message, new = dict(first), classes
        else:
            new = [c for c in classes if c not in seen]
        seen.update(classes)
        jobs.append(
            new_job(
                JobKind.STEP,
                # The held part of a step is a job of its own, after the rest of the step.
                f"{warning['id']}:v{version}:{s.name}" + (":held" if s.held else ""),
                warning["id"],
                due=s.at,
                now=now,
                payload={
                    "step": s.name,
                    "channels": list(s.channels),
                    "roles": list(s.roles),
                    "kind": kind,
                    "version": version,
                    "covers": list(s.covers),
                    "held": s.held,
                    "context": message,
                    "new": new,
                },
            )
        )
    expires = parse_iso(warning.get("expires"))
    if expires is not None:
        jobs.append(
            new_job(
                JobKind.EXPIRE,
                f"{warning['id']}:v{version}:expire",
                warning["id"],
                due=max(expires, now),
                now=now,
                payload={"version": version},
            )
        )
    return jobs


def compact(when: datetime) -> str:
    """A due time as a short key suffix: 20260701T083000."""
    return when.astimezone(UTC).strftime("%Y%m%dT%H%M%S")


def repeat_job(warning: dict[str, Any], due: datetime, now: datetime, n: int, *, first: bool) -> NewJob:
    """A loudspeaker re-broadcast job; the first of a version has a fixed key so steps start one chain."""
    base = f"{warning['id']}:v{warning['version']}:repeat"
    return new_job(
        JobKind.REPEAT,
        base if first else f"{base}@{compact(due)}",
        warning["id"],
        due=due,
        now=now,
        payload={"n": n, "version": warning["version"]},
    )


def holds_repeats(warning: dict[str, Any], policy: PolicySettings) -> bool:
    """Whether quiet hours hold this warning's repeats and night plays: if its level allows, never red."""
    return level_policy(warning, policy).quiet_hours and warning["level"] != Level.RED.value


def schedule_view(jobs: Sequence[Mapping[str, Any]], tz: str = "Asia/Shanghai") -> list[dict[str, Any]]:
    """Jobs as the API shows a schedule: [{"at", "step", "channels", "state", "held"}].

    The preview and `GET /api/v1/warnings/{id}` both show this, so what they show is the
    time the scheduler keeps; `held` says why a step waits past its policy time (or is null).
    """
    zone = ZoneInfo(tz)
    out = []
    for j in jobs:
        if j["kind"] != "step":
            continue
        at = datetime.strptime(j["due_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=ZoneInfo("UTC"))
        out.append(
            {
                "at": at.astimezone(zone).isoformat(timespec="seconds"),
                "step": j["payload"]["step"],
                "channels": j["payload"]["channels"],
                "state": j.get("state", "pending"),
                "held": j["payload"].get("held") or None,
            }
        )
    return out


def in_quiet_hours(when: datetime, policy: PolicySettings) -> bool:
    """Whether local time falls within quiet hours (which may span midnight)."""
    local = when.astimezone(ZoneInfo(policy.timezone)).time()
    start, end = policy.quiet_start, policy.quiet_end
    if start <= end:
        return start <= local < end
    return local >= start or local < end


def end_of_quiet(when: datetime, policy: PolicySettings) -> datetime:
    """The first moment at or after `when` outside quiet hours."""
    if not in_quiet_hours(when, policy):
        return when
    zone = ZoneInfo(policy.timezone)
    local = when.astimezone(zone)
    end = local.replace(hour=policy.quiet_end.hour, minute=policy.quiet_end.minute, second=0, microsecond=0)
    if end <= local:
        end += timedelta(days=1)
    return end


class Receiver(NamedTuple):
    """One receiver of a step on one channel, before it becomes a delivery row."""

    channel: str
    target: str
    # What the msg_id is made from: a village for its loudspeakers (one command per village).
    group: str
    village: str | None
    person: Person | None
    address: str | None
    # Which receiver class's message context applies (see step_deliveries).
    context_class: str


def step_villages(warning: Mapping[str, Any], directory: Directory) -> list[Village]:
    """The villages a warning's steps reach: its matched villages, only test ones for a drill."""
    villages = [directory.villages[c] for c in warning["villages"] if c in directory.villages]
    if warning.get("status", "actual") != "actual":
        # Exercises and tests never reach the public: only test villages and test people.
        villages = [v for v in villages if v.test]
    return villages


def step_receivers(
    warning: dict[str, Any], payload: dict[str, Any], directory: Directory, policy: PolicySettings
) -> Iterator[Receiver]:
    """Who one step reaches: devices of the matched villages, people by role, robots."""
    lp = level_policy(warning, policy)
    drill = warning.get("status", "actual") != "actual"
    roles = set(payload.get("roles") or ())
    villages = step_villages(warning, directory)
    codes = [v.code for v in villages]
    for channel in payload["channels"]:
        if channel not in lp.channels:
            continue
        if channel == "loudspeaker":
            for v in villages:
                for spk in v.speakers:
                    yield Receiver(channel, spk, v.code, v.code, None, None, channel)
        elif channel == "led":
            for v in villages:
                for b in v.led_boards:
                    yield Receiver(channel, b, b, v.code, None, None, channel)
        else:
            wanted = set(lp.roles.get(channel, ()))
            if roles:
                wanted &= roles
            people = directory.people_in(codes, wanted) if wanted else []
            for p in people:
                if drill and not p.test:
                    continue
                address = p.phone if channel in ("sms", "voice") else p.wecom_user
                if not address:
                    continue
                yield Receiver(channel, p.id, p.id, None, p, address, f"{channel}:{p.role}")
            if channel == "wechat":
                for r in directory.robots_for(codes):
                    if drill and not r.test:
                        continue
                    # A work group hears every step: tell it anew only where officials are.
                    yield Receiver(
                        channel, f"robot:{r.key_env}", r.key_env, None, None, None, f"{channel}:official"
                    )


def step_deliveries(
    warning: dict[str, Any],
    job_key: str,
    payload: dict[str, Any],
    directory: Directory,
    policy: PolicySettings,
    now: datetime,
) -> list[NewDelivery]:
    """Delivery rows for one step: one per receiver (`step_receivers`)."""
    lp = level_policy(warning, policy)
    kind = payload.get("kind", "warning")
    step = payload["step"]
    wid = warning["id"]
    # Receivers told for the first time get the step's message (issue, upgrade); the rest a
    # reminder. A payload from before messages had kinds tells everyone afresh.
    first_ctx = payload.get("context") or {"message": "issue"}
    new = payload.get("new")

    def context(cls: str) -> dict[str, Any]:
        """The message context for a receiver class."""
        return first_ctx if new is None or cls in new else REMINDER

    def due(channel: str) -> datetime:
        """Hold daytime-only channels (blue loudspeakers) until quiet hours end."""
        if channel in lp.daytime_only and kind == "warning":
            return end_of_quiet(now, policy)
        return now

    return [
        NewDelivery(
            msg_id(job_key, r.channel, r.group),
            wid,
            step,
            kind,
            r.channel,
            r.target,
            due(r.channel),
            village=r.village,
            person_id=r.person.id if r.person is not None else None,
            address=r.address,
            ack_required=r.person is not None and kind == "warning" and r.person.role in lp.ack_roles,
            context=context(r.context_class),
        )
        for r in step_receivers(warning, payload, directory, policy)
    ]


def step_counts(
    warning: dict[str, Any],
    payload: dict[str, Any],
    directory: Directory,
    policy: PolicySettings,
    *,
    reached: dict[str, dict[str, Person]] | None = None,
) -> tuple[dict[str, int], int]:
    """What `step_deliveries` would make, counted: (receivers per channel, how many must confirm).

    A preview of a county-wide red reaches 60,000 receivers over its steps: counting them
    builds no rows and hashes no msg_ids. `reached`, when given, also collects the people each
    channel reaches by address (`{channel: {address: person}}`), in the same pass.
    """
    lp = level_policy(warning, policy)
    confirm = payload.get("kind", "warning") == "warning"
    drill = warning.get("status", "actual") != "actual"
    roles = set(payload.get("roles") or ())
    villages = step_villages(warning, directory)
    codes = [v.code for v in villages]
    per_channel: dict[str, int] = {}
    ack_required = 0
    # step_receivers' choices, counted in place: no Receiver per person (a county's preview
    # would make 300,000 of them). tests/test_county_scale.py holds the two to the same answer.
    for channel in payload["channels"]:
        if channel not in lp.channels:
            continue
        n = 0
        if channel == "loudspeaker":
            n = sum(len(v.speakers) for v in villages)
        elif channel == "led":
            n = sum(len(v.led_boards) for v in villages)
        else:
            wanted = set(lp.roles.get(channel, ()))
            if roles:
                wanted &= roles
            by_address = reached.setdefault(channel, {}) if reached is not None else None
            numbered = channel in ("sms", "voice")
            for p in directory.people_in(codes, wanted) if wanted else ():
                address = p.phone if numbered else p.wecom_user
                if not address or (drill and not p.test):
                    continue
                n += 1
                if confirm and p.role in lp.ack_roles:
                    ack_required += 1
                if by_address is not None:
                    by_address[address] = p
            if channel == "wechat":
                n += sum(1 for r in directory.robots_for(codes) if not drill or r.test)
        if n:
            per_channel[channel] = per_channel.get(channel, 0) + n
    return per_channel, ack_required
