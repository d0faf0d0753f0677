"""Deliveries and their acknowledgements: the outbox, claimed, recorded, confirmed."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, cast

from warnd.store import sqlite
from warnd.store.core import Connection, Row, StoreCore, every, from_ts, one, ts
from warnd.store.jobs import insert_jobs
from warnd.store.rows import (
    COVERAGE_COUNTS,
    REACHED,
    AckedDelivery,
    AckIn,
    Delivery,
    DeliveryRow,
    DeliveryState,
    NewDelivery,
    NewJob,
    Outcome,
    WarningRow,
)
from warnd.store.warnings import decode_warning

# A delivery's DUE (warnd.store.jobs): a retry written to wait keeps waiting by the wall clock.
DUE_DELIVERY = "(due_at <= ? OR (updated_at > ? AND due_at <= updated_at))"

# json.dumps with a non-default argument builds a new encoder per call; acks come by the thousand.
_encode_json = json.JSONEncoder(ensure_ascii=False).encode



def ack_lookup_sql(d: Any) -> str:
    """The deliveries named by a JSON array of [msg_id, target] pairs, in dialect `d`.

    Through their unique index: the pairs are the outer loop (joined in order: the planner must
    not reorder). `(msg_id, target) IN (VALUES …)` scanned the whole outbox for every batch of acks.
    """
    return (
        f"SELECT d.* FROM {d.json_table('v')} {d.JOIN_IN_ORDER} deliveries AS d"
        f" ON d.msg_id = {d.json_item('v', 0)} AND d.target = {d.json_item('v', 1)}"
    )


ACK_LOOKUP_SQL = ack_lookup_sql(sqlite)

# A warning's receivers by channel and coverage class (schema 13's counters).
COVERAGE_SQL = "SELECT channel, class, n FROM coverage_counts WHERE warning_id = ? AND n > 0"

# What a receiver of each coverage class (coverage_counts.class) counts as besides `expected`.
_COUNTED_AS: dict[str, tuple[str, ...]] = {
    "acknowledged": ("sent", "delivered", "acknowledged"),
    "delivered": ("sent", "delivered"),
    "sent": ("sent",),
    "failed": ("failed",),
    "open": (),
}

# Delivery states that mean the delivery actually went out to the person.
_SENT_STATES = ("sent", "delivered", "acknowledged", "failed")


def insert_deliveries(con: Connection, deliveries: Sequence[NewDelivery], now: datetime) -> None:
    """Insert delivery rows in the caller's transaction; a known (msg_id, target) is kept."""
    if not deliveries:
        return
    stamp = ts(now)
    due = {t: ts(t) for t in {d.due_at for d in deliveries}}  # a step has one or two
    rows = [
        [
            d.msg_id,
            d.warning_id,
            d.step,
            d.kind,
            d.channel,
            d.target,
            d.village,
            d.person_id,
            d.address,
            int(d.ack_required),
            due[d.due_at],
            json.dumps(d.context, ensure_ascii=False) if d.context else None,
        ]
        for d in deliveries
    ]
    # One statement over a JSON array: a county-wide step is 10,000 rows, not 10,000 steps.
    d = con.dialect
    con.execute(
        d.insert_ignore(
            "deliveries",
            "(msg_id, warning_id, step, kind, channel, target, village, person_id, address,"
            " ack_required, due_at, context, created_at, updated_at)"
            f" SELECT *, ?, ? FROM ({d.json_rows(12, ints=(9,))}) AS r",
        ),
        (stamp, stamp, d.json_list(rows)),
    )


def _update_by_ids(
    con: Connection, assignments: str, groups: dict[tuple[Any, ...], list[int]], also: str = ""
) -> None:
    """UPDATE deliveries SET assignments (their values: a group's key) for each group of ids.

    One statement per group of rows that end alike, not one per row: every statement step
    hands the GIL back and forth with a busy event loop.
    """
    where = f" AND {also}" if also else ""
    d = con.dialect
    con.executemany(
        f"UPDATE deliveries SET {assignments} WHERE id IN {d.in_list('id')}{where}",
        [(*key, d.json_list(ids)) for key, ids in groups.items()],
    )


