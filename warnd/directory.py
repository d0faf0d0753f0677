"""The directory (应急管理明白卡, digital): villages, their devices, people and work-group robots."""

from __future__ import annotations

import bisect
import contextlib
import gc
import math
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass

from warnd.config import ROLES, ConfigError, Role, _dotted, read_toml
from warnd.model import ADMIN_CODE, Area

if TYPE_CHECKING:
    import numpy as np

EARTH_RADIUS_KM = 6371.0088  # mean Earth radius (IUGG): circles are a few km, the error is metres
# A CAP circle of radius 0 is a point (an epicentre); a village within 0.5 km of it is there.
POINT_TOLERANCE_KM = 0.5


# The records are slotted, frozen pydantic dataclasses rather than BaseModels: a county holds
# 50,000 people, and a BaseModel instance costs ~1,000 bytes beyond its strings (its __dict__
# and a fields-set per instance) where a slotted record costs ~150; validation is ~4× faster too.
RECORD = ConfigDict(extra="forbid")


@dataclass(frozen=True, slots=True, kw_only=True, config=RECORD)
class Village:
    """A 行政村/社区 with its loudspeakers and LED boards."""

    code: str = Field(pattern=r"^\d{12}$")
    name: str = Field(min_length=1)
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    speakers: tuple[str, ...] = ()
    led_boards: tuple[str, ...] = ()
    # A test village (the office's demo speaker) is what drills and tests reach.
    test: bool = False


@dataclass(frozen=True, slots=True, kw_only=True, config=RECORD)
class Person:
    """Someone warnd reaches by phone or WeCom."""

    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    phone: str | None = Field(default=None, pattern=r"^\+[1-9]\d{6,14}$")
    role: Role
    villages: tuple[str, ...] = ()
    wecom_user: str | None = None
    superior: str | None = None
    test: bool = False


@dataclass(frozen=True, slots=True, kw_only=True, config=RECORD)
class WecomRobot:
    """A WeCom group robot; its webhook key lives in the environment variable named here."""

    key_env: str = Field(pattern=r"^[A-Z_][A-Z0-9_]*$")
    name: str = ""
    villages: tuple[str, ...] = ()
    test: bool = False


class DirectoryFile(BaseModel):
    """The shape of directory.toml."""

    model_config = ConfigDict(extra="forbid")

    village: list[Village] = Field(default_factory=list)
    person: list[Person] = Field(default_factory=list)
    wecom_robot: list[WecomRobot] = Field(default_factory=list)

    @field_validator("village")
    @classmethod
    def _unique_codes(cls, villages: list[Village]) -> list[Village]:
        """Village codes and device ids are unique across the file."""
        seen: set[str] = set()
        devices: set[str] = set()
        for v in villages:
            if v.code in seen:
                raise ValueError(f"village code {v.code} appears twice")
            seen.add(v.code)
            for device in (*v.speakers, *v.led_boards):
                if device in devices:
                    raise ValueError(f"device {device!r} is listed twice")
                devices.add(device)
        return villages

    @model_validator(mode="after")
    def _references(self) -> DirectoryFile:
        """People point at villages and superiors that exist (sets: linear in the people)."""
        codes = {v.code for v in self.village}
        ids: set[str] = set()
        for p in self.person:
            if p.id in ids:
                raise ValueError(f"person id {p.id!r} appears twice")
            ids.add(p.id)
        for p in self.person:
            for code in p.villages:
                if code not in codes:
                    raise ValueError(f"person {p.id}: village {code} is not in the directory")
            if p.superior is not None and p.superior not in ids:
                raise ValueError(f"person {p.id}: superior {p.superior!r} is not in the directory")
        for r in self.wecom_robot:
            for code in r.villages:
                if code not in codes:
                    raise ValueError(f"wecom_robot {r.key_env}: village {code} is not in the directory")
        return self


def _message(error: Any) -> str:
    """A validation error's message, worded as the BaseModel records said an unknown key."""
    if error["type"] == "unexpected_keyword_argument":
        return "Extra inputs are not permitted"
    return error["msg"]


