"""What people read and hear: one template per message kind, rendered for every channel.

A message has a *kind* — what it tells the receiver — and each kind has three forms:
`title` (one line: the SMS header, the WeCom title, the LED title), `text` (the written body:
SMS, WeCom, LED) and `speech` (what a loudspeaker or a phone call says). Channels only add
their own frame: the SMS signature 【…】 and "回复1确认", the call's "收到请按1".

Templates are lines with `{field}` placeholders. A line whose placeholders all came out empty
is left out, so "原因：{reason}" disappears when no reason was given instead of reading "原因：".
Written lines are joined with line breaks; spoken lines run on (each ends with its own 。).

Kinds:
    issue                the first announcement of a warning
    reminder             a later pre-warning step or a loudspeaker re-broadcast
    update               new content at the same level (预警更新)
    upgrade / downgrade  the level changed (升级 / 降级)
    all_clear            the warning is lifted (解除预警): what, why, what to do now —
                         never the old instruction
    escalation_self      叫应 again to someone who has not confirmed
    escalation_superior  叫应 to the superior of someone who has not confirmed: who, what, since when
    approval_reminder    a draft waits for sign-off (审核签发): pages the approvers
An exercise or test warning (演练) is marked in every kind, at the start and again at the end.

Pure functions: no I/O, no clock.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, get_args
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from warnd import templates
from warnd.model import PERSON_CHANNELS, Level
from warnd.smstext import longest_fitting, sms_segments
from warnd.speech import spoken_text

Kind = Literal[
    "issue",
    "reminder",
    "update",
    "upgrade",
    "downgrade",
    "all_clear",
    "escalation_self",
    "escalation_superior",
    "approval_reminder",
]
KINDS: tuple[str, ...] = get_args(Kind)

# Everything a template may say. A placeholder outside this list is a config error.
FIELDS: dict[str, str] = {
    "event": "the hazard: 暴雨",
    "level": "the colour: 红色",
    "level_roman": "the level number: I … IV",
    "old_level": "upgrade/downgrade: the colour before",
    "headline": "the warning's headline",
    "description": "the warning's description",
    "instruction": "what to do (never in an all-clear)",
    "area": "the villages it concerns, by name",
    "onset": "when the hazard is expected: 7月1日08:00",
    "expires": "when the warning ends: 7月2日08:00",
    "at": "all-clear: when it was lifted",
    "reason": "all-clear: why it was lifted",
    "advice": "all-clear: what to do now",
    "person": "escalation: who has not confirmed (name)",
    "role": "escalation: their role: 村（社区）书记",
    "phone": "escalation to a superior: their phone",
    "sent_at": "escalation: when the unconfirmed message went out",
    "recipient": "escalation: the name of whoever is called",
    "org": "who speaks: the office (from [sms] signature unless [messages] org)",
    "greeting": "spoken opening: 各位群众请注意 on loudspeakers, 张伟您好 on a call",
    "drill_mark": "【演练】 for exercises and tests",
    "drill_note": "（演练信息，非真实预警） for exercises and tests",
    "drill_say": "演练，演练。 spoken, for exercises and tests",
}

# What people are asked to do once a warning is lifted. It must not send anyone home into a
# hazard that is still there: the village (who knows the ground) says when to return.
DEFAULT_ADVICE = "已转移的群众请听从村（社区）通知后再返回，返回前注意检查房屋安全。"

_ROLE_NAMES = {
    "official": "责任人",
    "village_secretary": "村（社区）书记",
    "grid_worker": "网格员",
    "resident": "群众",
}
# Longest area named in a message: more villages read as "A、B、C等12个村（社区）".
_AREA_NAMES = 3


def _lines(*lines: str) -> str:
    """A template written one line an argument."""
    return "\n".join(lines)


# The written body every warning kind shares after its first line.
_DETAILS = (
    "{headline}",
    "影响区域：{area}",
    "预计开始：{onset}",
    "应对：{instruction}",
    "详情：{description}",
)
# The spoken body every warning kind shares after its announcement.
_SAY_DETAILS = ("{headline}。", "影响区域：{area}。", "预计{onset}开始影响。", "{instruction}。")

_DEFAULTS: dict[str, dict[str, str]] = {
    "issue": {
        "title": "{drill_mark}{event}{level}预警",
        "text": _lines(*_DETAILS, "{drill_note}"),
        "speech": _lines(
            "{drill_say}",
            "{greeting}",
            "{org}通知。",
            "现在发布{event}{level}预警。",
            *_SAY_DETAILS,
            "{drill_say}",
        ),
    },
    "reminder": {
        "title": "{drill_mark}{event}{level}预警（提醒）",
        "text": _lines(*_DETAILS, "{drill_note}"),
        "speech": _lines(
            "{drill_say}",
            "{greeting}",
            "再次提醒，{event}{level}预警正在生效。",
            *_SAY_DETAILS,
            "{drill_say}",
        ),
    },
    "update": {
        "title": "{drill_mark}{event}{level}预警（更新）",
        "text": _lines(*_DETAILS, "{drill_note}"),
        "speech": _lines(
            "{drill_say}",
            "{greeting}",
            "{org}通知。",
            "{event}{level}预警内容有更新。",
            *_SAY_DETAILS,
            "{drill_say}",
        ),
    },
    "upgrade": {
        "title": "{drill_mark}{event}预警升级为{level}",
        "text": _lines("{event}预警由{old_level}升级为{level}。", *_DETAILS, "{drill_note}"),
        "speech": _lines(
            "{drill_say}",
            "{greeting}",
            "{org}通知。",
            "注意，{event}预警由{old_level}升级为{level}预警。",
            *_SAY_DETAILS,
            "{drill_say}",
        ),
    },
    "downgrade": {
        "title": "{drill_mark}{event}预警降为{level}",
        "text": _lines(
            "{event}预警由{old_level}降为{level}，预警仍在生效。",
            "{headline}",
            "应对：{instruction}",
            "详情：{description}",
            "{drill_note}",
        ),
        "speech": _lines(
            "{drill_say}",
            "{greeting}",
            "{org}通知。",
            "{event}预警由{old_level}降为{level}预警，预警仍在生效，请继续做好防范。",
            "{headline}。",
            "{instruction}。",
            "{drill_say}",
        ),
    },
    "all_clear": {
        "title": "{drill_mark}解除{event}{level}预警",
        "text": _lines(
            "{area}{event}{level}预警已于{at}解除。",
            "解除原因：{reason}",
            "{advice}",
            "{drill_note}",
        ),
        "speech": _lines(
            "{drill_say}",
            "{greeting}",
            "{org}通知。",
            "现在解除{event}{level}预警。",
            "解除原因：{reason}。",
            "{advice}。",
            "{drill_say}",
        ),
    },
    "escalation_self": {
        "title": "{drill_mark}请确认：{event}{level}预警",
        "text": _lines(
            "{recipient}您好，{sent_at}发给您的{event}{level}预警尚未确认，请立即查看并落实。",
            "{headline}",
            "应对：{instruction}",
            "{drill_note}",
        ),
        "speech": _lines(
            "{drill_say}",
            "{greeting}",
            "这里是{org}。",
            "{sent_at}发给您的{event}{level}预警，您还没有确认。",
            "{headline}。",
            "{instruction}。",
            "{drill_say}",
        ),
    },
    "escalation_superior": {
        "title": "{drill_mark}叫应未确认：{event}{level}预警",
        "text": _lines(
            "{recipient}您好，{role}{person}自{sent_at}起未确认{event}{level}预警，请督促落实或直接联系。",
            "联系电话：{phone}",
            "预警内容：{headline}",
            "{drill_note}",
        ),
        "speech": _lines(
            "{drill_say}",
            "{greeting}",
            "这里是{org}。",
            "{role}{person}自{sent_at}起未确认{event}{level}预警。",
            "预警内容：{headline}。",
            "请您督促落实，或直接联系{person}。",
            "{drill_say}",
        ),
    },
    "approval_reminder": {
        "title": "{drill_mark}待签发：{event}{level}预警",
        "text": _lines(
            "{recipient}您好，{event}{level}预警自{sent_at}起等待审核签发，尚未发出，请立即登录值班台审核。",
            "预警内容：{headline}",
            "{drill_note}",
        ),
        "speech": _lines(
            "{drill_say}",
            "{greeting}",
            "这里是{org}。",
            "{event}{level}预警自{sent_at}起等待您审核签发，还没有发出。",
            "预警内容：{headline}。",
            "请立即登录值班台审核。",
            "{drill_say}",
        ),
    },
}

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
# Spoken fields lose their own final punctuation: the template puts its own after them.
_END_PUNCT = "。.！!；;，,、 "


class TemplateSettings(BaseModel):
    """The three forms of one message kind; a form left out keeps warnd's default.

    Args:
        title: one line: SMS header (after the signature), WeCom and LED title.
        text: the written body (SMS, WeCom, LED), one item a line.
        speech: what loudspeakers and calls say, one sentence a line.
    """

    model_config = ConfigDict(extra="forbid")

    title: str | None = None
    text: str | None = None
    speech: str | None = None

    @field_validator("title", "text", "speech")
    @classmethod
    def _known_fields(cls, value: str | None) -> str | None:
        """Every placeholder must be a known field."""
        if value is None:
            return None
        for name in _PLACEHOLDER.findall(value):
            if name not in FIELDS:
                raise ValueError(
                    f"unknown field {{{name}}}: fields are {', '.join(sorted(FIELDS))}"
                )
        stray = _PLACEHOLDER.sub("", value)
        if "{" in stray or "}" in stray:
            raise ValueError("unbalanced { or }")
        return value


class MessageSettings(BaseModel):
    """How messages read (`[messages]` in warnd.toml).

    Args:
        org: the office as speech names it ("这里是…"); default: the SMS signature.
        all_clear_advice: what an all-clear tells people to do now, unless the cancel says.
        templates: per kind, forms that replace warnd's defaults.
    """

    model_config = ConfigDict(extra="forbid")

    org: str = Field(default="", max_length=40)
    all_clear_advice: str = Field(default=DEFAULT_ADVICE, max_length=300)
    templates: dict[Kind, TemplateSettings] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _title_one_line(self) -> MessageSettings:
        """A title is one line."""
        for kind, t in self.templates.items():
            if t.title is not None and "\n" in t.title.strip():
                raise ValueError(f"templates.{kind}.title must be one line")
        return self

    def template(self, kind: str, form: str) -> str:
        """The template of a kind's form: the configured one, else the default."""
        override = self.templates.get(kind)  # type: ignore[call-overload]  # keyed by the Literal kinds; any str may ask
        value = getattr(override, form) if override is not None else None
        return value if value is not None else _DEFAULTS[kind][form]


