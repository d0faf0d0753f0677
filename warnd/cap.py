"""CAP reader (1.0, 1.1, 1.2) and CAP 1.2 writer: untrusted XML in, warnd's warning fields out.

Reading is safe by construction: every document goes through defusedxml with DTDs, entity
declarations and external references refused, a size limit checked before parsing and a nesting
limit enforced while parsing. Errors are `CapError`s carrying the element path and the HTTP status
the API answers with (400 not XML or hostile, 413 too large, 422 XML but not valid CAP).

`parse_cap` reads one `<alert>`; `parse_cap_many` also reads the non-standard `<alerts>` wrapper
some national feeds (SMHI) publish. `parse_cap` refuses the wrapper with a 422 that says to use
`parse_cap_many`, rather than silently dropping all but one alert.

XML-DSig signatures (`ds:Signature`) are skipped, not verified: warnd has no trust anchors for
upstream senders; feeds are authenticated by their push token or their TLS endpoint instead.
"""

from __future__ import annotations

import functools
import math
import re

# The stdlib ElementTree only builds and serialises here (the writer, and the tree builder behind
# defusedxml's parser); untrusted bytes are parsed by defusedxml alone.
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

from defusedxml import DTDForbidden, EntitiesForbidden, ExternalReferenceForbidden
from defusedxml.ElementTree import DefusedXMLParser, ParseError

from warnd.model import Level

CAP12_NS = "urn:oasis:names:tc:emergency:cap:1.2"
CAP11_NS = "urn:oasis:names:tc:emergency:cap:1.1"
CAP10_NS = "http://www.incident.com/cap/1.0"
CAP_VERSIONS = {CAP12_NS: "1.2", CAP11_NS: "1.1", CAP10_NS: "1.0"}
DSIG_NS = "http://www.w3.org/2000/09/xmldsig#"

SCHEMA_PATH = Path(__file__).with_name("schema") / "CAP-v1.2.xsd"

# The largest real alert in the test material is 880 KB (one polygon with thousands of vertices);
# IPAWS alerts with embedded audio are ~100 KB. 2 MiB takes all of them and bounds the memory
# one request can cost.
MAX_BYTES = 2 * 1024 * 1024
# CAP nests five deep (alert/info/area/geocode/value), an enveloped signature six; 32 leaves
# room for extensions and still refuses nesting attacks long before they cost anything.
MAX_DEPTH = 32

# geocode valueNames whose values are 行政区划代码 (GB/T 2260 county codes and their 9- and
# 12-digit township and village extensions). Compared case-insensitively.
DEFAULT_GEOCODE_NAMES = ("行政区划代码", "GB2260", "GB/T2260", "admincode", "ADCODE")

# parameter valueNames that carry a warning colour. A sender that states its colour knows better
# than our severity mapping (MeteoAlarm's awareness_level "2; yellow; Moderate", the Icelandic Met
# Office's Color, Mexico's semáforo, Taiwan's alert_color 紅色). Compared case-insensitively.
LEVEL_PARAMETER_NAMES = (
    "color",
    "colour",
    "alert_color",
    "alert_colour",
    "level",
    "awareness_level",
    "warning_level",
    "semáforo",
    "预警颜色",
    "預警顏色",
    "预警级别",
    "預警級別",
)

STATUSES = ("Actual", "Exercise", "System", "Test", "Draft")
MSG_TYPES = ("Alert", "Update", "Cancel", "Ack", "Error")
SCOPES = ("Public", "Restricted", "Private")
CATEGORIES = (
    "Geo", "Met", "Safety", "Security", "Rescue", "Fire",
    "Health", "Env", "Transport", "Infra", "CBRNE", "Other",
)  # fmt: skip
RESPONSE_TYPES = (
    "Shelter", "Evacuate", "Prepare", "Execute", "Avoid",
    "Monitor", "Assess", "AllClear", "None",
)  # fmt: skip
URGENCIES = ("Immediate", "Expected", "Future", "Past", "Unknown")
SEVERITIES = ("Extreme", "Severe", "Moderate", "Minor", "Unknown")
CERTAINTIES = ("Observed", "Likely", "Possible", "Unlikely", "Unknown")

LEVEL_SEVERITY = {level.value: level.cap_severity for level in Level}
_SEVERITY_LEVEL = {severity: level for level, severity in LEVEL_SEVERITY.items()}
_LEVEL_CHINESE = {level.value: level.chinese for level in Level}

# English colour words stand alone ("2; yellow; Moderate", not "bored"); Chinese colour characters
# in simplified and traditional forms (红/紅, 黄/黃, 蓝/藍) need no boundary.
_COLOUR = re.compile(r"(?<![A-Za-z])(?i:red|orange|yellow|blue)(?![A-Za-z])|[红紅橙黄黃蓝藍]")
_COLOUR_LEVEL = {
    "red": "red", "orange": "orange", "yellow": "yellow", "blue": "blue",
    "红": "red", "紅": "red", "橙": "orange", "黄": "yellow", "黃": "yellow",
    "蓝": "blue", "藍": "blue",
}  # fmt: skip