def _interned(raw: dict[str, Any]) -> dict[str, Any]:
    """The parsed file with the strings people repeat (village codes, roles, superiors) shared.

    tomllib makes a new string for every occurrence; 50,000 people naming their village, role
    and superior would each hold their own copies (~170 bytes a person). Written out, in place:
    a county's pass took 75 ms as a loop over keys with a new list a person, 55 ms so.
    """
    intern = sys.intern
    for village in raw.get("village", ()):
        if type(village) is dict and type(code := village.get("code")) is str:
            village["code"] = intern(code)
    for person in raw.get("person", ()):
        if type(person) is not dict:
            continue
        if type(role := person.get("role")) is str:
            person["role"] = intern(role)
        if type(superior := person.get("superior")) is str:
            person["superior"] = intern(superior)
        if type(codes := person.get("villages")) is list:
            for i, code in enumerate(codes):
                if type(code) is str:
                    codes[i] = intern(code)
    return raw


# Records validated per call: ~2 ms of GIL each here (a reload beside the loop lets it go
# between chunks), and each chunk's parsed tables freed as its records are made.
CHUNK = 500
_VILLAGES: TypeAdapter[list[Village]] = TypeAdapter(list[Village])
_PEOPLE: TypeAdapter[list[Person]] = TypeAdapter(list[Person])


def _validate_in_chunks(raw: dict[str, Any]) -> None:
    """Replace the raw villages and people by records in place, CHUNK at a time, where valid.

    Each chunk's parsed tables are freed as its records are made, and the records take their
    place in memory: a county's parse (~60 MB) and its records (~23 MB) are not both held at
    the peak. A chunk with a problem stays raw: the whole file's validation then reports it,
    with its place in the file, as a load without chunks would.
    """
    for key, adapter in (("village", _VILLAGES), ("person", _PEOPLE)):
        items = raw.get(key)
        if not isinstance(items, list):
            continue
        for start in range(0, len(items), CHUNK):
            with contextlib.suppress(ValidationError):
                items[start : start + CHUNK] = adapter.validate_python(items[start : start + CHUNK])


