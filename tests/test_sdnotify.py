"""sd_notify client against real AF_UNIX datagram sockets."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from warnd.sdnotify import Notifier


def _receive(sock: socket.socket) -> str:
    """Read one datagram, failing the test rather than hanging if none came."""
    sock.settimeout(2.0)
    return sock.recv(4096).decode()


def _assert_nothing_sent(sock: socket.socket) -> None:
    """Assert the socket queue is empty."""
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(4096)


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A bound datagram socket in tmp_path and its NOTIFY_SOCKET value."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    yield str(path), sock
    sock.close()


@pytest.fixture
def abstract_socket() -> Iterator[tuple[str, socket.socket]]:
    """A bound abstract-namespace datagram socket and its "@name" value."""
    name = f"warnd-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    yield f"@{name}", sock
    sock.close()


def test_path_socket_receives_exact_datagrams(notify_socket):
    """ready/watchdog/status/stopping arrive as the exact protocol lines."""
    address, sock = notify_socket
    notifier = Notifier.from_env(
        {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    )
    assert notifier.enabled
    assert notifier.ready()
    assert _receive(sock) == "READY=1"
    assert notifier.watchdog()
    assert _receive(sock) == "WATCHDOG=1"
    assert notifier.status("3 warnings active")
    assert _receive(sock) == "STATUS=3 warnings active"
    assert notifier.stopping()
    assert _receive(sock) == "STOPPING=1"
    _assert_nothing_sent(sock)
    notifier.close()


def test_abstract_socket_receives_datagrams(abstract_socket):
    """An "@name" NOTIFY_SOCKET reaches the abstract-namespace socket."""
    address, sock = abstract_socket
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "2000000"})
    assert notifier.ready()
    assert _receive(sock) == "READY=1"
    # No WATCHDOG_PID: the watchdog is ours.
    assert notifier.watchdog()
    assert _receive(sock) == "WATCHDOG=1"
    notifier.close()


def test_reloading_carries_monotonic_usec(notify_socket):
    """RELOADING=1 comes with a current CLOCK_MONOTONIC timestamp in µs."""
    address, sock = notify_socket
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address})
    before_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading()
    after_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = _receive(sock).split("\n")
    assert first == "RELOADING=1"
    key, value = second.split("=")
    assert key == "MONOTONIC_USEC"
    assert before_usec <= int(value) <= after_usec
    notifier.close()


def test_status_is_kept_on_one_line(notify_socket):
    """A newline in the status text cannot inject another assignment."""
    address, sock = notify_socket
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address})
    notifier.status("broker down\nREADY=1")
    assert _receive(sock) == "STATUS=broker down READY=1"
    notifier.close()


def test_watchdog_interval_is_half_the_timeout(notify_socket):
    """WATCHDOG_USEC=2000000 gives a 1 s ping interval."""
    address, _ = notify_socket
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "2000000"})
    assert notifier.watchdog_interval_s == 1.0


def test_watchdog_unset_means_no_interval_and_no_ping(notify_socket):
    """Without WATCHDOG_USEC there is no interval and watchdog() sends nothing."""
    address, sock = notify_socket
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address})
    assert notifier.watchdog_interval_s is None
    assert not notifier.watchdog()
    _assert_nothing_sent(sock)


def test_watchdog_for_another_pid_is_not_ours(notify_socket):
    """WATCHDOG_PID naming another process disables our pings."""
    address, sock = notify_socket
    other_pid = os.getppid()
    assert other_pid != os.getpid()
    notifier = Notifier.from_env(
        {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(other_pid)}
    )
    assert notifier.watchdog_interval_s is None
    assert not notifier.watchdog()
    _assert_nothing_sent(sock)
    # Other notifications are unaffected.
    assert notifier.ready()
    assert _receive(sock) == "READY=1"


@pytest.mark.parametrize("value", ["0", "-5", "soon", ""])
def test_bad_watchdog_usec_is_off(notify_socket, value):
    """A zero, negative or garbled WATCHDOG_USEC means no watchdog."""
    address, _ = notify_socket
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": value})
    assert notifier.watchdog_interval_s is None


def test_no_notify_socket_is_a_no_op():
    """Outside systemd every call returns quietly without sending."""
    notifier = Notifier.from_env({"WATCHDOG_USEC": "2000000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval_s is None
    with capture_logs() as logs:
        assert not notifier.ready()
        assert not notifier.watchdog()
        assert not notifier.status("idle")
        assert not notifier.reloading()
        assert not notifier.stopping()
        notifier.close()
    assert logs == []


def test_missing_socket_never_raises_and_logs_once(tmp_path):
    """Sends to a path nobody listens on fail quietly, logged once per failure run."""
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "gone.sock"), "WATCHDOG_USEC": "2000000"})
    with capture_logs() as logs:
        assert not notifier.ready()
        assert not notifier.watchdog()
        assert not notifier.watchdog()
        assert not notifier.stopping()
    failures = [entry for entry in logs if entry["event"] == "sdnotify.failed"]
    assert len(failures) == 1
    assert failures[0]["log_level"] == "warning"
    assert failures[0]["notification"] == "READY"
    notifier.close()


def test_logging_rearms_after_recovery(tmp_path):
    """After a send succeeds again, the next failure is logged again."""
    path = tmp_path / "notify.sock"
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(path)})
    with capture_logs() as logs:
        notifier.ready()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(path))
            assert notifier.status("back")
            assert _receive(sock) == "STATUS=back"
        path.unlink()
        notifier.stopping()
    assert [entry["event"] for entry in logs] == ["sdnotify.failed", "sdnotify.failed"]
    notifier.close()


def test_unsupported_address_is_a_logged_no_op():
    """A vsock NOTIFY_SOCKET (systemd ≥ 253 in VMs) is not spoken, logged once."""
    with capture_logs() as logs:
        notifier = Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"})
        assert not notifier.enabled
        assert not notifier.ready()
    assert [entry["event"] for entry in logs] == ["sdnotify.failed"]


def test_unset_environment_removes_the_variables(notify_socket):
    """unset_environment keeps child processes from inheriting the socket."""
    address, sock = notify_socket
    environ = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "2000000", "PATH": "/usr/bin"}
    notifier = Notifier.from_env(environ, unset_environment=True)
    assert environ == {"PATH": "/usr/bin"}
    assert notifier.watchdog_interval_s == 1.0
    assert notifier.watchdog()
    assert _receive(sock) == "WATCHDOG=1"
    notifier.close()


def test_full_queue_does_not_block_or_raise(notify_socket):
    """When the receiver never reads, sends fail fast instead of blocking the loop."""
    address, _ = notify_socket
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "2000000"})
    started = time.monotonic()
    with capture_logs() as logs:
        results = [notifier.watchdog() for _ in range(5000)]
    assert time.monotonic() - started < 5
    assert results[0]
    assert not all(results)
    assert [entry["event"] for entry in logs] == ["sdnotify.failed"]
    notifier.close()


def test_ready_with_status_is_one_datagram(notify_socket):
    """READY=1 and the status arrive together: never a finished reload beside a stale status."""
    address, sock = notify_socket
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address})
    assert notifier.ready("reload failed: /etc/warnd/warnd.toml: dispatch.grace_s: bad\nREADY=0")
    assert (
        _receive(sock)
        == "READY=1\nSTATUS=reload failed: /etc/warnd/warnd.toml: dispatch.grace_s: bad READY=0"
    )
    _assert_nothing_sent(sock)
    notifier.close()


def test_a_long_status_is_cut_to_fit_one_notification(notify_socket):
    """systemd drops a notification over 4096 bytes whole: a long status is cut so READY=1 still arrives."""
    address, sock = notify_socket
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address})
    assert notifier.ready("重载失败" * 2000)
    message = _receive(sock)
    assert message.startswith("READY=1\nSTATUS=重载失败")
    assert message.endswith("…")
    assert len(message.encode()) < 4096
    notifier.close()
