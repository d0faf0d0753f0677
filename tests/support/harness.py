"""An in-process warnd for tests: real store and API, fake clock, recording adapters."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tests.support.county import write_directory
from tests.support.recording import RecordingAdapter
from warnd.api import make_app
from warnd.api.auth import hash_token
from warnd.clock import FakeClock
from warnd.config import Settings
from warnd.daemon import Daemon
from warnd.directory import Directory
from warnd.store import Store

CHANNELS = ("loudspeaker", "sms", "voice", "wechat", "led")
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
    """What tests do to an in-process daemon (`self.daemon`) and its API client (`self.client`)."""

    daemon: Daemon
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
        self.settings = test_settings(tmp_path, self.directory_path, **(settings or {}))
        self.channels = tuple(channels)
        self.script = script or {}
        self.adapter_factories = tuple(adapters)
        self.clock = FakeClock()
        self.store = Store(self.settings.state_dir / "warnd.db")
        self.daemon: Daemon
        self.client: TestClient
        self._extra_clients: list[TestClient] = []

    async def start(self) -> Harness:
        """Open the store, build the daemon and an API client."""
        await self.store.open()
        self.daemon = Daemon(self.settings, self.store, Directory.load(self.directory_path), clock=self.clock)
        for ch in self.channels:
            self.daemon.add_adapter(RecordingAdapter(self.daemon.adapter_context(), ch, script=self.script))
        for factory in self.adapter_factories:
            self.daemon.add_adapter(factory(self.daemon.adapter_context()))
        await self.daemon.start_adapters()
        app = make_app(self.daemon, self.daemon.extra_routes())
        self.client = TestClient(TestServer(app, host="127.0.0.1"))
        await self.client.start_server()
        return self

    def every_route_app(self) -> web.Application:
        """This daemon's app with every configured adapter's routes too, as `warnd run` serves it.

        The recording adapters serve no webhooks; the real adapters whose config is complete
        (Twilio's) are constructed, not started, to put theirs in the app.
        """
        from adapters import registry

        ctx = self.daemon.adapter_context()
        extra = [r for cls in registry().values() if cls.configured(self.settings) for r in cls(ctx).routes()]
        return make_app(self.daemon, [*self.daemon.extra_routes(), *extra])

    async def serve_every_route(self) -> TestClient:
        """A second server for this daemon, serving `every_route_app()`."""
        client = TestClient(TestServer(self.every_route_app(), host="127.0.0.1"))
        await client.start_server()
        self._extra_clients.append(client)
        return client

    async def close(self) -> None:
        """Close the client, the adapters and the store."""
        for extra in self._extra_clients:
            await extra.close()
        await self.client.close()
        for adapter in self.daemon.adapters.values():
            await adapter.aclose()
        await self.store.close()

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
