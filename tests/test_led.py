"""LED boards on real Mosquitto: the most severe warning in force is shown, then the next, then nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from adapters.led import LedAdapter, layout, ranked, wrap
from tests.support import db
from tests.support.harness import Harness, warning_body
from tests.support.live import close_live, live_harness
from tests.support.mqtt import Broker, stop_client_task
from tests.support.process import ROOT
from tests.support.wait import until
from warnd.tools.simulator import SimBoard

BOARD = "led-330502101201-1"


class Board:
    """A test LED board: records every command on its cmd topic, acks `shown` (a clear: `cleared`)."""

    def __init__(self, broker: Broker, board_id: str = BOARD, ack: bool = True) -> None:
        """Remember where to listen."""
        self.broker, self.board_id, self.ack = broker, board_id, ack
        self.commands: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def _run(self) -> None:
        """Subscribe, record, acknowledge."""
        async with aiomqtt.Client(
            self.broker.host, self.broker.port, identifier=f"board-{uuid.uuid4().hex}"
        ) as c:
            await c.subscribe(f"warnd/v1/device/{self.board_id}/cmd", qos=1)
            self._ready.set()
            async for msg in c.messages:
                cmd = json.loads(msg.payload)  # type: ignore[arg-type]
                self.commands.append(cmd)
                if self.ack:
                    detail = "" if cmd["kind"] == "display" else "cleared"
                    ack = {
                        "msg_id": cmd["msg_id"],
                        "status": "shown",
                        "at": "2026-07-01T00:00:00Z",
                        "detail": detail,
                    }
                    await c.publish(cmd["ack_topic"], json.dumps(ack), qos=1)

    async def __aenter__(self) -> Board:
        """Start listening."""
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._ready.wait(), 5)
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stop listening."""
        assert self._task is not None
        await stop_client_task(self._task)

    async def wait_for(self, n: int, timeout_s: float = 5.0) -> list[dict[str, Any]]:
        """The commands, once at least n have arrived (real broker I/O, not pipeline time)."""
        await until(lambda: len(self.commands) >= n, timeout_s, what=f"{n} commands on {self.board_id}")
        return self.commands


@pytest.fixture
async def led(tmp_path: Path, broker: Broker) -> AsyncIterator[Harness]:
    """warnd with the real LED adapter on the test broker, its MQTT loops running."""
    h = await live_harness(
        tmp_path,
        [LedAdapter],
        directory={"villages": 2},
        settings={
            "http": {"rate_limit_per_s": 0},
            "mqtt": {"url": broker.url, "client_id": f"warnd-{uuid.uuid4().hex[:8]}"},
            # The fake clock jumps minutes while the board's acks travel in real time: no re-publish.
            "led": {
                "boards": {BOARD: {"chars_per_line": 8, "lines": 2, "mode": "static"}},
                "confirm_timeout_s": 3600,
            },
        },
    )
    tasks = [asyncio.create_task(coro, name=name) for name, coro in h.daemon.background()]
    adapter = h.daemon.adapters["led"]
    assert isinstance(adapter, LedAdapter)
    await adapter.link.wait_connected(5)
    try:
        yield h
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await close_live(h)


async def led_rows(h: Harness, wid: str) -> list[dict[str, Any]]:
    """The led deliveries of a warning, as the API lists them."""
    resp = await h.client.get(f"/api/v1/warnings/{wid}/deliveries", headers=h.headers("viewer"))
    assert resp.status == 200
    return [r for r in (await resp.json())["deliveries"] if r["channel"] == "led"]


