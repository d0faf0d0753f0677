"""`warnctl`: issue, preview, list, show, watch, sign off, update and cancel warnings through the
HTTP API; devices and reports.

Human output is Chinese tables with local times; `--json` prints the API's answers for scripts.
Exit codes scripts rely on: 0 done, 1 failed (the API refused, a watch timed out or its warning
ended unconfirmed, the output pipe closed), 2 usage, 3 warnd unreachable (one line says why).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8080"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
# A single request: warnd answers within a second or two; longer means it is not there.
REQUEST_TIMEOUT_S = 30
# A watch hears at least a keep-alive every 15 s (warnd.api.events): silence this long is a lost link.
STREAM_SILENCE_S = 45
DEVICE_CHANNELS = ("loudspeaker", "led")
CAP_TYPE = "application/cap+xml"

STATE_NAMES = {
    "awaiting_approval": "待签发",
    "active": "生效中",
    "updated": "已更新",
    "cancelled": "已解除",
    "expired": "已过期",
    "rejected": "已驳回",
}
LEVEL_NAMES = {"red": "红色", "orange": "橙色", "yellow": "黄色", "blue": "蓝色"}
CHANNEL_NAMES = {
    "loudspeaker": "大喇叭",
    "sms": "短信",
    "voice": "语音电话",
    "wechat": "企业微信",
    "led": "电子屏",
}
JOB_STATES = {"pending": "待发", "done": "已发", "cancelled": "已取消"}
DEVICE_STATES = {"online": "在线", "offline": "离线", "unknown": "未知"}
PERSON_ROLES = {
    "official": "责任人",
    "village_secretary": "村（社区）书记",
    "grid_worker": "网格员",
    "resident": "群众",
}


class CtlError(Exception):
    """A failure to report to the user, already worded (exit 1)."""

    code = EXIT_FAILED


class Unreachable(CtlError):
    """warnd did not answer (exit 3)."""

    code = EXIT_UNREACHABLE


def _open(
    base: str,
    method: str,
    path: str,
    data: bytes | None,
    token: str | None,
    timeout_s: float = REQUEST_TIMEOUT_S,
    headers: dict[str, str] | None = None,
) -> Any:
    """Send one request; the open response, or the HTTPError carrying the API's error."""
    req = urllib.request.Request(base.rstrip("/") + path, data=data, method=method)  # noqa: S310 - the operator's own URL
    for name, value in (headers or {}).items():
        req.add_header(name, value)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        return urllib.request.urlopen(req, timeout=timeout_s)  # noqa: S310
    except urllib.error.HTTPError as exc:
        return exc
    except urllib.error.URLError as exc:
        raise Unreachable(f"cannot reach warnd at {base}: {exc.reason}") from None
    except (TimeoutError, ConnectionError) as exc:
        raise Unreachable(f"cannot reach warnd at {base}: {exc}") from None


def request(
    base: str,
    method: str,
    path: str,
    body: Any = None,
    token: str | None = None,
    *,
    raw: bytes | None = None,
    content_type: str = "application/json",
    idempotency_key: str | None = None,
) -> tuple[int, Any]:
    """One API call; returns (status, decoded JSON, or the text when it is not JSON)."""
    data = (
        raw
        if raw is not None
        else (json.dumps(body, ensure_ascii=False).encode() if body is not None else None)
    )
    headers = {"Content-Type": content_type} if data is not None else {}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    resp = _open(base, method, path, data, token, headers=headers)
    with resp:
        try:
            text = resp.read()
        except (TimeoutError, ConnectionError) as exc:
            raise Unreachable(f"warnd at {base} stopped answering: {exc}") from None
    status = resp.status if not isinstance(resp, urllib.error.HTTPError) else resp.code
    try:
        return status, json.loads(text or b"null")
    except ValueError:
        if status < 400:
            return status, text.decode("utf-8-sig", errors="replace")
        message = text.decode(errors="replace")[:200]
        return status, {"error": {"code": "http", "message": message, "field": None}}


def _check(status: int, body: Any) -> Any:
    """Raise CtlError with the API's message (naming the field) on a 4xx/5xx."""
    if status >= 400:
        err = (body or {}).get("error", {}) if isinstance(body, dict) else {}
        field = f" [{err['field']}]" if err.get("field") else ""
        raise CtlError(f"HTTP {status} {err.get('code', '')}{field}: {err.get('message', body)}")
    return body


