"""Benchmark: one red warning to 1,000 villages × 10 loudspeakers, against a bare aiomqtt loop.

    .venv/bin/python -m bench.loudspeaker_fanout [--villages 1000] [--speakers 10] [--reps 3]
        [--accept-rate 50] [--accept-s 5] [--progress-acks] [--store postgres] [--json PATH]

A Mosquitto on a free port; for every run a fresh lightweight speaker peer in another process
(`bench._swarm`: paho-mqtt, one connection for all speakers, each village command parsed once,
each audio URL downloaded and checked once). Each repetition runs, in alternating order:

- **warnd** in this process with only the loudspeaker channel, a fresh state directory (the
  MP3 is rendered inside the measured time): one red warning for every village;
- **the reference**: a bare aiomqtt loop doing the *same* work on the wire — one QoS-1
  command per village on `warnd/v1/village/{code}/speaker`, the same peer answering with one
  QoS-1 `played` ack per speaker on `warnd/v1/device/{id}/ack`, received the way warnd's link
  receives them (a handler called as each message arrives, manual PUBACK through paho) — and,
  in place of warnd's API, a bare aiohttp handler committing each posted warning and an audit
  row to SQLite (WAL, synchronous=FULL) in one transaction.

While each fan-out runs, `--accept-rate` warnings per second are posted for `--accept-s`
seconds (open loop: a slow answer does not slow the posting) and a probe in this process
measures how late a 10 ms timer fires. warnd's posts are exercise warnings with a fresh
identifier each: the full accept path (auth, validation, de-duplication, the commit with its
audit event) without adding speakers to the fan-out being timed.

`--store postgres`: warnd's store is a PostgreSQL database (a fresh one per run) on a server the
bench starts itself (tests.support.postgres, with fsync and synchronous commits on, as in
production), and the reference's accept handler commits to a database of the same server
(psycopg on its own thread) instead of SQLite; the lines say "on PostgreSQL".

Lines (see bench/_table.py): 202 → last played (ratio: warnd's rate over the bare loop's),
accept p50 and p99 (ratio warnd / bare), worst event-loop lag (warnd / bare).

Not a test: numbers depend on the machine; bench/README.md records them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import _bare_db as bare_db  # noqa: E402
from bench._table import Line, emit, order  # noqa: E402
from tests.support.mqtt import Broker, free_port  # noqa: E402
from tests.support.postgres import PostgresCluster  # noqa: E402
from warnd.mqtt.link import buffer_reads  # noqa: E402

TOKEN = "bench-operator-token"
TOPIC_ROOT = "warnd/v1"
HEADLINE = "县气象台发布暴雨红色预警"
INSTRUCTION = "请立即转移低洼地带和山洪危险区人员。"
# The probe's timer: short enough to see a 50 ms stall, long enough to cost the loop nothing.
PROBE_INTERVAL_S = 0.01
# Publishes awaiting their PUBACK at once in the bare loop: warnd's link allows as many
# (MAX_INFLIGHT in its MQTT link), and with all at once aiomqtt's per-publish scan of pending
# calls would make the bare loop slower, not faster.
BARE_INFLIGHT = 1000


def village_codes(n: int) -> list[str]:
    """n valid 12-digit village codes, 500 villages per made-up township."""
    return [f"330502{101 + i // 500:03d}{201 + i % 500:03d}" for i in range(n)]


def write_directory(path: Path, villages: int, speakers: int) -> dict[str, str]:
    """A directory of villages with speakers only; returns speaker id → village."""
    out, mapping = [], {}
    for i, code in enumerate(village_codes(villages)):
        ids = [f"spk-{code}-{k + 1}" for k in range(speakers)]
        mapping.update(dict.fromkeys(ids, code))
        spk = ", ".join(f'"{s}"' for s in ids)
        out.append(
            f'[[village]]\ncode = "{code}"\nname = "村{i}"\nlat = 30.0\nlon = 120.0\nspeakers = [{spk}]\n'
        )
    path.write_text("\n".join(out), encoding="utf-8")
    return mapping


# --- the peer process ------------------------------------------------------------------------


def start_peer(
    broker: Broker, mode: str, mapping_file: Path | None = None, progress_acks: bool = False
) -> subprocess.Popen[str]:
    """bench._swarm in another process (`speakers`, or `echo`), once subscribed."""
    args = [sys.executable, "-m", "bench._swarm", mode, broker.url]
    if mapping_file is not None:
        args.append(str(mapping_file))
    if progress_acks:
        args.append("--progress-acks")
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        raise RuntimeError(f"bench._swarm {mode} did not start: {line!r}")
    return proc


def stop_peer(peer: subprocess.Popen[str]) -> None:
    """Terminate a peer started by start_peer and reap it."""
    peer.terminate()
    peer.wait()


# --- what both sides run beside the fan-out -------------------------------------------------


async def lag_probe(stop: asyncio.Event) -> float:
    """How late, at worst, a PROBE_INTERVAL_S timer fired on this loop until `stop` (ms)."""
    worst = 0.0
    while not stop.is_set():
        t0 = time.perf_counter()
        await asyncio.sleep(PROBE_INTERVAL_S)
        worst = max(worst, time.perf_counter() - t0 - PROBE_INTERVAL_S)
    return worst * 1000


async def accept_load(
    url: str, make_body: Any, headers: dict[str, str], rate: float, seconds: float
) -> dict[str, Any]:
    """POST `rate` bodies per second for `seconds`, open loop; latencies (ms) of the 202s, others counted."""
    latencies: list[float] = []
    refused: dict[int, int] = {}

    async def one(http: aiohttp.ClientSession, i: int) -> None:
        """One request, timed from just before it is sent to its answer."""
        t0 = time.perf_counter()
        async with http.post(url, json=make_body(i), headers=headers) as resp:
            await resp.read()
            if resp.status == 202:
                latencies.append((time.perf_counter() - t0) * 1000)
            else:
                refused[resp.status] = refused.get(resp.status, 0) + 1

    n = int(rate * seconds)
    # One connection per request in flight, as separate upstream clients would have.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        start = time.perf_counter()
        tasks = []
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(http, i)))
        await asyncio.gather(*tasks)
    return {"latencies_ms": latencies, "refused": refused, "sent": n}


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0–100) of values, nearest rank; 0 for none."""
    if not values:
        return 0.0
    ranked = sorted(values)
    return ranked[min(len(ranked) - 1, max(0, round(q / 100 * len(ranked)) - 1))]


