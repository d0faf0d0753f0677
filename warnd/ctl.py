"""`warnctl`: issue, preview, list, show, update and cancel warnings through the HTTP API."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8080"


class CtlError(Exception):
    """A failure to report to the user, already worded."""


def request(base: str, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    """One API call; returns (status, decoded JSON)."""
    data = json.dumps(body, ensure_ascii=False).encode() if body is not None else None
    req = urllib.request.Request(base.rstrip("/") + path, data=data, method=method)  # noqa: S310 - the operator's own URL
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, {
                "error": {"code": "http", "message": raw.decode(errors="replace")[:200], "field": None}
            }
    except urllib.error.URLError as exc:
        raise CtlError(f"cannot reach warnd at {base}: {exc.reason}") from None


def _check(status: int, body: Any) -> Any:
    """Raise CtlError with the API's message (naming the field) on a 4xx/5xx."""
    if status >= 400:
        err = (body or {}).get("error", {}) if isinstance(body, dict) else {}
        field = f" [{err['field']}]" if err.get("field") else ""
        raise CtlError(f"HTTP {status} {err.get('code', '')}{field}: {err.get('message', body)}")
    return body


def warning_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """A warning body from --file or from flags."""
    if args.file:
        try:
            with open(args.file, encoding="utf-8") as fh:
                return json.load(fh)
        except (OSError, ValueError) as exc:
            raise CtlError(f"--file {args.file}: {exc}") from None
    missing = [f"--{n}" for n in ("event", "level", "headline") if not getattr(args, n)]
    if missing or not (args.code or args.circle):
        raise CtlError(
            f"give --file, or {' '.join(missing) or ''} and at least one --code or --circle".strip()
        )
    circles = []
    for text in args.circle or ():
        try:
            lat, lon, km = (float(x) for x in text.split(","))
        except ValueError:
            raise CtlError(f"--circle {text!r}: expected LAT,LON,RADIUS_KM") from None
        circles.append({"lat": lat, "lon": lon, "radius_km": km})
    body: dict[str, Any] = {
        "event": args.event,
        "level": args.level,
        "headline": args.headline,
        "description": args.description or "",
        "instruction": args.instruction or "",
        "area": {"codes": args.code or [], "circles": circles},
        "status": args.status,
    }
    for name in ("onset", "expires"):
        if getattr(args, name):
            body[name] = getattr(args, name)
    return body


def drill_mark(w: dict[str, Any]) -> str:
    """【演练 exercise】 / 【演练 test】 for a drill, so no one takes it for a real warning; "" otherwise."""
    status = w.get("status") or "actual"
    return "" if status == "actual" else f"【演练 {status}】"


def _print_warning(w: dict[str, Any]) -> None:
    """A warning for a duty officer's terminal."""
    mark = drill_mark(w)
    print(f"{mark}{w['id']}  [{w['level']}] {w['event']}  {w['state']}  v{w.get('version', 1)}")
    if mark:
        print("  演练：只发往测试村和测试人员，不发给公众")
    print(f"  {w['headline']}")
    if w.get("instruction"):
        print(f"  要求: {w['instruction']}")
    print(f"  villages: {len(w.get('villages', []))}  created: {w.get('created_at')}")
    for step in w.get("schedule", []):
        state = f"({step.get('state')})" + (f"  held: {step['held']}" if step.get("held") else "")
        print(f"  step {step['step']:>7} at {step['at']}  {','.join(step['channels'])}  {state}")
    for channel, c in sorted(w.get("coverage", {}).items()):
        print(
            f"  {channel:<12} expected {c['expected']:>5}  sent {c['sent']:>5}  delivered "
            f"{c['delivered']:>5}  confirmed {c['acknowledged']:>5}  failed {c['failed']:>5}"
        )


_KIND_NAMES = {
    "issue": "发布 issue",
    "reminder": "提醒 reminder",
    "update": "更新 update",
    "upgrade": "升级 upgrade",
    "downgrade": "降级 downgrade",
    "all_clear": "解除 all-clear",
    "escalation_self": "叫应本人 escalation to self",
    "escalation_superior": "叫应上级 escalation to superior",
}