def _read_file(path: str) -> tuple[bytes, bool]:
    """A file's bytes, and whether it is a CAP document (XML) rather than JSON."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise CtlError(f"--file {path}: {exc}") from None
    return data, data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<")


def _json_file(path: str) -> Any:
    """A JSON file's content."""
    data, _ = _read_file(path)
    try:
        return json.loads(data)
    except ValueError as exc:
        raise CtlError(f"--file {path}: {exc}") from None


def warning_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """A warning body from --file (JSON) or from flags."""
    if args.file:
        return _json_file(args.file)
    missing = [f"--{n}" for n in ("event", "level", "headline") if not getattr(args, n)]
    if missing or not (args.code or args.circle):
        raise CtlError(
            f"give --file, or {' '.join(missing) or ''} and at least one --code or --circle".strip()
        )
    body: dict[str, Any] = {
        "event": args.event,
        "level": args.level,
        "headline": args.headline,
        "description": args.description or "",
        "instruction": args.instruction or "",
        "area": _area(args),
        "status": args.status,
    }
    for name in ("onset", "expires"):
        if getattr(args, name):
            body[name] = getattr(args, name)
    return body


def _area(args: argparse.Namespace) -> dict[str, Any]:
    """The area of --code and --circle flags."""
    circles = []
    for text in args.circle or ():
        try:
            lat, lon, km = (float(x) for x in text.split(","))
        except ValueError:
            raise CtlError(f"--circle {text!r}: expected LAT,LON,RADIUS_KM") from None
        circles.append({"lat": lat, "lon": lon, "radius_km": km})
    return {"codes": args.code or [], "circles": circles}


def drill_mark(w: dict[str, Any]) -> str:
    """【演练 exercise】 / 【演练 test】 for a drill, so no one takes it for a real warning; "" otherwise."""
    status = w.get("status") or "actual"
    return "" if status == "actual" else f"【演练 {status}】"


def local(at: str | None) -> str:
    """A time as warnd answers it (ISO 8601 in the township's zone) as a duty log writes it."""
    if not at:
        return "—"
    return at[:16].replace("T", " ") if len(at) >= 16 and at[10] == "T" else at


def reached_share(channel: str, c: dict[str, int]) -> tuple[int, int]:
    """(reached, expected): devices that confirmed playing or showing, people delivered to."""
    return (c["acknowledged"] if channel in DEVICE_CHANNELS else c["delivered"]), c["expected"]


def _coverage_table(coverage: dict[str, dict[str, int]]) -> list[str]:
    """Coverage per channel as table lines."""
    lines = [f"  {'渠道':<8}{'应发':>6}{'已发':>6}{'送达':>6}{'确认':>6}{'失败':>6}{'离线':>6}"]
    for channel, c in sorted(coverage.items()):
        name = CHANNEL_NAMES.get(channel, channel)
        lines.append(
            f"  {name:<8}{c['expected']:>8}{c['sent']:>8}{c['delivered']:>8}{c['acknowledged']:>8}"
            f"{c['failed']:>8}{c.get('offline', 0):>8}  ({channel})"
        )
    return lines


def _print_warning(w: dict[str, Any]) -> None:
    """A warning for a duty officer's terminal: its facts, schedule and coverage table."""
    mark = drill_mark(w)
    level = f"{LEVEL_NAMES.get(w['level'], w['level'])} {w['level']}"
    state = f"{STATE_NAMES.get(w['state'], w['state'])} {w['state']}"
    print(f"{mark}{w['id']}  [{level}] {w['event']}  {state}  v{w.get('version', 1)}")
    if mark:
        print("  演练：只发往测试村和测试人员，不发给公众")
    print(f"  {w['headline']}")
    if w.get("instruction"):
        print(f"  要求: {w['instruction']}")
    drafter = f" ({w['drafted_by']})" if w.get("drafted_by") else ""
    print(f"  村（社区）: {len(w.get('villages', []))}  起草: {local(w.get('created_at'))}{drafter}")
    change = w.get("pending_change")
    if change:
        print(f"  待签发的变更 awaiting approval: {change['kind']} ({change['drafted_by']})")
    if w.get("schedule"):
        print("发布计划 schedule:")
    for step in w.get("schedule", []):
        channels = ",".join(CHANNEL_NAMES.get(c, c) for c in step["channels"])
        held = f"  推迟 held: {step['held']}" if step.get("held") else ""
        job = JOB_STATES.get(step.get("state", ""), step.get("state", ""))
        print(f"  {step['step']:>7}  {local(step['at'])}  {channels}  {job}{held}")
    if w.get("coverage"):
        print("覆盖 coverage:")
        for line in _coverage_table(w["coverage"]):
            print(line)


