"""Lifecycle: open the store, recover, start adapters and the API, run the loops, stop cleanly."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from warnd.adapter import Adapter, AdapterContext, AuthError
from warnd.api.auth import TokenBook
from warnd.approval import SignOff
from warnd.clock import Clock, SystemClock, Wakeup
from warnd.config import ConfigError, Settings, load_settings, mqtt_client_id
from warnd.directory import Directory
from warnd.dispatcher import Dispatcher
from warnd.feedback import Feedback
from warnd.feeds import Feeds
from warnd.instancelock import instance_lock
from warnd.intake import Intake
from warnd.metrics import Metrics
from warnd.retention import Retention
from warnd.scheduler import Scheduler
from warnd.sdnotify import Notifier
from warnd.store import Store

log = structlog.get_logger("warnd.daemon")

DAEMON: web.AppKey[Daemon] = web.AppKey("daemon")


class Shutdown(Exception):
    """Raised inside the TaskGroup to stop every loop."""


class Daemon:
    """Everything a running warnd holds; the API and adapters reach each other through it.

    Args:
        settings: the loaded settings.
        store: an open store.
        directory: the loaded directory.
        adapters: channel → adapter instance (not yet started).
        clock: time.
        config_path: where settings came from (for reload).
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        directory: Directory,
        *,
        clock: Clock | None = None,
        config_path: Path | None = None,
    ) -> None:
        """Wire the pipeline stages together."""
        self.settings = settings
        if settings.mqtt.client_id is None:
            # Before the MQTT links are made (the feeds' link below, the adapters' later).
            settings.mqtt.client_id = mqtt_client_id(socket.gethostname(), directory.villages)
        # API tokens: the HTTP app checks requests against this book; reload replaces its contents.
        self.tokens = TokenBook(settings.auth.tokens)
        self.store = store
        self.clock: Clock = clock or SystemClock()
        self.config_path = config_path
        self._directory = directory
        self.wake = Wakeup()
        self.adapters: dict[str, Adapter] = {}
        self.adapter_extra: dict[str, Any] = {}
        self.intake = Intake(store, self.directory, self.policy, self.clock, self.wake)
        self.dispatcher = Dispatcher(store, self.adapters, self.clock, settings.dispatch, self.wake)
        self.scheduler = Scheduler(
            store,
            self.directory,
            self.policy,
            self.dispatcher.channels,
            self.clock,
            self.wake,
            self.prepare,
            ready=self.dispatcher.ready,
        )
        self.feedback = Feedback(store, self.clock, self.wake, settings.dispatch)
        # Sign-off (issue 15): drafts wait for an approver; the scheduler pages approvers.
        self.intake.approval = self.scheduler.approval = lambda: self.settings.approval
        self.scheduler.retention = Retention(store, lambda: self.settings.retention, settings.state_dir)
        self.signoff = SignOff(self.intake, lambda: self.settings.approval)
        self.cap_intake: Callable[..., Awaitable[web.Response]] | None = None
        self.http: Any = None
        # Upstream CAP feeds and hydrology: sets cap_intake, adds routes and loops below.
        self.feeds = Feeds(self)
        self.metrics = Metrics()
        self.dispatcher.metrics = self.feedback.metrics = self.metrics
        # No-op until run() hands over the one systemd set up (reload says RELOADING=1 … READY=1).
        self.notifier = Notifier()
        self._reloading: asyncio.Task[None] | None = None
        self._reload_again = False

    def extra_routes(self) -> list[Any]:
        """HTTP routes adapters serve (webhooks, audio, ack links)."""
        return [*self.feeds.routes(), *(r for a in self.adapters.values() for r in a.routes())]

    def background(self) -> list[tuple[str, Awaitable[Any]]]:
        """Named loops adapters need (an MQTT receive loop, a poller)."""
        return [*self.feeds.loops(), *(item for a in self.adapters.values() for item in a.background())]

    def prepare(
        self,
        warning: dict[str, Any],
        channels: Iterable[str],
        kind: str,
        context: dict[str, Any] | None = None,
    ) -> None:
        """Let the running adapters of a step's channels get ready while it is planned."""
        for channel in channels:
            adapter = self.adapters.get(channel)
            if adapter is not None and adapter.disabled_reason is None:
                try:
                    adapter.prepare(warning, kind, context)
                except Exception:
                    # Only a head start: the send does the same work if this fails.
                    log.exception("adapter.prepare_failed", channel=channel, warning_id=warning.get("id"))

    def directory(self) -> Directory:
        """The current directory (replaced on reload)."""
        return self._directory

    def policy(self) -> Any:
        """The current policy (replaced on reload)."""
        return self.settings.policy

    def adapter_context(self) -> AdapterContext:
        """What adapters are lent."""
        return AdapterContext(
            self.settings,
            self.directory,
            http=self.http,
            feedback=self.feedback,
            store=self.store,
            clock=self.clock,
            metrics=self.metrics,
            wake=self.wake,
            # Shared by all adapters: channels on one broker share its connection (extra["mqtt"]).
            extra=self.adapter_extra,
        )

    def add_adapter(self, adapter: Adapter) -> None:
        """Register a channel's adapter."""
        self.adapters[adapter.kind] = adapter

    async def start_adapters(self) -> None:
        """Start each adapter; a bad credential disables that channel without stopping warnd."""
        for name, adapter in self.adapters.items():
            try:
                await adapter.start()
                log.info("adapter.started", channel=name)
            except AuthError as exc:
                adapter.disabled_reason = exc.reason
                log.error("adapter.auth_failed", channel=name, reason=exc.reason)

    async def readiness(self) -> dict[str, dict[str, Any]]:
        """Checks for /readyz: the store answers and can write, every adapter can send."""
        checks: dict[str, dict[str, Any]] = {}
        try:
            async with asyncio.timeout(2):
                await self.store.ping()
                problem = await self.store.write_check()
            checks["store"] = {"ok": True} if problem is None else {"ok": False, "detail": problem}
        except Exception as exc:
            checks["store"] = {"ok": False, "detail": type(exc).__name__}
        for name, adapter in self.adapters.items():
            checks[f"adapter.{name}"] = {"ok": adapter.ready(), "detail": adapter.disabled_reason}
        return checks

    def reload(self) -> None:
        """SIGHUP: reload in the background; one arriving during a reload runs another after it.

        The signal handler runs on the event loop: reading a county directory there froze the
        daemon for 9–17 s. The files are read in a thread (`reload_now`).
        """
        self._reload_again = True
        if self._reloading is None or self._reloading.done():
            self._reloading = asyncio.get_running_loop().create_task(self._reloads(), name="warnd.reload")

    async def _reloads(self) -> None:
        """Reload until no SIGHUP came in meanwhile (the files may have changed again)."""
        while self._reload_again:
            self._reload_again = False
            await self.reload_now()

    async def reload_now(self) -> None:
        """Re-read directory, policy and API tokens; work in flight is untouched.

        Both files are loaded in a worker thread and put in force together on the event loop
        when both are good, so a request sees the old directory and policy or the new ones,
        never a mix. A file with errors changes nothing, and says so where a sysadmin looks: the
        STATUS of `systemctl status`, the log (`config.reload_failed` with `file` and `key`) and
        the metric `warnd_config_reload_failures_total`. A leaked token in `[[auth.tokens]]` is
        revoked by removing it and reloading; the `api_token_hashes` credential is re-read too,
        but systemd copies credentials only when the service starts, so a change there needs a
        restart.
        """
        self.notifier.reloading()
        # Replaced below; left only if something unforeseen broke (logged with its traceback).
        status = "reload failed: unexpected error, see the log; the old config stays"
        try:
            fresh, directory = await asyncio.to_thread(self._load_files)
            status = self._put_in_force(fresh, directory)
        except ConfigError as exc:
            status = self._reload_failed(exc)
        except Exception:
            # A background task's exception would surface only when the task is collected.
            log.exception("config.reload_crashed")
        finally:
            # Success or not, warnd keeps serving: READY=1 ends the reload, so `systemctl reload`
            # does not hang; the STATUS beside it tells which way it went.
            self.notifier.ready(status)

    def _load_files(self) -> tuple[Settings, Directory]:
        """Both files, read and validated (in a worker thread: no shared state touched)."""
        fresh = load_settings(self.config_path)
        return fresh, Directory.load(fresh.directory.path)

    def _put_in_force(self, fresh: Settings, directory: Directory) -> str:
        """Swap in the new policy, tokens and directory at once; the status line for systemd."""
        self.settings.policy = fresh.policy
        self.settings.auth = fresh.auth
        self.settings.approval = fresh.approval
        self.tokens.replace(fresh.auth.tokens)
        self._directory = directory
        log.info(
            "config.reloaded",
            villages=len(directory.villages),
            people=len(directory.people),
            tokens=len(self.tokens),
        )
        return (
            f"config reloaded: {len(directory.villages)} villages, {len(directory.people)} people, "
            f"{len(self.tokens)} API tokens"
        )

    def _reload_failed(self, exc: ConfigError) -> str:
        """Count and log a refused reload; the status line naming the file and the first bad key."""
        self.metrics.reload_failures.inc()
        file = str(exc.path) if exc.path is not None else "(environment)"
        key, message = exc.problems[0] if exc.problems else ("(file)", str(exc))
        # "(file)": the file as a whole (missing, not TOML, not UTF-8) rather than one key.
        key_or_none = None if key == "(file)" else key
        log.error(
            "config.reload_failed",
            file=file,
            key=key_or_none,
            message=message,
            problems=[f"{k}: {m}" for k, m in exc.problems],
        )
        where = file if key_or_none is None else f"{file}: {key}"
        more = f" (and {len(exc.problems) - 1} more)" if len(exc.problems) > 1 else ""
        return f"reload failed: {where}: {message}{more}; the old config stays"

    async def watchdog_loop(self, notifier: Notifier) -> None:
        """Ping systemd's watchdog only while the store can be written: a hung daemon gets restarted.

        The check commits a write that reaches the disk (Store.ping_write), so a full or
        read-only disk stops the pings as a hung one does. A slow check is waited for, never
        cancelled (a SQLite call cancelled half-way can leave a transaction open); until it
        finishes there is simply no ping. Logged once per outage.
        """
        interval = notifier.watchdog_interval_s
        if interval is None:
            return
        check: asyncio.Task[None] | None = None
        healthy = True
        try:
            while True:
                if check is None:
                    check = asyncio.create_task(self.store.ping_write(), name="warnd.watchdog.check")
                await asyncio.wait({check}, timeout=interval)
                if check.done():
                    error = check.exception()
                    check = None
                    problem = None if error is None else getattr(error, "reason", type(error).__name__)
                else:
                    problem = "store_slow"
                if problem is None:
                    notifier.watchdog()
                    if not healthy:
                        log.info("watchdog.store_recovered")
                elif healthy:
                    log.error("watchdog.store_unhealthy", problem=problem)
                healthy = problem is None
                await asyncio.sleep(interval)
        finally:
            if check is not None:
                check.cancel()


