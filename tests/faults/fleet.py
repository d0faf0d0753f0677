"""A county's devices under faults: warnd as a process, its own Mosquitto, a counting receiver.

`Fleet` writes a directory of 200 villages with 10 loudspeakers and one LED board each, starts
the counting receiver (tests/support/counting_receiver.py, a separate process standing in for
all 2,200 devices) and warnd itself (`python -m warnd.cli run`, with its real MQTT channels),
and answers the questions every fault test asks: did each device get each msg_id at least once,
play or show it exactly once, does the store show what was played as acknowledged, is any
delivery dead while its warning is in force, is every warning answered 202 stored.
"""

from __future__ import annotations

import json
import os
import select
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.support.county import directory_toml, village_code
from tests.support.harness import warning_body
from tests.support.mqtt import Broker, free_port
from tests.support.process import ROOT, DaemonProcess, write_config
from tests.support.wait import wait_for
from warnd.model import DEVICE_CHANNELS, IN_FORCE

VILLAGES = 200
SPEAKERS = 10
CODES = [village_code(i) for i in range(VILLAGES)]


class Fleet:
    """warnd, a broker and 2,200 counted devices.

    Args:
        tmp_path: the test's directory.
        broker: the broker (started by the caller, stopped and started by the test).
        env: WARND_ variables for warnd (dispatch tuning).
        receiver_delay_ms: time the receiver takes per command.
        confirm_timeout_s: how long warnd waits for a device's confirmation before publishing again.
    """

    def __init__(
        self,
        tmp_path: Path,
        broker: Broker,
        *,
        env: dict[str, str] | None = None,
        receiver_delay_ms: float = 0.0,
        confirm_timeout_s: float = 5.0,
    ) -> None:
        """Write the directory, the device list and warnd's config."""
        self.tmp_path, self.broker = tmp_path, broker
        directory = tmp_path / "directory.toml"
        directory.write_text(
            directory_toml(VILLAGES, SPEAKERS, 1, grid_workers=False, test_village=False), encoding="utf-8"
        )
        self.speakers = {f"spk-{c}-{k}": c for c in CODES for k in range(1, SPEAKERS + 1)}
        self.boards = [f"led-{c}-1" for c in CODES]
        self.devices_path = tmp_path / "devices.json"
        self.devices_path.write_text(json.dumps({"speakers": self.speakers, "boards": self.boards}))
        self.events_path = tmp_path / "events.jsonl"
        self.receiver_delay_ms = receiver_delay_ms
        port = free_port()
        extra = (
            f'[mqtt]\nurl = "{broker.url}"\nclient_id = "warnd-faults"\n'
            "reconnect_max_s = 1.0\nkeepalive_s = 5\n\n"
            f"[loudspeaker]\nconfirm_timeout_s = {confirm_timeout_s}\n\n"
            f"[led]\nconfirm_timeout_s = {confirm_timeout_s}\n\n"
            # One espeak pass: the audio is rendered on every (re)start until it is cached.
            "[tts]\nrepeat = 1\n\n"
            # No WeCom application: its messages would be refused for good (dead) by design.
            "[wecom]\nenabled = false\n"
        )
        config = write_config(tmp_path, directory, port, extra)
        self.warnd = DaemonProcess(
            ["-m", "warnd.cli", "run", "--config", str(config)], port, tmp_path / "warnd.log", env=env
        )
        self.receiver: subprocess.Popen[bytes] | None = None
        self.accepted: list[str] = []

    def start(self) -> Fleet:
        """Start the receiver (until it listens) and warnd (until its broker link is up)."""
        self.start_receiver()
        self.warnd.start()
        self.wait_ready(True)
        return self

    def start_receiver(self) -> None:
        """The counting receiver, subscribed."""
        self.receiver = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.support.counting_receiver",
                self.broker.url,
                str(self.devices_path),
                str(self.events_path),
                str(self.receiver_delay_ms),
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
        )
        assert self.receiver.stdout is not None
        ready, _, _ = select.select([self.receiver.stdout], [], [], 20)
        assert ready and self.receiver.stdout.readline().strip() == b"ready", "the receiver did not subscribe"

    def close(self) -> None:
        """Stop warnd and the receiver (the caller stops the broker)."""
        if self.warnd.proc is not None and self.warnd.proc.poll() is None:
            self.warnd.kill()
        if self.receiver is not None and self.receiver.poll() is None:
            self.receiver.terminate()
            try:
                self.receiver.wait(5)
            except subprocess.TimeoutExpired:
                self.receiver.kill()
                self.receiver.wait()

    # -- warnd --------------------------------------------------------------------------------

    def readyz(self) -> int:
        """The status of warnd's /readyz (0 when it does not answer)."""
        try:
            with urllib.request.urlopen(self.warnd.url + "/readyz", timeout=2) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0

    def wait_ready(self, ready: bool, timeout_s: float = 20) -> None:
        """Until /readyz says ready (200) or not ready (503)."""
        want = 200 if ready else 503
        wait_for(lambda: self.readyz() == want, timeout_s, f"/readyz {want}")

    def issue(self, codes: Sequence[str], **body: Any) -> str:
        """A red warning for these villages; its 202 is remembered (every 202 must be stored)."""
        status, answer = self.warnd.call(
            "POST", "/api/v1/warnings", warning_body(area={"codes": list(codes)}, **body)
        )
        assert status == 202, answer
        self.accepted.append(answer["id"])
        return answer["id"]

    # -- what happened ------------------------------------------------------------------------

    def events(self) -> tuple[Counter[tuple[str, str]], Counter[tuple[str, str]]]:
        """(msg_id, device) → times received, and → times played or shown."""
        received: Counter[tuple[str, str]] = Counter()
        played: Counter[tuple[str, str]] = Counter()
        if not self.events_path.exists():
            return received, played
        for line in self.events_path.read_text(encoding="utf-8").splitlines():
            if not line.endswith("}"):
                continue  # a line being written
            e = json.loads(line)
            (received if e["e"] == "recv" else played)[(e["m"], e["d"])] += 1
        return received, played

    def deliveries(self) -> list[dict[str, Any]]:
        """The deliveries of the accepted warnings, with their warning's state, from the store."""
        con = sqlite3.connect(f"file:{self.tmp_path / 'state' / 'warnd.db'}?mode=ro", uri=True, timeout=10)
        con.row_factory = sqlite3.Row
        try:
            marks = ",".join("?" * len(self.accepted))
            rows = con.execute(
                "SELECT d.msg_id, d.target, d.channel, d.kind, d.state, d.attempts, d.last_error,"
                " w.state AS warning_state FROM deliveries d JOIN warnings w ON w.id = d.warning_id"
                f" WHERE d.warning_id IN ({marks})",
                self.accepted,
            ).fetchall()
        finally:
            con.close()
        return [dict(r) for r in rows]

    def problems(self) -> list[str]:
        """Every way the devices and the store disagree with "nothing lost, nothing twice"."""
        rows = self.deliveries()
        received, played = self.events()
        expected = {
            (r["msg_id"], r["target"])
            for r in rows
            if r["kind"] == "warning" and r["channel"] in DEVICE_CHANNELS
        }
        state = {(r["msg_id"], r["target"]): r["state"] for r in rows}
        out = []
        if len(expected) < len(self.speakers):
            out.append(f"only {len(expected)} device deliveries planned")
        missing = sorted(expected - set(received))
        if missing:
            villages = {d.rsplit("-", 1)[0] for _, d in missing}
            out.append(f"{len(missing)} (msg_id, device) never received, in {len(villages)} villages/boards")
        unplayed = sorted(k for k in expected if played[k] == 0)
        if unplayed:
            out.append(f"{len(unplayed)} (msg_id, device) received but never played or shown")
        twice = sorted(k for k, n in played.items() if n > 1)
        if twice:
            out.append(f"{len(twice)} (msg_id, device) played or shown more than once: {twice[:3]}")
        unacked = sorted(k for k in played if k in state and state[k] != "acknowledged")
        if unacked:
            by_state = Counter(state[k] for k in unacked)
            out.append(f"{len(unacked)} played or shown but not acknowledged in the store: {dict(by_state)}")
        dead = [r for r in rows if r["state"] == "dead" and r["warning_state"] in IN_FORCE]
        if dead:
            out.append(
                f"{len(dead)} deliveries dead while their warning is in force: {dead[0]['last_error']}"
            )
        for wid in self.accepted:
            status, _ = self.warnd.call("GET", f"/api/v1/warnings/{wid}", role="viewer")
            if status != 200:
                out.append(f"{wid} was answered 202 but GET says {status}")
        return out

    def wait_settled(self, timeout_s: float) -> list[str]:
        """Until nothing is wrong, or timeout_s passes; what is still wrong then."""
        deadline = time.monotonic() + timeout_s
        while True:
            problems = self.problems()
            if not problems or time.monotonic() > deadline:
                return problems
            time.sleep(1.0)

    def commands_received(self) -> int:
        """How many distinct msg_ids the receiver has got so far."""
        received, _ = self.events()
        return len({m for m, _ in received})
