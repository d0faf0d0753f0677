"""A county's loudspeakers and LED boards in one process, counting what they receive and play.

    python -m tests.support.counting_receiver mqtt://HOST:PORT DEVICES.json EVENTS.jsonl [DELAY_MS]

DEVICES.json is `{"speakers": {device_id: village_code}, "boards": [device_id, …]}`. Each device
behaves as docs/mqtt.md asks of a terminal: a msg_id is carried out once (speakers ack
`received`, `playing`, `played`, or `cancelled` for a silent stop; boards ack `shown`); the same
msg_id again gets its final status again, and is not played or shown twice; nothing is done after
`not_after` (acked `failed`, and judged afresh if it comes again). Audio is not downloaded: what
is counted is the command, not the sound (tests/test_loudspeaker.py checks the audio).

Every command a device gets is one `recv` line in EVENTS.jsonl, every first execution one `play`
line (`{"e", "d": device, "m": msg_id, "k": kind, "w": warning_id}`), so a test counts every
(msg_id, device) received and played. It is one paho connection with a fixed client id and a
persistent session, as a terminal keeps; it re-subscribes on every connect (a broker without
persistence forgets subscriptions) and publishes acks at QoS 1 (paho sends them again after a
reconnect). DELAY_MS slows the handling of each command, as a terminal parsing it and starting
its download would: the broker then holds the rest of a fan-out in its queue.

Prints `ready` on stdout once subscribed, and runs until SIGTERM.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from warnd.mqtt import topics

# Acks of a 2,000-speaker fan-out go out without waiting for each PUBACK.
MAX_INFLIGHT = 1000


class Receiver:
    """Speakers and boards on one connection.

    Args:
        speakers: device id → village code.
        boards: LED board ids.
        events: where `recv` and `play` lines go.
        delay_s: time taken to handle each command.
    """

    def __init__(self, speakers: dict[str, str], boards: list[str], events: TextIO, delay_s: float) -> None:
        """Index the devices; nothing is connected yet."""
        self.speakers = speakers
        self.boards = set(boards)
        self.by_village: dict[str, list[str]] = {}
        for device_id, village in speakers.items():
            self.by_village.setdefault(village, []).append(device_id)
        self.events = events
        self.delay_s = delay_s
        self.final: dict[tuple[str, str], str] = {}  # (device, msg_id) → the final status it acked
        self.announced = False
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="counting-receiver", clean_session=False
        )
        self.client.max_inflight_messages_set(MAX_INFLIGHT)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(0.1, 1)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        """Subscribe on every connect: a broker that lost its sessions forgot ours."""
        client.subscribe([(t.filter(), t.qos) for t in (topics.VILLAGE_SPEAKERS, topics.DEVICE_CMD)])

    def _on_subscribe(self, *_: Any) -> None:
        """Tell the parent process we are listening (once)."""
        if not self.announced:
            self.announced = True
            print("ready", flush=True)

    def _on_message(self, client: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        """One command, for a village's speakers or one device."""
        if self.delay_s:
            time.sleep(self.delay_s)
        village, device = topics.parse_village(message.topic), topics.parse_device(message.topic)
        if village is not None:
            targets = self.by_village.get(village, [])
        else:
            own = device[0] if device is not None else ""
            targets = [own] if own in self.speakers or own in self.boards else []
        try:
            cmd = json.loads(message.payload)
            msg_id, kind = cmd["msg_id"], cmd["kind"]
        except (ValueError, KeyError, TypeError):
            return
        stale = _stale(cmd.get("not_after"))
        lines = []
        for device in targets:
            base = {"d": device, "m": msg_id, "k": kind, "w": cmd.get("warning_id")}
            lines.append({"e": "recv", **base})
            topic = topics.ack_topic_for(str(cmd.get("ack_topic") or ""), device)
            done = self.final.get((device, msg_id))
            if done is not None:
                # Carried out already: say so again (warnd may be waiting for it), never twice.
                self._ack(topic, msg_id, [done])
                continue
            if stale:
                self._ack(topic, msg_id, ["failed"], detail=f"not_after {cmd.get('not_after')} has passed")
                continue
            statuses = self._statuses(device, cmd)
            self.final[(device, msg_id)] = statuses[-1]
            lines.append({"e": "play", **base})
            self._ack(topic, msg_id, statuses)
        if lines:
            self.events.write("".join(json.dumps(line) + "\n" for line in lines))
            self.events.flush()

    def _statuses(self, device: str, cmd: dict[str, Any]) -> list[str]:
        """What a device reports for a command it carries out, in order."""
        if device in self.boards:
            return ["shown"]
        if cmd["kind"] == "stop" and not cmd.get("audio"):
            return ["cancelled"]
        return ["received", "playing", "played"]

    def _ack(self, topic: str, msg_id: str, statuses: list[str], detail: str = "") -> None:
        """Publish acks at QoS 1."""
        at = datetime.now(UTC).isoformat(timespec="milliseconds")
        for status in statuses:
            body = {"msg_id": msg_id, "status": status, "at": at, "detail": detail}
            self.client.publish(topic, json.dumps(body), qos=topics.QOS, retain=topics.ACK_RETAIN)

    def run(self, url: str) -> None:
        """Connect and serve until SIGTERM; reconnects by itself while the broker is away."""
        host, port = url.removeprefix("mqtt://").split(":")
        # disconnect() from another thread: called in the handler itself it can run while the loop
        # holds one of paho's locks (`_msgtime_mutex`) and wait for it for ever.
        signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=self.client.disconnect).start())
        while True:
            try:
                self.client.connect(host, int(port), keepalive=10)
                break
            except OSError:
                time.sleep(0.2)
        self.client.loop_forever(retry_first_connection=True)


def _stale(not_after: Any) -> bool:
    """Whether a command's not_after has passed."""
    if not isinstance(not_after, str):
        return False
    return datetime.now(UTC) > datetime.fromisoformat(not_after)


def main() -> None:
    """Entry point."""
    url, devices_path, events_path = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    delay_s = float(sys.argv[4]) / 1000 if len(sys.argv) > 4 else 0.0
    devices = json.loads(devices_path.read_text())
    with events_path.open("a", encoding="utf-8") as events:
        Receiver(devices["speakers"], devices["boards"], events, delay_s).run(url)


if __name__ == "__main__":
    main()
