"""Providers of the person channels. Registration is this explicit table, not directory scanning."""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapters.providers.aliyun import AliyunSms, AliyunVoice
from adapters.providers.base import Provider
from adapters.providers.tencent import TencentSms, TencentVoice
from adapters.providers.twilio_sms import TwilioSms
from adapters.providers.twilio_voice import TwilioVoice

if TYPE_CHECKING:
    from warnd.config import Settings

# channel → provider name → class.
REGISTRY: dict[str, dict[str, type[Provider]]] = {
    "sms": {TwilioSms.name: TwilioSms, AliyunSms.name: AliyunSms, TencentSms.name: TencentSms},
    "voice": {TwilioVoice.name: TwilioVoice, AliyunVoice.name: AliyunVoice, TencentVoice.name: TencentVoice},
}


def provider_classes(channel: str, settings: Settings) -> list[type[Provider]]:
    """The channel's providers in the configured fallback order ([sms] / [voice] providers)."""
    names = getattr(settings, channel).providers
    return [REGISTRY[channel][n] for n in names]