_ADMIN_CODE = re.compile(r"\d{6}(?:\d{3}){0,2}")
# CAP forbids spaces, commas, "<" and "&" in sender and identifier: references are
# whitespace-separated "sender,identifier,sent" triples, so either would make them ambiguous.
_CAP_ID = re.compile(r"[^\s,<&]+")
# CAP 1.2 wants exactly YYYY-MM-DDThh:mm:ss±hh:mm. Feeds also send "Z" and fractions of a second;
# both are unambiguous, so the reader takes them (validate=True holds documents to the schema).
_DATETIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)")
# CAP archives go back to the 2000s; year 1 or 9999 is a typo or a probe, and would overflow
# the conversions to UTC done with these times downstream.
_EARLIEST_YEAR, _LATEST_YEAR = 1970, 2100
# Plain decimals only: float() would also take "nan", "inf" and "1_0".
_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
_POINT = re.compile(rf"({_NUMBER}),({_NUMBER})")
_DECIMAL = re.compile(_NUMBER)
_INTEGER = re.compile(r"\+?\d+")
# Upstream systems in China send GB2312, GBK, GB18030 or Big5, which expat cannot decode (it takes
# only single-byte encodings beyond UTF-8 and UTF-16): Python decodes them. GB2312 and GBK are
# subsets of GB18030 and senders label one as another, so the family is read as GB18030; Big5 is
# read as its Hong Kong superset.
# Keys are names without "-" or "_" (Big5-HKSCS, big5_hkscs), lower case.
_PYTHON_DECODED = {
    "gb2312": "gb18030", "gbk": "gb18030", "gb18030": "gb18030", "cp936": "gb18030",
    "euccn": "gb18030", "big5": "big5hkscs", "big5hkscs": "big5hkscs",
}  # fmt: skip
_DECLARED_ENCODING = re.compile(rb"""^<\?xml[^>]*?\sencoding\s*=\s*["']([A-Za-z][A-Za-z0-9._-]*)["']""")
_BOMS = ((b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))
# Characters XML 1.0 cannot carry at all; the writer drops them rather than emit broken XML.
_XML_ILLEGAL = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class CapError(ValueError):
    """A CAP document refused: what is wrong, where, and the HTTP status to answer with.

    Args:
        message: what is wrong, for an operator; never quotes content the document pulled in
            from elsewhere (there is none: DTDs and entities are refused before expansion).
        path: element path such as ``/alert/info[1]/area[2]/polygon[1]``; ``/`` for the document.
        status: 400 not well-formed or hostile XML, 413 too large, 422 valid XML but not valid CAP.
    """

    def __init__(self, message: str, path: str = "/", status: int = 422) -> None:
        """Keep the three parts apart so the API can put the path in its error's ``field``."""
        super().__init__(message, path, status)
        self.message = message
        self.path = path
        self.status = status

    def __str__(self) -> str:
        """``path: message``, as an operator reads it in a log line or an API error."""
        return f"{self.path}: {self.message}"


class ValuePair(NamedTuple):
    """A CAP valueName/value pair: an eventCode, parameter or geocode."""

    value_name: str
    value: str


class Point(NamedTuple):
    """A WGS 84 point as CAP writes it: latitude first."""

    lat: float
    lon: float


class Circle(NamedTuple):
    """A CAP circle: centre and radius in kilometres (0 for a point)."""

    lat: float
    lon: float
    radius_km: float


@dataclass(frozen=True, slots=True)
class CapReference:
    """One earlier message an Update, Cancel, Ack or Error refers to.

    Args:
        sender: the referenced message's sender.
        identifier: the referenced message's identifier.
        sent: the referenced message's sent time; may differ by a second from the original's
            (12379 does; docs/architecture.md), so match on sender and identifier.
    """

    sender: str
    identifier: str
    sent: datetime

    def __str__(self) -> str:
        """The CAP text form ``sender,identifier,sent``."""
        return f"{self.sender},{self.identifier},{_cap_time(self.sent)}"


@dataclass(frozen=True, slots=True)
class CapResource:
    """A CAP ``<resource>``: a file that goes with the warning (image, audio, map).

    Args:
        resource_desc: what the resource is (``resourceDesc``).
        mime_type: its MIME type (``mimeType``); optional only in CAP 1.0.
        size: its size in bytes.
        uri: where to fetch it.
        deref_uri: the resource itself, base64 (``derefUri``).
        digest: its SHA-1 hex digest.
    """

    resource_desc: str
    mime_type: str | None
    size: int | None = None
    uri: str | None = None
    deref_uri: str | None = None
    digest: str | None = None


@dataclass(frozen=True, slots=True)
class CapArea:
    """A CAP ``<area>``: the union of its polygons, circles and geocodes.

    Args:
        area_desc: the area in words (``areaDesc``), exactly as sent.
        polygons: closed rings of (lat, lon), first point repeated last.
        circles: (lat, lon, radius_km) circles.
        geocodes: (valueName, value) pairs, e.g. ("行政区划代码", "330502101").
        altitude: lower bound in feet above mean sea level.
        ceiling: upper bound in feet above mean sea level.
    """

    area_desc: str
    polygons: tuple[tuple[Point, ...], ...] = ()
    circles: tuple[Circle, ...] = ()
    geocodes: tuple[ValuePair, ...] = ()
    altitude: float | None = None
    ceiling: float | None = None


@dataclass(frozen=True, slots=True)
class CapInfo:
    """A CAP ``<info>``: the warning in one language.

    Free text (event, headline, description, instruction, senderName, contact, audience) is kept
    exactly as sent, line breaks and surrounding whitespace included; code-like fields are
    stripped. Absent optional elements are None.

    Args:
        language: RFC 3066 language tag; CAP's default is en-US.
        categories: one or more of CATEGORIES.
        event: the hazard, e.g. 暴雨.
        response_types: recommended actions, from RESPONSE_TYPES.
        urgency: one of URGENCIES.
        severity: one of SEVERITIES.
        certainty: one of CERTAINTIES (CAP 1.0/1.1 "Very Likely" reads as Likely).
        audience: who the info is for.
        event_codes: (valueName, value) pairs.
        effective: when the info takes effect.
        onset: when the hazard is expected to begin.
        expires: when the info stops applying.
        sender_name: the issuer in words.
        headline: one line.
        description: what is happening.
        instruction: what to do.
        web: a link for more.
        contact: who to ask.
        parameters: (valueName, value) pairs.
        resources: attached files.
        areas: where it applies.
    """

    language: str
    categories: tuple[str, ...]
    event: str
    urgency: str
    severity: str
    certainty: str
    response_types: tuple[str, ...] = ()
    audience: str | None = None
    event_codes: tuple[ValuePair, ...] = ()
    effective: datetime | None = None
    onset: datetime | None = None
    expires: datetime | None = None
    sender_name: str | None = None
    headline: str | None = None
    description: str | None = None
    instruction: str | None = None
    web: str | None = None
    contact: str | None = None
    parameters: tuple[ValuePair, ...] = ()
    resources: tuple[CapResource, ...] = ()
    areas: tuple[CapArea, ...] = ()


@dataclass(frozen=True, slots=True)
class CapAlert:
    """A CAP ``<alert>``: the message envelope and its info blocks.

    Args:
        identifier: the sender's id for this message, e.g. 12379's
            ``ZZZZZZDDDUUUXX_YYYYMMDDhhmmss_N``.
        sender: who sent it.
        sent: when it was sent, timezone-aware.
        status: one of STATUSES.
        msg_type: one of MSG_TYPES.
        scope: one of SCOPES.
        version: the CAP version of the namespace it came in: "1.2", "1.1" or "1.0".
        source: the originating operator or device.
        restriction: who may see a Restricted message.
        addresses: recipients of a Private message, as sent.
        codes: special handling codes.
        note: free text, e.g. the reason for an Error.
        references: the earlier messages this one updates, cancels or answers.
        incidents: related incident ids, as sent.
        infos: the warning in each language, in document order.
    """

    identifier: str
    sender: str
    sent: datetime
    status: str
    msg_type: str
    scope: str
    version: str = "1.2"
    source: str | None = None
    restriction: str | None = None
    addresses: str | None = None
    codes: tuple[str, ...] = ()
    note: str | None = None
    references: tuple[CapReference, ...] = ()
    incidents: str | None = None
    infos: tuple[CapInfo, ...] = ()


