"""Settings: one TOML file, overridden by WARND_* environment variables (pydantic-settings)."""

from __future__ import annotations

import os
import re
import tomllib as pure_tomllib
from collections.abc import Iterable
from datetime import time
from pathlib import Path
from typing import Annotated, Any, Literal

# tomli compiled with mypyc: ~2.5× the stdlib's pure-Python tomllib on a 50,000-person directory.
# Compiled code never lets go of the GIL, though: a worker thread parsing with it stops the event
# loop for the whole parse, so a read beside a running loop (a reload) takes the stdlib's.
import tomli as tomllib
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from warnd.audio import AudioSettings
from warnd.credentials import (
    ConfigError as ConfigError,  # re-exported: callers name it warnd.config.ConfigError
)
from warnd.credentials import CredentialsSource
from warnd.messages import FIELDS, KINDS, MessageSettings
from warnd.model import Level
from warnd.templates import ProviderTemplate
from warnd.templates import problems as template_problems
from warnd.tokenhash import hash_form_problem

DEFAULT_CONFIG = Path("/etc/warnd/warnd.toml")
CHANNELS = ("loudspeaker", "sms", "voice", "wechat", "led")
Role = Literal["official", "village_secretary", "grid_worker", "resident"]
ROLES: tuple[Role, ...] = ("official", "village_secretary", "grid_worker", "resident")
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
    # Per client address (token buckets, warnd.api.ratelimit) for requests without a known token;
    # 0 turns a limit off. A console polls a few requests a second; 60 at once covers a page load.
    rate_limit_per_s: float = Field(default=10.0, ge=0)
    rate_limit_burst: int = Field(default=60, ge=1)
    # Requests with a known bearer token (operators, consoles, upstream feeds) have a bucket per
    # token instead, wherever they come from: an upstream system posts 50 warnings a second
    # in a storm (10/s refused 74 % of them), and a duty room's consoles share one token or
    # one NAT address. Twice that, with 10 s of it at once; 0 turns the limit off.
    token_rate_limit_per_s: float = Field(default=100.0, ge=0)
    token_rate_limit_burst: int = Field(default=1000, ge=1)
    # Ack links are opened from phones, and a whole village can sit behind one carrier NAT
    # address: generous, but enough to stop guessing links by brute force.
    ack_rate_limit_per_s: float = Field(default=5.0, ge=0)
    ack_rate_limit_burst: int = Field(default=100, ge=1)
    # Failed bearer-token checks (none, unknown, wrong) per client address, counted apart from
    # the limits above and before any slow hash: someone who mistypes has 10 tries, then one
    # every 10 s; a guesser gets 429. A configured token always gets in. 0 turns it off.
    auth_failures_per_min: float = Field(default=6.0, ge=0)
    auth_failure_burst: int = Field(default=10, ge=1)
    # When set (a `warnd hash-token` hash), /metrics wants this bearer token; else it is open.
    metrics_token_hash: str | None = None

    @field_validator("metrics_token_hash")
    @classmethod
    def _metrics_hash_form(cls, value: str | None) -> str | None:
        """The same forms as API token hashes."""
        problem = hash_form_problem(value) if value is not None else None
        if problem is not None:
            raise ValueError(problem)
        return value

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
    # None: warnd-{host}-{township} (mqtt_client_id), filled in when the daemon is built.
    client_id: str | None = None
    # Persistent sessions let the broker hold QoS-1 acks that arrive while warnd restarts.
    keepalive_s: int = Field(default=30, ge=5, le=600)
    # Reconnect delays are uniform(0, 1.5 ** attempt) seconds; 1.5 ** 10 ≈ 58 s is the ceiling
    # aiomqtt uses, so an outage of any length is noticed within a minute of its end.
    reconnect_max_s: float = Field(default=60.0, gt=0, le=600)

    @field_validator("url")
    @classmethod
    def _mqtt_url(cls, value: str) -> str:
        """mqtt:// or mqtts:// with a host."""
        if not re.match(r"^mqtts?://[^/\s:]+(:\d+)?/?$", value):
            raise ValueError("must look like mqtt://host:1883 or mqtts://host:8883")
        return value