# --- warnd ----------------------------------------------------------------------------------


# The store queries of the benchmark, in one place: the store refactor turns them into methods.
async def acked_count(store: Any, warning_id: str) -> int:
    """How many of a warning's deliveries have an ack recorded (one cheap COUNT)."""
    return int(await store.count_acked(warning_id))


async def last_acked_and_sent(store: Any, warning_id: str) -> tuple[datetime, datetime]:
    """The latest acked_at and sent_at among a warning's deliveries (warnd's own clock)."""
    last_sent, last_acked = await store.last_times(warning_id)
    assert last_sent is not None  # every speaker played …
    assert last_acked is not None  # … and confirmed
    return last_acked, last_sent


async def run_warnd(
    workdir: Path,
    broker: Broker,
    directory: Path,
    codes: list[str],
    expected: int,
    load: dict[str, float],
    store_url: str | None = None,
) -> dict[str, Any]:
    """warnd with the loudspeaker channel: one warning, timed until every speaker played.

    `store_url`: a PostgreSQL database for its store instead of SQLite in workdir.
    """
    from adapters.loudspeaker import LoudspeakerAdapter
    from warnd import log
    from warnd.api.auth import hash_token
    from warnd.config import Settings
    from warnd.daemon import run

    port = free_port()
    settings = Settings(
        state_dir=workdir / "state",
        directory={"path": directory},
        mqtt={"url": broker.url},
        http={"port": port, "public_url": f"http://127.0.0.1:{port}"},
        auth={"tokens": [{"name": "bench", "role": "operator", "hash": hash_token(TOKEN)}]},
        approval={"levels": []},  # the bench's warning goes straight out (no sign-off)
        store={"url": store_url},
    )
    # Logs at info, as in production, to a file rather than a terminal.
    log_file = (workdir / "warnd.log").open("w")
    log.configure("info", stream=log_file)
    stop = asyncio.Event()
    ready = asyncio.Event()
    holder: dict[str, Any] = {}

    def on_ready(daemon: Any) -> None:
        """Keep the daemon once it serves."""
        holder["daemon"] = daemon
        ready.set()

    daemon_task = asyncio.create_task(
        run(
            settings,
            shutdown_trigger=stop.wait,
            adapters={"loudspeaker": LoudspeakerAdapter},
            on_ready=on_ready,
        )
    )
    await ready.wait()
    daemon = holder["daemon"]
    await daemon.adapters["loudspeaker"].link.wait_connected(10)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    body = {"event": "暴雨", "level": "red", "headline": HEADLINE, "instruction": INSTRUCTION,
            "area": {"codes": codes}}  # fmt: skip
    run_id = uuid.uuid4().hex[:8]

    def accept_body(i: int) -> dict[str, Any]:
        """An exercise warning with its own identifier: accepted in full, reaching no speaker."""
        return {"event": "暴雨", "level": "blue", "headline": HEADLINE, "status": "exercise",
                "area": {"codes": [codes[i % len(codes)]]}, "sender": "bench",
                "identifier": f"bench-{run_id}-{i}"}  # fmt: skip

    base = f"http://127.0.0.1:{port}"
    probe_stop = asyncio.Event()
    async with aiohttp.ClientSession() as http:
        probe = asyncio.create_task(lag_probe(probe_stop))
        async with http.post(f"{base}/api/v1/warnings", json=body, headers=headers) as resp:
            assert resp.status == 202, await resp.text()
            wid = (await resp.json())["id"]
        t0 = time.perf_counter()
        accepted = datetime.now(UTC)
        accepts = asyncio.create_task(
            accept_load(f"{base}/api/v1/warnings", accept_body, headers, load["rate"], load["seconds"])
        )
        # Completion is checked four times a second with one cheap count; the times themselves come
        # from the store afterwards (acked_at, sent_at: warnd's clock when it recorded them), so
        # the measuring does not compete with the acks it measures.
        while (acked := await acked_count(daemon.store, wid)) < expected:
            if time.perf_counter() - t0 > 300:
                raise RuntimeError(f"{acked} of {expected} played after 300 s")
            await asyncio.sleep(0.25)
        last_acked, last_sent = await last_acked_and_sent(daemon.store, wid)
        accept = await accepts
        probe_stop.set()
        lag_ms = await probe
    stop.set()
    await daemon_task
    log_file.close()
    lines = (workdir / "warnd.log").read_text().splitlines()
    rendered = [json.loads(x) for x in lines if '"audio.rendered"' in x]
    # When the first village command went out and when the MP3 was ready, from warnd's log.
    first_sent = next((json.loads(x) for x in lines if '"delivery.sent"' in x), None)
    return {
        "first_sent_s": since(accepted, first_sent) if first_sent else float("nan"),
        "render_done_s": since(accepted, rendered[0]) if rendered else float("nan"),
        "seconds": (last_acked - accepted).total_seconds(),
        "all_sent_s": (last_sent - accepted).total_seconds(),
        "render_s": rendered[0]["duration_ms"] / 1000 if rendered else 0.0,
        "accept": accept,
        "lag_ms": lag_ms,
    }


