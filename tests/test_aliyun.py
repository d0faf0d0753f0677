"""SMS through Aliyun (dysmsapi) with the official SDK pointed at a loopback fake: batches of at most
1,000 numbers, receipts by push and by pull, replies, fallback to the next provider, reconciliation
by our OutId, and the template registry's rules in `warnd check-config`."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.support import db
from tests.support.china_harness import SIGN, TOKEN, TOWNSHIP, china_harness
from tests.support.county import write_directory
from tests.support.harness import warning_body
from tests.support.twilio_harness import deliveries, hook_url
from warnd.cli import check_config
from warnd.config import ConfigError, load_settings


def national(e164: str) -> str:
    """+8613900000001 → 13900000001, as Aliyun writes numbers."""
    return e164.removeprefix("+86")


async def test_red_warning_to_2000_people_batches_receipts_and_replies(tmp_path: Path) -> None:
    """2,000 people: SendSms calls of at most 1,000 numbers, each number once; pushed receipts
    deliver them; replies 1 and 收到 confirm exactly those who sent them."""
    # 500 villages (a secretary and a grid worker each) and 1,000 officials.
    async with china_harness(tmp_path, villages=500, officials=1000) as (h, fake, _, _):
        wid = await h.issue(warning_body(area=TOWNSHIP))
        await h.run_until_idle()
        rows = await deliveries(h, wid, "sms")
        assert len(rows) == 2000
        sends = [c for c in fake.calls if c["action"] == "SendSms"]
        sizes = sorted(len(c["PhoneNumbers"].split(",")) for c in sends)
        assert max(sizes) <= 1000
        assert sum(sizes) == 2000
        assert len(sends) == 3  # 1,500 asked to confirm (two calls), 500 grid workers (one)
        got = Counter(s.phone for s in fake.sends)
        assert sorted(got) == sorted(national(r["address"]) for r in rows.values())
        assert set(got.values()) == {1}
        assert {r["state"] for r in rows.values()} == {"sent"}
        stored = await db.query(h.store, "SELECT provider FROM deliveries WHERE channel = 'sms'")
        assert {r["provider"] for r in stored} == {"aliyun"}
        # The ack template goes to those asked to confirm, the plain one to grid workers.
        sec = fake.received(national(rows["sec-7"]["address"]))[0]
        grid = fake.received(national(rows["grid-7"]["address"]))[0]
        assert (sec.template, grid.template) == ("SMS_100002", "SMS_100001")
        assert sec.content.startswith(f"【{SIGN}】") and "收到请回复1" in sec.content
        assert "http" not in sec.params["headline"] and all(len(v) <= 35 for v in sec.params.values())

        report = hook_url(h, f"/hooks/aliyun/{TOKEN}/sms/report")
        assert await fake.push_reports(report) == 200
        # Aliyun pushes again when in doubt: a duplicate batch changes nothing.
        for s in fake.sends[:50]:
            s.reported = False
        assert await fake.push_reports(report) == 200
        rows = await deliveries(h, wid, "sms")
        assert {r["state"] for r in rows.values()} == {"delivered"}

        reply = hook_url(h, f"/hooks/aliyun/{TOKEN}/sms/reply")
        confirmers = [f"sec-{i}" for i in range(0, 500, 50)]
        for n, person in enumerate(confirmers):
            text = ["1", "收到"][n % 2]
            assert await fake.push_reply(reply, national(rows[person]["address"]), text, n) == 200
        # The same reply pushed twice is one reply.
        assert await fake.push_reply(reply, national(rows["sec-0"]["address"]), "1", 0) == 200
        rows = await deliveries(h, wid, "sms")
        assert sorted(t for t, r in rows.items() if r["state"] == "acknowledged") == sorted(confirmers)
        assert len(await db.query(h.store, "SELECT * FROM inbound")) == len(confirmers)


async def test_pushes_without_the_token_are_refused(tmp_path: Path) -> None:
    """Aliyun does not sign its push: a wrong token in the path is 403 and changes nothing."""
    async with china_harness(tmp_path) as (h, fake, _, _):
        wid = await h.issue(warning_body())
        await h.run_until_idle()
        assert await fake.push_reports(hook_url(h, "/hooks/aliyun/guess/sms/report")) == 403
        rows = await deliveries(h, wid, "sms")
        assert {r["state"] for r in rows.values()} == {"sent"}


async def test_receipts_by_pull_behind_nat(tmp_path: Path) -> None:
    """No callback token: no push routes; QuerySendDetails moves the deliveries."""
    async with china_harness(tmp_path, push=False) as (h, fake, _, _):
        sms = h.daemon.adapters["sms"]
        loops = sms.background()
        assert [name for name, _ in loops] == ["warnd.aliyun.sms.poll"]
        for _, loop in loops:
            loop.close()  # not run: the test pulls by hand
        assert (await h.client.post(f"/hooks/aliyun/{TOKEN}/sms/report", json=[])).status == 404
        wid = await h.issue(warning_body())
        await h.run_until_idle()
        rows = await deliveries(h, wid, "sms")
        assert await sms.poll_once() == 0  # the carriers have not reported yet
        fake.deliver_all()
        fake.sends[0].status, fake.sends[0].err_code = 2, "MK:0001"  # 空号
        assert await sms.poll_once() == len(rows)
        rows = await deliveries(h, wid, "sms")
        states = Counter(r["state"] for r in rows.values())
        assert states == {"delivered": len(rows) - 1, "dead": 1}


async def test_business_limit_control_falls_back_to_the_next_provider(
    tmp_path: Path, log_events: list
) -> None:
    """Aliyun refuses the calls with limited numbers: Twilio sends those, the delivery says so."""
    async with china_harness(tmp_path, villages=3, providers=("aliyun", "twilio")) as (h, fake, _, twilio):
        limited = national("+8613700000001")  # grid-1
        fake.limit_numbers({limited})
        wid = await h.issue(warning_body(area=TOWNSHIP))
        await h.run_until_idle()
        rows = await deliveries(h, wid, "sms")
        stored = {r["target"]: r for r in await db.query(h.store, "SELECT target, provider FROM deliveries")}
        by_twilio = {m["to"] for m in twilio.messages.values()}
        by_aliyun = {"+86" + s.phone for s in fake.sends}
        # Every number once, over both providers.
        assert by_twilio.isdisjoint(by_aliyun)
        assert by_twilio | by_aliyun == {r["address"] for r in rows.values()}
        assert "+8613700000001" in by_twilio  # the call with it was refused whole, so all of it moved
        for target, r in rows.items():
            assert r["state"] == "sent"
            assert stored[target]["provider"] == ("twilio" if r["address"] in by_twilio else "aliyun")
        assert any(e["event"] == "provider.fallback" for e in log_events)
        assert "aliyun-secret-never-logged" not in repr(log_events)


async def test_a_timeout_after_aliyun_accepted_is_reconciled_not_resent(tmp_path: Path) -> None:
    """One call is taken but its answer is late, the other refused: the batch times out, a send in
    doubt. On the retry the taken numbers are found by OutId and not sent again; the rest are sent."""
    async with china_harness(tmp_path, villages=3, dispatch={"send_timeout_s": 1.5}) as (h, fake, _, _):
        fake.stall_next_send(3.0)
        fake.refuse_next_send(503, "ServiceUnavailable")
        wid = await h.issue(warning_body(area=TOWNSHIP))
        await h.run_until_idle()
        rows = await deliveries(h, wid, "sms")
        assert {r["state"] for r in rows.values()} == {"failed"}
        first = {s.phone for s in fake.sends}
        assert 0 < len(first) < len(rows)  # one call went through, the other was refused
        h.clock.advance(3600)
        await h.run_until_idle()
        rows = await deliveries(h, wid, "sms")
        assert {r["state"] for r in rows.values()} == {"sent"}
        got = Counter(s.phone for s in fake.sends)
        assert set(got.values()) == {1}
        assert set(got) == {national(r["address"]) for r in rows.values()}
        looked_up = {c["PhoneNumber"] for c in fake.calls if c["action"] == "QuerySendDetails"}
        assert looked_up == set(got)  # every send in doubt was looked up before anything was resent


def _config(tmp_path: Path, templates: str, extra: str = "") -> Path:
    """A warnd.toml with an [aliyun] template registry."""
    directory = write_directory(tmp_path / "directory.toml")
    path = tmp_path / "warnd.toml"
    path.write_text(
        f'[directory]\npath = "{directory}"\n[sms]\nproviders = ["aliyun"]\n'
        f'[aliyun]\naccess_key_id = "LTAI"\n{extra}\n{templates}',
        encoding="utf-8",
    )
    return path


@pytest.mark.parametrize(
    ("variable", "expected"),
    [
        ('headline = { value = "详见 https://x.cn/a" }', "variable 'headline': a URL"),
        ('headline = { field = "headline", max_chars = 70 }', "variable 'headline': max_chars 70 is over"),
    ],
)
def test_check_config_refuses_a_registry_that_breaks_the_rules(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], variable: str, expected: str
) -> None:
    """A URL in a variable or a variable over its length: refused, naming template and variable."""
    registry = (
        '[aliyun.sms_templates.issue]\ncode = "SMS_1"\ntext = "预警：${headline}。"\n'
        f"[aliyun.sms_templates.issue.variables]\n{variable}\n"
    )
    path = _config(tmp_path, registry)
    assert check_config(str(path)) == 1
    err = capsys.readouterr().err
    assert "aliyun.sms_templates" in err
    assert "template 'issue'" in err
    assert expected in err


def test_adjacent_variables_and_secrets_in_the_file_are_refused(tmp_path: Path) -> None:
    """Two variables side by side; an AccessKey secret written into warnd.toml."""
    registry = (
        '[aliyun.sms_templates.issue]\ncode = "SMS_1"\ntext = "${level}${event}预警"\n'
        '[aliyun.sms_templates.issue.variables]\nlevel = { field = "level" }\nevent = { field = "event" }\n'
    )
    with pytest.raises(ConfigError) as exc:
        load_settings(_config(tmp_path, registry))
    assert "side by side" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        load_settings(_config(tmp_path, "", extra='access_key_secret = "s3cret"'))
    assert exc.value.problems[0][0] == "aliyun.access_key_secret"
    assert "s3cret" not in str(exc.value)


def test_the_deploy_guide_registry_example_is_accepted(tmp_path: Path) -> None:
    """docs/deploy.md's [aliyun]/[tencent] example passes the rules it describes."""
    guide = (Path(__file__).parent.parent / "docs" / "deploy.md").read_text(encoding="utf-8")
    example = next(b for b in guide.split("```toml")[1:] if "[aliyun.sms_templates.issue]" in b)
    toml = "\n".join(line.removeprefix("   ") for line in example.split("```")[0].splitlines())
    directory = write_directory(tmp_path / "directory.toml")
    path = tmp_path / "warnd.toml"
    path.write_text(f'[directory]\npath = "{directory}"\n{toml}', encoding="utf-8")
    settings = load_settings(path)
    assert settings.aliyun.sms_templates["issue"].ack_code == "SMS_480000002"
    assert sorted(settings.tencent.sms_templates["issue"].variables) == ["1", "2", "3", "4", "5"]