def _print_preview(body: dict[str, Any]) -> None:
    """Villages, schedule, and every message kind's text per channel, as they will be sent."""
    villages = body.get("villages", [])
    print(f"villages ({len(villages)}): " + "、".join(v["name"] for v in villages))
    print("schedule:")
    for s in body.get("schedule", []):
        targets = ", ".join(f"{c} {n}" for c, n in s.get("targets", {}).items()) or "nobody"
        unavailable = s.get("unavailable_channels")
        missing = f"  (unavailable: {', '.join(unavailable)})" if unavailable else ""
        print(f"  {s['at']}  {s['step']:<8} {targets}{missing}")
    for kind, texts in body.get("messages", {}).items():
        print(f"\n=== {_KIND_NAMES.get(kind, kind)} ===")
        for channel, text in texts.items():
            print(f"--- {channel}")
            print(text)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `warnctl` command."""
    parser = argparse.ArgumentParser(prog="warnctl", description="operate warnd over its HTTP API")
    parser.add_argument(
        "--url",
        default=os.environ.get("WARND_URL", DEFAULT_URL),
        help=f"warnd's address (default: $WARND_URL or {DEFAULT_URL})",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("issue", "preview"):
        p = sub.add_parser(name, help=f"{name} a warning from --file or flags")
        p.add_argument("--file", help="JSON body as in docs/architecture.md")
        p.add_argument("--event")
        p.add_argument("--level", choices=["red", "orange", "yellow", "blue"])
        p.add_argument("--headline")
        p.add_argument("--description")
        p.add_argument("--instruction")
        p.add_argument("--code", action="append", help="admin code (repeatable)")
        p.add_argument("--circle", action="append", help="LAT,LON,RADIUS_KM (repeatable)")
        p.add_argument("--onset")
        p.add_argument("--expires")
        p.add_argument("--status", default="actual", choices=["actual", "exercise", "test"])
        p.add_argument("--idempotency-key")
        if name == "preview":
            p.add_argument("--json", action="store_true", help="the API's answer as JSON")
    p = sub.add_parser("list", help="list warnings")
    p.add_argument("--state", choices=["active", "updated", "cancelled", "expired"])
    p = sub.add_parser("show", help="show a warning with its coverage")
    p.add_argument("id")
    p = sub.add_parser("deliveries", help="a warning's deliveries")
    p.add_argument("id")
    p = sub.add_parser("cancel", help="cancel a warning (all-clear)")
    p.add_argument("id")
    p.add_argument("--reason", default="", help="why it is lifted: said in the all-clear")
    p.add_argument(
        "--advice", default="", help="what people should do now (default: [messages] all_clear_advice)"
    )
    p = sub.add_parser("approve", help="sign off (审核签发) a draft or a waiting update or cancel")
    p.add_argument("id")
    p = sub.add_parser("reject", help="reject (驳回) a draft or a waiting update or cancel")
    p.add_argument("id")
    p.add_argument("--reason", required=True, help="why: kept in the audit log")
    p = sub.add_parser("update", help="update a warning from a JSON file of changed fields")
    p.add_argument("id")
    p.add_argument("--file", required=True)
    p = sub.add_parser(
        "simulate-speakers",
        help="simulated village loudspeakers (and LED boards) that play or show and confirm",
    )
    p.add_argument("--village", nargs="+", required=True, metavar="CODE", help="villages to simulate")
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="MQTT broker URL")
    p.add_argument("--directory", default="config/directory.toml", help="directory.toml naming the speakers")
    p.add_argument("--fail-rate", type=float, default=0.0, help="share of plays that fail (0–1)")
    p.add_argument("--delay-ms", type=float, default=0.0, help="time from received to played")
    p.add_argument("--no-led", action="store_true", help="leave the villages' LED boards to real hardware")
    args = parser.parse_args(argv)
    if args.command == "simulate-speakers":
        return _simulate(args)
    token = os.environ.get("WARND_TOKEN")
    try:
        return _dispatch(args, token)
    except CtlError as exc:
        print(f"warnctl: {exc}", file=sys.stderr)
        return 1


def _simulate(args: argparse.Namespace) -> int:
    """Run simulated speakers for the given villages until Ctrl-C."""
    import asyncio
    import contextlib

    from warnd import log
    from warnd.simulator import devices_of, simulate

    try:
        speakers, boards = devices_of(args.directory, args.village)
    except Exception as exc:
        print(f"warnctl: {exc}", file=sys.stderr)
        return 1
    if args.no_led:
        boards = {}
    log.configure("info")
    print(
        f"simulating on {args.broker}: villages {' '.join(args.village)};"
        f" speakers: {len(speakers)}, LED boards: {len(boards)}",
        file=sys.stderr,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            simulate(args.broker, speakers, boards=boards, fail_rate=args.fail_rate, delay_ms=args.delay_ms)
        )
    return 0


def _dispatch(args: argparse.Namespace, token: str | None) -> int:
    """Run one subcommand."""
    if args.command not in ("list", "show", "deliveries") and not token:
        raise CtlError("set WARND_TOKEN to an operator token (see `warnd hash-token`)")
    url = args.url
    if args.command == "issue":
        body = _check(*request(url, "POST", "/api/v1/warnings", warning_from_args(args), token))
        waits = "  待审核签发 awaiting approval: nothing is sent until an approver signs it off"
        note = waits if body.get("state") == "awaiting_approval" else ""
        print((body["id"] if body.get("created", True) else f"{body['id']} (already accepted)") + note)
    elif args.command == "preview":
        body = _check(*request(url, "POST", "/api/v1/warnings/preview", warning_from_args(args), token))
        if args.json:
            print(json.dumps(body, ensure_ascii=False, indent=2))
        else:
            _print_preview(body)
    elif args.command == "list":
        query = f"?state={args.state}" if args.state else ""
        body = _check(*request(url, "GET", f"/api/v1/warnings{query}", token=token))
        for w in body["warnings"]:
            mark = drill_mark(w)
            print(f"{w['id']}  {w['state']:<9} [{w['level']:<6}] {mark}{w['event']}  {w['headline']}")
    elif args.command == "show":
        _print_warning(_check(*request(url, "GET", f"/api/v1/warnings/{args.id}", token=token)))
    elif args.command == "deliveries":
        body = _check(*request(url, "GET", f"/api/v1/warnings/{args.id}/deliveries", token=token))
        for d in body["deliveries"]:
            error = d["last_error"] or ""
            print(f"{d['channel']:<12} {d['target']:<24} {d['state']:<12} {d['step']:<8} {error}")
    elif args.command == "cancel":
        cancel = {"reason": args.reason, "advice": args.advice}
        body = _check(*request(url, "POST", f"/api/v1/warnings/{args.id}/cancel", cancel, token))
        held = body.get("state") == "awaiting_approval"
        print(f"{args.id} cancel awaits approval" if held else f"{args.id} cancelled")
    elif args.command == "approve":
        body = _check(*request(url, "POST", f"/api/v1/warnings/{args.id}/approve", None, token))
        print(f"{args.id} approved ({body['released']}): {body['state']}")
    elif args.command == "reject":
        reject = {"reason": args.reason}
        body = _check(*request(url, "POST", f"/api/v1/warnings/{args.id}/reject", reject, token))
        print(f"{args.id} rejected ({body['rejected']}): {body['state']}")
    elif args.command == "update":
        try:
            with open(args.file, encoding="utf-8") as fh:
                changes = json.load(fh)
        except (OSError, ValueError) as exc:
            raise CtlError(f"--file {args.file}: {exc}") from None
        body = _check(*request(url, "POST", f"/api/v1/warnings/{args.id}/update", changes, token))
        if body.get("state") == "awaiting_approval":
            print(f"{body['id']} update awaits approval")
        else:
            print(f"{body['id']} updated to version {body['version']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
