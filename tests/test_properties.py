"""Properties of the parsers hostile input reaches: each raises only its declared error.

- the CAP reader (and its mapping onto a warning): only `CapError`, for arbitrary bytes and text
  and for real documents (tests/data/cap) with bytes or element texts mutated; valid warnings
  written by warnd's CAP writer read back to the same warning;
- the operator's JSON warning (`WarningIn`): only pydantic's `ValidationError`, and through the
  API never a 5xx;
- the MQTT ack parser (`warnd.mqtt.devices.parse_ack`): never raises, refuses with a reason, and
  what it passes on is recorded by the feedback stage without raising.

Examples are derandomized (the same on every run and in CI) and bounded to keep the module
within a few seconds; `HYPOTHESIS_EXAMPLES` raises the bound for a longer local hunt.
"""

from __future__ import annotations

import contextlib
import json
import os
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tests.support.data import DATA
from tests.support.harness import Harness, warning_body
from warnd.cap import CapError, parse_cap, parse_cap_many, to_cap_xml, to_warning_fields
from warnd.feedback import AckReport
from warnd.feeds.ingest import warning_in
from warnd.model import WarningIn
from warnd.mqtt.devices import parse_ack

EXAMPLES = int(os.environ.get("HYPOTHESIS_EXAMPLES", "150"))
# derandomize: a fixed sequence per test, so CI is reproducible; no example database is written.
SETTINGS = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)

REAL_CAP = sorted(p for p in (DATA / "cap").rglob("*") if p.is_file() and p.stat().st_size < 200_000)
REAL_BYTES = [p.read_bytes() for p in REAL_CAP]

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


def read_cap(data: bytes) -> None:
    """Everything warnd does with pushed CAP bytes before the store: parse, map, validate."""
    for alert in parse_cap_many(data):
        fields = to_warning_fields(alert)
        if alert.msg_type in ("Alert", "Update") and fields["level"] is not None:
            warning_in(fields)


def only_cap_error(data: bytes) -> None:
    """Read the bytes; a CapError is the only acceptable failure (with a 4xx status)."""
    try:
        read_cap(data)
    except CapError as exc:
        status = exc.status
    else:
        status = 200
    assert 200 <= status < 500


# -- the CAP reader ---------------------------------------------------------------------------


@SETTINGS
@given(st.binary(max_size=4000))
def test_cap_reader_arbitrary_bytes(data: bytes) -> None:
    """Any bytes at all."""
    only_cap_error(data)


@SETTINGS
@given(
    st.text(max_size=500), st.sampled_from(["UTF-8", "GB2312", "GBK", "GB18030", "Big5", "UTF-16", "x-nope"])
)
def test_cap_reader_arbitrary_text_in_a_declared_encoding(text: str, encoding: str) -> None:
    """XML-looking text behind a declaration, in UTF-8 whatever the declaration says."""
    head = (
        f'<?xml version="1.0" encoding="{encoding}"?>\n<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">'
    )
    only_cap_error((head + text + "</alert>").encode("utf-8", "surrogatepass"))


@st.composite
def mutated_bytes(draw: st.DrawFn) -> bytes:
    """A real CAP document with a few byte-level cuts, insertions and overwrites."""
    data = bytearray(draw(st.sampled_from(REAL_BYTES)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["cut", "insert", "overwrite"]))
        chunk = draw(st.binary(min_size=1, max_size=8))
        if kind == "cut":
            del data[at : at + draw(st.integers(1, 64))]
        elif kind == "insert":
            data[at:at] = chunk
        else:
            data[at : at + len(chunk)] = chunk
    return bytes(data)


@SETTINGS
@given(mutated_bytes())
def test_cap_reader_mutated_real_documents(data: bytes) -> None:
    """Real alerts (eight senders, CAP 1.0-1.2) with their bytes damaged."""
    only_cap_error(data)


# Texts CAP elements really carry, and their near misses: times, numbers, coordinates, codes.
ELEMENT_TEXTS = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "0001-01-01T00:00:00+08:00",
            "9999-12-31T23:59:59-14:00",
            "2026-02-30T08:00:00+08:00",
            "2026-07-01T08:00:00+24:00",
            "2026-07-01T08:00:00",
            "nan",
            "1e999",
            "-0",
            "91,181 5",
            "30.1,120.1 30.2,120.2 30.1,120.1",
            "30,120 -1",
            "330502101201",
            "３３０５０２",
            "Extreme",
            "Update",
            "Cancel",
            "sender,identifier,2026-07-01T08:00:00+08:00",
            "a,b,0001-01-01T00:00:00+08:00",
            "",
            " ",
        ]
    ),
    st.from_regex(r"-?[0-9]{1,3}(\.[0-9]{1,6})?,-?[0-9]{1,3}(\.[0-9]{1,6})?( -?[0-9]{1,4})?", fullmatch=True),
)


