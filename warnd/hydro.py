"""Hydrological thresholds: water-level readings become warnings (超警戒水位, 超保证水位).

Readings arrive at `POST /api/v1/hydro/readings` (role operator: a gauge gateway gets an
operator token of its own; the routes are in warnd.api.hydro) or from `[hydro] poll_url`, both in the shape
`{"readings": [{"station", "at", "level_m"}]}` (a single reading object is taken too).

Each reading is checked (`check_reading`: unknown station, no offset, in the future, duplicate,
out of order, outside the station's physical range, a jump faster than `max_jump_m_per_h`) and
stored, accepted or with the reason it was refused. An accepted reading moves the station's
state machine (`decide`, pure):

- at or above `warning_stage` → a `warning_level` warning for the station's villages;
- at or above `guarantee_stage`, or rising at `rise_rate_m_per_h` or faster while at or above
  the warning stage → upgraded to `guarantee_level` / `rise_level` (never downgraded while in
  force: a falling river is still a flood). The rise rate is the least-squares slope of the
  accepted readings of the last `rise_window_min` minutes, and only once they span
  `rise_min_span_min`: one noisy step between two close readings is not a rise, and a rate
  never reaches across a gap longer than the window;
- below `warning_stage - hysteresis_m` for `clear_after_min` of readings' time → cancelled.
  A reading back above that line restarts the wait, so a level hovering at the stage neither
  cancels nor raises again.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any
from zoneinfo import ZoneInfo

import aiohttp
import structlog
from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError, field_validator

from warnd import jsonsafe
from warnd.intake import Actor, InputError
from warnd.model import IN_FORCE, Area, Level, UpdateIn, WarningIn, require_offset
from warnd.store import from_ts

if TYPE_CHECKING:
    from warnd.clock import Clock
    from warnd.config import HydroStation, Settings
    from warnd.intake import Intake
    from warnd.store import Store

log = structlog.get_logger("warnd.hydro")

SENDER = "warnd-hydro"
# A gauge clock a few minutes ahead of ours is normal; further ahead is a broken clock.
FUTURE_TOLERANCE = timedelta(minutes=5)
# One request carries at most a day of 1-minute readings for a handful of stations.
MAX_READINGS = 10_000


class Reading(BaseModel):
    """One water level at one station and time."""

    model_config = ConfigDict(extra="forbid")

    station: str = Field(min_length=1, max_length=64)
    at: datetime
    # Strict: `true` is not a water level.
    level_m: float = Field(strict=True)

    @field_validator("at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        """A reading's time needs its offset."""
        return require_offset(value)  # type: ignore[return-value]  # a datetime in, a datetime out


class Readings(BaseModel):
    """Readings in their wrapper: `{"readings": [...]}`."""

    model_config = ConfigDict(extra="forbid")

    readings: list[Reading] = Field(min_length=1, max_length=MAX_READINGS)


class ReadingsIn(RootModel[Readings | Reading | Annotated[list[Reading], Field(min_length=1)]]):
    """The body of `POST /api/v1/hydro/readings` as documented: wrapped, one reading, or a list.

    `parse_readings` reads it (answering each fault with the field it is in); this model is the
    OpenAPI document's statement of the same shapes.
    """


@dataclass(frozen=True)
class StationState:
    """Where a station's state machine stands.

    Args:
        warning_id: the warning in force for it, if any.
        level: that warning's colour.
        below_since: when the level first fell below the clearing line, while it stays there.
    """

    warning_id: str | None = None
    level: Level | None = None
    below_since: datetime | None = None


@dataclass(frozen=True)
class Decision:
    """What one reading does: `action` is none, raise, upgrade, cancel, arm or disarm; why in `reason`."""

    action: str
    level: Level | None = None
    below_since: datetime | None = None
    reason: str = ""