async def _wait_for_signal(daemon: Daemon) -> None:
    """Wait for SIGTERM or SIGINT; SIGHUP reloads."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, daemon.reload)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)


async def run(
    settings: Settings,
    *,
    config_path: Path | None = None,
    shutdown_trigger: Callable[[], Awaitable[Any]] | None = None,
    adapters: Mapping[str, Callable[[AdapterContext], Adapter]] | None = None,
    clock: Clock | None = None,
    on_ready: Callable[[Daemon], Any] | None = None,
) -> None:
    """Run warnd until the shutdown trigger (default: SIGTERM/SIGINT) fires."""
    from adapters import enabled_adapters
    from warnd.api import make_app

    notifier = Notifier.from_env()
    directory = Directory.load(settings.directory.path)
    async with AsyncExitStack() as stack:
        # Before the store: a second warnd on this state directory exits here (AlreadyRunning).
        stack.enter_context(instance_lock(settings.state_dir))
        store = await Store(settings.state_dir / "warnd.db").open()
        stack.push_async_callback(store.close)
        recovered = await store.recover()
        daemon = Daemon(settings, store, directory, clock=clock, config_path=config_path)
        daemon.notifier = notifier
        factories = dict(adapters) if adapters is not None else enabled_adapters(settings)
        for factory in factories.values():
            daemon.add_adapter(factory(daemon.adapter_context()))
        await daemon.start_adapters()
        for adapter in daemon.adapters.values():
            stack.push_async_callback(adapter.aclose)
        runner = web.AppRunner(make_app(daemon, daemon.extra_routes()), access_log=None)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, settings.http.host, settings.http.port)
        await site.start()
        log.info(
            "warnd.started",
            http=f"{settings.http.host}:{settings.http.port}",
            villages=len(directory.villages),
            people=len(directory.people),
            channels=sorted(daemon.adapters),
            recovered=recovered,
        )
        notifier.ready()
        if on_ready is not None:
            on_ready(daemon)

        async def stop_when_triggered() -> None:
            """Stop accepting, let sends in flight finish, then stop every loop."""
            await (shutdown_trigger() if shutdown_trigger else _wait_for_signal(daemon))
            log.info("warnd.stopping")
            notifier.stopping()
            await site.stop()
            await daemon.dispatcher.drain(settings.dispatch.grace_s)
            raise Shutdown

        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(stop_when_triggered(), name="warnd.shutdown")
                tg.create_task(daemon.scheduler.loop(), name="warnd.scheduler")
                for channel in daemon.adapters:
                    tg.create_task(daemon.dispatcher.channel_loop(channel), name=f"warnd.dispatch.{channel}")
                tg.create_task(daemon.watchdog_loop(notifier), name="warnd.watchdog")
                tg.create_task(daemon.metrics.loop_lag_loop(), name="warnd.loop_lag")
                for name, coro in daemon.background():
                    tg.create_task(coro, name=name)
        except* Shutdown:
            pass
        log.info("warnd.stopped")
