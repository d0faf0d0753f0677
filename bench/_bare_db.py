"""The bare references' database: SQLite in a file, or a PostgreSQL database, as warnd's store is.

The bare accept handler (`bench.loudspeaker_fanout`) and the bare ack sinks (`bench.ack_backlog`)
write their tables through this, from one worker thread of their own.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any


def connect(db_path: Path, store_url: str | None) -> tuple[Any, str]:
    """An autocommit connection with durable commits, and its placeholder (`?` or `%s`).

    SQLite: WAL, synchronous=FULL. PostgreSQL (`store_url`): psycopg, synchronous_commit on.
    """
    if store_url is None:
        db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        return db, "?"
    import psycopg

    pg = psycopg.connect(store_url, autocommit=True)
    pg.execute("SET synchronous_commit = on")
    return pg, "%s"


def insert_many(db: Any, sql: str, rows: list[Any]) -> None:
    """One statement for each row (sqlite3 has executemany on its connection, psycopg on a cursor)."""
    if isinstance(db, sqlite3.Connection):
        db.executemany(sql, rows)
    else:
        db.cursor().executemany(sql, rows)
