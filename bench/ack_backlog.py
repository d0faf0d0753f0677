"""Benchmark: device acks stored per second from a broker backlog of 50,000, against a bare sink.

    .venv/bin/python -m bench.ack_backlog [--acks 50000] [--speakers 10] [--reps 3]
        [--store postgres] [--json PATH]

A Mosquitto on a free port, configured as docs/deploy.md's broker (`max_inflight_messages
1000`). Once, not timed: a store with one red warning for `--acks` loudspeakers (5,000 villages
of 10), planned by warnd's own scheduler and recorded `sent`. Each repetition, in alternating
order, for each side:

1. its persistent MQTT session is made (connect, subscribe to the ack topics, disconnect);
2. one `played` ack per speaker is published at QoS 1 to `warnd/v1/device/{id}/ack` while it
   is away, so the broker holds all of them for it (the backlog a restart or an outage leaves);
3. it connects, and the clock runs until every ack is committed to its database.

- **warnd**: its receive path alone, as the daemon builds it — the device link
  (`warnd.mqtt.link`, manual acknowledgement), the device hub (`warnd.mqtt.devices`: parse,
  check, batch), the feedback stage (`warnd.feedback`, with its metrics) and the store's
  `apply_acks` — on a copy of the prepared store. Done when `count_acked` says every delivery is
  confirmed (checked four times a second).
- **the bare sink**: aiomqtt with the same receive path (a handler called on arrival through
  aiomqtt's `queue_type` hook, the JSON parsed, the PUBACK sent through paho by hand once the
  batch is committed), batching acks into one SQLite transaction (WAL, synchronous=FULL, on its
  own thread) of plain INSERTs. No matching to deliveries, no checks: the floor of this design.

`--store postgres`: warnd's store, and the sinks' tables, are PostgreSQL databases on a server
the bench starts itself (tests.support.postgres, fsync and synchronous commits on); each warnd
repetition gets a copy of the prepared database (CREATE DATABASE … TEMPLATE).

The line: acks stored per second, warnd's and the bare sink's, and their ratio. Target (issue
17): ≥ 10,000 /s. Its note: the CPU time per ack and the worst lag of a 10 ms timer on the
receiving loop, of both sides (issue 17: the loop never stalls > 50 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import _bare_db as bare_db  # noqa: E402
from bench._table import Line, emit, number, order, spread  # noqa: E402
from bench.loudspeaker_fanout import lag_probe, village_codes, write_directory  # noqa: E402
from tests.support.mqtt import Broker  # noqa: E402
from tests.support.postgres import PostgresCluster  # noqa: E402
from warnd.mqtt.link import buffer_reads  # noqa: E402

ACK_FILTER = "warnd/v1/device/+/ack"
# docs/deploy.md's broker: QoS-1 messages in flight to one client. With acks acknowledged only
# once stored, this window is what a receiver can hold uncommitted at once.
BROKER_INFLIGHT = 1000
# The bare sink's batch: as many acks per transaction as warnd's device hub takes (ACK_BATCH).
BARE_BATCH = 1000
# How long the bare sink lets acks gather before committing a batch that is not full (warnd's
# ACK_GATHER_S): the same trade of latency for fewer fsyncs.
BARE_GATHER_S = 0.02
# Publishing the backlog: paho's window of unacknowledged publishes.
PUBLISH_WINDOW = 1000


# --- the backlog ----------------------------------------------------------------------------


def make_session(broker: Broker, client_id: str) -> None:
    """Connect with a persistent session, subscribe to the ack topics, disconnect: the broker keeps it."""
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    client.on_subscribe = lambda *_: done.set()
    client.on_connect = lambda c, *_: c.subscribe(ACK_FILTER, qos=1)
    client.connect(broker.host, broker.port)
    client.loop_start()
    if not done.wait(10):
        raise RuntimeError("no SUBACK")
    client.disconnect()
    client.loop_stop()


def publish_backlog(broker: Broker, acks: list[tuple[str, bytes]]) -> None:
    """Publish (topic, payload) pairs at QoS 1 and wait until the broker has taken every one."""
    left = len(acks)
    done = threading.Event()

    def on_publish(*_: Any) -> None:
        """One more PUBACK."""
        nonlocal left
        left -= 1
        if left == 0:
            done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-acks-{uuid.uuid4().hex[:6]}")
    client.max_inflight_messages_set(PUBLISH_WINDOW)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.connect(broker.host, broker.port)
    client.loop_start()
    for topic, payload in acks:
        client.publish(topic, payload, qos=1)
    if not done.wait(300):
        raise RuntimeError(f"{left} acks not taken by the broker")
    client.disconnect()
    client.loop_stop()


# --- warnd ----------------------------------------------------------------------------------


def settings_for(workdir: Path, broker: Broker, directory: Path, store_url: str | None = None) -> Any:
    """warnd's settings: the state in workdir (or its store at store_url), the directory, the broker."""
    from warnd.config import Settings

    return Settings(
        state_dir=workdir / "state",
        directory={"path": directory},
        mqtt={"url": broker.url, "client_id": "warnd-bench-acks"},
        approval={"levels": []},
        store={"url": store_url},
    )