async def test_yellow_then_red_then_cancel_red_then_yellow_expires(led: Harness, broker: Broker) -> None:
    """yellow shown → red shown → red cancelled: yellow again → yellow expires: cleared."""
    h = led
    async with Board(broker) as board:
        yellow = await h.issue(
            warning_body(level="yellow", headline="暴雨黄色预警", expires="2026-07-01T02:00:00+00:00")
        )
        await h.run_until_idle()
        (c1,) = await board.wait_for(1)
        assert (c1["kind"], c1["level"], c1["warning_id"]) == ("display", "yellow", yellow)
        assert c1["colour"] == "#FFFF00"
        assert c1["severity_code"] == 3
        # Laid out for this board: 8 full-width characters by 2 lines, static.
        assert len(c1["lines"]) == 2
        assert all(len(line) <= 8 for line in c1["lines"])
        assert c1["lines"][0] == "暴雨黄色预警"
        assert c1["lines"][1].endswith("…")

        h.clock.advance(60)
        red = await h.issue(
            warning_body(level="red", headline="暴雨红色预警", expires="2026-07-01T01:00:00+00:00")
        )
        await h.run_until_idle()
        c2 = (await board.wait_for(2))[1]
        assert (c2["kind"], c2["level"], c2["warning_id"]) == ("display", "red", red)
        assert c2["colour"] == "#FF0000"

        h.clock.advance(60)
        resp = await h.client.post(f"/api/v1/warnings/{red}/cancel", json={}, headers=h.headers())
        assert resp.status == 202
        await h.run_until_idle()
        c3 = (await board.wait_for(3))[2]
        assert (c3["kind"], c3["level"], c3["warning_id"]) == ("display", "yellow", yellow)
        red_cancel = [r for r in await led_rows(h, red) if r["kind"] == "cancel"]
        assert [r["msg_id"] for r in red_cancel] == [c3["msg_id"]]  # the cancel's ack lands on it

        h.clock.advance(hours=2)  # past yellow's expiry
        await h.run_until_idle()
        c4 = (await board.wait_for(4))[3]
        assert c4["kind"] == "clear"
        assert len(board.commands) == 4

        # The board's acks came back through the shared link: every led delivery acknowledged.
        async def all_acked() -> bool:
            rows = await led_rows(h, yellow) + await led_rows(h, red)
            return bool(rows) and all(r["state"] == "acknowledged" for r in rows)

        await until(all_acked, 5, what="every led delivery acknowledged")
        w = await h.get(yellow)
        assert w["coverage"]["led"]["acknowledged"] == 1
        assert w["state"] == "expired"


async def test_only_boards_of_the_area_and_drills_only_on_test_boards(led: Harness, broker: Broker) -> None:
    """A warning for village 2 leaves village 1's board alone; a drill reaches no public board."""
    h = led
    async with Board(broker) as board1, Board(broker, "led-330502101202-1") as board2:
        await h.issue(warning_body(level="red", status="exercise", area={"codes": ["330502101"]}))
        await h.run_until_idle()
        wid = await h.issue(warning_body(level="orange", area={"codes": ["330502101202"]}))
        await h.run_until_idle()
        (c,) = await board2.wait_for(1)
        assert (c["kind"], c["level"], c["warning_id"]) == ("display", "orange", wid)
        # Default layout: 16 characters, 4 lines, scroll: the whole text, title first.
        assert c["mode"] == "scroll"
        assert c["lines"][0] == "暴雨橙色预警"
        assert "".join(c["lines"][1:]).replace(" ", "") == (c["text"]).replace(" ", "")
        assert len(board2.commands) == 1  # the drill, published before it, never showed
        # "Nothing for board 1" is shown by a marker: warnd publishes on one connection, in order, so
        # once a later warning for village 1 reaches board 1, anything sent it before would be there.
        marker = await h.issue(warning_body(level="blue", area={"codes": ["330502101201"]}))
        await h.run_until_idle()
        await board1.wait_for(1)
        assert [c["warning_id"] for c in board1.commands] == [marker]


async def test_rotation_lists_every_warning_in_force(tmp_path: Path, broker: Broker) -> None:
    """With rotate on, a display carries every warning in force, most severe first."""
    h = await live_harness(
        tmp_path,
        [LedAdapter],
        settings={
            "http": {"rate_limit_per_s": 0},
            "mqtt": {"url": broker.url, "client_id": f"warnd-{uuid.uuid4().hex[:8]}"},
            "led": {"rotate": True, "rotate_s": 7},
        },
    )
    tasks = [asyncio.create_task(coro) for _, coro in h.daemon.background()]
    try:
        await h.daemon.adapters["led"].link.wait_connected(5)  # type: ignore[attr-defined]
        async with Board(broker) as board:
            blue = await h.issue(warning_body(level="blue", headline="大风蓝色预警"))
            await h.run_until_idle()
            h.clock.advance(10)
            orange = await h.issue(warning_body(level="orange", headline="暴雨橙色预警"))
            await h.run_until_idle()
            cmds = await board.wait_for(2)
            assert "pages" not in cmds[0]
            assert [p["warning_id"] for p in cmds[1]["pages"]] == [orange, blue]
            assert cmds[1]["rotate_s"] == 7
            assert cmds[1]["warning_id"] == orange
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await close_live(h)


def test_layout_wraps_by_width_and_cuts_static_text() -> None:
    """Full-width characters take two cells, half-width one; static text is cut with an ellipsis."""
    assert wrap("暴雨红色预警请立即转移", 4) == ["暴雨红色", "预警请立", "即转移"]
    assert wrap("ABCDEFGH 汉字", 4) == ["ABCDEFGH", "汉字"]
    assert layout("标题", "一二三四五六七八九十", 4, 2, "static") == ["标题", "一二三…"]
    assert len(layout("标题", "一二三四五六七八九十" * 20, 4, 2, "scroll")) == 16


