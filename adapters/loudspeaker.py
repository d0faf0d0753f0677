"""Village loudspeakers (村村响) over MQTT: spoken warnings out, play confirmations back.

A batch of deliveries becomes MQTT commands (topics: warnd.mqtt.topics): one publish to
`warnd/v1/village/{code}/speaker` when every speaker of the village is in the batch for a
msg_id, one to `warnd/v1/device/{id}/cmd` per speaker otherwise. A warning or update is a
`play` command with an MP3 rendered by `warnd.audio.AudioCache` and served at
`/audio/{sha256}.mp3`; a cancel is a `stop` with the spoken all-clear (解除预警); an expiry is a
silent `stop`. Acks and device health come back through the shared `warnd.mqtt.devices.DeviceHub`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import structlog

from adapters.mqtt import MqttDeviceAdapter
from warnd import messages
from warnd.adapter import (
    AdapterContext,
    Limits,
    Message,
    NotReadyError,
    Receipt,
    TransientError,
    Webhook,
    truncate,
)
from warnd.audio import MAX_TEXT_CHARS, AudioCache, AudioError, AudioFile, audio_routes
from warnd.clock import parse_iso
from warnd.model import Level
from warnd.mqtt import topics

log = structlog.get_logger("warnd.adapters.loudspeaker")

# Renders kept in memory per process: a warning's play, update and all-clear, for a few warnings.
AUDIO_MEMO = 64
# What /audio answers, as the OpenAPI document states it (an unknown name is the JSON 404).
AUDIO_RESPONSES: dict[int, Any] = {
    200: "the MP3",
    206: "a byte range of it (Range)",
    304: "not modified (If-None-Match)",
    404: "no such file (or not a sha256 name)",
    412: "If-Match names another file",
    416: "range not satisfiable",
}


def spoken(
    warning: dict[str, Any], kind: str, context: dict[str, Any] | None, settings: Any, directory: Any
) -> tuple[str, str]:
    """What the speakers say for a delivery (its message kind's spoken form), and the audio kind.

    The audio kind picks the tones: the all-clear's steady tone, a drill's own, else the level's.
    """
    if kind == "expire":
        # A silent stop: a terminal that speaks `text` itself says the warning ended, nothing more.
        name = f"{warning.get('event', '')}{Level(warning['level']).chinese}预警"
        return f"{name}有效期已过，预警结束。", "all_clear"
    message_kind = messages.kind_of(kind, context)
    values = messages.values_for(
        warning, message_kind, context, settings=settings, directory=directory, channel="loudspeaker"
    )
    text = messages.render(message_kind, values, settings.messages).speech
    if message_kind == "all_clear":
        audio_kind = "all_clear"
    else:
        audio_kind = "drill" if warning.get("status", "actual") != "actual" else "warning"
    return truncate(text, MAX_TEXT_CHARS), audio_kind


def not_after(warning: dict[str, Any], kind: str, now: datetime, max_age_min: float) -> str:
    """Latest time a terminal may act on a command: the warning's expiry, else now + max age.

    A stop (cancel, expiry) is sent at or after the expiry, so it always gets now + max age.
    """
    expires = warning.get("expires")
    if expires and kind not in ("cancel", "expire"):
        return expires
    return (now + timedelta(minutes=max_age_min)).astimezone(UTC).isoformat(timespec="seconds")


def command(
    message: Message,
    *,
    audio: AudioFile | None,
    public_url: str,
    text: str,
    ack_topic: str,
    now: datetime,
    max_age_min: float,
) -> dict[str, Any]:
    """The JSON command of docs/mqtt.md's MQTT contract for one delivery (or a village's shared one)."""
    d, w = message.delivery, message.warning
    level = Level(w["level"])
    stop = d.kind in ("cancel", "expire")
    return {
        "v": 1,
        "msg_id": d.msg_id,
        "warning_id": d.warning_id,
        "kind": "stop" if stop else "play",
        "level": level.value,
        "severity_code": level.severity_code,
        "drill": message.drill,
        "title": w.get("headline", ""),
        "text": text,
        "audio": audio.payload(public_url) if audio is not None else None,
        # The file already speaks the message `tts.repeat` times: a terminal plays it once.
        "repeat": 1,
        # A command published again (its device did not confirm) keeps its first publish's limit.
        "not_after": not_after(w, d.kind, d.sent_at if d.republish and d.sent_at else now, max_age_min),
        "ack_topic": ack_topic,
    }


class LoudspeakerAdapter(MqttDeviceAdapter):
    """Publishes play/stop commands to village loudspeakers over the shared MQTT link.

    Args:
        ctx: the daemon's adapter context; the shared MQTT link is `ctx.mqtt`.
    """

    kind: ClassVar[str] = "loudspeaker"
    # 500 deliveries, the `[dispatch] batch_size` default that caps every channel's claim: 50
    # villages of 10 speakers per claim, their publishes pipelined (up to the link's 1,000 in
    # flight). 1,000 was measured on the 10,000-speaker bench with no gain (bench/README.md),
    # and a smaller claim puts the first village commands on the wire sooner.
    limits: ClassVar[Limits] = Limits(
        max_text_chars=MAX_TEXT_CHARS, concurrency=1000, batch_size=500, claim_ahead=True
    )

    def __init__(self, ctx: AdapterContext) -> None:
        """Share the link and the device hub; the audio cache lives under state_dir/audio."""
        super().__init__(ctx)
        self.audio = AudioCache(ctx.settings.state_dir / "audio", ctx.settings.tts)
        # Renders by (text, level, audio kind), started by prepare() or the first send.
        self._memo: dict[tuple[str, str, str], asyncio.Task[AudioFile | None]] = {}
        # Whether the last render failed: a full disk fails every render until space comes
        # back, and the operator needs one line about it, not one per command.
        self._audio_failing = False

    def webhooks(self) -> list[Webhook]:
        """`/audio/{sha256}.mp3`, without a token: terminals fetch and verify by sha256."""
        handler = audio_routes(self.audio)[0].handler
        return [
            Webhook("GET", "/audio/{name}", handler, "A rendered warning MP3, by content sha256",
                    responses=AUDIO_RESPONSES),
            Webhook("HEAD", "/audio/{name}", handler, "Size and ETag of a rendered warning MP3",
                    responses=AUDIO_RESPONSES),
        ]  # fmt: skip

    async def aclose(self) -> None:
        """Stop renders still running (a shutdown right after a step was planned)."""
        pending = [t for t in self._memo.values() if not t.done()]
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await super().aclose()

    def prepare(self, warning: dict[str, Any], kind: str, context: dict[str, Any] | None = None) -> None:
        """Start rendering the step's audio now, while its deliveries are still being written."""
        if kind != "expire":
            text, audio_kind = spoken(warning, kind, context, self.ctx.settings, self.ctx.directory())
            self._render(text, warning["level"], audio_kind, warning.get("id", ""))

    async def _audio(self, message: Message, text: str, audio_kind: str) -> AudioFile | None:
        """The MP3 for a command; None for a silent stop, or when rendering fails (text is still sent)."""
        if message.delivery.kind == "expire":
            return None
        task = self._render(text, message.warning["level"], audio_kind, message.delivery.warning_id)
        # Shielded: a send that times out leaves the render to finish for the retry.
        return await asyncio.shield(task)

    def _render(
        self, text: str, level: str, audio_kind: str, warning_id: str
    ) -> asyncio.Task[AudioFile | None]:
        """The render of (text, level, kind): the one already started, or a new one."""
        key = (text, level, audio_kind)
        task = self._memo.get(key)
        if task is None or (task.done() and (task.cancelled() or task.exception() or task.result() is None)):
            if len(self._memo) >= AUDIO_MEMO:
                self._memo = {k: t for k, t in self._memo.items() if not t.done()}
            task = self._memo[key] = asyncio.get_running_loop().create_task(
                self._render_once(text, level, audio_kind, warning_id), name=f"warnd.audio.{warning_id}"
            )
        return task

    async def _render_once(self, text: str, level: str, audio_kind: str, warning_id: str) -> AudioFile | None:
        """Render; on any failure return None: the command goes out as text (audio null).

        A warning is never held back for its audio: terminals with their own TTS still speak
        `text`. A failed render is tried again by the next command that needs it.
        """
        try:
            audio = await self.audio.render(text, level, kind=audio_kind)
        except (AudioError, OSError) as exc:
            # The engine failed, or the disk is full or read-only (ENOSPC, EROFS): the
            # operator's to fix, said once until a render works again.
            self._render_failed(warning_id, f"{type(exc).__name__}: {exc}", bug=False)
            return None
        except Exception as exc:
            self._render_failed(warning_id, repr(exc)[:300], bug=True)
            return None
        if self._audio_failing:
            self._audio_failing = False
            log.info("audio.render_recovered", warning_id=warning_id)
        return audio

    def _render_failed(self, warning_id: str, reason: str, *, bug: bool) -> None:
        """Count a render that failed; log the first of a run of failures (every one if a bug)."""
        metrics = self.ctx.metrics
        if metrics is not None:
            metrics.audio_fallbacks.inc()
        if bug:
            log.error("audio.render_crashed", warning_id=warning_id, error=reason)
        elif not self._audio_failing:
            log.warning("audio.render_failed", warning_id=warning_id, reason=reason, fallback="text")
        self._audio_failing = True

    def republish_until(self, message: Message, first_sent: datetime) -> datetime:
        """The first publish's not_after: the warning's expiry, else first_sent + max_age_min."""
        limit = not_after(
            message.warning, message.delivery.kind, first_sent, self.ctx.settings.loudspeaker.max_age_min
        )
        return parse_iso(limit) or first_sent

    async def send_batch(self, messages: Sequence[Message]) -> list[Receipt | BaseException]:
        """Group by msg_id; publish once per whole village, per device otherwise."""
        if not self.link.connected:
            raise NotReadyError("broker unavailable")
        groups: dict[str, list[int]] = {}
        for i, m in enumerate(messages):
            groups.setdefault(m.delivery.msg_id, []).append(i)
        now = self._now()
        settings = self.ctx.settings
        public_url = settings.http.public_url
        directory = self.ctx.directory()
        publishes: list[tuple[str, bytes, list[int]]] = []
        # What is said depends on the warning, the message kind and its context, not the village:
        # made once per batch, not once per village (each made the warning's list of village
        # names, 1,000 of them for a county-wide red: 5 % of a 10,000-speaker fan-out's CPU).
        said: dict[tuple[str, str, str], tuple[str, str]] = {}
        for indexes in groups.values():
            first = messages[indexes[0]]
            d = first.delivery
            key = (d.warning_id, d.kind, json.dumps(d.context, sort_keys=True, default=str))
            if key not in said:
                said[key] = spoken(first.warning, d.kind, d.context, settings, directory)
            text, audio_kind = said[key]
            audio = await self._audio(first, text, audio_kind)
            village = directory.villages.get(first.delivery.village or "")
            targets = {messages[i].delivery.target for i in indexes}
            whole = village is not None and len(targets) == len(indexes) and set(village.speakers) == targets
            base = command(
                first,
                audio=audio,
                public_url=public_url,
                text=text,
                # Shared by all the village's speakers: each puts its own id into the ack topic.
                ack_topic=topics.VILLAGE_ACK_TOPIC,
                now=now,
                max_age_min=settings.loudspeaker.max_age_min,
            )
            if whole and village is not None:
                publishes.append((topics.village_speakers(village.code), _encode(base), indexes))
            else:
                for i in indexes:
                    target = messages[i].delivery.target
                    cmd = {**base, "ack_topic": topics.device_ack(target)}
                    publishes.append((topics.device_cmd(target), _encode(cmd), [i]))
        retain = topics.COMMAND_RETAIN
        results = await asyncio.gather(
            *(self.link.publish(topic, payload, retain=retain) for topic, payload, _ in publishes),
            return_exceptions=True,
        )
        out: list[Receipt | BaseException] = [TransientError("not published")] * len(messages)
        for (_, _, indexes), result in zip(publishes, results, strict=True):
            for i in indexes:
                out[i] = result if isinstance(result, BaseException) else Receipt("sent")
        return out


def _encode(cmd: dict[str, Any]) -> bytes:
    """A command as UTF-8 JSON, Chinese kept readable for anyone watching with mosquitto_sub."""
    return json.dumps(cmd, ensure_ascii=False).encode()
