"""The shared MQTT link against a real Mosquitto: routing by topic filter, plain and coroutine handlers."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import ssl
import subprocess
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from tests.support.mqtt import Broker, mosquitto_binary
from tests.support.process import ROOT
from tests.support.wait import until
from warnd.config import MqttSettings
from warnd.mqtt import topics as topics_module
from warnd.mqtt.link import READ_BYTES, MqttLink
from warnd.mqtt.topics import matches


def test_topic_filters_follow_mqtt_wildcards() -> None:
    """`+` is one level, `#` the rest including the parent level; nothing else is a wildcard."""

    def m(topic: str, topic_filter: str) -> bool:
        return matches(topic.split("/"), topic_filter.split("/"))

    assert m("warnd/v1/device/spk-1/ack", "warnd/v1/device/+/ack")
    assert not m("warnd/v1/device/spk-1/status", "warnd/v1/device/+/ack")
    assert m("cap/a/b", "cap/#") and m("cap", "cap/#") and m("x/y", "#")
    assert not m("a/b", "a/b/c") and not m("a/b/c", "a/b") and not m("a/b", "+")
    assert m("a/", "a/+")


async def test_plain_and_coroutine_handlers_and_shared_subscriptions(broker: Broker) -> None:
    """Plain handlers get messages as they arrive, coroutine handlers in order; $share filters match."""
    link = MqttLink(MqttSettings(url=broker.url, client_id="link-test"), clean_session=True, name="test")
    plain: list[str] = []
    ordered: list[bytes] = []
    shared: list[str] = []

    async def slow(message: aiomqtt.Message) -> None:
        await asyncio.sleep(0.01 if message.payload == b"1" else 0)  # the first is slowest
        ordered.append(bytes(message.payload))  # type: ignore[arg-type]

    link.subscribe("t/plain/+", lambda m: plain.append(str(m.topic)))
    link.subscribe("t/ordered", slow)
    link.subscribe("$share/g/t/shared/#", lambda m: shared.append(str(m.topic)))
    task = asyncio.create_task(link.run_loop())
    try:
        await link.wait_connected(10)
        async with aiomqtt.Client(broker.host, broker.port, identifier="link-test-pub") as pub:
            await pub.publish("t/plain/a", b"x", qos=1)
            for i in range(1, 6):
                await pub.publish("t/ordered", str(i).encode(), qos=1)
            await pub.publish("t/shared/a/b", b"x", qos=1)
            await pub.publish("t/other", b"x", qos=1)

            async def done() -> Any:
                return plain and len(ordered) == 5 and shared

            await until(done, 4, what="every subscribed message")
        assert plain == ["t/plain/a"]
        assert ordered == [b"1", b"2", b"3", b"4", b"5"]
        assert shared == ["t/shared/a/b"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_cancel_that_arrives_with_the_puback_still_cancels(broker: Broker) -> None:
    """Python 3.11's wait_for drops a cancel that comes with the reply; the link raises it anyway.

    A task cancelled at that moment ran on as if never cancelled, so stopping it (a test's
    board, a simulator going offline, the daemon's shutdown) could wait forever.
    """
    link = MqttLink(MqttSettings(url=broker.url, client_id="link-cancel"), clean_session=True, name="test")
    run = asyncio.create_task(link.run_loop())
    try:
        await link.wait_connected(10)
        for _ in range(20):
            pub = asyncio.create_task(link.publish("t/cancel", b"x"))
            # aiomqtt waits for the PUBACK in an inner task (asyncio.wait_for on Event.wait()).
            inner: list[asyncio.Task[Any]] = []
            while not inner and not pub.done():
                await asyncio.sleep(0)
                inner = [t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "Event.wait"]
            if pub.done() or inner[0].done():
                await pub
                continue
            # Cancel once the PUBACK is in: wait_for has been woken but pub has not run yet.
            inner[0].add_done_callback(lambda _, pub=pub: pub.cancel())
            with pytest.raises(asyncio.CancelledError):
                await pub
            break
        else:
            pytest.fail("never caught a publish waiting for its PUBACK")
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)


async def test_a_cancel_kept_on_purpose_does_not_fail_later_publishes(broker: Broker) -> None:
    """Code that catches a cancel and carries on (a speaker told to stop) can still publish."""
    link = MqttLink(MqttSettings(url=broker.url, client_id="link-kept"), clean_session=True, name="test")
    run = asyncio.create_task(link.run_loop())
    try:
        await link.wait_connected(10)

        async def stopped_then_reports() -> int:
            with contextlib.suppress(asyncio.CancelledError):  # handled here, without uncancel()
                await asyncio.sleep(10)
            for _ in range(3):
                await link.publish("t/kept", b"x")
            return 3

        task = asyncio.create_task(stopped_then_reports())
        await asyncio.sleep(0.01)
        task.cancel()
        assert await task == 3
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)


def self_signed(where: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own CA, and its key."""
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
async def test_a_burst_is_read_many_packets_a_read_and_over_several_loop_iterations(
    tmp_path: Path, tls: bool
) -> None:
    """A backlog of messages is handed to paho a buffer at a time, and the loop runs between buffers.

    paho alone reads one packet per reader callback when nothing is in flight (four syscalls
    each), or up to one per message in flight for as long as the socket has data (the loop
    stalled 0.3–0.8 s in a fan-out). Over TLS, bytes the TLS layer has decrypted but paho has
    not taken must not wait for the socket to become readable again (they would never arrive).
    Counted in loop iterations, not time.
    """
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed (make test installs it)")
    cert_key = self_signed(tmp_path) if tls else None
    broker = Broker(tmp_path, tls=cert_key)
    broker.start()
    try:
        await burst_over_iterations(broker, cert_key[0] if cert_key else None)
    finally:
        broker.stop()


async def burst_over_iterations(broker: Broker, ca_file: Path | None) -> None:
    """2,000 messages from a backlog: how many each pass of the event loop handled."""
    settings = MqttSettings(url=broker.url, client_id="link-burst", ca_file=ca_file)
    tls = ca_file is not None
    count, payload = 2000, b"x" * 100
    packet = 2 + 2 + len("t/burst/0000") + 2 + len(payload)  # header, topic length, topic, packet id
    per_read = READ_BYTES // packet + 1
    # A persistent session that is away while the burst is published: the broker holds all of it.
    away = MqttLink(settings, name="test")
    away.subscribe("t/burst/+", lambda m: None)
    run = asyncio.create_task(away.run_loop())
    await away.wait_connected(10)
    await asyncio.sleep(0.2)  # the SUBACK
    run.cancel()
    await asyncio.gather(run, return_exceptions=True)
    context = ssl.create_default_context(cafile=str(ca_file)) if tls else None
    publisher = aiomqtt.Client(broker.host, broker.port, identifier="link-burst-pub", tls_context=context)
    async with publisher as pub:
        for i in range(count):
            await pub.publish(f"t/burst/{i:04d}", payload, qos=1)

    iteration = 0
    seen_at: list[int] = []

    async def ticks() -> None:
        nonlocal iteration
        while True:
            iteration += 1
            await asyncio.sleep(0)  # one pass of the event loop

    link = MqttLink(settings, name="test")
    link.subscribe("t/burst/+", lambda m: seen_at.append(iteration))
    ticker = asyncio.create_task(ticks())
    run = asyncio.create_task(link.run_loop())
    try:
        await until(lambda: len(seen_at) == count, 20, what="the whole burst")
    finally:
        for task in (run, ticker):
            task.cancel()
        await asyncio.gather(run, ticker, return_exceptions=True)
    per_iteration = [seen_at.count(i) for i in sorted(set(seen_at))]
    assert max(per_iteration) > 1, "one packet per reader callback: reads are not buffered"
    # Over TLS a read may also drain what the TLS layer holds: at most one record (16 KiB) more.
    bound = per_read + (16 * 1024 // packet + 1 if tls else 0)
    assert max(per_iteration) <= bound, f"{max(per_iteration)} messages handled without the loop running"
    assert len(per_iteration) >= count // bound


def imported_modules(path: Path) -> set[str]:
    """Every module a Python file imports, at any depth of its code."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def test_mqtt_package_needs_no_adapter_and_no_tool() -> None:
    """warnd.mqtt, the feeds and the simulator import no adapter; nothing in the daemon imports the tools."""
    warnd = ROOT / "warnd"
    for path in sorted(warnd.rglob("*.py")):
        modules = imported_modules(path)
        name = str(path.relative_to(ROOT))
        if any(path.is_relative_to(warnd / part) for part in ("mqtt", "tools", "feeds")):
            assert not any(m == "adapters" or m.startswith("adapters.") for m in modules), name
        if not path.is_relative_to(warnd / "tools") and path.name != "ctl.py":
            # warnctl runs the simulator for `simulate-speakers`: a command line, not the daemon.
            assert not any(m.startswith("warnd.tools") for m in modules), name


def test_filter_patterns_match_exactly_what_matches_does() -> None:
    """The link's compiled filters agree with the level-by-level `matches` on wildcards and edges."""
    filters = ["warnd/v1/device/+/ack", "a/#", "#", "+", "a/+/c", "$share/g/a/b", "a+b/c", "a/b"]
    topics = ["warnd/v1/device/spk-1/ack", "warnd/v1/device//ack", "warnd/v1/device/a/b/ack", "a", "a/",
              "a/b", "a/b/c", "a/x/c", "a+b/c", "ab/c", "b", "", "$share/g/a/b"]  # fmt: skip
    for f in filters:
        levels = f.split("/")
        pattern = topics_module.filter_pattern(levels)
        for t in topics:
            assert bool(pattern.fullmatch(t)) == topics_module.matches(t.split("/"), levels), (f, t)