def check_reading(
    st: HydroStation, reading: Reading, last: tuple[datetime, float] | None, now: datetime
) -> str | None:
    """Why a reading is refused, or None when it is plausible (pure)."""
    if not math.isfinite(reading.level_m):
        return "absurd: level is not a number"
    if reading.at > now + FUTURE_TOLERANCE:
        return "future: reading time is ahead of the clock"
    if reading.level_m < st.min_level_m:
        return f"absurd: level {reading.level_m} m is below {st.min_level_m} m"
    if reading.level_m > st.max_level_m:
        return f"absurd: level {reading.level_m} m is above {st.max_level_m} m"
    if last is not None:
        last_at, last_level = last
        if reading.at == last_at:
            return "duplicate: a reading for this time is already stored"
        if reading.at < last_at:
            return "out_of_order: older than the last accepted reading"
        hours = (reading.at - last_at).total_seconds() / 3600
        rate = abs(reading.level_m - last_level) / hours
        if rate > st.max_jump_m_per_h:
            return f"absurd: changes {rate:.2f} m/h, more than {st.max_jump_m_per_h} m/h"
    return None


def rise_rate(points: Sequence[tuple[datetime, float]], min_span: timedelta) -> float | None:
    """Metres per hour: the least-squares slope of (time, level) points (pure).

    None when the points span less than `min_span`: over a short span a step of gauge noise is
    a steep rate. The caller passes the readings of the station's window.
    """
    if not points:
        return None
    first = min(at for at, _ in points)
    span = max(at for at, _ in points) - first
    if span < min_span or span <= timedelta(0):
        return None
    hours = [(at - first).total_seconds() / 3600 for at, _ in points]
    levels = [level for _, level in points]
    mean_h, mean_level = sum(hours) / len(hours), sum(levels) / len(levels)
    spread = sum((h - mean_h) ** 2 for h in hours)
    return sum((h - mean_h) * (v - mean_level) for h, v in zip(hours, levels, strict=True)) / spread


def decide(
    st: HydroStation, state: StationState, at: datetime, level_m: float, rate: float | None
) -> Decision:
    """The state machine's step for one accepted reading (pure)."""
    wanted: Level | None = None
    reason = ""
    if level_m >= st.guarantee_stage:
        wanted, reason = st.guarantee_level, f"{level_m:.2f} m ≥ guarantee stage {st.guarantee_stage} m"
    elif level_m >= st.warning_stage:
        wanted, reason = st.warning_level, f"{level_m:.2f} m ≥ warning stage {st.warning_stage} m"
    if (
        wanted is not None
        and st.rise_rate_m_per_h is not None
        and rate is not None
        and rate >= st.rise_rate_m_per_h
        and st.rise_level.rank < wanted.rank
    ):
        wanted, reason = st.rise_level, f"rising {rate:.2f} m/h ≥ {st.rise_rate_m_per_h} m/h"
    if state.level is None:
        return Decision("raise", wanted, None, reason) if wanted is not None else Decision("none")
    if wanted is not None and wanted.rank < state.level.rank:
        return Decision("upgrade", wanted, None, reason)
    if level_m < st.warning_stage - st.hysteresis_m:
        since = state.below_since or at
        if at - since >= timedelta(minutes=st.clear_after_min):
            return Decision(
                "cancel", None, None, f"below {st.warning_stage - st.hysteresis_m:.2f} m since {since}"
            )
        return Decision("arm", None, since) if state.below_since is None else Decision("none", None, since)
    if state.below_since is not None:
        return Decision("disarm")
    return Decision("none")


