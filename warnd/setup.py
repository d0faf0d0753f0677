"""Starting channels: a setup error comes in one of three kinds, each handled its own way.

- not ready (`TransientError`, e.g. `NotReadyError`: the provider or broker cannot be reached
  yet) → warnd runs on; the channel claims nothing and /readyz names the reason, and
  `retry_start_loop` tries again on the one backoff (warnd.backoff) until it starts;
- auth failed (`AuthError`) → the channel is disabled and the operator told
  (`adapter.auth_failed`, /readyz); warnd runs on with the other channels;
- anything else → raised: warnd stops, and systemd restarts it (a bug or a broken install
  should not run half-configured).
"""

from __future__ import annotations

from collections.abc import Iterable

import structlog

from warnd.adapter import Adapter, AuthError, TransientError
from warnd.backoff import backoff_s
from warnd.clock import Clock, Wakeup

log = structlog.get_logger("warnd.setup")

# A channel that could not start is tried again after about this long, doubling up to the cap:
# a provider back within seconds is used within seconds, one down for hours is asked once a minute.
RETRY_BASE_S = 5.0
RETRY_CAP_S = 60.0


async def start_adapter(adapter: Adapter) -> bool:
    """Start one channel; True when it started, False when it is not ready (or disabled)."""
    try:
        await adapter.start()
    except TransientError as exc:
        adapter.not_ready_reason = exc.reason
        log.warning("adapter.not_ready", channel=adapter.kind, reason=exc.reason)
        return False
    except AuthError as exc:
        adapter.disabled_reason = exc.reason
        adapter.not_ready_reason = None
        log.error("adapter.auth_failed", channel=adapter.kind, reason=exc.reason)
        return False
    adapter.not_ready_reason = None
    log.info("adapter.started", channel=adapter.kind)
    return True


async def start_adapters(adapters: Iterable[Adapter]) -> None:
    """Start each channel; an unready one is left for `retry_start_loop`, a bad credential disables it."""
    for adapter in adapters:
        await start_adapter(adapter)


async def retry_start_loop(adapter: Adapter, clock: Clock, wake: Wakeup) -> None:
    """Try an unready channel's start again on the backoff until it starts or is disabled."""
    attempt = 0
    while adapter.not_ready_reason is not None and adapter.disabled_reason is None:
        attempt += 1
        await clock.sleep(backoff_s(attempt, RETRY_BASE_S, RETRY_CAP_S))
        if await start_adapter(adapter):
            # What waited for the channel goes out now.
            wake.set()
