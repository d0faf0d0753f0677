"""The MQTT contract (docs/mqtt.md, docs/schemas/): what warnd publishes and accepts, on real Mosquitto.

Every command the real loudspeaker and LED adapters publish, every ack and status warnd's
simulator publishes, and every JSON example in docs/mqtt.md is validated against the JSON
Schemas; acks are published to warnd's device hub to see which it stores; and the reference
terminal (docs/examples/speaker_client.py) runs as a subprocess against warnd.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from referencing import Registry, Resource

from adapters.led import LedAdapter
from adapters.loudspeaker import LoudspeakerAdapter
from tests.support import db
from tests.support.county import village_code, write_directory
from tests.support.harness import Harness, warning_body
from tests.support.live import close_live, live_harness
from tests.support.mqtt import Broker, stop_client_task
from tests.support.process import ROOT
from tests.test_loudspeaker import Rig, until
from warnd.mqtt import topics
from warnd.tools.simulator import SpeakerSimulator

DOCS = ROOT / "docs"
SCHEMA_NAMES = ("command", "ack", "status")
SCHEMAS = {n: json.loads((DOCS / "schemas" / f"{n}.json").read_text(encoding="utf-8")) for n in SCHEMA_NAMES}
REGISTRY: Registry = Registry().with_resources(  # type: ignore[type-arg]
    (s["$id"], Resource.from_contents(s)) for s in SCHEMAS.values()
)
CLIENT = DOCS / "examples" / "speaker_client.py"
BOARD = "led-330502101201-1"
COMMAND_TOPIC = re.compile(r"^warnd/v1/(village/(?P<village>[^/]+)/speaker|device/(?P<device>[^/]+)/cmd)$")


def problems(schema: str, instance: Any) -> str | None:
    """Why instance breaks the schema (`command`, `ack`, `status`, or `command#/$defs/play` …), or None."""
    name, _, pointer = schema.partition("#")
    target = {"$ref": f"{SCHEMAS[name]['$id']}#{pointer}"} if pointer else SCHEMAS[name]
    validator = Draft202012Validator(
        target, registry=REGISTRY, format_checker=Draft202012Validator.FORMAT_CHECKER
    )
    error = best_match(validator.iter_errors(instance))
    return None if error is None else f"{'/'.join(map(str, error.absolute_path))}: {error.message}"


class Tap:
    """Everything published under warnd/v1/, as a watcher on the broker sees it: (topic, payload, retain)."""

    def __init__(self, broker: Broker) -> None:
        """Remember the broker; entering subscribes."""
        self.broker = broker
        self.seen: list[tuple[str, bytes, bool]] = []
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        """Subscribe and record."""
        async with aiomqtt.Client(
            self.broker.host, self.broker.port, identifier=f"tap-{uuid.uuid4().hex[:8]}"
        ) as c:
            await c.subscribe("warnd/v1/#", qos=1)
            self._ready.set()
            async for m in c.messages:
                self.seen.append((str(m.topic), bytes(m.payload), bool(m.retain)))  # type: ignore[arg-type]

    async def __aenter__(self) -> Tap:
        """Start recording (retained statuses arrive first)."""
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._ready.wait(), 5)
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stop recording."""
        assert self._task is not None
        await stop_client_task(self._task)

    def commands(self) -> list[tuple[str, dict[str, Any]]]:
        """(topic, command) for every publish on a command topic."""
        return [(t, json.loads(p)) for t, p, _ in self.seen if COMMAND_TOPIC.match(t)]

    def on(self, leaf: str) -> list[tuple[str, dict[str, Any], bool]]:
        """(topic, payload, retain) of every publish on warnd/v1/device/+/{leaf} with a payload."""
        return [(t, json.loads(p), r) for t, p, r in self.seen if t.endswith(f"/{leaf}") and p]

    def acks(self, msg_id: str) -> list[str]:
        """The statuses acked for a msg_id, in order."""
        return [a["status"] for _, a, _ in self.on("ack") if a.get("msg_id") == msg_id]


def assert_valid(schema: str, items: list[tuple[str, dict[str, Any]]]) -> None:
    """Every payload validates; the message names the topic and the first problem."""
    assert items, f"nothing to validate against {schema}"
    bad = [(t, problems(schema, p), p) for t, p in items if problems(schema, p)]
    assert not bad, bad[:3]


# --- the schemas themselves ------------------------------------------------------------------


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_schemas_are_valid_json_schema_2020_12(name: str) -> None:
    """Each schema is a valid draft 2020-12 schema with an $id (so they can reference each other)."""
    schema = SCHEMAS[name]
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)
    assert schema["$id"] == f"urn:warnd:mqtt:v1:{name}"


