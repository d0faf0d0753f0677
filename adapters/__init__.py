"""Channel adapters. Registration is this explicit table, not directory scanning."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from warnd.adapter import Adapter, AdapterContext
    from warnd.config import Settings


def registry() -> dict[str, type[Adapter]]:
    """Every channel warnd ships, by channel name."""
    return {}


def enabled_adapters(settings: Settings) -> dict[str, Callable[[AdapterContext], Adapter]]:
    """The channels whose configuration is complete enough to start."""
    return {name: cls for name, cls in registry().items() if cls.configured(settings)}
