"""A full disk under a real warnd: honest 503s, not ready, still up; everything back once space is.

warnd runs as a real process (tests/support/process.py) with its state directory on a small file
system of its own (tmpfs, or a loop-mounted ext4 image; both need root, as CI has), a real
Mosquitto and simulated village loudspeakers (`warnctl simulate-speakers`). The test fills the
file system with a filler file while warnings are accepted and speakers confirm, then frees it.

The scenario runs once (module fixture) and records what it saw; each test below checks one
promise, so a run against code that breaks several says which.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.county import village_code, write_directory
from tests.support.harness import TOKENS, warning_body
from tests.support.mqtt import Broker, free_port, mosquitto_binary
from tests.support.process import ROOT, DaemonProcess, write_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

# Room for the database, its WAL and a few rendered warnings; filled in milliseconds.
FS_SIZE_MB = 16
VILLAGES = [village_code(0), village_code(1)]
SPEAKERS = 3
# Speakers wait this long between `received` and `played`: the played acks of a warning sent
# just before the disk fills arrive while it is full.
PLAY_DELAY_MS = 4000
# Accepts tried while the disk is full (each a different warning).
FULL_ACCEPTS = 12
# Free space left for the "nearly full" step: the store's few pages fit, a warning's speech
# (about 1 MB of WAV before it becomes a 190 KB MP3) does not.
NEARLY_FREE_BYTES = 512 * 1024


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    """A command's result, never raising."""
    return subprocess.run(argv, capture_output=True, text=True, check=False)


@contextlib.contextmanager
def small_filesystem(mountpoint: Path, scratch: Path) -> Iterator[str]:
    """Mount a FS_SIZE_MB file system at mountpoint (tmpfs, else loop ext4); yields its kind."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root (CI runs the suite as root)")
    mountpoint.mkdir(parents=True)
    tried = _run("mount", "-t", "tmpfs", "-o", f"size={FS_SIZE_MB}m,mode=0755", "tmpfs", str(mountpoint))
    kind = "tmpfs"
    if tried.returncode != 0:
        image = scratch / "small.img"
        with image.open("wb") as f:
            f.truncate(FS_SIZE_MB * 1024 * 1024)
        made = _run("mkfs.ext4", "-q", "-F", "-m", "0", str(image))  # -m 0: no blocks kept for root
        loop = _run("mount", "-o", "loop", str(image), str(mountpoint)) if made.returncode == 0 else made
        if loop.returncode != 0:
            pytest.skip(
                f"cannot mount a small file system here: tmpfs: {tried.stderr.strip()}; "
                f"loop ext4: {loop.stderr.strip() or made.stderr.strip()}"
            )
        kind = "ext4"
    try:
        yield kind
    finally:
        if _run("umount", str(mountpoint)).returncode != 0:
            _run("umount", "-l", str(mountpoint))


def fill(directory: Path, leave_bytes: int = 0) -> Path:
    """Write a filler file until the file system has not one block left (then give back
    leave_bytes); returns its path."""
    path = directory / "filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 1 << 12, 1 << 9, 1):
            chunk = b"\0" * size
            while True:
                try:
                    os.write(fd, chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
        if leave_bytes:
            os.ftruncate(fd, max(0, os.fstat(fd).st_size - leave_bytes))
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
    return path


class Commands:
    """Every loudspeaker command published on the broker, as a terminal would get it (paho).

    Args:
        broker: the broker to listen on.
    """

    def __init__(self, broker: Broker) -> None:
        """Connect and subscribe to the village and device command topics; wait until subscribed."""
        self.seen: list[dict[str, Any]] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fault-test-recorder")
        self.client.on_connect = lambda c, *_: c.subscribe(
            [("warnd/v1/village/+/speaker", 1), ("warnd/v1/device/+/cmd", 1)]
        )
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = lambda _c, _u, m: self.seen.append(json.loads(m.payload))
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise RuntimeError("the command recorder could not subscribe")

    def audio(self, warning_id: str) -> list[Any]:
        """The `audio` of every play command for a warning."""
        return [c.get("audio") for c in list(self.seen) if c.get("warning_id") == warning_id]

    def close(self) -> None:
        """Disconnect."""
        self.client.loop_stop()
        self.client.disconnect()


def request(
    base: str, method: str, path: str, body: Any = None, role: str | None = "operator"
) -> tuple[int, dict[str, str], Any]:
    """One HTTP request: (status, headers, JSON body or None); a refused connection is status 0."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method)
    if role is not None:
        req.add_header("Authorization", f"Bearer {TOKENS[role]}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            raw, status, headers = resp.read(), resp.status, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        raw, status, headers = exc.read(), exc.code, dict(exc.headers)
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        return 0, {}, {"transport": repr(exc)}
    try:
        return status, headers, json.loads(raw) if raw else None
    except ValueError:
        return status, headers, {"raw": raw[:200].decode(errors="replace")}


def wait_for(predicate: Callable[[], Any], timeout_s: float) -> Any:
    """predicate()'s first truthy value within timeout_s, else its last value (bounded poll)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


@dataclass
class Seen:
    """What the scenario observed."""

    fs_kind: str = ""
    before: list[tuple[int, Any]] = field(default_factory=list)  # accepts before the fill
    # Nearly full: the accept, /readyz, speakers confirming, the commands' audio.
    nearly: tuple[int, Any] = (0, None)
    nearly_readyz: tuple[int, Any] = (0, None)
    nearly_acknowledged: int = -1
    nearly_audio: list[Any] = field(default_factory=list)
    healthy_audio: list[Any] = field(default_factory=list)  # … of the warning before
    full_accepts: list[tuple[int, dict[str, str], Any]] = field(default_factory=list)
    readyz_full: list[tuple[int, Any]] = field(default_factory=list)
    healthz_full: list[int] = field(default_factory=list)
    alive_while_full: list[bool] = field(default_factory=list)
    read_while_full: int = 0  # GET of a warning stored before the fill
    readyz_after: tuple[int, Any] = (0, None)
    after: list[tuple[int, Any]] = field(default_factory=list)  # accepts once space is back
    after_acknowledged: int = -1  # speakers confirming the warning accepted after the fill
    in_flight_acknowledged: int = -1  # … the warning whose played acks came while full
    exit_code: int | None = None
    stored_ids: set[str] = field(default_factory=set)
    # The in-flight warning's speaker deliveries: (target, state, ack statuses stored).
    in_flight: list[tuple[str, str, list[str]]] = field(default_factory=list)
    integrity: str = ""
    foreign_keys: list[Any] = field(default_factory=list)
    log: str = ""

    def answered_202(self) -> list[str]:
        """Ids of every warning answered 202."""
        out = [b["id"] for s, b in [*self.before, self.nearly, *self.after] if s == 202]
        return out + [b["id"] for s, _, b in self.full_accepts if s == 202]

    def events(self, name: str) -> list[dict[str, Any]]:
        """warnd's log events of that name."""
        out = []
        for line in self.log.splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict) and event.get("event") == name:
                    out.append(event)
        return out