def _deliveries_for_acks(con: Connection, acks: Sequence[AckIn]) -> dict[tuple[Any, Any], Row]:
    """The deliveries a batch of acks names, keyed by (msg_id, target) or ("ref", provider_ref)."""
    found: dict[tuple[Any, Any], Row] = {}
    pairs = list({(a.msg_id, a.target) for a in acks if a.provider_ref is None})
    refs = list({a.provider_ref for a in acks if a.provider_ref is not None})
    d = con.dialect
    if pairs:
        for r in d.rows(con, "deliveries", ack_lookup_sql(d), (d.json_list(pairs),)):
            found[(r["msg_id"], r["target"])] = r
    if refs:
        by_ref = f"SELECT * FROM deliveries WHERE provider_ref IN {d.in_list()}"
        for r in d.rows(con, "deliveries", by_ref, (d.json_list(refs),)):
            found[("ref", r["provider_ref"])] = r
    return found


def _advance(row: Row, ack: AckIn, stamp: str) -> bool:
    """Move a delivery row (in memory) forward for one ack; True if it changed."""
    new_state = ack.new_state
    if new_state is None or not DeliveryState(row["state"]).advances_to(new_state):
        return False
    if new_state == DeliveryState.FAILED and ack.retry is not None:
        # Reported failed after the send (a speaker that could not play, an SMS
        # undelivered): retry with the dispatcher's backoff, or give up.
        retry_at = ack.retry(row["attempts"])
        if retry_at is None:
            new_state = DeliveryState.DEAD
        else:
            row["due_at"] = ts(retry_at)
    row["state"] = new_state
    if ack.error is not None:
        row["last_error"] = ack.error
    if new_state == DeliveryState.DELIVERED and not row["delivered_at"]:
        row["delivered_at"] = stamp
    if new_state == DeliveryState.ACKNOWLEDGED and not row["acked_at"]:
        row["acked_at"] = stamp
    return True


def _apply_acks(con: Connection, acks: Sequence[AckIn], stamp: str) -> list[AckedDelivery | None]:
    """apply_acks in the store's thread, inside its transaction."""
    found = _deliveries_for_acks(con, acks)
    out: list[AckedDelivery | None] = []
    ack_rows: list[list[Any]] = []
    changed: dict[int, Row] = {}
    for ack in acks:
        found_by = ("ref", ack.provider_ref) if ack.provider_ref is not None else (ack.msg_id, ack.target)
        row = found.get(found_by)
        if row is None:
            out.append(None)
            continue
        ack_rows.append(
            # The detail as its own text, as reported (a device's NaN must not spoil the batch).
            [
                row["id"],
                row["msg_id"],
                row["target"],
                ack.source,
                ack.status,
                stamp,
                _encode_json(ack.detail or {}),
            ]
        )
        confirmed_before = row["acked_at"] is not None
        if _advance(row, ack, stamp):
            changed[row["id"]] = row
        # The first confirmation of a delivery is what time-to-acknowledge measures.
        first = not confirmed_before and row["acked_at"] is not None
        out.append(cast(AckedDelivery, {**row, "first_confirmation": first}))
    # Whole batches per statement, passed as JSON: each statement step hands the GIL back
    # and forth with a busy event loop, so a row per step cost more than the SQL.
    if ack_rows:
        d = con.dialect
        con.execute(
            "INSERT INTO acks (delivery_id, msg_id, target, source, status, at, detail)"
            f" SELECT * FROM ({d.json_rows(7, ints=(0,))}) AS r",
            (d.json_list(ack_rows),),
        )
    alike: dict[tuple[Any, ...], list[int]] = {}
    for r in changed.values():
        key = (r["state"], r["last_error"], r["due_at"], stamp, r["delivered_at"], r["acked_at"])
        alike.setdefault(key, []).append(r["id"])
    _update_by_ids(
        con,
        "state = ?, last_error = ?, due_at = ?, updated_at = ?, delivered_at = ?, acked_at = ?",
        alike,
    )
    return out


def _delivery(r: Row, republished: set[int]) -> Delivery:
    """A claimed row as a Delivery."""
    return Delivery(
        id=r["id"],
        msg_id=r["msg_id"],
        warning_id=r["warning_id"],
        step=r["step"],
        kind=r["kind"],
        channel=r["channel"],
        target=r["target"],
        village=r["village"],
        person_id=r["person_id"],
        address=r["address"],
        ack_required=bool(r["ack_required"]),
        attempts=r["attempts"],
        last_error=r["last_error"],
        context=json.loads(r["context"]) if r.get("context") else {},
        maybe_sent_at=from_ts(r["maybe_sent_at"]),
        created_at=from_ts(r["created_at"]),
        sent_at=from_ts(r["sent_at"]),
        republish=r["id"] in republished,
    )


