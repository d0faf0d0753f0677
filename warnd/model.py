"""The normalized warning: what every ingest path (operator JSON, CAP, hydrology) becomes."""

from __future__ import annotations

import enum
import hashlib
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator


class Level(enum.StrEnum):
    """The four warning colours, most severe first (红橙黄蓝)."""

    RED = "red"
    ORANGE = "orange"
    YELLOW = "yellow"
    BLUE = "blue"

    @property
    def roman(self) -> str:
        """Level as the documents write it: I (red) … IV (blue)."""
        return _ROMAN[self]

    @property
    def severity_code(self) -> int:
        """GD/J 082 emergency-broadcast severity, 1 (I, red) … 4 (IV, blue)."""
        return _RANK[self] + 1

    @property
    def cap_severity(self) -> str:
        """The CAP 1.2 severity this level corresponds to."""
        return _CAP_SEVERITY[self]

    @property
    def chinese(self) -> str:
        """The colour in Chinese, as SMS texts and the console say it."""
        return _CHINESE[self]

    @property
    def rank(self) -> int:
        """0 for red … 3 for blue: lower is more severe."""
        return _RANK[self]

    @classmethod
    def from_cap_severity(cls, severity: str) -> Level:
        """Map a CAP severity (Extreme/Severe/Moderate/Minor) to a level."""
        for level, sev in _CAP_SEVERITY.items():
            if sev.lower() == severity.strip().lower():
                return level
        raise ValueError(f"CAP severity {severity!r} has no warning level")


_RANK = {Level.RED: 0, Level.ORANGE: 1, Level.YELLOW: 2, Level.BLUE: 3}
_ROMAN = {Level.RED: "I", Level.ORANGE: "II", Level.YELLOW: "III", Level.BLUE: "IV"}
_CAP_SEVERITY = {
    Level.RED: "Extreme",
    Level.ORANGE: "Severe",
    Level.YELLOW: "Moderate",
    Level.BLUE: "Minor",
}
_CHINESE = {Level.RED: "红色", Level.ORANGE: "橙色", Level.YELLOW: "黄色", Level.BLUE: "蓝色"}


class Status(enum.StrEnum):
    """Whether a warning is real. Exercise and test never reach the public."""

    ACTUAL = "actual"
    EXERCISE = "exercise"
    TEST = "test"

    @property
    def drill(self) -> bool:
        """True for exercises and tests: only test devices and recipients get them."""
        return self is not Status.ACTUAL


class State(enum.StrEnum):
    """Lifecycle of a stored warning."""

    ACTIVE = "active"
    UPDATED = "updated"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    # Sign-off (审核签发, warnd.approval): a draft nothing of which is sent yet, and one turned down.
    AWAITING_APPROVAL = "awaiting_approval"
    REJECTED = "rejected"


# Warning states in which a warning is still in force: its deliveries are never given up, its
# repeats and reminders still go out, an update or cancel may still refer to it.
IN_FORCE = (State.ACTIVE.value, State.UPDATED.value)

# Channels that reach a device (acknowledged by the device itself, stopped by a cancel or expiry)
# and channels that reach a person in the directory (by role).
DEVICE_CHANNELS = ("loudspeaker", "led")
PERSON_CHANNELS = ("sms", "voice", "wechat")


# 6-digit county (GB/T 2260), 9-digit township, 12-digit village statistical codes; ASCII digits
# only (a bare \d would also take ١٢٣٤٥٦).
ADMIN_CODE = re.compile(r"^[0-9]{6}([0-9]{3}([0-9]{3})?)?$")


# The years a warning (or a gauge reading) can be about. A time outside them is a typo (0026
# for 2026) or a probe, and year 1 or 9999 would overflow the arithmetic around it (onset - 48 h
# in the planner, the conversion to UTC in the store).
EARLIEST_YEAR, LATEST_YEAR = 2000, 2100


def require_offset(value: datetime | None) -> datetime | None:
    """Refuse naive times (a township server's clock zone is no guess to build on) and absurd years."""
    if value is not None and value.utcoffset() is None:
        raise ValueError("time needs a UTC offset, e.g. 2026-07-01T08:00:00+08:00")
    if value is not None and not EARLIEST_YEAR <= value.year <= LATEST_YEAR:
        raise ValueError(f"time must lie in the years {EARLIEST_YEAR}–{LATEST_YEAR}")
    return value


LatLon = Annotated[
    list[Annotated[float, Field(strict=True)]],
    Field(
        min_length=2,
        max_length=2,
        json_schema_extra={
            "prefixItems": [
                {"type": "number", "minimum": -90, "maximum": 90},
                {"type": "number", "minimum": -180, "maximum": 180},
            ]
        },
    ),
]