@dataclass(frozen=True)
class Rendered:
    """One message in its three forms."""

    kind: str
    title: str
    text: str
    speech: str


def fill(template: str, values: Mapping[str, str], *, sep: str) -> str:
    """Substitute fields; drop lines whose fields all came out empty; join with sep."""
    out = []
    for line in template.splitlines():
        names = _PLACEHOLDER.findall(line)
        if names and not any(values.get(n) for n in names):
            continue
        text = _PLACEHOLDER.sub(lambda m: values.get(m.group(1), ""), line).strip()
        if text:
            out.append(text)
    return sep.join(out)


def local_short(when: str | datetime | None, tz: str) -> str:
    """A time as people write it, in the township's zone: 7月1日08:00 (warnings span days, not years)."""
    if when is None or when == "":
        return ""
    dt = datetime.fromisoformat(when) if isinstance(when, str) else when
    local = dt.astimezone(ZoneInfo(tz))
    return f"{local.month}月{local.day}日{local:%H:%M}"


def area_names(codes: Iterable[str], name_of: Callable[[str], str | None]) -> str:
    """Village names: "塘甸村、东桥村" or "塘甸村、东桥村、西岭村等12个村（社区）"."""
    names = [n for n in (name_of(c) for c in codes) if n]
    if len(names) > _AREA_NAMES:
        return "、".join(names[:_AREA_NAMES]) + f"等{len(names)}个村（社区）"
    return "、".join(names)