# ---------------------------------------------------------------------------------------------
# Safe XML parsing


class _TooDeepError(Exception):
    """Raised inside the parser callback when elements nest past the limit."""

    def __init__(self, path: str) -> None:
        """Remember where the limit was crossed."""
        super().__init__(path)
        self.path = path


class _DepthLimitedBuilder:
    """Parser target that builds the tree and refuses nesting past max_depth as it goes."""

    def __init__(self, max_depth: int) -> None:
        """Wrap a plain TreeBuilder; checking while parsing means no deep tree is ever built."""
        self._builder = ET.TreeBuilder()
        self._stack: list[str] = []
        self._max_depth = max_depth

    def start(self, tag: str, attrs: dict[str, str]) -> ET.Element:
        """Open an element, or stop the parse if it is one level too deep."""
        self._stack.append(_split_tag(tag)[1])
        if len(self._stack) > self._max_depth:
            raise _TooDeepError("/" + "/".join(self._stack))
        return self._builder.start(tag, attrs)

    def end(self, tag: str) -> ET.Element:
        """Close an element."""
        self._stack.pop()
        return self._builder.end(tag)

    def data(self, text: str) -> None:
        """Collect character data."""
        self._builder.data(text)

    def close(self) -> ET.Element:
        """Return the root element."""
        return self._builder.close()


def document_encoding(data: bytes) -> str:
    """The Python codec that reads a document: by its byte-order mark, else its XML declaration."""
    for bom, codec in _BOMS:
        if data.startswith(bom):
            return codec
    match = _DECLARED_ENCODING.match(data[:200])
    if match is None:
        return "utf-8"
    declared = match.group(1).decode("ascii")
    return _PYTHON_DECODED.get(re.sub("[-_]", "", declared.lower()), declared)


def _xml_input(data: bytes) -> bytes | str:
    """What to feed expat: the bytes, or the text when only Python can decode the encoding."""
    codec = document_encoding(data)
    if codec not in _PYTHON_DECODED.values():
        return data  # expat reads UTF-8/16 and single-byte encodings itself
    try:
        # Fed as text, expat takes it as UTF-8 whatever the declaration says.
        return data.decode(codec)
    except UnicodeDecodeError as exc:
        raise CapError(f"byte {exc.start} is not valid in the declared encoding", "encoding") from None


def parse_xml(data: bytes, *, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH) -> ET.Element:
    """Parse untrusted XML safely into an element tree, or raise CapError 400/413 (422 encoding)."""
    if len(data) > max_bytes:
        raise CapError(f"document is {len(data)} bytes; the limit is {max_bytes}", "/", 413)
    text = _xml_input(data)
    parser = DefusedXMLParser(
        target=_DepthLimitedBuilder(max_depth),
        forbid_dtd=True,
        forbid_entities=True,
        forbid_external=True,
    )
    # "from None" everywhere below: the defusedxml exceptions carry system ids (file:///etc/…)
    # that have no business in logs or API answers.
    try:
        parser.feed(text)
        return parser.close()
    except DTDForbidden:
        raise CapError("document type declarations (DTD) are refused", "/", 400) from None
    except EntitiesForbidden:
        raise CapError("entity declarations are refused", "/", 400) from None
    except ExternalReferenceForbidden:
        raise CapError("external references are refused", "/", 400) from None
    except _TooDeepError as exc:
        raise CapError(f"elements nest deeper than {max_depth} levels", exc.path, 400) from None
    except ParseError as exc:
        raise CapError(f"not well-formed XML: {exc}", "/", 400) from None
    except (LookupError, ValueError):
        # Unknown to Python (LookupError), or multi-byte and not one of _PYTHON_DECODED (expat's
        # ValueError): the defused refusals above are ValueErrors too, so this comes last.
        raise CapError(
            f"encoding {document_encoding(data)!r} cannot be read; send UTF-8, GB18030 or Big5", "encoding"
        ) from None


def _split_tag(tag: str) -> tuple[str, str]:
    """Split an ElementTree tag ``{namespace}local`` into (namespace, local)."""
    if tag.startswith("{"):
        namespace, _, local = tag[1:].partition("}")
        return namespace, local
    return "", tag


# ---------------------------------------------------------------------------------------------
# Reading


def parse_cap(
    data: bytes,
    *,
    geocode_names: Sequence[str] = DEFAULT_GEOCODE_NAMES,
    max_bytes: int = MAX_BYTES,
    max_depth: int = MAX_DEPTH,
    validate: bool = False,
) -> CapAlert:
    """Read one CAP 1.2/1.1/1.0 ``<alert>`` from untrusted bytes, or raise CapError.

    geocode_names are the geocode valueNames holding 行政区划代码; such a geocode whose value is
    not a 6-, 9- or 12-digit code is an error, because a mistyped code would silently reach
    nobody. With validate=True a CAP 1.2 document must also pass the OASIS XSD (1.0 and 1.1 have
    other schemas, not shipped; the reader's own checks still apply to them). An ``<alerts>``
    wrapper is refused with a 422 pointing to parse_cap_many.
    """
    root = parse_xml(data, max_bytes=max_bytes, max_depth=max_depth)
    namespace, local = _split_tag(root.tag)
    if local == "alerts" and namespace in CAP_VERSIONS:
        count = sum(1 for child in root if _split_tag(child.tag)[1] == "alert")
        raise CapError(f"an <alerts> wrapper holding {count} alerts; read it with parse_cap_many", "/alerts")
    return _alert_from_element(root, "/alert", geocode_names=geocode_names, validate=validate)