# Text that SMS, speech and LED boards carry as it is. Refused in every text field:
# - Unicode category Cc (C0 U+0000–U+001F, DEL, C1 U+0080–U+009F): a NUL ends the string in a
#   vendor's C firmware, ESC and CSI start terminal and board escape sequences, and none of them
#   is anything a reader can see or a voice can say;
# - the bidirectional embeddings, overrides and isolates (U+202A–U+202E, U+2066–U+2069): they
#   make text display in another order than it is stored and read out ("Trojan Source",
#   CVE-2021-42574), so the console and the audit log could show what a loudspeaker does not say.
#   The plain marks U+200E/U+200F stay: they reorder nothing beyond a character.
# Lone surrogates (JSON's "\ud800") never get here: pydantic refuses a str that is not Unicode.
# Kept on purpose: U+FFFD, the replacement character. It is visible, controls nothing, and
# marks a decoding slip upstream; refusing it would drop a red warning over one bad character.
# Multi-line fields (description, instruction, reason) keep \n and \t: LED boards and speech
# fold all whitespace into one space, SMS shows it as layout. \r\n (a browser form, a Windows
# file) becomes \n first; a lone \r is refused with the other controls. One-line fields (event,
# headline, sender, identifier) refuse every line break, U+2028/U+2029 included, and tabs.
_REFUSED_ANYWHERE = "\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069"
_REFUSED = {
    False: re.compile(f"[{_REFUSED_ANYWHERE}\t\n\u2028\u2029]"),
    True: re.compile(f"[{_REFUSED_ANYWHERE}]"),
}


def text_problem(value: str, *, multiline: bool) -> str | None:
    """Why this text cannot go to SMS, speech and LED boards as it is; None when it can."""
    found = _REFUSED[multiline].search(value)
    if found is None:
        return None
    ch = found.group()
    layout = ch in "\t\n\u2028\u2029"
    if ch == "\t":
        what = "a tab"
    elif layout:
        what = "a line break"
    elif ch == "\r":
        what = "a carriage return"
    elif "\u202a" <= ch <= "\u202e" or "\u2066" <= ch <= "\u2069":
        what = "a bidirectional-text control"
    else:
        what = "a control character"
    problem = f"contains {what} (U+{ord(ch):04X}) at character {found.start() + 1}"
    return problem + ("; this field is one line" if layout else "")


def one_line(value: str | None) -> str | None:
    """A one-line text field as it is, or ValueError naming what it must not contain."""
    problem = None if value is None else text_problem(value, multiline=False)
    if problem is not None:
        raise ValueError(problem)
    return value


def multi_line(value: str | None) -> str | None:
    """A multi-line text field as it is, or ValueError naming what it must not contain."""
    problem = None if value is None else text_problem(value, multiline=True)
    if problem is not None:
        raise ValueError(problem)
    return value


def crlf_to_lf(value: Any) -> Any:
    """CRLF line ends as one newline, before a multi-line field is checked."""
    return value.replace("\r\n", "\n") if isinstance(value, str) else value


class Circle(BaseModel):
    """A circle on the map, as CAP writes it (centre and radius in km; 0 is a point)."""

    model_config = ConfigDict(extra="forbid")

    # Strict: JSON `true` is not a coordinate (lax float would take it as 1.0).
    lat: float = Field(ge=-90, le=90, strict=True)
    lon: float = Field(ge=-180, le=180, strict=True)
    # Real alerts (USGS earthquakes, tsunami centres) send radius 0: a point, matched with a
    # small tolerance by the directory (POINT_TOLERANCE_KM).
    radius_km: float = Field(ge=0, le=1000, strict=True)


class Area(BaseModel):
    """Where a warning applies: admin codes, polygons of [lat, lon] and circles."""

    # The document says what _not_empty checks: at least one of the three lists has an item.
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "anyOf": [
                {"required": [name], "properties": {name: {"minItems": 1}}}
                for name in ("codes", "polygons", "circles")
            ]
        },
    )

    # The validators below check codes and rings with messages an operator can act on; the
    # document states the same rules.
    codes: list[str] = Field(
        default_factory=list,
        max_length=10_000,
        json_schema_extra=lambda s: s["items"].update(pattern=ADMIN_CODE.pattern),  # type: ignore[union-attr]  # a list field's "items" is a dict
    )
    polygons: list[list[LatLon]] = Field(
        default_factory=list,
        max_length=100,
        json_schema_extra=lambda s: s["items"].update(minItems=3),  # type: ignore[union-attr]  # a list field's "items" is a dict
    )
    circles: list[Circle] = Field(default_factory=list, max_length=100)

    @field_validator("codes")
    @classmethod
    def _codes_are_admin_codes(cls, codes: list[str]) -> list[str]:
        """Each code is a 6-, 9- or 12-digit 行政区划代码."""
        for code in codes:
            if not ADMIN_CODE.match(code):
                raise ValueError(f"{code!r} is not a 6-, 9- or 12-digit administrative code")
        return codes

    @field_validator("polygons")
    @classmethod
    def _polygons_are_rings(cls, polygons: list[list[list[float]]]) -> list[list[list[float]]]:
        """A polygon needs three distinct corners with valid coordinates."""
        for polygon in polygons:
            if len({tuple(p) for p in polygon}) < 3:
                raise ValueError("a polygon needs at least 3 distinct [lat, lon] points")
            for lat, lon in polygon:
                if not (-90 <= lat <= 90 and -180 <= lon <= 180):
                    raise ValueError(f"[{lat}, {lon}] is not a [lat, lon] point")
        return polygons

    @model_validator(mode="after")
    def _not_empty(self) -> Area:
        """An area must say where: a warning for nowhere reaches nobody."""
        if not (self.codes or self.polygons or self.circles):
            raise ValueError("area needs at least one of codes, polygons or circles")
        return self