_KIND_NAMES = {
    "issue": "发布 issue",
    "reminder": "提醒 reminder",
    "update": "更新 update",
    "upgrade": "升级 upgrade",
    "downgrade": "降级 downgrade",
    "all_clear": "解除 all-clear",
    "escalation_self": "叫应本人 escalation to self",
    "escalation_superior": "叫应上级 escalation to superior",
    "approval_reminder": "待签发提醒 sign-off reminder",
}


def _print_preview(body: dict[str, Any]) -> None:
    """Villages, schedule, and every message kind's text per channel, as they will be sent."""
    villages = body.get("villages", [])
    print(f"村（社区）({len(villages)}): " + "、".join(v["name"] for v in villages))
    print("发布计划 schedule:")
    for s in body.get("schedule", []):
        targets = "，".join(f"{CHANNEL_NAMES.get(c, c)} {n}" for c, n in s.get("targets", {}).items()) or "无"
        unavailable = s.get("unavailable_channels")
        missing = f"  (不可用 unavailable: {', '.join(unavailable)})" if unavailable else ""
        print(f"  {local(s['at'])}  {s['step']:<8} {targets}{missing}")
    near = body.get("quota_warnings", [])
    if near:
        print("接近每日限额 near a daily quota (下一条可能被拒或改由下一家发送):")
    for q in near:
        who = q.get("name") or q["person"]
        channel = CHANNEL_NAMES.get(q["channel"], q["channel"])
        print(f"  {who} ({q['person']})  {channel} {q['provider']}  今日已发 {q['used']}/{q['limit']}")
    for kind, texts in body.get("messages", {}).items():
        print(f"\n=== {_KIND_NAMES.get(kind, kind)} ===")
        for channel, text in texts.items():
            print(f"--- {CHANNEL_NAMES.get(channel, channel)} {channel}")
            print(text)


def _print_report(rep: dict[str, Any]) -> None:
    """A warning's coverage per village and channel, who has not confirmed, silent speakers."""
    level = LEVEL_NAMES.get(rep["level"], rep["level"])
    print(f"{rep['warning_id']}  {rep['event']} {level}  {rep['headline']}")
    print(f"  {'村（社区）':<10}{'渠道':<8}{'应发':>6}{'已发':>6}{'送达':>6}{'确认':>6}{'失败':>6}")
    for v in rep["villages"]:
        for channel, c in v["channels"].items():
            name = CHANNEL_NAMES.get(channel, channel)
            print(
                f"  {v['name'] or v['code']:<10}{name:<8}{c['expected']:>8}{c['sent']:>8}"
                f"{c['delivered']:>8}{c['acknowledged']:>8}{c['failed']:>8}"
            )
    c = rep["confirmations"]
    print(f"确认 confirmed: {c['confirmed']}/{c['required']}")
    for u in rep["unconfirmed"]:
        role = PERSON_ROLES.get(u["role"] or "", u["role"] or "")
        print(f"  未确认 {u['name'] or u['person_id']} {role} {u['phone'] or ''}")
    for s in rep["speakers_not_played"]:
        print(f"  未播放 {s['device']} ({s['village']}) {s['state']}")


def _done(snap: dict[str, Any]) -> bool:
    """Whether a warning's snapshot shows everyone reached and confirmed (100 %)."""
    coverage = snap["warning"].get("coverage") or {}
    if not coverage or snap["warning"]["state"] not in ("active", "updated"):
        return False
    full = all(
        reached >= expected for reached, expected in (reached_share(ch, c) for ch, c in coverage.items())
    )
    return full and not snap["report"]["unconfirmed"]


