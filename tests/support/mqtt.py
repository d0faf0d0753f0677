"""A real Mosquitto broker on a free loopback port, started and stopped by tests."""

from __future__ import annotations

import asyncio
import getpass
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mosquitto_binary() -> str | None:
    """Path of the mosquitto binary (Debian puts it in /usr/sbin)."""
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


async def stop_client_task(task: asyncio.Task[Any]) -> None:
    """Cancel a task that drives a bare aiomqtt client, and wait until it has ended.

    aiomqtt waits for PUBACK and SUBACK with `asyncio.wait_for`, which on Python 3.11 drops a
    cancel that arrives together with the reply, so one `cancel()` may not stop the task (warnd's
    own link re-raises it; a test's bare client does not). An error it ended with is raised.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)
    if not task.cancelled():
        task.result()


class Broker:
    """One mosquitto process; `stop()` and `start()` simulate an outage on the same port.

    Args:
        workdir: where the config, the log and (with persistence) mosquitto.db go.
        port: the port to listen on (a free one if None).
        persistence: keep sessions, subscriptions and queued messages in `workdir/mosquitto.db`
            across `stop()` and `start()`, as deploy.md's broker does (saved when it stops).
        max_inflight_messages: QoS-1 messages in flight to each client (0: no limit).
        max_queued_messages: QoS-1 messages queued for each client beyond those in flight.
        tls: (certificate, key) files: the listener speaks TLS (`url` is then mqtts://).
    """

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        *,
        persistence: bool = False,
        # Generous in-flight and queue limits: benchmarks push 10,000 QoS-1 messages at once.
        max_inflight_messages: int = 0,
        max_queued_messages: int = 100000,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        """Write the config; `start()` runs it."""
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.workdir = workdir
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        self.persistence = persistence
        self.tls = tls
        listener = f"listener {self.port} 127.0.0.1\n"
        if tls is not None:
            listener += f"certfile {tls[0]}\nkeyfile {tls[1]}\n"
        # The trailing slash matters: mosquitto joins it to mosquitto.db as it is.
        kept = (
            f"persistence true\npersistence_location {workdir}/\n" if persistence else "persistence false\n"
        )
        self.conf.write_text(
            # Started as root, mosquitto becomes the `mosquitto` user, who cannot write mosquitto.db
            # into the test's directory: it stays who started it.
            f"{listener}allow_anonymous true\nuser {getpass.getuser()}\n{kept}"
            f"max_inflight_messages {max_inflight_messages}\nmax_queued_messages {max_queued_messages}\n"
            f"log_dest file {self.log}\nlog_type error\nlog_type warning\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """mqtt://127.0.0.1:PORT (mqtts:// with TLS)."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> None:
        """Start mosquitto and wait until it accepts connections."""
        binary = mosquitto_binary()
        if binary is None:
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
        self.proc = subprocess.Popen(
            [binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log.read_text() if self.log.exists() else ''}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not listen on {self.port}")

    def stop(self) -> None:
        """Stop the broker (an outage)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
