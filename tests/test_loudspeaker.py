"""Village loudspeakers end to end: warnd's MQTT adapter, a real Mosquitto, simulated speakers.

The pipeline runs in this process on a fake clock (driven by `run_until_idle`); MQTT, HTTP and
the speakers are real and run in real time, so waits for them are bounded polls.
"""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydub import AudioSegment

from adapters.loudspeaker import LoudspeakerAdapter, spoken
from tests.support.county import village_code, write_directory
from tests.support.harness import Driven, warning_body
from tests.support.harness import test_settings as make_settings
from tests.support.mqtt import Broker
from tests.support.wait import until
from warnd.adapter import Message
from warnd.api import make_app
from warnd.app import Services, build
from warnd.audio import AudioCache
from warnd.clock import FakeClock
from warnd.mqtt.topics import village_speakers
from warnd.store import Delivery, Store
from warnd.tools.simulator import SpeakerSimulator

VILLAGES = [village_code(0), village_code(1)]


class Rig(Driven):
    """warnd with the loudspeaker adapter on a real broker, plus simulated speakers."""

    def __init__(self, tmp_path: Path, broker: Broker, *, villages: int = 2, speakers: int = 3) -> None:
        """Write the directory and settings."""
        self.tmp_path, self.broker = tmp_path, broker
        self.directory_path = write_directory(
            tmp_path / "directory.toml", villages=villages, speakers=speakers, leds=0
        )
        self.settings = make_settings(
            tmp_path,
            self.directory_path,
            mqtt={"url": broker.url, "reconnect_max_s": 1.0, "client_id": "warnd-test"},
            # A short backoff: the outage test waits out retries on the fake clock.
            dispatch={"backoff_base_s": 1.0, "backoff_cap_s": 4.0},
            tts={"repeat": 1, "pause_ms": 200},
        )
        self.clock = FakeClock()
        self.tasks: list[asyncio.Task[Any]] = []
        self.daemon: Services
        self.client: TestClient
        self.sim: SpeakerSimulator
        self._stack = AsyncExitStack()

    @property
    def store(self) -> Store:
        """The running warnd's store."""
        return self.daemon.store

    async def _start_warnd(self) -> None:
        """Build warnd with the loudspeaker channel, serve its API, start its loops."""
        self._stack = AsyncExitStack()
        self.daemon = await self._stack.enter_async_context(
            build(self.settings, [LoudspeakerAdapter], clock=self.clock)
        )
        self.client = TestClient(TestServer(make_app(self.daemon), host="127.0.0.1"))
        await self.client.start_server()
        self._stack.push_async_callback(self.client.close)
        self.settings.http.public_url = str(self.client.make_url("")).rstrip("/")
        self.tasks = [asyncio.create_task(coro, name=name) for name, coro in self.daemon.background()]

    async def _stop_warnd(self) -> None:
        """Cancel warnd's loops first, so no ack is half-applied, then close what build() opened."""
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self._stack.aclose()

    async def start(self) -> Rig:
        """Start warnd, its API and the speakers; wait until all are up."""
        await self._start_warnd()
        directory = self.daemon.directory()
        speakers = {s: v.code for v in directory.villages.values() if not v.test for s in v.speakers}
        self.sim = SpeakerSimulator(self.broker.url, speakers, now=self.clock.now, reconnect_max_s=1.0)
        self.sim.start()
        await self.wait_up()
        return self

    @property
    def link(self) -> Any:
        """warnd's MQTT link."""
        return self.adapter.link

    @property
    def adapter(self) -> LoudspeakerAdapter:
        """The adapter under test."""
        return self.daemon.adapters["loudspeaker"]  # type: ignore[return-value]

    async def wait_up(self) -> None:
        """warnd and every running speaker connected, and warnd has seen them online."""
        await until(lambda: self.link.connected and self.sim.connected(), what="connections")
        online = set(self.sim._running)

        async def seen() -> bool:
            rows = {r["id"]: r["online"] for r in await self.store.devices()}
            return all(rows.get(d) == 1 for d in online)

        await until(seen, what="device statuses")

    async def restart_warnd(self) -> None:
        """warnd stops without a word (its loops cancelled, what it held in memory gone) and starts
        again on the same store, with the same client id: its broker session carries over."""
        await self._stop_warnd()
        await self._start_warnd()
        await until(lambda: self.link.connected, what="warnd connected again")

    async def close(self) -> None:
        """Stop everything started: warnd's loops first, so no ack is half-applied at close."""
        await self._stop_warnd()
        await self.sim.aclose()

    async def coverage(self, warning_id: str) -> dict[str, int]:
        """The warning's loudspeaker coverage."""
        return (await self.get(warning_id))["coverage"]["loudspeaker"]

    async def wait_acknowledged(self, warning_id: str, n: int) -> None:
        """Until n speakers confirmed playing."""

        async def done() -> bool:
            return (await self.coverage(warning_id))["acknowledged"] == n

        await until(done, timeout_s=30, what=f"{n} played acks")


