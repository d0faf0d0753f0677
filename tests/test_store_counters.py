"""The delivery counters (schema 13) equal what grouping the deliveries says, whatever wrote them.

Coverage and the /metrics gauges read counters the store keeps beside the deliveries; these
tests drive the store through random sequences of every operation that changes a delivery
(insert, claim, record, acks, cancel, recovery, republish, delete) and compare the counters with
the GROUP BY they replace after each step.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.support import db
from warnd.store import COVERAGE_COUNTS, AckIn, DeliveryState, NewDelivery, Outcome, Store, count_receiver, ts
from warnd.store import sqlite as dialect

START = datetime(2026, 7, 1, 8, 0, tzinfo=UTC)
WARNINGS = ("W1", "W2")
CHANNELS = ("sms", "loudspeaker")
TARGETS = tuple(f"t{i}" for i in range(5))


async def _warnings(store: Store) -> None:
    """The warnings the deliveries belong to, written as rows."""
    await db.executemany(
        store,
        "INSERT INTO warnings (id, source, msg_type, event, level, status, headline, description,"
        " instruction, area, villages, state, version, created_at, updated_at)"
        " VALUES (?, 'api', 'Alert', 'e', 'red', 'actual', 'h', '', '', '{}', '[]', 'active', 1, 'x', 'x')",
        [(w,) for w in WARNINGS],
    )


ByState = dict[tuple[str, str, str], int]
Coverage = dict[str, dict[str, dict[str, int]]]


async def _grouped(store: Store) -> tuple[ByState, Coverage]:
    """Deliveries by (warning, channel, state), and each warning's coverage, by grouping the rows."""
    rows = await db.query(store, "SELECT warning_id, channel, target, kind, state FROM deliveries")
    by_state: ByState = {}
    receivers: dict[tuple[str, str, str], list[str]] = {}
    for r in rows:
        key = (r["warning_id"], r["channel"], r["state"])
        by_state[key] = by_state.get(key, 0) + 1
        if r["kind"] == "warning":
            receivers.setdefault((r["warning_id"], r["channel"], r["target"]), []).append(r["state"])
    coverage: Coverage = {w: {} for w in WARNINGS}
    for (warning_id, channel, _), states in receivers.items():
        counter = coverage[warning_id].setdefault(channel, dict.fromkeys(COVERAGE_COUNTS, 0))
        count_receiver(counter, states)
    return by_state, coverage


async def _check(store: Store) -> set[str]:
    """The counters equal the GROUP BY: per state, per channel (gauges), per warning (coverage).

    Returns the states and coverage classes seen, to show the sequence went somewhere.
    """
    by_state, coverage = await _grouped(store)
    counted = await db.query(store, "SELECT warning_id, channel, state, n FROM delivery_counts WHERE n != 0")
    assert {(r["warning_id"], r["channel"], r["state"]): r["n"] for r in counted} == by_state
    per_channel: dict[tuple[str, str], int] = {}
    for (_, channel, state), n in by_state.items():
        per_channel[(channel, state)] = per_channel.get((channel, state), 0) + n
    gauges = await store.gauges()
    assert {(r["channel"], r["state"]): r["n"] for r in gauges["deliveries"]} == per_channel
    assert await store.counts() == {
        s: sum(n for (_, st), n in per_channel.items() if st == s) for _, s in per_channel
    }
    seen = {state for _, _, state in by_state}
    for warning_id in WARNINGS:
        assert await store.coverage(warning_id) == coverage[warning_id]
        seen |= {f"covered:{k}" for c in coverage[warning_id].values() for k, n in c.items() if n}
    return seen


