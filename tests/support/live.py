"""Run the harness with real adapters (WeCom, LED …) beside or instead of recording ones."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from tests.support.harness import Harness
from warnd.adapter import Adapter, AdapterContext
from warnd.api import make_app


async def live_harness(
    tmp_path: Path,
    factories: Iterable[Callable[[AdapterContext], Adapter]],
    *,
    channels: Iterable[str] = (),
    clock: Any = None,
    **kwargs: Any,
) -> Harness:
    """A started harness whose daemon also runs these real adapters, with their routes served."""
    h = Harness(tmp_path, channels=channels, **kwargs)
    if clock is not None:
        h.clock = clock
    await h.start()
    for factory in factories:
        adapter = factory(h.daemon.adapter_context())
        h.daemon.add_adapter(adapter)
        await adapter.start()
    # Rebuild the app: the adapters' routes (ack links …) must be served too.
    await h.client.close()
    h.client = TestClient(TestServer(make_app(h.daemon, h.daemon.extra_routes()), host="127.0.0.1"))
    await h.client.start_server()
    return h


async def close_live(h: Harness) -> None:
    """Close the real adapters, then the harness."""
    for adapter in h.daemon.adapters.values():
        await adapter.aclose()
    await h.close()
