"""A recording adapter: stands in for a channel and writes every send to a file that survives SIGKILL."""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

from warnd import messages
from warnd.adapter import Adapter, AdapterContext, Limits, Message, PermanentError, Receipt, TransientError


class RecordingAdapter(Adapter):
    """Records (msg_id, target, kind) per send; fails on script.

    Args:
        ctx: the daemon's adapter context.
        channel: the channel it stands in for.
        path: JSON-lines file to append to (fsynced per batch), or None to keep in memory.
        delay_s: how long each send takes (to kill a daemon mid-dispatch).
        script: target → list of "transient[:retry_after]" / "permanent" / "ok", consumed per attempt.
    """

    # Claims ahead as the device channels do: the crash and stop tests see that pipeline.
    limits: ClassVar[Limits] = Limits(concurrency=4, batch_size=20, claim_ahead=True)

    def __init__(
        self,
        ctx: AdapterContext,
        channel: str = "loudspeaker",
        path: Path | None = None,
        delay_s: float = 0.0,
        script: dict[str, list[str]] | None = None,
    ) -> None:
        """Set up an empty record."""
        super().__init__(ctx)
        self.kind = channel  # type: ignore[misc]
        self.path = path
        self.delay_s = delay_s
        self.script = {k: list(v) for k, v in (script or {}).items()}
        self.sent: list[dict[str, str]] = []
        # (warning id, kind) of each prepare(): what the scheduler asked this channel to get ready.
        self.prepared: list[tuple[str, str]] = []

    def prepare(self, warning: dict[str, Any], kind: str, context: dict[str, Any] | None = None) -> None:
        """Record that the channel was asked to get ready (a loudspeaker renders its MP3 here)."""
        self.prepared.append((warning["id"], kind))

    async def send(self, message: Message) -> Receipt:
        """Record one send, or fail as scripted."""
        d = message.delivery
        plan = self.script.get(d.target)
        step = plan.pop(0) if plan else "ok"
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if step.startswith("transient"):
            _, _, after = step.partition(":")
            raise TransientError("scripted transient failure", float(after) if after else None)
        if step == "permanent":
            raise PermanentError("scripted permanent failure")
        record = {
            "msg_id": d.msg_id,
            "target": d.target,
            "kind": d.kind,
            "step": d.step,
            "channel": d.channel,
            "warning_id": d.warning_id,
            "headline": message.warning.get("headline", ""),
            "message": messages.kind_of(d.kind, d.context),
        }
        self.sent.append(record)
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        return Receipt("sent", provider_ref=f"rec-{d.id}")

    def by_msg(self) -> Counter[tuple[str, str]]:
        """How many times each (msg_id, target) was sent."""
        return Counter((r["msg_id"], r["target"]) for r in self.sent)


def read_records(path: Path) -> list[dict[str, str]]:
    """The records a (possibly killed) daemon's recording adapters wrote.

    Only whole lines: the daemon may be writing the last one while we read (or was killed
    halfway through it, in which case that send was never reported as done).
    """
    if not path.exists():
        return []
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1].decode("utf-8")
    return [json.loads(line) for line in complete.splitlines() if line.strip()]