def parse_cap_many(
    data: bytes,
    *,
    geocode_names: Sequence[str] = DEFAULT_GEOCODE_NAMES,
    max_bytes: int = MAX_BYTES,
    max_depth: int = MAX_DEPTH,
    validate: bool = False,
) -> list[CapAlert]:
    """Read a single ``<alert>`` or an ``<alerts>`` wrapper of many; all or nothing."""
    root = parse_xml(data, max_bytes=max_bytes, max_depth=max_depth)
    namespace, local = _split_tag(root.tag)
    if not (local == "alerts" and namespace in CAP_VERSIONS):
        return [_alert_from_element(root, "/alert", geocode_names=geocode_names, validate=validate)]
    alerts: list[CapAlert] = []
    for child in root:
        if _split_tag(child.tag)[1] != "alert":
            continue
        path = f"/alerts/alert[{len(alerts) + 1}]"
        alerts.append(_alert_from_element(child, path, geocode_names=geocode_names, validate=validate))
    return alerts


def _alert_from_element(
    elem: ET.Element, path: str, *, geocode_names: Sequence[str], validate: bool
) -> CapAlert:
    """Check an element is a CAP alert in a known namespace, optionally validate, and read it."""
    namespace, local = _split_tag(elem.tag)
    where = path if local == "alert" else f"/{local}"
    if local != "alert":
        raise CapError(f"root element <{local}> is not a CAP <alert>", where)
    if namespace not in CAP_VERSIONS:
        found = f"namespace {namespace!r}" if namespace else "no namespace"
        raise CapError(f"{found} is not CAP; expected {CAP12_NS} (or CAP 1.1, 1.0)", where)
    version = CAP_VERSIONS[namespace]
    if validate and version == "1.2":
        _raise_first_xsd_error(elem, path)
    return _read_alert(elem, path, namespace, version, frozenset(n.casefold() for n in geocode_names))


class _Fields:
    """The CAP children of one element, read with the element's path for error messages."""

    def __init__(self, elem: ET.Element, path: str, namespace: str, version: str) -> None:
        """Group the children by local name; children of other namespaces are not CAP."""
        self.path = path
        self.namespace = namespace
        self.version = version
        self._groups: dict[str, list[ET.Element]] = {}
        for child in elem:
            child_ns, local = _split_tag(child.tag)
            # ds:Signature and profile extensions live in other namespaces: skipped.
            if child_ns == namespace:
                self._groups.setdefault(local, []).append(child)

    def has(self, name: str) -> bool:
        """Whether the element has a child of this name."""
        return name in self._groups

    def _one(self, name: str, required: bool) -> ET.Element | None:
        """The only child of this name; CAP allows one, so two is an error."""
        elems = self._groups.get(name, [])
        if len(elems) > 1:
            raise CapError(f"appears {len(elems)} times; CAP allows one", f"{self.path}/{name}")
        if not elems:
            if required:
                raise CapError("required element is missing", f"{self.path}/{name}")
            return None
        return elems[0]

    def text(self, name: str, *, required: bool = False) -> str | None:
        """The child's text exactly as sent; None when absent or empty."""
        elem = self._one(name, required)
        if elem is None:
            return None
        return _leaf_text(elem, f"{self.path}/{name}") or None

    def token(self, name: str, *, required: bool = False) -> str | None:
        """The child's text without surrounding whitespace; None when absent or blank."""
        elem = self._one(name, required)
        if elem is None:
            return None
        value = _leaf_text(elem, f"{self.path}/{name}").strip()
        if not value and required:
            raise CapError("required element is empty", f"{self.path}/{name}")
        return value or None

    def enum(self, name: str, allowed: Sequence[str]) -> str:
        """The required child's token, which must be one of allowed (every CAP enum is required)."""
        value = self.token(name, required=not self.has(name)) or ""
        if value not in allowed:
            raise CapError(f"{value!r} is not one of {', '.join(allowed)}", f"{self.path}/{name}")
        return value

    def when(self, name: str) -> datetime | None:
        """The optional child as a timezone-aware datetime."""
        value = self.token(name)
        if value is None:
            return None
        return _parse_datetime(value, f"{self.path}/{name}")

    def required_when(self, name: str) -> datetime:
        """The required child as a timezone-aware datetime."""
        return _parse_datetime(self.token(name, required=True) or "", f"{self.path}/{name}")

    def decimal(self, name: str) -> float | None:
        """The child as a decimal number."""
        value = self.token(name)
        if value is None:
            return None
        if not _DECIMAL.fullmatch(value):
            raise CapError(f"{value!r} is not a decimal number", f"{self.path}/{name}")
        return float(value)

    def each(self, name: str) -> Iterator[tuple[ET.Element, str]]:
        """Every child of this name with its indexed path, e.g. ``/alert/info[2]``."""
        for index, elem in enumerate(self._groups.get(name, []), start=1):
            yield elem, f"{self.path}/{name}[{index}]"

    def tokens(
        self, name: str, allowed: Sequence[str] | None = None, *, required: bool = False
    ) -> tuple[str, ...]:
        """Every child of this name as a stripped token, optionally from an allowed set."""
        values = []
        for elem, path in self.each(name):
            value = _leaf_text(elem, path).strip()
            if allowed is not None and value not in allowed:
                raise CapError(f"{value!r} is not one of {', '.join(allowed)}", path)
            if value:
                values.append(value)
        if required and not values:
            raise CapError("required element is missing", f"{self.path}/{name}")
        return tuple(values)

    def pairs(self, name: str) -> tuple[ValuePair, ...]:
        """Every child of this name as a (valueName, value) pair."""
        return tuple(_read_pair(elem, path, self.namespace, self.version) for elem, path in self.each(name))


def _leaf_text(elem: ET.Element, path: str) -> str:
    """An element's text; CAP text elements hold no child elements."""
    if len(elem):
        child = _split_tag(elem[0].tag)[1]
        raise CapError(f"must hold text only, found element <{child}>", path)
    return elem.text or ""


def _parse_datetime(value: str, path: str) -> datetime:
    """A CAP date-time with its UTC offset, as an aware datetime."""
    if not _DATETIME.fullmatch(value):
        raise CapError(f"{value!r} is not a date-time with a UTC offset like 2026-07-01T08:00:00+08:00", path)
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise CapError(f"{value!r} is not a valid date-time", path) from None
    if not _EARLIEST_YEAR <= when.year <= _LATEST_YEAR:
        raise CapError(f"{value!r} is not in the years {_EARLIEST_YEAR}–{_LATEST_YEAR}", path)
    return when