def _coverage(d: DaemonProcess, warning_id: str) -> dict[str, int]:
    """The warning's loudspeaker coverage (empty when it cannot be read)."""
    status, _, body = request(d.url, "GET", f"/api/v1/warnings/{warning_id}", role="viewer")
    return body.get("coverage", {}).get("loudspeaker", {}) if status == 200 else {}


def _online(d: DaemonProcess) -> int:
    """Speakers warnd has seen online."""
    status, _, body = request(d.url, "GET", "/api/v1/devices", role="viewer")
    return sum(x.get("state") == "online" for x in body["devices"]) if status == 200 else 0


def _accept(d: DaemonProcess, n: int) -> tuple[int, dict[str, str], Any]:
    """Issue warning number n (each one different) to the two villages."""
    body = warning_body(area={"codes": VILLAGES}, headline=f"塘甸镇暴雨红色预警（第{n}号）")
    return request(d.url, "POST", "/api/v1/warnings", body)


def scenario(tmp_path: Path) -> Seen:
    """Run the whole story once; record, never assert (the tests do)."""
    seen = Seen()
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed (make test installs it)")
    state = tmp_path / "state"
    with small_filesystem(state, tmp_path) as kind:
        seen.fs_kind = kind
        broker = Broker(tmp_path)
        broker.start()
        directory = write_directory(tmp_path / "directory.toml", villages=2, speakers=SPEAKERS, leds=0)
        port = free_port()
        extra = f'[mqtt]\nurl = "{broker.url}"\n[wecom]\nenabled = false\n[tts]\nrepeat = 1\n'
        config = write_config(tmp_path, directory, port, extra=extra)
        d = DaemonProcess(["-m", "warnd.cli", "run", "--config", str(config)], port, tmp_path / "warnd.log")
        sim_log = (tmp_path / "sim.log").open("ab")
        sim = subprocess.Popen(
            [sys.executable, "-m", "warnd.ctl", "simulate-speakers", "--broker", broker.url,
             "--directory", str(directory), "--village", *VILLAGES, "--no-led",
             "--delay-ms", str(PLAY_DELAY_MS)],
            cwd=ROOT, stdout=sim_log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        filler: Path | None = None
        commands = Commands(broker)
        try:
            d.start(timeout_s=30)
            wait_for(lambda: request(d.url, "GET", "/readyz", role=None)[0] == 200, 30)
            wait_for(lambda: _online(d) == 2 * SPEAKERS, 30)
            n = 0

            # 1. Healthy: a warning goes out and every speaker confirms it.
            status, _, body = _accept(d, n := n + 1)
            seen.before.append((status, body))
            if status == 202:
                wait_for(lambda: _coverage(d, body["id"]).get("acknowledged") == 2 * SPEAKERS, 40)
                seen.healthy_audio = commands.audio(body["id"])

            # 2. Nearly full: the warning is stored and goes out, as text when its audio does not fit.
            filler = fill(state, leave_bytes=NEARLY_FREE_BYTES)
            seen.nearly = _accept(d, n := n + 1)[::2]
            status, body = seen.nearly
            if status == 202:
                wait_for(lambda: _coverage(d, body["id"]).get("acknowledged") == 2 * SPEAKERS, 40)
                seen.nearly_acknowledged = _coverage(d, body["id"]).get("acknowledged", -1)
                seen.nearly_audio = commands.audio(body["id"])
            status, _, readyz = request(d.url, "GET", "/readyz", role=None)
            seen.nearly_readyz = (status, readyz)
            filler.unlink()
            filler = None

            # 3. A warning reaches the speakers; their `played` acks will come while the disk is full.
            status, _, body = _accept(d, n := n + 1)
            seen.before.append((status, body))
            in_flight = body["id"] if status == 202 else None
            if in_flight is not None:
                wait_for(lambda: _coverage(d, in_flight).get("delivered") == 2 * SPEAKERS, 40)
            filled_at = time.monotonic()
            filler = fill(state)

            # 4. Full: accepts, readiness, liveness, reads.
            for _ in range(FULL_ACCEPTS):
                seen.full_accepts.append(_accept(d, n := n + 1))
                seen.alive_while_full.append(d.proc is not None and d.proc.poll() is None)
                status, _, body = request(d.url, "GET", "/readyz", role=None)
                seen.readyz_full.append((status, body))
                seen.healthz_full.append(request(d.url, "GET", "/healthz", role=None)[0])
                time.sleep(0.2)
            status, first = seen.before[0]
            if status == 202:
                path = f"/api/v1/warnings/{first['id']}"
                seen.read_while_full = request(d.url, "GET", path, role="viewer")[0]
            # The in-flight warning's played acks arrive PLAY_DELAY_MS after it was delivered.
            time.sleep(max(0.0, filled_at + PLAY_DELAY_MS / 1000 + 3 - time.monotonic()))
            seen.alive_while_full.append(d.proc is not None and d.proc.poll() is None)

            # 5. Space back.
            filler.unlink()
            filler = None
            wait_for(lambda: request(d.url, "GET", "/readyz", role=None)[0] == 200, 20)
            status, _, body = request(d.url, "GET", "/readyz", role=None)
            seen.readyz_after = (status, body)
            status, _, body = _accept(d, n := n + 1)
            seen.after.append((status, body))
            if status == 202:
                wait_for(lambda: _coverage(d, body["id"]).get("acknowledged") == 2 * SPEAKERS, 40)
                seen.after_acknowledged = _coverage(d, body["id"]).get("acknowledged", -1)
            if in_flight is not None:
                wait_for(lambda: _coverage(d, in_flight).get("acknowledged") == 2 * SPEAKERS, 15)
                seen.in_flight_acknowledged = _coverage(d, in_flight).get("acknowledged", -1)
            if d.proc is not None and d.proc.poll() is None:
                seen.exit_code = d.terminate(30)
            else:
                seen.exit_code = d.proc.returncode if d.proc is not None else None
        finally:
            if filler is not None:
                filler.unlink(missing_ok=True)
            if d.proc is not None and d.proc.poll() is None:
                d.kill()
            sim.terminate()
            try:
                sim.wait(10)
            except subprocess.TimeoutExpired:
                sim.kill()
                sim.wait()
            sim_log.close()
            commands.close()
            broker.stop()
        seen.log = (tmp_path / "warnd.log").read_text(errors="replace")
        db = state / "warnd.db"
        if db.exists():
            con = sqlite3.connect(db)
            try:
                seen.integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
                seen.foreign_keys = con.execute("PRAGMA foreign_key_check").fetchall()
                seen.stored_ids = {r[0] for r in con.execute("SELECT id FROM warnings")}
                if in_flight is not None:
                    for target, state, acks in con.execute(
                        "SELECT d.target, d.state, GROUP_CONCAT(a.status) FROM deliveries d"
                        " LEFT JOIN acks a ON a.delivery_id = d.id"
                        " WHERE d.warning_id = ? AND d.channel = 'loudspeaker' GROUP BY d.id",
                        (in_flight,),
                    ):
                        seen.in_flight.append((target, state, (acks or "").split(",")))
            finally:
                con.close()
        # Keep the evidence: the state directory goes with the unmount.
        with contextlib.suppress(OSError):
            shutil.copy(db, tmp_path / "warnd-after.db")
    return seen


@pytest.fixture(scope="module")
def seen(tmp_path_factory: pytest.TempPathFactory) -> Seen:
    """The scenario's observations, run once for the module."""
    return scenario(tmp_path_factory.mktemp("disk"))


def test_full_disk_accepts_are_503_store_unavailable_never_500(seen: Seen) -> None:
    """Every accept while full is 503 store_unavailable with Retry-After (or a 202 that is stored)."""
    statuses = [s for s, _, _ in seen.full_accepts]
    assert statuses and set(statuses) <= {202, 503}, statuses
    assert 503 in statuses, f"the filled disk refused nothing: {statuses}"
    for status, headers, body in seen.full_accepts:
        if status == 503:
            assert body["error"]["code"] == "store_unavailable", body
            assert body["error"]["field"] is None and "disk full" in body["error"]["message"], body
            assert int(headers["Retry-After"]) > 0
    assert not seen.events("api.error"), "a 500 was answered"


def test_readyz_says_not_ready_while_full_and_warnd_stays_up(seen: Seen) -> None:
    """/readyz is 503 naming the disk; /healthz answers, the process lives, reads still work."""
    assert seen.readyz_full
    for status, body in seen.readyz_full:
        assert status == 503 and body["ready"] is False, body
        assert body["checks"]["store"]["ok"] is False
        assert "disk full" in body["checks"]["store"]["detail"], body
    assert set(seen.healthz_full) == {200}
    assert seen.alive_while_full and all(seen.alive_while_full)
    assert seen.read_while_full == 200


def test_everything_works_again_once_space_is_freed(seen: Seen) -> None:
    """Ready again by itself; a new warning is accepted and confirmed by every speaker; clean exit."""
    assert seen.readyz_after[0] == 200, seen.readyz_after
    assert [s for s, _ in seen.after] == [202]
    assert seen.after_acknowledged == 2 * SPEAKERS
    assert seen.exit_code == 0


def test_every_202_is_stored_and_nothing_is_half_written(seen: Seen) -> None:
    """The database holds exactly the warnings answered 202, and passes integrity_check."""
    assert [s for s, _ in seen.before] == [202, 202]
    assert seen.stored_ids == set(seen.answered_202())
    assert seen.integrity == "ok"
    assert seen.foreign_keys == []
    # A line when writes start failing and one when they work again, not one per failed write
    # (the full disk alone refused FULL_ACCEPTS accepts and the acks).
    failed, recovered = seen.events("store.write_failed"), seen.events("store.write_recovered")
    assert 1 <= len(failed) <= 2 and len(recovered) == len(failed), (failed, recovered)
    assert "Lock is not acquired" not in seen.log


def test_nearly_full_disk_sends_the_warning_as_text_when_its_audio_does_not_fit(seen: Seen) -> None:
    """Less than a MB free: the warning is stored and played as text (audio null), logged once."""
    assert all(a is not None for a in seen.healthy_audio) and seen.healthy_audio  # audio as usual
    assert seen.nearly[0] == 202, seen.nearly
    assert seen.nearly_acknowledged == 2 * SPEAKERS
    assert seen.nearly_audio and all(a is None for a in seen.nearly_audio), seen.nearly_audio
    failed = seen.events("audio.render_failed")
    assert len(failed) == 1 and failed[0]["fallback"] == "text", failed
    assert "No space left on device" in failed[0]["reason"], failed
    assert not seen.events("audio.render_crashed")
    # /readyz warns before anything is refused: a disk this full is not ready.
    status, body = seen.nearly_readyz
    assert status == 503 and "disk full" in body["checks"]["store"]["detail"], body


def test_acks_around_the_fill_are_stored_whole_or_not_at_all(seen: Seen) -> None:
    """A warning in flight when the disk filled: every ack row stored moved its delivery with it."""
    assert len(seen.in_flight) == 2 * SPEAKERS
    for target, state, acks in seen.in_flight:
        assert "received" in acks, (target, acks)  # confirmed before the fill
        assert state == ("acknowledged" if "played" in acks else "delivered"), (target, state, acks)


def test_acks_that_arrived_while_full_are_eventually_stored(seen: Seen) -> None:
    """The `played` acks that came while the disk was full are in the store once it has room."""
    assert seen.in_flight_acknowledged == 2 * SPEAKERS
    assert all("played" in acks for _, _, acks in seen.in_flight)