def _as_rows(rows: list[Row]) -> list[DeliveryRow]:
    """Deliveries rows as read (SELECT *)."""
    return cast(list[DeliveryRow], rows)


class Deliveries(StoreCore):
    """The deliveries and acks tables."""

    async def add_deliveries(self, deliveries: Sequence[NewDelivery], now: datetime) -> None:
        """Insert deliveries on their own, in one transaction; a known (msg_id, target) is kept."""
        await self.write(lambda con: insert_deliveries(con, deliveries, now))

    async def recover(self) -> int:
        """Put deliveries a crash left `sending` back to `pending`, their send in doubt; returns how many.

        The send may have reached the provider before the crash: `maybe_sent_at` keeps the
        earliest claim it could date from, so the adapter looks it up before sending it again.
        """

        def work(con: Connection) -> int:
            """Cancel what is no longer wanted, put the rest back."""
            # A warning cancelled or expired while its sends were in flight is not sent after the
            # crash (its all-clear and stop commands, kind cancel/expire, still are).
            con.execute(
                "UPDATE deliveries SET state = 'cancelled' WHERE state = 'sending'"
                " AND kind IN ('warning', 'update') AND warning_id IN"
                " (SELECT id FROM warnings WHERE state IN ('cancelled', 'expired'))"
            )
            # updated_at: a row claimed before schema 10 has no claimed_at; its claim set updated_at.
            cur = con.execute(
                "UPDATE deliveries SET state = 'pending',"
                " maybe_sent_at = COALESCE(maybe_sent_at, claimed_at, updated_at) WHERE state = 'sending'"
            )
            return int(cur.rowcount)

        return await self.write(work)

    async def claim(self, now: datetime, limit: int, channels: Iterable[str]) -> list[Delivery]:
        """Claim due deliveries of these channels: mark them `sending` and return them.

        Each claim is an attempt, except a re-publish: a delivery already sent (`sent_at`) that is
        pending again because its device did not confirm (Store.fire_job `republish`).
        One transaction in one trip to the database thread, four statements whatever the batch.
        """
        chans = list(channels)
        if not chans:
            return []
        marks = ",".join("?" * len(chans))
        stamp = ts(now)

        def work(con: Connection) -> tuple[list[Row], set[int]]:
            """Pick, mark and read the claimed rows."""
            d = con.dialect
            due = (
                f"SELECT {d.json_agg('id')}, {d.json_agg('CASE WHEN republish THEN id END')} FROM"
                " (SELECT id, state = 'pending' AND sent_at IS NOT NULL AS republish FROM deliveries"
                f" WHERE state IN ('pending', 'failed') AND {DUE_DELIVERY} AND channel IN ({marks})"
                " ORDER BY due_at, id LIMIT ?) AS due"
            )
            picked, again = con.execute(due, (stamp, stamp, *chans, limit)).fetchone()
            if picked == "[]":
                return [], set()
            ids = d.json_list(json.loads(picked))
            con.execute(
                "UPDATE deliveries SET state = 'sending',"
                " attempts = attempts"
                " + CASE WHEN state = 'pending' AND sent_at IS NOT NULL THEN 0 ELSE 1 END,"
                f" updated_at = ?, claimed_at = ? WHERE id IN {d.in_list('id')}",
                (stamp, stamp, ids),
            )
            claimed = f"SELECT * FROM deliveries WHERE id IN {d.in_list('id')}"
            rows = d.rows(con, "deliveries", claimed, (ids,))
            return rows, {i for i in json.loads(again) if i is not None}

        rows, republished = await self.write(work, bulk=True)
        rows.sort(key=lambda r: (r["due_at"], r["id"]))  # oldest due first, as claimed
        return [_delivery(r, republished) for r in rows]

    async def record(
        self,
        outcomes: Sequence[tuple[Outcome, datetime | None]],
        now: datetime,
        *,
        jobs: Sequence[NewJob | dict[str, Any]] = (),
    ) -> None:
        """Write outcomes, each with its next due time when it is to be retried, and `jobs`, at once.

        A re-publish `sent` again stays `delivered` if its device had said `received` before.
        An outcome with `refund` gives back the attempt its claim counted.
        """
        stamp = ts(now)
        # Outcomes alike (a batch of village commands all `sent`) are one statement over their
        # ids: every statement step hands the GIL back and forth with a busy event loop.
        groups: dict[tuple[Any, ...], list[int]] = {}
        for o, retry_at in outcomes:
            sent = stamp if o.state in REACHED else None
            # A send that is known to have happened ends any doubt about an earlier one; a send
            # that may have happened is in doubt from this claim on (or an earlier doubt's time).
            doubt = 1 if o.maybe_sent and sent is None else 0
            key = (
                int(o.republish),
                o.state,
                o.state,
                o.error,
                o.provider_ref,
                sent,
                ts(retry_at) if retry_at else None,
                stamp,
                sent,
                doubt,
                int(o.refund),
            )
            groups.setdefault(key, []).append(o.delivery_id)

        def work(con: Connection) -> None:
            """The grouped updates, then the jobs."""
            _update_by_ids(
                con,
                "state = CASE WHEN ? <> 0 AND ? = 'sent' AND delivered_at IS NOT NULL"
                " THEN 'delivered' ELSE ? END,"
                " last_error = ?,"
                " provider_ref = COALESCE(?, provider_ref),"
                " sent_at = COALESCE(sent_at, ?), due_at = COALESCE(?, due_at), updated_at = ?,"
                " maybe_sent_at = CASE WHEN ? IS NOT NULL THEN NULL"
                " WHEN ? <> 0 THEN COALESCE(maybe_sent_at, claimed_at, updated_at) ELSE maybe_sent_at END,"
                " attempts = attempts - ?",
                groups,
                # Look rows up by id, not by the (state, due_at) index.
                also=f"{con.dialect.by_rowid('state')} = 'sending'",
            )
            insert_jobs(con, jobs)

        await self.write(work, bulk=True)

    async def next_delivery_due(self, channel: str) -> datetime | None:
        """When a channel's earliest pending or failed delivery becomes due (its worker sleeps till then)."""
        row = await self.read(
            lambda con: one(
                con,
                "SELECT MIN(due_at) AS t FROM deliveries"
                " WHERE state IN ('pending', 'failed') AND channel = ?",
                (channel,),
            )
        )
        return from_ts(row["t"]) if row and row["t"] else None

    async def provider_refs_taken(self, refs: Sequence[str]) -> set[str]:
        """Which of these provider ids (Twilio SIDs) a delivery already holds.

        A lookup of a send in doubt must not take a message that is another delivery's.
        """
        if not refs:
            return set()
        sql = f"SELECT provider_ref FROM deliveries WHERE provider_ref IN {self.dialect.in_list()}"
        rows = await self.read(lambda con: every(con, sql, (self.dialect.json_list(refs),)))
        return {r["provider_ref"] for r in rows}

    async def get_delivery(self, delivery_id: int) -> DeliveryRow | None:
        """One delivery row by id (an ack link names its delivery)."""
        row = await self.read(lambda con: one(con, "SELECT * FROM deliveries WHERE id = ?", (delivery_id,)))
        return cast(DeliveryRow | None, row)

    async def delivery_to(self, msg_id: str, target: str) -> DeliveryRow | None:
        """The delivery of a message to one receiver (a callback URL names it by both)."""
        row = await self.read(
            lambda con: one(con, "SELECT * FROM deliveries WHERE msg_id = ? AND target = ?", (msg_id, target))
        )
        return cast(DeliveryRow | None, row)

    async def deliveries_by_ids(self, ids: Sequence[int]) -> list[DeliveryRow]:
        """Delivery rows by id, in id order (a confirmation round reads the ones it watches)."""
        sql = f"SELECT * FROM deliveries WHERE id IN {self.dialect.in_list('id')} ORDER BY id"
        return _as_rows(await self.read(lambda con: every(con, sql, (self.dialect.json_list(ids),))))

    async def in_force_for(self, channel: str, target: str) -> list[WarningRow]:
        """Warnings in force that this receiver was sent (or is being sent): what an LED board may show."""
        rows = await self.read(
            lambda con: every(
                con,
                "SELECT w.* FROM warnings w WHERE w.state IN ('active', 'updated') AND EXISTS ("
                " SELECT 1 FROM deliveries d WHERE d.warning_id = w.id AND d.channel = ? AND d.target = ?"
                " AND d.kind = 'warning' AND (d.state IN ('sending', 'sent', 'delivered', 'acknowledged')"
                # Sent, not confirmed, about to be published again: still what the board shows.
                " OR (d.state = 'pending' AND d.sent_at IS NOT NULL)))",
                (channel, target),
            )
        )
        return [decode_warning(r) for r in rows]

    async def deliveries_for(self, warning_id: str, limit: int = 10_000) -> list[DeliveryRow]:
        """A warning's deliveries, in creation order."""
        rows = await self.read(
            lambda con: every(
                con, "SELECT * FROM deliveries WHERE warning_id = ? ORDER BY id LIMIT ?", (warning_id, limit)
            )
        )
        return _as_rows(rows)

    async def person_deliveries(self, warning_id: str, person_ids: Sequence[str]) -> list[DeliveryRow]:
        """A warning's deliveries to these people, in creation order (escalation reads them)."""
        if not person_ids:
            return []
        marks = ",".join("?" * len(person_ids))
        sql = f"SELECT * FROM deliveries WHERE warning_id = ? AND person_id IN ({marks}) ORDER BY id"
        return _as_rows(await self.read(lambda con: every(con, sql, (warning_id, *person_ids))))

    async def count_sending(self, warning_id: str) -> int:
        """How many of a warning's deliveries are in an adapter's hands right now."""
        row = await self.read(
            lambda con: one(
                con,
                "SELECT COUNT(*) AS n FROM deliveries WHERE warning_id = ? AND state = 'sending'",
                (warning_id,),
            )
        )
        return int(row["n"]) if row else 0

    async def count_acked(self, warning_id: str) -> int:
        """How many of a warning's deliveries were confirmed (the fan-out bench waits on it)."""
        row = await self.read(
            lambda con: one(
                con,
                "SELECT COUNT(*) AS n FROM deliveries WHERE warning_id = ? AND acked_at IS NOT NULL",
                (warning_id,),
            )
        )
        return int(row["n"]) if row else 0

    async def last_times(self, warning_id: str) -> tuple[datetime | None, datetime | None]:
        """When a warning's last delivery was sent and its last one confirmed (the bench's measure)."""
        row = await self.read(
            lambda con: one(
                con,
                "SELECT MAX(sent_at) AS sent, MAX(acked_at) AS acked FROM deliveries WHERE warning_id = ?",
                (warning_id,),
            )
        )
        return (from_ts(row["sent"]), from_ts(row["acked"])) if row else (None, None)

    async def last_due(self, warning_id: str, channel: str, kind: str = "warning") -> datetime | None:
        """The latest due time of a warning's deliveries on a channel (when speakers last played)."""
        row = await self.read(
            lambda con: one(
                con,
                "SELECT MAX(due_at) AS t FROM deliveries WHERE warning_id = ? AND channel = ? AND kind = ?",
                (warning_id, channel, kind),
            )
        )
        return from_ts(row["t"]) if row else None

    async def reached(self, warning_id: str) -> list[dict[str, Any]]:
        """The distinct (channel, target) a warning was actually sent to, for the all-clear.

        Sent once is enough, even if the receiver later reported a failure: a speaker that
        could not play still gets its stop, a phone that was sent the warning gets the all-clear.
        """
        return await self.read(
            lambda con: every(
                con,
                "SELECT channel, target, MAX(village) AS village, MAX(person_id) AS person_id,"
                " MAX(address) AS address FROM deliveries WHERE warning_id = ? AND kind = 'warning'"
                " AND sent_at IS NOT NULL GROUP BY channel, target",
                (warning_id,),
            )
        )

    async def coverage(self, warning_id: str) -> dict[str, dict[str, int]]:
        """Per channel: expected / sent / delivered / acknowledged / failed, counting receivers once.

        A receiver counts at the furthest state any of its deliveries for this warning reached
        (rows.count_receiver); read from the counters the store keeps beside the deliveries
        (coverage_counts), not by grouping them.
        """
        rows = await self.read(lambda con: every(con, COVERAGE_SQL, (warning_id,)))
        out: dict[str, dict[str, int]] = {}
        for r in rows:
            counter = out.setdefault(r["channel"], dict.fromkeys(COVERAGE_COUNTS, 0))
            counter["expected"] += r["n"]
            for counted in _COUNTED_AS[r["class"]]:
                counter[counted] += r["n"]
        return out

    async def apply_ack(self, ack: AckIn, *, now: datetime) -> AckedDelivery | None:
        """Record one acknowledgement and move its delivery forward (never back); one transaction.

        The delivery is found by (msg_id, target) or by provider_ref. Returns it, or None
        when nothing matches (the ack is then not stored: it belongs to nobody).
        """
        return (await self.apply_acks([ack], now=now))[0]

    async def apply_acks(self, acks: Sequence[AckIn], *, now: datetime) -> list[AckedDelivery | None]:
        """Record many acknowledgements in one transaction, in order, with a few set-wise statements.

        10,000 speakers ack three times each within seconds: one SELECT, one INSERT and one UPDATE
        per batch, instead of three statements per ack, keep the store free for the dispatcher.
        Each returned row is the delivery as it stood after that ack.
        """
        stamp = ts(now)
        return await self.write(lambda con: _apply_acks(con, acks, stamp), bulk=True)

    async def counts(self) -> dict[str, int]:
        """Deliveries by state, for health and metrics."""
        rows = await self.read(
            lambda con: every(
                con,
                "SELECT state, CAST(SUM(n) AS INTEGER) AS n FROM delivery_counts"
                " GROUP BY state HAVING SUM(n) > 0",
            )
        )
        return {r["state"]: r["n"] for r in rows}

    async def latest_sent_to(
        self, address: str, channels: Sequence[str], *, ack_required: bool
    ) -> DeliveryRow | None:
        """The latest delivery sent to an address on these channels (ack-required warnings only, if asked).

        A receipt can beat the dispatcher's own bookkeeping (sent_at) when a batch is long:
        delivered_at then says it went out.
        """
        chans = ",".join("?" * len(channels))
        states = ",".join("?" * len(_SENT_STATES))
        extra = " AND ack_required = 1 AND kind = 'warning'" if ack_required else ""
        sql = (
            f"SELECT * FROM deliveries WHERE address = ? AND channel IN ({chans})"
            f" AND COALESCE(sent_at, delivered_at, acked_at) IS NOT NULL AND state IN ({states}){extra}"
            " ORDER BY COALESCE(sent_at, delivered_at, acked_at) DESC, id DESC LIMIT 1"
        )
        row = await self.read(lambda con: one(con, sql, (address, *channels, *_SENT_STATES)))
        return cast(DeliveryRow | None, row)

    async def awaiting_receipt(self, channel: str, limit: int = 2000) -> list[dict[str, Any]]:
        """Sent deliveries of a channel still waiting for a receipt (polling mode)."""
        return await self.read(
            lambda con: every(
                con,
                "SELECT id, msg_id, target, provider_ref, ack_required FROM deliveries"
                " WHERE channel = ? AND state = 'sent' AND provider_ref IS NOT NULL ORDER BY id LIMIT ?",
                (channel, limit),
            )
        )

    # -- providers (issue 16): which provider sent a person's SMS or call, its quota, its receipts --

    async def set_delivery_providers(self, pairs: Sequence[tuple[int, str]]) -> None:
        """Record which provider took each delivery: (delivery id, provider name) pairs."""
        if not pairs:
            return
        rows = [(p, i) for i, p in pairs]
        await self.write(lambda con: con.executemany("UPDATE deliveries SET provider = ? WHERE id = ?", rows))

    async def provider_sends_since(
        self, provider: str, channel: str, addresses: Sequence[str], since: datetime
    ) -> dict[str, int]:
        """How many deliveries a provider has sent to each address since a time (local daily quotas)."""
        if not addresses:
            return {}
        sql = (
            "SELECT address, COUNT(*) AS n FROM deliveries"
            " WHERE provider = ? AND channel = ? AND sent_at >= ?"
            f" AND address IN {self.dialect.in_list()} GROUP BY address"
        )
        params = (provider, channel, ts(since), self.dialect.json_list(addresses))
        rows = await self.read(lambda con: every(con, sql, params))
        return {r["address"]: r["n"] for r in rows}

    async def in_flight_of(
        self, channel: str, provider: str, *, unrecorded: bool = False, limit: int = 2000
    ) -> list[dict[str, Any]]:
        """Sent deliveries a provider still owes a receipt for; `unrecorded`: also those with no provider."""
        sql = (
            "SELECT id, msg_id, target, address, provider_ref, ack_required, sent_at, state FROM deliveries"
            " WHERE channel = ? AND state = 'sent' AND provider_ref IS NOT NULL"
            " AND (provider = ? OR (? <> 0 AND provider IS NULL)) ORDER BY id LIMIT ?"
        )
        params = (channel, provider, int(unrecorded), limit)
        return [dict(r) for r in await self.read(lambda con: every(con, sql, params))]

    async def delivery_by_provider_ref(self, provider_ref: str) -> DeliveryRow | None:
        """The delivery a provider's id names (a call's report carries only the provider's id)."""
        sql = "SELECT * FROM deliveries WHERE provider_ref = ?"
        row = await self.read(lambda con: one(con, sql, (provider_ref,)))
        return cast(DeliveryRow | None, row)