def since(start: datetime, line: dict[str, Any]) -> float:
    """Seconds from start to a log line's timestamp."""
    return (datetime.fromisoformat(line["timestamp"]) - start).total_seconds()


# --- the reference --------------------------------------------------------------------------


async def bare_accept_app(db_path: Path, store_url: str | None = None) -> tuple[web.AppRunner, int]:
    """A bare aiohttp handler: each posted warning and an audit row committed (WAL, FULL), then 202.

    SQLite on one worker thread of its own, as an async driver such as aiosqlite runs it; or,
    with `store_url`, that PostgreSQL database through psycopg, on its own thread the same way.
    """
    db_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bare-db")
    db, mark = bare_db.connect(db_path, store_url)
    db.execute("CREATE TABLE warnings (id TEXT PRIMARY KEY, body TEXT, created_at TEXT)")
    db.execute("CREATE TABLE audit (warning_id TEXT, event TEXT, at TEXT)")
    insert_warning = f"INSERT INTO warnings VALUES ({mark}, {mark}, {mark})"
    insert_audit = f"INSERT INTO audit VALUES ({mark}, 'warning.accepted', {mark})"

    def commit(wid: str, body: str, now: str) -> None:
        """The warning and its audit event in one transaction."""
        db.execute("BEGIN")
        db.execute(insert_warning, (wid, body, now))
        db.execute(insert_audit, (wid, now))
        db.execute("COMMIT")

    async def accept(request: web.Request) -> web.Response:
        """Parse, commit, answer the id."""
        body = await request.json()
        wid = uuid.uuid4().hex
        now = datetime.now(UTC).isoformat()
        await asyncio.get_running_loop().run_in_executor(db_thread, commit, wid, json.dumps(body), now)
        return web.json_response({"id": wid}, status=202)

    async def close(_app: web.Application) -> None:
        """Close the database and its thread with the app."""
        db_thread.submit(db.close).result()
        db_thread.shutdown()

    app = web.Application()
    app.router.add_post("/accept", accept)
    app.on_cleanup.append(close)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


