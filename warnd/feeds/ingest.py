"""CAP in, warnings out: one path for every source (push, poll, MQTT, the operator API).

An Alert becomes a warning through `Intake.accept`; an Update or Cancel finds the warning its
references name — by (sender, identifier), whichever source brought the original — and goes
through `Intake.update` / `Intake.cancel`. Every message is also recorded under its own
(sender, identifier) in `feed_documents`, so a re-delivery through any source is a duplicate.

What is stored but not acted on, and flagged for the operator (GET /api/v1/feeds):
- an Update or Cancel whose references name no warning warnd holds (`unknown_reference`):
  guessing which warning it meant could cancel the wrong one;
- status System or Draft, msgType Ack or Error (`recorded`): never sent to anyone;
- an Alert whose area reaches no village (`no_village`): stored as a warning with no targets,
  so an operator can give it an area by updating it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import ValidationError

from warnd.cap import (
    DEFAULT_GEOCODE_NAMES,
    CapAlert,
    CapError,
    document_encoding,
    parse_cap_many,
    to_warning_fields,
)
from warnd.intake import Actor
from warnd.model import IN_FORCE, Area, Level, Status, UpdateIn, WarningIn
from warnd.store import WarningRow, ts

if TYPE_CHECKING:
    from warnd.clock import Clock
    from warnd.config import FeedSettings
    from warnd.feeds.records import FeedRecords
    from warnd.intake import Intake
    from warnd.store import Store

log = structlog.get_logger("warnd.feeds")

# Where each warning field comes from in a CAP document, for errors an upstream can act on.
_CAP_PATH = {
    "event": "/alert/info/event",
    "level": "/alert/info/severity",
    "headline": "/alert/info/headline",
    "description": "/alert/info/description",
    "instruction": "/alert/info/instruction",
    "area": "/alert/info/area",
    "onset": "/alert/info/onset",
    "expires": "/alert/info/expires",
    "status": "/alert/status",
    "sender": "/alert/sender",
    "identifier": "/alert/identifier",
}


@dataclass(frozen=True)
class IngestResult:
    """What became of one CAP message.

    Args:
        sender: its sender.
        identifier: its identifier.
        msg_type: alert / update / cancel / ack / error.
        outcome: accepted, updated, cancelled, recorded, unmatched, stale or duplicate.
        warning_id: the warning it created or acted on, if any.
        created: False when the message (or its warning) was already held.
        flag: why an operator should look, if they should.
        state: the warning's state after it (`awaiting_approval` when held for sign-off).
    """

    sender: str
    identifier: str
    msg_type: str
    outcome: str
    warning_id: str | None
    created: bool
    flag: str | None = None
    state: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The API's view of it."""
        return {
            "id": self.warning_id,
            "created": self.created,
            # As the JSON create answers: scripts learn that an operator's CAP waits for sign-off.
            "state": self.state,
            "outcome": self.outcome,
            "flag": self.flag,
            "sender": self.sender,
            "identifier": self.identifier,
            "msg_type": self.msg_type,
        }


def document_text(data: bytes) -> str:
    """The document as text for the record, in the encoding it declares (UTF-8 by default)."""
    try:
        return data.decode(document_encoding(data))
    except (LookupError, UnicodeDecodeError):
        return data.decode("utf-8", errors="replace")


