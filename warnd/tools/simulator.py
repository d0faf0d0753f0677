"""Simulated village loudspeakers: they behave like 村村响 IP terminals on the MQTT contract.

Each speaker subscribes to its village topic and its own command topic, keeps a retained
status with a last will saying offline, downloads the audio and checks its sha256, acks
`received`, `playing`, `played` (or `failed`), ignores a msg_id it has already handled,
refuses to play after `not_after`, and stops on `stop`. A simulated LED board shows a
`display`, blanks on `clear` (acking `shown` for both) and refuses a stale command.
`warnd-sim` (or `warnctl simulate-speakers`) runs them; tests run them in-process. A tool, not
part of the daemon: nothing in warnd imports it. The benchmark's load peer is `bench/_swarm.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import random
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import structlog

from warnd import log as warnd_log
from warnd.adapter import TransientError
from warnd.config import MqttSettings
from warnd.directory import Directory
from warnd.mqtt import topics
from warnd.mqtt.link import MqttLink

log = structlog.get_logger("warnd.simulator")

Publish = Callable[[str, bytes, bool], Awaitable[None]]
# A speaker gives up on an audio download after this long and reports failed.
FETCH_TIMEOUT_S = 30.0


def _iso(dt: datetime) -> str:
    """A time as the ack's `at`."""
    return dt.astimezone(UTC).isoformat(timespec="milliseconds")


