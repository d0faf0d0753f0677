"""LED boards (电子显示屏) over the shared MQTT link: `display` and `clear` commands, acked `shown`.

A board shows what is in force for it, not what one delivery says: at every send the adapter
asks the store which warnings in force were sent to this board and shows the most severe,
newest first (or all of them in turn when `[led] rotate` is on). So a red warning replaces a
yellow one, cancelling the red brings the yellow back, and when nothing is left the board is
cleared — whichever delivery (warning, update, cancel, expiry) triggered the send. The command
carries the delivery's msg_id, so the board's `shown` ack lands on that delivery.

Text is laid out for the board: `chars_per_line` full-width characters (a half-width character
takes half a cell) by `lines`, static (cut to fit) or scroll (all lines, the board scrolls).
"""

from __future__ import annotations

import asyncio
import json
import unicodedata
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

import structlog

from adapters.mqtt import MqttDeviceAdapter
from warnd.adapter import AdapterContext, Limits, Message, NotReadyError, Receipt, TransientError
from warnd.clock import parse_iso
from warnd.model import Level
from warnd.mqtt import topics

if TYPE_CHECKING:
    from warnd.config import LedSettings

log = structlog.get_logger("adapters.led")

# RGB per level, as the national warning signals paint them; boards with fewer colours map these.
LEVEL_RGB = {"red": "#FF0000", "orange": "#FF7F00", "yellow": "#FFFF00", "blue": "#0066FF"}
# A scrolling board still needs an end: a warning's text beyond this many screens is cut.
MAX_SCROLL_SCREENS = 8
# A `clear`, or a display of a warning without expiry, stays valid this long at a board that was
# offline: it must not show a stale warning after a night without power.
DEFAULT_NOT_AFTER = timedelta(hours=2)


def cells(ch: str) -> int:
    """Cells a character takes: 2 for full-width (汉字, full-width punctuation), 1 otherwise."""
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def wrap(text: str, chars_per_line: int) -> list[str]:
    """Break text into lines of at most chars_per_line full-width characters (2 cells each)."""
    width = chars_per_line * 2
    out: list[str] = []
    line, used = "", 0
    for ch in " ".join(text.split()):
        c = cells(ch)
        if used + c > width:
            out.append(line.rstrip())
            line, used = "", 0
            if ch == " ":
                continue
        line += ch
        used += c
    if line.strip():
        out.append(line.rstrip())
    return out


def layout(title: str, body: str, chars_per_line: int, lines: int, mode: str) -> list[str]:
    """The lines a board shows: the title on its own line(s), then the body; cut to fit when static."""
    out = wrap(title, chars_per_line) + wrap(body, chars_per_line)
    limit = lines if mode == "static" else lines * MAX_SCROLL_SCREENS
    if len(out) <= limit:
        return out
    out = out[:limit]
    last = out[-1]
    while last and sum(cells(c) for c in last) + 2 > chars_per_line * 2:
        last = last[:-1]
    out[-1] = last + "…"
    return out