@pytest.fixture
async def rig(tmp_path: Path, broker: Broker) -> AsyncIterator[Rig]:
    """Two villages of three speakers each, all online."""
    r = await Rig(tmp_path, broker).start()
    yield r
    await r.close()


def decode(data: bytes) -> AudioSegment:
    """An MP3 decoded by ffmpeg."""
    return AudioSegment.from_file(io.BytesIO(data), format="mp3")


async def test_red_warning_is_played_and_confirmed_by_every_speaker(rig: Rig) -> None:
    """Two villages × 3 speakers: one village command each, audio verified, six played acks."""
    wid = await rig.issue(warning_body(area={"codes": VILLAGES}))
    await rig.run_until_idle()
    await rig.wait_acknowledged(wid, 6)
    cov = await rig.coverage(wid)
    assert cov == {"expected": 6, "sent": 6, "delivered": 6, "acknowledged": 6, "failed": 0, "offline": 0}
    sha = set()
    for s in rig.sim.speakers.values():
        assert list(s.commands.values()) == [1], s.id  # one command, once
        (cmd,) = s.played
        # The village topic carried it: the ack topic is the shared template.
        assert cmd["ack_topic"] == "warnd/v1/device/{device_id}/ack"
        assert cmd["kind"] == "play"
        assert cmd["level"] == "red"
        assert cmd["severity_code"] == 1
        assert cmd["drill"] is False
        assert cmd["warning_id"] == wid
        assert cmd["title"] == warning_body()["headline"]
        assert "红色预警" in cmd["text"]
        assert warning_body()["instruction"] in cmd["text"]
        assert s.verified[cmd["msg_id"]] == cmd["audio"]["sha256"]
        sha.add(cmd["audio"]["sha256"])
    assert len(sha) == 1
    msg_ids = {next(iter(s.commands)) for s in rig.sim.speakers.values()}
    assert len(msg_ids) == 2  # one per village
    # The audio is served without a token, is real speech after a tone, and not silence.
    audio = next(iter(rig.sim.speakers.values())).played[0]["audio"]
    url = audio["url"].removeprefix(rig.settings.http.public_url)
    resp = await rig.client.get(url)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "audio/mpeg"
    seg = decode(await resp.read())
    assert abs(seg.duration_seconds - audio["duration_s"]) < 0.2
    assert seg.duration_seconds > 3.0
    assert seg.dBFS > -30
    # Devices: the six speakers online, the drill speaker never heard from.
    resp = await rig.client.get("/api/v1/devices", headers=rig.headers("viewer"))
    devices = {d["id"]: d for d in (await resp.json())["devices"]}
    assert sorted(d for d, v in devices.items() if v["state"] == "online") == sorted(rig.sim.speakers)
    assert devices["spk-test-1"]["state"] == "unknown"
    assert all(devices[d]["last_seen"] for d in rig.sim.speakers)
    unauth = await rig.client.get("/api/v1/devices")
    assert unauth.status == 401