def open_store(settings: Any) -> Any:
    """The store the settings name (unopened): PostgreSQL's URL, else SQLite in the state directory."""
    from warnd.store import Store

    if settings.store.url is not None:
        return Store(url=settings.store.url)
    return Store(settings.state_dir / "warnd.db")


class SinkTable:
    """The bare sinks' one table of acks, and a batch committed to it in one transaction.

    SQLite (WAL, synchronous=FULL) in a file, or, given a URL, PostgreSQL through psycopg
    (synchronous_commit on); either used from one worker thread.
    """

    def __init__(self, db_path: Path, store_url: str | None) -> None:
        """Connect and make the table."""
        self.db, mark = bare_db.connect(db_path, store_url)
        self.db.execute("CREATE TABLE IF NOT EXISTS acks (msg_id TEXT, target TEXT, status TEXT, at TEXT)")
        self.insert = f"INSERT INTO acks VALUES ({mark}, {mark}, {mark}, {mark})"

    def commit(self, rows: list[tuple[str, str, str, str]]) -> None:
        """One transaction per batch."""
        self.db.execute("BEGIN")
        bare_db.insert_many(self.db, self.insert, rows)
        self.db.execute("COMMIT")

    def close(self) -> None:
        """Close the connection."""
        self.db.close()


async def prepare_store(settings: Any) -> tuple[str, list[tuple[str, bytes]]]:
    """One red warning planned for every speaker and recorded sent; its id and one `played` ack each."""
    from warnd.clock import SystemClock, Wakeup
    from warnd.directory import Directory
    from warnd.intake import Actor, Intake
    from warnd.model import WarningIn
    from warnd.scheduler import Scheduler
    from warnd.store import Outcome

    directory = Directory.load(settings.directory.path)
    clock, wake = SystemClock(), Wakeup()
    store = await open_store(settings).open()
    try:
        intake = Intake(store, lambda: directory, lambda: settings.policy, clock, wake)
        body = {"event": "暴雨", "level": "red", "headline": "县气象台发布暴雨红色预警",
                "area": {"codes": list(directory.villages)}}  # fmt: skip
        result = await intake.accept(WarningIn.model_validate(body), actor=Actor("bench"))
        scheduler = Scheduler(
            store, lambda: directory, lambda: settings.policy, lambda: {"loudspeaker"}, clock, wake
        )
        await scheduler.run_once()
        acks = []
        while claimed := await store.claim(clock.now(), 10_000, ["loudspeaker"]):
            await store.record([(Outcome(d.id, "sent"), None) for d in claimed], clock.now())
            for d in claimed:
                ack = {"msg_id": d.msg_id, "status": "played", "at": "2026-07-01T00:00:01Z"}
                acks.append((f"warnd/v1/device/{d.target}/ack", json.dumps(ack).encode()))
    finally:
        await store.close()
    return result.id, acks