PLAY = {
    "v": 1,
    "msg_id": "3f1c9a0b7d2e4c5a6b8d9e0f",
    "warning_id": "W20260701-3f9a2c1b",
    "kind": "play",
    "level": "red",
    "severity_code": 1,
    "drill": False,
    "title": "暴雨红色预警",
    "text": "暴雨红色预警。请立即转移。",
    "audio": {
        "url": f"http://127.0.0.1:8080/audio/{'a' * 64}.mp3",
        "sha256": "a" * 64,
        "format": "mp3",
        "duration_s": 12.5,
    },
    "repeat": 1,
    "not_after": "2026-07-01T02:00:00+00:00",
    "ack_topic": "warnd/v1/device/{device_id}/ack",
}
ACK = {"msg_id": "3f1c9a0b7d2e4c5a6b8d9e0f", "status": "played", "at": "2026-07-01T00:00:05.120Z"}


@pytest.mark.parametrize(
    ("schema", "base", "change", "why"),
    [
        ("command", PLAY, {"msg_id": None}, "missing msg_id"),
        ("command", PLAY, {"not_after": None}, "missing not_after"),
        ("command", PLAY, {"audio": None, "repeat": None}, "missing repeat"),
        ("command", PLAY, {"severity_code": "1"}, "severity_code as a string"),
        ("command", PLAY, {"severity_code": 3}, "severity_code that is not the level's"),
        ("command", PLAY, {"level": "purple", "severity_code": 5}, "unknown level"),
        ("command", PLAY, {"drill": "false"}, "drill as a string"),
        ("command", PLAY, {"kind": "display"}, "a play shaped command of another kind"),
        ("command", PLAY, {"v": 2}, "another version"),
        ("command", PLAY, {"not_after": "2026-07-01 02:00"}, "not_after without an offset"),
        ("command", PLAY, {"audio": {"url": "x", "sha256": "a" * 64}}, "audio without format"),
        ("command", PLAY, {"ack_topic": "warnd/v1/device/+/ack"}, "a wildcard ack topic"),
        ("command", PLAY, {"volume": 80}, "an undocumented field"),
        ("ack", ACK, {"msg_id": None}, "ack without msg_id"),
        ("ack", ACK, {"status": 3}, "GD/J 082 code instead of the status word"),
        ("ack", ACK, {"status": "PLAYED"}, "status in capitals"),
        ("ack", ACK, {"at": None}, "ack without at"),
        ("ack", ACK, {"at": 1782864005}, "at as epoch seconds"),
        ("ack", ACK, {"detial": "typo"}, "a misspelt field"),
        ("status", {"online": True}, {"online": "true"}, "online as a string"),
        ("status", {"online": True}, {"online": None}, "status without online"),
        ("status", {"online": True}, {"village": 330502101201}, "village as a number"),
    ],
)
def test_schemas_catch_missing_and_mistyped_fields(
    schema: str, base: dict[str, Any], change: dict[str, Any], why: str
) -> None:
    """The valid base passes; with one field missing (None) or mistyped it fails."""
    assert problems(schema, base) is None
    broken = {k: v for k, v in {**base, **change}.items() if v is not None or k not in change}
    assert problems(schema, broken) is not None, why


# --- what warnd publishes ----------------------------------------------------------------------


@pytest.fixture
async def rig(tmp_path: Path, broker: Broker) -> AsyncIterator[Rig]:
    """warnd's real loudspeaker adapter and simulated speakers: two villages of three."""
    r = await Rig(tmp_path, broker).start()
    yield r
    await r.close()


async def served_sha256(h: Any, url: str) -> str:
    """The sha256 of what warnd serves at an audio URL."""
    resp = await h.client.get(url.removeprefix(h.settings.http.public_url))
    assert resp.status == 200, url
    return hashlib.sha256(await resp.read()).hexdigest()


