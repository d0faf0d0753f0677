"""The token gate: unknown tokens cost no slow hash, old hashes still work, failures limited per address."""

from __future__ import annotations

import asyncio
import io
import secrets
import time
from pathlib import Path

import aiohttp
import pytest

from tests.support.county import write_directory
from tests.support.feeds import feed, feed_harness, push_headers
from tests.support.harness import TOKENS, Harness
from warnd import cli
from warnd.api.auth import AuthGate, Principal, Refusal, TokenBook
from warnd.api.ratelimit import RateLimiter
from warnd.config import TokenSettings
from warnd.metrics import Metrics
from warnd.tokenhash import (
    DEFAULT_ITERATIONS,
    hash_form_problem,
    hash_token,
    pbkdf2_hash,
    verify_fast,
    verify_slow,
)


def old_token() -> str:
    """A token as `warnd hash-token` made them while it printed PBKDF2 hashes."""
    return "wd_" + secrets.token_urlsafe(32)


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    """One sample of the gate's counters (0 when absent)."""
    return metrics.registry.get_sample_value(name, labels) or 0.0


def gate_for(tokens: list[TokenSettings], limiter: RateLimiter | None = None) -> tuple[AuthGate, Metrics]:
    """A gate over these tokens with its own metrics."""
    metrics = Metrics()
    return AuthGate(TokenBook(tokens), limiter, metrics), metrics


# -- the hash forms ------------------------------------------------------------------------------


def test_verification_of_each_form() -> None:
    """Fast form: its token only; old form: its token only; a malformed form is named and matches nothing."""
    token = "wnd_" + secrets.token_urlsafe(32)
    fast = hash_token(token)
    assert hash_form_problem(fast) is None
    assert verify_fast(token, fast)
    assert not verify_fast(token + "x", fast)
    assert not verify_slow(token, fast)
    old = old_token()
    slow = pbkdf2_hash(old, iterations=1000)
    assert hash_form_problem(slow) is None
    assert verify_slow(old, slow)
    assert not verify_slow(old_token(), slow)
    assert not verify_fast(old, slow)
    for malformed in ("sha256:" + "0" * 63, "sha256:" + "G" * 64, "pbkdf2_sha256$1000$short$x", "plain"):
        assert hash_form_problem(malformed) is not None
        assert not verify_fast(token, malformed)
        assert not verify_slow(token, malformed)


# -- the gate ------------------------------------------------------------------------------------


async def test_unknown_tokens_run_no_slow_hash() -> None:
    """1,000 wrong tokens against 5 PBKDF2 entries at 100,000 rounds: refused without one KDF run."""
    tokens = [
        TokenSettings(name=f"old-{i}", role="operator", hash=pbkdf2_hash(old_token())) for i in range(5)
    ]
    tokens.append(
        TokenSettings(name="new", role="operator", hash=hash_token("wnd_" + secrets.token_urlsafe(32)))
    )
    gate, metrics = gate_for(tokens)
    guesses = ["wnd_" + secrets.token_urlsafe(32) for _ in range(500)]
    guesses += [secrets.token_hex(n) for n in range(1, 501)]  # any other shape: junk, JWT-like, empty-ish
    t0 = time.perf_counter()
    answers = [await gate.check("192.0.2.1", f"Bearer {g}") for g in guesses]
    elapsed = time.perf_counter() - t0
    assert all(a == Refusal(401, "unknown") for a in answers)
    assert sample(metrics, "warnd_auth_slow_hashes_total") == 0
    assert sample(metrics, "warnd_auth_failures_total", reason="unknown") == 1000
    # With a KDF per guess and entry this would take 5,000 × ~40 ms; a loose bound, the counter is the proof.
    assert elapsed < 5.0


