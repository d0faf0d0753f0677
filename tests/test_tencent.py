"""SMS through Tencent Cloud with the official SDK pointed at a loopback fake: batches of at most 200,
receipts and replies by callback and by pull, and fallback between Aliyun and Tencent."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException

from adapters.providers import aliyun, tencent
from tests.support import db
from tests.support.china_harness import SIGN, TOKEN, TOWNSHIP, china_harness
from tests.support.harness import Harness, warning_body
from tests.support.twilio_harness import deliveries, hook_url
from warnd.adapter import AuthError, PermanentError, TransientError


async def providers_of(h: Harness) -> dict[str, str]:
    """Which provider sent each delivery, by target."""
    rows = await db.query(h.store, "SELECT target, provider FROM deliveries")
    return {r["target"]: r["provider"] for r in rows}


async def test_red_warning_to_2000_people_through_tencent(tmp_path: Path) -> None:
    """2,000 people: SendSms calls of at most 200, each number once; callbacks deliver; 1/收到 confirm."""
    only = ("tencent",)
    async with china_harness(tmp_path, villages=500, officials=1000, providers=only) as (h, _, fake, _):
        wid = await h.issue(warning_body(area=TOWNSHIP))
        await h.run_until_idle()
        rows = await deliveries(h, wid, "sms")
        assert len(rows) == 2000
        sends = [c for c in fake.calls if c["action"] == "SendSms"]
        assert max(len(c["PhoneNumberSet"]) for c in sends) <= 200
        assert len(sends) == 11  # 1,500 asked to confirm and 500 not, in calls of 200: 8 + 3
        got = Counter(s.phone for s in fake.sends)
        assert sorted(got) == sorted(r["address"] for r in rows.values())
        assert set(got.values()) == {1}
        sec = fake.received(rows["sec-7"]["address"])[0]
        assert sec.template == "100002"
        assert sec.content.startswith(f"【{SIGN}】")
        assert all(len(v) <= 12 for v in sec.params)
        stored = await db.query(h.store, "SELECT provider FROM deliveries WHERE channel = 'sms'")
        assert {r["provider"] for r in stored} == {"tencent"}

        assert await fake.push_reports(hook_url(h, f"/hooks/tencent/{TOKEN}/sms/report")) == 200
        rows = await deliveries(h, wid, "sms")
        assert {r["state"] for r in rows.values()} == {"delivered"}
        reply = hook_url(h, f"/hooks/tencent/{TOKEN}/sms/reply")
        confirmers = [f"sec-{i}" for i in range(0, 500, 50)]
        for n, person in enumerate(confirmers):
            assert await fake.push_reply(reply, rows[person]["address"], ["1", "收到"][n % 2]) == 200
        rows = await deliveries(h, wid, "sms")
        assert sorted(t for t, r in rows.items() if r["state"] == "acknowledged") == sorted(confirmers)
        assert (await h.client.post("/hooks/tencent/wrong/sms/reply", json=[])).status == 403


async def test_receipts_and_replies_by_pull(tmp_path: Path) -> None:
    """No callback token: PullSmsSendStatus and PullSmsReplyStatus move the deliveries."""
    async with china_harness(tmp_path, push=False, providers=("tencent",)) as (h, _, fake, _):
        sms = h.daemon.adapters["sms"]
        loops = sms.background()
        assert [name for name, _ in loops] == ["warnd.tencent.sms.poll"]
        for _, loop in loops:
            loop.close()  # not run: the test pulls by hand
        wid = await h.issue(warning_body())
        await h.run_until_idle()
        rows = await deliveries(h, wid, "sms")
        fake.deliver_all()
        fake.reply_waiting(rows["sec-0"]["address"], "收到")
        assert await sms.poll_once() == len(rows) + 1
        assert await sms.poll_once() == 0  # each status and reply is handed out once
        rows = await deliveries(h, wid, "sms")
        assert rows["sec-0"]["state"] == "acknowledged"
        assert {r["state"] for t, r in rows.items() if t != "sec-0"} == {"delivered"}


async def test_aliyun_flow_control_falls_back_to_tencent(
    tmp_path: Path, log_events: list[dict[str, Any]]
) -> None:
    """Aliyun answers isv.BUSINESS_LIMIT_CONTROL: Tencent sends those, each says who; nobody gets two."""
    order = ("aliyun", "tencent")
    async with china_harness(tmp_path, villages=5, providers=order) as (h, aliyun, tencent, _):
        aliyun.limit_numbers({"13700000002"})  # grid-2: the grid workers' call is refused whole
        wid = await h.issue(warning_body(area=TOWNSHIP))
        await h.run_until_idle()
        rows = await deliveries(h, wid, "sms")
        by_aliyun = {"+86" + s.phone for s in aliyun.sends}
        by_tencent = {s.phone for s in tencent.sends}
        assert by_aliyun.isdisjoint(by_tencent)
        assert by_aliyun | by_tencent == {r["address"] for r in rows.values()}
        assert "+8613700000002" in by_tencent
        assert {r["address"] for t, r in rows.items() if t.startswith("grid-")} == by_tencent
        stored = await providers_of(h)
        assert all(
            stored[t] == ("tencent" if r["address"] in by_tencent else "aliyun") for t, r in rows.items()
        )
        assert {r["state"] for r in rows.values()} == {"sent"}
        assert "tencent-secret-never-logged" not in repr(log_events)


async def test_a_number_over_its_tencent_limit_alone_goes_to_the_next_provider(tmp_path: Path) -> None:
    """Tencent answers per number: only the limited number moves on (to Aliyun)."""
    order = ("tencent", "aliyun")
    async with china_harness(tmp_path, villages=5, providers=order) as (h, aliyun, tencent, _):
        tencent.limit_numbers({"+8613900000003"})  # sec-3
        wid = await h.issue(warning_body(area=TOWNSHIP))
        await h.run_until_idle()
        rows = await deliveries(h, wid, "sms")
        assert ["+86" + s.phone for s in aliyun.sends] == ["+8613900000003"]
        assert len(tencent.sends) == len(rows) - 1
        stored = await providers_of(h)
        assert stored["sec-3"] == "aliyun"
        assert Counter(stored.values()) == {"tencent": len(rows) - 1, "aliyun": 1}


async def test_voice_message_key_1_confirms(tmp_path: Path) -> None:
    """叫应 through Tencent VMS: key 1 confirms; answered without a key, or not answered, fails."""
    async with china_harness(tmp_path, officials=3, voice=("tencent",)) as (h, _, fake, _):
        wid = await h.issue(warning_body())
        await h.run_until_idle()
        rows = await deliveries(h, wid, "voice")
        assert sorted(rows) == ["off-0", "off-1", "off-2"]
        call = {c["CalledNumber"]: c for c in fake.placed}
        assert {c["TemplateId"] for c in fake.placed} == {"300002"}  # the template with the key prompt
        url = hook_url(h, f"/hooks/tencent/{TOKEN}/voice")
        first, second, third = (call[rows[f"off-{k}"]["address"]] for k in range(3))
        assert await fake.push_key(url, first, "1") == 200
        assert await fake.push_call_end(url, first, "0") == 200  # the end after the key changes nothing
        assert await fake.push_call_end(url, second, "0") == 200
        assert await fake.push_call_end(url, third, "1") == 200
        rows = await deliveries(h, wid, "voice")
        assert [rows[f"off-{k}"]["state"] for k in range(3)] == ["acknowledged", "failed", "failed"]
        assert "without key 1" in rows["off-1"]["last_error"]
        assert "not answered" in rows["off-2"]["last_error"]


async def test_the_local_daily_quota_hands_lesser_messages_on_never_a_red_warning(tmp_path: Path) -> None:
    """A number at its Aliyun quota: a blue warning goes through Tencent, a red one still through Aliyun."""
    order = ("aliyun", "tencent")
    async with china_harness(tmp_path, villages=1, providers=order) as (h, aliyun, tencent, _):
        h.settings.aliyun.daily_quota = 1
        await h.issue(warning_body(level="blue", headline="蓝色预警一"))
        await h.run_until_idle()
        assert len(tencent.sends) == 0
        second = await h.issue(warning_body(level="blue", headline="蓝色预警二", event="大风"))
        await h.run_until_idle()
        rows = await deliveries(h, second, "sms")
        assert {s.phone for s in tencent.sends} == {r["address"] for r in rows.values()}
        red = await h.issue(warning_body(level="red", headline="红色预警", event="山洪"))
        await h.run_until_idle()
        rows = await deliveries(h, red, "sms")
        stored = await providers_of(h)
        assert {stored[t] for t in rows} == {"aliyun"}
        assert {"+86" + s.phone for s in aliyun.sends if "山洪" in s.content} == {
            r["address"] for r in rows.values()
        }


async def test_a_timeout_after_tencent_accepted_is_found_by_session_context(tmp_path: Path) -> None:
    """Tencent took the batch but answered late: once its receipts are in, the retry finds each
    message by our SessionContext (PullSmsSendStatusByPhoneNumber) and sends nothing again."""
    only = ("tencent",)
    async with china_harness(tmp_path, providers=only, dispatch={"send_timeout_s": 1.5}) as (h, _, fake, _):
        fake.stall_s.append(3.0)
        wid = await h.issue(warning_body())
        await h.run_until_idle()
        rows = await deliveries(h, wid, "sms")
        assert {r["state"] for r in rows.values()} == {"failed"}
        sent = len(fake.sends)
        assert sent == len(rows)
        fake.deliver_all()  # the carriers report: Tencent now lists them by number
        h.clock.advance(3600)
        await h.run_until_idle()
        rows = await deliveries(h, wid, "sms")
        assert {r["state"] for r in rows.values()} == {"delivered"}
        assert len(fake.sends) == sent
        looked_up = [c for c in fake.calls if c["action"] == "PullSmsSendStatusByPhoneNumber"]
        assert len(looked_up) == len(rows)


def test_vendor_codes_map_to_transient_permanent_or_auth() -> None:
    """Each provider's codes, mapped on purpose; a refused connection is not a send in doubt, a timeout is."""
    assert type(aliyun.vendor_error("isv.BUSINESS_LIMIT_CONTROL")) is TransientError
    assert type(aliyun.vendor_error("isv.MOBILE_NUMBER_ILLEGAL")) is PermanentError
    assert type(aliyun.vendor_error("isv.AMOUNT_NOT_ENOUGH")) is AuthError
    assert type(aliyun.vendor_error("Unknown.Code", "busy", 503)) is TransientError
    leaked = aliyun.vendor_error("Unknown.Code", "number 13800000001 refused", 400)
    assert type(leaked) is PermanentError
    assert "13800000001" not in str(leaked)
    assert type(tencent.vendor_error("LimitExceeded.PhoneNumberDailyLimit")) is TransientError
    assert type(tencent.vendor_error("InvalidParameterValue.IncorrectPhoneNumber")) is PermanentError
    assert type(tencent.vendor_error("AuthFailure.SecretIdNotFound")) is AuthError
    refused = tencent.sdk_error(
        TencentCloudSDKException("ClientNetworkError", "Failed to establish a new connection")
    )
    timeout = tencent.sdk_error(TencentCloudSDKException("ClientNetworkError", "Read timed out."))
    assert isinstance(refused, TransientError) and not refused.maybe_sent
    assert isinstance(timeout, TransientError) and timeout.maybe_sent