def fields(
    warning: Mapping[str, Any],
    context: Mapping[str, Any],
    *,
    settings: MessageSettings,
    org: str,
    tz: str,
    village_name: Callable[[str], str | None],
    person_name: Callable[[str], str | None],
) -> dict[str, str]:
    """The values templates draw on, for one warning and one delivery's context."""
    level = Level(warning["level"])
    drill = warning.get("status", "actual") != "actual"
    old = context.get("old_level")
    person_id = context.get("person_id")
    return {
        "event": str(warning.get("event", "")).strip(),
        "level": level.chinese,
        "level_roman": level.roman,
        "old_level": Level(old).chinese if old else "",
        "headline": str(warning.get("headline", "")).strip(),
        "description": str(warning.get("description", "")).strip(),
        "instruction": str(warning.get("instruction", "")).strip(),
        "area": area_names(warning.get("villages") or (), village_name),
        "onset": local_short(warning.get("onset"), tz),
        "expires": local_short(warning.get("expires"), tz),
        "at": local_short(context.get("at"), tz),
        "reason": str(context.get("reason", "")).strip(),
        "advice": str(context.get("advice") or settings.all_clear_advice).strip(),
        "person": (person_name(person_id) or person_id or "") if person_id else "",
        "role": _ROLE_NAMES.get(str(context.get("role", "")), ""),
        "phone": _dialable(str(context.get("phone") or "")),
        "sent_at": local_short(context.get("sent_at"), tz),
        "recipient": str(context.get("recipient") or ""),
        "org": settings.org or org,
        "drill_mark": "【演练】" if drill else "",
        "drill_note": "（演练信息，非真实预警）" if drill else "",
        "drill_say": "演练，演练。" if drill else "",
    }


