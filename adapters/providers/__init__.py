"""Providers of the person channels. Registration is this explicit table, not directory scanning.

A provider's module is imported when a channel asks for it, not with this package: each vendor
SDK costs memory whether or not it is configured (Alibaba Cloud's two clients with their
credential chain ~24 MB of a county warnd's ~240 MB, Tencent Cloud's ~1 MB), and a township
configures one provider, or two.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adapters.providers.base import Provider
    from warnd.config import Settings

# channel → provider name → (module, class). Names are `[sms] providers` / `[voice] providers`.
REGISTRY: dict[str, dict[str, tuple[str, str]]] = {
    "sms": {
        "twilio": ("adapters.providers.twilio_sms", "TwilioSms"),
        "aliyun": ("adapters.providers.aliyun", "AliyunSms"),
        "tencent": ("adapters.providers.tencent", "TencentSms"),
    },
    "voice": {
        "twilio": ("adapters.providers.twilio_voice", "TwilioVoice"),
        "aliyun": ("adapters.providers.aliyun", "AliyunVoice"),
        "tencent": ("adapters.providers.tencent", "TencentVoice"),
    },
}


def provider_class(channel: str, name: str) -> type[Provider]:
    """One provider's class, its module imported now if it was not yet."""
    module, cls = REGISTRY[channel][name]
    provider: type[Provider] = getattr(importlib.import_module(module), cls)
    return provider


def provider_classes(channel: str, settings: Settings) -> list[type[Provider]]:
    """The channel's providers in the configured fallback order ([sms] / [voice] providers)."""
    names = getattr(settings, channel).providers
    return [provider_class(channel, n) for n in names]