async def bare_fanout(broker: Broker, codes: list[str], expected: int) -> float:
    """One QoS-1 command per village, `expected` acks back through warnd's receive path: seconds."""
    got = 0
    done = asyncio.Event()
    holder: dict[str, aiomqtt.Client] = {}

    class Inbox(asyncio.Queue):  # type: ignore[type-arg]
        """As warnd's link: each ack handled on arrival (parsed, PUBACKed), no task per message."""

        def put_nowait(self, item: aiomqtt.Message) -> None:
            """Count the ack, acknowledge it to the broker."""
            nonlocal got
            json.loads(item.payload)  # type: ignore[arg-type]
            holder["client"]._client.ack(item.mid, item.qos)
            got += 1
            if got == expected:
                done.set()

    client = aiomqtt.Client(
        broker.host, broker.port, identifier=f"bench-bare-{uuid.uuid4().hex[:6]}",
        max_inflight_messages=BARE_INFLIGHT, queue_type=Inbox,
    )  # fmt: skip
    holder["client"] = client
    client.pending_calls_threshold = BARE_INFLIGHT * 10
    client._client.manual_ack_set(True)
    buffer_reads(client._client)  # as warnd's link reads: a buffer at a time, READ_BYTES per callback
    run_id = uuid.uuid4().hex
    async with client:
        await client.subscribe(f"{TOPIC_ROOT}/device/+/ack", qos=1)
        window = asyncio.Semaphore(BARE_INFLIGHT)

        async def publish(i: int, code: str) -> None:
            """One village command, about the size of warnd's (text, no audio)."""
            cmd = {"v": 1, "msg_id": f"{run_id}-{i}", "warning_id": run_id, "kind": "play", "level": "red",
                   "severity_code": 1, "drill": False, "title": HEADLINE, "text": INSTRUCTION, "repeat": 3,
                   "ack_topic": f"{TOPIC_ROOT}/device/{{device_id}}/ack"}  # fmt: skip
            async with window:
                await client.publish(f"{TOPIC_ROOT}/village/{code}/speaker", json.dumps(cmd), qos=1)

        t0 = time.perf_counter()
        await asyncio.gather(*(publish(i, code) for i, code in enumerate(codes)))
        await asyncio.wait_for(done.wait(), 300)
        return time.perf_counter() - t0


def bare_body(i: int) -> dict[str, Any]:
    """A warning for the bare handler: the fields warnd's posts carry."""
    return {"event": "暴雨", "level": "blue", "headline": HEADLINE, "identifier": str(i)}


