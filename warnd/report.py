"""Coverage report (覆盖率): per warning and per village, who and what was reached, who confirmed.

This closes the 发布-反馈-优化 loop: expected / sent / delivered / acknowledged / failed per
channel (each receiver counted once, at the furthest state any of its deliveries reached), the
people who have not confirmed, the speakers that did not play, how long confirmations took,
and the 叫应 escalations. Built from the store's rows; pure apart from the two reads.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from warnd.directory import Directory
from warnd.phone import mask_phone
from warnd.store import COVERAGE_COUNTS, DeliveryState, Store, count_receiver, from_ts

COUNTS = COVERAGE_COUNTS
# Deliveries read per warning: a county-wide red warning with half-hourly repeats stays far below.
MAX_ROWS = 2_000_000
# The pseudo-village of receivers attached to none of the warning's villages (a superior).
OUTSIDE = "-"


def _zero() -> dict[str, int]:
    """Empty counters for one channel."""
    return dict.fromkeys(COUNTS, 0)


def _count(counter: dict[str, int], states: set[str]) -> None:
    """Count one receiver at the furthest state its deliveries reached."""
    count_receiver(counter, states)


def _best(states: Iterable[str]) -> str:
    """The furthest state among a receiver's deliveries (for showing one word)."""
    return DeliveryState.furthest(states)


def build(
    warning: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    audit: Sequence[Mapping[str, Any]],
    directory: Directory,
    tz: str,
    now: datetime,
) -> dict[str, Any]:
    """The report of one warning from its delivery rows and audit events."""
    zone = ZoneInfo(tz)

    def local(dt: datetime | None) -> str | None:
        """A time in the township's zone."""
        return dt.astimezone(zone).isoformat(timespec="seconds") if dt else None

    in_area = list(warning["villages"])
    receivers: dict[tuple[str, str], dict[str, Any]] = {}
    first_sent: datetime | None = None
    for r in rows:
        if r["kind"] != "warning":
            continue
        rec = receivers.setdefault(
            (r["channel"], r["target"]),
            {
                "states": set(),
                "village": r["village"],
                "person_id": r["person_id"],
                "error": None,
                "ack_required": False,
            },
        )
        rec["states"].add(r["state"])
        rec["ack_required"] |= bool(r["ack_required"])
        rec["error"] = r["last_error"] or rec["error"]
        sent = from_ts(r["sent_at"])
        if sent is not None and (first_sent is None or sent < first_sent):
            first_sent = sent

    def villages_of(channel: str, target: str, rec: dict[str, Any]) -> list[str]:
        """The warning's villages a receiver belongs to (a device one, a person or robot maybe many)."""
        if rec["village"]:
            return [rec["village"]]
        if rec["person_id"] and rec["person_id"] in directory.people:
            own = directory.people[rec["person_id"]].villages
        elif target.startswith("robot:"):
            key = target.removeprefix("robot:")
            own = tuple(c for rb in directory.robots if rb.key_env == key for c in rb.villages)
        else:
            own = ()
        return [c for c in in_area if c in own] or [OUTSIDE]

    channels: dict[str, dict[str, int]] = {}
    per_village: dict[str, dict[str, dict[str, int]]] = {c: {} for c in in_area}
    not_played: list[dict[str, Any]] = []
    for (channel, target), rec in sorted(receivers.items()):
        _count(channels.setdefault(channel, _zero()), rec["states"])
        for code in villages_of(channel, target, rec):
            _count(per_village.setdefault(code, {}).setdefault(channel, _zero()), rec["states"])
        if channel == "loudspeaker" and "acknowledged" not in rec["states"]:
            not_played.append(
                {
                    "device": target,
                    "village": rec["village"],
                    "state": _best(rec["states"]),
                    "last_error": rec["error"],
                }
            )

    # People: who had to confirm, who did and when (an ack of any of the warning's messages counts).
    must: dict[str, set[str]] = {}
    acked: dict[str, datetime] = {}
    for r in rows:
        pid = r["person_id"]
        if not pid:
            continue
        if r["ack_required"] and r["kind"] == "warning":
            must.setdefault(pid, set()).add(r["channel"])
        at = from_ts(r["acked_at"])
        if r["state"] == "acknowledged" and at is not None and (pid not in acked or at < acked[pid]):
            acked[pid] = at
    escalations = escalation_list(audit, tz)
    escalated = {e["person_id"] for e in escalations}
    unconfirmed: list[dict[str, Any]] = []
    for pid in sorted(p for p in must if p not in acked):
        person = directory.people.get(pid)
        unconfirmed.append(
            {
                "person_id": pid,
                "name": person.name if person else None,
                "role": person.role if person else None,
                "phone": mask_phone(person.phone) if person and person.phone else None,
                "villages": [c for c in in_area if person and c in person.villages],
                "channels": sorted(must[pid]),
                "state": _person_state(receivers, pid),
                "escalated": pid in escalated,
            }
        )
    times = sorted(acked[p] for p in must if p in acked)

    def since(dt: datetime | None) -> float | None:
        """Seconds from the first send."""
        return round((dt - first_sent).total_seconds(), 1) if dt and first_sent else None

    first_conf = times[0] if times else None
    last_conf = times[-1] if times else None
    for code in per_village:
        per_village[code] = dict(sorted(per_village[code].items()))
    return {
        "warning_id": warning["id"],
        "state": warning["state"],
        "level": warning["level"],
        "event": warning["event"],
        "headline": warning["headline"],
        "generated_at": local(now),
        "first_sent_at": local(first_sent),
        "channels": dict(sorted(channels.items())),
        "villages": [
            {
                "code": code,
                "name": directory.villages[code].name if code in directory.villages else None,
                "channels": counts,
                "unconfirmed": [u["person_id"] for u in unconfirmed if code in u["villages"]],
                "speakers_not_played": [s["device"] for s in not_played if s["village"] == code],
            }
            for code, counts in per_village.items()
        ],
        "confirmations": {
            "required": len(must),
            "confirmed": len(times),
            "first_at": local(first_conf),
            "last_at": local(last_conf),
            "first_after_s": since(first_conf),
            "last_after_s": since(last_conf),
        },
        "unconfirmed": unconfirmed,
        "speakers_not_played": not_played,
        "escalations": escalations,
    }