@st.composite
def mutated_elements(draw: st.DrawFn) -> bytes:
    """A real CAP document with some elements' text replaced, removed or duplicated."""
    root = ET.fromstring(draw(st.sampled_from(REAL_BYTES)))
    elements = [e for e in root.iter() if len(e) == 0]
    for _ in range(draw(st.integers(1, 5))):
        elem = draw(st.sampled_from(elements))
        elem.text = draw(ELEMENT_TEXTS)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


@SETTINGS
@given(mutated_elements())
def test_cap_reader_mutated_element_texts(data: bytes) -> None:
    """Real alerts whose times, codes, coordinates, severities or references say odd things."""
    only_cap_error(data)


TEXT = (
    st.text(
        # What a warning's text may hold: no control characters but the newline, nothing XML 1.0
        # cannot carry; surrounding whitespace is not kept by the model either.
        alphabet=st.characters(
            blacklist_categories=("Cc", "Cs", "Co", "Cn"), blacklist_characters="\ufffe\uffff"
        )
        | st.just("\n"),
        min_size=1,
        max_size=60,
    )
    .map(str.strip)
    .filter(bool)
)
OFFSETS = st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
TIMES = st.builds(
    lambda s, tz: datetime(2000, 1, 2, tzinfo=UTC).astimezone(tz) + timedelta(seconds=s),
    st.integers(0, 100 * 365 * 86400),
    OFFSETS,
)
LAT = st.floats(-90, 90, allow_nan=False)
LON = st.floats(-180, 180, allow_nan=False)
CODES = st.from_regex(r"[0-9]{6}([0-9]{3}([0-9]{3})?)?", fullmatch=True)


@st.composite
def warnings(draw: st.DrawFn) -> dict[str, Any]:
    """A warning as the API stores it: valid by the model, in any level, status and area."""
    onset = draw(st.none() | TIMES)
    expires = draw(st.none() | TIMES.filter(lambda t: onset is None or t > onset))
    polygon = st.lists(st.tuples(LAT, LON), min_size=3, max_size=6, unique=True).map(
        lambda ps: [list(p) for p in ps]
    )
    area = draw(
        st.fixed_dictionaries(
            {
                "codes": st.lists(CODES, max_size=3, unique=True),
                # The reader takes an area as a union: a repeated polygon or circle reads once.
                "polygons": st.lists(polygon, max_size=2, unique_by=lambda p: tuple(map(tuple, p))),
                "circles": st.lists(
                    st.fixed_dictionaries({"lat": LAT, "lon": LON, "radius_km": st.floats(0, 1000)}),
                    max_size=2,
                    unique_by=lambda c: tuple(c.values()),
                ),
            }
        ).filter(lambda a: a["codes"] or a["polygons"] or a["circles"])
    )
    body = {
        "event": draw(TEXT.filter(lambda t: len(t) <= 64)),
        "level": draw(st.sampled_from(["red", "orange", "yellow", "blue"])),
        "headline": draw(TEXT),
        "description": draw(st.just("") | TEXT),
        "instruction": draw(st.just("") | TEXT),
        "area": area,
        "onset": onset.isoformat() if onset else None,
        "expires": expires.isoformat() if expires else None,
        "status": draw(st.sampled_from(["actual", "exercise", "test"])),
        "sender": "33050241600000",
        "identifier": draw(st.from_regex(r"[A-Za-z0-9_.:-]{1,40}", fullmatch=True)),
    }
    return {**WarningIn.model_validate(body).model_dump(mode="json"), "id": "W1"}


@SETTINGS
@given(warnings(), TIMES)
def test_cap_writer_and_reader_round_trip(w: dict[str, Any], created_at: datetime) -> None:
    """A valid warning written as CAP reads back to the same warning."""
    w = {**w, "created_at": created_at.isoformat()}
    back = to_warning_fields(parse_cap(to_cap_xml(w)))
    for key in ("event", "level", "headline", "status", "sender", "identifier"):
        assert back[key] == w[key], key
    for key in ("description", "instruction"):
        assert (back[key] or "") == w[key], key
    for key in ("onset", "expires"):
        got, sent = back[key], w[key]
        assert (got and datetime.fromisoformat(got)) == (sent and datetime.fromisoformat(sent)), key
    assert back["area"]["codes"] == w["area"]["codes"]
    assert back["area"]["circles"] == w["area"]["circles"]
    closed = [p if p[0] == p[-1] else [*p, p[0]] for p in w["area"]["polygons"]]
    assert back["area"]["polygons"] == closed
    # And it is a warning again, as the feeds take it.
    assert warning_in(back).model_dump(mode="json")["area"] == {**w["area"], "polygons": closed}