def _progress(snap: dict[str, Any]) -> str:
    """One line of a watch: coverage per channel and who has not confirmed."""
    w = snap["warning"]
    parts = []
    for channel, c in sorted((w.get("coverage") or {}).items()):
        reached, expected = reached_share(channel, c)
        parts.append(f"{CHANNEL_NAMES.get(channel, channel)} {reached}/{expected}")
    state = STATE_NAMES.get(w["state"], w["state"])
    unconfirmed = len(snap["report"]["unconfirmed"])
    stamp = time.strftime("%H:%M:%S")
    return f"{stamp}  {w['id']}  {state}  {'  '.join(parts) or '尚未发出'}  未确认 {unconfirmed}"


def events(base: str, path: str, token: str | None, deadline: float) -> Iterator[tuple[str, Any]]:
    """Server-sent events of a stream until the deadline (monotonic); Unreachable when the link is lost."""
    # Reads time out at the deadline, or after a silence longer than warnd's keep-alives allow.
    timeout_s = max(0.1, min(STREAM_SILENCE_S, deadline - time.monotonic()))
    resp = _open(base, "GET", path, None, token, timeout_s, headers={"Accept": "text/event-stream"})
    if isinstance(resp, urllib.error.HTTPError):
        with resp:
            raw = resp.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = {"error": {"code": "http", "message": raw.decode(errors="replace")[:200], "field": None}}
        _check(resp.code, body)
    with resp:
        name, data = "message", []
        while time.monotonic() < deadline:
            try:
                line = resp.readline()
            except TimeoutError:
                if time.monotonic() >= deadline:
                    return
                raise Unreachable(f"warnd at {base} went silent for {STREAM_SILENCE_S} s") from None
            except ConnectionError as exc:
                raise Unreachable(f"lost warnd at {base}: {exc}") from None
            if not line:
                raise Unreachable(f"warnd at {base} closed the stream")
            text = line.decode("utf-8").rstrip("\r\n")
            if text.startswith("event:"):
                name = text[6:].strip()
            elif text.startswith("data:"):
                data.append(text[5:].strip())
            elif not text and data:
                yield name, json.loads("\n".join(data))
                name, data = "message", []


def watch(args: argparse.Namespace, token: str | None) -> int:
    """Follow a warning live until everyone is reached and confirmed (0), or time runs out (1)."""
    deadline = time.monotonic() + args.timeout
    last = ""
    for name, snap in events(args.url, f"/api/v1/events?warning_id={args.id}", token, deadline):
        if name != "warning":
            continue
        if args.json:
            print(json.dumps(snap, ensure_ascii=False), flush=True)
        else:
            line = _progress(snap)
            if line.split("  ", 1)[1] != last:
                print(line, flush=True)
                last = line.split("  ", 1)[1]
        if _done(snap):
            if not args.json:
                print("全部送达并确认 (100 %)", flush=True)
            return EXIT_OK
        if snap["warning"]["state"] in ("cancelled", "expired", "rejected"):
            raise CtlError(f"{args.id} is {snap['warning']['state']} before everyone was reached")
    raise CtlError(f"{args.id}: not everyone reached and confirmed within {args.timeout:g} s")