async def run_warnd(
    settings: Any, warning_id: str, expected: int, profile: str | None = None
) -> tuple[float, float, float]:
    """warnd's receive path on its own: from connecting to every ack committed, seconds, CPU seconds
    and the worst lag of a 10 ms timer on its loop (ms)."""
    from warnd.clock import SystemClock, Wakeup
    from warnd.directory import Directory
    from warnd.feedback import Feedback
    from warnd.metrics import Metrics
    from warnd.mqtt.devices import DeviceHub
    from warnd.mqtt.link import device_link

    directory = Directory.load(settings.directory.path)
    clock = SystemClock()
    store = await open_store(settings).open()
    feedback = Feedback(store, clock, Wakeup(), settings.dispatch)
    feedback.metrics = Metrics()
    link = device_link(settings.mqtt)
    DeviceHub(link, directory=lambda: directory, feedback=feedback, store=store, clock=clock)
    profiler = start_profiler(profile)
    probe_stop = asyncio.Event()
    probe = asyncio.create_task(lag_probe(probe_stop))
    t0, cpu0 = time.perf_counter(), time.process_time()
    started = datetime.now(UTC)
    tasks = [asyncio.create_task(coro, name=name) for name, coro in link.background()]
    try:
        # Completion is checked once a second (a COUNT over the warning's deliveries, ~30 ms of
        # the store's thread); the time itself is the last ack's `acked_at`, stamped by warnd as
        # it applied the batch, so the measuring does not compete with the acks it measures.
        while await store.count_acked(warning_id) < expected:
            if time.perf_counter() - t0 > 600:
                raise RuntimeError("acks not stored after 600 s")
            if any(t.done() for t in tasks):
                raise RuntimeError(f"a receive loop ended: {[t for t in tasks if t.done()]}")
            await asyncio.sleep(1.0)
        cpu_s = time.process_time() - cpu0
        probe_stop.set()
        lag_ms = await probe
        _, last_acked = await store.last_times(warning_id)
        assert last_acked is not None
        return (last_acked - started).total_seconds(), cpu_s, lag_ms
    finally:
        probe_stop.set()
        stop_profiler(profiler)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await store.close()


def start_profiler(path: str | None) -> subprocess.Popen[bytes] | None:
    """py-spy sampling this process (every thread) into `path` (collapsed stacks), if asked."""
    if not path:
        return None
    args = ["py-spy", "record", "--pid", str(os.getpid()), "-r", "250", "-f", "raw", "-o", path]
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / args[0]), *args[1:]], stderr=subprocess.DEVNULL
    )
    time.sleep(1.0)  # py-spy attaches before the clock starts
    return proc


def stop_profiler(proc: subprocess.Popen[bytes] | None) -> None:
    """Stop py-spy (SIGINT writes its file) and wait for it."""
    if proc is not None:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)


# --- the bare sink --------------------------------------------------------------------------