def _read_pair(elem: ET.Element, path: str, namespace: str, version: str) -> ValuePair:
    """A valueName/value pair; CAP 1.0 also wrote it as the text ``valueName=value``."""
    fields = _Fields(elem, path, namespace, version)
    if version == "1.0" and not fields.has("valueName"):
        text = _leaf_text(elem, path).strip()
        name, sep, value = text.partition("=")
        if not sep or not name.strip():
            raise CapError(f"{text!r} is not valueName=value", path)
        return ValuePair(name.strip(), value.strip())
    token = fields.token("valueName", required=True)
    value = fields.text("value", required=True) or ""
    return ValuePair(token or "", value.strip())


def _read_alert(
    elem: ET.Element, path: str, namespace: str, version: str, geocode_names: frozenset[str]
) -> CapAlert:
    """Read and check an ``<alert>`` element."""
    f = _Fields(elem, path, namespace, version)
    identifier = _cap_id(f.token("identifier", required=True), f"{path}/identifier")
    sender = _cap_id(f.token("sender", required=True), f"{path}/sender")
    sent = f.required_when("sent")
    status = f.enum("status", STATUSES)
    msg_type = f.enum("msgType", MSG_TYPES)
    source = f.text("source")
    scope = f.enum("scope", SCOPES)
    restriction = f.text("restriction")
    addresses = f.token("addresses")
    codes = f.tokens("code")
    note = f.text("note")
    references_text = f.token("references")
    references = _parse_references(references_text or "", f"{path}/references")
    if msg_type in ("Update", "Cancel") and not references:
        raise CapError(
            f"a msgType {msg_type} must name the message(s) it replaces as sender,identifier,sent",
            f"{path}/references",
        )
    incidents = f.token("incidents")
    infos = tuple(
        _read_info(info, info_path, namespace, version, geocode_names) for info, info_path in f.each("info")
    )
    return CapAlert(
        identifier=identifier,
        sender=sender,
        sent=sent,
        status=status,
        msg_type=msg_type,
        scope=scope,
        version=version,
        source=source,
        restriction=restriction,
        addresses=addresses,
        codes=codes,
        note=note,
        references=references,
        incidents=incidents,
        infos=infos,
    )


def _cap_id(value: str | None, path: str) -> str:
    """A sender or identifier: no spaces, commas, '<' or '&', or references cannot name it."""
    if value is None or not _CAP_ID.fullmatch(value):
        raise CapError(f"{value!r} contains a space, comma, '<' or '&'", path)
    return value


def _parse_references(text: str, path: str) -> tuple[CapReference, ...]:
    """Whitespace-separated ``sender,identifier,sent`` triples."""
    references = []
    for triple in text.split():
        parts = triple.split(",")
        if len(parts) != 3 or not parts[0] or not parts[1]:
            raise CapError(f"{triple!r} is not sender,identifier,sent", path)
        references.append(CapReference(parts[0], parts[1], _parse_datetime(parts[2], path)))
    return tuple(references)


def _read_info(
    elem: ET.Element, path: str, namespace: str, version: str, geocode_names: frozenset[str]
) -> CapInfo:
    """Read and check an ``<info>`` element."""
    f = _Fields(elem, path, namespace, version)
    language = f.token("language") or "en-US"
    categories = f.tokens("category", CATEGORIES, required=True)
    event = f.text("event", required=True) or ""
    response_types = f.tokens("responseType", RESPONSE_TYPES)
    urgency = f.enum("urgency", URGENCIES)
    severity = f.enum("severity", SEVERITIES)
    # CAP 1.0's "Very Likely" survives into 1.1 as deprecated, "to be treated as Likely"; 1.2
    # dropped it.
    certainty = f.enum("certainty", CERTAINTIES if version == "1.2" else (*CERTAINTIES, "Very Likely"))
    if certainty == "Very Likely":
        certainty = "Likely"
    audience = f.text("audience")
    event_codes = f.pairs("eventCode")
    effective = f.when("effective")
    onset = f.when("onset")
    expires = f.when("expires")
    return CapInfo(
        language=language,
        categories=categories,
        event=event,
        urgency=urgency,
        severity=severity,
        certainty=certainty,
        response_types=response_types,
        audience=audience,
        event_codes=event_codes,
        effective=effective,
        onset=onset,
        expires=expires,
        sender_name=f.text("senderName"),
        headline=f.text("headline"),
        description=f.text("description"),
        instruction=f.text("instruction"),
        web=f.token("web"),
        contact=f.text("contact"),
        parameters=f.pairs("parameter"),
        resources=tuple(_read_resource(e, p, namespace, version) for e, p in f.each("resource")),
        areas=tuple(_read_area(e, p, namespace, version, geocode_names) for e, p in f.each("area")),
    )


def _read_resource(elem: ET.Element, path: str, namespace: str, version: str) -> CapResource:
    """Read and check a ``<resource>`` element."""
    f = _Fields(elem, path, namespace, version)
    resource_desc = f.text("resourceDesc", required=True) or ""
    mime_type = f.token("mimeType", required=version != "1.0")
    size_text = f.token("size")
    if size_text is not None and not _INTEGER.fullmatch(size_text):
        raise CapError(f"{size_text!r} is not a whole number of bytes", f"{path}/size")
    return CapResource(
        resource_desc=resource_desc,
        mime_type=mime_type,
        size=int(size_text) if size_text is not None else None,
        uri=f.token("uri"),
        deref_uri=f.token("derefUri"),
        digest=f.token("digest"),
    )


def _read_area(
    elem: ET.Element, path: str, namespace: str, version: str, geocode_names: frozenset[str]
) -> CapArea:
    """Read and check an ``<area>`` element."""
    f = _Fields(elem, path, namespace, version)
    area_desc = f.text("areaDesc", required=True) or ""
    polygons = []
    for polygon_elem, polygon_path in f.each("polygon"):
        polygon = _parse_polygon(_leaf_text(polygon_elem, polygon_path), polygon_path)
        if polygon:
            polygons.append(polygon)
    circles = []
    for circle_elem, circle_path in f.each("circle"):
        circle = _parse_circle(_leaf_text(circle_elem, circle_path), circle_path)
        if circle:
            circles.append(circle)
    geocodes = []
    for geocode_elem, geocode_path in f.each("geocode"):
        pair = _read_pair(geocode_elem, geocode_path, namespace, version)
        if pair.value_name.casefold() in geocode_names and not _ADMIN_CODE.fullmatch(pair.value):
            raise CapError(
                f"{pair.value!r} is not a 6-, 9- or 12-digit 行政区划代码 ({pair.value_name})",
                geocode_path,
            )
        geocodes.append(pair)
    return CapArea(
        area_desc=area_desc,
        polygons=tuple(polygons),
        circles=tuple(circles),
        geocodes=tuple(geocodes),
        altitude=f.decimal("altitude"),
        ceiling=f.decimal("ceiling"),
    )