async def test_every_loudspeaker_command_warnd_publishes_validates(rig: Rig, broker: Broker) -> None:
    """Issue, a per-device retry, update, drill, cancel (stop with all-clear) and expiry (silent stop)."""
    v1, v2 = village_code(0), village_code(1)
    faulty = f"spk-{v1}-3"
    rig.sim.speakers[faulty].fail_rate = 1.0  # acks `failed`: warnd retries it on its own topic
    async with Tap(broker) as tap:
        a = await rig.issue(warning_body(area={"codes": [v1]}))
        await rig.run_until_idle()
        await rig.wait_acknowledged(a, 2)

        async def failed() -> bool:
            rows = await rig.store.deliveries_for(a)
            return any(r["target"] == faulty and r["state"] == "failed" for r in rows)

        await until(failed, what="the faulty speaker's delivery to fail")
        rig.clock.advance(10)  # past the retry's backoff
        await rig.run_until_idle()
        await until(lambda: any("/device/" in t for t, _ in tap.commands()), what="the per-device retry")
        resp = await rig.client.post(
            f"/api/v1/warnings/{a}/update", json={"headline": "暴雨预警升级"}, headers=rig.headers()
        )
        assert resp.status == 202, await resp.text()
        await rig.run_until_idle()
        await rig.issue(warning_body(status="exercise", area={"codes": ["330502101"]}))
        await rig.run_until_idle()
        resp = await rig.client.post(f"/api/v1/warnings/{a}/cancel", json={}, headers=rig.headers())
        assert resp.status == 202
        await rig.run_until_idle()
        expires = (rig.clock.now() + timedelta(hours=1)).isoformat()
        b = await rig.issue(warning_body(level="yellow", area={"codes": [v2]}, expires=expires))
        await rig.run_until_idle()
        await rig.wait_acknowledged(b, 3)
        rig.clock.advance(hours=2)
        await rig.run_until_idle()
        silent = lambda: [c for _, c in tap.commands() if c["kind"] == "stop" and not c["audio"]]  # noqa: E731
        await until(silent, what="the expiry's silent stop")
        await until(lambda: len(tap.acks(silent()[0]["msg_id"])) == 3, what="the expiry's acks")

    commands = tap.commands()
    assert_valid("command", commands)
    shapes = {
        ("village" if m["village"] else "device", c["kind"], c["audio"] is not None, c["drill"])
        for t, c in commands
        if (m := COMMAND_TOPIC.match(t))
    }
    assert shapes >= {
        ("village", "play", True, False),  # issue and update
        ("device", "play", True, False),  # the retry of one speaker
        ("village", "play", True, True),  # the drill, to the test village only
        ("village", "stop", True, False),  # cancel: the all-clear
        ("village", "stop", False, False),  # expiry: silent
    }, shapes
    by_topic: dict[str, list[dict[str, Any]]] = {}
    for t, c in commands:
        by_topic.setdefault(t, []).append(c)
        if t.endswith("/speaker"):
            assert c["ack_topic"] == "warnd/v1/device/{device_id}/ack"
        else:
            assert c["ack_topic"] == t.removesuffix("/cmd") + "/ack"
    retry = by_topic[f"warnd/v1/device/{faulty}/cmd"][0]
    first = by_topic[f"warnd/v1/village/{v1}/speaker"][0]
    assert retry["msg_id"] == first["msg_id"]  # a re-publish carries the same msg_id
    assert retry["audio"]["sha256"] == first["audio"]["sha256"]
    # The audio is where the command says, and is what its sha256 says.
    for url, sha in {(c["audio"]["url"], c["audio"]["sha256"]) for _, c in commands if c["audio"]}:
        assert url.endswith(f"/audio/{sha}.mp3")
        assert await served_sha256(rig, url) == sha
    # What the simulated speakers said back, and their retained statuses, keep the contract too.
    acks = [(t, a) for t, a, _ in tap.on("ack")]
    assert_valid("ack", acks)
    assert {a["status"] for _, a in acks} >= {"received", "playing", "played", "failed", "cancelled"}
    assert_valid("status", [(t, s) for t, s, _ in tap.on("status")])
    assert any(r for _, _, r in tap.on("status"))  # the statuses were retained


@pytest.fixture
async def led_rig(tmp_path: Path, broker: Broker) -> AsyncIterator[tuple[Harness, SpeakerSimulator]]:
    """warnd's real LED adapter with its MQTT loops, and one simulated board (warnd's simulator)."""
    h = await live_harness(
        tmp_path,
        [LedAdapter],
        directory={"villages": 2},
        settings={
            "http": {"rate_limit_per_s": 0},
            "mqtt": {"url": broker.url, "client_id": f"warnd-{uuid.uuid4().hex[:8]}"},
            "led": {"boards": {BOARD: {"chars_per_line": 8, "lines": 2, "mode": "static"}}},
        },
    )
    tasks = [asyncio.create_task(coro, name=name) for name, coro in h.daemon.background()]
    await h.daemon.adapters["led"].link.wait_connected(5)  # type: ignore[attr-defined]
    sim = SpeakerSimulator(broker.url, {}, boards={BOARD: village_code(0)}, now=h.clock.now)
    try:
        yield h, sim
    finally:
        await sim.aclose()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await close_live(h)


