"""Security: salted token hashes, credentials, rate limits, the append-only audit log, masked phones."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import sqlite3
from pathlib import Path

import pytest
import structlog

from tests.support.harness import TOKENS, Harness, warning_body
from warnd import cli
from warnd import log as warnd_log
from warnd.api.auth import Principal, TokenBook
from warnd.api.ratelimit import RateLimiter
from warnd.config import ConfigError, Settings, TokenSettings, load_settings
from warnd.credentials import CredentialsSource
from warnd.log import mask_phones
from warnd.tokenhash import hash_token, pbkdf2_hash, verify_token

# -- token hashes (the gate in front of them: tests/test_auth.py) ----------------------------------


def test_hash_forms_verify_their_token_and_nothing_else() -> None:
    """The fast form and the old salted form each accept their token only; other forms nothing."""
    fast = hash_token("wd_secret")
    assert fast == "sha256:" + hashlib.sha256(b"wd_secret").hexdigest()
    assert verify_token("wd_secret", fast)
    assert not verify_token("wd_secreT", fast)
    a, b = pbkdf2_hash("wd_secret", iterations=1000), pbkdf2_hash("wd_secret", iterations=1000)
    assert a != b
    assert a.startswith("pbkdf2_sha256$1000$")
    assert verify_token("wd_secret", a)
    assert verify_token("wd_secret", b)
    assert not verify_token("wd_secreT", a)
    assert not verify_token("", a)
    assert not verify_token("wd_secret", "md5:abc")


def test_config_accepts_both_forms_and_names_a_bad_one() -> None:
    """The validator takes the fast and the salted form; anything else is an error by key."""
    TokenSettings(name="a", role="viewer", hash=hash_token("x"))
    TokenSettings(name="a", role="viewer", hash=pbkdf2_hash("x", iterations=1000))
    with pytest.raises(ValueError, match="sha256"):
        TokenSettings(name="a", role="viewer", hash="sha256:abc")
    with pytest.raises(ValueError, match="iterations"):
        TokenSettings(name="a", role="viewer", hash=pbkdf2_hash("x", iterations=10))


def test_token_book_finds_the_role() -> None:
    """A presented token maps to its entry; an old-form entry is not found without its slow check."""
    book = TokenBook(
        [
            TokenSettings(name="duty", role="operator", hash=hash_token("t-op")),
            TokenSettings(name="old", role="viewer", hash=pbkdf2_hash("t-view", iterations=1000)),
        ]
    )
    assert book.lookup("t-op") == book.lookup("t-op")
    assert book.lookup("t-op").name == "duty"  # type: ignore[union-attr]
    assert book.lookup("t-view") is None
    assert book.verify_slowly("t-view") == Principal("old", "viewer")
    assert book.lookup("t-admin") is None


def test_hash_token_command_prints_the_fast_form(capsys: pytest.CaptureFixture[str]) -> None:
    """`warnd hash-token` prints a new-style token and the sha256 form of exactly that token."""
    assert cli.main(["hash-token"]) == 0
    out = capsys.readouterr().out
    token = out.split("token: ")[1].split()[0]
    stored = out.split('hash = "')[1].split('"')[0]
    assert token.startswith("wnd_") and len(token) == 4 + 43
    assert stored == hash_token(token)
    TokenSettings(name="new", role="admin", hash=stored)


# -- credentials --------------------------------------------------------------------------------


def _config(tmp_path: Path, body: str) -> Path:
    """A warnd.toml in tmp_path."""
    path = tmp_path / "warnd.toml"
    path.write_text(body, encoding="utf-8")
    return path


def test_credentials_fill_secrets_and_add_tokens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """warnd_twilio_auth_token and warnd_mqtt_password set those keys; token hashes add to the file's."""
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "warnd_twilio_auth_token").write_text("tw-secret-from-creds\n")
    (creds / "warnd_mqtt_password").write_text("mqtt-pw")
    (creds / "warnd_wecom_secret").write_text("wc-secret")
    (creds / "warnd_ack_link_secret").write_text("a" * 40)
    (creds / "warnd_api_token_hashes").write_text(
        f'[[tokens]]\nname = "from-creds"\nrole = "admin"\nhash = "{hash_token("c")}"\n'
    )
    path = _config(
        tmp_path,
        '[twilio]\nauth_token = "in-file"\n[[auth.tokens]]\nname = "from-file"\nrole = "viewer"\n'
        f'hash = "{pbkdf2_hash("f", iterations=1000)}"\n',
    )
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    s = load_settings(path)
    assert s.twilio.auth_token == "tw-secret-from-creds"
    assert s.mqtt.password == "mqtt-pw"
    assert s.wecom.secret == "wc-secret"
    assert s.ack_links.secret == "a" * 40
    assert [(t.name, t.role) for t in s.auth.tokens] == [("from-file", "viewer"), ("from-creds", "admin")]
    # The environment still wins over credentials.
    monkeypatch.setenv("WARND_TWILIO__AUTH_TOKEN", "from-env")
    assert load_settings(path).twilio.auth_token == "from-env"