async def run_reference(
    workdir: Path,
    broker: Broker,
    codes: list[str],
    expected: int,
    load: dict[str, float],
    store_url: str | None = None,
) -> dict[str, Any]:
    """The bare fan-out with the bare accept handler under the same load, and the same probe."""
    runner, port = await bare_accept_app(workdir / "bare.db", store_url)
    probe_stop = asyncio.Event()
    try:
        probe = asyncio.create_task(lag_probe(probe_stop))
        url = f"http://127.0.0.1:{port}/accept"
        accepts = asyncio.create_task(accept_load(url, bare_body, {}, load["rate"], load["seconds"]))
        seconds = await bare_fanout(broker, codes, expected)
        accept = await accepts
        probe_stop.set()
        lag_ms = await probe
    finally:
        await runner.cleanup()
    return {"seconds": seconds, "accept": accept, "lag_ms": lag_ms}


# --- the benchmark --------------------------------------------------------------------------


async def measure(args: argparse.Namespace) -> tuple[list[Line], list[dict[str, Any]]]:
    """Run reference and warnd `reps` times, alternating; the table's lines and the raw runs."""
    villages, speakers = args.villages, args.speakers
    n = villages * speakers
    codes = village_codes(villages)
    load = {"rate": args.accept_rate, "seconds": args.accept_s}
    runs: dict[str, list[dict[str, Any]]] = {"warnd": [], "reference": []}
    # warnd waits for every delivery's ack; the bare loop counts messages, 3 per speaker if so.
    acks_each = 3 if args.progress_acks else 1
    with tempfile.TemporaryDirectory(prefix="warnd-bench-") as tmp:
        workdir = Path(tmp)
        broker = Broker(workdir)
        broker.start()
        cluster = PostgresCluster(durable=True).start() if args.store == "postgres" else None
        try:
            directory = workdir / "directory.toml"
            mapping_file = workdir / "speakers.json"
            mapping_file.write_text(json.dumps(write_directory(directory, villages, speakers)))
            for rep in range(args.reps):
                for side in order(rep):
                    # A fresh peer each run: its played-once memory and its queues start empty.
                    peer = start_peer(broker, "speakers", mapping_file, args.progress_acks)
                    try:
                        where = workdir / f"{side}-{rep}"
                        where.mkdir()
                        url = cluster.new_database() if cluster is not None else None
                        if side == "warnd":
                            result = await run_warnd(where, broker, directory, codes, n, load, url)
                        else:
                            result = await run_reference(where, broker, codes, n * acks_each, load, url)
                    finally:
                        stop_peer(peer)
                    runs[side].append(result)
                    print(f"  rep {rep + 1} {side}: {result['seconds']:.2f} s", file=sys.stderr, flush=True)
        finally:
            broker.stop()
            if cluster is not None:
                cluster.stop()
    return lines(args, runs), runs["warnd"]