def _dialable(phone: str) -> str:
    """A phone number as a Chinese reader dials it: +8613800000001 → 13800000001."""
    return phone.removeprefix("+86")


def _spoken_values(values: Mapping[str, str]) -> dict[str, str]:
    """Field values for speech: no trailing punctuation (the template adds its own), one line."""
    keep = ("drill_say", "greeting")  # whole sentences of their own
    return {k: v if k in keep else " ".join(v.split()).rstrip(_END_PUNCT) for k, v in values.items()}


def render(kind: str, values: Mapping[str, str], settings: MessageSettings) -> Rendered:
    """One kind's three forms from the field values."""
    if kind not in KINDS:
        raise ValueError(f"unknown message kind {kind!r}: expected one of {', '.join(KINDS)}")
    spoken = _spoken_values(values)
    title = fill(settings.template(kind, "title"), values, sep=" ")
    text = fill(settings.template(kind, "text"), values, sep="\n")
    speech = _tidy_speech(fill(settings.template(kind, "speech"), spoken, sep=""))
    if values.get("drill_mark"):
        # A drill must never pass for the real thing, whatever a township's templates say.
        title = title if "演练" in title else values["drill_mark"] + title
        text = text if "演练" in text else f"{text}\n{values['drill_note']}"
        speech = speech if "演练" in speech else values["drill_say"] + speech
    return Rendered(kind=kind, title=title, text=text, speech=speech)


def _tidy_speech(text: str) -> str:
    """Collapse runs of punctuation a template and a field produce together (。。, ！。, ，。)."""

    def strongest(m: re.Match[str]) -> str:
        """The run's first sentence end, else a comma."""
        return next((c for c in m.group() if c in "。！？"), "，")

    return re.sub(r"[，。；、,;！!？?]{2,}", strongest, text).lstrip("。，")