async def test_logs_say_one_line_per_village_command_not_per_speaker(
    rig: Rig, log_events: list[dict[str, Any]]
) -> None:
    """A village command is one `delivery.sent` line naming its receivers; acks are grouped alike.

    10,000 speakers logged one line each would trip journald's rate limit and lose other lines.
    """
    wid = await rig.issue(warning_body(area={"codes": VILLAGES}))
    await rig.run_until_idle()
    await rig.wait_acknowledged(wid, 6)

    def played_logged() -> int:
        return sum(
            e.get("receivers", 1)
            for e in log_events
            if e["event"] == "ack.received" and e["status"] == "played"
        )

    await until(
        lambda: played_logged() == 6,
        what="played acks logged",
    )
    sent = [e for e in log_events if e["event"] == "delivery.sent" and e["warning_id"] == wid]
    assert sorted(e["village"] for e in sent) == sorted(VILLAGES)
    assert all(e["receivers"] == 3 and e["channel"] == "loudspeaker" and e["msg_id"] for e in sent)
    played = [e for e in log_events if e["event"] == "ack.received" and e["status"] == "played"]
    assert {e["msg_id"] for e in played} == {e["msg_id"] for e in sent}
    # Grouped only within one batch of acks: never more lines than speakers, never a lost count.
    assert len(played) <= 6


async def test_audio_is_rendered_while_the_step_is_written_not_after_the_first_claim(
    rig: Rig, log_events: list[dict[str, Any]]
) -> None:
    """Planning a step starts its render: by the dispatcher's first claim the MP3 is on its way."""
    wid = await rig.issue(warning_body(area={"codes": VILLAGES}))
    assert await rig.daemon.scheduler.run_once() == 1  # the step is planned; nothing is sent yet
    await until(lambda: any(e["event"] == "audio.rendered" for e in log_events), what="audio rendered")
    rows = await rig.store.deliveries_for(wid)
    assert {r["state"] for r in rows if r["channel"] == "loudspeaker"} == {"pending"}
    # The send uses that render: one render for the warning, and the commands carry it.
    await rig.run_until_idle()
    await rig.wait_acknowledged(wid, 6)
    assert sum(e["event"] == "audio.rendered" for e in log_events) == 1
    shas = {s.played[0]["audio"]["sha256"] for s in rig.sim.speakers.values()}
    assert shas == {next(e for e in log_events if e["event"] == "audio.rendered")["sha256"]}


async def test_broker_outage_after_accept_delivers_exactly_once(
    rig: Rig, log_events: list[dict[str, Any]]
) -> None:
    """Broker down after the 202, back after warnd retried it: every speaker plays it, once per msg_id.

    While it is away nothing is claimed and no attempt is counted (a broker that is down is not a
    failure of the delivery), and /readyz says not ready.
    """
    wid = await rig.issue(warning_body(area={"codes": VILLAGES}))
    rig.broker.stop()
    await until(lambda: not rig.link.connected, what="warnd to notice the outage")
    await rig.run_until_idle()
    rows = [d for d in await rig.store.deliveries_for(wid) if d["channel"] == "loudspeaker"]
    assert {(d["state"], d["attempts"], d["last_error"]) for d in rows} == {("pending", 0, None)}
    resp = await rig.client.get("/readyz")
    assert resp.status == 503
    assert (await resp.json())["checks"]["adapter.loudspeaker"]["ok"] is False
    # A batch claimed just before the link went down is not sent, and its attempt is given back.
    claimed = await rig.store.claim(rig.clock.now(), 100, ["loudspeaker"])
    warning = await rig.store.get_warning(wid)
    outcomes = await rig.adapter.deliver([Message(d, warning or {}) for d in claimed], timeout_s=5)
    assert {(o.state, o.error, o.refund) for o in outcomes} == {("pending", "broker unavailable", True)}
    await rig.store.record([(o, None) for o in outcomes], rig.clock.now())
    rows = [d for d in await rig.store.deliveries_for(wid) if d["channel"] == "loudspeaker"]
    assert {(d["state"], d["attempts"], d["last_error"]) for d in rows} == {
        ("pending", 0, "broker unavailable")
    }
    # The outage lasts until warnd has retried the broker and failed three more times.
    def refused() -> int:
        return sum(e["event"] == "mqtt.connect_failed" and e["link"] == rig.link.name for e in log_events)

    await until(lambda: refused() >= 3, timeout_s=30, what="three failed reconnects")
    rig.broker.start()
    await rig.wait_up()
    await rig.run_until_idle()  # due at once: no backoff to wait out, nothing failed
    await rig.wait_acknowledged(wid, 6)
    rows = [d for d in await rig.store.deliveries_for(wid) if d["channel"] == "loudspeaker"]
    assert {d["attempts"] for d in rows} == {1}
    for s in rig.sim.speakers.values():
        assert list(s.commands.values()) == [1], (s.id, s.commands)
        assert len(s.played) == 1