async def test_every_led_command_warnd_publishes_validates(
    led_rig: tuple[Harness, SpeakerSimulator], broker: Broker
) -> None:
    """Display, display with pages (rotation), display again after a cancel, clear at expiry."""
    h, sim = led_rig

    async def step(n: int) -> None:
        """Send what is due; wait until the board has acked n commands (it judges not_after by h.clock)."""
        await h.run_until_idle()
        await until(lambda: len(tap.on("ack")) == n, what=f"{n} board acks")

    async with Tap(broker) as tap:
        sim.start()
        await sim.wait_connected()
        yellow_expires = (h.clock.now() + timedelta(hours=2)).isoformat()
        await h.issue(warning_body(level="yellow", headline="暴雨黄色预警", expires=yellow_expires))
        await step(1)
        h.settings.led.rotate = True  # boards show every warning in force in turn from now on
        h.clock.advance(60)
        red = await h.issue(warning_body(level="red", headline="暴雨红色预警"))
        await step(2)
        resp = await h.client.post(f"/api/v1/warnings/{red}/cancel", json={}, headers=h.headers())
        assert resp.status == 202
        await step(3)
        h.clock.advance(hours=3)  # past the yellow's expiry
        await step(4)

    commands = tap.commands()
    assert_valid("command", commands)
    assert [c["kind"] for _, c in commands] == ["display", "display", "display", "clear"]
    assert ["pages" in c for _, c in commands] == [False, True, False, False]
    assert all(c["ack_topic"] == f"warnd/v1/device/{BOARD}/ack" for _, c in commands)
    assert all(t == f"warnd/v1/device/{BOARD}/cmd" for t, _ in commands)
    assert_valid("ack", [(t, a) for t, a, _ in tap.on("ack")])
    assert {a["status"] for _, a, _ in tap.on("ack")} == {"shown"}
    assert_valid("status", [(t, s) for t, s, _ in tap.on("status")])


async def test_simulator_status_and_last_will_validate(tmp_path: Path, broker: Broker) -> None:
    """`warnctl simulate-speakers`: retained online statuses; killed, the broker's last wills say offline."""
    directory = write_directory(tmp_path / "directory.toml", villages=1)
    argv = ["-m", "warnd.ctl", "simulate-speakers", "--broker", broker.url, "--directory", str(directory)]
    devices = {f"spk-{village_code(0)}-1", f"spk-{village_code(0)}-2", BOARD}
    async with Tap(broker) as tap:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, *argv, "--village", village_code(0), cwd=ROOT, stderr=asyncio.subprocess.DEVNULL
        )
        try:
            online = lambda: {t.split("/")[3] for t, s, _ in tap.on("status") if s["online"]}  # noqa: E731
            await until(lambda: online() == devices, what="three devices online")
        finally:
            proc.send_signal(signal.SIGKILL)  # no DISCONNECT: the broker publishes the wills
            await proc.wait()
        offline = lambda: {t.split("/")[3] for t, s, _ in tap.on("status") if not s["online"]}  # noqa: E731
        await until(lambda: offline() == devices, what="three last wills")
    assert_valid("status", [(t, s) for t, s, _ in tap.on("status")])
    # Retained: a subscriber arriving now is told at once that they are offline.
    async with Tap(broker) as late:
        await until(lambda: len(late.on("status")) == 3, what="retained statuses")
    assert all(retain and not s["online"] for _, s, retain in late.on("status"))


# --- what warnd accepts ------------------------------------------------------------------------


@pytest.fixture
async def board_delivery(led_rig: tuple[Harness, SpeakerSimulator]) -> tuple[Harness, str, str]:
    """A display sent to BOARD (not running: only the test acks it): (harness, warning id, msg_id)."""
    h, _ = led_rig
    wid = await h.issue(warning_body())
    await h.run_until_idle()
    (row,) = [r for r in await h.store.deliveries_for(wid) if r["target"] == BOARD]
    assert row["state"] == "sent"
    return h, wid, row["msg_id"]


async def stored_acks(h: Harness) -> list[tuple[str, dict[str, Any]]]:
    """(status, detail) of every ack warnd stored for BOARD, in order."""
    rows = await db.query(h.store, "SELECT status, detail FROM acks WHERE target = ? ORDER BY id", (BOARD,))
    return [(r["status"], json.loads(r["detail"])) for r in rows]


async def publish_acks(broker: Broker, payloads: list[bytes]) -> None:
    """Publish payloads on BOARD's ack topic, in order, as a terminal would."""
    async with aiomqtt.Client(broker.host, broker.port, identifier=f"term-{uuid.uuid4().hex[:8]}") as c:
        for p in payloads:
            await c.publish(f"warnd/v1/device/{BOARD}/ack", p, qos=1)