async def test_ivr_call_key_1_confirms_and_silence_does_not(tmp_path: Path) -> None:
    """叫应 through Aliyun: officials get an IvrCall with key 1 mapped; 1 confirms, no key fails."""
    async with china_harness(tmp_path, officials=2, voice=("aliyun",)) as (h, fake, _, _):
        wid = await h.issue(warning_body())
        await h.run_until_idle()
        rows = await deliveries(h, wid, "voice")
        assert sorted(rows) == ["off-0", "off-1"]
        assert [c.action for c in fake.placed] == ["IvrCall", "IvrCall"]
        call = {("+86" + c.phone): c for c in fake.placed}
        first, second = call[rows["off-0"]["address"]], call[rows["off-1"]["address"]]
        assert first.code == "TTS_200002" and first.keys == {"1": "TTS_200009"}
        assert first.params["level"] == "红色"
        report = hook_url(h, f"/hooks/aliyun/{TOKEN}/voice/report")
        assert await fake.push_call_report(report, first, "200000", dtmf="1") == 200
        assert await fake.push_call_report(report, second, "200000") == 200
        rows = await deliveries(h, wid, "voice")
        assert rows["off-0"]["state"] == "acknowledged"
        assert rows["off-1"]["state"] == "failed"
        assert "without key 1" in rows["off-1"]["last_error"]
        assert (await h.client.post("/hooks/aliyun/guess/voice/report", json=[])).status == 403


async def test_the_preview_shows_the_filled_template(tmp_path: Path) -> None:
    """With Aliyun first, the preview's SMS is the approved template, filled and signed."""
    async with china_harness(tmp_path) as (h, _, _, _):
        resp = await h.client.post("/api/v1/warnings/preview", json=warning_body(), headers=h.headers())
        assert resp.status == 200, await resp.text()
        texts = (await resp.json())["messages"]
        assert texts["issue"]["sms"].startswith(f"【{SIGN}】塘甸镇应急办发布暴雨预警（红色）")
        assert texts["issue"]["sms"].endswith("收到请回复1。")
        assert "模板" in texts["all_clear"]["sms"]  # no approved template: the next provider sends it
