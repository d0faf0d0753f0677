"""Settings: one TOML file, overridden by WARND_* environment variables (pydantic-settings)."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable
from datetime import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from warnd.model import Level

DEFAULT_CONFIG = Path("/etc/warnd/warnd.toml")
CHANNELS = ("loudspeaker", "sms", "voice", "wechat", "led")
ROLES = ("official", "village_secretary", "grid_worker", "resident")
Role = Literal["official", "village_secretary", "grid_worker", "resident"]
Channel = Literal["loudspeaker", "sms", "voice", "wechat", "led"]


class _Section(BaseModel):
    """A config table: unknown keys are errors, so a typo is named rather than ignored."""

    model_config = ConfigDict(extra="forbid")


class HttpSettings(_Section):
    """The HTTP API and console."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    public_url: str = "http://127.0.0.1:8080"
    # A CAP alert with a large polygon is ~1 MB at most; anything bigger is a mistake or an attack.
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)

    @field_validator("public_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        """Terminals and phones fetch audio and ack links from here."""
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")


class MqttSettings(_Section):
    """The broker that loudspeakers and LED boards subscribe to."""

    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    client_id: str = "warnd"
    # Persistent sessions let the broker hold QoS-1 acks that arrive while warnd restarts.
    keepalive_s: int = Field(default=30, ge=5, le=600)

    @field_validator("url")
    @classmethod
    def _mqtt_url(cls, value: str) -> str:
        """mqtt:// or mqtts:// with a host."""
        if not re.match(r"^mqtts?://[^/\s:]+(:\d+)?/?$", value):
            raise ValueError("must look like mqtt://host:1883 or mqtts://host:8883")
        return value


class DirectorySettings(_Section):
    """Where the villages, people and robots come from."""

    path: Path = Path("config/directory.toml")


class TokenSettings(_Section):
    """One API bearer token, stored as a hash."""

    name: str = Field(min_length=1)
    role: Literal["viewer", "operator", "approver", "admin"]
    hash: str

    @field_validator("hash")
    @classmethod
    def _hash_form(cls, value: str) -> str:
        """`sha256:` and 64 hex digits, as `warnd hash-token` prints it."""
        if not re.match(r"^sha256:[0-9a-f]{64}$", value):
            raise ValueError("must be 'sha256:' followed by 64 hex digits (see `warnd hash-token`)")
        return value


class AuthSettings(_Section):
    """API tokens."""

    tokens: list[TokenSettings] = Field(default_factory=list)


class FeedSettings(_Section):
    """An upstream source of warnings."""

    name: str = Field(pattern=r"^[a-z0-9_-]{1,32}$")
    kind: Literal["push", "poll", "mqtt"]
    token_hash: str | None = None
    url: str | None = None
    topic: str | None = None
    interval_s: float = Field(default=60, ge=1)


class TwilioSettings(_Section):
    """SMS and voice through Twilio."""

    account_sid: str = ""
    auth_token: str | None = None
    from_number: str | None = None
    messaging_service_sid: str | None = None
    public_base_url: str | None = None
    api_base: str = "https://api.twilio.com"
    # Twilio's default throughput for a long code is 1 message per second.
    rate_per_s: float = Field(default=1.0, gt=0)
    max_segments: int = Field(default=3, ge=1, le=10)


class EscalationStep(_Section):
    """One step of 叫应: after this long unconfirmed, try this channel or this person."""

    after_min: float = Field(ge=0)
    channel: Channel
    to: Literal["self", "superior"] = "self"


class LevelPolicy(_Section):
    """How one level is sent: channels, who is reached, who must confirm, repeats, escalation."""

    channels: list[Channel]
    # Which roles get person-addressed channels (sms, voice, wechat app messages).
    roles: dict[Channel, list[Role]] = Field(default_factory=dict)
    ack_roles: list[Role] = Field(default_factory=list)
    repeat_min: float | None = Field(default=None, gt=0)
    quiet_hours: bool = True
    daytime_only: list[Channel] = Field(default_factory=list)
    escalation: list[EscalationStep] = Field(default_factory=list)

    @model_validator(mode="after")
    def _roles_for_known_channels(self) -> LevelPolicy:
        """A role list for a channel the level does not use is a config mistake."""
        for channel in self.roles:
            if channel not in self.channels:
                raise ValueError(f"roles.{channel}: channel {channel!r} is not in channels")
        return self


class StepPolicy(_Section):
    """A pre-warning step at onset minus `hours_before`, to these channels and roles."""

    hours_before: float = Field(ge=0, le=168)
    channels: list[Channel]
    roles: list[Role] = Field(default_factory=lambda: list(ROLES))


_ALL_ROLES: list[Role] = list(ROLES)
_ACK_ROLES: list[Role] = ["official", "village_secretary"]
_CHAIN = [
    EscalationStep(after_min=10, channel="voice"),
    EscalationStep(after_min=20, channel="voice", to="superior"),
]


def _default_levels() -> dict[Level, LevelPolicy]:
    """DESIGN.md's level table."""
    return {
        Level.RED: LevelPolicy(
            channels=["loudspeaker", "sms", "voice", "wechat", "led"],
            roles={"sms": _ALL_ROLES, "voice": ["official"], "wechat": _ALL_ROLES},
            ack_roles=_ACK_ROLES,
            repeat_min=30,
            quiet_hours=False,
            escalation=_CHAIN,
        ),
        Level.ORANGE: LevelPolicy(
            channels=["loudspeaker", "sms", "voice", "wechat", "led"],
            roles={"sms": _ALL_ROLES, "voice": [], "wechat": _ALL_ROLES},
            ack_roles=_ACK_ROLES,
            repeat_min=60,
            escalation=_CHAIN,
        ),
        Level.YELLOW: LevelPolicy(
            channels=["loudspeaker", "sms", "wechat", "led"],
            roles={
                "sms": ["official", "village_secretary", "grid_worker"],
                "wechat": ["official", "village_secretary", "grid_worker"],
            },
        ),
        Level.BLUE: LevelPolicy(
            channels=["loudspeaker", "sms", "wechat", "led"],
            roles={"sms": ["official"], "wechat": ["official"]},
            daytime_only=["loudspeaker"],
        ),
    }


def _default_steps() -> list[StepPolicy]:
    """T-48h and T-24h prepare officials and work groups; from T-12h the public is told."""
    people: list[Role] = ["official", "village_secretary", "grid_worker"]
    public: list[Channel] = ["loudspeaker", "sms", "voice", "wechat", "led"]
    return [
        StepPolicy(hours_before=48, channels=["sms", "wechat"], roles=["official"]),
        StepPolicy(hours_before=24, channels=["sms", "voice", "wechat"], roles=people),
        *(StepPolicy(hours_before=h, channels=public) for h in (12, 6, 3, 1, 0)),
    ]


class PolicySettings(_Section):
    """The township's warning policy; omitted keys take DESIGN.md's defaults."""

    levels: dict[Level, LevelPolicy] = Field(default_factory=_default_levels)
    # Per event type (暴雨, 台风 …) overrides of a level's policy.
    events: dict[str, dict[Level, LevelPolicy]] = Field(default_factory=dict)
    steps: list[StepPolicy] = Field(default_factory=_default_steps)
    quiet_start: time = time(22, 0)
    quiet_end: time = time(6, 0)
    timezone: str = "Asia/Shanghai"
    ack_deadline_min: float = Field(default=10, gt=0)

    @field_validator("levels")
    @classmethod
    def _all_levels(cls, levels: dict[Level, LevelPolicy]) -> dict[Level, LevelPolicy]:
        """Fill levels the file leaves out with their defaults."""
        return {**_default_levels(), **levels}

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        """Quiet hours are local time: the zone must exist."""
        from zoneinfo import ZoneInfo

        try:
            ZoneInfo(value)
        except Exception as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    def for_warning(self, level: Level, event: str) -> LevelPolicy:
        """The policy that applies to a warning of this level and event type."""
        return self.events.get(event, {}).get(level) or self.levels[level]


class DispatchSettings(_Section):
    """Outbox tuning."""

    batch_size: int = Field(default=500, ge=1)
    max_attempts: int = Field(default=8, ge=1)
    backoff_base_s: float = Field(default=2.0, gt=0)
    # Ten minutes between attempts is as patient as a warning can afford.
    backoff_cap_s: float = Field(default=600.0, gt=0)
    grace_s: float = Field(default=10.0, ge=0)
    send_timeout_s: float = Field(default=30.0, gt=0)


class Settings(BaseSettings):
    """Everything warnd reads at start. Keys are a contract: see DESIGN.md."""

    model_config = SettingsConfigDict(
        env_prefix="WARND_",
        env_nested_delimiter="__",
        extra="forbid",
        toml_file=None,
    )

    state_dir: Path = Path("./var")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    http: HttpSettings = Field(default_factory=HttpSettings)
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    directory: DirectorySettings = Field(default_factory=DirectorySettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    feed: list[FeedSettings] = Field(default_factory=list)
    twilio: TwilioSettings = Field(default_factory=TwilioSettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    dispatch: DispatchSettings = Field(default_factory=DispatchSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment over the TOML file over defaults."""
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


class ConfigError(Exception):
    """A config that cannot be used; `problems` are (dotted key, message) pairs."""

    def __init__(self, path: Path | None, problems: list[tuple[str, str]]) -> None:
        """Keep the problems for printing by key."""
        self.path = path
        self.problems = problems
        where = f"{path}: " if path else ""
        super().__init__(where + "; ".join(f"{k}: {m}" for k, m in problems))


def config_path(explicit: str | os.PathLike[str] | None, environ: dict[str, str] | None = None) -> Path:
    """--config, else $WARND_CONFIG, else /etc/warnd/warnd.toml."""
    env = os.environ if environ is None else environ
    return Path(explicit or env.get("WARND_CONFIG") or DEFAULT_CONFIG)


def _dotted(loc: Iterable[Any]) -> str:
    """A pydantic error location as the TOML key a sysadmin would edit (feed[0].kind)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def load_settings(path: Path | None) -> Settings:
    """Read the TOML file (if any) under the environment; raise ConfigError naming each bad key."""
    if path is not None:
        try:
            with path.open("rb") as fh:
                tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(path, [("(file)", f"{path} does not exist")]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(path, [("(file)", f"not valid TOML: {exc}")]) from None
    cls = type("Settings", (Settings,), {"model_config": {**Settings.model_config, "toml_file": path}})
    try:
        settings = cls()
    except ValidationError as exc:
        problems = [(_dotted(e["loc"]), e["msg"]) for e in exc.errors()]
        raise ConfigError(path, problems) from None
    return settings
