"""An in-process warnd for tests: real store and API, fake clock, recording adapters."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AsyncExitStack
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from adapters import registry
from tests.support.county import write_directory
from tests.support.recording import RecordingAdapter
from warnd.acklink import AckLinks, AckSigner, load_secret
from warnd.adapter import AdapterContext
from warnd.api import make_app
from warnd.api.auth import hash_token
from warnd.app import AdapterFactory, Services, build
from warnd.clock import FakeClock
from warnd.config import Settings
from warnd.store import Store

CHANNELS = ("loudspeaker", "sms", "voice", "wechat", "led")

# Set by tests/conftest.py under `pytest --store=postgres`: the URL of a PostgreSQL database for a
# test directory (made on first use; the same again for a Harness restarted on the same
# tmp_path), for every Harness whose settings name no store (the suite on PostgreSQL: `make test-pg`).
DATABASE_FOR: Callable[[Path], str] | None = None
TOKENS = {
    "viewer": "viewer-token",
    "operator": "operator-token",
    "approver": "approver-token",
    "admin": "admin-token",
}


def test_settings(tmp_path: Path, directory: Path, **overrides: Any) -> Settings:
    """Settings for a test: state in tmp_path, the given directory, one token per role."""
    data: dict[str, Any] = {
        "state_dir": tmp_path / "state",
        "directory": {"path": directory},
        "auth": {"tokens": [{"name": f"{r}-1", "role": r, "hash": hash_token(t)} for r, t in TOKENS.items()]},
        "http": {"port": 0},
        # Warnings go straight out unless a test asks for sign-off (tests/test_approval.py).
        "approval": {"levels": []},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return Settings(**data)


class Driven:
    """What tests do to an in-process warnd (`self.daemon`: its Services) and its API client."""

    daemon: Services
    client: TestClient

    async def run_until_idle(self, max_rounds: int = 1000) -> int:
        """Fire due jobs and send due deliveries until nothing is due at the fake now."""
        total = 0
        for _ in range(max_rounds):
            fired = await self.daemon.scheduler.run_once()
            sent = await self.daemon.dispatcher.run_once()
            total += fired + sent
            if not fired and not sent:
                return total
        raise AssertionError("pipeline did not become idle")

    def headers(self, role: str = "operator") -> dict[str, str]:
        """Authorization header for a role."""
        return {"Authorization": f"Bearer {TOKENS[role]}"}

    async def issue(self, body: dict[str, Any], role: str = "operator", **kw: Any) -> str:
        """POST a warning and return its id (asserting 202)."""
        resp = await self.client.post("/api/v1/warnings", json=body, headers=self.headers(role), **kw)
        assert resp.status == 202, await resp.text()
        return (await resp.json())["id"]

    async def get(self, warning_id: str) -> dict[str, Any]:
        """GET a warning."""
        resp = await self.client.get(f"/api/v1/warnings/{warning_id}", headers=self.headers("viewer"))
        assert resp.status == 200, await resp.text()
        return await resp.json()


class Harness(Driven):
    """warnd's pipeline in this process: drive it with `run_until_idle()` and the fake clock.

    Args:
        tmp_path: the test's directory.
        channels: channels served by recording adapters.
        directory: kwargs for the generated directory.
        settings: overrides for Settings.
    """

    def __init__(
        self,
        tmp_path: Path,
        *,
        channels: Iterable[str] = CHANNELS,
        directory: dict[str, Any] | None = None,
        settings: dict[str, Any] | None = None,
        script: dict[str, list[str]] | None = None,
        adapters: Iterable[Any] = (),
    ) -> None:
        """Write the directory and settings; `start()` opens everything.

        `adapters` are factories (ctx → Adapter) of real adapters added beside the recording ones.
        """
        self.tmp_path = tmp_path
        self.directory_path = write_directory(tmp_path / "directory.toml", **(directory or {}))
        settings = dict(settings or {})
        if DATABASE_FOR is not None and "store" not in settings:
            settings["store"] = {"url": DATABASE_FOR(tmp_path)}
        self.settings = test_settings(tmp_path, self.directory_path, **settings)
        self.channels = tuple(channels)
        self.script = script or {}
        self.adapter_factories = tuple(adapters)
        self.clock = FakeClock()
        self.daemon: Services
        self.client: TestClient
        self._stack = AsyncExitStack()
        self._extra_clients: list[TestClient] = []

    @property
    def store(self) -> Store:
        """The running warnd's store."""
        return self.daemon.store

    def recording(self, channel: str) -> AdapterFactory:
        """A factory of the recording adapter of a channel."""

        def make(ctx: AdapterContext) -> RecordingAdapter:
            """The recording adapter, with this harness's script."""
            return RecordingAdapter(ctx, channel, script=self.script)

        return make

    async def start(self) -> Harness:
        """Build warnd (warnd.app.build, as `warnd run` does) and an API client."""
        factories = [*(self.recording(ch) for ch in self.channels), *self.adapter_factories]
        self.daemon = await self._stack.enter_async_context(build(self.settings, factories, clock=self.clock))
        self.client = TestClient(TestServer(make_app(self.daemon), host="127.0.0.1"))
        await self.client.start_server()
        return self

    def every_route_app(self) -> web.Application:
        """This warnd's app with every configured adapter's webhooks too, as `warnd run` serves it.

        The recording adapters serve no webhooks; the real adapters whose config is complete
        (Twilio's) are constructed, not started, to put theirs in the app.
        """
        ctx = self.daemon.context
        configured = [cls for cls in registry().values() if cls.configured(self.settings)]
        hooks = [w for cls in configured for w in cls(ctx).webhooks()]
        services = self.daemon
        if services.ack_links is None and any(cls.sends_ack_links for cls in configured):
            # As warnd.app.build makes them when such a channel runs.
            signer = AckSigner(load_secret(self.settings), timedelta(hours=self.settings.ack_links.ttl_h))
            links = AckLinks(signer, ctx.store, ctx.feedback, ctx.clock, self.settings, ctx.directory)
            services = replace(services, ack_links=links)
        return make_app(services, hooks)

    async def serve_every_route(self) -> TestClient:
        """A second server for this warnd, serving `every_route_app()`."""
        client = TestClient(TestServer(self.every_route_app(), host="127.0.0.1"))
        await client.start_server()
        self._extra_clients.append(client)
        return client

    async def close(self) -> None:
        """Close the clients, then everything build() opened (adapters, HTTP session, store)."""
        for extra in self._extra_clients:
            await extra.close()
        await self.client.close()
        await self._stack.aclose()

    def adapter(self, channel: str) -> RecordingAdapter:
        """The recording adapter of a channel."""
        return self.daemon.adapters[channel]  # type: ignore[return-value]


def warning_body(**overrides: Any) -> dict[str, Any]:
    """A valid operator warning for the generated township."""
    body: dict[str, Any] = {
        "event": "暴雨",
        "level": "red",
        "headline": "塘甸镇气象台发布暴雨红色预警",
        "description": "预计未来3小时内降雨量将达100毫米以上。",
        "instruction": "请立即转移低洼地带和山洪危险区人员。",
        "area": {"codes": ["330502101201"]},
    }
    body.update(overrides)
    return body