async def run_bare(
    broker: Broker,
    client_id: str,
    db_path: Path,
    expected: int,
    profile: str | None = None,
    store_url: str | None = None,
) -> tuple[float, float, float]:
    """aiomqtt, handlers on arrival, batches committed then PUBACKed: seconds to all stored, CPU
    seconds, worst timer lag (ms)."""
    db_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bare-db")
    table = await asyncio.get_running_loop().run_in_executor(db_thread, SinkTable, db_path, store_url)
    queue: list[tuple[str, str, str, str, int, int]] = []
    arrived = asyncio.Event()
    holder: dict[str, aiomqtt.Client] = {}

    class Inbox(asyncio.Queue):  # type: ignore[type-arg]
        """As warnd's link: each ack handled on arrival (parsed, queued for the batch), no task each."""

        def put_nowait(self, item: aiomqtt.Message) -> None:
            """Parse and queue the ack."""
            data = json.loads(item.payload)  # type: ignore[arg-type]
            target = str(item.topic).split("/")[3]
            queue.append((data["msg_id"], target, data["status"], data["at"], item.mid, item.qos))
            arrived.set()

    def commit(rows: list[tuple[str, str, str, str, int, int]]) -> None:
        """One transaction per batch."""
        table.commit([r[:4] for r in rows])

    client = aiomqtt.Client(
        broker.host, broker.port, identifier=client_id, clean_session=False,
        max_inflight_messages=BROKER_INFLIGHT, queue_type=Inbox,
    )  # fmt: skip
    holder["client"] = client
    client._client.manual_ack_set(True)
    buffer_reads(client._client)  # as warnd's link reads: a buffer at a time, READ_BYTES per callback
    stored = 0
    loop = asyncio.get_running_loop()
    profiler = start_profiler(profile)
    probe_stop = asyncio.Event()
    probe = asyncio.create_task(lag_probe(probe_stop))
    t0, cpu0 = time.perf_counter(), time.process_time()
    try:
        async with client:
            while stored < expected:
                await arrived.wait()
                if len(queue) < BARE_BATCH:
                    await asyncio.sleep(BARE_GATHER_S)
                batch, queue[:] = queue[:BARE_BATCH], queue[BARE_BATCH:]
                if not queue:
                    arrived.clear()
                await loop.run_in_executor(db_thread, commit, batch)
                for *_, mid, qos in batch:
                    client._client.ack(mid, qos)
                stored += len(batch)
            seconds, cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
        probe_stop.set()
        return seconds, cpu_s, await probe
    finally:
        probe_stop.set()
        stop_profiler(profiler)
        db_thread.submit(table.close).result()
        db_thread.shutdown()


# --- a sink without paho --------------------------------------------------------------------