def _person_state(receivers: dict[tuple[str, str], dict[str, Any]], pid: str) -> str:
    """The furthest state any of a person's warning deliveries reached."""
    states: set[str] = set()
    for rec in receivers.values():
        if rec["person_id"] == pid:
            states |= rec["states"]
    return _best(states)


def escalation_list(audit: Sequence[Mapping[str, Any]], tz: str) -> list[dict[str, Any]]:
    """The 叫应 escalations recorded in a warning's audit trail, oldest first."""
    zone = ZoneInfo(tz)
    out = []
    for a in audit:
        if a["action"] != "escalate":
            continue
        at = from_ts(a["at"])
        d = a["detail"]
        out.append(
            {
                "at": at.astimezone(zone).isoformat(timespec="seconds") if at else None,
                "person_id": d.get("person_id"),
                "step": d.get("step"),
                "stage": d.get("stage"),
                "channel": d.get("channel"),
                "to": d.get("to"),
                "target": d.get("target"),
                "reason": d.get("reason"),
                "skipped": d.get("skipped"),
            }
        )
    return out


async def escalations(store: Store, warning_id: str, tz: str) -> list[dict[str, Any]]:
    """A warning's escalations, as GET /api/v1/warnings/{id} shows them."""
    return escalation_list(await store.audit_log(warning_id, limit=100_000), tz)


async def report(
    store: Store, warning: dict[str, Any], directory: Directory, tz: str, now: datetime
) -> dict[str, Any]:
    """Read a warning's deliveries and audit trail and build its report."""
    rows = await store.deliveries_for(warning["id"], limit=MAX_ROWS)
    audit = await store.audit_log(warning["id"], limit=100_000)
    return build(warning, rows, audit, directory, tz, now)


CSV_FIELDS = ("section", "village", "village_name", "channel", *COUNTS, "target", "state", "detail")


def to_csv(rep: dict[str, Any]) -> str:
    """The report as one CSV table: coverage rows (per village and in total), then the laggards."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\r\n")
    w.writeheader()
    for channel, counts in rep["channels"].items():
        w.writerow({"section": "total", "channel": channel, **counts})
    for v in rep["villages"]:
        for channel, counts in v["channels"].items():
            w.writerow(
                {
                    "section": "village",
                    "village": v["code"],
                    "village_name": v["name"],
                    "channel": channel,
                    **counts,
                }
            )
    for u in rep["unconfirmed"]:
        w.writerow(
            {
                "section": "unconfirmed",
                "village": " ".join(u["villages"]),
                "channel": " ".join(u["channels"]),
                "target": u["person_id"],
                "state": u["state"],
                "detail": f"{u['name'] or ''} {u['role'] or ''}".strip(),
            }
        )
    for s in rep["speakers_not_played"]:
        w.writerow(
            {
                "section": "not_played",
                "village": s["village"],
                "channel": "loudspeaker",
                "target": s["device"],
                "state": s["state"],
                "detail": s["last_error"] or "",
            }
        )
    for e in rep["escalations"]:
        w.writerow(
            {
                "section": "escalation",
                "channel": e["channel"],
                "target": e["target"] or "",
                "state": e["skipped"] or "sent",
                "detail": f"{e['at']} {e['person_id']} → {e['to']}: {e['reason']}",
            }
        )
    return buf.getvalue()