def ranked(warnings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Most severe first; among equals, newest first."""
    by_new = sorted(warnings, key=lambda w: w.get("created_at") or "", reverse=True)
    return sorted(by_new, key=lambda w: Level(w["level"]).rank)


def board_title(w: dict[str, Any]) -> str:
    """`【演练】暴雨红色预警`."""
    drill = "【演练】" if w.get("status", "actual") != "actual" else ""
    return f"{drill}{w.get('event', '')}{Level(w['level']).chinese}预警"


class LedAdapter(MqttDeviceAdapter):
    """Publishes display/clear commands to LED boards over the shared MQTT link.

    Args:
        ctx: the daemon's adapter context (store, clock, and `extra["mqtt"]`, the shared link).
    """

    kind: ClassVar[str] = "led"
    limits: ClassVar[Limits] = Limits(max_text_chars=1000, concurrency=200, batch_size=500, claim_ahead=True)

    def __init__(self, ctx: AdapterContext) -> None:
        """Share the link and the device hub (which routes the boards' acks to feedback)."""
        super().__init__(ctx)
        # One board's sends are serialised: two warnings in one batch must not race each other.
        self._locks: dict[str, asyncio.Lock] = {}

    def republish_until(self, message: Message, first_sent: datetime) -> datetime:
        """The first publish's not_after: the warning's expiry, else first_sent + 2 h (a `clear`: 2 h)."""
        expires = (
            message.warning.get("expires") if message.delivery.kind not in ("cancel", "expire") else None
        )
        return parse_iso(expires) or first_sent + DEFAULT_NOT_AFTER

    async def send_batch(self, messages: Sequence[Message]) -> list[Receipt | BaseException]:
        """Each delivery: work out what its board shows now and publish that (boards in parallel)."""
        if not self.link.connected:
            raise NotReadyError("broker unavailable")

        async def one(m: Message) -> Receipt | BaseException:
            """One board's command, serialised per board."""
            board = m.delivery.target
            lock = self._locks.setdefault(board, asyncio.Lock())
            async with lock:
                try:
                    cmd = await self.command_for(m)
                    payload = json.dumps(cmd, ensure_ascii=False).encode()
                    await self.link.publish(topics.device_cmd(board), payload, retain=topics.COMMAND_RETAIN)
                except TransientError as exc:
                    return exc
            log.info(
                "led.command",
                warning_id=m.delivery.warning_id,
                msg_id=m.delivery.msg_id,
                channel=self.kind,
                target=board,
                command=cmd["kind"],
                shown=cmd.get("warning_id"),
                warning_level=cmd.get("level"),
            )
            return Receipt("sent")

        return list(await asyncio.gather(*(one(m) for m in messages)))

    def _board(self, board: str) -> tuple[int, int, str]:
        """(chars_per_line, lines, mode) for a board: its own settings over `[led]`."""
        s: LedSettings = self.ctx.settings.led
        own = s.boards.get(board)
        if own is None:
            return s.chars_per_line, s.lines, s.mode
        return (own.chars_per_line or s.chars_per_line, own.lines or s.lines, own.mode or s.mode)

    async def showing(self, board: str, village: str | None) -> list[dict[str, Any]]:
        """The warnings in force for this board, in the order it shows them."""
        rows = await self.ctx.store.in_force_for(self.kind, board)
        if village:
            rows = [w for w in rows if village in w.get("villages", [])]
        return ranked([dict(w) for w in rows])

    async def command_for(self, m: Message) -> dict[str, Any]:
        """The command for a board now: display the top warning (and the rest, rotating), or clear."""
        d = m.delivery
        # A command published again (its board did not confirm) keeps its first publish's limits.
        now = d.sent_at if d.republish and d.sent_at else self._now()
        village = d.village or self.ctx.directory().device_village.get(d.target)
        shown = await self.showing(d.target, village)
        base = {"v": 1, "msg_id": d.msg_id, "ack_topic": topics.device_ack(d.target)}
        if not shown:
            return {
                **base,
                "warning_id": d.warning_id,
                "kind": "clear",
                "level": None,
                "severity_code": None,
                "drill": m.drill,
                "title": "",
                "text": "",
                "not_after": _iso(now + DEFAULT_NOT_AFTER),
            }
        chars, lines, mode = self._board(d.target)
        pages = [self._page(w, chars, lines, mode, now) for w in shown]
        top = pages[0]
        cmd = {
            **base,
            **top,
            "kind": "display",
            "mode": mode,
            "chars_per_line": chars,
            "lines_per_screen": lines,
        }
        settings = self.ctx.settings.led
        if settings.rotate and len(pages) > 1:
            cmd["pages"] = pages
            cmd["rotate_s"] = settings.rotate_s
        return cmd

    def _page(self, w: dict[str, Any], chars: int, lines: int, mode: str, now: datetime) -> dict[str, Any]:
        """One warning as a board shows it."""
        level = Level(w["level"])
        title = board_title(w)
        body = " ".join(p for p in (w.get("headline", ""), w.get("instruction", "")) if p)
        expires = w.get("expires")
        return {
            "warning_id": w["id"],
            "level": level.value,
            "severity_code": level.severity_code,
            "colour": LEVEL_RGB[level.value],
            "drill": w.get("status", "actual") != "actual",
            "title": title,
            "text": body,
            "lines": layout(title, body, chars, lines, mode),
            "not_after": expires or _iso(now + DEFAULT_NOT_AFTER),
        }


def _iso(dt: datetime) -> str:
    """UTC ISO 8601 to the second."""
    return dt.astimezone(UTC).isoformat(timespec="seconds")