class SimSpeaker:
    """One terminal's behaviour, independent of how it is connected.

    Args:
        device_id: its id in the directory.
        village: its village code.
        publish: sends (topic, payload, retain) to the broker.
        fetch: downloads a URL's bytes.
        now: its clock (tests share the daemon's fake clock, so not_after is judged alike).
        fail_rate: share of plays that fail on purpose.
        delay_ms: time between `received` and `played`.
        rng: randomness for fail_rate.
    """

    def __init__(
        self,
        device_id: str,
        village: str,
        *,
        publish: Publish,
        fetch: Callable[[str], Awaitable[bytes]],
        now: Callable[[], datetime],
        fail_rate: float = 0.0,
        delay_ms: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        """A fresh terminal that has handled nothing yet."""
        self.id, self.village = device_id, village
        self.publish, self.fetch, self.now = publish, fetch, now
        self.fail_rate, self.delay_ms = fail_rate, delay_ms
        self.rng = rng or random.Random()
        self.commands: Counter[str] = Counter()  # msg_id → commands received (duplicates included)
        self.final: dict[str, str | None] = {}  # msg_id → last status acked (None while in progress)
        self.played: list[dict[str, Any]] = []  # play commands actually played
        self.refused: list[str] = []  # msg_ids refused because not_after had passed
        self.stops: list[dict[str, Any]] = []  # stop commands handled
        self.verified: dict[str, str] = {}  # msg_id → sha256 of the audio fetched and checked
        self.stopped_warnings: set[str] = set()
        self._playing: dict[str, asyncio.Task[None]] = {}
        self.closed = False

    async def ack(self, topic: str, msg_id: str, status: str, detail: str = "") -> None:
        """Publish one ack."""
        self.final[msg_id] = status
        await self.publish(topic, _ack(msg_id, status, self.now(), detail), topics.ACK_RETAIN)

    async def handle(self, payload: bytes) -> None:
        """One command from the village or device topic."""
        parsed = _command(self.id, payload)
        if parsed is None:
            return
        cmd, msg_id, kind, ack_topic = parsed
        self.commands[msg_id] += 1
        if msg_id in self.final:
            # At-least-once delivery: a repeat is never played again, only re-confirmed.
            if self.final[msg_id] is not None:
                await self.ack(ack_topic, msg_id, self.final[msg_id] or "received")
            return
        self.final[msg_id] = None
        if kind == "stop":
            await self._stop(cmd, ack_topic)
            return
        await self.ack(ack_topic, msg_id, "received")
        if self._expired(cmd):
            self.refused.append(msg_id)
            await self.ack(ack_topic, msg_id, "failed", f"not_after {cmd.get('not_after')} has passed")
            return
        if cmd.get("warning_id") in self.stopped_warnings:
            await self.ack(ack_topic, msg_id, "cancelled", "warning already stopped")
            return
        task = asyncio.current_task()
        if task is not None:
            self._playing[cmd.get("warning_id", "")] = task
        try:
            await self._play(cmd, ack_topic)
        except asyncio.CancelledError:
            if self.closed or cmd.get("warning_id") not in self.stopped_warnings:
                raise  # the simulator is shutting down, not a stop command
            if task is not None:
                task.uncancel()  # the stop's cancel is handled here, not passed on
            await self.ack(ack_topic, msg_id, "cancelled", "stopped")
        finally:
            self._playing.pop(cmd.get("warning_id", ""), None)

    def _expired(self, cmd: dict[str, Any]) -> bool:
        """Whether the command's not_after has passed."""
        return _expired(cmd, self.now())

    async def _play(self, cmd: dict[str, Any], ack_topic: str) -> None:
        """Fetch and check the audio, then play it (or fail)."""
        msg_id = cmd["msg_id"]
        audio = cmd.get("audio")
        if audio:
            try:
                data = await self.fetch(audio["url"])
            except (aiohttp.ClientError, TimeoutError, KeyError) as exc:
                await self.ack(ack_topic, msg_id, "failed", f"audio download failed: {type(exc).__name__}")
                return
            digest = hashlib.sha256(data).hexdigest()
            if digest != audio.get("sha256"):
                await self.ack(ack_topic, msg_id, "failed", "audio sha256 mismatch")
                return
            self.verified[msg_id] = digest
        if self.fail_rate and self.rng.random() < self.fail_rate:
            await self.ack(ack_topic, msg_id, "failed", "simulated amplifier fault")
            return
        await self.ack(ack_topic, msg_id, "playing")
        if self.delay_ms:
            await asyncio.sleep(self.delay_ms / 1000)
        self.played.append(cmd)
        await self.ack(ack_topic, msg_id, "played")

    async def _stop(self, cmd: dict[str, Any], ack_topic: str) -> None:
        """Stop what plays for the warning; speak the all-clear if the stop carries audio."""
        self.stops.append(cmd)
        warning_id = cmd.get("warning_id", "")
        self.stopped_warnings.add(warning_id)
        playing = self._playing.pop(warning_id, None)
        if playing is not None:
            playing.cancel()
        if cmd.get("audio") and not self._expired(cmd):
            await self.ack(ack_topic, cmd["msg_id"], "received")
            await self._play(cmd, ack_topic)
        else:
            await self.ack(ack_topic, cmd["msg_id"], "cancelled")


class SimBoard:
    """One LED board's behaviour: show what it is told, confirm, never act on a stale command.

    Both `display` and `clear` are confirmed `shown` (the contract's success status for a board;
    the detail says `cleared` for a clear); a command past its `not_after` is `failed`.

    Args:
        device_id: its id in the directory.
        village: its village code.
        publish: sends (topic, payload, retain) to the broker.
        now: its clock, for not_after.
    """

    def __init__(
        self, device_id: str, village: str, *, publish: Publish, now: Callable[[], datetime]
    ) -> None:
        """A blank board."""
        self.id, self.village, self.publish, self.now = device_id, village, publish, now
        self.commands: Counter[str] = Counter()  # msg_id → commands received (duplicates included)
        self.final: dict[str, tuple[str, str]] = {}  # msg_id → (status, detail) acked
        self.showing: dict[str, Any] | None = None  # the display command on the board, if any
        self.closed = False

    async def handle(self, payload: bytes) -> None:
        """One command from the board's topic."""
        parsed = _command(self.id, payload)
        if parsed is None:
            return
        cmd, msg_id, kind, ack_topic = parsed
        self.commands[msg_id] += 1
        # A command shown once is only re-confirmed when repeated (the board may show something
        # newer by now); a refused one is judged again, since warnd retries it with a fresh not_after.
        if msg_id in self.final:
            status, detail = self.final[msg_id]
        elif kind not in ("display", "clear"):
            status, detail = "failed", f"unknown command kind {kind!r}"
        elif _expired(cmd, self.now()):
            status, detail = "failed", f"not_after {cmd.get('not_after')} has passed"
        else:
            status, detail = self.final[msg_id] = ("shown", "" if kind == "display" else "cleared")
            self.showing = cmd if kind == "display" else None
        await self.publish(ack_topic, _ack(msg_id, status, self.now(), detail), topics.ACK_RETAIN)


def _ack(msg_id: str, status: str, at: datetime, detail: str) -> bytes:
    """An ack payload as the MQTT contract has it."""
    body = {"msg_id": msg_id, "status": status, "at": _iso(at), "detail": detail}
    return json.dumps(body, ensure_ascii=False).encode()


def _command(device_id: str, payload: bytes) -> tuple[dict[str, Any], str, str, str] | None:
    """(command, msg_id, kind, ack topic) of a command payload; None (logged) if it is not one."""
    try:
        cmd = json.loads(payload)
        msg_id, kind = cmd["msg_id"], cmd["kind"]
    except (ValueError, KeyError, TypeError):
        log.warning("sim.bad_command", target=device_id, body_len=len(payload))
        return None
    ack_topic = topics.ack_topic_for(str(cmd.get("ack_topic") or ""), device_id)
    return cmd, msg_id, kind, ack_topic


def _expired(cmd: dict[str, Any], now: datetime) -> bool:
    """Whether a command's not_after has passed (a command without one never expires)."""
    try:
        limit = datetime.fromisoformat(cmd["not_after"])
    except (KeyError, TypeError, ValueError):
        return False
    return now > limit


class SpeakerSimulator:
    """Many simulated speakers (and LED boards) against one broker.

    Args:
        broker_url: mqtt://host:port.
        speakers: device id → village code.
        boards: LED board id → village code.
        now: clock for not_after and ack times (default: wall clock).
        fail_rate: share of plays that fail.
        delay_ms: time between received and played.
        reconnect_max_s: cap of the reconnect delay.
        seed: for fail_rate.
    """

    def __init__(
        self,
        broker_url: str,
        speakers: Mapping[str, str],
        *,
        boards: Mapping[str, str] | None = None,
        now: Callable[[], datetime] | None = None,
        fail_rate: float = 0.0,
        delay_ms: float = 0.0,
        reconnect_max_s: float = 2.0,
        seed: int | None = None,
    ) -> None:
        """Set the speakers up; `run()` connects them."""
        self.settings = MqttSettings(url=broker_url, reconnect_max_s=reconnect_max_s)
        self.now = now or (lambda: datetime.now(UTC))
        self.closed = False
        self._http: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._links: dict[str, MqttLink] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        rng = random.Random(seed)
        self.speakers: dict[str, SimSpeaker] = {}
        for device_id, village in speakers.items():
            self.speakers[device_id] = SimSpeaker(
                device_id,
                village,
                publish=self._publisher(device_id),
                fetch=self._fetch,
                now=self.now,
                fail_rate=fail_rate,
                delay_ms=delay_ms,
                rng=rng,
            )
        self.by_village: dict[str, list[SimSpeaker]] = {}
        for s in self.speakers.values():
            self.by_village.setdefault(s.village, []).append(s)
        self.boards = {
            device_id: SimBoard(device_id, village, publish=self._publisher(device_id), now=self.now)
            for device_id, village in (boards or {}).items()
        }
        self._devices: dict[str, SimSpeaker | SimBoard] = {**self.speakers, **self.boards}

    def _publisher(self, device_id: str) -> Publish:
        """How a speaker publishes: on its own link."""

        async def publish(topic: str, payload: bytes, retain: bool) -> None:
            """Publish, waiting out a short broker outage rather than losing the ack."""
            link = self._links[device_id]
            for _ in range(600):
                if self.closed:
                    return
                try:
                    await link.publish(topic, payload, retain=retain)
                except TransientError:
                    await asyncio.sleep(0.1)  # the broker is away: wait for the reconnect
                else:
                    return
            log.warning("sim.ack_lost", target=device_id, topic=topic)

        return publish

    async def _fetch(self, url: str) -> bytes:
        """Download audio."""
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S))
        async with self._http.get(url) as resp:
            resp.raise_for_status()
            return await resp.read()

    def _spawn(self, coro: Awaitable[None]) -> None:
        """Run a command's handling beside the receive loop."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _link_for(self, device_id: str) -> MqttLink:
        """A device's own link: persistent session, retained status, last will offline."""
        device = self._devices[device_id]
        status_topic = topics.device_status(device_id)
        will = aiomqtt.Will(
            status_topic, json.dumps({"online": False}).encode(), qos=topics.QOS, retain=topics.STATUS_RETAIN
        )

        async def on_connect() -> None:
            """Say online (retained) on every connect."""
            body = {"online": True, "village": device.village, "model": "warnd-sim", "at": _iso(self.now())}
            await link.publish(status_topic, json.dumps(body).encode(), retain=topics.STATUS_RETAIN)

        link = MqttLink(
            self.settings,
            client_id=device_id,
            will=will,
            clean_session=False,
            on_connect=on_connect,
            name=f"sim.{device_id}",
        )
        handler = self._handler(device)
        if isinstance(device, SimSpeaker):  # a board takes commands on its own topic only
            link.subscribe(topics.village_speakers(device.village), handler)
        link.subscribe(topics.device_cmd(device_id), handler)
        return link

    def _handler(self, device: SimSpeaker | SimBoard) -> Callable[[aiomqtt.Message], None]:
        """A message handler that hands the command to one device."""

        def handler(message: aiomqtt.Message) -> None:
            """Handle the command in its own task."""
            self._spawn(device.handle(bytes(message.payload)))

        return handler

    def go_online(self, device_id: str) -> None:
        """Connect a speaker, resuming its persistent session."""
        if device_id in self._running:
            return
        link = self._link_for(device_id)
        self._links[device_id] = link
        self._running[device_id] = asyncio.ensure_future(link.run_loop())

    async def go_offline(self, device_id: str) -> None:
        """Take a speaker off the air: say offline (retained), then disconnect cleanly."""
        link = self._links[device_id]
        body = {"online": False, "village": self._devices[device_id].village, "at": _iso(self.now())}
        with contextlib.suppress(Exception):
            await link.publish(
                topics.device_status(device_id), json.dumps(body).encode(), retain=topics.STATUS_RETAIN
            )
        task = self._running.pop(device_id)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def start(self) -> None:
        """Connect every speaker and board."""
        for device_id in self._devices:
            self.go_online(device_id)

    async def wait_connected(self, timeout_s: float = 10.0) -> None:
        """Until every running link is connected."""
        async with asyncio.timeout(timeout_s):
            for device_id in list(self._running):
                await self._links[device_id].wait_connected(timeout_s)

    def connected(self) -> bool:
        """Whether every running link is up."""
        return all(self._links[d].connected for d in self._running)

    async def aclose(self) -> None:
        """Disconnect everything."""
        self.closed = True
        for d in self._devices.values():
            d.closed = True
        for task in self._running.values():
            task.cancel()
        for task in list(self._running.values()) + list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._running.clear()
        if self._http is not None:
            await self._http.close()

    async def run(self) -> None:
        """Run until cancelled (the CLI)."""
        self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.aclose()