async def test_cancel_stops_the_same_speakers_with_the_all_clear(rig: Rig) -> None:
    """Cancel: a stop command to every speaker that got the warning, with the spoken all-clear."""
    wid = await rig.issue(warning_body(area={"codes": [VILLAGES[0]]}))
    await rig.run_until_idle()
    await rig.wait_acknowledged(wid, 3)
    resp = await rig.client.post(f"/api/v1/warnings/{wid}/cancel", json={}, headers=rig.headers())
    assert resp.status == 202
    await rig.run_until_idle()
    reached = {s for s, v in rig.sim.speakers.items() if v.village == VILLAGES[0]}
    await until(lambda: all(rig.sim.speakers[s].stops for s in reached), what="stops")
    assert all(not rig.sim.speakers[s].stops for s in set(rig.sim.speakers) - reached)
    warning_audio = rig.sim.speakers[min(reached)].played[0]["audio"]["sha256"]
    for s in reached:
        (stop,) = rig.sim.speakers[s].stops
        assert stop["kind"] == "stop"
        assert stop["warning_id"] == wid
        assert "现在解除暴雨红色预警" in stop["text"]
        assert "立即转移" not in stop["text"]  # never the lifted warning's instruction
        assert stop["audio"]["sha256"] != warning_audio
    # Every stop is confirmed; coverage counts the warning, not the all-clear.
    await until(
        lambda: all(
            rig.sim.speakers[s].final.get(rig.sim.speakers[s].stops[0]["msg_id"]) == "played" for s in reached
        ),
        what="all-clear played",
    )
    assert (await rig.coverage(wid))["expected"] == 3


async def test_speaker_back_after_not_after_does_not_play(rig: Rig) -> None:
    """An offline speaker is counted offline, gets the command from its session later, and refuses it."""
    late = "spk-330502101201-2"
    await rig.sim.go_offline(late)

    async def offline() -> bool:
        return any(r["id"] == late and r["online"] == 0 for r in await rig.store.devices())

    await until(offline, what="offline status")
    expires = (rig.clock.now() + timedelta(hours=1)).isoformat()
    wid = await rig.issue(warning_body(expires=expires))
    await rig.run_until_idle()
    await rig.wait_acknowledged(wid, 2)
    cov = await rig.coverage(wid)
    assert cov["expected"] == 3
    assert cov["offline"] == 1
    rig.clock.advance(hours=2)  # past not_after; the expiry job has not run yet
    rig.sim.go_online(late)
    speaker = rig.sim.speakers[late]
    await until(lambda: speaker.refused, what="the stale command to be refused")
    assert speaker.played == []
    assert speaker.final[speaker.refused[0]] == "failed"
    assert (await rig.coverage(wid))["acknowledged"] == 2
    # The expiry sends a silent stop to every speaker that was sent the warning.
    await rig.run_until_idle()
    village = [s for s in rig.sim.speakers.values() if s.village == VILLAGES[0]]
    await until(lambda: all(s.stops for s in village), what="expiry stops")
    assert all(s.stops[0]["audio"] is None and s.final[s.stops[0]["msg_id"]] == "cancelled" for s in village)


