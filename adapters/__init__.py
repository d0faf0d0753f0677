"""Channel adapters. Registration is this explicit table, not directory scanning."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from adapters.led import LedAdapter
from adapters.loudspeaker import LoudspeakerAdapter
from adapters.sms import SmsAdapter
from adapters.voice import VoiceAdapter
from adapters.wecom import WecomAdapter

if TYPE_CHECKING:
    from warnd.adapter import Adapter, AdapterContext
    from warnd.config import Settings


def registry() -> dict[str, type[Adapter]]:
    """Every channel warnd ships, by channel name."""
    classes: list[type[Adapter]] = [LoudspeakerAdapter, SmsAdapter, VoiceAdapter, WecomAdapter, LedAdapter]
    return {cls.kind: cls for cls in classes}


def enabled_adapters(settings: Settings) -> dict[str, Callable[[AdapterContext], Adapter]]:
    """The channels whose configuration is complete enough to start."""
    return {name: cls for name, cls in registry().items() if cls.configured(settings)}