class CapIngest:
    """Turns CAP messages into warning actions, one message at a time.

    Args:
        intake: accepts, updates and cancels warnings (and matches areas).
        store: finds the warnings earlier messages made.
        clock: the daemon's time.
        records: the feeds' rows.
    """

    def __init__(self, intake: Intake, store: Store, clock: Clock, records: FeedRecords) -> None:
        """Keep the collaborators; one lock orders messages arriving through several sources."""
        self.intake, self.store, self.clock = intake, store, clock
        self.records = records
        # An Update arriving by MQTT while its Alert is still being accepted from a push must
        # wait for it: messages are taken one at a time (they are few; each is a few ms).
        self._lock = asyncio.Lock()

    async def ingest_bytes(
        self,
        data: bytes,
        *,
        feed: str,
        source: str,
        actor: Actor,
        settings: FeedSettings | None = None,
    ) -> list[IngestResult]:
        """Parse a CAP document (or an <alerts> wrapper) and act on each alert; CapError if refused."""
        geocode_names = tuple(settings.geocode_names) if settings and settings.geocode_names else None
        alerts = parse_cap_many(
            data,
            geocode_names=geocode_names or DEFAULT_GEOCODE_NAMES,
            max_bytes=settings.max_bytes if settings else 2 * 1024 * 1024,
            validate=bool(settings and settings.validate_xsd),
        )
        # A wrapper's alerts are stored without the whole wrapper each; a single one keeps it.
        text = document_text(data) if len(alerts) == 1 else None
        results = []
        for alert in alerts:
            results.append(
                await self.ingest_alert(
                    alert, feed=feed, source=source, actor=actor, document=text, settings=settings
                )
            )
        return results

    async def ingest_alert(
        self,
        alert: CapAlert,
        *,
        feed: str,
        source: str,
        actor: Actor,
        document: str | None = None,
        settings: FeedSettings | None = None,
    ) -> IngestResult:
        """Act on one CAP alert; raise CapError (or InputError) when it cannot be taken."""
        async with self._lock:
            return await self._ingest(alert, feed, source, actor, document, settings)

    async def _ingest(
        self,
        alert: CapAlert,
        feed: str,
        source: str,
        actor: Actor,
        document: str | None,
        settings: FeedSettings | None,
    ) -> IngestResult:
        """The body of ingest_alert, under the lock."""
        msg_type = alert.msg_type.lower()
        seen = await self.records.document(alert.sender, alert.identifier)
        if seen is not None:
            log.info("cap.duplicate", sender=alert.sender, identifier=alert.identifier, feed=feed)
            return IngestResult(
                alert.sender,
                alert.identifier,
                msg_type,
                "duplicate",
                seen["warning_id"],
                False,
                state=await self._state(seen["warning_id"]),
            )
        prefer = tuple(settings.prefer_languages) if settings else ("zh-CN", "zh")
        names = (
            tuple(settings.geocode_names) if settings and settings.geocode_names else DEFAULT_GEOCODE_NAMES
        )
        fields = to_warning_fields(alert, prefer_languages=prefer, geocode_names=names)
        row = {
            "sender": alert.sender,
            "identifier": alert.identifier,
            "feed": feed,
            "source": source,
            "msg_type": msg_type,
            "status": fields["status"],
            "sent": fields["sent"],
            "refs": fields["references"],
            "received_at": ts(self.clock.now()),
            "document": document,
        }
        if fields["status"] not in {s.value for s in Status} or msg_type in ("ack", "error"):
            # System and Draft messages, Acks and Errors are kept for the record, never sent.
            return await self._record(row, "recorded", None, None, created=True)
        if msg_type == "alert":
            return await self._alert(fields, row, actor, source, document)
        return await self._update_or_cancel(alert, fields, row, actor)

    async def _record(
        self, row: dict[str, Any], outcome: str, warning_id: str | None, flag: str | None, *, created: bool
    ) -> IngestResult:
        """Store the message with its outcome; return what the caller answers."""
        await self.records.add_document({**row, "outcome": outcome, "warning_id": warning_id, "flag": flag})
        log.info(
            "cap.ingested",
            sender=row["sender"],
            identifier=row["identifier"],
            msg_type=row["msg_type"],
            outcome=outcome,
            warning_id=warning_id,
            flag=flag,
            feed=row["feed"],
        )
        return IngestResult(
            row["sender"],
            row["identifier"],
            row["msg_type"],
            outcome,
            warning_id,
            created,
            flag,
            await self._state(warning_id),
        )

    async def _state(self, warning_id: str | None) -> str | None:
        """The state of the warning a message created or acted on, None when there is none."""
        if warning_id is None:
            return None
        w = await self.store.get_warning(warning_id)
        return w["state"] if w is not None else None

    async def _alert(
        self, fields: dict[str, Any], row: dict[str, Any], actor: Actor, source: str, document: str | None
    ) -> IngestResult:
        """A new warning (or the one already held under the same sender and identifier)."""
        w = warning_in(fields)
        result = await self.intake.accept(
            w,
            actor=actor,
            source=source,
            msg_type="alert",
            document=document,
            require_villages=False,
        )
        stored = await self.store.get_warning(result.id)
        flag = None
        if stored is not None and not stored["villages"]:
            flag = "no_village"
            await self.records.audit(
                self.clock.now(),
                actor.name,
                "flag",
                result.id,
                {"flag": flag, "message": "the area reaches no village in the directory"},
            )
            log.warning("cap.no_village", warning_id=result.id, sender=row["sender"], feed=row["feed"])
        outcome = "accepted" if result.created else "duplicate"
        return await self._record(row, outcome, result.id, flag, created=result.created)

    async def _target(self, alert: CapAlert) -> WarningRow | None:
        """The warning the references name: newest reference first, directly or via an earlier Update."""
        for ref in reversed(alert.references):
            w = await self.store.find_warning(ref.sender, ref.identifier)
            if w is not None:
                return w
            doc = await self.records.document(ref.sender, ref.identifier)
            if doc is not None and doc["warning_id"]:
                return await self.store.get_warning(doc["warning_id"])
        return None

    async def _update_or_cancel(
        self, alert: CapAlert, fields: dict[str, Any], row: dict[str, Any], actor: Actor
    ) -> IngestResult:
        """Apply an Update or Cancel to the warning it references, or store it as unmatched."""
        msg_type = row["msg_type"]
        target = await self._target(alert)
        now = self.clock.now()
        if target is None:
            refs = [f"{r.sender},{r.identifier}" for r in alert.references]
            detail = {"msg_type": msg_type, "sender": alert.sender, "identifier": alert.identifier}
            await self.records.audit(now, actor.name, "unmatched", None, {**detail, "references": refs})
            log.warning("cap.unmatched", sender=alert.sender, identifier=alert.identifier, references=refs)
            return await self._record(row, "unmatched", None, "unknown_reference", created=True)
        wid = target["id"]
        if target["state"] not in IN_FORCE:
            # A late Update for a warning already cancelled or expired changes nothing.
            return await self._record(row, "stale", wid, f"warning_{target['state']}", created=True)
        message = {"sender": alert.sender, "identifier": alert.identifier, "sent": fields["sent"]}
        if msg_type == "cancel":
            # The reason reaches villagers in the all-clear: the issuer's own words when it gave
            # any (12379 cancels say who lifted what, when), never a CAP identifier.
            reason = str(fields.get("description") or "").strip() or "发布单位已解除该预警"
            await self.intake.cancel(wid, actor=actor, reason=reason, message=message)
            return await self._record(row, "cancelled", wid, None, created=True)
        update, flag = self.update_in(fields, target)
        await self.intake.update(wid, update, actor=actor, message=message)
        return await self._record(row, "updated", wid, flag, created=True)

    def update_in(self, fields: dict[str, Any], target: Mapping[str, Any]) -> tuple[UpdateIn, str | None]:
        """The content of a CAP Update as an UpdateIn; an area reaching no village is left out."""
        w = warning_in(fields)
        flag = None
        area: Area | None = w.area if _has_area(w.area) else None
        if area is not None and not self.intake.match(area, required=False):
            # Moving a warning to an area that reaches nobody would silence it: keep the old one.
            area, flag = None, "update_area_no_village"
        try:
            return (
                UpdateIn(
                    level=w.level,
                    headline=w.headline,
                    description=w.description,
                    instruction=w.instruction,
                    area=area,
                    onset=w.onset,
                    expires=w.expires,
                ),
                flag,
            )
        except ValidationError as exc:
            raise _cap_error(exc) from None


