"""`warnd run` speaks sd_notify as systemd would hear it: READY, watchdog pings, STOPPING.

A real subprocess with NOTIFY_SOCKET pointing at a datagram socket in tmp_path and
WATCHDOG_USEC set. A second SQLite connection that holds the write lock plays a hung store:
the watchdog pings must stop while it holds it (so systemd would restart warnd) and resume after.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.county import write_directory
from tests.support.mqtt import Broker, free_port

ROOT = Path(__file__).resolve().parent.parent
# 1 s timeout: warnd pings every 0.5 s, so the test sees many pings in little real time.
WATCHDOG_USEC = 1_000_000


def received(sock: socket.socket, within_s: float) -> list[str]:
    """Every datagram that arrives within `within_s` seconds, each split into its lines."""
    out: list[str] = []
    deadline = time.monotonic() + within_s
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            out.extend(sock.recv(4096).decode().splitlines())
        except TimeoutError:
            break
    return out


def wait_for(sock: socket.socket, line: str, within_s: float) -> list[str]:
    """Datagram lines up to and including the first `line`; fails after `within_s` seconds."""
    seen: list[str] = []
    deadline = time.monotonic() + within_s
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            lines = sock.recv(4096).decode().splitlines()
        except TimeoutError:
            break
        seen.extend(lines)
        if line in lines:
            return seen
    raise AssertionError(f"no {line} within {within_s} s; got {seen}")


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A bound datagram socket standing in for systemd's notify socket."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    yield str(path), sock
    sock.close()


@pytest.mark.slow
def test_ready_watchdog_hung_store_and_stopping(
    tmp_path: Path, broker: Broker, notify_socket: tuple[str, socket.socket]
) -> None:
    """READY=1 once serving; WATCHDOG=1 only while the store is writable; RELOADING=1; STOPPING=1."""
    address, sock = notify_socket
    state = tmp_path / "state"
    config = tmp_path / "warnd.toml"
    config.write_text(
        f'state_dir = "{state}"\n'
        f"[http]\nport = {free_port()}\n"
        f'[mqtt]\nurl = "{broker.url}"\n'
        f'[directory]\npath = "{write_directory(tmp_path / "directory.toml")}"\n'
        "[wecom]\nenabled = false\n",
        encoding="utf-8",
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("WARND_", "NOTIFY_", "WATCHDOG_"))},
        "NOTIFY_SOCKET": address,
        "WATCHDOG_USEC": str(WATCHDOG_USEC),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "warnd.cli", "run", "--config", str(config)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        before_ready = wait_for(sock, "READY=1", 30)
        assert "WATCHDOG=1" not in before_ready, "pinged before it was ready"
        assert received(sock, 2.0).count("WATCHDOG=1") >= 2

        # The hung store: another connection takes the write lock and keeps it.
        db = sqlite3.connect(state / "warnd.db", timeout=10, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            received(sock, 1.0)  # a check already under way may still report healthy
            assert received(sock, 3.0).count("WATCHDOG=1") == 0, "pinged while the store hung"
        finally:
            db.execute("ROLLBACK")
            db.close()
        # Back to health: the daemon's busy timeout (5 s) runs out, then pings resume.
        wait_for(sock, "WATCHDOG=1", 15)

        # `systemctl reload`: RELOADING=1 (with MONOTONIC_USEC), then READY=1 once the new files are in.
        proc.send_signal(signal.SIGHUP)
        lines = wait_for(sock, "READY=1", 15)
        assert "RELOADING=1" in lines
        assert lines.index("RELOADING=1") < lines.index("READY=1")

        proc.send_signal(signal.SIGTERM)
        wait_for(sock, "STOPPING=1", 15)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        err = proc.stderr.read().decode() if proc.stderr else ""
        if proc.returncode not in (0, None):
            print(err)