async def test_partial_village_goes_per_device(rig: Rig, broker: Broker) -> None:
    """Deliveries for part of a village are published to each device's own topic."""
    seen: list[tuple[str, dict[str, Any]]] = []

    subscribed = asyncio.Event()

    async def watch() -> None:
        async with aiomqtt.Client(broker.host, broker.port, identifier="watcher") as c:
            await c.subscribe("warnd/v1/+/+/+", qos=1)  # returns once the broker's SUBACK is in
            subscribed.set()
            async for m in c.messages:
                if str(m.topic).endswith(("/cmd", "/speaker")):
                    seen.append((str(m.topic), json.loads(m.payload)))  # type: ignore[arg-type]

    watcher = asyncio.create_task(watch())
    await until(subscribed.is_set, what="the watcher's subscription")
    warning = {**warning_body(), "id": "W-partial", "status": "actual", "expires": None}
    code = VILLAGES[1]
    targets = [f"spk-{code}-1", f"spk-{code}-2"]
    msgs = [
        Message(
            Delivery(
                i, "m-partial", "W-partial", "issue", "warning", "loudspeaker", t, code, None, None, False, 1
            ),
            warning,
        )
        for i, t in enumerate(targets)
    ]
    receipts = await rig.adapter.send_batch(msgs)
    assert [r.state for r in receipts] == ["sent", "sent"]  # type: ignore[union-attr]
    whole = [
        Message(
            Delivery(
                9 + i,
                "m-whole",
                "W-partial",
                "issue",
                "warning",
                "loudspeaker",
                f"spk-{code}-{i + 1}",
                code,
                None,
                None,
                False,
                1,
            ),
            warning,
        )
        for i in range(3)
    ]
    await rig.adapter.send_batch(whole)
    await until(lambda: len(seen) >= 3, what="commands")
    watcher.cancel()
    village = [s for s in rig.sim.speakers.values() if s.village == code]
    await until(lambda: all(s.final.get("m-whole") == "played" for s in village), what="acks")
    await until(lambda: rig.adapter.hub.queue.empty(), what="acks applied")
    topics = sorted(t for t, _ in seen)
    assert topics == [*sorted(f"warnd/v1/device/{t}/cmd" for t in targets), village_speakers(code)]
    for topic, cmd in seen:
        if topic.endswith("/cmd"):
            assert cmd["ack_topic"] == topic.replace("/cmd", "/ack")
    # not_after falls back to now + max age when the warning has no expiry.
    assert seen[0][1]["not_after"] == (rig.clock.now() + timedelta(minutes=120)).isoformat(timespec="seconds")