async def stored_from(h: Harness, broker: Broker, msg_id: str, payload: bytes) -> list[str]:
    """Publish an ack, then a valid sentinel; once the sentinel is stored, the statuses stored for the first.

    The device hub applies acks in arrival order, so when the sentinel is in, the first was judged.
    """
    before = len(await stored_acks(h))
    sentinel = json.dumps(
        {"msg_id": msg_id, "status": "received", "at": "2026-07-01T00:00:00Z", "detail": "s"}
    )
    await publish_acks(broker, [payload, sentinel.encode()])
    async def sentinel_in() -> bool:
        """Whether the sentinel is stored."""
        return any(d.get("detail") == "s" for _, d in (await stored_acks(h))[before:])

    await until(sentinel_in, what="the sentinel")
    return [s for s, d in (await stored_acks(h))[before:] if d.get("detail") != "s"]


VALID_ACKS = [
    {"status": "received", "at": "2026-07-01T00:00:01Z"},
    {"status": "playing", "at": "2026-07-01T08:00:02+08:00", "detail": ""},
    {"status": "played", "at": "2026-07-01T00:00:03.250Z"},
    {"status": "shown", "at": "2026-07-01T00:00:04.000001+00:00", "detail": "第1屏"},
    {"status": "failed", "at": "2026-07-01T00:00:05Z", "detail": "屏幕故障"},
    {"status": "cancelled", "at": "2026-07-01T00:00:06Z", "detail": "stopped"},
]


async def test_acks_valid_per_schema_are_stored(
    board_delivery: tuple[Harness, str, str], broker: Broker
) -> None:
    """Every status of the contract is stored as sent, with its `at` and `detail`."""
    h, _, msg_id = board_delivery
    acks = [{"msg_id": msg_id, **a} for a in VALID_ACKS]
    for a in acks:
        assert problems("ack", a) is None
    await publish_acks(broker, [json.dumps(a, ensure_ascii=False).encode() for a in acks])
    async def count() -> int:
        """How many acks are stored."""
        return len(await stored_acks(h))

    await until(count, what="every ack stored", want=len(acks))
    expected = [(a["status"], {k: a[k] for k in ("at", "detail") if k in a}) for a in acks]
    assert await stored_acks(h) == expected


AT = '"at": "2026-07-01T00:00:00Z"'
# Payloads with `{msg_id}` for the delivery's msg_id.
REFUSED_ACKS = {
    "not JSON": "{not json",
    "a JSON array": '["{msg_id}", "shown"]',
    "no msg_id": f'{{"status": "shown", {AT}}}',
    "msg_id a number": f'{{"msg_id": 42, "status": "shown", {AT}}}',
    "no status": f'{{"msg_id": "{{msg_id}}", {AT}}}',
    "status as its GD/J 082 code": f'{{"msg_id": "{{msg_id}}", "status": 3, {AT}}}',
    "status in capitals": f'{{"msg_id": "{{msg_id}}", "status": "SHOWN", {AT}}}',
    "unknown status": f'{{"msg_id": "{{msg_id}}", "status": "exploded", {AT}}}',
    "over 16 KiB": f'{{"msg_id": "{{msg_id}}", "status": "shown", {AT}, "detail": "{"x" * 17000}"}}',
}


def invalid_per_schema(payload: str) -> bool:
    """Whether a payload is not an ack by docs/schemas/ack.json (not JSON at all counts)."""
    try:
        return problems("ack", json.loads(payload)) is not None
    except ValueError:
        return True


@pytest.mark.parametrize("case", list(REFUSED_ACKS))
async def test_acks_invalid_per_schema_are_refused(
    board_delivery: tuple[Harness, str, str], broker: Broker, case: str, log_events: list[dict[str, Any]]
) -> None:
    """Logged and dropped: nothing stored, the delivery unmoved, the hub still applying the next ack."""
    h, wid, msg_id = board_delivery
    payload = REFUSED_ACKS[case].replace("{msg_id}", msg_id)
    assert invalid_per_schema(payload)
    assert await stored_from(h, broker, msg_id, payload.encode()) == []
    (row,) = [r for r in await h.store.deliveries_for(wid) if r["target"] == BOARD]
    assert row["state"] == "delivered"  # by the sentinel's `received`, nothing else
    (refused,) = [e for e in log_events if e["event"] == "ack.refused"]
    assert refused["target"] == BOARD
    assert refused["reason"] in ("malformed", "unknown_status", "too_large")


@pytest.mark.parametrize("status", ["cleared", "delivered", "acknowledged", "undelivered", "dead"])
async def test_statuses_outside_the_contract_are_refused(
    board_delivery: tuple[Harness, str, str], broker: Broker, status: str
) -> None:
    """A device may only say what the contract lists; other channels' statuses are not for it."""
    h, _, msg_id = board_delivery
    payload = json.dumps({"msg_id": msg_id, "status": status, "at": "2026-07-01T00:00:00Z"})
    assert invalid_per_schema(payload)
    assert await stored_from(h, broker, msg_id, payload.encode()) == []


