"""A reference terminal for warnd's MQTT contract v1 (docs/mqtt.md): a village loudspeaker or (--led) board.

Start from this to connect real hardware. It plays nothing: it fetches the audio, checks its
sha256 and prints `PLAY …` where a speaker would play (`SHOW …` / `CLEAR …` for a board).
Usage: python speaker_client.py mqtt://broker:1883 spk-330502101201-1 330502101201 [--led]
"""

import asyncio
import hashlib
import json
import sys
import urllib.request
from datetime import UTC, datetime
from urllib.parse import urlsplit

import aiomqtt


def fetch_verified(audio: dict) -> bytes:
    """The MP3, refused unless its sha256 is the command's (cache it by sha256: it never changes)."""
    with urllib.request.urlopen(audio["url"], timeout=30) as resp:  # noqa: S310 (warnd's public_url)
        data = resp.read()
    if hashlib.sha256(data).hexdigest() != audio["sha256"]:
        raise ValueError("audio sha256 mismatch")
    return data


async def act(cmd: dict, led: bool) -> tuple[str, str]:
    """Carry out a new command: (final status, detail). GD/J 082: played/shown 3, failed 4, cancelled 5."""
    if cmd.get("v") != 1 or cmd.get("kind") not in (("display", "clear") if led else ("play", "stop")):
        return "failed", f"unsupported command v={cmd.get('v')} kind={cmd.get('kind')}"  # never guess
    if datetime.fromisoformat(cmd["not_after"]) < datetime.now(UTC):
        return "failed", "not_after has passed"  # queued while we were away: never play a stale warning
    if led:
        print(
            cmd["kind"].replace("display", "show").upper(), cmd["msg_id"], *cmd.get("lines", []), flush=True
        )
        return "shown", ""
    if cmd["kind"] == "stop":
        print("STOP", cmd["warning_id"], flush=True)  # stop whatever plays for this warning, then…
        if not cmd["audio"]:
            return "cancelled", ""  # …nothing more: a silent stop (expiry)
    if cmd["audio"]:
        await asyncio.to_thread(fetch_verified, cmd["audio"])  # no audio: speak `text` with your own TTS
    print("PLAY", cmd["msg_id"], cmd["warning_id"], cmd["audio"] and cmd["audio"]["sha256"], flush=True)
    return "played", ""


async def main(url: str, device: str, village: str, led: bool) -> None:
    """Persistent session, retained status with a last will; each msg_id carried out once."""
    status = f"warnd/v1/device/{device}/status"
    will = aiomqtt.Will(status, json.dumps({"online": False}), qos=1, retain=True)
    done: dict[str, str] = {}  # msg_id → final status; a real terminal keeps it across reboots
    u = urlsplit(url)
    # A fixed client id and clean_session=False: the broker keeps commands for us while we are away.
    client = aiomqtt.Client(u.hostname, u.port or 1883, identifier=device, clean_session=False, will=will)
    while True:  # aiomqtt 2.x leaves reconnecting to us
        try:
            async with client:
                at = datetime.now(UTC).isoformat()
                online = {"online": True, "village": village, "model": "warnd-example", "at": at}
                await client.publish(status, json.dumps(online), qos=1, retain=True)
                await client.subscribe(f"warnd/v1/device/{device}/cmd", qos=1)
                if not led:
                    await client.subscribe(f"warnd/v1/village/{village}/speaker", qos=1)
                async for message in client.messages:
                    try:
                        cmd = json.loads(message.payload)
                        msg_id, ack_topic = cmd["msg_id"], cmd["ack_topic"].replace("{device_id}", device)
                    except (ValueError, KeyError, TypeError, AttributeError):
                        continue  # not a command: nothing to acknowledge
                    if msg_id in done:  # warnd or the broker sent it again: confirm, never act twice
                        state, detail = done[msg_id], "duplicate"
                    else:
                        if not led:  # a speaker says at once that it has the command
                            await ack(client, ack_topic, msg_id, "received", "")
                        try:
                            state, detail = await act(cmd, led)
                        except Exception as exc:  # download, sha256, a missing field: warnd retries it
                            state, detail = "failed", f"{type(exc).__name__}: {exc}"[:200]
                        if state != "failed":  # a failed msg_id was not carried out: judge a retry afresh
                            done[msg_id] = state
                    await ack(client, ack_topic, msg_id, state, detail)
        except aiomqtt.MqttError:
            await asyncio.sleep(5)


async def ack(client: aiomqtt.Client, topic: str, msg_id: str, status: str, detail: str) -> None:
    """One acknowledgement (docs/schemas/ack.json)."""
    body = {"msg_id": msg_id, "status": status, "at": datetime.now(UTC).isoformat(), "detail": detail}
    await client.publish(topic, json.dumps(body, ensure_ascii=False), qos=1)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], "--led" in sys.argv[4:]))