async def test_old_hash_is_checked_once_per_token_off_the_loop() -> None:
    """An old-form token is verified once (concurrent requests wait for that one check), in a thread."""
    token = old_token()
    # Enough rounds that a check on the loop would visibly stop the ticker below.
    slow = pbkdf2_hash(token, iterations=DEFAULT_ITERATIONS * 10)
    gate, metrics = gate_for(
        [
            TokenSettings(name="old", role="approver", hash=slow),
            TokenSettings(name="other", role="viewer", hash=pbkdf2_hash(old_token(), iterations=1000)),
        ]
    )
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            await asyncio.sleep(0.005)
            ticks += 1

    tick_task = asyncio.create_task(ticker())
    first = await asyncio.gather(*(gate.check("192.0.2.1", f"Bearer {token}") for _ in range(5)))
    done.set()
    await tick_task
    assert first == [Principal("old", "approver")] * 5
    # Both entries checked once, for the first request only; the loop kept running meanwhile.
    assert sample(metrics, "warnd_auth_slow_hashes_total") == 2
    assert ticks >= 5
    assert await gate.check("192.0.2.9", f"bearer {token}") == Principal("old", "approver")
    assert sample(metrics, "warnd_auth_slow_hashes_total") == 2
    # A reload forgets what was verified: a removed token stops working at once.
    gate.book.replace([TokenSettings(name="other", role="viewer", hash=hash_token("x"))])
    assert await gate.check("192.0.2.1", f"Bearer {token}") == Refusal(401, "unknown")


async def test_old_shaped_guesses_get_slow_checks_only_within_the_budget() -> None:
    """Guesses shaped like old tokens reach the KDF only as far as the address's failure budget."""
    token = old_token()
    gate, metrics = gate_for(
        [TokenSettings(name="old", role="operator", hash=pbkdf2_hash(token, iterations=1000))],
        RateLimiter(rate_per_s=0.1, burst=3),
    )
    answers = await asyncio.gather(*(gate.check("192.0.2.1", f"Bearer {old_token()}") for _ in range(10)))
    assert sorted(a.status for a in answers if isinstance(a, Refusal)) == [401] * 3 + [429] * 7
    assert sample(metrics, "warnd_auth_slow_hashes_total") == 3
    assert sample(metrics, "warnd_auth_failures_total", reason="mismatch") == 3
    assert sample(metrics, "warnd_auth_throttled_total") == 7
    # The right token, not yet verified, needs a slow check too: it waits like a guess there,
    # gets in from another address, and is then remembered, so from the first one too.
    assert await gate.check("192.0.2.1", f"Bearer {token}") == Refusal(429, "throttled", 10)
    assert await gate.check("192.0.2.2", f"Bearer {token}") == Principal("old", "operator")
    assert await gate.check("192.0.2.1", f"Bearer {token}") == Principal("old", "operator")


# -- over HTTP -----------------------------------------------------------------------------------


async def get_from(address: str, url: str, token: str | None) -> tuple[int, dict[str, str], dict]:
    """GET with the client socket bound to a loopback address; status, headers and JSON body."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    async with aiohttp.ClientSession(connector=connector) as http, http.get(url, headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.json()


async def test_api_answers_429_after_failures_from_one_address_only(tmp_path: Path) -> None:
    """After the burst of failures one address gets 429 with Retry-After; others, and real tokens, go on."""
    h = await Harness(
        tmp_path,
        channels=["led"],
        settings={"http": {"port": 0, "auth_failure_burst": 3, "auth_failures_per_min": 6}},
    ).start()
    try:
        url = str(h.client.make_url("/api/v1/warnings"))
        statuses = [(await get_from("127.0.0.2", url, f"guess-{i}"))[0] for i in range(3)]
        assert statuses == [401, 401, 401]
        status, headers, body = await get_from("127.0.0.2", url, "guess-4")
        assert status == 429
        assert headers["Retry-After"] == "10"
        assert body["error"]["code"] == "rate_limited"
        assert body["error"]["field"] == "Authorization"
        assert (await get_from("127.0.0.2", url, None))[0] == 429
        # Another address is still answered, and a configured token still works from the first.
        status, _, body = await get_from("127.0.0.3", url, "guess-5")
        assert (status, body["error"]["code"]) == (401, "unauthorized")
        assert (await get_from("127.0.0.2", url, TOKENS["viewer"]))[0] == 200
        metrics = h.daemon.metrics
        assert sample(metrics, "warnd_auth_failures_total", reason="unknown") == 4
        assert sample(metrics, "warnd_auth_throttled_total") == 2
        assert sample(metrics, "warnd_auth_slow_hashes_total") == 0
    finally:
        await h.close()


async def test_feed_push_with_an_old_hash_and_the_shared_budget(tmp_path: Path) -> None:
    """A push feed's old-form hash still accepts its token; wrong tokens there spend the same budget."""
    token = old_token()
    h = await feed_harness(
        tmp_path,
        [feed("cma", "push", token_hash=pbkdf2_hash(token, iterations=1000))],
        settings={"http": {"port": 0, "auth_failure_burst": 2}},
    )
    try:
        url = "/api/v1/feeds/cma/cap"
        for _ in range(2):  # past the token, the body is judged (not CAP: refused, but not 401)
            resp = await h.client.post(url, data=b"<x/>", headers=push_headers(token))
            assert resp.status not in (401, 429), await resp.text()
        metrics = h.daemon.metrics
        assert sample(metrics, "warnd_auth_slow_hashes_total") == 1
        wrong = await h.client.post(url, data=b"<x/>", headers=push_headers("wnd_nope"))
        assert (wrong.status, (await wrong.json())["error"]["code"]) == (401, "feed_unauthorized")
        # The API's failures count against the same address.
        assert (
            await h.client.get("/api/v1/warnings", headers={"Authorization": "Bearer nope"})
        ).status == 401
        refused = await h.client.post("/api/v1/feeds/nofeed/cap", data=b"<x/>", headers=push_headers(token))
        assert refused.status == 429
        assert (await refused.json())["error"]["field"] == "feed_token"
        assert sample(metrics, "warnd_auth_slow_hashes_total") == 1
    finally:
        await h.close()


