"""The benchmark's lightweight peer: thousands of loudspeakers (or a bare echo) on one MQTT connection.

    python -m bench._swarm speakers mqtt://HOST:PORT MAPPING.json [--progress-acks]
    python -m bench._swarm echo mqtt://HOST:PORT

Ten thousand real terminals each have their own CPU; one process standing in for all of them
must cost as little per speaker as it can, or the benchmark measures the simulator instead of
warnd. So this peer is plain paho-mqtt (no asyncio, one network thread), parses a village
command once for all its speakers, downloads and checks each audio URL's sha256 once, and acks
at QoS 1 without waiting for each PUBACK (paho resends unacknowledged ones on reconnect). It
keeps the terminal's rules: a msg_id is played once per speaker, nothing is played after
`not_after`, and an audio file whose sha256 does not match is reported `failed`.

`warnctl simulate-speakers` (warnd.simulator) is the full simulator, one connection per speaker
with retained status and last will; this one is only for load.

`echo` answers every `bench/cmd/{n}` with a QoS-1 `bench/ack/{n}`: the bare loop's peer.
Prints `ready` on stdout once subscribed, and runs until terminated.
"""

from __future__ import annotations

import hashlib
import json
import signal
import sys
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

TOPIC_ROOT = "warnd/v1"
MAX_INFLIGHT = 1000


class Swarm:
    """Speakers (or an echo) on one paho connection.

    Args:
        mode: `speakers` or `echo`.
        speakers: device id → village code (speakers mode).
        progress_acks: also ack `received` and `playing`, as terminals do.
    """

    def __init__(self, mode: str, speakers: dict[str, str], progress_acks: bool = False) -> None:
        """Index speakers by village; nothing is connected yet."""
        self.mode = mode
        self.progress_acks = progress_acks
        self.speakers = speakers
        self.by_village: dict[str, list[str]] = {}
        for device_id, village in speakers.items():
            self.by_village.setdefault(village, []).append(device_id)
        self.handled: set[tuple[str, str]] = set()  # (device id, msg_id) already played or refused
        self.audio: dict[str, str] = {}  # url → sha256 of what was downloaded
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{mode}", clean_session=True)
        self.client.max_inflight_messages_set(MAX_INFLIGHT)
        self.client.max_queued_messages_set(0)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        """Subscribe on (every) connect."""
        if self.mode == "echo":
            client.subscribe("bench/cmd/#", qos=1)
        else:
            client.subscribe([(f"{TOPIC_ROOT}/village/+/speaker", 1), (f"{TOPIC_ROOT}/device/+/cmd", 1)])

    def _on_subscribe(self, *_: Any) -> None:
        """Tell the parent process we are listening."""
        print("ready", flush=True)

    def _on_message(self, client: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        """A command for a village or one device (or an echo request)."""
        parts = message.topic.split("/")
        if self.mode == "echo":
            client.publish("bench/ack/" + parts[-1], message.payload, qos=1)
            return
        if parts[2] == "village":
            targets = self.by_village.get(parts[3], [])
        else:
            targets = [parts[3]] if parts[3] in self.speakers else []
        try:
            cmd = json.loads(message.payload)
            msg_id = cmd["msg_id"]
        except (ValueError, KeyError, TypeError):
            return
        status, detail = self._outcome(cmd)
        ack_topic = str(cmd.get("ack_topic") or f"{TOPIC_ROOT}/device/{{device_id}}/ack")
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        statuses = (["received", "playing"] if self.progress_acks and status == "played" else []) + [status]
        bodies = [
            json.dumps({"msg_id": msg_id, "status": s, "at": now, "detail": detail}).encode()
            for s in statuses
        ]
        for device_id in targets:
            if (device_id, msg_id) in self.handled:
                continue  # at-least-once delivery: never played twice
            self.handled.add((device_id, msg_id))
            topic = ack_topic.replace("{device_id}", device_id)
            for body in bodies:
                client.publish(topic, body, qos=1)

    def _outcome(self, cmd: dict[str, Any]) -> tuple[str, str]:
        """What every targeted speaker reports for a command: played, failed or cancelled."""
        if cmd.get("kind") in ("stop", "clear") and not cmd.get("audio"):
            return "cancelled", ""
        not_after = cmd.get("not_after")
        if not_after and datetime.now(UTC) > datetime.fromisoformat(not_after):
            return "failed", f"not_after {not_after} has passed"
        audio = cmd.get("audio")
        if audio:
            url = audio.get("url", "")
            if url not in self.audio:
                try:
                    with urllib.request.urlopen(url, timeout=30) as resp:
                        self.audio[url] = hashlib.sha256(resp.read()).hexdigest()
                except OSError as exc:
                    return "failed", f"audio download failed: {type(exc).__name__}"
            if self.audio[url] != audio.get("sha256"):
                return "failed", "audio sha256 mismatch"
        return "played", ""

    def run(self, url: str) -> None:
        """Connect and serve until SIGTERM."""
        host, port = url.removeprefix("mqtt://").split(":")
        stopping = False

        def stop(*_: object) -> None:
            """Only a flag: a handler calling into paho (disconnect) can run while the loop holds
            one of paho's locks and wait for it for ever (seen: `_msgtime_mutex`)."""
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, stop)
        self.client.connect(host, int(port), keepalive=60)
        while not stopping:
            self.client.loop(timeout=0.2)
        self.client.disconnect()


def main() -> None:
    """Entry point."""
    mode, url = sys.argv[1], sys.argv[2]
    speakers = json.loads(Path(sys.argv[3]).read_text()) if mode == "speakers" else {}
    Swarm(mode, speakers, progress_acks="--progress-acks" in sys.argv).run(url)


if __name__ == "__main__":
    main()