def mqtt_client_id(hostname: str, village_codes: Iterable[str]) -> str:
    """The default MQTT client id: `warnd-{host}-{township}`, unique per host and township.

    Two warnd sharing a client id (two instances, or two townships on one county broker, both
    with the old default "warnd") take the broker's session from each other in turn, forever.
    The township is the 行政区划代码 every village of the directory shares: 9 digits for a
    township, 6 for a county-wide directory, 12 for a single village; left out when the villages
    share no county. The host is its first DNS label, with anything but letters, digits and
    hyphens made a hyphen (MQTT allows any UTF-8, but a broker's ACLs and logs read plain ids).
    No cut to 23 characters: MQTT 3.1.1 only obliges a broker to take 23, but Mosquitto, EMQX
    and HiveMQ take 65535, and cutting would drop the township — the part that tells two
    counties' warnd apart. A broker that insists on 23 gets `[mqtt] client_id` set by hand.
    The id must stay stable across restarts (the broker keeps warnd's persistent session under
    it): it changes only when the host is renamed or the directory moves to another township.
    """
    host = re.sub(r"[^A-Za-z0-9-]+", "-", hostname.split(".")[0]).strip("-") or "host"
    # What every code shares is what the first and the last in sort order share.
    codes = sorted(village_codes)
    township = next((codes[0][:n] for n in (12, 9, 6) if codes and codes[0][:n] == codes[-1][:n]), None)
    return f"warnd-{host}-{township}" if township else f"warnd-{host}"


class LoudspeakerSettings(_Section):
    """Village loudspeakers (村村响)."""

    # A command for a warning without `expires` goes stale after this long: a terminal that was
    # offline all night must not wake the village with yesterday's warning.
    max_age_min: float = Field(default=120, gt=0, le=7 * 24 * 60)
    # A speaker that has not said `played` (or another final status) this long after a command is
    # sent it again, same msg_id, the wait doubling up to dispatch.backoff_cap_s. Longer than the
    # audio takes to fetch and play (a red warning spoken twice is about a minute).
    confirm_timeout_s: float = Field(default=120, ge=1)


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
        """`sha256:<hex>` as `warnd hash-token` prints it, or the older `pbkdf2_sha256$…`."""
        problem = hash_form_problem(value)
        if problem is not None:
            raise ValueError(problem)
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
    # How often a push or MQTT feed is known to speak (a heartbeat, regular bulletins): its
    # silence for three such intervals is then an alert (WarndFeedStale). Unset, a quiet feed is
    # simply quiet. Poll feeds are expected every interval_s unless this says otherwise.
    expected_interval_s: float | None = Field(default=None, gt=0)
    # Backoff while a polled upstream fails doubles from interval_s up to this (one hour).
    max_backoff_s: float = Field(default=3600, ge=1)
    # Environment variable holding the HMAC-SHA256 secret of a push feed's X-Warnd-Signature.
    hmac_secret_env: str | None = Field(default=None, pattern=r"^[A-Z_][A-Z0-9_]*$")
    # geocode valueNames that carry 行政区划代码 (warnd.cap.DEFAULT_GEOCODE_NAMES when empty).
    geocode_names: list[str] = Field(default_factory=list)
    prefer_languages: list[str] = Field(default_factory=lambda: ["zh-CN", "zh"])
    validate_xsd: bool = False
    # A CAP alert with a huge polygon is ~1 MB; twice that bounds what one document may cost.
    max_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)

    @field_validator("token_hash")
    @classmethod
    def _token_hash_form(cls, value: str | None) -> str | None:
        """The same forms as [[auth.tokens]] hashes (`warnd hash-token`)."""
        problem = hash_form_problem(value) if value is not None else None
        if problem is not None:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _kind_needs(self) -> FeedSettings:
        """push needs a token, poll a URL, mqtt a topic."""
        need = {"push": "token_hash", "poll": "url", "mqtt": "topic"}[self.kind]
        if getattr(self, need) is None:
            raise ValueError(f"a {self.kind} feed needs {need}")
        return self