class RawMqtt(asyncio.Protocol):
    """Just enough MQTT 3.1.1 to receive QoS-1 messages: what a leaner client than paho could cost.

    Frames are cut from whatever bytes arrive in one `data_received` (paho reads each packet
    with several `recv` calls and builds an MQTTMessage, aiomqtt a Message, per packet), and
    PUBACKs go out as one write per batch.
    """

    def __init__(self, client_id: str, topic_filter: str) -> None:
        """Not connected yet."""
        self.client_id, self.topic_filter = client_id, topic_filter
        self.buffer = bytearray()
        self.messages: list[tuple[bytes, int, bytes]] = []  # (topic, packet id, payload)
        self.arrived = asyncio.Event()
        self.subscribed = asyncio.Event()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """CONNECT with a persistent session, then SUBSCRIBE at QoS 1."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        cid = self.client_id.encode()
        var = b"\x00\x04MQTT\x04\x00\x00\x3c" + len(cid).to_bytes(2, "big") + cid  # clean_session 0
        sub = b"\x00\x01" + len(self.topic_filter).to_bytes(2, "big") + self.topic_filter.encode() + b"\x01"
        transport.write(bytes([0x10, len(var)]) + var + bytes([0x82, len(sub)]) + sub)

    def data_received(self, data: bytes) -> None:
        """Cut every whole frame out of the buffer; keep PUBLISHes, note SUBACK."""
        buf = self.buffer
        buf += data
        pos = 0
        while len(buf) - pos >= 2:
            length, shift, i = 0, 0, pos + 1
            while True:
                if i >= len(buf):
                    break
                byte = buf[i]
                length |= (byte & 0x7F) << shift
                shift += 7
                i += 1
                if not byte & 0x80:
                    break
            else:
                break
            if i + length > len(buf) or (i < len(buf) and buf[i - 1] & 0x80):
                break
            kind, body = buf[pos] >> 4, bytes(buf[i : i + length])
            pos = i + length
            if kind == 3:  # PUBLISH, QoS 1: topic, packet id, payload
                n = int.from_bytes(body[:2], "big")
                self.messages.append(
                    (body[2 : 2 + n], int.from_bytes(body[2 + n : 4 + n], "big"), body[4 + n :])
                )
            elif kind == 9:  # SUBACK
                self.subscribed.set()
        del buf[:pos]
        if self.messages:
            self.arrived.set()

    def ack(self, packet_ids: list[int]) -> None:
        """PUBACK a batch in one write."""
        assert self.transport is not None
        self.transport.write(b"".join(b"\x40\x02" + p.to_bytes(2, "big") for p in packet_ids))


async def run_raw(
    broker: Broker, client_id: str, db_path: Path, expected: int, store_url: str | None = None
) -> tuple[float, float, float]:
    """The bare sink's batches and database on `RawMqtt` instead of aiomqtt and paho: seconds, CPU seconds."""
    db_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="raw-db")
    loop = asyncio.get_running_loop()
    table = await loop.run_in_executor(db_thread, SinkTable, db_path, store_url)
    commit = table.commit

    t0, cpu0 = time.perf_counter(), time.process_time()
    transport, proto = await loop.create_connection(
        lambda: RawMqtt(client_id, ACK_FILTER), broker.host, broker.port
    )
    stored = 0
    try:
        while stored < expected:
            await proto.arrived.wait()
            if len(proto.messages) < BARE_BATCH:
                await asyncio.sleep(BARE_GATHER_S)
            batch, proto.messages[:] = proto.messages[:BARE_BATCH], proto.messages[BARE_BATCH:]
            if not proto.messages:
                proto.arrived.clear()
            rows = []
            for topic, _, payload in batch:
                data = json.loads(payload)
                rows.append((data["msg_id"], topic.decode().split("/")[3], data["status"], data["at"]))
            await loop.run_in_executor(db_thread, commit, rows)
            proto.ack([pid for _, pid, _ in batch])
            stored += len(batch)
        return time.perf_counter() - t0, time.process_time() - cpu0, float("nan")
    finally:
        transport.close()
        db_thread.submit(table.close).result()
        db_thread.shutdown()


# --- the benchmark --------------------------------------------------------------------------


