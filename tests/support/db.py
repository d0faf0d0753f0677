"""Raw SQL for tests, through the store's own threads and transaction primitives (Store.read/write).

Tests set up rows the API cannot make (a device that reported, a row from an old schema) and
look at tables no endpoint shows; warnd's own code never writes SQL outside warnd/store.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from warnd.store import Store


async def execute(store: Store, sql: str, params: Any = ()) -> None:
    """One statement, committed as its own transaction."""
    await store.write(lambda con: con.execute(sql, params))


async def executemany(store: Store, sql: str, params: Any) -> None:
    """One statement over many parameter rows, committed as one transaction."""
    await store.write(lambda con: con.executemany(sql, params))


async def query(store: Store, sql: str, params: Any = ()) -> list[dict[str, Any]]:
    """All rows of a query as dicts."""
    return await store.read(lambda con: [dict(r) for r in con.execute(sql, params).fetchall()])


async def pragma(store: Store, statement: str) -> Any:
    """A PRAGMA on the store's writer connection, outside any transaction; its first value, if any."""
    row = await store.on_writer(lambda con: con.execute(statement).fetchone())
    return row[0] if row is not None else None


async def refuse_writes(store: Store, refuse: bool) -> None:
    """Make the store's writer connection read-only (or writable again), as a failing disk would.

    SQLite: `PRAGMA query_only`; PostgreSQL: the session's transactions read-only (SQLSTATE 25006).
    """
    if store.url is None:
        statement = f"PRAGMA query_only = {'ON' if refuse else 'OFF'}"
    else:
        statement = f"SET default_transaction_read_only = {'on' if refuse else 'off'}"
    await store.on_writer(lambda con: con.execute(statement))


@asynccontextmanager
async def writer_held(store: Store, hold_s: float = 60) -> AsyncIterator[None]:
    """A write transaction open on the store's writer for the block (at most hold_s): what runs
    inside must not need the writer, or it waits for the block to end."""
    inside, release = threading.Event(), threading.Event()

    def held(_con: object) -> None:
        """The transaction, open until released."""
        inside.set()
        release.wait(hold_s)

    writing = asyncio.create_task(store.write(held))
    try:
        await asyncio.to_thread(inside.wait, 10)
        yield
    finally:
        release.set()
        await writing


async def in_transaction(store: Store) -> bool:
    """Whether the store's writer connection is inside a transaction (none must be left open)."""
    return await store.on_writer(lambda con: con.in_transaction)
