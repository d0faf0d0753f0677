"""Control characters in warning text are refused by field, through the real HTTP API (JSON and CAP).

Text goes out as it is to SMS, speech and LED boards: a NUL, an escape sequence or a bidi
override must be a 422 naming the field, never a 202.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest

from tests.support.harness import Harness, warning_body

SENT = datetime.fromisoformat("2026-07-01T08:00:00+08:00")

# (name, body, field the 422 must name). Every text field of the operator warning, each kind of
# refused character at least once.
BAD_WARNINGS: list[tuple[str, dict[str, Any], str]] = [
    ("NUL in headline", warning_body(headline="暴雨\x00红色预警"), "headline"),
    ("newline in headline", warning_body(headline="暴雨\n红色预警"), "headline"),
    ("tab in headline", warning_body(headline="暴雨\t红色预警"), "headline"),
    ("line separator in headline", warning_body(headline="暴雨\u2028红色预警"), "headline"),
    ("escape sequence in headline", warning_body(headline="\x1b[2J暴雨红色预警"), "headline"),
    ("DEL in headline", warning_body(headline="暴雨\x7f红色预警"), "headline"),
    ("C1 CSI in headline", warning_body(headline="暴雨\x9b红色预警"), "headline"),
    ("bidi override in headline", warning_body(headline="暴雨\u202e警预色红"), "headline"),
    ("bidi isolate in headline", warning_body(headline="暴雨\u2066红色预警\u2069"), "headline"),
    ("bell in event", warning_body(event="暴雨\x07"), "event"),
    ("newline in event", warning_body(event="暴\n雨"), "event"),
    ("NUL in description", warning_body(description="预计降雨\x00100毫米"), "description"),
    ("lone CR in description", warning_body(description="第一行\r第二行"), "description"),
    ("form feed in description", warning_body(description="第一页\x0c第二页"), "description"),
    ("bidi embedding in description", warning_body(description="降雨\u202a量"), "description"),
    ("escape in instruction", warning_body(instruction="请转移\x1b]0;x\x07"), "instruction"),
    ("bidi override in instruction", warning_body(instruction="请\u202d转移"), "instruction"),
    ("NEL in instruction", warning_body(instruction="请转移\x85低洼地带"), "instruction"),
    ("newline in sender", warning_body(sender="cma\nfake", identifier="id-1"), "sender"),
    ("NUL in identifier", warning_body(sender="cma", identifier="id\x00-1"), "identifier"),
    ("tab in identifier", warning_body(sender="cma", identifier="id\t1"), "identifier"),
]

BAD_UPDATES: list[tuple[str, dict[str, Any], str]] = [
    ("NUL in headline", {"headline": "升级\x00"}, "headline"),
    ("newline in headline", {"headline": "升级\n为红色"}, "headline"),
    ("escape in description", {"description": "\x1b[31m"}, "description"),
    ("bidi override in instruction", {"instruction": "\u202e移转"}, "instruction"),
]

BAD_CANCELS: list[tuple[str, dict[str, Any], str]] = [
    ("NUL in reason", {"reason": "雨势减弱\x00"}, "reason"),
    ("bidi isolate in reason", {"reason": "\u2067雨势减弱"}, "reason"),
]


async def _post(h: Harness, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """POST a JSON body (non-ASCII as it is, control characters as JSON escapes)."""
    data = json.dumps(body, ensure_ascii=False).encode()
    resp = await h.client.post(path, data=data, headers={**h.headers(), "Content-Type": "application/json"})
    return resp.status, await resp.json()


@pytest.mark.parametrize(("name", "body", "field"), BAD_WARNINGS, ids=[b[0] for b in BAD_WARNINGS])
async def test_control_characters_in_a_warning_are_refused_by_field(
    harness: Harness, name: str, body: dict[str, Any], field: str
) -> None:
    """Each is a 422 naming the field and the character; nothing is stored; a preview refuses it too."""
    status, answer = await _post(harness, "/api/v1/warnings", body)
    assert status == 422, answer
    assert answer["error"]["field"] == field, answer
    assert "U+" in answer["error"]["message"], answer
    status, answer = await _post(harness, "/api/v1/warnings/preview", body)
    assert (status, answer["error"]["field"]) == (422, field), answer
    listing = await harness.client.get("/api/v1/warnings", headers=harness.headers("viewer"))
    assert (await listing.json())["warnings"] == []


async def test_update_and_cancel_bodies_are_checked_too(harness: Harness) -> None:
    """Update and cancel text with control characters is a 422 by field; the warning is unchanged."""
    wid = await harness.issue(warning_body())
    for name, body, field in BAD_UPDATES:
        status, answer = await _post(harness, f"/api/v1/warnings/{wid}/update", body)
        assert (status, answer["error"]["field"]) == (422, field), (name, answer)
    for name, body, field in BAD_CANCELS:
        status, answer = await _post(harness, f"/api/v1/warnings/{wid}/cancel", body)
        assert (status, answer["error"]["field"]) == (422, field), (name, answer)
    w = await harness.get(wid)
    assert (w["version"], w["state"]) == (1, "active")
    assert w["headline"] == warning_body()["headline"]


async def test_after_every_refusal_the_daemon_still_serves(harness: Harness) -> None:
    """All the bad bodies in a row, then good text with what stays allowed goes out."""
    for _, body, _ in BAD_WARNINGS:
        assert (await _post(harness, "/api/v1/warnings", body))[0] == 422
    body = warning_body(
        # Windows line ends become \n; tabs and newlines are layout in multi-line fields; U+FFFD
        # is visible and harmless; surrounding whitespace is trimmed as before.
        description="预计未来3小时:\r\n\t降雨量100毫米以上\r\n\t阵风8级",
        instruction="请立即转移。\n注意安全。",
        headline="塘甸镇暴雨红色预警\ufffd\n",
    )
    wid = await harness.issue(body)
    w = await harness.get(wid)
    assert w["description"] == "预计未来3小时:\n\t降雨量100毫米以上\n\t阵风8级"
    assert w["headline"] == "塘甸镇暴雨红色预警\ufffd"
    await harness.run_until_idle()
    assert (await harness.get(wid))["coverage"]["loudspeaker"]["sent"] == 2
    status, answer = await _post(harness, f"/api/v1/warnings/{wid}/cancel", {"reason": "雨势减弱\r\n已解除"})
    assert status == 202, answer


def _cap(
    headline: str = "暴雨红色预警", description: str = "预计降雨100毫米", sender: str = "33050241600000"
) -> bytes:
    """A CAP 1.2 alert for the test township; text goes in as given (XML escapes included)."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>ctl-1</identifier>'
        f"<sender>{sender}</sender><sent>2026-07-01T08:00:00+08:00</sent><status>Actual</status>"
        "<msgType>Alert</msgType><scope>Public</scope><info><language>zh-CN</language>"
        "<category>Met</category><event>暴雨</event><urgency>Immediate</urgency><severity>Extreme</severity>"
        f"<certainty>Likely</certainty><headline>{headline}</headline>"
        f"<description>{description}</description><area><areaDesc>塘甸镇</areaDesc>"
        "<geocode><valueName>行政区划代码</valueName><value>330502101</value></geocode></area></info></alert>"
    ).encode()