class HydroStation(_Section):
    """A water-level station and the villages its river threatens.

    Args:
        id: the station code (测站编码).
        name: its name, as warnings say it.
        villages: 12-digit codes of the villages a flood here reaches.
        warning_stage: 警戒水位, m.
        guarantee_stage: 保证水位, m.
        rise_rate_m_per_h: a rise at least this fast raises rise_level; the rate is the
            least-squares slope of the readings of the last rise_window_min minutes, once they
            span rise_min_span_min.
    """

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    name: str = Field(min_length=1)
    villages: list[str] = Field(min_length=1)
    warning_stage: float
    guarantee_stage: float
    rise_rate_m_per_h: float | None = Field(default=None, gt=0)
    warning_level: Level = Level.YELLOW
    guarantee_level: Level = Level.ORANGE
    rise_level: Level = Level.ORANGE
    # An hour, as rise rates are told (m/h), plus 10 minutes' slack: a station reporting hourly
    # (报汛 in flood season) still has its previous report inside even when its clock drifts; a
    # station reporting every 5 minutes fits ~14 readings, which averages gauge noise out. Longer
    # answers later to a rise that has just begun; shorter loses hourly stations.
    rise_window_min: float = Field(default=70, gt=0)
    # A rate over a short span is noise over a small number: gauges read to ±1–2 cm and waves move
    # them by a few more, so a 5 cm step in 87 s reads as 2 m/h. Over 20 minutes a 5 cm error is
    # 0.15 m/h, under any rise threshold worth setting (0.3–1 m/h), while a real 0.5 m/h rise has
    # moved 17 cm.
    rise_min_span_min: float = Field(default=20, gt=0)
    # Below the stage by this much before the fall counts: a level hovering at the line is noise.
    hysteresis_m: float = Field(default=0.1, ge=0)
    # How long the level must stay below before the warning is cancelled (解除).
    clear_after_min: float = Field(default=60, ge=0)
    # Absurd readings: outside [min_level_m, max_level_m] or changing faster than max_jump_m_per_h.
    min_level_m: float = 0.0
    max_level_m: float = 10_000.0
    max_jump_m_per_h: float = Field(default=5.0, gt=0)
    event: str = "洪水"

    @model_validator(mode="after")
    def _stages_ordered(self) -> HydroStation:
        """The guarantee stage lies above the warning stage; the rise rate's span fits its window."""
        if self.guarantee_stage <= self.warning_stage:
            raise ValueError("guarantee_stage must be above warning_stage")
        if self.rise_min_span_min > self.rise_window_min:
            raise ValueError("rise_min_span_min must not be longer than rise_window_min")
        return self


class HydroSettings(_Section):
    """Water-level stations and where their readings come from."""

    station: list[HydroStation] = Field(default_factory=list)
    # Optional: a URL answering {"readings": [...]} in the POST /api/v1/hydro/readings shape.
    poll_url: str | None = None
    poll_interval_s: float = Field(default=300, ge=1)


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
    # Calls per second: Twilio's default CPS for an account is 1, separate from the SMS rate.
    calls_per_s: float = Field(default=1.0, gt=0)
    # Polling mode only (no public_base_url): how often to ask Twilio for receipts and replies.
    # 15 s keeps a reply's confirmation within a minute at ~4 list requests a minute.
    poll_interval_s: float = Field(default=15.0, gt=0)


# Providers the person channels can send through (adapters/providers/).
Provider = Literal["twilio", "aliyun", "tencent"]


def _distinct(value: list[str]) -> list[str]:
    """A fallback order names each provider once."""
    if len(set(value)) != len(value):
        raise ValueError("name each provider once")
    return value


Providers = Annotated[list[Provider], AfterValidator(_distinct)]


def _twilio_only() -> list[Provider]:
    """The default fallback order: Twilio alone, as before there were others."""
    return ["twilio"]