def _parse_point(token: str, path: str) -> Point:
    """A ``lat,lon`` pair in range."""
    match = _POINT.fullmatch(token)
    if not match:
        raise CapError(f"{token!r} is not a lat,lon pair", path)
    lat, lon = float(match[1]), float(match[2])
    if not -90 <= lat <= 90:
        raise CapError(f"latitude {lat} in {token!r} is outside -90..90", path)
    if not -180 <= lon <= 180:
        raise CapError(f"longitude {lon} in {token!r} is outside -180..180", path)
    return Point(lat, lon)


def _parse_polygon(text: str, path: str) -> tuple[Point, ...] | None:
    """A closed ring of at least four ``lat,lon`` points; None for an empty element."""
    tokens = text.split()
    if not tokens:
        # NWS feeds send <polygon></polygon> when the area is given by geocodes only.
        return None
    points = tuple(_parse_point(token, path) for token in tokens)
    if len(points) < 4:
        raise CapError(f"a polygon needs at least 4 points, the first repeated last; got {len(points)}", path)
    if points[0] != points[-1]:
        raise CapError(f"polygon is not closed: starts at {tokens[0]}, ends at {tokens[-1]}", path)
    return points


def _parse_circle(text: str, path: str) -> Circle | None:
    """A ``lat,lon radius_km`` circle; None for an empty element."""
    tokens = text.split()
    if not tokens:
        return None
    if len(tokens) != 2 or not _DECIMAL.fullmatch(tokens[1]):
        raise CapError(f"{text.strip()!r} is not 'lat,lon radius_km'", path)
    centre = _parse_point(tokens[0], path)
    radius_km = float(tokens[1])
    if radius_km < 0:
        raise CapError(f"radius {tokens[1]} km is negative", path)
    return Circle(centre.lat, centre.lon, radius_km)


# ---------------------------------------------------------------------------------------------
# XSD validation


@functools.cache
def _cap12_schema() -> Any:
    """The OASIS CAP 1.2 schema, built once: building takes a fifth of a second."""
    # Imported here: only validating callers pay for xmlschema's import.
    import xmlschema

    # allow="local": neither the schema nor an instance's location hints may reach the network;
    # the xmldsig schema that signatures are checked against ships inside xmlschema.
    return xmlschema.XMLSchema(str(SCHEMA_PATH), allow="local")


def validate_cap_xsd(data: bytes) -> None:
    """Check a CAP 1.2 ``<alert>`` document against the OASIS XSD; raise CapError 422 if not.

    The document is parsed safely first (so hostile input is a 400 here too). Validation is
    strict, enveloped ``ds:Signature`` included: xmlschema checks it against the XML-DSig schema,
    which some real feeds fail (NAADS puts a space in the signature's Id).
    """
    root = parse_xml(data)
    namespace, local = _split_tag(root.tag)
    if (namespace, local) != (CAP12_NS, "alert"):
        # The schema would also accept other elements it knows (an XSD document is "valid"
        # against the meta-schema), so the root is checked here.
        name = f"{{{namespace}}}{local}" if namespace else local
        raise CapError(f"root element {name} is not a CAP 1.2 <alert>", f"/{local}")
    _raise_first_xsd_error(root, "/alert")


def _raise_first_xsd_error(elem: ET.Element, path: str) -> None:
    """Raise the schema's first complaint about an alert element as a CapError 422."""
    for error in _cap12_schema().iter_errors(elem, use_location_hints=False):
        where = _readable_names(error.path or "/alert")
        # Errors come relative to the alert element; a wrapped alert lives at path instead.
        if where.startswith("/alert"):
            where = path + where[len("/alert") :]
        raise CapError(f"schema: {_readable_names(error.reason or str(error))}", where)


def _readable_names(text: str) -> str:
    """Drop the CAP namespace from names in schema messages; show XML-DSig as ``ds:``."""
    return text.replace(f"{{{CAP12_NS}}}", "").replace(f"{{{DSIG_NS}}}", "ds:").replace("'cap:", "'")


# ---------------------------------------------------------------------------------------------
# Mapping to warnd's warning


def choose_info(infos: Sequence[CapInfo], prefer_languages: Sequence[str]) -> CapInfo | None:
    """The info block to act on: exact preferred language, then same primary one, then first."""
    if not infos:
        return None
    for preferred in prefer_languages:
        for info in infos:
            if info.language.casefold() == preferred.casefold():
                return info
    for preferred in prefer_languages:
        primary = preferred.split("-")[0].casefold()
        for info in infos:
            if info.language.split("-")[0].casefold() == primary:
                return info
    return infos[0]


def info_level(info: CapInfo) -> tuple[str, str]:
    """An info's warning colour and where it came from: "parameter", "severity" or "default"."""
    for name, value in info.parameters:
        if name.strip().casefold() in _LEVEL_NAMES:
            match = _COLOUR.search(value)
            if match:
                return _COLOUR_LEVEL[match.group(0).lower()], "parameter"
    if info.severity in _SEVERITY_LEVEL:
        return _SEVERITY_LEVEL[info.severity], "severity"
    # Severity Unknown and no colour: the mildest level, flagged so an operator can raise it.
    return "blue", "default"


_LEVEL_NAMES = frozenset(name.casefold() for name in LEVEL_PARAMETER_NAMES)