@pytest.mark.parametrize(
    "extra",
    [
        {"at": None},  # no time
        {"at": "yesterday"},
        {"volume": 80},  # a field from a newer terminal
        {"detail": {"code": 7}},
    ],
)
async def test_warnd_is_lenient_where_the_schema_is_strict(
    board_delivery: tuple[Harness, str, str], broker: Broker, extra: dict[str, Any]
) -> None:
    """warnd takes an ack whose msg_id and status are right, whatever else is missing or added."""
    h, _, msg_id = board_delivery
    ack = {k: v for k, v in {"msg_id": msg_id, "status": "shown", **extra}.items() if v is not None}
    assert problems("ack", ack) is not None
    assert await stored_from(h, broker, msg_id, json.dumps(ack).encode()) == ["shown"]


# --- the topics: warnd.mqtt.topics against docs/mqtt.md and the schemas ---------------------


def doc_topic_rows() -> list[tuple[str, str, int, bool, str]]:
    """(pattern, publisher, QoS, retained, schema) of each `warnd/v1/…` row of docs/mqtt.md's topic table."""
    text = (DOCS / "mqtt.md").read_text(encoding="utf-8")
    table = text.split("\n## Topics\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        pattern = re.fullmatch(r"`(warnd/v1/[^`]+)`", cells[0])
        if pattern is None:
            continue
        schema = re.search(r"\(schemas/(\w+)\.json\)", cells[4])
        assert schema is not None, line
        publisher = cells[1].split("→")[0].strip()
        retained = {"no": False, "**yes**": True}[cells[3]]
        rows.append((pattern.group(1), publisher, int(cells[2]), retained, schema.group(1)))
    return rows


def test_docs_topic_table_is_the_contract_warnd_uses() -> None:
    """docs/mqtt.md's topic table is warnd.mqtt.topics.CONTRACT: topics, who publishes, QoS, retain."""
    expected = [(t.pattern, t.publisher, t.qos, t.retain, t.schema) for t in topics.CONTRACT]
    assert doc_topic_rows() == expected


def test_docs_acl_grants_what_warnd_and_the_terminals_use() -> None:
    """The ACL example lets warnd write its command topics and read acks and statuses, and no more;
    a terminal (`%c`) reads its own commands and writes its own ack and status."""
    text = (DOCS / "mqtt.md").read_text(encoding="utf-8")
    match = re.search(r"^```text\n(.*?)^```", text, flags=re.M | re.S)
    assert match is not None
    lines = match.group(1).splitlines()
    warnd = lines[lines.index("user warnd") + 1 :]
    warnd = warnd[: warnd.index("")]
    assert tuple(ln.split()[2] for ln in warnd if ln.startswith("topic write ")) == topics.WARND_WRITES
    assert tuple(ln.split()[2] for ln in warnd if ln.startswith("topic read ")) == topics.WARND_READS
    assert len(warnd) == len(topics.WARND_WRITES) + len(topics.WARND_READS)
    terminal = {tuple(ln.split()[1:]) for ln in lines if ln.startswith("pattern ")}
    assert terminal == {
        ("read" if t.publisher == "warnd" else "write", t.pattern.replace(topics.DEVICE_ID_PLACEHOLDER, "%c"))
        for t in topics.CONTRACT
        if topics.DEVICE_ID_PLACEHOLDER in t.pattern
    }


@pytest.mark.parametrize("topic", topics.CONTRACT, ids=lambda t: t.pattern)
def test_each_schema_says_its_topics_qos_and_retain(topic: topics.Topic) -> None:
    """A payload's schema names the topic it travels on, with the contract's QoS and retain."""
    description = SCHEMAS[topic.schema]["description"]
    assert topic.pattern in description
    assert f"QoS {topic.qos}" in description
    assert ("not retained" in description) == (not topic.retain)
    assert ("RETAINED" in description) == topic.retain


def test_command_schema_takes_the_ack_topics_warnd_sends() -> None:
    """A village command's literal `{device_id}` ack topic and a device's own both pass; a filter does not."""
    pattern = re.compile(SCHEMAS["command"]["$defs"]["ack_topic"]["pattern"])
    assert pattern.search(topics.VILLAGE_ACK_TOPIC)
    assert pattern.search(topics.device_ack("spk-330502101201-1"))
    assert not pattern.search(topics.ACK_FILTER)


def test_topic_builders_and_parser_agree() -> None:
    """What the builders make, the parser reads back and the filters match; nothing else parses."""
    device = "spk-330502101201-1"
    builders = ((topics.device_cmd, "cmd"), (topics.device_ack, "ack"), (topics.device_status, "status"))
    for build, leaf in builders:
        assert topics.parse_device(build(device)) == (device, leaf)
    assert topics.matches(topics.device_ack(device).split("/"), topics.ACK_FILTER.split("/"))
    assert topics.matches(topics.device_status(device).split("/"), topics.STATUS_FILTER.split("/"))
    assert topics.village_speakers("330502101201") == "warnd/v1/village/330502101201/speaker"
    assert topics.parse_village(topics.village_speakers("330502101201")) == "330502101201"
    for other in (
        topics.village_speakers("330502101201"),
        "warnd/v2/device/spk-1/ack",
        "warnd/v1/device//ack",
        "warnd/v1/device/spk-1/volume",
        "warnd/v1/device/spk-1/ack/more",
    ):
        assert topics.parse_device(other) is None, other
    for other in (topics.device_cmd(device), "warnd/v1/village//speaker", "warnd/v1/village/1/2/speaker"):
        assert topics.parse_village(other) is None, other
    # A village command's ack topic is filled in by each speaker; a missing one means its own.
    assert topics.ack_topic_for(topics.VILLAGE_ACK_TOPIC, device) == topics.device_ack(device)
    assert topics.ack_topic_for("", device) == topics.device_ack(device)
    assert topics.feeds_client_id("warnd-host-town") == "warnd-host-town-feeds"


# --- the examples in docs/mqtt.md --------------------------------------------------------------


def doc_examples() -> list[tuple[str, str]]:
    """(schema, JSON text) of every ```json block in docs/mqtt.md; the info string names the schema."""
    text = (DOCS / "mqtt.md").read_text(encoding="utf-8")
    return re.findall(r"^```json[ \t]*(\S*)[ \t]*\n(.*?)^```", text, flags=re.M | re.S)


def test_docs_have_examples_of_every_payload() -> None:
    """Every ```json block names its schema; every command kind, ack and status has one."""
    examples = doc_examples()
    assert all(schema for schema, _ in examples), "a ```json block without its schema after `json`"
    kinds = {json.loads(body).get("kind") for schema, body in examples if schema.startswith("command")}
    assert kinds >= {"play", "stop", "display", "clear"}
    assert {schema.partition("#")[0] for schema, _ in examples} == set(SCHEMA_NAMES)