def devices_of(directory_path: str, villages: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """(speakers, LED boards) of the given villages in directory.toml, each device id → village."""
    directory = Directory.load(Path(directory_path))
    speakers: dict[str, str] = {}
    boards: dict[str, str] = {}
    for code in villages:
        village = directory.villages.get(code)
        if village is None:
            raise ValueError(f"village {code} is not in {directory_path}")
        speakers.update(dict.fromkeys(village.speakers, code))
        boards.update(dict.fromkeys(village.led_boards, code))
    return speakers, boards


async def simulate(
    broker_url: str,
    speakers: dict[str, str],
    *,
    boards: dict[str, str] | None = None,
    fail_rate: float = 0.0,
    delay_ms: float = 0.0,
) -> None:
    """Run the speakers (and boards) until interrupted."""
    sim = SpeakerSimulator(broker_url, speakers, boards=boards, fail_rate=fail_rate, delay_ms=delay_ms)
    await sim.run()


def main(argv: Sequence[str] | None = None, prog: str = "warnd-sim") -> int:
    """`warnd-sim` (and `warnctl simulate-speakers`): simulate the villages' devices until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog=prog, description="simulated village loudspeakers (and LED boards) that play or show and confirm"
    )
    parser.add_argument("--village", nargs="+", required=True, metavar="CODE", help="villages to simulate")
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="MQTT broker URL")
    parser.add_argument(
        "--directory", default="config/directory.toml", help="directory.toml naming the speakers"
    )
    parser.add_argument("--fail-rate", type=float, default=0.0, help="share of plays that fail (0–1)")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="time from received to played")
    parser.add_argument(
        "--no-led", action="store_true", help="leave the villages' LED boards to real hardware"
    )
    args = parser.parse_args(argv)
    try:
        speakers, boards = devices_of(args.directory, args.village)
    except Exception as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    if args.no_led:
        boards = {}
    warnd_log.configure("info")
    print(
        f"simulating on {args.broker}: villages {' '.join(args.village)};"
        f" speakers: {len(speakers)}, LED boards: {len(boards)}",
        file=sys.stderr,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            simulate(args.broker, speakers, boards=boards, fail_rate=args.fail_rate, delay_ms=args.delay_ms)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