def kind_of(delivery_kind: str, context: Mapping[str, Any] | None) -> str:
    """A delivery's message kind: as planned (context "message"), else from its delivery kind."""
    if context and context.get("message") in KINDS:
        return str(context["message"])
    return {"update": "update", "cancel": "all_clear"}.get(delivery_kind, "issue")


# --- channels' frames ------------------------------------------------------------------------

# Written fields given up, in this order, when an SMS would run past its segment budget: the
# details first, then where, then what to do. Headline, level and the drill marks always stay.
SHRINK_ORDER = ("description", "area", "instruction", "advice", "reason")
SMS_ACK_LINE = "回复1确认"
CALL_ACK_PROMPT = "收到请按1。"
SPEAKER_GREETING = "各位群众请注意。"


def sms_frame(title: str, text: str, *, signature: str, ack: bool) -> str:
    """An SMS: 【signature】title, the body, and the reply line when a confirmation is asked."""
    sign = f"【{signature}】" if signature else ""
    lines = [f"{sign}{title}", text, SMS_ACK_LINE if ack else ""]
    return "\n".join(line for line in lines if line)


def compose_sms(
    kind: str,
    values: Mapping[str, str],
    settings: MessageSettings,
    *,
    signature: str,
    ack: bool,
    max_segments: int,
) -> str:
    """The SMS of a message, giving up details (SHRINK_ORDER) until it fits max_segments.

    What never shrinks (signature, title, headline, drill marks, the reply line) may leave it
    longer than asked: a warning that goes out long beats one that does not go out.
    """
    vals = dict(values)

    def build(v: Mapping[str, str]) -> str:
        """The SMS with these values."""
        r = render(kind, v, settings)
        return sms_frame(r.title, r.text, signature=signature, ack=ack)

    def fits(text: str) -> bool:
        """Within the segment budget."""
        return sms_segments(text)[1] <= max_segments

    text = build(vals)
    for name in SHRINK_ORDER:
        if fits(text):
            return text
        full = vals.get(name, "")
        if not full:
            continue

        def fits_as(cut: str, n: str = name) -> bool:
            """Whether the text fits with this field cut to `cut`."""
            return fits(build({**vals, n: cut}))

        vals[name] = longest_fitting(full, fits_as)
        text = build(vals)
    return text


def greeting(channel: str, recipient: str) -> str:
    """The spoken opening: the public on a loudspeaker, the person by name on a call."""
    if channel == "loudspeaker":
        return SPEAKER_GREETING
    if channel == "voice":
        return f"{recipient}您好。" if recipient else "您好。"
    return ""


def values_for(
    warning: Mapping[str, Any],
    kind: str,
    context: Mapping[str, Any] | None,
    *,
    settings: Any,
    directory: Any,
    channel: str,
    recipient_id: str | None = None,
) -> dict[str, str]:
    """Field values for one receiver: warnd's Settings and Directory supply names and the office."""
    people = directory.people if directory is not None else {}
    villages = directory.villages if directory is not None else {}

    def village_name(code: str) -> str | None:
        """A village's name, if the directory knows it."""
        v = villages.get(code)
        return v.name if v is not None else None

    def person_name(pid: str) -> str | None:
        """A person's name, if the directory knows them."""
        p = people.get(pid)
        return p.name if p is not None else None

    vals = fields(
        warning,
        context or {},
        settings=settings.messages,
        org=settings.sms.signature,
        tz=settings.policy.timezone,
        village_name=village_name,
        person_name=person_name,
    )
    recipient = (person_name(recipient_id) or "") if recipient_id else ""
    vals["recipient"] = recipient
    vals["greeting"] = greeting(channel, recipient)
    return vals


def for_message(message: Any, settings: Any, directory: Any) -> tuple[str, dict[str, str]]:
    """The kind and field values of an adapter's Message (delivery + warning)."""
    d = message.delivery
    context = getattr(d, "context", None) or {}
    kind = kind_of(d.kind, context)
    vals = values_for(
        message.warning,
        kind,
        context,
        settings=settings,
        directory=directory,
        channel=d.channel,
        recipient_id=d.person_id,
    )
    return kind, vals


