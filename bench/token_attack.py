"""Benchmark: a loudspeaker fan-out with and without bearer tokens being guessed, as a ratio.

    .venv/bin/python -m bench.token_attack [--villages 40] [--speakers 5] [--rate 50] [--addresses 8]
        [--reps 3] [--json PATH]

A Mosquitto on a free port, the lightweight speaker peer (`bench._swarm`), and warnd as its own
process (`warnd run`, the loudspeaker channel) with five API tokens in the old PBKDF2 form at
100,000 rounds beside the fast one the operator uses. One red warning to every village, twice,
each time with a fresh daemon: once while `--addresses` loopback addresses (127.0.0.2 …) send
random bearer tokens at `--rate` requests/s in all, then in quiet. Reported: time from the 202
to every speaker's `played` (polled through the API every 0.1 s), and the ratio of the two,
`--reps` times with the quiet and the attacked run alternating in order.
Before the token gate each guess cost 5 × ~40 ms of PBKDF2 on the event loop: 200 speakers
took 43 s instead of 1.8 s under this attack (ratio ~24).

Not a test: numbers depend on the machine; bench/README.md records them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._table import Line, emit, order  # noqa: E402
from bench.loudspeaker_fanout import start_peer, village_codes, write_directory  # noqa: E402
from tests.support.harness import TOKENS  # noqa: E402
from tests.support.mqtt import Broker, free_port  # noqa: E402
from tests.support.process import DaemonProcess, write_config  # noqa: E402
from warnd.tokenhash import pbkdf2_hash  # noqa: E402

OLD_ENTRIES = 5
# The target: guessing must not noticeably slow a warning down.
TARGET_RATIO = 1.5


def old_tokens_toml() -> str:
    """Five `[[auth.tokens]]` in the old PBKDF2 form (100,000 rounds), as older configs have them."""
    return "".join(
        f'[[auth.tokens]]\nname = "old-{i}"\nrole = "viewer"\n'
        f'hash = "{pbkdf2_hash("wd_" + secrets.token_urlsafe(32))}"\n\n'
        for i in range(OLD_ENTRIES)
    )


async def attacker(
    address: str, url: str, interval_s: float, stop: asyncio.Event, seen: Counter[int]
) -> None:
    """Random bearer tokens from one loopback address, one every interval_s, until stopped."""
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    async with aiohttp.ClientSession(connector=connector) as http:
        while not stop.is_set():
            token = "wnd_" + secrets.token_urlsafe(32) if secrets.randbelow(2) else secrets.token_hex(16)
            async with http.get(f"{url}/api/v1/warnings", headers={"Authorization": f"Bearer {token}"}) as r:
                seen[r.status] += 1
            await asyncio.sleep(interval_s)


async def fanout(
    workdir: Path,
    broker: Broker,
    directory: Path,
    codes: list[str],
    expected: int,
    attack: dict[str, Any] | None,
) -> dict[str, Any]:
    """Start a daemon, issue one warning to `codes`, time until `expected` speakers played."""
    port = free_port()
    extra = f'[mqtt]\nurl = "{broker.url}"\n\n[wecom]\nenabled = false\n\n{old_tokens_toml()}'
    config = write_config(workdir, directory, port, extra=extra)
    daemon = DaemonProcess(["-m", "warnd.cli", "run", "--config", str(config)], port, workdir / "warnd.log")
    daemon.start()
    stop = asyncio.Event()
    seen: Counter[int] = Counter()
    tasks = []
    headers = {"Authorization": f"Bearer {TOKENS['operator']}"}
    try:
        if attack is not None:
            interval = attack["addresses"] / attack["rate"]
            tasks = [
                asyncio.create_task(attacker(f"127.0.0.{2 + i}", daemon.url, interval, stop, seen))
                for i in range(attack["addresses"])
            ]
            await asyncio.sleep(2.0)  # under way, every address past its failure budget
        body = {
            "event": "暴雨",
            "level": "red",
            "headline": "县气象台发布暴雨红色预警",
            "area": {"codes": codes},
        }
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{daemon.url}/api/v1/warnings", json=body, headers=headers) as resp:
                assert resp.status == 202, await resp.text()
                wid = (await resp.json())["id"]
            t0 = time.perf_counter()
            while True:
                async with http.get(f"{daemon.url}/api/v1/warnings/{wid}", headers=headers) as resp:
                    # No loudspeaker coverage yet until the first step is planned, just after the 202.
                    coverage = (await resp.json())["coverage"].get("loudspeaker", {})
                    done = coverage.get("acknowledged", 0)
                if done == expected:
                    break
                if time.perf_counter() - t0 > 300:
                    raise RuntimeError(f"{done} of {expected} played after 300 s")
                await asyncio.sleep(0.1)
            seconds = time.perf_counter() - t0
            async with http.get(f"{daemon.url}/metrics") as resp:
                metrics = await resp.text()
        stop.set()
        await asyncio.gather(*tasks)
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        daemon.terminate()
    slow = next(
        (
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("warnd_auth_slow_hashes_total")
        ),
        0.0,
    )
    return {"seconds": seconds, "statuses": dict(seen), "slow_hashes": slow}


async def bench(villages: int, speakers: int, rate: float, addresses: int, reps: int) -> list[Line]:
    """`reps` attacked and quiet runs, alternating; the table's line."""
    n = villages * speakers
    runs: dict[str, list[dict[str, Any]]] = {"warnd": [], "reference": []}
    with tempfile.TemporaryDirectory(prefix="warnd-bench-") as tmp:
        workdir = Path(tmp)
        broker = Broker(workdir)
        broker.start()
        try:
            directory = workdir / "directory.toml"
            mapping = write_directory(directory, villages, speakers)
            mapping_file = workdir / "speakers.json"
            mapping_file.write_text(json.dumps(mapping))
            codes = village_codes(villages)
            peer = start_peer(broker, "speakers", mapping_file)
            try:
                for rep in range(reps):
                    # "warnd" is the attacked run, its reference the quiet one beside it.
                    for side in order(rep):
                        attack = {"rate": rate, "addresses": addresses} if side == "warnd" else None
                        run_dir = workdir / f"{side}-{rep}"
                        run_dir.mkdir()
                        runs[side].append(await fanout(run_dir, broker, directory, codes, n, attack))
                        print(f"  rep {rep + 1} {'attack' if attack else 'quiet'}: "
                              f"{runs[side][-1]['seconds']:.2f} s", file=sys.stderr, flush=True)  # fmt: skip
            finally:
                peer.terminate()
                peer.wait()
        finally:
            broker.stop()
    attacked = [r["seconds"] for r in runs["warnd"]]
    quiet = [r["seconds"] for r in runs["reference"]]
    ratios = [a / q for a, q in zip(attacked, quiet, strict=True)]
    slow = sum(r["slow_hashes"] for r in runs["warnd"])
    statuses: dict[str, int] = {}
    for r in runs["warnd"]:
        for k, v in r["statuses"].items():
            statuses[str(k)] = statuses.get(str(k), 0) + v
    ok = statistics.median(ratios) <= TARGET_RATIO and slow == 0
    return [
        Line(f"fan-out {n:,} speakers while {rate:g} random tokens/s hit the API", "s", attacked, quiet,
             ratios, "attack / quiet", f"≤ {TARGET_RATIO} ×, no slow hash", ok,
             f"reference: the same fan-out in quiet; {addresses} addresses, {OLD_ENTRIES} PBKDF2 tokens; "
             f"guesses answered (all runs): {statuses}; slow hashes run: {slow:g}"),
    ]  # fmt: skip


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--villages", type=int, default=40)
    parser.add_argument("--speakers", type=int, default=5)
    parser.add_argument("--rate", type=float, default=50, help="guesses per second, all addresses together")
    parser.add_argument("--addresses", type=int, default=8, help="loopback addresses guessing (127.0.0.2 …)")
    parser.add_argument("--reps", type=int, default=3, help="attacked and quiet runs each")
    parser.add_argument("--json", help="write the lines here for bench/run_all.py instead of printing")
    args = parser.parse_args()
    lines = asyncio.run(bench(args.villages, args.speakers, args.rate, args.addresses, args.reps))
    sys.exit(emit(lines, args.json))


if __name__ == "__main__":
    main()