class SmsSettings(_Section):
    """What every SMS carries, whichever provider sends it."""

    # The providers SMS goes through, in fallback order: the next sends what the one before could not.
    providers: Providers = Field(default_factory=_twilio_only, min_length=1)

    # The registered signature (签名) Chinese carriers require, shown as 【…】 at the start of
    # every SMS and spoken as the office's name ("这里是…"). Providers approve 2–12 characters.
    signature: str = Field(default="", max_length=12)

    @field_validator("signature")
    @classmethod
    def _bare(cls, value: str) -> str:
        """The name alone: warnd adds the brackets."""
        value = value.strip()
        if any(c in value for c in "【】[]\n"):
            raise ValueError("give the name alone, without 【】: warnd adds them")
        if value and len(value) < 2:
            raise ValueError("a registered signature has 2–12 characters")
        return value


def _registry_ok(provider: str, value: dict[str, ProviderTemplate]) -> dict[str, ProviderTemplate]:
    """A template registry that keeps the provider's rules (warnd.templates)."""
    found = template_problems(provider, value, kinds=KINDS, fields=FIELDS)
    if found:
        raise ValueError("; ".join(found))
    return value


class AliyunSettings(_Section):
    """SMS and voice through Alibaba Cloud (阿里云短信 dysmsapi, 语音服务 dyvmsapi)."""

    access_key_id: str = ""
    # Only from WARND_ALIYUN__ACCESS_KEY_SECRET or the warnd_aliyun_access_key_secret credential.
    access_key_secret: str | None = None
    # Host names of the APIs (tests point them at a loopback fake, with protocol "http").
    sms_endpoint: str = "dysmsapi.aliyuncs.com"
    voice_endpoint: str = "dyvmsapi.aliyuncs.com"
    protocol: Literal["https", "http"] = "https"
    # The registered signature (签名); empty: [sms] signature.
    sign_name: str = ""
    # The number calls come from (被叫显号, bought with the voice service).
    called_show_number: str = ""
    # Receipts and replies: pushed to /hooks/aliyun/{token}/… when this is set (HTTP batch push,
    # 消息回执 HTTP 批量推送), else pulled every pull_interval_s (QuerySendDetails; an office behind NAT).
    # Only from WARND_ALIYUN__CALLBACK_TOKEN or the warnd_aliyun_callback_token credential.
    callback_token: str | None = None
    pull_interval_s: float = Field(default=30.0, gt=0)
    # SendSms calls per second this account may make (its QPS quota; Aliyun's default is far above).
    rate_per_s: float = Field(default=50.0, gt=0)
    # Messages one number may get from this account per day (Aliyun's default limit for
    # notifications is 40 a day per number per signature); counted locally, so the next provider
    # sends what would be refused.
    daily_quota: int = Field(default=40, ge=1)
    # Seconds to wait for an answer: below [dispatch] send_timeout_s, so a stalled call is a
    # send in doubt of its own, looked up before it is made again.
    timeout_s: float = Field(default=10.0, gt=0)
    sms_templates: Annotated[
        dict[str, ProviderTemplate], AfterValidator(lambda v: _registry_ok("aliyun", v))
    ] = Field(default_factory=dict)
    # Voice: TTS templates (文本转语音模板) per message kind. A delivery that asks for a confirmation
    # is an IvrCall whose start is the kind's `ack_code` template (ending "收到请按1") and whose
    # key 1 plays `ivr_confirm_code` ("已确认，谢谢"); others are a SingleCallByTts of `code`.
    voice_templates: Annotated[
        dict[str, ProviderTemplate], AfterValidator(lambda v: _registry_ok("aliyun", v))
    ] = Field(default_factory=dict)
    ivr_confirm_code: str = ""


