"""Benchmark: warnd's peak RSS with a county directory and a county-wide red on every channel.

    .venv/bin/python -m bench.peak_rss [--villages 1000] [--people 50] [--reps 3] [--send-s 10]
        [--json PATH]

The directory of tests/support/county.py (1,000 villages × 10 speakers and an LED board, 50,010
people with a phone, 10 officials with a WeCom user). Each repetition, warnd and the reference
alternating:

- **warnd**: a `warnd run` process (tests/support/channels_daemon.py) with its own adapters for
  every channel — loudspeaker and LED on a Mosquitto, SMS and voice on the Twilio fake, WeCom
  application messages on the WeCom fake, the fakes served from threads of this process. Once
  it answers, one red warning for the whole county (the default red policy: every channel, SMS
  to everyone): the step is planned (61,030 deliveries), its audio rendered, and it is sent for
  `--send-s` seconds. Then the process's peak RSS (VmHWM, /proc/PID/status).
- **the reference**: a bare Python process that parses the same file with warnd's TOML parser
  and holds the result — what the directory costs before warnd makes anything of it.

Target: warnd ≤ 200 MB. The note gives warnd's peak once ready, before the warning.

Not a test: numbers depend on the machine; bench/README.md records them.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._table import Line, emit, order  # noqa: E402
from tests.fakes.twilio import FakeTwilio  # noqa: E402
from tests.fakes.wecom import FakeWecom  # noqa: E402
from tests.support.county import county_toml  # noqa: E402
from tests.support.harness import warning_body  # noqa: E402
from tests.support.mqtt import Broker, free_port  # noqa: E402
from tests.support.process import DaemonProcess, write_config  # noqa: E402
from tests.support.threaded import ThreadedFake  # noqa: E402
from warnd.clock import SystemClock  # noqa: E402

TARGET_MB = 200.0
CHANNELS = ("loudspeaker", "sms", "voice", "led", "wechat")
CORP_ID, AGENT_ID, APP_SECRET = "ww-bench-corp", 1000002, "bench-app-secret"
# SMS and calls per second at the Twilio fake: a provider's account limit, not the bench's own.
SEND_RATE_PER_S = 200
COUNTY = "330502"  # every village of tests/support/county.py

# The reference: the parsed file held in a bare interpreter (the TOML parser warnd uses).
REFERENCE = """
import sys
import tomli
with open(sys.argv[1], "rb") as f:
    kept = tomli.load(f)