def _has_area(area: Area) -> bool:
    """Whether an area says anything."""
    return bool(area.codes or area.polygons or area.circles)


def warning_in(fields: dict[str, Any]) -> WarningIn:
    """CAP fields (warnd.cap.to_warning_fields) as a WarningIn; CapError 422 naming the CAP path."""
    area_fields = fields["area"]
    # areaDesc only, or geocodes warnd does not read: the warning is stored with no targets and
    # flagged. Area refuses to be empty (an operator must say where), so a placeholder stands in
    # during validation and the empty area is put in unvalidated.
    empty = not (area_fields["codes"] or area_fields["polygons"] or area_fields["circles"])
    try:
        w = WarningIn(
            event=fields["event"] or "",
            level=Level(fields["level"]),
            # CAP makes headline optional (Météo Togo sends none): the event names the warning.
            headline=fields["headline"] or fields["event"] or "",
            description=fields["description"] or "",
            instruction=fields["instruction"] or "",
            area=Area(codes=["000000"]) if empty else Area.model_validate(area_fields),
            onset=fields["onset"],
            expires=fields["expires"],
            status=Status(fields["status"]),
            sender=fields["sender"],
            identifier=fields["identifier"],
        )
    except ValidationError as exc:
        raise _cap_error(exc) from None
    if empty:
        w = w.model_copy(update={"area": Area.model_construct(codes=[], polygons=[], circles=[])})
    return w


def _cap_error(exc: ValidationError) -> CapError:
    """The first validation problem, at the CAP element it comes from."""
    first = exc.errors()[0]
    loc = [str(p) for p in first["loc"]]
    path = _CAP_PATH.get(loc[0], "/alert/info") if loc else "/alert/info"
    if loc and loc[0] == "area" and len(loc) > 1:
        path += "/" + ".".join(loc[1:])
    return CapError(first["msg"].removeprefix("Value error, "), path, 422)
