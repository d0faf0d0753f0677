"""Benchmark: one red warning to 1,000 villages × 10 loudspeakers, against a bare aiomqtt loop.

    .venv/bin/python -m bench.loudspeaker_fanout [--villages 1000] [--speakers 10] [--progress-acks]

Starts a Mosquitto on a free port, a lightweight speaker peer in another process
(`bench._swarm`: paho-mqtt, one connection for all speakers, each audio URL downloaded and
checked once), and warnd in this process with only the loudspeaker channel. Reports, from one run:

- warnd: time from the 202 of `POST /api/v1/warnings` to the last `played` ack recorded
  (coverage acknowledged == villages × speakers);
- bare: the same number of QoS-1 publishes, each answered by a QoS-1 ack from the same peer
  program, done by a bare aiomqtt loop with nothing in between;
- the ratio of warnd's rate to the bare loop's rate.

Not a test: numbers depend on the machine; bench/README.md records them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.mqtt import Broker, free_port  # noqa: E402

TOKEN = "bench-operator-token"


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
    """bench._swarm in another process (`speakers` for warnd, `echo` for the bare loop), once subscribed."""
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


# --- warnd ----------------------------------------------------------------------------------


async def run_warnd(
    workdir: Path, broker: Broker, directory: Path, codes: list[str], expected: int
) -> dict[str, float]:
    """warnd with the loudspeaker channel: issue one warning, time until every speaker played."""
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
    )
    # Logs at info, as in production, to a file rather than a terminal.
    log_file = (workdir / "warnd.log").open("w")
    log.configure("info", stream=log_file)
    stop = asyncio.Event()
    ready = asyncio.Event()
    holder: dict[str, Any] = {}

    def on_ready(daemon: Any) -> None:
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
    body = {
        "event": "暴雨",
        "level": "red",
        "headline": "县气象台发布暴雨红色预警",
        "instruction": "请立即转移低洼地带和山洪危险区人员。",
        "area": {"codes": codes},
    }
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/api/v1/warnings", json=body, headers=headers) as resp:
            assert resp.status == 202, await resp.text()
            wid = (await resp.json())["id"]
        t0 = time.perf_counter()
        accepted = datetime.now(UTC)
        # Completion is checked four times a second with one cheap count; the times themselves come
        # from the store afterwards (acked_at, sent_at: warnd's clock when it recorded them), so
        # the measuring does not compete with the acks it measures.
        while True:
            acked = await daemon.store.count_acked(wid)
            if acked == expected:
                break
            if time.perf_counter() - t0 > 300:
                raise RuntimeError(f"{acked} of {expected} played after 300 s")
            await asyncio.sleep(0.25)
        last_sent, last_acked = await daemon.store.last_times(wid)
        assert last_sent is not None  # every speaker played …
        assert last_acked is not None
    elapsed = (last_acked - accepted).total_seconds()
    all_sent = (last_sent - accepted).total_seconds()
    stop.set()
    await daemon_task
    log_file.close()
    lines = (workdir / "warnd.log").read_text().splitlines()
    rendered = [json.loads(x) for x in lines if '"audio.rendered"' in x]
    return {
        "seconds": elapsed,
        "all_sent_s": all_sent,
        "render_s": rendered[0]["duration_ms"] / 1000 if rendered else 0.0,
    }


async def run_bare(broker: Broker, n: int) -> float:
    """n QoS-1 publishes, each acked by the echo process with a QoS-1 message: seconds until all acks.

    At most MAX_INFLIGHT publishes wait for their PUBACK at once, as in warnd's link: aiomqtt
    checks every pending call on each publish, so 10,000 at once would cost it O(n²).
    """
    from adapters.mqtt import MAX_INFLIGHT

    got = 0
    done = asyncio.Event()
    client = aiomqtt.Client(
        broker.host, broker.port, identifier="bench-bare", max_inflight_messages=MAX_INFLIGHT
    )
    async with client as c:
        c.pending_calls_threshold = 1_000_000
        await c.subscribe("bench/ack/#", qos=1)

        async def receive() -> None:
            nonlocal got
            async for _ in c.messages:
                got += 1
                if got == n:
                    done.set()
                    return

        window = asyncio.Semaphore(MAX_INFLIGHT)

        async def publish(i: int) -> None:
            async with window:
                await c.publish(f"bench/cmd/{i}", b'{"msg_id":"%d"}' % i, qos=1)

        receiver = asyncio.create_task(receive())
        t0 = time.perf_counter()
        await asyncio.gather(*(publish(i) for i in range(n)))
        await asyncio.wait_for(done.wait(), 300)
        elapsed = time.perf_counter() - t0
        await receiver
    return elapsed


async def bench(villages: int, speakers: int, progress_acks: bool) -> bool:
    """Run both and print the report."""
    n = villages * speakers
    with tempfile.TemporaryDirectory(prefix="warnd-bench-") as tmp:
        workdir = Path(tmp)
        broker = Broker(workdir)
        broker.start()
        try:
            directory = workdir / "directory.toml"
            mapping = write_directory(directory, villages, speakers)
            mapping_file = workdir / "speakers.json"
            mapping_file.write_text(json.dumps(mapping))
            echo = start_peer(broker, "echo")
            try:
                bare_s = await run_bare(broker, n)
            finally:
                echo.terminate()
                echo.wait()
            peer = start_peer(broker, "speakers", mapping_file, progress_acks)
            try:
                w = await run_warnd(workdir, broker, directory, village_codes(villages), n)
            finally:
                peer.terminate()
                peer.wait()
        finally:
            broker.stop()
    acks = "received, playing, played" if progress_acks else "played"
    print(f"speakers:                 {n} ({villages} villages × {speakers}), acking {acks}")
    print(f"warnd 202 → last played:  {w['seconds']:.2f} s  ({n / w['seconds']:.0f} speakers/s)")
    print(f"  of which audio render:  {w['render_s']:.2f} s; all published after {w['all_sent_s']:.2f} s")
    print(f"bare aiomqtt publish+ack: {bare_s:.2f} s  ({n / bare_s:.0f} messages/s)")
    ratio = bare_s / w["seconds"]
    print(f"warnd rate / bare rate:   {ratio:.2f}")
    # The targets: everything confirmed within 3 s, at least half the bare loop's rate.
    ok = w["seconds"] <= 3.0 and ratio >= 0.5
    print("targets: last played ≤ 3 s, rate ≥ 0.5 × bare")
    print("OK" if ok else "MISSED")
    return ok


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--villages", type=int, default=1000)
    parser.add_argument("--speakers", type=int, default=10)
    parser.add_argument(
        "--progress-acks", action="store_true", help="speakers also ack received and playing (3 acks each)"
    )
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(0 if asyncio.run(bench(args.villages, args.speakers, args.progress_acks)) else 1)


if __name__ == "__main__":
    main()
