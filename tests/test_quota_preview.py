"""The preview warns of people near a provider's daily quota per number (issue 16): a red warning
must not be the message the quota blocks, so the duty officer sees them before sending — in the
API's answer and in `warnctl preview`."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from tests.support.china_harness import china_harness
from tests.support.harness import TOKENS, Harness, warning_body
from tests.support.process import ROOT
from tests.support.twilio_harness import deliveries, hook_url

BLUE = warning_body(level="blue", headline="蓝色预警一")
RED = warning_body(level="red", headline="红色预警", event="山洪")


async def quota_warnings(h: Harness) -> list[dict[str, object]]:
    """The preview of a red warning for the same village: its quota warnings."""
    resp = await h.client.post("/api/v1/warnings/preview", json=RED, headers=h.headers("operator"))
    assert resp.status == 200, await resp.text()
    return (await resp.json())["quota_warnings"]


async def warnctl_preview(h: Harness, body: Path) -> str:
    """`warnctl preview --file BODY` against the harness's server, its standard output."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WARND_TOKEN": TOKENS["operator"]}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "warnd.ctl", "--url", hook_url(h, ""), "preview", "--file", str(body),
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_the_preview_names_people_near_their_daily_quota(tmp_path: Path) -> None:
    """After one message today: quota 40 leaves room (no warning); quota 2 leaves one (warned)."""
    order = ("aliyun", "tencent")
    async with china_harness(tmp_path, villages=1, providers=order) as (h, aliyun, _, _):
        assert await quota_warnings(h) == []  # nobody had anything today
        wid = await h.issue(BLUE)
        await h.run_until_idle()
        rows = await deliveries(h, wid, "sms")
        assert rows and len(aliyun.sends) == len(rows)
        h.settings.aliyun.daily_quota = 40
        assert await quota_warnings(h) == []
        h.settings.aliyun.daily_quota = 2
        near = await quota_warnings(h)
        # Tencent sent nobody anything today: only Aliyun's count is near its quota.
        assert sorted(q["person"] for q in near) == sorted(rows)
        seen = {(q["channel"], q["provider"], q["used"], q["limit"]) for q in near}
        assert seen == {("sms", "aliyun", 1, 2)}
        assert all(q["name"] for q in near)

        body = tmp_path / "red.json"
        body.write_text(json.dumps(RED, ensure_ascii=False), "utf-8")
        printed = await warnctl_preview(h, body)
        assert "接近每日限额 near a daily quota" in printed
        for person in rows:
            line = next(x for x in printed.splitlines() if f"({person})" in x)
            assert "aliyun" in line and "1/2" in line