class HydroMonitor:
    """Readings in, warnings out.

    Args:
        settings: warnd's settings (`[hydro]`, the township's zone).
        store: readings and station states.
        clock: the daemon's time.
        intake: where the warnings go.
    """

    def __init__(self, settings: Settings, store: Store, clock: Clock, intake: Intake) -> None:
        """One lock: readings of a station are taken in order."""
        self.settings, self.store, self.clock, self.intake = settings, store, clock, intake
        self._lock = asyncio.Lock()

    def stations(self) -> dict[str, HydroStation]:
        """The configured stations by id."""
        return {s.id: s for s in self.settings.hydro.station}

    # -- store --------------------------------------------------------------------------------

    async def _last(self, station: str) -> tuple[datetime, float] | None:
        """The station's newest accepted reading."""
        return await self.store.last_reading(station)

    async def _window(self, st: HydroStation, at: datetime) -> list[tuple[datetime, float]]:
        """The station's accepted readings of the rise window ending at `at`, oldest first."""
        return await self.store.readings_between(st.id, at - timedelta(minutes=st.rise_window_min), at)

    async def _state(self, station: str) -> StationState:
        """The station's state; a warning an operator cancelled meanwhile is no longer in force."""
        row = await self.store.station_state(station)
        if row is None or row["warning_id"] is None:
            return StationState()
        w = await self.store.get_warning(row["warning_id"])
        if w is None or w["state"] not in IN_FORCE:
            return StationState()
        return StationState(row["warning_id"], Level(w["level"]), from_ts(row["below_since"]))

    async def _save_state(self, station: str, state: StationState) -> None:
        """Write the station's state."""
        await self.store.set_station_state(
            station,
            warning_id=state.warning_id,
            level=state.level.value if state.level else None,
            below_since=state.below_since,
            now=self.clock.now(),
        )

    async def _store_reading(self, reading: Reading, reason: str | None) -> None:
        """Keep a reading, accepted or with the reason it was refused."""
        await self.store.add_reading(
            reading.station,
            reading.at,
            reading.level_m if math.isfinite(reading.level_m) else -1.0,
            accepted=reason is None,
            reason=reason,
            now=self.clock.now(),
        )

    async def readings(self, station: str, limit: int = 1000) -> list[dict[str, Any]]:
        """A station's stored readings, oldest first."""
        return await self.store.hydro_readings(station, limit)

    # -- taking readings ----------------------------------------------------------------------

    async def submit(self, readings: list[Reading], actor: Actor) -> list[dict[str, Any]]:
        """Check, store and act on readings (each station's in time order); one result per reading."""
        stations = self.stations()
        results = []
        async with self._lock:
            for reading in sorted(readings, key=lambda r: (r.station, r.at)):
                st = stations.get(reading.station)
                if st is None:
                    results.append(
                        _result(reading, f"unknown_station: {reading.station!r} is not configured")
                    )
                    continue
                last = await self._last(st.id)
                reason = check_reading(st, reading, last, self.clock.now())
                await self._store_reading(reading, reason)
                if reason is not None:
                    log.warning(
                        "hydro.reading_refused", station=st.id, reason=reason, level_m=reading.level_m
                    )
                    results.append(_result(reading, reason))
                    continue
                window = await self._window(st, reading.at)
                rate = rise_rate(window, timedelta(minutes=st.rise_min_span_min))
                decision = await self._act(st, reading, rate, actor)
                results.append({**_result(reading, None), "action": decision.action})
        return results

    async def _act(self, st: HydroStation, reading: Reading, rate: float | None, actor: Actor) -> Decision:
        """Move the station's state machine by one reading and carry out what it decides."""
        state = await self._state(st.id)
        d = decide(st, state, reading.at, reading.level_m, rate)
        intake = self.intake
        if d.action == "raise":
            assert d.level is not None
            w = self._warning(st, reading, d.level, rate)
            result = await intake.accept(w, actor=actor, source="hydro", require_villages=False)
            state = StationState(result.id, d.level, None)
            log.info(
                "hydro.raised", station=st.id, warning_id=result.id, warning_level=d.level.value, why=d.reason
            )
        elif d.action == "upgrade":
            assert d.level is not None
            assert state.warning_id is not None
            text = self._text(st, reading, d.level, rate)
            await intake.update(state.warning_id, UpdateIn(level=d.level, **text), actor=actor)
            state = StationState(state.warning_id, d.level, None)
            log.info(
                "hydro.upgraded", station=st.id, warning_id=state.warning_id, warning_level=d.level.value
            )
        elif d.action == "cancel":
            assert state.warning_id is not None
            # The all-clear's reason is read by villagers: in their words, not the decision's.
            below = st.warning_stage - st.hysteresis_m
            held = f"并保持{st.clear_after_min:g}分钟" if st.clear_after_min else ""
            reason = f"{st.name}水位已回落到{below:.2f}米以下{held}"
            await intake.cancel(state.warning_id, actor=actor, reason=reason)
            log.info("hydro.cancelled", station=st.id, warning_id=state.warning_id, reason=d.reason)
            state = StationState()
        elif d.action in ("arm", "disarm"):
            state = StationState(state.warning_id, state.level, d.below_since)
        else:
            return d
        await self._save_state(st.id, state)
        return d

    def _text(self, st: HydroStation, reading: Reading, level: Level, rate: float | None) -> dict[str, str]:
        """Headline and description of a station's warning in the township's words."""
        tz = ZoneInfo(self.settings.policy.timezone)
        when = reading.at.astimezone(tz).strftime("%m月%d日%H时%M分")
        if reading.level_m >= st.guarantee_stage:
            what = f"超过保证水位{st.guarantee_stage:.2f}米"
        elif reading.level_m >= st.warning_stage:
            what = f"超过警戒水位{st.warning_stage:.2f}米"
        else:
            what = f"接近警戒水位{st.warning_stage:.2f}米"
        rising = f"，{rate:.2f}米/小时快速上涨" if rate is not None and rate > 0 else ""
        return {
            "headline": f"{st.name}水位{what}（{level.chinese}预警）",
            "description": f"{st.name}水位站{when}实测水位{reading.level_m:.2f}米，{what}{rising}。",
            "instruction": "请沿河、低洼地带人员做好转移准备，远离河道，密切关注水情变化。",
        }

    def _warning(self, st: HydroStation, reading: Reading, level: Level, rate: float | None) -> WarningIn:
        """A new warning for a station's villages."""
        return WarningIn(
            event=st.event,
            level=level,
            area=Area(codes=list(st.villages)),
            sender=SENDER,
            identifier=f"{st.id}_{reading.at.astimezone(ZoneInfo('UTC')):%Y%m%dT%H%M%SZ}",
            **self._text(st, reading, level, rate),
        )

    # -- what the API shows, and polling --------------------------------------------------------

    async def station_views(self) -> list[dict[str, Any]]:
        """Each station's thresholds, last reading and warning (`GET /api/v1/hydro/stations`)."""
        out = []
        for st in self.stations().values():
            last = await self._last(st.id)
            state = await self._state(st.id)
            out.append(
                {
                    "id": st.id,
                    "name": st.name,
                    "warning_stage": st.warning_stage,
                    "guarantee_stage": st.guarantee_stage,
                    "last": {"at": last[0].isoformat(), "level_m": last[1]} if last else None,
                    "warning_id": state.warning_id,
                    "level": state.level.value if state.level else None,
                }
            )
        return out

    async def poll_loop(self) -> None:
        """Fetch `[hydro] poll_url` every poll_interval_s and take its readings."""
        settings = self.settings.hydro
        actor = Actor("hydro:poll", settings.poll_url)
        failures = 0
        while True:
            try:
                timeout = aiohttp.ClientTimeout(total=30)
                async with (
                    aiohttp.ClientSession(timeout=timeout) as session,
                    session.get(settings.poll_url or "") as resp,
                ):
                    resp.raise_for_status()
                    data = jsonsafe.loads(await resp.content.read(4 * 1024 * 1024))
                await self.submit(parse_readings(data), actor)
                failures = 0
            except (aiohttp.ClientError, TimeoutError, ValueError, InputError) as exc:
                failures += 1
                log.warning("hydro.poll_failed", reason=str(exc), failures=failures)
            delay = settings.poll_interval_s * (2 ** min(failures, 4))
            await self.clock.sleep(delay)

    def loops(self) -> list[tuple[str, Any]]:
        """The poll loop, when a URL is configured."""
        if self.settings.hydro.poll_url:
            return [("warnd.hydro.poll", self.poll_loop())]
        return []


def parse_readings(data: Any) -> list[Reading]:
    """Readings from a JSON body: one object, a list, or {"readings": [...]}; InputError 422 if bad."""
    items = data.get("readings", [data]) if isinstance(data, dict) else data
    if isinstance(data, dict) and "readings" in data and len(data) > 1:
        extra = next(k for k in data if k != "readings")
        raise InputError("invalid", "a readings wrapper holds nothing but readings", extra, 422)
    if not isinstance(items, list) or not items:
        raise InputError("invalid", "give a reading or a non-empty list of readings", "readings", 422)
    if len(items) > MAX_READINGS:
        raise InputError("too_many", f"at most {MAX_READINGS} readings per request", "readings", 413)
    out = []
    for i, item in enumerate(items):
        try:
            out.append(Reading.model_validate(item))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise InputError(
                "invalid", first["msg"].removeprefix("Value error, "), f"readings[{i}].{where}".rstrip(".")
            ) from None
    return out


def _result(reading: Reading, reason: str | None) -> dict[str, Any]:
    """One reading's answer."""
    return {
        "station": reading.station,
        "at": reading.at.isoformat(),
        "level_m": reading.level_m,
        "accepted": reason is None,
        "reason": reason,
    }