async def measure(args: argparse.Namespace) -> list[Line]:
    """Prepare once, then warnd and the bare sink `reps` times each, alternating."""
    from warnd import log

    n = args.acks
    villages = n // args.speakers
    runs: dict[str, list[float]] = {"warnd": [], "reference": [], "raw": []}
    # CPU time of this process per ack (both threads): what a loaded machine blurs least.
    cpu: dict[str, list[float]] = {"warnd": [], "reference": [], "raw": []}
    # The worst lag of a 10 ms timer on the receiving loop while the backlog pours in (ms).
    lag: dict[str, list[float]] = {"warnd": [], "reference": [], "raw": []}
    with tempfile.TemporaryDirectory(prefix="warnd-bench-acks-") as tmp:
        workdir = Path(tmp)
        # Logs at info, as in production, to a file rather than a terminal.
        log_file = (workdir / "warnd.log").open("w")
        log.configure("info", stream=log_file)
        broker = Broker(workdir, max_inflight_messages=BROKER_INFLIGHT, max_queued_messages=n * 2)
        broker.start()
        cluster = PostgresCluster(durable=True).start() if args.store == "postgres" else None
        try:
            directory = workdir / "directory.toml"
            write_directory(directory, villages, args.speakers)
            assert len(village_codes(villages)) == villages
            prepared_url = cluster.new_database() if cluster is not None else None
            prepared = settings_for(workdir / "prepared", broker, directory, prepared_url)
            t = time.perf_counter()
            warning_id, acks = await prepare_store(prepared)
            print(f"  prepared {len(acks):,} deliveries in {time.perf_counter() - t:.1f} s", file=sys.stderr)
            for rep in range(args.reps):
                # The paho-less sink right after the bare one: a third figure, for the note.
                for side in [x for s in order(rep) for x in ([s, "raw"] if s == "reference" else [s])]:
                    if args.only and side != args.only:
                        continue
                    where = workdir / f"{side}-{rep}"
                    # PostgreSQL: warnd a copy of the prepared database, a sink an empty one.
                    url = None
                    if cluster is not None:
                        url = cluster.new_database(template=prepared_url if side == "warnd" else None)
                    if side == "warnd":
                        settings = settings_for(where, broker, directory, url)
                        if url is None:
                            shutil.copytree(prepared.state_dir, settings.state_dir)
                        client_id = settings.mqtt.client_id
                    else:
                        where.mkdir()
                        client_id = f"bench-{side}-{rep}"
                    await asyncio.to_thread(make_session, broker, client_id)
                    await asyncio.to_thread(publish_backlog, broker, acks)
                    if side == "warnd":
                        seconds, cpu_s, lag_ms = await run_warnd(
                            settings, warning_id, len(acks), args.profile
                        )
                    elif side == "raw":
                        seconds, cpu_s, lag_ms = await run_raw(
                            broker, client_id, where / "raw.db", len(acks), url
                        )
                    else:
                        bare_profile = f"{args.profile}.bare" if args.profile else None
                        seconds, cpu_s, lag_ms = await run_bare(
                            broker, client_id, where / "bare.db", len(acks), bare_profile, url
                        )
                    runs[side].append(len(acks) / seconds)
                    cpu[side].append(cpu_s / len(acks) * 1e6)
                    lag[side].append(lag_ms)
                    print(
                        f"  rep {rep + 1} {side}: {len(acks) / seconds:,.0f} acks/s,"
                        f" {cpu[side][-1]:.0f} µs CPU per ack, worst loop lag {lag_ms:.0f} ms",
                        file=sys.stderr,
                    )
        finally:
            broker.stop()
            if cluster is not None:
                cluster.stop()
            log_file.close()
    fmt = number
    w, ref = runs["warnd"], runs["reference"] or [float("nan")] * len(runs["warnd"])
    on = " on PostgreSQL" if args.store == "postgres" else ""
    database = "PostgreSQL (synchronous_commit on)" if on else "SQLite (WAL, FULL)"
    return [
        Line(
            f"acks stored per second from a broker backlog of {n:,}{on}",
            "/s",
            w,
            ref,
            [a / b for a, b in zip(w, ref, strict=True)],
            "warnd / bare sink",
            "≥ 10,000 /s",
            statistics.median(w) >= 10_000,
            "reference: aiomqtt, acks handled on arrival, batches of "
            f"{BARE_BATCH} committed to {database} then PUBACKed; broker in flight "
            f"{BROKER_INFLIGHT} per client (docs/deploy.md); CPU per ack warnd "
            f"{spread(cpu['warnd'], fmt)} µs, bare {spread(cpu['reference'], fmt)} µs; worst loop lag"
            f" warnd {spread(lag['warnd'], fmt)} ms, bare {spread(lag['reference'], fmt)} ms;"
            f" the same sink on a minimal asyncio MQTT reader (no paho): {spread(runs['raw'], fmt)} /s,"
            f" {spread(cpu['raw'], fmt)} µs CPU per ack",
        )
    ]


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--acks", type=int, default=50_000, help="speakers, one `played` ack each")
    parser.add_argument("--speakers", type=int, default=10, help="speakers per village")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of warnd and of the bare sink")
    parser.add_argument("--only", choices=["warnd", "reference"], help="run one side (profiling)")
    parser.add_argument("--profile", help="py-spy warnd's timed phase into this file (collapsed stacks)")
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite", help="the store used")
    parser.add_argument("--json", help="write the lines here for bench/run_all.py instead of printing")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    table = asyncio.run(measure(args))
    sys.exit(emit(table, args.json))


if __name__ == "__main__":
    main()