def to_warning_fields(
    alert: CapAlert,
    *,
    prefer_languages: Sequence[str] = ("zh-CN", "zh"),
    geocode_names: Sequence[str] = DEFAULT_GEOCODE_NAMES,
) -> dict[str, Any]:
    """Map a CAP alert onto warnd's warning fields (docs/architecture.md's operator JSON, plus CAP extras).

    The info block is chosen by language (see choose_info); the others' texts go to
    ``languages`` so nothing is lost. The area is the union of every info block's areas (blocks
    in other languages repeat the same area; blocks in the same language may add some), without
    duplicates. Free text loses only its surrounding whitespace: indentation around text in a
    pretty-printed document is layout, and would be read out by loudspeakers. In the one-line
    fields (event, headline) a line break or tab is layout too, from a document wrapped to a width:
    it becomes one space, where an operator's JSON gets a 422 (warnd.model.text_problem) — an
    upstream warning is not refused for how its text was wrapped.

    A Cancel, Ack or Error without info maps with event, level, texts and times None. An Alert or
    Update without info carries no warning and raises CapError 422.
    """
    info = choose_info(alert.infos, prefer_languages)
    if info is None and alert.msg_type in ("Alert", "Update"):
        raise CapError(f"a msgType {alert.msg_type} without <info> carries no warning", "/alert/info")
    names = frozenset(name.casefold() for name in geocode_names)
    level, level_source = info_level(info) if info else (None, None)
    ordered = [info, *(i for i in alert.infos if i is not info)] if info else []
    return {
        "event": _one_line(info.event) if info else None,
        "level": level,
        "headline": _one_line(info.headline) if info else None,
        "description": _clean(info.description) if info else None,
        "instruction": _clean(info.instruction) if info else None,
        "area": _area_fields(ordered, names),
        "onset": _iso(info.onset) if info else None,
        "expires": _iso(info.expires) if info else None,
        "status": alert.status.lower(),
        "sender": alert.sender,
        "identifier": alert.identifier,
        "msg_type": alert.msg_type.lower(),
        "references": [
            {"sender": r.sender, "identifier": r.identifier, "sent": _iso(r.sent)} for r in alert.references
        ],
        "sent": _iso(alert.sent),
        # CAP: "if this item is not included, the effective time SHALL be assumed to be the same
        # as in <sent>".
        "effective": _iso(info.effective or alert.sent) if info else None,
        "level_source": level_source,
        "cap_severity": info.severity if info else None,
        "cap_urgency": info.urgency if info else None,
        "cap_certainty": info.certainty if info else None,
        "categories": list(info.categories) if info else [],
        "area_desc": _clean("; ".join(a.area_desc.strip() for a in info.areas)) if info else None,
        "languages": [
            {
                "language": other.language,
                "event": _clean(other.event),
                "headline": _clean(other.headline),
                "description": _clean(other.description),
                "instruction": _clean(other.instruction),
            }
            for other in ordered[1:]
        ],
    }


def _area_fields(infos: Sequence[CapInfo], geocode_names: frozenset[str]) -> dict[str, Any]:
    """Admin codes, polygons and circles of the given infos' areas, in order, without repeats."""
    codes: list[str] = []
    polygons: list[list[list[float]]] = []
    circles: list[dict[str, float]] = []
    for info in infos:
        for area in info.areas:
            for name, value in area.geocodes:
                if name.casefold() in geocode_names and _ADMIN_CODE.fullmatch(value) and value not in codes:
                    codes.append(value)
            for polygon in area.polygons:
                ring = [[p.lat, p.lon] for p in polygon]
                if ring not in polygons:
                    polygons.append(ring)
            for c in area.circles:
                circle = {"lat": c.lat, "lon": c.lon, "radius_km": c.radius_km}
                if circle not in circles:
                    circles.append(circle)
    return {"codes": codes, "polygons": polygons, "circles": circles}


def _clean(text: str | None) -> str | None:
    """Free text without surrounding whitespace; None when nothing is left."""
    if text is None:
        return None
    return text.strip() or None


# A run of spaces holding a line break or tab: XML layout (\r\n arrives as \n from the parser).
_WRAP = re.compile(r"[ \t\n\r]*[\t\n\r][ \t\n\r]*")


def _one_line(text: str | None) -> str | None:
    """A one-line field's text with its wrapping undone (one space per break); None when empty."""
    return _clean(_WRAP.sub(" ", text)) if text is not None else None


def _iso(value: datetime | None) -> str | None:
    """ISO 8601 with offset, e.g. 2026-07-01T08:00:00+08:00."""
    return value.isoformat() if value is not None else None


# ---------------------------------------------------------------------------------------------
# Writing


def to_cap_xml(
    w: Mapping[str, Any],
    *,
    sender_default: str = "warnd@localhost",
    now: datetime | None = None,
) -> bytes:
    """A warning (docs/architecture.md's GET /api/v1/warnings/{id} shape) as a CAP 1.2 document, UTF-8.

    One zh-CN info: severity from the level, a 预警颜色 parameter carrying the colour so a reader
    maps the level back exactly, urgency Expected when onset is after ``now`` (default: the
    warning's created_at) and Immediate otherwise, certainty Likely, category Met unless the
    warning names its categories. One area: 行政区划代码 geocodes, polygons (closed if the
    warning's ring was open) and circles. ``msg_type`` "update" or "cancel" needs ``references``
    (every earlier message of the chain) and ``sent`` (when this message was made). A warning in
    state cancelled given without them becomes msgType Cancel referencing its ``sent`` message
    only. Raises ValueError for a warning that cannot be written as valid CAP.
    """
    created_at = _as_datetime(w.get("created_at"), "created_at")
    original_sent = _as_datetime(w.get("sent"), "sent") or created_at
    now = now or created_at or original_sent
    if now is None:
        raise ValueError("pass now= or give the warning a created_at")
    _as_datetime(now, "now")  # refuses a naive now
    level = w.get("level")
    if level not in LEVEL_SEVERITY:
        raise ValueError(f"level {level!r} is not one of {', '.join(LEVEL_SEVERITY)}")
    event = (w.get("event") or "").strip()
    if not event:
        raise ValueError("a warning needs an event")
    status = (w.get("status") or "actual").lower()
    if status.capitalize() not in STATUSES:
        raise ValueError(f"status {status!r} is not one of {', '.join(s.lower() for s in STATUSES)}")

    sender = w.get("sender") or sender_default
    identifier = w.get("identifier") or (f"warnd-{w['id']}" if w.get("id") is not None else None)
    if not identifier:
        raise ValueError("a warning needs an identifier or an id")
    references = [_reference_from(r) for r in w.get("references") or ()]
    msg_type = (w.get("msg_type") or "alert").capitalize()
    sent = original_sent or now
    if w.get("state") == "cancelled" and msg_type != "Cancel":
        # The cancel is a new message about the original: it names it in references and carries
        # its own identifier, sent when the cancel is written.
        original = CapReference(sender, identifier, original_sent or now)
        if original not in references:
            references.append(original)
        msg_type, identifier, sent = "Cancel", f"{identifier}_cancel", now
    if msg_type not in MSG_TYPES:
        raise ValueError(f"msg_type {w.get('msg_type')!r} is not one of {', '.join(MSG_TYPES)}")
    if msg_type in ("Update", "Cancel") and not references:
        raise ValueError(f"a {msg_type.lower()} needs references to the message(s) it replaces")
    for name, value in (("sender", sender), ("identifier", identifier)):
        if not _CAP_ID.fullmatch(value):
            raise ValueError(f"{name} {value!r} may not contain spaces, commas, '<' or '&'")

    ns = f"{{{CAP12_NS}}}"
    alert = ET.Element(f"{ns}alert")
    _sub(alert, "identifier", identifier)
    _sub(alert, "sender", sender)
    _sub(alert, "sent", _cap_time(sent))
    _sub(alert, "status", status.capitalize())
    _sub(alert, "msgType", msg_type)
    _sub(alert, "scope", "Public")
    if references:
        _sub(alert, "references", " ".join(str(r) for r in references))
    alert.append(_info_element(w, level, now))
    ET.indent(alert, space="  ")
    return ET.tostring(alert, encoding="utf-8", xml_declaration=True, default_namespace=CAP12_NS)