def _parser() -> argparse.ArgumentParser:
    """The command line."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print the API's answer as JSON (for scripts)")
    parser = argparse.ArgumentParser(
        prog="warnctl",
        description="operate warnd over its HTTP API",
        epilog="exit codes: 0 done, 1 failed or timed out, 2 usage, 3 warnd unreachable",
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("WARND_URL", DEFAULT_URL),
        help=f"warnd's address (default: $WARND_URL or {DEFAULT_URL})",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("issue", "preview"):
        p = sub.add_parser(
            name, parents=[common], help=f"{name} a warning from --file (JSON or CAP) or flags"
        )
        p.add_argument("--file", help="JSON body as in docs/architecture.md, or a CAP 1.2 XML document")
        _content_flags(p)
        p.add_argument("--code", action="append", help="admin code (repeatable)")
        p.add_argument("--circle", action="append", help="LAT,LON,RADIUS_KM (repeatable)")
        p.add_argument("--status", default="actual", choices=["actual", "exercise", "test"])
        p.add_argument("--idempotency-key")
    p = sub.add_parser("list", parents=[common], help="list warnings")
    p.add_argument("--state", choices=list(STATE_NAMES))
    for name, about in (
        ("show", "show a warning with its schedule and coverage"),
        ("deliveries", "a warning's deliveries"),
        ("approve", "sign off (审核签发) a draft or a waiting update or cancel"),
    ):
        sub.add_parser(name, parents=[common], help=about).add_argument("id")
    p = sub.add_parser(
        "watch", parents=[common], help="follow a warning live until all are reached and confirmed"
    )
    p.add_argument("id")
    p.add_argument("--timeout", type=float, default=600, help="seconds to wait (default 600); then exit 1")
    p = sub.add_parser("reject", parents=[common], help="reject (驳回) a draft or a waiting update or cancel")
    p.add_argument("id")
    p.add_argument("--reason", required=True, help="why: kept in the audit log")
    p = sub.add_parser("cancel", parents=[common], help="cancel a warning (all-clear)")
    p.add_argument("id")
    p.add_argument("--reason", default="", help="why it is lifted: said in the all-clear")
    p.add_argument(
        "--advice", default="", help="what people should do now (default: [messages] all_clear_advice)"
    )
    p = sub.add_parser(
        "update", parents=[common], help="update a warning from flags or a JSON file of changes"
    )
    p.add_argument("id")
    p.add_argument("--file", help="JSON of the changed fields")
    _content_flags(p)
    p.add_argument("--code", action="append", help="a new area: admin code (repeatable)")
    p.add_argument("--circle", action="append", help="a new area: LAT,LON,RADIUS_KM (repeatable)")
    p = sub.add_parser("devices", parents=[common], help="loudspeakers and LED boards: online, last seen")
    p.add_argument("--state", choices=list(DEVICE_STATES))
    p.add_argument("--village", help="12-digit village code")
    p = sub.add_parser("report", parents=[common], help="a warning's coverage report")
    p.add_argument("id")
    p.add_argument("--csv", action="store_true", help="the report as CSV")
    p = sub.add_parser(
        "simulate-speakers",
        help="simulated village loudspeakers (and LED boards) that play or show and confirm (= warnd-sim)",
    )
    return parser


def _content_flags(p: argparse.ArgumentParser) -> None:
    """A warning's content flags (issue, preview, update)."""
    p.add_argument("--event")
    p.add_argument("--level", choices=list(LEVEL_NAMES))
    p.add_argument("--headline")
    p.add_argument("--description")
    p.add_argument("--instruction")
    p.add_argument("--onset")
    p.add_argument("--expires")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `warnctl` command."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["simulate-speakers"]:
        # A tool of its own (warnd.tools.simulator), loaded only here: warnctl's other commands
        # start without warnd's config and MQTT modules (seconds of imports).
        from warnd.tools.simulator import main as simulate

        return simulate(argv[1:], prog="warnctl simulate-speakers")
    args = _parser().parse_args(argv)
    token = os.environ.get("WARND_TOKEN")
    try:
        return _dispatch(args, token)
    except BrokenPipeError:
        # The reader went away (`warnctl list | head -1`): no traceback, and no more writing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except CtlError as exc:
        print(f"warnctl: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return EXIT_FAILED


def _emit(args: argparse.Namespace, body: Any, human: str | None = None) -> None:
    """The API's answer as JSON with --json, else the human line."""
    if args.json:
        print(json.dumps(body, ensure_ascii=False, indent=2))
    elif human is not None:
        print(human)


def _dispatch(args: argparse.Namespace, token: str | None) -> int:
    """Run one subcommand."""
    reads = ("list", "show", "deliveries", "watch", "devices", "report")
    if args.command not in reads and not token:
        raise CtlError("set WARND_TOKEN to an operator token (see `warnd hash-token`)")
    url, wid = args.url, getattr(args, "id", None)
    if args.command in ("issue", "preview"):
        path = "/api/v1/warnings" if args.command == "issue" else "/api/v1/warnings/preview"
        key = args.idempotency_key if args.command == "issue" else None
        if args.file and _read_file(args.file)[1]:
            if args.command == "preview":
                raise CtlError("preview takes JSON or flags; a CAP file is issued as it is")
            cap = _read_file(args.file)[0]
            body = _check(*request(url, "POST", path, token=token, raw=cap, content_type=CAP_TYPE))
        else:
            body = _check(*request(url, "POST", path, warning_from_args(args), token, idempotency_key=key))
        if args.command == "preview":
            _emit(args, body) if args.json else _print_preview(body)
        elif args.json or "id" not in body:
            # --json, or a CAP document of several alerts (its `results` say what each became).
            print(json.dumps(body, ensure_ascii=False, indent=2))
        else:
            print(body["id"] if body.get("created", True) else f"{body['id']} (already accepted)")
            if body.get("state") == "awaiting_approval":
                print(
                    "待审核签发 awaiting approval: nothing is sent until an approver signs it off",
                    file=sys.stderr,
                )
    elif args.command == "list":
        query = f"?state={args.state}" if args.state else ""
        body = _check(*request(url, "GET", f"/api/v1/warnings{query}", token=token))
        if args.json:
            _emit(args, body)
        for w in [] if args.json else body["warnings"]:
            state = STATE_NAMES.get(w["state"], w["state"])
            level = LEVEL_NAMES.get(w["level"], w["level"])
            print(
                f"{w['id']}  {state:<4} {w['state']:<17} [{level}] {drill_mark(w)}{w['event']}  "
                f"{local(w['created_at'])}  {w['headline']}"
            )
    elif args.command == "show":
        body = _check(*request(url, "GET", f"/api/v1/warnings/{wid}", token=token))
        _emit(args, body) if args.json else _print_warning(body)
    elif args.command == "watch":
        return watch(args, token)
    elif args.command == "deliveries":
        body = _check(*request(url, "GET", f"/api/v1/warnings/{wid}/deliveries", token=token))
        _emit(args, body)
        for d in [] if args.json else body["deliveries"]:
            error = d["last_error"] or ""
            print(f"{d['channel']:<12} {d['target']:<24} {d['state']:<12} {d['step']:<8} {error}")
    elif args.command == "devices":
        query = "&".join(f"{k}={getattr(args, k)}" for k in ("state", "village") if getattr(args, k))
        body = _check(*request(url, "GET", "/api/v1/devices" + (f"?{query}" if query else ""), token=token))
        _emit(args, body)
        if not args.json:
            print(f"{'设备 device':<28}{'类型':<6}{'村（社区）':<14}{'状态':<6}最后在线 last seen")
        for d in [] if args.json else body["devices"]:
            kind = "电子屏" if d["kind"] == "led" else "大喇叭"
            state = DEVICE_STATES.get(d["state"], d["state"])
            print(f"{d['id']:<28}{kind:<6}{d['village']:<14}{state:<6}{local(d['last_seen'])}")
    elif args.command == "report":
        path = f"/api/v1/warnings/{wid}/report" + ("?format=csv" if args.csv else "")
        body = _check(*request(url, "GET", path, token=token))
        if args.csv:
            sys.stdout.write(body)
        else:
            _emit(args, body) if args.json else _print_report(body)
    elif args.command == "cancel":
        cancel = {"reason": args.reason, "advice": args.advice}
        body = _check(*request(url, "POST", f"/api/v1/warnings/{wid}/cancel", cancel, token))
        held = body.get("state") == "awaiting_approval"
        _emit(args, body, f"{wid} cancel awaits approval" if held else f"{wid} cancelled")
    elif args.command == "approve":
        body = _check(*request(url, "POST", f"/api/v1/warnings/{wid}/approve", None, token))
        _emit(args, body, f"{wid} approved ({body['released']}): {body['state']}")
    elif args.command == "reject":
        body = _check(*request(url, "POST", f"/api/v1/warnings/{wid}/reject", {"reason": args.reason}, token))
        _emit(args, body, f"{wid} rejected ({body['rejected']}): {body['state']}")
    elif args.command == "update":
        changes = _json_file(args.file) if args.file else {}
        for name in ("level", "headline", "description", "instruction", "onset", "expires"):
            if getattr(args, name):
                changes[name] = getattr(args, name)
        if args.code or args.circle:
            changes["area"] = _area(args)
        if not changes:
            raise CtlError(
                "give --file or at least one of --level --headline --description --instruction "
                "--onset --expires --code --circle"
            )
        body = _check(*request(url, "POST", f"/api/v1/warnings/{wid}/update", changes, token))
        if body.get("state") == "awaiting_approval":
            _emit(args, body, f"{body['id']} update awaits approval")
        else:
            _emit(args, body, f"{body['id']} updated to version {body['version']}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