# -- the JSON warning -------------------------------------------------------------------------


@st.composite
def near_warnings(draw: st.DrawFn) -> Any:
    """A valid operator body with some fields replaced by any JSON value, or any JSON at all."""
    if draw(st.booleans()):
        return draw(JSON_VALUES)
    body: dict[str, Any] = warning_body(
        onset="2026-07-01T08:00:00+08:00", expires="2026-07-02T08:00:00+08:00"
    )
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from([*body, "area.codes", "area.polygons", "area.circles", "extra"]))
        value = draw(JSON_VALUES | ELEMENT_TEXTS)
        if key.startswith("area."):
            body["area"] = {**body["area"], key[5:]: value} if isinstance(body["area"], dict) else value
        else:
            body[key] = value
    return body


@SETTINGS
@given(near_warnings())
def test_warning_model_raises_only_validation_errors(data: Any) -> None:
    """WarningIn refuses with ValidationError, whatever the JSON."""
    with contextlib.suppress(ValidationError):
        WarningIn.model_validate(data)


@pytest.fixture
async def api(tmp_path: Path) -> Any:
    """One harness for every example of the API property (no rate limit)."""
    h = await Harness(tmp_path, settings={"http": {"port": 0, "rate_limit_per_s": 0}}).start()
    yield h
    await h.close()


@settings(SETTINGS, max_examples=max(EXAMPLES // 2, 20))
@given(near_warnings())
async def test_warning_api_never_answers_5xx(api: Harness, data: Any) -> None:
    """POST /api/v1/warnings and /preview answer 2xx or 4xx with the error shape, never 5xx."""
    for path in ("/api/v1/warnings", "/api/v1/warnings/preview"):
        resp = await api.client.post(
            path, data=json.dumps(data), headers={**api.headers(), "Content-Type": "application/json"}
        )
        assert resp.status < 500, (path, await resp.text())
        if resp.status >= 400:
            assert set((await resp.json())["error"]) >= {"code", "message", "field"}


# -- the MQTT ack parser ----------------------------------------------------------------------

ACK_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "msg_id": JSON_VALUES | st.text(max_size=40),
        "status": JSON_VALUES
        | st.sampled_from(["received", "playing", "played", "shown", "failed", "cancelled"]),
        "at": JSON_VALUES | TIMES.map(datetime.isoformat),
        "detail": JSON_VALUES,
        "v": JSON_VALUES,
    },
)
PAYLOADS = st.one_of(
    st.binary(max_size=300),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    ACK_FIELDS.map(lambda v: json.dumps(v, ensure_ascii=False).encode()),
    st.integers(30, 5000).map(
        lambda n: b'{"msg_id": "m", "status": "played", "detail": ' + b"[" * n + b"]" * n + b"}"
    ),
    st.integers(17 * 1024, 20 * 1024).map(
        lambda n: b'{"msg_id": "m", "status": "played", "detail": "' + b"x" * n + b'"}'
    ),
)


def parsed(device_id: str, payload: bytes) -> AckReport | None:
    """parse_ack's ack as the device hub reports it, None when refused; a raise fails the test."""
    fields, reason = parse_ack(payload)
    if fields is None:
        assert reason, "a refusal names its reason"
        return None
    return AckReport("mqtt", fields["status"], fields["msg_id"], device_id, None, fields["detail"])


@SETTINGS
@given(st.text(max_size=20), PAYLOADS)
def test_ack_parser_never_raises(device_id: str, payload: bytes) -> None:
    """Whatever arrives on an ack topic is an ack or a refusal with a reason."""
    report = parsed(device_id, payload)
    if report is not None:
        assert isinstance(report.msg_id, str) and isinstance(report.status, str)
        assert report.target == device_id


@settings(SETTINGS, max_examples=max(EXAMPLES // 3, 20))
@given(st.lists(PAYLOADS, min_size=1, max_size=10))
async def test_parsed_acks_are_recorded_without_raising(api: Harness, payloads: list[bytes]) -> None:
    """The feedback stage records whatever the parser passes on (unknown ids and statuses too)."""
    device = next(iter(api.daemon.directory().device_kind))
    reports = [r for r in (parsed(device, p) for p in payloads) if r is not None]
    rows = await api.daemon.feedback.ack_many(reports)
    assert len(rows) == len(reports)