class WarningIn(BaseModel):
    """A warning as an operator submits it (docs/architecture.md's JSON contract).

    Args:
        event: hazard type in the operator's words, e.g. 暴雨, 台风.
        level: red/orange/yellow/blue.
        headline: one line, what the warning is.
        description: what is happening.
        instruction: what people should do.
        area: where it applies.
        onset: when the hazard is expected; drives the pre-warning schedule.
        expires: when the warning ends by itself.
        status: actual, exercise or test.
        sender: who issued it upstream; with identifier, de-duplicates.
        identifier: the upstream id.
    """

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    event: str = Field(min_length=1, max_length=64)
    level: Level
    headline: str = Field(min_length=1, max_length=200)
    # Real NWS alerts run to 5,000 characters; upstream text is kept whole.
    description: str = Field(default="", max_length=10_000)
    instruction: str = Field(default="", max_length=4000)
    area: Area
    onset: datetime | None = None
    expires: datetime | None = None
    status: Status = Status.ACTUAL
    sender: str | None = Field(default=None, max_length=256)
    identifier: str | None = Field(default=None, max_length=256, validate_default=True)

    _one_line = field_validator("event", "headline", "sender", "identifier")(one_line)
    _crlf = field_validator("description", "instruction", mode="before")(crlf_to_lf)
    _multi_line = field_validator("description", "instruction")(multi_line)

    @field_validator("onset", "expires")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        """Times must carry an offset."""
        return require_offset(value)

    @field_validator("expires")
    @classmethod
    def _after_onset(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        """Expiry must come after onset."""
        onset = info.data.get("onset")
        if value is not None and onset is not None and onset >= value:
            raise ValueError("expires must be after onset")
        return value

    @field_validator("identifier")
    @classmethod
    def _with_sender(cls, value: str | None, info: ValidationInfo) -> str | None:
        """Sender and identifier come together: together they name an upstream warning."""
        if (value is None) != (info.data.get("sender") is None):
            raise ValueError("sender and identifier must be given together")
        return value


class UpdateIn(BaseModel):
    """An operator's update: any subset of a warning's content fields."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    level: Level | None = None
    headline: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=10_000)
    instruction: str | None = Field(default=None, max_length=4000)
    area: Area | None = None
    onset: datetime | None = None
    expires: datetime | None = None

    _one_line = field_validator("headline")(one_line)
    _crlf = field_validator("description", "instruction", mode="before")(crlf_to_lf)
    _multi_line = field_validator("description", "instruction")(multi_line)

    @field_validator("onset", "expires")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        """Times must carry an offset."""
        return require_offset(value)


class CancelIn(BaseModel):
    """An operator's cancel (解除预警): why, and what people should do now.

    Args:
        reason: why the warning is lifted; said in the all-clear and kept in the audit log.
        advice: what people should do now (已转移人员何时返回 …); default `[messages] all_clear_advice`.
    """

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    reason: str = Field(default="", max_length=500)
    advice: str = Field(default="", max_length=300)

    _crlf = field_validator("reason", mode="before")(crlf_to_lf)
    _multi_line = field_validator("reason")(multi_line)


def fingerprint(w: WarningIn) -> str:
    """sha256 hex of a warning in one canonical form: what an Idempotency-Key was used for.

    The validated model, not the request bytes: key order, JSON whitespace, surrounding blanks,
    CRLF, defaults spelled out or left out and a time's offset (08:00+08:00 is 00:00Z) change
    nothing; any change of content does.
    """
    data = w.model_dump(mode="json")
    for key in ("onset", "expires"):
        value = getattr(w, key)
        data[key] = value.astimezone(UTC).isoformat() if value is not None else None
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def warning_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """The content fields of a stored warning, in docs/architecture.md's JSON contract order."""
    keys = (
        "event",
        "level",
        "headline",
        "description",
        "instruction",
        "area",
        "onset",
        "expires",
        "status",
        "sender",
        "identifier",
    )
    return {k: row.get(k) for k in keys}
