"""Provider templates (模板): what Aliyun and Tencent send, filled from warnd's message values.

A Chinese SMS or voice-notification provider sends only texts it approved beforehand, under the
township's registered signature. The registry (in warnd.toml, per provider and channel) maps each
message kind of warnd (issue, update, all_clear, escalation_superior …) to the approved template's
code, its text as filed (for the preview and the checks) and, per variable, which message value
fills it (warnd.messages.FIELDS) or a fixed value.

Each provider's rules are checked when the config is read (so `warnd check-config` refuses a
registry that breaks them, naming the template and the variable) and again when a variable is
filled: no URL in a variable, no variable longer than the provider allows, no two variables
side by side in the text (both providers refuse to approve such a template).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field


@dataclass(frozen=True)
class Rules:
    """One provider's rules for template variables.

    Args:
        max_var_chars: the longest value one variable may take.
        placeholder: how a variable is written in the template text.
    """

    max_var_chars: int
    placeholder: re.Pattern[str]


RULES: dict[str, Rules] = {
    # Aliyun: ${name}; a variable of type 其他 (names, places, text) takes at most 35 characters.
    "aliyun": Rules(35, re.compile(r"\$\{(\w+)\}")),
    # Tencent: {1}, {2} …; a variable of a notification template takes at most 12 characters
    # (the tighter of Tencent's published limits, so a registry that passes here passes there).
    "tencent": Rules(12, re.compile(r"\{(\d+)\}")),
}

# Values that carry links: a provider refuses a variable with a URL (links go in the approved text).
URL = re.compile(r"(?i)\b(?:https?://|www\.)\S*|\b[\w-]+\.(?:com|cn|net|org|gov\.cn)(?:/\S*)?")
LINK_FIELDS = frozenset({"ack_link", "link", "url"})
# A variable must never be empty at the provider (it refuses the call): what stands for nothing.
EMPTY = "无"


class TemplateVar(BaseModel):
    """One variable of an approved template: a message value (`field`) or a fixed `value`."""

    model_config = {"extra": "forbid"}

    field: str | None = None
    value: str | None = None
    max_chars: int | None = Field(default=None, ge=1)


class ProviderTemplate(BaseModel):
    """One approved template: its code, its text as filed, how its variables are filled.

    `ack_code` / `ack_text`: the same message with the "reply 1 to confirm" line (叫应), for
    deliveries that ask for a confirmation; without them those deliveries use `code`.
    """

    model_config = {"extra": "forbid"}

    code: str = Field(min_length=1)
    text: str = Field(min_length=1)
    ack_code: str | None = None
    ack_text: str | None = None
    variables: dict[str, TemplateVar] = Field(default_factory=dict)


Registry = dict[str, ProviderTemplate]


def problems(
    provider: str,
    registry: Mapping[str, ProviderTemplate],
    *,
    kinds: Collection[str],
    fields: Collection[str],
) -> list[str]:
    """What breaks the provider's rules, each naming the template (kind) and the variable.

    `kinds` and `fields`: warnd's message kinds and template fields (warnd.messages KINDS, FIELDS).
    """
    rules = RULES[provider]
    out: list[str] = []
    for kind, t in registry.items():
        where = f"template {kind!r}"
        if kind not in kinds:
            out.append(f"{where}: not a message kind of warnd ({', '.join(kinds)})")
        texts = [t.text] + ([t.ack_text] if t.ack_text else [])
        if bool(t.ack_code) != bool(t.ack_text):
            out.append(f"{where}: ack_code and ack_text go together")
        for text in texts:
            if re.search(rules.placeholder.pattern + rules.placeholder.pattern, text):
                out.append(f"{where}: two variables side by side in its text (the provider refuses it)")
            for name in rules.placeholder.findall(text):
                if name not in t.variables:
                    out.append(f"{where}, variable {name!r}: in the text but not in variables")
        for name, var in t.variables.items():
            at = f"{where}, variable {name!r}"
            if not any(name in rules.placeholder.findall(text) for text in texts):
                out.append(f"{at}: not in the template's text")
            if (var.field is None) == (var.value is None):
                out.append(f"{at}: give either field (a message value) or value (fixed text)")
            if var.field is not None and var.field not in fields:
                out.append(f"{at}: field {var.field!r} is not a message value ({', '.join(fields)})")
            if var.field in LINK_FIELDS or (var.value is not None and URL.search(var.value)):
                out.append(f"{at}: a URL in a variable (the provider refuses it; put links in the text)")
            if var.max_chars is not None and var.max_chars > rules.max_var_chars:
                out.append(f"{at}: max_chars {var.max_chars} is over {provider}'s {rules.max_var_chars}")
            if var.value is not None and len(var.value) > (var.max_chars or rules.max_var_chars):
                out.append(f"{at}: its value has {len(var.value)} characters, over the limit")
    return out


def fit(value: str, limit: int) -> str:
    """A value within the provider's rules: URLs taken out, cut to `limit` characters, never empty."""
    value = " ".join(URL.sub("", value).split())
    if len(value) > limit:
        value = value[: limit - 1] + "…"
    return value or EMPTY


def fill(provider: str, template: ProviderTemplate, values: Mapping[str, str]) -> dict[str, str]:
    """The template's variables, filled from a message's values within the provider's rules."""
    rules = RULES[provider]
    out = {}
    for name, var in template.variables.items():
        raw = var.value if var.value is not None else values.get(var.field or "", "")
        out[name] = fit(raw, var.max_chars or rules.max_var_chars)
    return out


def render(provider: str, text: str, filled: Mapping[str, str], signature: str) -> str:
    """The text a person reads: the signature, then the template with its variables filled."""
    body = RULES[provider].placeholder.sub(lambda m: filled.get(m.group(1), ""), text)
    return f"【{signature}】{body}" if signature else body


# Providers that send only templates, and where their registries are in the settings.
TEMPLATE_PROVIDERS = ("aliyun", "tencent")


def provider_text(
    settings: Any, channel: str, kind: str, values: Mapping[str, str], *, ack: bool
) -> str | None:
    """What the channel's first provider sends for `kind`, when it sends only templates; else None.

    A kind without an approved template says so, since that provider cannot send it (the next
    provider in the fallback order does).
    """
    provider = getattr(settings, channel).providers[0]
    if provider not in TEMPLATE_PROVIDERS:
        return None
    section = getattr(settings, provider)
    t = getattr(section, f"{channel}_templates").get(kind)
    if t is None:
        return f"（{provider} 无 {kind} 模板：由下一个服务商发送）"
    text = t.ack_text if ack and t.ack_text else t.text
    signature = (section.sign_name or settings.sms.signature) if channel == "sms" else ""
    return render(provider, text, fill(provider, t, values), signature)