def test_ranked_most_severe_then_newest() -> None:
    """Red before yellow whatever their age; among equals the newer first."""
    ws = [
        {"id": "y-old", "level": "yellow", "created_at": "2026-07-01T00:00:00.000000Z"},
        {"id": "r", "level": "red", "created_at": "2026-07-01T00:00:00.000000Z"},
        {"id": "y-new", "level": "yellow", "created_at": "2026-07-01T01:00:00.000000Z"},
    ]
    assert [w["id"] for w in ranked(ws)] == ["r", "y-new", "y-old"]


async def test_warnctl_simulates_the_villages_boards_too(led: Harness, broker: Broker) -> None:
    """`warnctl simulate-speakers` brings up a village's LED board: it shows, acks, and clears."""
    h = led
    argv = ["simulate-speakers", "--broker", broker.url, "--directory", str(h.settings.directory.path)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "warnd.ctl",
        *argv,
        "--village",
        "330502101201",
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:

        async def board_state() -> str | None:
            resp = await h.client.get("/api/v1/devices", headers=h.headers("viewer"))
            return {d["id"]: d["state"] for d in (await resp.json())["devices"]}.get(BOARD)

        await until(board_state, 20, what="the simulated board online", want="online")
        # The simulator judges not_after by the wall clock: warnd's clock must agree with it.
        h.clock.set(datetime.now(UTC))
        wid = await h.issue(warning_body())
        await h.run_until_idle()

        async def acks(kind: str) -> list[tuple[str, str]]:
            """(status, detail) of the board's acks on this warning's `kind` deliveries, from the database."""
            rows = await db.query(
                h.store,
                "SELECT a.status, a.detail FROM acks a JOIN deliveries d ON d.id = a.delivery_id"
                " WHERE d.warning_id = ? AND d.channel = 'led' AND d.kind = ? ORDER BY a.id",
                (wid, kind),
            )
            return [(r["status"], json.loads(r["detail"]).get("detail", "")) for r in rows]

        await until(lambda: acks("warning"), 5, what="the display acked", want=[("shown", "")])
        resp = await h.client.post(f"/api/v1/warnings/{wid}/cancel", json={}, headers=h.headers())
        assert resp.status == 202
        await h.run_until_idle()
        await until(lambda: acks("cancel"), 5, what="the clear acked", want=[("shown", "cleared")])
        assert [r["state"] for r in await led_rows(h, wid)] == ["acknowledged", "acknowledged"]
    finally:
        proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 15)
    assert "villages 330502101201; speakers: 2, LED boards: 1" in err.decode()


async def test_simulated_board_shows_clears_and_refuses_stale_commands() -> None:
    """Display and clear are acked `shown`; past not_after → `failed`; a repeat is only re-confirmed."""
    sent: list[tuple[str, dict[str, Any]]] = []

    async def publish(topic: str, payload: bytes, retain: bool) -> None:
        sent.append((topic, json.loads(payload)))

    now = datetime(2026, 7, 1, tzinfo=UTC)
    board = SimBoard(BOARD, "330502101201", publish=publish, now=lambda: now)
    ack = f"warnd/v1/device/{BOARD}/ack"

    def cmd(msg_id: str, kind: str, not_after: str = "2026-07-02T00:00:00+00:00") -> bytes:
        body = {"msg_id": msg_id, "kind": kind, "warning_id": "W1", "ack_topic": ack, "not_after": not_after}
        return json.dumps(body).encode()

    stale = "2026-06-30T23:59:59+00:00"
    await board.handle(cmd("m1", "display"))
    assert board.showing is not None and board.showing["msg_id"] == "m1"
    await board.handle(cmd("m0", "display", not_after=stale))
    await board.handle(cmd("m3", "clear", not_after=stale))
    assert board.showing["msg_id"] == "m1"  # neither stale command acted
    await board.handle(cmd("m2", "clear"))
    assert board.showing is None
    await board.handle(cmd("m1", "display"))  # redelivered: confirmed again, not shown again
    assert board.showing is None
    await board.handle(cmd("m4", "play"))
    await board.handle(b"not json")
    await board.handle(cmd("m3", "clear"))  # warnd's retry of the stale clear, with a fresh not_after
    assert [(t, a["msg_id"], a["status"], a["detail"]) for t, a in sent] == [
        (ack, "m1", "shown", ""),
        (ack, "m0", "failed", f"not_after {stale} has passed"),
        (ack, "m3", "failed", f"not_after {stale} has passed"),
        (ack, "m2", "shown", "cleared"),
        (ack, "m1", "shown", ""),
        (ack, "m4", "failed", "unknown command kind 'play'"),
        (ack, "m3", "shown", "cleared"),
    ]
    assert board.commands["m1"] == 2