class TencentSettings(_Section):
    """SMS through Tencent Cloud (腾讯云短信, API 2021-01-11)."""

    secret_id: str = ""
    # Only from WARND_TENCENT__SECRET_KEY or the warnd_tencent_secret_key credential.
    secret_key: str | None = None
    region: str = "ap-guangzhou"
    # Host names of the APIs (tests point them at a loopback fake, with protocol "http").
    sms_endpoint: str = "sms.tencentcloudapi.com"
    protocol: Literal["https", "http"] = "https"
    # The SMS application (SmsSdkAppId, 1400…) and the registered signature; empty: [sms] signature.
    sms_sdk_app_id: str = ""
    sign_name: str = ""
    # Receipts and replies: called back on /hooks/tencent/{token}/… when set, else pulled every
    # pull_interval_s. Only from WARND_TENCENT__CALLBACK_TOKEN or the warnd_tencent_callback_token credential.
    callback_token: str | None = None
    pull_interval_s: float = Field(default=30.0, gt=0)
    # SendSms calls per second (Tencent's default API limit is 3,000 a second per account).
    rate_per_s: float = Field(default=50.0, gt=0)
    # Messages one number may get per day (Tencent's default for one application: 10 a day).
    daily_quota: int = Field(default=10, ge=1)
    timeout_s: float = Field(default=10.0, gt=0)
    sms_templates: Annotated[
        dict[str, ProviderTemplate], AfterValidator(lambda v: _registry_ok("tencent", v))
    ] = Field(default_factory=dict)
    # Voice messages (语音消息, VMS): the voice application (VoiceSdkAppid) and its TTS templates;
    # a kind's `ack_code` template ends with the key prompt ("收到请按1") for 叫应.
    vms_endpoint: str = "vms.tencentcloudapi.com"
    voice_sdk_app_id: str = ""
    voice_templates: Annotated[
        dict[str, ProviderTemplate], AfterValidator(lambda v: _registry_ok("tencent", v))
    ] = Field(default_factory=dict)


class VoiceSettings(_Section):
    """Calls (叫应 by phone), whichever provider places them."""

    # The providers calls go through, in fallback order.
    providers: Providers = Field(default_factory=_twilio_only, min_length=1)


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
    """The default level table (docs/architecture.md)."""
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
    """The township's warning policy; omitted keys take the defaults in docs/architecture.md."""

    levels: dict[Level, LevelPolicy] = Field(default_factory=_default_levels)
    # Per event type (暴雨, 台风 …) overrides of a level's policy.
    events: dict[str, dict[Level, LevelPolicy]] = Field(default_factory=dict)
    steps: list[StepPolicy] = Field(default_factory=_default_steps)
    quiet_start: time = time(22, 0)
    quiet_end: time = time(6, 0)
    timezone: str = "Asia/Shanghai"

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


def _paging_channels() -> list[Channel]:
    """Who pages an approver by default: the person channels (SMS, voice, WeCom)."""
    return ["sms", "voice", "wechat"]


class ApprovalSettings(_Section):
    """Sign-off (审核签发): the duty officer drafts, the leader on duty releases.

    Args:
        levels: levels whose warnings need sign-off.
        sources: where a warning came from for it to need sign-off: `api` is an operator's
            draft (JSON or CAP through the API); feeds (`push`, `poll`, `mqtt`) and `hydro`
            were signed off upstream or are automatic, and go straight out.
        bypass_levels: levels that skip sign-off although listed (a county that lets red go
            out at once, as some 应急广播 platforms do for level I).
        self_approval: whether the drafter may release their own draft.
        cancel_needs_approval: whether a cancel (解除) of a warning needing sign-off waits too.
        remind_after_min: a draft waiting this long pages the approvers, and again each time
            as long again (at most REMINDERS_MAX times).
        remind_people: directory ids of the people paged (带班领导); empty: every `official`.
        remind_channels: the channels they are paged on, those with a running adapter.
    """

    levels: list[Level] = Field(default_factory=lambda: list(Level))
    sources: list[str] = Field(default_factory=lambda: ["api"])
    bypass_levels: list[Level] = Field(default_factory=list)
    self_approval: bool = False
    cancel_needs_approval: bool = False
    remind_after_min: float = Field(default=10, gt=0)
    remind_people: list[str] = Field(default_factory=list)
    remind_channels: list[Channel] = Field(default_factory=lambda: _paging_channels())

    def needed(self, level: Level | str, source: str) -> bool:
        """Whether a warning of this level from this source waits for sign-off."""
        level = Level(level)
        return source in self.sources and level in self.levels and level not in self.bypass_levels


