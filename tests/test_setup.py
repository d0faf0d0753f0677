"""A channel's start fails in one of three kinds: not ready (retried), auth (disabled), other (stop)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import Harness, warning_body
from tests.support.recording import RecordingAdapter
from tests.support.wait import until
from warnd.adapter import AdapterContext, AuthError, NotReadyError
from warnd.app import AdapterFactory
from warnd.setup import retry_start_loop


class FlakyStart(RecordingAdapter):
    """The SMS channel whose first starts fail as given, then start."""

    def __init__(self, ctx: AdapterContext, failures: list[BaseException]) -> None:
        """Record sends like the recording adapter; fail the first starts."""
        super().__init__(ctx, "sms")
        self.failures = failures
        self.starts = 0

    async def start(self) -> None:
        """Fail with the next scripted error, if any is left."""
        self.starts += 1
        if self.failures:
            raise self.failures.pop(0)


def flaky(*failures: BaseException) -> AdapterFactory:
    """A factory of the flaky SMS channel."""
    return lambda ctx: FlakyStart(ctx, list(failures))


def sms(h: Harness) -> FlakyStart:
    """The harness's SMS channel."""
    adapter = h.daemon.adapters["sms"]
    assert isinstance(adapter, FlakyStart)
    return adapter


async def test_a_channel_not_ready_at_start_runs_later_and_sends_what_waited(tmp_path: Path) -> None:
    """NotReadyError at start: warnd runs, the channel claims nothing and /readyz says why; started
    again on the backoff, it sends what waited."""
    h = await Harness(
        tmp_path, channels=["loudspeaker"], adapters=[flaky(NotReadyError("provider away"))]
    ).start()
    try:
        adapter = sms(h)
        assert adapter.not_ready_reason == "provider away"
        assert adapter.disabled_reason is None
        ready = await h.client.get("/readyz")
        assert ready.status == 503
        assert (await ready.json())["checks"]["adapter.sms"] == {"ok": False, "detail": "provider away"}
        await h.issue(warning_body())
        await h.run_until_idle()
        assert adapter.sent == [], "a channel that did not start was handed work"
        assert h.adapter("loudspeaker").sent, "the other channels go on"
        await asyncio.wait_for(retry_start_loop(adapter, h.clock, h.daemon.wake), timeout=10)
        assert adapter.starts == 2
        assert adapter.not_ready_reason is None
        assert (await h.client.get("/readyz")).status == 200
        await h.run_until_idle()
        assert adapter.sent, "what waited for the channel went out once it started"
    finally:
        await h.close()


@pytest.mark.allow_error_logs
async def test_a_channel_whose_credentials_are_refused_is_disabled_and_warnd_runs(
    tmp_path: Path, log_events: list[dict[str, Any]]
) -> None:
    """AuthError at start: the channel is disabled (never retried), the operator told, the rest runs."""
    h = await Harness(tmp_path, channels=["loudspeaker"], adapters=[flaky(AuthError("HTTP 401"))]).start()
    try:
        adapter = sms(h)
        assert adapter.disabled_reason == "HTTP 401"
        assert adapter.not_ready_reason is None
        told = [e for e in log_events if e["event"] == "adapter.auth_failed"]
        assert [(e["log_level"], e["channel"], e["reason"]) for e in told] == [("error", "sms", "HTTP 401")]
        checks = (await (await h.client.get("/readyz")).json())["checks"]
        assert checks["adapter.sms"] == {"ok": False, "detail": "HTTP 401"}
        assert "sms" not in h.daemon.dispatcher.channels()
        # Nothing to retry: the loop ends at once and does not start it again.
        await asyncio.wait_for(retry_start_loop(adapter, h.clock, h.daemon.wake), timeout=1)
        assert adapter.starts == 1
        await h.issue(warning_body())
        await h.run_until_idle()
        assert adapter.sent == []
        assert h.adapter("loudspeaker").sent
    finally:
        await h.close()


async def test_any_other_error_at_start_stops_warnd(tmp_path: Path) -> None:
    """A bug or a broken install is not run around: build() raises, and closes what it opened."""
    h = Harness(tmp_path, channels=(), adapters=[flaky(RuntimeError("broken install"))])
    with pytest.raises(RuntimeError, match="broken install"):
        await h.start()
    # The store was closed and the instance lock let go: warnd can be built again on the directory.
    again = await Harness(tmp_path, channels=["sms"]).start()
    await until(lambda: again.daemon.store is not None, what="a second build")
    await again.close()
