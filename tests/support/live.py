"""Run the harness with real adapters (WeCom, LED …) beside or instead of recording ones."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tests.support.harness import Harness
from warnd.adapter import Adapter, AdapterContext


async def live_harness(
    tmp_path: Path,
    factories: Iterable[Callable[[AdapterContext], Adapter]],
    *,
    channels: Iterable[str] = (),
    clock: Any = None,
    **kwargs: Any,
) -> Harness:
    """A started harness whose warnd also runs these real adapters, with their routes served."""
    h = Harness(tmp_path, channels=channels, adapters=factories, **kwargs)
    if clock is not None:
        h.clock = clock
    return await h.start()


async def close_live(h: Harness) -> None:
    """Close the harness (and with it the real adapters)."""
    await h.close()