class RetentionSettings(_Section):
    """How long deliveries, acks and audio are kept (warnd.retention); the audit log is kept for ever.

    Args:
        days: a warning's deliveries and acks are archived and deleted this many days after it
            ended (cancelled, expired, rejected); audio unused as long is deleted. 400: a flood
            season and the year's review after it.
        archive_dir: where the archives go, one gzip JSON-lines file per warning; default
            `{state_dir}/archive`.
        run_at: local time of day (`[policy] timezone`) the daily retention job runs: a quiet hour.
    """

    days: int = Field(default=400, ge=1)
    archive_dir: Path | None = None
    run_at: time = time(3, 30)


class StoreSettings(_Section):
    """Where warnd keeps its state: SQLite in `{state_dir}/warnd.db` (the default) or PostgreSQL.

    Args:
        url: a PostgreSQL database, `postgresql://user@host:5432/dbname` (libpq's URL form; its
            options, e.g. `?sslmode=verify-full`, pass through). The database is this warnd's
            alone: a second warnd pointed at it refuses to start. A password does not belong in
            warnd.toml: libpq's ~/.pgpass or PGPASSWORD, or the whole URL by WARND_STORE__URL or
            the systemd credential `warnd_store_url`.
    """

    url: str | None = None

    @field_validator("url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        """Only PostgreSQL URLs: a typo must not fall back to SQLite in silence."""
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("expected postgresql://user@host:port/dbname (or leave it out for SQLite)")
        return value


class DispatchSettings(_Section):
    """Outbox tuning."""

    batch_size: int = Field(default=500, ge=1)
    max_attempts: int = Field(default=8, ge=1)
    backoff_base_s: float = Field(default=2.0, gt=0)
    # Ten minutes between attempts is as patient as a warning can afford.
    backoff_cap_s: float = Field(default=600.0, gt=0)
    grace_s: float = Field(default=10.0, ge=0)
    send_timeout_s: float = Field(default=30.0, gt=0)


class WecomSettings(_Section):
    """WeCom (企业微信): group robots (keys from the environment) and application messages."""

    enabled: bool = True
    api_base: str = "https://qyapi.weixin.qq.com"
    corp_id: str | None = None
    agent_id: int | None = None
    # The application's secret: here, WARND_WECOM__SECRET, or the credential `warnd_wecom_secret`.
    secret: str | None = None
    # WeCom's documented limit for a group robot is 20 messages a minute.
    robot_per_minute: int = Field(default=20, ge=1, le=20)


class AckLinkSettings(_Section):
    """Signed acknowledgement links (/ack/{token}) sent in WeCom text cards."""

    # HMAC key: here, WARND_ACK_LINKS__SECRET, the credential `warnd_ack_link_secret`, else
    # generated once into state_dir/ack_link.key.
    secret: str | None = None
    # Three days: long enough for a person away from the phone, short enough to go stale.
    ttl_h: float = Field(default=72, gt=0)


class LedBoardSettings(_Section):
    """One LED board's size and mode (overrides [led])."""

    chars_per_line: int | None = Field(default=None, ge=2, le=200)
    lines: int | None = Field(default=None, ge=1, le=50)
    mode: Literal["scroll", "static"] | None = None


class LedSettings(_Section):
    """LED boards: text layout (full-width characters per line, lines), rotation."""

    # A common village board is 192x64 dots: 12 characters of 16x16 by 4 lines; 16 is a safe default.
    chars_per_line: int = Field(default=16, ge=2, le=200)
    lines: int = Field(default=4, ge=1, le=50)
    mode: Literal["scroll", "static"] = "scroll"
    # Show every warning in force in turn (most severe first) instead of only the most severe.
    rotate: bool = False
    rotate_s: float = Field(default=10, gt=0)
    # A board that has not said `shown` this long after a command is sent it again (same msg_id);
    # a board shows a command within seconds.
    confirm_timeout_s: float = Field(default=60, ge=1)
    boards: dict[str, LedBoardSettings] = Field(default_factory=dict)


class Settings(BaseSettings):
    """Everything warnd reads at start. Keys are a contract: see docs/architecture.md."""

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
    hydro: HydroSettings = Field(default_factory=HydroSettings)
    twilio: TwilioSettings = Field(default_factory=TwilioSettings)
    sms: SmsSettings = Field(default_factory=SmsSettings)
    voice: VoiceSettings = Field(default_factory=VoiceSettings)
    aliyun: AliyunSettings = Field(default_factory=AliyunSettings)
    tencent: TencentSettings = Field(default_factory=TencentSettings)
    messages: MessageSettings = Field(default_factory=MessageSettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    dispatch: DispatchSettings = Field(default_factory=DispatchSettings)
    tts: AudioSettings = Field(default_factory=AudioSettings)
    loudspeaker: LoudspeakerSettings = Field(default_factory=LoudspeakerSettings)
    wecom: WecomSettings = Field(default_factory=WecomSettings)
    ack_links: AckLinkSettings = Field(default_factory=AckLinkSettings)
    led: LedSettings = Field(default_factory=LedSettings)
    approval: ApprovalSettings = Field(default_factory=ApprovalSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment over systemd credentials over the TOML file over defaults."""
        toml = TomlConfigSettingsSource(settings_cls)
        return (init_settings, env_settings, CredentialsSource(settings_cls, toml), toml)


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


def read_toml(path: Path, path_key: str = "(file)", *, beside_loop: bool = False) -> dict[str, Any]:
    """A TOML file's tables; ConfigError if it is missing, unreadable or not UTF-8 TOML.

    `path_key` names the setting that points at the file, for problems of the path itself.
    `beside_loop`: read in a worker thread while the event loop runs — the pure-Python parser,
    slower but yielding the GIL every few milliseconds, so the loop keeps running.
    """
    parser = pure_tomllib if beside_loop else tomllib
    try:
        with path.open("rb") as fh:
            return parser.load(fh)
    except FileNotFoundError:
        raise ConfigError(path, [(path_key, f"{path} does not exist")]) from None
    except (tomllib.TOMLDecodeError, pure_tomllib.TOMLDecodeError) as exc:
        raise ConfigError(path, [("(file)", f"not valid TOML: {exc}")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(path, [("(file)", f"not UTF-8 text: {exc.reason} at byte {exc.start}")]) from None
    except OSError as exc:
        raise ConfigError(path, [(path_key, f"cannot be read: {exc.strerror or exc}")]) from None


# Provider secrets taken only from WARND_* variables or systemd credentials (warnd.credentials).
SECRETS_NOT_IN_FILE = (
    ("aliyun", "access_key_secret"),
    ("aliyun", "callback_token"),
    ("tencent", "secret_key"),
    ("tencent", "callback_token"),
)


def load_settings(path: Path | None) -> Settings:
    """Read the TOML file (if any) under the environment; raise ConfigError naming each bad key."""
    if path is not None:
        raw = read_toml(path)  # file-level problems first, named as such
        secret = [(f"{s}.{k}", "a secret: give it by the environment or a systemd credential, not the file")
                  for s, k in SECRETS_NOT_IN_FILE if k in (raw.get(s) or {})]  # fmt: skip
        url = (raw.get("store") or {}).get("url")
        if isinstance(url, str) and re.search(r"://[^/@]*:[^/@]*@", url):
            secret.append(("store.url", "holds a password: give it by ~/.pgpass, PGPASSWORD, "
                           "WARND_STORE__URL or the credential warnd_store_url, not the file"))  # fmt: skip
        if secret:
            raise ConfigError(path, secret)
    cls = type("Settings", (Settings,), {"model_config": {**Settings.model_config, "toml_file": path}})
    try:
        settings = cls()
    except ValidationError as exc:
        problems = [(_dotted(e["loc"]), e["msg"]) for e in exc.errors()]
        raise ConfigError(path, problems) from None
    return settings