async def _step(store: Store, rng: random.Random, now: datetime) -> None:
    """One random operation that changes deliveries."""
    op = rng.choices(
        ("add", "claim", "record", "acks", "cancel", "recover", "republish", "delete"),
        weights=(6, 4, 4, 4, 1, 1, 2, 1),
    )[0]
    if op == "add":
        await store.add_deliveries(
            [
                NewDelivery(
                    msg_id=f"m{rng.randrange(6)}",
                    warning_id=rng.choice(WARNINGS),
                    step="issue",
                    kind=rng.choice(("warning", "warning", "update", "cancel")),
                    channel=rng.choice(CHANNELS),
                    target=rng.choice(TARGETS),
                    due_at=now - timedelta(seconds=rng.randrange(0, 60)),
                )
                for _ in range(rng.randrange(1, 8))
            ],
            now,
        )
    elif op == "claim":
        await store.claim(now, rng.randrange(1, 10), rng.sample(CHANNELS, rng.randrange(1, 3)))
    elif op == "record":
        sending = await db.query(store, "SELECT id FROM deliveries WHERE state = 'sending'")
        outcomes = []
        for r in sending:
            state = rng.choice(("sent", "delivered", "failed", "dead", "pending"))
            retry_at = now + timedelta(seconds=5) if state == "failed" else None
            outcomes.append((Outcome(r["id"], state, refund=state == "pending"), retry_at))
        await store.record(outcomes, now)
    elif op == "acks":
        acks = [
            AckIn(
                "test",
                "s",
                rng.choice(("delivered", "acknowledged", "failed", "dead", None)),
                msg_id=f"m{rng.randrange(6)}",
                target=rng.choice(TARGETS),
                retry=rng.choice((None, lambda _attempts: now + timedelta(seconds=5))),
            )
            for _ in range(rng.randrange(1, 10))
        ]
        await store.apply_acks(acks, now=now)
    elif op == "cancel":
        await store.change_warning(
            rng.choice(WARNINGS),
            {"state": "cancelled"},
            audit={"at": ts(now), "actor": "test", "action": "cancel"},
            cancel_deliveries=True,
            now=now,
        )
    elif op == "recover":
        await store.recover()
    elif op == "republish":
        # As a confirmation round does (Store.fire_job `republish`): sent, not confirmed, due again.
        await db.execute(
            store,
            "UPDATE deliveries SET state = 'pending' WHERE state IN ('sent', 'delivered') AND id % 2 = ?",
            (rng.randrange(2),),
        )
    else:
        # As retention does: the acks, then their deliveries.
        gone = rng.randrange(7)
        await db.execute(store, "DELETE FROM acks WHERE delivery_id % 7 = ?", (gone,))
        await db.execute(store, "DELETE FROM deliveries WHERE id % 7 = ?", (gone,))


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
@pytest.mark.parametrize("seed", range(4))
async def test_counters_equal_the_group_by_after_random_operations(
    tmp_path: Path, seed: int, backend: str, request: pytest.FixtureRequest
) -> None:
    """After every step of a random sequence, counters, gauges and coverage equal the GROUP BY.

    On both stores: PostgreSQL's counters are trigger functions of its own schema file.
    """
    rng = random.Random(seed)
    if backend == "sqlite":
        store_at = Store(tmp_path / "w.db")
    else:
        store_at = Store(url=request.getfixturevalue("pg_url"))
    async with store_at as store:
        await _warnings(store)
        now, seen = START, set()
        for _ in range(80):
            now += timedelta(seconds=rng.randrange(1, 20))
            await _step(store, rng, now)
            seen |= await _check(store)
        # The sequence went somewhere: every state, receivers counted in every column.
        assert seen >= {str(state) for state in DeliveryState}
        assert seen >= {f"covered:{k}" for k in COVERAGE_COUNTS}


async def test_an_existing_database_gets_its_counters(tmp_path: Path) -> None:
    """Schema 13 counts what a database already holds when it is applied."""
    path = tmp_path / "w.db"
    async with Store(path) as store:
        await _warnings(store)
        rng = random.Random(7)
        for i in range(30):
            await _step(store, rng, START + timedelta(seconds=10 * i))
        expected = await _grouped(store)
        # As a database from before schema 13: no counters, no triggers, no version row.
        for name in dialect.COUNTER_TRIGGERS:
            await db.execute(store, f"DROP TRIGGER {name}")
        for table in ("delivery_counts", "coverage_receivers", "coverage_counts"):
            await db.execute(store, f"DROP TABLE {table}")
        await db.execute(store, "DELETE FROM schema_version WHERE version = 13")
    async with Store(path) as store:
        assert await store.read(dialect.triggers) >= set(dialect.COUNTER_TRIGGERS)
        assert await _grouped(store) == expected
        await _check(store)


async def test_the_gauges_and_coverage_read_no_more_rows_as_deliveries_grow(tmp_path: Path) -> None:
    """No statement /metrics or coverage runs scans the deliveries: counters, and an index search."""
    from warnd.store import COVERAGE_SQL, DELIVERY_GAUGE_SQL, OLDEST_DUE_SQL

    async with Store(tmp_path / "w.db") as store:
        plans = {
            sql: " / ".join(r["detail"] for r in await db.query(store, f"EXPLAIN QUERY PLAN {sql}", params))
            for sql, params in (
                (DELIVERY_GAUGE_SQL, ()),
                (OLDEST_DUE_SQL, ("pending", "sms")),
                (COVERAGE_SQL, ("W1",)),
            )
        }
    assert "deliveries" not in plans[DELIVERY_GAUGE_SQL] + plans[COVERAGE_SQL]
    # In due order through the (state, due_at) index: the first row of the channel ends it.
    assert plans[OLDEST_DUE_SQL] == "SEARCH deliveries USING INDEX deliveries_due (state=?)"