@pytest.mark.parametrize(("schema", "body"), doc_examples())
def test_docs_examples_validate(schema: str, body: str) -> None:
    """Each example in docs/mqtt.md is valid against the schema its block names."""
    assert problems(schema, json.loads(body)) is None


def test_docs_link_every_schema_and_the_example_client() -> None:
    """docs/mqtt.md links its schemas and the reference client; the README links docs/mqtt.md."""
    text = (DOCS / "mqtt.md").read_text(encoding="utf-8")
    for name in SCHEMA_NAMES:
        assert f"(schemas/{name}.json)" in text
    assert "(examples/speaker_client.py)" in text
    assert "(docs/mqtt.md)" in (ROOT / "README.md").read_text(encoding="utf-8")


# --- the reference terminal --------------------------------------------------------------------


class Terminal:
    """docs/examples/speaker_client.py as a subprocess, its stdout kept."""

    def __init__(self, broker: Broker, device: str, village: str, *flags: str) -> None:
        """Remember how to start it."""
        self.argv = [sys.executable, str(CLIENT), broker.url, device, village, *flags]
        self.proc: asyncio.subprocess.Process | None = None
        self.output = ""

    async def start(self) -> Terminal:
        """Run it."""
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        return self

    async def kill(self) -> None:
        """SIGKILL (the broker publishes its last will) and keep what it printed."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        out, err = await self.proc.communicate()
        self.output = out.decode()
        assert "Traceback" not in err.decode(), err.decode()

    def lines(self, word: str) -> list[list[str]]:
        """The printed lines starting with word, split."""
        return [ln.split() for ln in self.output.splitlines() if ln.startswith(word + " ")]


async def test_reference_client_acks_dedups_and_refuses_stale(tmp_path: Path, broker: Broker) -> None:
    """The example speaker and board against warnd: acked, audio verified, a re-sent msg_id played once."""
    village, speaker = village_code(0), f"spk-{village_code(0)}-1"
    h = await live_harness(
        tmp_path,
        [LoudspeakerAdapter, LedAdapter],
        directory={"villages": 1, "speakers": 1, "leds": 1},
        settings={
            "http": {"rate_limit_per_s": 0},
            "mqtt": {"url": broker.url, "client_id": f"warnd-{uuid.uuid4().hex[:8]}"},
            "tts": {"repeat": 1, "pause_ms": 200},
        },
    )
    h.settings.http.public_url = str(h.client.make_url("")).rstrip("/")
    h.clock.set(datetime.now(UTC))  # the terminals judge not_after by the wall clock
    tasks = [asyncio.create_task(coro, name=name) for name, coro in h.daemon.background()]
    spk = board = None
    try:
        async with Tap(broker) as tap:
            spk = await Terminal(broker, speaker, village).start()
            board = await Terminal(broker, BOARD, village, "--led").start()

            async def online() -> bool:
                rows = {r["id"]: r["online"] for r in await h.store.devices()}
                return rows.get(speaker) == 1 and rows.get(BOARD) == 1

            await until(online, what="both terminals online at warnd")
            wid = await h.issue(warning_body(area={"codes": [village]}))
            await h.run_until_idle()

            async def confirmed() -> bool:
                cov = (await h.get(wid))["coverage"]
                return cov["loudspeaker"]["acknowledged"] == 1 and cov["led"]["acknowledged"] == 1

            await until(confirmed, what="played and shown")
            ((topic, raw),) = [(t, p) for t, p, _ in tap.seen if t.endswith("/speaker")]
            play = json.loads(raw)
            # warnd (or the broker) sends the same command again: confirmed again, not played again.
            # And a stale one, past its not_after: refused.
            stale = {**play, "msg_id": "stale-0001", "not_after": "2020-01-01T00:00:00+00:00"}
            async with aiomqtt.Client(broker.host, broker.port, identifier="resender") as c:
                await c.publish(topic, raw, qos=1)
                await c.publish(topic, json.dumps(stale).encode(), qos=1)
            await until(lambda: tap.acks("stale-0001")[-1:] == ["failed"], what="the stale command refused")
            resp = await h.client.post(f"/api/v1/warnings/{wid}/cancel", json={}, headers=h.headers())
            assert resp.status == 202
            await h.run_until_idle()
            stop = lambda: [c for _, c in tap.commands() if c["kind"] == "stop"]  # noqa: E731
            await until(lambda: stop() and tap.acks(stop()[0]["msg_id"])[-1:] == ["played"], what="all-clear")
            clear = lambda: [c for _, c in tap.commands() if c["kind"] == "clear"]  # noqa: E731
            await until(lambda: clear() and tap.acks(clear()[0]["msg_id"]) == ["shown"], what="board cleared")
            await spk.kill()
            await board.kill()

            async def offline() -> bool:
                rows = {r["id"]: r["online"] for r in await h.store.devices()}
                return rows.get(speaker) == 0 and rows.get(BOARD) == 0

            await until(offline, what="last wills at warnd")
    finally:
        for term in (spk, board):
            if term is not None and term.proc is not None and term.proc.returncode is None:
                await term.kill()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await close_live(h)

    assert tap.acks(play["msg_id"]) == ["received", "played", "played"]
    assert tap.acks("stale-0001") == ["received", "failed"]
    assert [ln[1] for ln in spk.lines("PLAY")] == [play["msg_id"], stop()[0]["msg_id"]]
    assert spk.lines("PLAY")[0][3] == play["audio"]["sha256"]  # fetched and verified
    assert [ln[0] for ln in spk.lines("STOP")] == ["STOP"]
    assert len(board.lines("SHOW")) == 1 and len(board.lines("CLEAR")) == 1
    assert_valid("ack", [(t, a) for t, a, _ in tap.on("ack")])
    assert_valid("status", [(t, s) for t, s, _ in tap.on("status")])
    assert {t for t, a, _ in tap.on("ack")} == {f"warnd/v1/device/{d}/ack" for d in (speaker, BOARD)}


@pytest.mark.parametrize(
    "payload",
    [
        '{"msg_id": "{msg_id}\\u0000", "status": "played", ' + AT + "}",
        '{"msg_id": "{msg_id}", "status": "failed", "detail": "\\ud800", ' + AT + "}",
    ],
    ids=["a NUL in msg_id", "an unpaired surrogate in detail"],
)
async def test_acks_with_text_no_database_holds_are_refused_and_the_hub_goes_on(
    board_delivery: tuple[Harness, str, str], broker: Broker, payload: str, log_events: list[dict[str, Any]]
) -> None:
    """Valid JSON, valid per the schema, but text PostgreSQL (or UTF-8) cannot store: refused as
    malformed on arrival, so it cannot fail its batch's transaction and stall every ack behind it."""
    h, _, msg_id = board_delivery
    assert await stored_from(h, broker, msg_id, payload.replace("{msg_id}", msg_id).encode()) == []
    (refused,) = [e for e in log_events if e["event"] == "ack.refused"]
    assert refused["reason"] == "malformed"