class Directory:
    """Lookups over the directory: villages by code prefix, polygon and circle; people by village.

    Args:
        data: the parsed directory file.
    """

    def __init__(self, data: DirectoryFile) -> None:
        """Index villages, devices and people."""
        self.villages: dict[str, Village] = {v.code: v for v in data.village}
        self.people: dict[str, Person] = {p.id: p for p in data.person}
        self.robots: list[WecomRobot] = list(data.wecom_robot)
        self.device_village: dict[str, str] = {}
        self.device_kind: dict[str, str] = {}
        for v in data.village:
            for d in v.speakers:
                self.device_village[d] = v.code
                self.device_kind[d] = "speaker"
            for d in v.led_boards:
                self.device_village[d] = v.code
                self.device_kind[d] = "led"
        self._by_village: dict[str, list[Person]] = defaultdict(list)
        for p in data.person:
            for code in p.villages:
                self._by_village[code].append(p)
        self._codes = list(self.villages)
        self._sorted = sorted(self._codes)
        # Radians, for in_circle: 1,000 haversines in plain Python take ~1 ms.
        self._rad = [(math.radians(v.lat), math.radians(v.lon)) for v in self.villages.values()]
        # For in_polygon, made at its first call (_xy).
        self._xy_arrays: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def load(cls, path: Path, *, beside_loop: bool = False) -> Directory:
        """Read directory.toml; raise ConfigError naming each bad key.

        The records are validated a chunk at a time, each replacing its parsed tables in place
        (`_validate_in_chunks`). `beside_loop`: loaded in a worker thread while the event loop
        runs (a reload). Parsing a county in one compiled call would hold the GIL for a second
        or more, stopping the loop as surely as loading on it; so the file is parsed in pure
        Python, and the GIL is free between chunks.
        """
        # Loading a county allocates a million-odd objects, none of them in a cycle; with the
        # collector on, each full collection on the way walked all of them again (100 ms and
        # more each, the loop stopped, and a third of a county's start-up).
        collecting = gc.isenabled()
        gc.disable()
        try:
            raw = _interned(read_toml(path, "directory.path", beside_loop=beside_loop))
            _validate_in_chunks(raw)
            return cls(DirectoryFile.model_validate(raw))
        except ValidationError as exc:
            problems = [(_dotted(e["loc"]), _message(e)) for e in exc.errors()]
            raise ConfigError(path, problems) from None
        finally:
            # What was made is tracked as young all the same: the first collection after this
            # would walk it all. Frozen, it is never walked; a reload's old directory is still
            # freed by reference counting when dropped (records make no cycles).
            gc.freeze()
            if collecting:
                gc.enable()

    def by_prefix(self, code: str) -> list[str]:
        """Villages whose 12-digit code starts with a county, township or village code."""
        if not ADMIN_CODE.match(code):
            return []
        # Codes sharing a prefix are adjacent once sorted: a warning naming 1,000 villages is
        # 1,000 binary searches, not a million comparisons.
        out = []
        for i in range(bisect.bisect_left(self._sorted, code), len(self._sorted)):
            if not self._sorted[i].startswith(code):
                break
            out.append(self._sorted[i])
        return out

    def _xy(self) -> tuple[np.ndarray, np.ndarray]:
        """The villages' longitudes and latitudes as arrays, made once."""
        if self._xy_arrays is None:
            import numpy as np

            self._xy_arrays = (
                np.array([self.villages[c].lon for c in self._codes], dtype=float),
                np.array([self.villages[c].lat for c in self._codes], dtype=float),
            )
        return self._xy_arrays

    def in_polygon(self, ring: list[list[float]]) -> list[str]:
        """Villages whose coordinates lie inside (or on) a [lat, lon] polygon."""
        if not self._codes:
            return []
        # Imported at the first polygon, not with warnd: shapely and numpy are ~26 MB of a
        # county warnd's resident memory, and warnings by code or circle never need them.
        import shapely

        poly = shapely.Polygon([(lon, lat) for lat, lon in ring])
        if not poly.is_valid:
            poly = poly.buffer(0)  # repairs self-touching rings that real feeds send
        inside = shapely.intersects_xy(poly, *self._xy())
        return [c for c, hit in zip(self._codes, inside, strict=True) if hit]

    def in_circle(self, lat: float, lon: float, radius_km: float) -> list[str]:
        """Villages within radius_km of a point (haversine)."""
        p1, l1 = math.radians(lat), math.radians(lon)
        cos_p1 = math.cos(p1)
        reach = radius_km or POINT_TOLERANCE_KM
        out = []
        for code, (p2, l2) in zip(self._codes, self._rad, strict=True):
            a = math.sin((p2 - p1) / 2) ** 2 + cos_p1 * math.cos(p2) * math.sin((l2 - l1) / 2) ** 2
            if 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(1.0, a))) <= reach:
                out.append(code)
        return out

    def match(self, area: Area) -> list[str]:
        """All villages an area reaches, sorted, each once."""
        hits: set[str] = set()
        for code in area.codes:
            hits.update(self.by_prefix(code))
        for ring in area.polygons:
            hits.update(self.in_polygon(ring))
        for circle in area.circles:
            hits.update(self.in_circle(circle.lat, circle.lon, circle.radius_km))
        return sorted(hits)

    def people_in(self, villages: Iterable[str], roles: Iterable[str] = ROLES) -> list[Person]:
        """People attached to any of these villages with one of these roles, each once."""
        wanted = set(roles)
        seen: dict[str, Person] = {}
        for code in villages:
            for p in self._by_village.get(code, ()):
                if p.role in wanted:
                    seen.setdefault(p.id, p)
        return list(seen.values())

    def robots_for(self, villages: Iterable[str]) -> list[WecomRobot]:
        """Work-group robots that cover any of these villages."""
        codes = set(villages)
        return [r for r in self.robots if codes.intersection(r.villages)]
