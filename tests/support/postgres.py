"""A real PostgreSQL cluster in a temporary directory, started and stopped by the test session.

Debian's server binaries (initdb, pg_ctl, postgres) run as the `postgres` user when the tests
run as root: initdb refuses root. The cluster listens on a free loopback port with trust
authentication, and its unix socket stays in its own directory, so it never meets a system
cluster. Each test gets a fresh database of it (`new_database()`).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from tests.support.mqtt import free_port

# What to tell someone whose machine lacks the server: the Makefile installs it.
MISSING = (
    "PostgreSQL server binaries (initdb, pg_ctl) not found: run `make deps`, which installs the "
    "Debian package `postgresql` (or `apt-get install postgresql`)"
)
# The user the server runs as when the tests run as root (Debian's package creates it).
SERVER_USER = "postgres"
# Long enough for a loaded CI machine; a healthy start takes well under a second.
START_TIMEOUT_S = 60
# Tried again on a fresh port when another process took the free port first.
START_ATTEMPTS = 3


def postgres_bindir() -> Path | None:
    """The directory holding initdb and pg_ctl: `pg_config --bindir`, else Debian's newest."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True)
            candidates.append(Path(out.stdout.strip()))

    def major(path: str) -> float:
        """The version in /usr/lib/postgresql/<version>/bin, for picking the newest."""
        try:
            return float(Path(path).parent.name)
        except ValueError:
            return 0.0

    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=major, reverse=True)]
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    return None


class PostgresCluster:
    """One postgres server of its own: `start()`, `new_database()` per test, `stop()`.

    Args:
        bindir: where initdb and pg_ctl are (found with postgres_bindir() if None).
    """

    def __init__(self, bindir: Path | None = None, *, durable: bool = False) -> None:
        """Find the binaries; `start()` creates and runs the cluster.

        `durable`: fsync and synchronous commits as a production server has them (the bench's
        figures on PostgreSQL); without, the suite's faster settings.
        """
        self.durable = durable
        found = bindir or postgres_bindir()
        if found is None:
            raise FileNotFoundError(MISSING)
        self.bindir = found
        self.host = "127.0.0.1"
        self.port = 0
        self.workdir: Path | None = None
        self._admin: Any = None  # a psycopg connection to the `postgres` database, autocommit
        self._names = itertools.count(1)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> PostgresCluster:
        """initdb into a temporary directory and start the server; returns when it takes queries."""
        self.workdir = Path(tempfile.mkdtemp(prefix="warnd-pg-"))
        atexit.register(self.stop)  # a session that dies without its teardown leaves no server
        try:
            if os.geteuid() == 0:
                try:
                    user = pwd.getpwnam(SERVER_USER)
                except KeyError:
                    raise RuntimeError(f"no `{SERVER_USER}` user to run the server as: {MISSING}") from None
                os.chown(self.workdir, user.pw_uid, user.pw_gid)
            # -E UTF8 --locale=C: text compares byte by byte, as SQLite's BINARY collation does, and
            # upper()/lower() touch ASCII only, as SQLite's do. --no-sync: a test cluster.
            self._run(
                "initdb",
                "-D", str(self.data), "-U", "postgres", "--auth=trust",
                "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions",
            )  # fmt: skip
            for attempt in range(START_ATTEMPTS):
                self.port = free_port()
                try:
                    self._pg_ctl_start()
                    break
                except subprocess.CalledProcessError:
                    log = self.log_text()
                    if "could not bind" not in log or attempt == START_ATTEMPTS - 1:
                        raise RuntimeError(f"postgres did not start:\n{log}") from None
        except BaseException:
            self.stop()
            raise
        return self

    def _pg_ctl_start(self) -> None:
        """Run the server on self.port and wait until it accepts connections."""
        # Only for the suite's speed: fsync=off (-F), synchronous_commit=off and no full-page
        # writes lose nothing unless the machine crashes mid-test. Durability (power loss, a full
        # disk, a killed daemon) is tested against SQLite, warnd's default store.
        fast = [] if self.durable else ["-F", "-c synchronous_commit=off", "-c full_page_writes=off"]
        where = [f"-p {self.port}", f"-k {self.workdir}", f"-c listen_addresses={self.host}"]
        options = " ".join([*where, *fast])
        self._run(
            "pg_ctl", "start", "-D", str(self.data), "-l", str(self.logfile),
            "-w", "-t", str(START_TIMEOUT_S), "-o", options,
        )  # fmt: skip

    def stop(self) -> None:
        """Stop the server (fast: connections are cut) and remove its directory."""
        if self._admin is not None:
            with contextlib.suppress(Exception):
                self._admin.close()
            self._admin = None
        workdir = self.workdir
        if workdir is None:
            return
        atexit.unregister(self.stop)
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError):
                self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w")
        self.workdir = None
        shutil.rmtree(workdir, ignore_errors=True)

    def pause(self) -> None:
        """Stop the server, keeping its data and port (a database server restarted or down)."""
        if self._admin is not None:
            with contextlib.suppress(Exception):
                self._admin.close()
            self._admin = None
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w")

    def resume(self) -> None:
        """Start the paused server again on the same port."""
        self._pg_ctl_start()

    # -- databases ------------------------------------------------------------------------------

    def url(self, dbname: str) -> str:
        """The conninfo URL of one of the cluster's databases."""
        return f"postgresql://postgres@{self.host}:{self.port}/{dbname}"

    def new_database(self, template: str | None = None) -> str:
        """A fresh database (a unique name), empty or a copy of `template` (a URL); its conninfo URL."""
        name = f"warnd_test_{next(self._names)}"
        copy = f" TEMPLATE {template.rsplit('/', 1)[1]}" if template else ""
        self._admin_execute(f"CREATE DATABASE {name}{copy}")
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop a database new_database() made, cutting connections a test left open."""
        name = url.rsplit("/", 1)[1]
        self._admin_execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def _admin_execute(self, sql: str) -> None:
        """A statement on the `postgres` database, outside any transaction (CREATE DATABASE)."""
        if self.workdir is None:
            raise RuntimeError("the cluster is not running: start() it first")
        if self._admin is None:
            # Imported here: the rest of the suite does not need psycopg installed.
            import psycopg

            self._admin = psycopg.connect(self.url("postgres"), autocommit=True)
        self._admin.execute(sql)

    # -- helpers --------------------------------------------------------------------------------

    @property
    def data(self) -> Path:
        """The cluster's data directory."""
        assert self.workdir is not None
        return self.workdir / "data"

    @property
    def logfile(self) -> Path:
        """The server's log (pg_ctl -l)."""
        assert self.workdir is not None
        return self.workdir / "postgres.log"

    def log_text(self) -> str:
        """The server's log so far ('' if none), for a failure message."""
        try:
            return self.logfile.read_text(errors="replace")
        except (OSError, AssertionError):
            return ""

    def _run(self, program: str, *args: str) -> None:
        """Run one of the server's programs, as the postgres user when we are root."""
        command = [str(self.bindir / program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        # No PG* variables from the caller's shell: they would point the tools elsewhere.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        try:
            subprocess.run(
                command, cwd=self.workdir, env=env, check=True, capture_output=True, text=True, timeout=120
            )
        except subprocess.CalledProcessError as exc:
            exc.add_note(f"{program} said: {exc.stdout}{exc.stderr}")
            raise