def _info_element(w: Mapping[str, Any], level: str, now: datetime) -> ET.Element:
    """The warning's one zh-CN ``<info>``, children in the schema's order."""
    ns = f"{{{CAP12_NS}}}"
    onset = _as_datetime(w.get("onset"), "onset")
    expires = _as_datetime(w.get("expires"), "expires")
    categories = w.get("categories") or w.get("category") or ["Met"]
    if isinstance(categories, str):
        categories = [categories]
    info = ET.Element(f"{ns}info")
    _sub(info, "language", "zh-CN")
    for category in categories:
        if category not in CATEGORIES:
            raise ValueError(f"category {category!r} is not one of {', '.join(CATEGORIES)}")
        _sub(info, "category", category)
    _sub(info, "event", w["event"].strip())
    if w.get("state") == "cancelled":
        _sub(info, "responseType", "AllClear")
    _sub(info, "urgency", "Expected" if onset is not None and onset > now else "Immediate")
    _sub(info, "severity", LEVEL_SEVERITY[level])
    _sub(info, "certainty", "Likely")
    if onset is not None:
        _sub(info, "onset", _cap_time(onset))
    if expires is not None:
        _sub(info, "expires", _cap_time(expires))
    for name in ("headline", "description", "instruction"):
        if w.get(name):
            _sub(info, name, w[name])
    _pair(info, "parameter", "预警颜色", _LEVEL_CHINESE[level])
    area = _area_element(w)
    if area is not None:
        info.append(area)
    return info


def _area_element(w: Mapping[str, Any]) -> ET.Element | None:
    """The warning's area as one CAP ``<area>`` (CAP reads it as the union of its parts)."""
    ns = f"{{{CAP12_NS}}}"
    area_fields = w.get("area") or {}
    codes = list(area_fields.get("codes") or ())
    polygons = list(area_fields.get("polygons") or ())
    circles = list(area_fields.get("circles") or ())
    if not (codes or polygons or circles or w.get("area_desc")):
        return None
    area = ET.Element(f"{ns}area")
    _sub(area, "areaDesc", w.get("area_desc") or "、".join(codes) or "预警区域")
    for polygon in polygons:
        ring = [(float(lat), float(lon)) for lat, lon in polygon]
        if ring and ring[0] != ring[-1]:
            ring.append(ring[0])
        if len(set(ring)) < 3:
            raise ValueError(f"polygon {polygon!r} needs at least 3 distinct points")
        for lat, lon in ring:
            _check_point(lat, lon)
        _sub(area, "polygon", " ".join(f"{_num(lat)},{_num(lon)}" for lat, lon in ring))
    for circle in circles:
        lat, lon, radius = float(circle["lat"]), float(circle["lon"]), float(circle["radius_km"])
        _check_point(lat, lon)
        if not (math.isfinite(radius) and radius >= 0):
            raise ValueError(f"circle radius {radius!r} km is not a distance")
        _sub(area, "circle", f"{_num(lat)},{_num(lon)} {_num(radius)}")
    for code in codes:
        if not _ADMIN_CODE.fullmatch(str(code)):
            raise ValueError(f"{code!r} is not a 6-, 9- or 12-digit 行政区划代码")
        _pair(area, "geocode", DEFAULT_GEOCODE_NAMES[0], str(code))
    return area


def _check_point(lat: float, lon: float) -> None:
    """Refuse a point the reader would refuse."""
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise ValueError(f"[{lat}, {lon}] is not a [lat, lon] point")


def _sub(parent: ET.Element, name: str, text: str) -> ET.Element:
    """Append a CAP child element with text, dropping characters XML cannot carry."""
    child = ET.SubElement(parent, f"{{{CAP12_NS}}}{name}")
    child.text = _XML_ILLEGAL.sub("", str(text))
    return child


def _pair(parent: ET.Element, name: str, value_name: str, value: str) -> None:
    """Append a valueName/value element (parameter, geocode)."""
    elem = ET.SubElement(parent, f"{{{CAP12_NS}}}{name}")
    _sub(elem, "valueName", value_name)
    _sub(elem, "value", value)


def _num(value: float) -> str:
    """A coordinate as plain decimal text that reads back to the same float."""
    text = repr(float(value))
    if "e" in text or "E" in text:
        # repr switches to exponent form below 1e-4; CAP wants plain decimals. The digits of
        # repr, laid out without an exponent, read back to the same float (a fixed 12 places
        # did not: 5.960464477539063e-08 came back as 5.9605e-08).
        text = format(Decimal(text), "f")
    return text


def _cap_time(value: datetime) -> str:
    """CAP's date-time form: seconds, with offset (2026-07-01T08:00:00+08:00)."""
    return value.isoformat(timespec="seconds")


def _as_datetime(value: Any, name: str) -> datetime | None:
    """A datetime or ISO 8601 string as an aware datetime; None stays None."""
    if value is None or value == "":
        return None
    when = datetime.fromisoformat(value) if isinstance(value, str) else value
    if not isinstance(when, datetime) or when.utcoffset() is None:
        raise ValueError(f"{name} {value!r} needs a UTC offset, e.g. 2026-07-01T08:00:00+08:00")
    return when


def _reference_from(ref: Mapping[str, Any] | CapReference) -> CapReference:
    """A reference given as CapReference or {"sender", "identifier", "sent"}."""
    if isinstance(ref, CapReference):
        return ref
    sent = _as_datetime(ref.get("sent"), "references[].sent")
    if sent is None:
        raise ValueError("a reference needs its sent time")
    return CapReference(str(ref["sender"]), str(ref["identifier"]), sent)
