"""Guessed bearer tokens while a warning goes out: the fan-out is not slowed, no guess costs a slow hash.

A real warnd process (the loudspeaker channel on a real Mosquitto) with five API tokens in the old
PBKDF2 form at 100,000 rounds, as configs made before the fast form have them; 200 simulated
loudspeakers; and eight loopback addresses (127.0.0.2 …) sending random bearer tokens at ~50
requests/s in all, each under the general /api/ limit, so only the token gate can refuse them.
Before the gate, each guess cost 5 × ~40 ms of PBKDF2 on the event loop and a 200-speaker
fan-out took 43 s instead of 2 s.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.county import village_code, write_directory
from tests.support.harness import warning_body
from tests.support.mqtt import Broker, free_port
from tests.support.process import DaemonProcess, write_config
from warnd.tokenhash import pbkdf2_hash
from warnd.tools.simulator import SpeakerSimulator

pytestmark = pytest.mark.slow

VILLAGES, SPEAKERS = 40, 5
ATTACKERS = [f"127.0.0.{i}" for i in range(2, 10)]
# ~50 guesses/s in all; each address stays under the general limit of 10/s.
GUESS_INTERVAL_S = len(ATTACKERS) / 50
# The old-form token a legacy client presents once during the attack (its check is the only slow one).
LEGACY_TOKEN = "wd_" + secrets.token_urlsafe(32)
OLD_ENTRIES = 5


def guess() -> str:
    """A random token: new-style, or junk of any length (the shapes a scanner sends)."""
    if secrets.randbelow(2):
        return "wnd_" + secrets.token_urlsafe(32)
    return secrets.token_urlsafe(1 + secrets.randbelow(60))


async def attacker(address: str, url: str, stop: asyncio.Event, statuses: Counter[int]) -> None:
    """Guess tokens from one loopback address until told to stop."""
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    async with aiohttp.ClientSession(connector=connector) as http:
        while not stop.is_set():
            headers = {"Authorization": f"Bearer {guess()}"}
            async with http.get(f"{url}/api/v1/warnings", headers=headers) as resp:
                statuses[resp.status] += 1
                body = await resp.json()
                assert body["error"]["field"] == "Authorization"
            await asyncio.sleep(GUESS_INTERVAL_S)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The daemon's /metrics, parsed."""
    import urllib.request

    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_fanout_completes_while_tokens_are_guessed(tmp_path: Path, broker: Broker) -> None:
    """Every speaker plays once, on time; every guess is refused (401 or 429); no guess ran a KDF."""
    directory = write_directory(
        tmp_path / "directory.toml",
        villages=VILLAGES,
        speakers=SPEAKERS,
        leds=0,
        officials=0,
        secretaries=False,
        grid_workers=False,
    )
    tokens = [LEGACY_TOKEN] + ["wd_" + secrets.token_urlsafe(32) for _ in range(OLD_ENTRIES - 1)]
    old = "".join(
        f'[[auth.tokens]]\nname = "old-{i}"\nrole = "viewer"\nhash = "{pbkdf2_hash(t)}"\n\n'
        for i, t in enumerate(tokens)
    )
    extra = f'[mqtt]\nurl = "{broker.url}"\n\n[tts]\nrepeat = 1\n\n[wecom]\nenabled = false\n\n{old}'
    port = free_port()
    config = write_config(tmp_path, directory, port, extra=extra)
    daemon = DaemonProcess(["-m", "warnd.cli", "run", "--config", str(config)], port, tmp_path / "warnd.log")
    daemon.start()
    codes = [village_code(i) for i in range(VILLAGES)]
    speakers = {f"spk-{c}-{k}": c for c in codes for k in range(1, SPEAKERS + 1)}
    sim = SpeakerSimulator(broker.url, speakers, reconnect_max_s=1.0)
    stop = asyncio.Event()
    statuses: Counter[int] = Counter()
    attacks: list[asyncio.Task[None]] = []
    try:
        sim.start()
        await sim.wait_connected(20)
        attacks = [asyncio.create_task(attacker(a, daemon.url, stop, statuses)) for a in ATTACKERS]
        attack_t0 = time.monotonic()
        # The attack is under way, each address past its budget of failures, before the warning.
        await asyncio.sleep(2.5)
        loop = asyncio.get_running_loop()
        status, body = await loop.run_in_executor(
            None, lambda: daemon.call("POST", "/api/v1/warnings", warning_body(area={"codes": codes}))
        )
        assert status == 202, body
        t0 = time.monotonic()
        # A client with an old-form token, during the attack: still let in (one slow check).
        status, _ = await loop.run_in_executor(
            None, lambda: daemon.call("GET", "/api/v1/warnings", token=LEGACY_TOKEN)
        )
        assert status == 200
        while True:
            status, w = await loop.run_in_executor(
                None, lambda: daemon.call("GET", f"/api/v1/warnings/{body['id']}", role="viewer")
            )
            assert status == 200
            if w["coverage"]["loudspeaker"]["acknowledged"] == len(speakers):
                break
            assert time.monotonic() - t0 < 30, f"fan-out not done in 30 s: {w['coverage']['loudspeaker']}"
            await asyncio.sleep(0.25)
        fanout_s = time.monotonic() - t0
        stop.set()
        await asyncio.gather(*attacks)
        # Every speaker played exactly once, one msg_id per village.
        for device_id, spk in sim.speakers.items():
            played = Counter(cmd["msg_id"] for cmd in spk.played)
            assert len(played) == 1 and set(played.values()) == {1}, (device_id, played)
        per_village = {v: {s.played[0]["msg_id"] for s in sim.by_village[v]} for v in codes}
        assert all(len(ids) == 1 for ids in per_village.values())
        # Every guess was refused, and the gate's counters say by whom and how.
        guesses = sum(statuses.values())
        assert guesses >= 50, statuses
        assert set(statuses) <= {401, 429}, statuses
        # Each address has 10 failures answered, one more per 10 s; past those, 429.
        attack_s = time.monotonic() - attack_t0
        assert statuses[401] <= len(ATTACKERS) * (10 + 1 + attack_s / 10), (statuses, attack_s)
        assert statuses[429] >= len(ATTACKERS), statuses
        m = scrape(daemon.url)
        failures = sum(v for (name, _), v in m.items() if name == "warnd_auth_failures_total")
        assert failures == statuses[401]
        assert m[("warnd_auth_throttled_total", ())] == statuses[429]
        # The only slow checks: the legacy client's one pass over the five old entries.
        assert m[("warnd_auth_slow_hashes_total", ())] == OLD_ENTRIES
        # Unhindered: a 200-speaker fan-out takes ~2 s here; 43 s under this attack before the gate.
        assert fanout_s < 15, fanout_s
        print(f"fan-out {fanout_s:.2f} s under {guesses} guesses in {attack_s:.1f} s: {dict(statuses)}")
    finally:
        stop.set()
        for task in attacks:
            task.cancel()
        await asyncio.gather(*attacks, return_exceptions=True)
        await sim.aclose()
        assert daemon.terminate() == 0
