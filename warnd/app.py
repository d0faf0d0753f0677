"""The composition root: every part of a running warnd, built once, in one place.

`build()` opens the store and makes each part exactly once, handing each what it needs through
its constructor: one clock, one `Wakeup`, one `Metrics`, one `aiohttp.ClientSession` for every
HTTP channel, one MQTT device link and one device hub for every MQTT channel, the channels
themselves, and the pipeline stages around them. Nothing is wired afterwards by assignment, and
nothing looks a part up through a global: the API gets `Services` under one app key
(warnd.api.services), the channels an `AdapterContext`.

`warnd.daemon.run` (the process), the test harness and the bench all build warnd here; what
they add around it (the HTTP site, the loops, signals) is theirs.

Import direction: this module and warnd.daemon sit on top; they import warnd.api, the adapters
and the core; the core imports neither (tests/test_architecture.py checks it).
"""

from __future__ import annotations

import asyncio
import gc
import socket
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from warnd.acklink import AckLinks, AckSigner, load_secret
from warnd.adapter import Adapter, AdapterContext
from warnd.api.auth import TokenBook
from warnd.clock import Clock, SystemClock, Wakeup
from warnd.config import ApprovalSettings, PolicySettings, Settings, mqtt_client_id
from warnd.directory import Directory
from warnd.dispatcher import Dispatcher
from warnd.feedback import Feedback
from warnd.feeds import Feeds
from warnd.hydro import HydroMonitor
from warnd.instancelock import instance_lock
from warnd.intake import Intake
from warnd.metrics import Metrics
from warnd.mqtt.devices import DeviceHub
from warnd.mqtt.link import MqttLink, device_link
from warnd.retention import Retention
from warnd.scheduler import Scheduler
from warnd.setup import start_adapters
from warnd.signoff import SignOff
from warnd.store import Store

log = structlog.get_logger("warnd.app")

AdapterFactory = Callable[[AdapterContext], Adapter]
Loop = tuple[str, Coroutine[Any, Any, Any]]

# The shared session's own limit: each channel passes its tighter timeout per request.
HTTP_TIMEOUT_S = 60.0


class DirectoryHolder:
    """The directory in force: callers ask for it each time, a reload puts a new one in.

    Args:
        directory: the directory loaded at start.
    """

    def __init__(self, directory: Directory) -> None:
        """Hold the first directory."""
        self._directory = directory

    def __call__(self) -> Directory:
        """The current directory."""
        return self._directory

    def replace(self, directory: Directory) -> None:
        """Put a reloaded directory in force."""
        self._directory = directory


@dataclass(frozen=True)
class Services:
    """A running warnd's parts, each made once by `build()`.

    Args:
        settings: the loaded settings (policy, auth and approval replaced in place on reload).
        config_path: where the settings came from (for reload), if from a file.
        clock: the daemon's time.
        store: the open store.
        directory: the directory in force.
        tokens: the API's bearer tokens.
        metrics: Prometheus metrics.
        wake: the one wake-up of the loops.
        http: the one HTTP session of every HTTP channel.
        mqtt: the one MQTT device link.
        devices: the device hub on that link.
        context: what each channel was lent (tests make more channels with it).
        adapters: the channels, by name.
        feedback: acks from every channel → delivery states.
        intake: accept, update, cancel.
        signoff: approve, reject, hold changes that need sign-off.
        dispatcher: one worker per channel.
        scheduler: fires due jobs.
        feeds: upstream CAP feeds.
        hydro: water-level readings.
        ack_links: the ack-link handlers, when a channel sends ack links.
        recovered: deliveries a crash had left `sending`, put back to `pending` at start.
    """

    settings: Settings
    config_path: Path | None
    clock: Clock
    store: Store
    directory: DirectoryHolder
    tokens: TokenBook
    metrics: Metrics
    wake: Wakeup
    http: aiohttp.ClientSession
    mqtt: MqttLink
    devices: DeviceHub
    context: AdapterContext
    adapters: Mapping[str, Adapter]
    feedback: Feedback
    intake: Intake
    signoff: SignOff
    dispatcher: Dispatcher
    scheduler: Scheduler
    feeds: Feeds
    hydro: HydroMonitor
    ack_links: AckLinks | None
    recovered: int

    def background(self) -> list[Loop]:
        """Named loops beside the scheduler and the dispatchers: feeds, hydrology, channels' links."""
        loops: list[Loop] = [*self.feeds.loops(), *self.hydro.loops()]
        for adapter in self.adapters.values():
            loops += adapter.background()
        return loops

    async def readiness(self) -> dict[str, dict[str, Any]]:
        """Checks for /readyz: the store answers and can write, every channel can send."""
        checks: dict[str, dict[str, Any]] = {}
        try:
            async with asyncio.timeout(2):
                await self.store.ping()
                problem = await self.store.write_check()
            checks["store"] = {"ok": True} if problem is None else {"ok": False, "detail": problem}
        except Exception as exc:
            checks["store"] = {"ok": False, "detail": type(exc).__name__}
        for name, adapter in self.adapters.items():
            ok = adapter.ready() and adapter.not_ready_reason is None
            checks[f"adapter.{name}"] = {
                "ok": ok,
                "detail": adapter.disabled_reason or adapter.not_ready_reason,
            }
        return checks