def lines(args: argparse.Namespace, runs: dict[str, list[dict[str, Any]]]) -> list[Line]:
    """The table's lines from the runs; a target is judged on the median of the repetitions."""
    w, ref = runs["warnd"], runs["reference"]
    n = args.villages * args.speakers
    acks = "3 acks" if args.progress_acks else "played"
    on = " on PostgreSQL" if args.store == "postgres" else ""
    size = f"{args.villages:,} villages × {args.speakers} ({n:,} speakers, {acks}){on}"
    county = n >= 50_000
    w_s, r_s = [x["seconds"] for x in w], [x["seconds"] for x in ref]
    rate = [b / a for a, b in zip(w_s, r_s, strict=True)]
    # The targets: 10,000 speakers within 3 s at ≥ 0.5 × the bare rate; 50,000 linear, ≥ 0.7 ×.
    floor = 0.7 if county else 0.5
    fan_ok = statistics.median(rate) >= floor and (county or statistics.median(w_s) <= 3.0)
    render_s = [x["render_s"] for x in w]
    sent_s = [x["all_sent_s"] for x in w]
    first_s = [x["first_sent_s"] for x in w]
    ready_s = [x["render_done_s"] for x in w]
    note = (
        "reference: a bare aiomqtt loop, the same village publishes and acks, warnd's receive path; "
        f"warnd's audio render {min(render_s):.2f}–{max(render_s):.2f} s, ready after "
        f"{min(ready_s):.2f}–{max(ready_s):.2f} s; first published after {min(first_s):.2f}–"
        f"{max(first_s):.2f} s, all after {min(sent_s):.2f}–{max(sent_s):.2f} s"
    )
    target = f"≥ {floor} ×" + ("" if county else ", ≤ 3 s")
    out = [
        Line(
            f"fan-out {size}: 202 → last played",
            "s",
            w_s,
            r_s,
            rate,
            "rate warnd / bare",
            target,
            fan_ok,
            note,
        )
    ]
    if args.accept_s > 0:
        p50 = [percentile(x["accept"]["latencies_ms"], 50) for x in w]
        p99 = [percentile(x["accept"]["latencies_ms"], 99) for x in w]
        r50 = [percentile(x["accept"]["latencies_ms"], 50) for x in ref]
        r99 = [percentile(x["accept"]["latencies_ms"], 99) for x in ref]
        refused = [sum(x["accept"]["refused"].values()) for x in w]
        statuses: dict[str, int] = {}
        for x in w:
            for k, v in x["accept"]["refused"].items():
                statuses[str(k)] = statuses.get(str(k), 0) + v
        p99_ratio = [a / b for a, b in zip(p99, r99, strict=True)]
        accept_ok = statistics.median(p99) <= 20 and statistics.median(p99_ratio) <= 2 and not any(refused)
        rate_s = f"{args.accept_rate:g}/s"
        bare_db = "PostgreSQL (psycopg, synchronous_commit on)" if on else "SQLite (WAL, FULL)"
        note = (
            f"{int(args.accept_rate * args.accept_s)} posts per run; answered other than 202 (all runs): "
            f"{statuses or 'none'}; reference: bare aiohttp + {bare_db} on its own thread"
        )
        out += [
            Line(f"accept p50 at {rate_s} during the fan-out{on}", "ms", p50, r50,
                 [a / b for a, b in zip(p50, r50, strict=True)], "warnd / bare"),
            Line(f"accept p99 at {rate_s} during the fan-out{on}", "ms", p99, r99, p99_ratio, "warnd / bare",
                 "≤ 20 ms, ≤ 2 ×, none refused", accept_ok, note),
        ]  # fmt: skip
    lag = [x["lag_ms"] for x in w]
    rlag = [x["lag_ms"] for x in ref]
    out.append(
        Line(f"worst event-loop lag during the fan-out ({args.villages:,} villages){on}", "ms", lag, rlag,
             [a / max(b, 0.1) for a, b in zip(lag, rlag, strict=True)], "warnd / bare", "≤ 50 ms",
             statistics.median(lag) <= 50,
             f"a {PROBE_INTERVAL_S * 1000:g} ms timer in warnd's process (the reference's: the bare loop's)")
    )  # fmt: skip
    return out


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--villages", type=int, default=1000)
    parser.add_argument("--speakers", type=int, default=10)
    parser.add_argument("--reps", type=int, default=3, help="repetitions of warnd and of the reference")
    parser.add_argument("--accept-rate", type=float, default=50, help="warnings posted per second meanwhile")
    parser.add_argument("--accept-s", type=float, default=5, help="for how long (0: no accept line)")
    parser.add_argument(
        "--progress-acks", action="store_true", help="speakers also ack received and playing (3 acks each)"
    )
    parser.add_argument(
        "--store", choices=["sqlite", "postgres"], default="sqlite", help="the store used"
    )
    parser.add_argument("--json", help="write the lines here for bench/run_all.py instead of printing")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    table, _ = asyncio.run(measure(args))
    sys.exit(emit(table, args.json))


if __name__ == "__main__":
    main()