# --- preview ---------------------------------------------------------------------------------

# Stand-ins when the directory names nobody a preview could use for an escalation.
_SAMPLE_PERSON = {"name": "张伟", "role": "village_secretary", "phone": "+8613800000000"}
_SAMPLE_SUPERIOR = "李强"


def channel_text(
    kind: str, values: Mapping[str, str], settings: Any, channel: str, *, ack: bool
) -> str:
    """A message as one channel sends it (SMS framed and fitted; a call with its key prompt)."""
    r = render(kind, values, settings.messages)
    if channel in ("sms", "voice"):
        # A provider that sends only approved templates sends its template, filled.
        filled = templates.provider_text(settings, channel, kind, values, ack=ack)
        if filled is not None:
            return filled
    if channel == "sms":
        return compose_sms(
            kind,
            values,
            settings.messages,
            signature=settings.sms.signature,
            ack=ack,
            max_segments=settings.twilio.max_segments,
        )
    if channel == "voice":
        # The call speaks numbers and times as words (what Twilio is given to say).
        return spoken_text(r.speech) + (CALL_ACK_PROMPT if ack else "")
    if channel == "loudspeaker":
        return r.speech
    return f"{r.title}\n{r.text}"


def preview(
    warning: Mapping[str, Any],
    settings: Any,
    directory: Any,
    channels: Iterable[str],
    *,
    now: datetime,
) -> dict[str, dict[str, str]]:
    """Every kind of message this warning can produce, per channel, as it would be sent.

    Upgrade and downgrade are shown from the neighbouring level; escalations name a real
    person of the warning's villages and their superior when the directory has one.
    """
    chans = list(channels)
    level = Level(warning["level"])
    order = list(Level)
    person = next(
        (
            p
            for p in directory.people_in(warning.get("villages") or ())
            if p.superior and p.superior in directory.people
        ),
        None,
    )
    person_id = person.id if person is not None else "?"
    superior = directory.people[person.superior].name if person is not None else _SAMPLE_SUPERIOR
    sample = (
        {"name": person.name, "role": person.role, "phone": person.phone or ""}
        if person is not None
        else _SAMPLE_PERSON
    )
    sent_at = now.isoformat()
    contexts: dict[str, dict[str, Any]] = {
        "issue": {},
        "reminder": {},
        "update": {"old_level": level.value},
    }
    if level.rank < len(order) - 1:
        contexts["upgrade"] = {"old_level": order[level.rank + 1].value}
    if level.rank > 0:
        contexts["downgrade"] = {"old_level": order[level.rank - 1].value}
    contexts["all_clear"] = {"reason": "（解除原因）", "at": now.isoformat()}
    escalation = {
        "person_id": person_id,
        "role": sample["role"],
        "phone": sample["phone"],
        "sent_at": sent_at,
    }
    contexts["escalation_self"] = escalation
    contexts["escalation_superior"] = escalation
    contexts["approval_reminder"] = {"sent_at": sent_at}
    out: dict[str, dict[str, str]] = {}
    for kind, ctx in contexts.items():
        texts = {}
        for channel in chans:
            person_channel = channel in PERSON_CHANNELS
            paging = kind.startswith("escalation") or kind == "approval_reminder"
            if paging and not person_channel:
                continue
            vals = values_for(
                warning, kind, ctx, settings=settings, directory=directory, channel=channel
            )
            if kind.startswith("escalation"):
                vals["person"] = sample["name"]
                name = superior if kind == "escalation_superior" else sample["name"]
                vals["recipient"] = name
                vals["greeting"] = greeting(channel, name)
            ack = person_channel and kind in (
                "issue",
                "upgrade",
                "escalation_self",
                "escalation_superior",
            )
            texts[channel] = channel_text(kind, vals, settings, channel, ack=ack)
        out[kind] = texts
    return out
