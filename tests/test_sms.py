"""SMS through Twilio: one message each, receipts and replies by signed webhook, rate limits, errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from twilio.request_validator import RequestValidator

from adapters.providers.twilio import auth_token, classify
from adapters.sms import SmsAdapter
from tests.fakes.twilio import Answer
from tests.support import db
from tests.support.harness import warning_body
from tests.support.twilio_harness import FROM, deliveries, hook_url, twilio_harness
from warnd.adapter import AuthError, PermanentError, TransientError
from warnd.config import TwilioSettings

TOWNSHIP = {"codes": ["330502101"]}


async def test_200_recipients_receipts_and_20_replies(tmp_path: Path) -> None:
    """201 people get one SMS each; callbacks deliver them; 20 replies confirm exactly those 20."""
    # 100 villages, each with a secretary and a grid worker, and one township official: 201 people.
    directory = {"villages": 100, "test_village": False}
    async with twilio_harness(tmp_path, [SmsAdapter], directory=directory) as (h, fake):
        wid = await h.issue(warning_body(area=TOWNSHIP))
        await h.run_until_idle()
        rows = await deliveries(h, wid, "sms")
        assert len(rows) == 201
        sent = list(fake.messages.values())
        assert sorted(m["to"] for m in sent) == sorted(r["address"] for r in rows.values())  # one each
        assert all(r["state"] == "sent" and r["provider_ref"] in fake.messages for r in rows.values())
        by_to = {m["to"]: m for m in sent}
        # Secretaries must confirm (red: ack_roles), grid workers need not: only they are asked to.
        assert "回复1确认" in by_to[rows["sec-7"]["address"]]["body"]
        assert "回复1确认" not in by_to[rows["grid-7"]["address"]]["body"]
        assert all(int(m["num_segments"]) <= 3 for m in sent)
        assert fake.requests[0].form["StatusCallback"].startswith(hook_url(h, "/hooks/twilio/status?"))

        for m in sent:
            result = await fake.advance(m["sid"], "delivered")
            assert result is not None
            assert result.status == 200
        w = await h.get(wid)
        assert w["coverage"]["sms"]["delivered"] == 201

        inbound = hook_url(h, "/hooks/twilio/inbound")
        confirmers = [f"sec-{i}" for i in range(0, 100, 5)]
        for i, person in enumerate(confirmers):
            result = await fake.reply(rows[person]["address"], FROM, ["1", "收到", "１"][i % 3], inbound)
            assert result.status == 200
            assert "<Message>已确认收到" in result.text  # the one automatic answer
        # Saying it again gets no second answer: no reply storms.
        again = await fake.reply(rows["sec-0"]["address"], FROM, "1", inbound)
        assert again.status == 200
        assert "<Message>" not in again.text
        # A grid worker's "1" confirms nothing: none of their deliveries asked for it.
        grid = await fake.reply(rows["grid-3"]["address"], FROM, "1", inbound)
        assert "<Message>" in grid.text
        assert "已确认" not in grid.text
        # Free text is kept for the operator, and confirms nothing.
        question = await fake.reply(rows["sec-1"]["address"], FROM, "我村有老人需要转移，请派车", inbound)
        assert question.status == 200

        rows = await deliveries(h, wid, "sms")
        acked = sorted(t for t, r in rows.items() if r["state"] == "acknowledged")
        assert acked == sorted(confirmers)
        assert sum(r["state"] == "delivered" for r in rows.values()) == 181
        w = await h.get(wid)
        assert w["coverage"]["sms"]["acknowledged"] == 20

        resp = await h.client.get(f"/api/v1/warnings/{wid}/replies", headers=h.headers("viewer"))
        assert resp.status == 200
        replies = (await resp.json())["replies"]
        assert len(replies) == 23
        text = next(r for r in replies if r["body"].startswith("我村"))
        assert (text["person_id"], text["is_ack"], text["name"]) == ("sec-1", False, "书记1")
        assert sum(r["is_ack"] for r in replies) == 21  # 20 people, sec-0 twice
        assert sum(r["answered"] for r in replies) == 22  # once per person: 20 + grid-3 + sec-1
        assert (await h.client.get("/api/v1/replies")).status == 401


async def test_failed_delivery_is_retryable_or_dead_by_code(tmp_path: Path) -> None:
    """Undelivered 30003 (handset off) may be retried; 30005 (unknown number) is dead at once."""
    async with twilio_harness(tmp_path, [SmsAdapter]) as (h, fake):
        wid = await h.issue(warning_body())
        await h.run_until_idle()
        rows = await deliveries(h, wid, "sms")
        await fake.advance(rows["sec-0"]["provider_ref"], "undelivered", error_code=30003)
        await fake.advance(rows["grid-0"]["provider_ref"], "undelivered", error_code=30005)
        rows = await deliveries(h, wid, "sms")
        assert rows["sec-0"]["state"] == "failed"
        assert rows["grid-0"]["state"] == "dead"
        assert "30005" in rows["grid-0"]["last_error"]
        assert "unknown destination" in rows["grid-0"]["last_error"]


FORGERIES = ["unsigned", "wrong_signature", "wrong_token", "changed_body", "other_url"]


@pytest.mark.parametrize("forgery", FORGERIES)
async def test_forged_callbacks_are_refused_and_change_nothing(tmp_path: Path, forgery: str) -> None:
    """Unsigned, mis-signed or altered callbacks get 403; the delivery and replies stay as they were."""
    async with twilio_harness(tmp_path, [SmsAdapter]) as (h, fake):
        wid = await h.issue(warning_body())
        await h.run_until_idle()
        rows = await deliveries(h, wid, "sms")
        sid = rows["sec-0"]["provider_ref"]
        status_url = next(r.form["StatusCallback"] for r in fake.requests
                          if r.form.get("To") == rows["sec-0"]["address"])  # fmt: skip
        assert "t=sec-0" in status_url
        inbound_url = hook_url(h, "/hooks/twilio/inbound")
        status = {"MessageSid": sid, "MessageStatus": "delivered", "AccountSid": fake.account_sid}
        reply = {"MessageSid": "SM" + "1" * 32, "From": rows["sec-0"]["address"], "To": FROM,
                 "Body": "1", "AccountSid": fake.account_sid}  # fmt: skip
        results = []
        for url, params in ((status_url, status), (inbound_url, reply)):
            if forgery == "unsigned":
                results.append(await fake.post_unsigned(url, params))
            elif forgery == "wrong_signature":
                results.append(await fake.post_with_signature(url, params, "bm90IGEgc2lnbmF0dXJl"))
            elif forgery == "wrong_token":
                sig = RequestValidator("another-token").compute_signature(url, params)
                results.append(await fake.post_with_signature(url, params, sig))
            elif forgery == "changed_body":
                # A genuine callback replayed with its fields changed.
                sig = RequestValidator(fake.auth_token).compute_signature(url, params)
                changed = {**params, "MessageStatus": "read", "Body": "收到", "MessageSid": "SM" + "2" * 32}
                results.append(await fake.post_with_signature(url, changed, sig))
            else:
                # Signed for another delivery's callback URL, posted to this one.
                other = url.replace("t=sec-0", "t=grid-0") if "?" in url else url + "?x=1"
                sig = RequestValidator(fake.auth_token).compute_signature(other, params)
                results.append(await fake.post_with_signature(url, params, sig))
        assert [r.status for r in results] == [403, 403]
        rows = await deliveries(h, wid, "sms")
        assert {r["state"] for r in rows.values()} == {"sent"}
        assert await db.query(h.store, "SELECT * FROM inbound") == []
        assert await db.query(h.store, "SELECT * FROM acks") == []
        # The same requests, properly signed, are accepted: the endpoint is not refusing everything.
        assert (await fake.post_signed(status_url, status)).status == 200
        assert (await fake.post_signed(inbound_url, reply)).status == 200
        assert (await deliveries(h, wid, "sms"))["sec-0"]["state"] == "acknowledged"


async def test_429_with_retry_after_sends_each_once_within_the_rate(tmp_path: Path) -> None:
    """Twilio answering 429 for a while: retried after Retry-After, each sent once, never too fast."""
    directory = {"villages": 15, "test_village": False}
    limited = {"rate_per_s": 20}
    async with twilio_harness(tmp_path, [SmsAdapter], directory=directory, twilio=limited) as (h, fake):
        # Twilio's rate for this sender; burst 2 forgives a few ms of scheduling jitter, not a rate.
        fake.limit_rate(20, burst=2)
        fake.script([Answer(429, retry_after_s=30)] * 6)
        wid = await h.issue(warning_body(area=TOWNSHIP))
        await h.run_until_idle()
        rows = await deliveries(h, wid, "sms")
        failed = [t for t, r in rows.items() if r["state"] == "failed"]
        assert len(rows) == 31
        assert len(failed) == 6
        assert all("20429" in rows[t]["last_error"] for t in failed)
        assert len(fake.messages) == 25
        h.clock.advance(25)  # Retry-After said 30 s: not yet
        await h.run_until_idle()
        assert len(fake.messages) == 25
        h.clock.advance(10)
        await h.run_until_idle()
        rows = await deliveries(h, wid, "sms")
        assert {r["state"] for r in rows.values()} == {"sent"}
        assert sorted(m["to"] for m in fake.messages.values()) == sorted(r["address"] for r in rows.values())
        assert fake.too_fast == 0  # warnd's own limiter kept to the rate Twilio allows
        creates = [r for r in fake.requests if r.method == "POST"]
        assert len(creates) == 37  # 31 + 6 refused, nothing more


async def test_permanent_errors_are_dead_at_once_with_the_reason(tmp_path: Path) -> None:
    """21211 invalid number and 21610 unsubscribed: dead after one attempt, reason given, no retry."""
    async with twilio_harness(tmp_path, [SmsAdapter]) as (h, fake):
        fake.script(
            [
                Answer(400, code=21211, message="The 'To' number +8613900000000 is not valid."),
                Answer(400, code=21610, message="Attempt to send to unsubscribed recipient"),
            ]
        )
        wid = await h.issue(warning_body())
        await h.run_until_idle()
        rows = await deliveries(h, wid, "sms")
        dead = {t: r for t, r in rows.items() if r["state"] == "dead"}
        assert len(dead) == 2
        assert all(r["attempts"] == 1 for r in dead.values())
        reasons = sorted(r["last_error"] for r in dead.values())
        assert "21211" in reasons[0]
        assert "invalid" in reasons[0]
        assert "21610" in reasons[1]
        assert "unsubscribed" in reasons[1]
        assert not any("+86139" in r for r in reasons)  # the vendor's text names the number
        h.clock.advance(3600)
        await h.run_until_idle()
        assert len([r for r in fake.requests if r.method == "POST"]) == 3


def test_classify_status_table() -> None:
    """2xx ok, 429/5xx transient with Retry-After, 401/403 auth, other 4xx permanent, codes first."""
    assert classify(201, {}) is None
    err = classify(429, {"code": 20429}, 7.0)
    assert isinstance(err, TransientError)
    assert err.retry_after_s == 7.0
    assert isinstance(classify(503, "Service Unavailable"), TransientError)
    assert isinstance(classify(401, {"code": 20003}), AuthError)
    assert isinstance(classify(403, {"code": 99999}), AuthError)
    assert type(classify(404, {"code": 20404})) is PermanentError
    assert type(classify(400, {"code": 21614})) is PermanentError
    # A vendor code overrides the status: an invalid From is the operator's config, not the person.
    assert isinstance(classify(400, {"code": 21212}), AuthError)
    leaked = classify(400, {"code": 12345, "message": "number +8613800000001 refused"})
    assert "+8613800000001" not in str(leaked)
    assert "refused" in str(leaked)


def test_auth_token_from_systemd_credentials(tmp_path: Path) -> None:
    """Without [twilio] auth_token, the token comes from $CREDENTIALS_DIRECTORY."""
    (tmp_path / "warnd_twilio_auth_token").write_text("s3cret\n", encoding="utf-8")
    tw = TwilioSettings(account_sid="AC1", from_number=FROM)
    assert auth_token(tw, {"CREDENTIALS_DIRECTORY": str(tmp_path)}) == "s3cret"
    assert auth_token(tw, {}) is None
    assert auth_token(TwilioSettings(auth_token="x"), {}) == "x"


async def test_logs_never_carry_numbers_tokens_or_bodies(tmp_path: Path, log_events: list) -> None:
    """Sends, callbacks and replies log masked numbers and body lengths, never the secrets."""
    async with twilio_harness(tmp_path, [SmsAdapter]) as (h, fake):
        wid = await h.issue(warning_body())
        await h.run_until_idle()
        rows = await deliveries(h, wid, "sms")
        url = hook_url(h, "/hooks/twilio/inbound")
        await fake.reply(rows["sec-0"]["address"], FROM, "收到，马上转移", url)
        text = repr([e for e in log_events if e["log_level"] != "debug"])
        assert fake.auth_token not in text
        assert not re.search(r"\+86\d{11}", text)
        assert "马上转移" not in text
        assert "暴雨红色预警" not in text
