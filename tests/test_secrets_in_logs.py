"""No configured secret is ever written to the log: a whole daemon run is grepped for each one.

The daemon runs in this process with every real adapter, against a real Mosquitto, the Twilio
fake and the WeCom fake. Twilio is given a wrong auth token on purpose: error paths (401s,
disabled channels) are where secrets leak into messages.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fakes.twilio import FakeTwilio
from tests.fakes.wecom import FakeWecom
from tests.support.county import write_directory
from tests.support.harness import warning_body
from tests.support.mqtt import Broker, free_port
from tests.support.wait import until
from warnd.api.auth import hash_token
from warnd.app import Services
from warnd.clock import SystemClock
from warnd.config import Settings
from warnd.daemon import run

SECRETS = {
    "operator token": "wd_op-5ecret-7b1d9e2f4a6c8e0a",
    "admin token": "wd_adm-5ecret-3c5e7a9b1d2f4a6b",
    "twilio auth token": "tw-5ecret-0f9e8d7c6b5a4f3e2d1c",
    "wecom secret": "wc-5ecret-a1b2c3d4e5f6a7b8c9d0",
    "mqtt password": "mq-5ecret-9a8b7c6d5e4f3a2b1c0d",
    "ack link secret": "al-5ecret-1234567890abcdef1234567890abcdef",
    "metrics token": "mt-5ecret-55aa66bb77cc88dd",
}


def leaks(events: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Which secrets (or their first 12 characters) appear in which events."""
    found: dict[str, list[str]] = {}
    for e in events:
        text = json.dumps(e, ensure_ascii=False, default=repr)
        for name, secret in SECRETS.items():
            if secret in text or secret[:12] in text:
                found.setdefault(name, []).append(text[:300])
    return found


@pytest.mark.allow_error_logs
async def test_no_secret_in_any_log_event(
    tmp_path: Path, broker: Broker, log_events: list[dict[str, Any]]
) -> None:
    """Issue, deliver, fail auth, guess tokens, scrape metrics, cancel: no secret in any event."""
    twilio = FakeTwilio(auth_token="the-real-token-is-different")
    wecom = FakeWecom(SystemClock(), corp_id="ww-corp", secret=SECRETS["wecom secret"])
    twilio_url, wecom_url = await twilio.start(), await wecom.start()
    port = free_port()
    settings = Settings(
        state_dir=tmp_path / "state",
        directory={"path": write_directory(tmp_path / "directory.toml")},
        http={
            "port": port,
            "public_url": f"http://127.0.0.1:{port}",
            "metrics_token_hash": hash_token(SECRETS["metrics token"]),
        },
        mqtt={"url": broker.url, "username": "warnd", "password": SECRETS["mqtt password"]},
        approval={"levels": []},  # the operator's warning goes straight out
        auth={
            "tokens": [
                {"name": "duty", "role": "operator", "hash": hash_token(SECRETS["operator token"])},
                {
                    "name": "root",
                    "role": "admin",
                    "hash": hash_token(SECRETS["admin token"]),
                },
            ]
        },
        twilio={
            "account_sid": twilio.account_sid,
            "auth_token": SECRETS["twilio auth token"],
            "from_number": "+15005550006",
            "api_base": twilio_url,
            # Webhook mode: in polling mode a 401 from the list call currently ends the daemon.
            "public_base_url": f"http://127.0.0.1:{port}",
        },
        wecom={
            "corp_id": "ww-corp",
            "agent_id": wecom.agent_id,
            "secret": SECRETS["wecom secret"],
            "api_base": wecom_url,
        },
        ack_links={"secret": SECRETS["ack link secret"]},
    )
    stop = asyncio.Event()
    started: asyncio.Future[Services] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run(settings, shutdown_trigger=stop.wait, on_ready=started.set_result))
    base = f"http://127.0.0.1:{port}"

    def bearer(name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {SECRETS[name]}"}

    try:
        daemon = await asyncio.wait_for(started, 20)
        async with aiohttp.ClientSession() as http:
            resp = await http.post(
                f"{base}/api/v1/warnings", json=warning_body(), headers=bearer("operator token")
            )
            assert resp.status == 202, await resp.text()
            wid = (await resp.json())["id"]
            # Guesses near the real tokens, a secret in the wrong place, a token in a query string.
            for header in (
                {"Authorization": f"Bearer {SECRETS['operator token'][:-1]}"},
                {"Authorization": f"Bearer {SECRETS['twilio auth token']}"},
                {"Authorization": SECRETS["admin token"]},
                bearer("operator token"),  # operator may not read the audit log
            ):
                assert (await http.get(f"{base}/api/v1/audit", headers=header)).status in (401, 403)
            assert (await http.get(f"{base}/api/v1/warnings?token={SECRETS['admin token']}")).status == 401
            assert (await http.get(f"{base}/metrics", headers=bearer("metrics token"))).status == 200
            assert (await http.get(f"{base}/metrics", headers=bearer("admin token"))).status == 401
            # Let every channel try its deliveries: MQTT publishes, Twilio answers 401, WeCom sends.

            async def tried() -> list[Any]:
                rows = await daemon.store.deliveries_for(wid)
                untried = any(r["state"] in ("pending", "sending") and r["attempts"] == 0 for r in rows)
                return [] if untried else rows

            rows = await until(tried, 10, what="every channel to try its deliveries")
            assert {r["channel"] for r in rows if r["attempts"] > 0} >= {"loudspeaker", "sms"}
            resp = await http.post(
                f"{base}/api/v1/warnings/{wid}/cancel",
                json={"reason": "演练结束"},
                headers=bearer("admin token"),
            )
            assert resp.status == 202
            assert (await http.get(f"{base}/api/v1/audit", headers=bearer("admin token"))).status == 200
            assert (await http.get(f"{base}/readyz")).status in (200, 503)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await twilio.close()
        await wecom.close()
    # The run did produce a real log (errors included): the grep below is over something.
    names = {e.get("event") for e in log_events}
    assert {"warnd.started", "warning.accepted", "warnd.stopped"} <= names, names
    assert any(e["log_level"] == "error" for e in log_events), "the wrong Twilio token should log an error"
    assert leaks(log_events) == {}