print(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
"""


def peak_kb(pid: int) -> int:
    """A running process's peak resident set (VmHWM), in kB."""
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith("VmHWM:"):
            return int(row.split()[1])
    raise RuntimeError(f"no VmHWM for {pid}")


def config(workdir: Path, directory: Path, port: int, broker: Broker, twilio: str, wecom: str, sid: str,
           token: str) -> Path:  # fmt: skip
    """warnd.toml: every channel to local fakes, the default policy (red: everyone, every channel)."""
    extra = (
        f'[mqtt]\nurl = "{broker.url}"\n\n'
        f'[twilio]\naccount_sid = "{sid}"\nauth_token = "{token}"\nfrom_number = "+15005550006"\n'
        f'api_base = "{twilio}"\npublic_base_url = "http://127.0.0.1:{port}"\n'
        f"rate_per_s = {SEND_RATE_PER_S}\ncalls_per_s = {SEND_RATE_PER_S}\n\n"
        f'[wecom]\napi_base = "{wecom}"\ncorp_id = "{CORP_ID}"\nagent_id = {AGENT_ID}\n'
        f'secret = "{APP_SECRET}"\n\n'
    )
    workdir.mkdir(parents=True, exist_ok=True)
    return write_config(workdir, directory, port, extra=extra)


def planned(d: DaemonProcess, warning_id: str) -> int:
    """How many deliveries the warning has so far (its coverage's expected receivers)."""
    status, w = d.call("GET", f"/api/v1/warnings/{warning_id}", role="viewer")
    assert status == 200, w
    return sum(c["expected"] for c in w.get("coverage", {}).values())


def run_warnd(workdir: Path, directory: Path, broker: Broker, twilio: ThreadedFake[FakeTwilio],
              wecom: ThreadedFake[FakeWecom], send_s: float) -> dict[str, Any]:  # fmt: skip
    """One warnd process: ready, a county-wide red planned and sent for send_s; its peak RSS."""
    port = free_port()
    path = config(workdir, directory, port, broker, twilio.base_url, wecom.base_url,
                  twilio.fake.account_sid, twilio.fake.auth_token)  # fmt: skip
    limits = {"WARND_HTTP__RATE_LIMIT_PER_S": "0"}
    d = DaemonProcess(
        ["-m", "tests.support.channels_daemon", str(path), *CHANNELS], port, workdir / "warnd.log", env=limits
    )
    d.start(timeout_s=120)
    assert d.proc is not None
    sent_before = twilio.run(lambda: len(twilio.fake.messages))  # the fake serves every repetition
    try:
        ready_kb = peak_kb(d.proc.pid)
        body = warning_body(area={"codes": [COUNTY]}, headline="县气象台发布暴雨红色预警")
        status, preview = d.call("POST", "/api/v1/warnings/preview", body)
        assert status == 200, preview
        expected = sum(preview["schedule"][0]["targets"].values())
        t0 = time.monotonic()
        status, out = d.call("POST", "/api/v1/warnings", body)
        assert status == 202, out
        while planned(d, out["id"]) < expected:
            if time.monotonic() - t0 > 300:
                raise RuntimeError(f"the step was not planned in 300 s:\n{d.log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        planned_s = time.monotonic() - t0
        time.sleep(send_s)
        sent = twilio.run(lambda: len(twilio.fake.messages)) - sent_before
        return {"peak_kb": peak_kb(d.proc.pid), "ready_kb": ready_kb, "expected": expected,
                "planned_s": planned_s, "sms_sent": sent}  # fmt: skip
    finally:
        d.terminate(60)


def run_reference(directory: Path) -> int:
    """The reference's peak RSS in kB: a bare interpreter holding the parsed file."""
    argv = [sys.executable, "-c", REFERENCE, str(directory)]
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def main() -> int:
    """Run the repetitions and print (or write) the line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--villages", type=int, default=1000)
    parser.add_argument("--people", type=int, default=50, help="people per village (+10 officials)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--send-s", type=float, default=10.0, help="sending after the step is planned")
    parser.add_argument("--json", help="write the lines here for bench/run_all.py instead of printing")
    args = parser.parse_args()
    warnd_mb: list[float] = []
    reference_mb: list[float] = []
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="warnd-bench-rss-") as tmp:
        workdir = Path(tmp)
        directory = workdir / "directory.toml"
        directory.write_text(county_toml(args.villages, args.people), encoding="utf-8")
        broker = Broker(workdir)
        broker.start()
        twilio = ThreadedFake(FakeTwilio()).start()
        wecom = ThreadedFake(FakeWecom(clock=SystemClock())).start()
        try:
            for rep in range(args.reps):
                for side in order(rep):
                    if side == "warnd":
                        run = run_warnd(workdir / f"run-{rep}", directory, broker, twilio, wecom, args.send_s)
                        runs.append(run)
                        warnd_mb.append(run["peak_kb"] / 1024)
                    else:
                        reference_mb.append(run_reference(directory) / 1024)
                last = runs[-1]
                print(f"  rep {rep + 1}: warnd {warnd_mb[-1]:.0f} MB (ready {last['ready_kb'] / 1024:.0f} MB,"
                      f" planned in {last['planned_s']:.1f} s, {last['sms_sent']} SMS sent),"
                      f" reference {reference_mb[-1]:.0f} MB", file=sys.stderr)  # fmt: skip
        finally:
            wecom.close()
            twilio.close()
            broker.stop()
    people = args.villages * args.people + 10
    ready = [r["ready_kb"] / 1024 for r in runs]
    sent = [r["sms_sent"] for r in runs]
    lines = [
        Line(f"peak RSS, county directory ({people:,} people), a county-wide red on every channel", "MB",
             warnd_mb, reference_mb, [w / r for w, r in zip(warnd_mb, reference_mb, strict=True)],
             "warnd / the parsed file held", f"≤ {TARGET_MB:g} MB", statistics.median(warnd_mb) <= TARGET_MB,
             f"a `warnd run` process, {runs[0]['expected']:,} deliveries planned ({', '.join(CHANNELS)}, "
             f"local fakes), then {args.send_s:g} s of sending ({min(sent)}–{max(sent)} SMS); its peak once "
             f"ready, before the warning: {min(ready):.0f}–{max(ready):.0f} MB; reference: a bare "
             "interpreter holding the parsed file"),
    ]  # fmt: skip
    return emit(lines, args.json)


if __name__ == "__main__":
    sys.exit(main())