# -- the commands --------------------------------------------------------------------------------


def test_rehash_turns_an_old_token_into_the_fast_form(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`warnd hash-token --rehash` reads the token from stdin; too short a token is refused."""
    token = old_token()
    monkeypatch.setattr("sys.stdin", io.StringIO(token + "\n"))
    assert cli.main(["hash-token", "--rehash"]) == 0
    assert capsys.readouterr().out.strip() == f'hash = "{hash_token(token)}"'
    monkeypatch.setattr("sys.stdin", io.StringIO("demo-operator-token\n"))
    assert cli.main(["hash-token", "--rehash"]) == 1
    assert "too short" in capsys.readouterr().err


def test_check_config_accepts_both_forms_and_names_the_old_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both forms pass check-config; the old ones are listed with the command that replaces them."""
    directory = write_directory(tmp_path / "directory.toml", villages=1)
    config = tmp_path / "warnd.toml"
    config.write_text(
        f'[directory]\npath = "{directory}"\n'
        f'[[auth.tokens]]\nname = "new"\nrole = "operator"\nhash = "{hash_token("wnd_x")}"\n'
        f'[[auth.tokens]]\nname = "old"\nrole = "admin"\nhash = "{pbkdf2_hash("wd_y")}"\n',
        encoding="utf-8",
    )
    assert cli.main(["check-config", "--config", str(config)]) == 0
    captured = capsys.readouterr()
    assert "2 API tokens" in captured.out
    assert "auth.tokens[1] (old)" in captured.err
    assert "auth.tokens[0]" not in captured.err
    assert "warnd hash-token --rehash" in captured.err


async def test_known_names_tokens_the_gate_knows_and_never_counts_a_failure() -> None:
    """API tokens and a feed's token once checked are known (for the rate limit); guesses are not."""
    api, feed_token = "wnd_" + secrets.token_urlsafe(32), "wnd_" + secrets.token_urlsafe(32)
    gate, metrics = gate_for(
        [TokenSettings(name="duty", role="operator", hash=hash_token(api))], RateLimiter(0.01, 1)
    )
    assert gate.known(f"Bearer {api}") == "duty"
    assert gate.known(f"Bearer {feed_token}") is None
    book = gate.book_for("feed:cma", hash_token(feed_token))
    assert await gate.check("192.0.2.1", f"Bearer {feed_token}", book) == Principal("feed:cma", "viewer")
    assert gate.known(f"bearer {feed_token}") == "feed:cma"
    for guess in ("Bearer wnd_" + secrets.token_urlsafe(32), "Basic abc", "", "Bearer "):
        assert gate.known(guess) is None
    assert sample(metrics, "warnd_auth_failures_total", reason="unknown") == 0