# (name, document, CAP element the 4xx must name). XML cannot carry C0 controls other than tab,
# newline and CR at all (the parser refuses them: 400 at "/"); C1 controls and bidi overrides it can.
BAD_CAP: list[tuple[str, bytes, str]] = [
    ("C1 CSI in headline", _cap(headline="暴雨&#x9b;红色预警"), "/alert/info/headline"),
    ("bidi override in headline", _cap(headline="暴雨\u202e警预色红"), "/alert/info/headline"),
    ("escape-like C1 in description", _cap(description="降雨&#x90;100毫米"), "/alert/info/description"),
    ("lone CR in description", _cap(description="第一行&#13;第二行"), "/alert/info/description"),
    ("bidi isolate in sender", _cap(sender="330502\u206641600000"), "/alert/sender"),
]


@pytest.mark.parametrize(("name", "doc", "path"), BAD_CAP, ids=[b[0] for b in BAD_CAP])
async def test_control_characters_in_cap_are_refused_naming_the_element(
    harness: Harness, name: str, doc: bytes, path: str
) -> None:
    """The same check, through CAP on the warnings endpoint: a 422 whose field is the element path."""
    harness.clock.set(SENT)
    headers = {**harness.headers(), "Content-Type": "application/cap+xml"}
    resp = await harness.client.post("/api/v1/warnings", data=doc, headers=headers)
    answer = await resp.json()
    assert resp.status == 422, answer
    assert answer["error"]["field"] == path, answer
    assert "U+" in answer["error"]["message"], answer
    listing = await harness.client.get("/api/v1/warnings", headers=harness.headers("viewer"))
    assert (await listing.json())["warnings"] == []


async def test_cap_headline_wrapped_over_lines_is_one_line(harness: Harness) -> None:
    """A line break in a CAP headline is layout: it becomes a space; the description keeps its lines."""
    harness.clock.set(SENT)
    doc = _cap(headline="吴兴区气象台发布\n      暴雨红色预警", description="第一行\r\n第二行")
    headers = {**harness.headers(), "Content-Type": "application/cap+xml"}
    resp = await harness.client.post("/api/v1/warnings", data=doc, headers=headers)
    answer = await resp.json()
    assert resp.status == 202, answer
    w = await harness.get(answer["id"])
    assert w["headline"] == "吴兴区气象台发布 暴雨红色预警"
    assert w["description"] == "第一行\n第二行"
