"""Shared fixtures: log capture that fails tests on unexpected errors, a real Mosquitto, the harness."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from tests.support import harness as harness_module
from tests.support.harness import Harness
from tests.support.mqtt import Broker, mosquitto_binary

_EVENTS: list[dict[str, Any]] = []


def _capture(_logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """Keep every log event so tests can read them and errors can fail a test."""
    _EVENTS.append({**event, "log_level": method})
    return event


structlog.configure(
    processors=[
        structlog.contextvars.merge_contextvars,
        _capture,
        structlog.processors.add_log_level,
        structlog.processors.JSONRenderer(ensure_ascii=False),
    ],
    logger_factory=structlog.ReturnLoggerFactory(),
    cache_logger_on_first_use=False,
)


def pytest_addoption(parser: pytest.Parser) -> None:
    """`--store=postgres`: every Harness on a fresh PostgreSQL database (`make test-pg`)."""
    parser.addoption(
        "--store",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="the store the in-process warnd of tests.support.harness uses (default: sqlite)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register markers."""
    config.addinivalue_line("markers", "allow_error_logs: the test provokes error log events on purpose")
    config.addinivalue_line(
        "markers", "sqlite_only: looks inside the SQLite file; skipped under --store=postgres"
    )


@pytest.fixture(autouse=True)
def log_events(request: pytest.FixtureRequest) -> Iterator[list[dict[str, Any]]]:
    """The log events of this test; any `error` event not allowed fails it."""
    _EVENTS.clear()
    yield _EVENTS
    if request.node.get_closest_marker("allow_error_logs"):
        return
    errors = [e for e in _EVENTS if e["log_level"] in ("error", "critical", "exception")]
    assert not errors, f"unexpected error log events: {errors}"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A fresh Mosquitto on a free port, for this test only."""
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed (make test installs it)")
    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    """The pipeline in this process with recording adapters on every channel."""
    h = await Harness(tmp_path).start()
    yield h
    await h.close()


# -- PostgreSQL ---------------------------------------------------------------------------------
# tests.support.postgres is imported inside the fixtures: a session that asks for no database
# starts no server and needs no psycopg.


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Any]:
    """A PostgreSQL server of this session's own (tests.support.postgres.PostgresCluster).

    Started the first time a test asks for it, stopped at the end of the session. Without the
    server binaries the test fails, naming `make deps` and the Debian package `postgresql`:
    the suite is meant to run in full, and a skip would hide a backend left untested.
    """
    from tests.support.postgres import MISSING, PostgresCluster, postgres_bindir

    if postgres_bindir() is None:
        pytest.fail(MISSING)
    cluster = PostgresCluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: Any) -> Iterator[str]:
    """The conninfo URL of a fresh, empty database for this test, dropped after it."""
    url: str = pg_cluster.new_database()
    yield url
    pg_cluster.drop_database(url)


@pytest.fixture(autouse=True, scope="session")
def _store_backend(request: pytest.FixtureRequest) -> Iterator[None]:
    """Under `--store=postgres`, each Harness gets a fresh database of the session's cluster."""
    if request.config.getoption("--store") != "postgres":
        yield
        return
    cluster = request.getfixturevalue("pg_cluster")
    databases: dict[Path, str] = {}

    def database_for(tmp_path: Path) -> str:
        """One database per test directory: a restarted Harness finds its store again."""
        if tmp_path not in databases:
            databases[tmp_path] = cluster.new_database()
        return databases[tmp_path]

    harness_module.DATABASE_FOR = database_for
    yield
    harness_module.DATABASE_FOR = None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under `--store=postgres`, tests marked sqlite_only (they look inside the SQLite file) skip."""
    if config.getoption("--store") != "postgres":
        return
    skip = pytest.mark.skip(reason="looks inside the SQLite file (sqlite_only)")
    for item in items:
        if item.get_closest_marker("sqlite_only"):
            item.add_marker(skip)