@pytest.mark.allow_error_logs  # device.store_failed: the disk is full, on purpose
async def test_an_ack_warnd_could_not_store_is_delivered_again(
    rig: Rig, log_events: list[dict[str, Any]]
) -> None:
    """An ack is acknowledged to the broker only once it is stored: while the store cannot write it
    waits, kept by the broker; a warnd that dies meanwhile gets it again when it comes back."""
    db = sqlite3.connect(rig.settings.state_dir / "warnd.db")
    # Every write of an ack fails, as on a full disk (another connection's trigger is warnd's too).
    db.execute("CREATE TRIGGER full_disk BEFORE INSERT ON acks BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    db.commit()
    wid = await rig.issue(warning_body(area={"codes": [VILLAGES[0]]}))
    await rig.run_until_idle()
    village = [s for s in rig.sim.speakers.values() if s.village == VILLAGES[0]]
    await until(lambda: all("played" in s.final.values() for s in village), what="speakers played")
    await until(lambda: any(e["event"] == "device.store_failed" for e in log_events), what="the failed write")
    assert (await rig.coverage(wid))["acknowledged"] == 0

    await rig.restart_warnd()  # the acks it was holding die with it
    failures = lambda: sum(e["event"] == "device.store_failed" for e in log_events)  # noqa: E731
    await until(lambda: failures() == 2, what="the acks delivered again, and failing again")
    db.execute("DROP TRIGGER full_disk")
    db.commit()
    db.close()
    await rig.wait_acknowledged(wid, 3)
    assert any(e["event"] == "device.store_recovered" for e in log_events)
    # Each speaker played once; nothing was sent to it again (its acks came back, not a re-send).
    assert all(len(s.played) == 1 and list(s.commands.values()) == [1] for s in village)


def refused(rig: Rig, reason: str) -> float:
    """warnd_device_acks_refused_total for a reason."""
    value = rig.daemon.metrics.registry.get_sample_value(
        "warnd_device_acks_refused_total", {"reason": reason}
    )
    return value or 0.0


async def test_bad_acks_are_refused_counted_and_logged(
    rig: Rig, broker: Broker, log_events: list[dict[str, Any]]
) -> None:
    """Acks from unknown devices, for unknown msg_ids, or not JSON change nothing and break nothing."""
    wid = await rig.issue(warning_body(area={"codes": [VILLAGES[0]]}))
    async with aiomqtt.Client(broker.host, broker.port, identifier="intruder") as c:
        stray = json.dumps({"msg_id": "x", "status": "played"})
        await c.publish("warnd/v1/device/spk-nobody/ack", stray, qos=1)
        await c.publish("warnd/v1/device/spk-330502101201-1/ack", b"{not json", qos=1)
        await c.publish("warnd/v1/device/spk-330502101201-1/ack", json.dumps([1, 2]), qos=1)
        await c.publish(
            "warnd/v1/device/spk-330502101201-1/ack",
            json.dumps({"msg_id": "nope", "status": "played"}),
            qos=1,
        )
        await c.publish(
            "warnd/v1/device/spk-330502101201-2/ack", json.dumps({"msg_id": "x", "status": "dead"})
        )
    await until(
        lambda: (
            refused(rig, "unknown_device") == 1
            and refused(rig, "malformed") == 2
            and refused(rig, "unmatched") == 1
            and refused(rig, "unknown_status") == 1
        ),
        what="refusals counted",
    )
    lines = [e for e in log_events if e["event"] == "ack.refused"]
    # One line per device (the three refusals of speaker 1 within a minute are one line).
    assert sorted((e["target"], e["known_device"]) for e in lines) == [
        ("spk-330502101201-1", True),
        ("spk-330502101201-2", True),
        ("spk-nobody", False),
    ]
    await rig.run_until_idle()
    await rig.wait_acknowledged(wid, 3)


async def test_a_flood_of_hostile_acks_is_one_line_a_minute_per_device(
    rig: Rig, broker: Broker, log_events: list[dict[str, Any]]
) -> None:
    """Thousands of refused acks, from one speaker and from made-up devices: every one counted,
    a handful of log lines; deeply nested ones in the same batches as real acks spoil nothing."""
    deep = b'{"msg_id": "x", "status": "played", "detail": ' + b"[" * 7000 + b"]" * 7000 + b"}"
    nested = json.dumps({"msg_id": "x", "status": "played", "detail": json.loads("[" * 50 + "]" * 50)})
    wid = await rig.issue(warning_body(area={"codes": VILLAGES}))
    async with aiomqtt.Client(broker.host, broker.port, identifier="intruder") as c:
        # Deeply nested acks go out as the fan-out's real acks come in: they share batches.
        await rig.daemon.scheduler.run_once()
        sending = asyncio.create_task(rig.daemon.dispatcher.run_once())
        for i in range(20):
            await c.publish("warnd/v1/device/spk-330502101201-1/ack", deep, qos=1)
            await c.publish(f"warnd/v1/device/spk-330502101202-{i % 3 + 1}/ack", nested, qos=1)
        await sending
        for i in range(1000):
            await c.publish("warnd/v1/device/spk-330502101201-2/ack", b"[]", qos=1)
            await c.publish(f"warnd/v1/device/intruder-{i}/ack", b"{}", qos=1)
    await until(
        lambda: (
            refused(rig, "too_deep") == 40
            and refused(rig, "malformed") + refused(rig, "unknown_device") == 2000
        ),
        what="every refusal counted",
    )
    await rig.wait_acknowledged(wid, 6)
    lines = [e for e in log_events if e["event"] == "ack.refused"]
    # One line each: speakers 1 and 2 of village 1, the three of village 2, all the intruders.
    assert len(lines) == 6, lines
    assert sum(e["unlogged"] for e in lines) == 0  # the rest are counted, not yet reported
    assert not [e for e in log_events if e["event"] in ("device.batch_failed", "device.message_failed")]


def test_spoken_text_per_kind(tmp_path: Path) -> None:
    """Each kind's spoken form: the public addressed, 演练 for drills, 更新, and the all-clear's own tone."""
    settings = make_settings(tmp_path, tmp_path)
    w = {**warning_body(), "status": "actual"}

    def say(warning: dict[str, Any], kind: str, context: dict[str, Any] | None = None) -> tuple[str, str]:
        """What the speakers say."""
        return spoken(warning, kind, context, settings, None)

    text, kind = say(w, "warning")
    assert text.startswith("各位群众请注意。")
    assert "暴雨红色预警" in text
    assert w["instruction"].rstrip("。") in text
    assert kind == "warning"
    text, kind = say({**w, "status": "exercise"}, "warning")
    assert text.startswith("演练，演练。")
    assert text.endswith("演练，演练。")
    assert kind == "drill"
    text, kind = say(w, "update")
    assert "预警内容有更新" in text
    assert kind == "warning"
    text, kind = say(w, "warning", {"message": "upgrade", "old_level": "orange"})
    assert "由橙色升级为红色预警" in text
    text, kind = say(w, "cancel", {"message": "all_clear", "reason": "雨势减弱"})
    assert "现在解除暴雨红色预警" in text
    assert "解除原因：雨势减弱。" in text
    assert kind == "all_clear"
    assert w["instruction"].rstrip("。") not in text


def _peak_hz(seg: AudioSegment) -> float:
    """The dominant frequency of a mono segment."""
    samples = np.array(seg.get_array_of_samples(), dtype=float)
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.fft.rfftfreq(len(samples), 1 / seg.frame_rate)[spectrum.argmax()])


async def test_rendered_warnings_are_real_speech_with_level_tones(tmp_path: Path) -> None:
    """The MP3 decodes, lasts tone + speech, is not silence; red and blue open with different tones."""
    cache = AudioCache(tmp_path / "audio", make_settings(tmp_path, tmp_path).tts)
    w = {**warning_body(), "status": "actual"}
    settings = make_settings(tmp_path, tmp_path)
    red = await cache.render(spoken(w, "warning", None, settings, None)[0], "red")
    blue = await cache.render(spoken({**w, "level": "blue"}, "warning", None, settings, None)[0], "blue")
    segs = {}
    for name, f in (("red", red), ("blue", blue)):
        seg = decode(f.path.read_bytes())
        assert abs(seg.duration_seconds - f.duration_s) < 0.2
        assert seg.duration_seconds > 5
        assert seg.dBFS > -30
        segs[name] = seg
    assert red.sha256 != blue.sha256
    # Red opens with a 960/770 Hz square siren, blue with an 880 Hz chime.
    assert abs(_peak_hz(segs["red"][:250]) - 960) < 30
    assert abs(_peak_hz(segs["blue"][:250]) - 880) < 30
