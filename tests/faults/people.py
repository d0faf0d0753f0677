"""What the fault tests of the people channels share: a warnd process on the Twilio and WeCom fakes,
what the fakes say each person received, and what warnd's store says of it.

The fakes serve from threads of the test process (tests/support/threaded.py), so they outlive a
killed warnd; read their state only through `ThreadedFake.run`.
"""

from __future__ import annotations

import json
import sqlite3
import urllib.request
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fakes.twilio import FakeTwilio
from tests.fakes.wecom import FakeWecom
from tests.support.county import village_code, write_directory
from tests.support.harness import warning_body
from tests.support.process import DaemonProcess, write_config

FROM = "+15005550006"
CORP_ID, AGENT_ID, APP_SECRET = "ww-fault-corp", 1000002, "fault-app-secret"
ROLES = '["official", "village_secretary", "grid_worker"]'


def robot_env(robots: int) -> dict[str, str]:
    """The environment naming each test robot's webhook key (WARND_TEST_ROBOT_k → key-k)."""
    return {f"WARND_TEST_ROBOT_{k}": f"key-{k}" for k in range(robots)}


def people_config(
    tmp_path: Path,
    port: int,
    *,
    villages: int,
    officials: int,
    channels: Iterable[str],
    twilio: FakeTwilio | None = None,
    wecom_base: str | None = None,
    robots: int = 0,
    rate_per_s: float = 400,
) -> Path:
    """A warnd.toml: red goes to everyone on these channels, nothing to confirm, webhooks at warnd."""
    directory = write_directory(
        tmp_path / "directory.toml", villages=villages, speakers=0, leds=0, officials=officials,
        test_village=False, wecom_users=True, robots=robots,
    )  # fmt: skip
    chans = list(channels)
    extra = ""
    if twilio is not None:
        extra += (
            f'[twilio]\naccount_sid = "{twilio.account_sid}"\nauth_token = "{twilio.auth_token}"\n'
            f'from_number = "{FROM}"\napi_base = "{twilio.base_url}"\n'
            # Webhook mode: every create names its msg_id and target in the callback URL.
            f'public_base_url = "http://127.0.0.1:{port}"\n'
            f"rate_per_s = {rate_per_s}\ncalls_per_s = {rate_per_s}\n\n"
        )
    if wecom_base is not None:
        extra += (
            f'[wecom]\napi_base = "{wecom_base}"\ncorp_id = "{CORP_ID}"\nagent_id = {AGENT_ID}\n'
            f'secret = "{APP_SECRET}"\n\n'
        )
    roles = ", ".join(f"{c} = {ROLES}" for c in chans)
    extra += (
        f"[policy.levels.red]\nchannels = {json.dumps(chans)}\nack_roles = []\nquiet_hours = false\n"
        f"roles = {{ {roles} }}\n"
    )
    return write_config(tmp_path, directory, port, extra=extra)


def daemon(
    tmp_path: Path, config: Path, port: int, channels: Iterable[str], env: dict[str, str]
) -> DaemonProcess:
    """A warnd process (not started) with warnd's own adapters for these channels."""
    argv = ["-m", "tests.support.channels_daemon", str(config), *channels]
    # 200 people press 收到 from one loopback address, and the test polls: no per-client limits.
    limits = {"WARND_HTTP__RATE_LIMIT_PER_S": "0", "WARND_HTTP__ACK_RATE_LIMIT_PER_S": "0"}
    return DaemonProcess(argv, port, tmp_path / "warnd.log", env={**limits, **env})


def red_warning(villages: int, headline: str = "塘甸镇气象台发布暴雨红色预警") -> dict[str, Any]:
    """A red warning for the first `villages` villages of the township."""
    return warning_body(area={"codes": [village_code(i) for i in range(villages)]}, headline=headline)


def coverage(d: DaemonProcess, wid: str) -> dict[str, dict[str, int]]:
    """The warning's coverage per channel ({} while warnd does not answer)."""
    try:
        status, w = d.call("GET", f"/api/v1/warnings/{wid}", role="viewer")
    except OSError:
        return {}
    return w.get("coverage", {}) if status == 200 else {}


def deliveries(d: DaemonProcess, wid: str) -> list[dict[str, Any]]:
    """The warning's deliveries, from the API."""
    status, body = d.call("GET", f"/api/v1/warnings/{wid}/deliveries", role="viewer")
    assert status == 200, body
    return body["deliveries"]


# -- what the fakes saw (call these through ThreadedFake.run) -------------------------------------


def twilio_received(fake: FakeTwilio) -> dict[str, Counter[tuple[str, str]]]:
    """Per channel (sms, voice): how many messages or calls exist at Twilio per (msg_id, target)."""
    out: dict[str, Counter[tuple[str, str]]] = {"sms": Counter(), "voice": Counter()}
    for channel, resources in (("sms", fake.messages), ("voice", fake.calls)):
        for sid, r in resources.items():
            if r.get("direction") != "outbound-api":
                continue
            url = fake.status_callback(sid)
            assert url, f"{sid} was created without a status callback"
            q = parse_qs(urlsplit(url).query)
            out[channel][(q["m"][0], q["t"][0])] += 1
    return out


def wecom_people_received(fake: FakeWecom) -> Counter[str]:
    """How many application messages each WeCom user received (a dropped duplicate is not received)."""
    return Counter(c.touser for c in fake.app_calls if c.received)


def wecom_cards(fake: FakeWecom) -> list[str]:
    """The ack-link URL of every card a person received."""
    return [c.body["textcard"]["url"] for c in fake.app_calls if c.received]


def post(url: str) -> int:
    """POST with no body (a person pressing 收到 behind an ack link); returns the status."""
    req = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status


# -- what warnd stored --------------------------------------------------------------------------


def store_problems(state_dir: Path) -> list[str]:
    """What is half-written in a stopped warnd's database: every row must be in a state it can rest in."""
    con = sqlite3.connect(state_dir / "warnd.db")
    con.row_factory = sqlite3.Row
    try:
        problems = [f"integrity: {r[0]}" for r in con.execute("PRAGMA integrity_check") if r[0] != "ok"]
        for r in con.execute("SELECT * FROM deliveries"):
            who = f"{r['channel']} {r['target']} {r['msg_id']}"
            if r["state"] == "sending":
                problems.append(f"{who}: left sending")
            if r["state"] in ("sent", "delivered", "acknowledged") and not r["sent_at"]:
                problems.append(f"{who}: {r['state']} without sent_at")
            if r["state"] in ("delivered", "acknowledged") and not (r["delivered_at"] or r["acked_at"]):
                problems.append(f"{who}: {r['state']} without delivered_at/acked_at")
            if r["state"] in ("sent", "delivered", "acknowledged") and r["maybe_sent_at"]:
                problems.append(f"{who}: {r['state']} but still in doubt")
        for r in con.execute("SELECT key, state FROM jobs WHERE kind = 'step' AND state != 'done'"):
            problems.append(f"job {r['key']}: {r['state']}")
        return problems
    finally:
        con.close()


def error_lines(log_path: Path) -> list[str]:
    """warnd's log lines at level error or above (an adapter bug shows up here, not as a failure)."""
    out = []
    for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("level") in ("error", "critical", "exception"):
            out.append(line[:400])
    return out