def test_unknown_or_bad_credentials_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A credential matching no key, or a bad token hash in one, is a config error by name."""
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "warnd_twilio_auth_tokn").write_text("typo")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    with pytest.raises(ConfigError) as exc:
        load_settings(_config(tmp_path, ""))
    assert exc.value.problems[0][0] == "credential warnd_twilio_auth_tokn"
    (creds / "warnd_twilio_auth_tokn").unlink()
    (creds / "warnd_api_token_hashes").write_text('[[tokens]]\nname = "x"\nrole = "admin"\nhash = "nope"\n')
    with pytest.raises(ConfigError) as exc:
        load_settings(_config(tmp_path, ""))
    assert exc.value.problems[0][0] == "auth.tokens[0].hash"
    # A CREDENTIALS_DIRECTORY that is not a readable directory is named too.
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds / "warnd_api_token_hashes"))
    with pytest.raises(ConfigError) as exc:
        load_settings(_config(tmp_path, ""))
    assert exc.value.problems[0][0] == "$CREDENTIALS_DIRECTORY"


def test_no_credentials_directory_reads_nothing(tmp_path: Path) -> None:
    """Outside systemd the source is empty."""
    source = CredentialsSource(Settings, lambda: {}, environ={})  # type: ignore[arg-type]
    assert source() == {}


# -- rate limits --------------------------------------------------------------------------------


def test_token_bucket_refills_at_its_rate() -> None:
    """Burst, then one per 1/rate seconds; addresses are separate."""
    rl = RateLimiter(rate_per_s=2, burst=3)
    assert [rl.take("a", 0.0) for _ in range(3)] == [0, 0, 0]
    assert rl.take("a", 0.0) == pytest.approx(0.5)
    assert rl.take("b", 0.0) == 0
    assert rl.take("a", 0.5) == 0
    assert rl.take("a", 0.5) > 0


def test_forgets_the_least_recent_address() -> None:
    """Memory is bounded: past max_clients the oldest bucket goes (and starts full again)."""
    rl = RateLimiter(rate_per_s=1, burst=1, max_clients=2)
    rl.take("a", 0)
    rl.take("b", 0)
    rl.take("c", 0)
    assert rl.take("a", 0) == 0
    assert rl.take("c", 0) > 0


async def test_api_answers_429_with_retry_after(tmp_path: Path) -> None:
    """Past the burst the API says 429 in the error shape with Retry-After; health is not limited."""
    h = await Harness(
        tmp_path,
        channels=["led"],
        settings={"http": {"port": 0, "rate_limit_per_s": 0.5, "rate_limit_burst": 3,
                           "token_rate_limit_per_s": 0.5, "token_rate_limit_burst": 3}},
    ).start()  # fmt: skip
    try:
        statuses = [
            (await h.client.get("/api/v1/warnings", headers=h.headers("viewer"))).status for _ in range(3)
        ]
        assert statuses == [200, 200, 200]
        resp = await h.client.get("/api/v1/warnings", headers=h.headers("viewer"))
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "2"
        body = await resp.json()
        assert body["error"]["code"] == "rate_limited"
        # Requests without a known token spend the address's own bucket: guessing is limited too.
        anonymous = [(await h.client.get("/api/v1/warnings")).status for _ in range(4)]
        assert anonymous == [401, 401, 401, 429]
        # Nor does a guessed token count as known.
        guess = {"Authorization": "Bearer wnd_" + "x" * 43}
        assert (await h.client.get("/api/v1/warnings", headers=guess)).status == 429
        assert (await h.client.get("/healthz")).status == 200
        assert (await h.client.get("/metrics")).status == 200
    finally:
        await h.close()


async def test_an_upstream_posting_50_per_second_is_not_throttled_like_an_anonymous_client(
    tmp_path: Path,
) -> None:
    """Shipped limits: 200 requests at once with a known token all pass; anonymous ones stop at 60."""
    h = await Harness(tmp_path, channels=["led"], settings={"http": {"port": 0}}).start()
    try:
        assert h.settings.http.rate_limit_per_s == 10 and h.settings.http.rate_limit_burst == 60
        operator = await asyncio.gather(
            *(h.client.get("/api/v1/warnings", headers=h.headers("operator")) for _ in range(200))
        )
        assert [r.status for r in operator] == [200] * 200
        anonymous = await asyncio.gather(*(h.client.get("/api/v1/openapi.json") for _ in range(200)))
        statuses = [r.status for r in anonymous]
        # 60 at once, plus what 10/s refills while they are answered.
        assert statuses.count(200) >= 60 and statuses.count(429) >= 100, statuses.count(200)
        # The token's bucket is its own: the operator still gets in from the throttled address.
        assert (await h.client.get("/api/v1/warnings", headers=h.headers("operator"))).status == 200
    finally:
        await h.close()


async def test_ack_links_have_their_own_limit(tmp_path: Path) -> None:
    """/ack/ is limited separately from the API."""
    h = await Harness(
        tmp_path,
        channels=["led"],
        settings={"http": {"port": 0, "ack_rate_limit_per_s": 0.1, "ack_rate_limit_burst": 2}},
    ).start()
    try:
        first = [(await h.client.get("/ack/guess-1")).status for _ in range(2)]
        assert 429 not in first
        resp = await h.client.get("/ack/guess-2")
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "10"
        assert (await h.client.get("/api/v1/warnings", headers=h.headers("viewer"))).status == 200
    finally:
        await h.close()


# -- audit --------------------------------------------------------------------------------------


async def test_audit_log_names_who_did_what_from_where(tmp_path: Path) -> None:
    """Issue and cancel show up with actor and address; approver and admin may read, operator not."""
    approver = "approver-token"
    h = await Harness(
        tmp_path,
        channels=["led"],
        settings={
            "auth": {
                "tokens": [
                    {
                        "name": "duty",
                        "role": "operator",
                        "hash": hash_token(TOKENS["operator"]),
                    },
                    {"name": "chief", "role": "approver", "hash": hash_token(approver)},
                    {"name": "root", "role": "admin", "hash": hash_token(TOKENS["admin"])},
                ]
            }
        },
    ).start()
    try:
        wid = await h.issue(warning_body())
        resp = await h.client.post(
            f"/api/v1/warnings/{wid}/cancel", json={"reason": "雨停"}, headers=h.headers()
        )
        assert resp.status == 202
        assert (await h.client.get("/api/v1/audit", headers=h.headers("operator"))).status == 403
        resp = await h.client.get("/api/v1/audit", headers={"Authorization": f"Bearer {approver}"})
        assert resp.status == 200
        events = (await resp.json())["events"]
        assert [(e["action"], e["actor"], e["warning_id"]) for e in events] == [
            ("cancel", "duty", wid),
            ("issue", "duty", wid),
        ]
        assert events[0]["remote"] == "127.0.0.1"
        assert events[0]["detail"] == {"reason": "雨停"}
        one = await h.client.get(f"/api/v1/audit?warning_id={wid}&limit=1", headers=h.headers("admin"))
        assert [e["action"] for e in (await one.json())["events"]] == ["issue"]
        bad = await h.client.get("/api/v1/audit?limit=0", headers=h.headers("admin"))
        assert bad.status == 400
        assert (await bad.json())["error"]["field"] == "limit"
    finally:
        await h.close()


@pytest.mark.sqlite_only  # PostgreSQL's trigger: tests/test_postgres_schema.py
async def test_audit_rows_cannot_be_changed_or_deleted(harness: Harness) -> None:
    """SQLite itself refuses UPDATE and DELETE on audit rows, even from another connection."""
    await harness.issue(warning_body())
    db = sqlite3.connect(harness.store.path)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("UPDATE audit SET actor = 'someone-else'")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("DELETE FROM audit")
        db.execute(
            "INSERT INTO audit (at, actor, action) VALUES ('2026-01-01T00:00:00.000000Z', 'x', 'note')"
        )
        db.commit()
        assert db.execute("SELECT COUNT(*) FROM audit").fetchone()[0] == 2
    finally:
        db.close()


# -- log hygiene --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("+8613800000001", "+86138****0001"),
        ("to +14155550123.", "to +141****0123."),
        ("uk +447911123456", "uk +4479****3456"),
        ("hk +85291234567", "hk +852****4567"),
        ("ie +353861234567", "ie +3538****4567"),
        ("at 2026-07-01T08:00:00+08:00", "at 2026-07-01T08:00:00+08:00"),
    ],
)
def test_mask_phones_handles_1_2_and_3_digit_country_codes(text: str, masked: str) -> None:
    """Every number is masked where its country code ends; times with offsets are left alone."""
    assert mask_phones(text) == masked


def test_configured_logging_masks_phones_in_nested_fields() -> None:
    """The production logger masks numbers in strings, lists and dicts of an event."""
    stream = io.StringIO()
    saved = structlog.get_config()
    try:
        warnd_log.configure("info", stream=stream)
        structlog.get_logger("t").info(
            "delivery.sent", target="+8613800000001", targets=["+14155550123"], detail={"to": "+447911123456"}
        )
    finally:
        structlog.configure(**saved)
    line = stream.getvalue()
    event = json.loads(line)
    assert event["target"] == "+86138****0001"
    assert event["targets"] == ["+141****0123"]
    assert event["detail"] == {"to": "+4479****3456"}
    for full in ("13800000001", "4155550123", "7911123456"):
        assert full not in line