def preparer(
    adapters: Mapping[str, Adapter],
) -> Callable[[dict[str, Any], Iterable[str], str, dict[str, Any] | None], None]:
    """What the scheduler calls while it plans a step: the step's channels get ready meanwhile."""

    def prepare(
        warning: dict[str, Any], channels: Iterable[str], kind: str, context: dict[str, Any] | None = None
    ) -> None:
        """Let the running adapters of a step's channels get ready while it is planned."""
        for channel in channels:
            adapter = adapters.get(channel)
            if adapter is not None and adapter.disabled_reason is None:
                try:
                    adapter.prepare(warning, kind, context)
                except Exception:
                    # Only a head start: the send does the same work if this fails.
                    log.exception("adapter.prepare_failed", channel=channel, warning_id=warning.get("id"))

    return prepare


def keep_out_of_collections() -> None:
    """Exempt what start-up made from the cyclic garbage collector's scans.

    Modules, schemas, settings and the parts live as long as warnd; each full collection walked
    them all again with the event loop stopped. (The directory froze its own records on load.)
    """
    gc.freeze()


@asynccontextmanager
async def build(
    settings: Settings,
    adapters: Iterable[AdapterFactory],
    *,
    clock: Clock | None = None,
    config_path: Path | None = None,
) -> AsyncIterator[Services]:
    """Open the store and make every part once; on exit close what was opened, last first.

    The channels are started (warnd.setup: an unready one is retried later by the caller's loop,
    one with bad credentials is disabled, any other error stops warnd).
    """
    clock = clock or SystemClock()
    directory = DirectoryHolder(Directory.load(settings.directory.path))
    if settings.mqtt.client_id is None:
        # Before the MQTT links are made: the device link's and the feeds' ids derive from it.
        settings.mqtt.client_id = mqtt_client_id(socket.gethostname(), directory().villages)
    async with AsyncExitStack() as stack:
        # Before the store: a second warnd on this state directory exits here (AlreadyRunning).
        stack.enter_context(instance_lock(settings.state_dir))
        if settings.store.url is not None:
            store = await Store(url=settings.store.url).open()
        else:
            store = await Store(settings.state_dir / "warnd.db").open()
        stack.push_async_callback(store.close)
        recovered = await store.recover()
        http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S))
        stack.push_async_callback(http.close)
        wake = Wakeup()
        metrics = Metrics()
        feedback = Feedback(store, clock, wake, settings.dispatch, metrics=metrics)

        async def connected() -> None:
            """The device channels are ready again: what waited for the broker goes out now."""
            wake.set()

        mqtt = device_link(settings.mqtt, on_connect=connected)
        devices = DeviceHub(mqtt, directory=directory, feedback=feedback, store=store, clock=clock)
        context = AdapterContext(
            settings=settings,
            directory=directory,
            http=http,
            feedback=feedback,
            store=store,
            clock=clock,
            metrics=metrics,
            wake=wake,
            mqtt=mqtt,
            devices=devices,
        )
        channels: dict[str, Adapter] = {}
        for factory in adapters:
            adapter = factory(context)
            channels[adapter.kind] = adapter
            stack.push_async_callback(adapter.aclose)

        def policy() -> PolicySettings:
            """The policy in force (replaced on reload)."""
            return settings.policy

        def approval() -> ApprovalSettings:
            """The `[approval]` settings in force (replaced on reload)."""
            return settings.approval

        intake = Intake(store, directory, policy, clock, wake, approval=approval)
        signoff = SignOff(intake, approval)
        dispatcher = Dispatcher(store, channels, clock, settings.dispatch, wake, metrics=metrics)
        scheduler = Scheduler(
            store,
            directory,
            policy,
            dispatcher.channels,
            clock,
            wake,
            preparer(channels),
            ready=dispatcher.ready,
            approval=approval,
            retention=Retention(store, lambda: settings.retention, settings.state_dir),
        )
        ack_links = None
        if any(a.sends_ack_links for a in channels.values()):
            # The same key as the channel's own signer (the key file is made once, O_EXCL).
            signer = AckSigner(load_secret(settings), timedelta(hours=settings.ack_links.ttl_h))
            ack_links = AckLinks(signer, store, feedback, clock, settings, directory)
        services = Services(
            settings=settings,
            config_path=config_path,
            clock=clock,
            store=store,
            directory=directory,
            tokens=TokenBook(settings.auth.tokens),
            metrics=metrics,
            wake=wake,
            http=http,
            mqtt=mqtt,
            devices=devices,
            context=context,
            adapters=channels,
            feedback=feedback,
            intake=intake,
            signoff=signoff,
            dispatcher=dispatcher,
            scheduler=scheduler,
            feeds=Feeds(settings, store, clock, intake, signoff),
            hydro=HydroMonitor(settings, store, clock, intake),
            ack_links=ack_links,
            recovered=recovered,
        )
        await start_adapters(channels.values())
        keep_out_of_collections()
        yield services
