"""A tiny, dependency-free client for systemd's sd_notify protocol.

The daemon tells systemd it is ready, reloading or stopping, publishes a one-line
status, and pings the service watchdog. The watchdog ping is a promise that the
daemon is *working*, not merely alive: warnd pings only from a loop that has just
checked that the event loop turns over promptly and the store answers a query, so
a wedged loop or a dead database stops the pings and systemd restarts the unit.
This module never decides that on its own and runs no timer; the caller does, at
about `watchdog_interval_s`.

Every call is a cheap no-op when systemd did not set `NOTIFY_SOCKET` (tests, a
shell, another supervisor). Send errors never reach the caller: a notification is
advisory, and a daemon that crashed because it could not say "I am fine" would be
the worse failure. The first error of a run of failures is logged as
`sdnotify.failed`.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping, MutableMapping

import structlog

log = structlog.get_logger(__name__)

# Variables systemd hands a notify-type service; cleared from the environment on
# request so helpers we spawn (espeak-ng, ffmpeg) cannot speak for us.
_ENV_KEYS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def _parse_address(value: str) -> str | bytes | None:
    """Turn a NOTIFY_SOCKET value into a sendto() address, or None if unsupported."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        # Linux abstract namespace: a leading NUL instead of the "@".
        return b"\0" + value[1:].encode()
    # "vsock:…" (systemd ≥ 253, for VMs) and anything else: not ours to speak.
    return None


def _parse_watchdog_usec(environ: Mapping[str, str], pid: int) -> int | None:
    """Return WATCHDOG_USEC if the watchdog is enabled for `pid`, else None."""
    raw_usec = environ.get("WATCHDOG_USEC", "").strip()
    if not raw_usec:
        return None
    try:
        usec = int(raw_usec)
    except ValueError:
        return None
    if usec <= 0:
        return None
    raw_pid = environ.get("WATCHDOG_PID", "").strip()
    # Like sd_watchdog_enabled(): WATCHDOG_PID names the process the watchdog is
    # meant for; when it is another process (we were forked or exec'd by it),
    # pinging would hide that process's hang.
    if raw_pid:
        try:
            if int(raw_pid) != pid:
                return None
        except ValueError:
            return None
    return usec


# systemd reads at most 4096 bytes of a notification and drops a longer one whole,
# READY=1 and all; 1000 characters are at most 4000 bytes of UTF-8 with the keys.
STATUS_MAX_CHARS = 1000


def _one_line(text: str) -> str:
    """Status text on one line, short enough to arrive."""
    # The protocol is newline-separated KEY=VALUE: a newline in the text would
    # start a bogus assignment.
    line = " ".join(text.splitlines())
    return line if len(line) <= STATUS_MAX_CHARS else line[: STATUS_MAX_CHARS - 1] + "…"


class Notifier:
    """Send sd_notify messages to systemd over a non-blocking datagram socket.

    Args:
        address: the NOTIFY_SOCKET value ("/run/systemd/notify", or "@name" for an
            abstract socket); None makes every method a no-op.
        watchdog_usec: the watchdog timeout systemd set for this process, or None
            when the watchdog is off or meant for another process.
    """

    def __init__(self, address: str | None = None, watchdog_usec: int | None = None) -> None:
        """Remember where to send; the socket is opened on the first message."""
        self._address_text = address
        self._address = _parse_address(address) if address else None
        self._watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None
        # True after an error has been logged, until a send succeeds again, so a
        # missing socket logs once instead of every watchdog interval.
        self._failing = False
        if address and self._address is None:
            log.warning("sdnotify.failed", socket=address, error="unsupported address")
            self._failing = True

    @classmethod
    def from_env(
        cls,
        environ: MutableMapping[str, str] | Mapping[str, str] = os.environ,
        *,
        unset_environment: bool = False,
    ) -> Notifier:
        """Build a Notifier from NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID."""
        address = environ.get("NOTIFY_SOCKET") or None
        watchdog_usec = _parse_watchdog_usec(environ, os.getpid())
        if unset_environment and isinstance(environ, MutableMapping):
            for key in _ENV_KEYS:
                environ.pop(key, None)
        return cls(address, watchdog_usec if address else None)

    @property
    def enabled(self) -> bool:
        """Whether there is a notify socket to talk to."""
        return self._address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """Seconds between watchdog pings (half the timeout), None when off."""
        if self._watchdog_usec is None:
            return None
        # Half the timeout, as sd_watchdog_enabled(3) recommends: one late ping
        # (a slow store check, a GC pause) must not get a healthy daemon killed.
        return self._watchdog_usec / 2 / 1_000_000

    def ready(self, status: str | None = None) -> bool:
        """Tell systemd start-up (or a reload) has finished, with a status line if given.

        Both go in one datagram, so `systemctl status` never shows the reload finished with the
        previous status (a failed reload's text) still beside it.
        """
        if status is None:
            return self._send("READY=1")
        return self._send(f"READY=1\nSTATUS={_one_line(status)}")

    def stopping(self) -> bool:
        """Tell systemd a clean shutdown has begun."""
        return self._send("STOPPING=1")

    def reloading(self) -> bool:
        """Tell systemd a reload has begun; send ready() when it is done."""
        # MONOTONIC_USEC lets systemd ≥ 253 (Type=notify-reload) match this
        # message to the reload it asked for; older versions ignore the field.
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self._send(f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec}")

    def status(self, text: str) -> bool:
        """Publish a one-line status shown by `systemctl status`."""
        return self._send(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        """Ping the watchdog; call only right after a successful health check."""
        if self._watchdog_usec is None:
            return False
        return self._send("WATCHDOG=1")

    def close(self) -> None:
        """Close the socket; later calls reopen it."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send(self, message: str) -> bool:
        """Send one datagram; return whether the kernel took it, never raise."""
        if self._address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
                )
            self._sock.sendto(message.encode(), self._address)
        except OSError as exc:
            # Missing socket, full queue (EAGAIN: systemd is busy; a dropped
            # ping is retried by the next one), permission denied: advisory only.
            if not self._failing:
                log.warning(
                    "sdnotify.failed",
                    socket=self._address_text,
                    notification=message.split("=", 1)[0],
                    error=f"{type(exc).__name__}: {exc}",
                )
                self._failing = True
            return False
        self._failing = False
        return True
