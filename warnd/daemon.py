"""Lifecycle: build warnd (warnd.app), serve the API, run the loops, reload on SIGHUP, stop cleanly."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from adapters import enabled_adapters
from warnd.adapter import Adapter, AdapterContext
from warnd.api import make_app
from warnd.app import Services, build
from warnd.clock import Clock
from warnd.config import ConfigError, Settings, load_settings
from warnd.directory import Directory
from warnd.memory import limit_malloc_arenas
from warnd.sdnotify import Notifier
from warnd.setup import retry_start_loop
from warnd.store import Store

log = structlog.get_logger("warnd.daemon")


class Shutdown(Exception):
    """Raised inside the TaskGroup to stop every loop."""


class Reloader:
    """SIGHUP: directory, policy and API tokens re-read and put in force in place.

    Args:
        services: the running warnd.
        notifier: tells systemd RELOADING=1 … READY=1.
    """

    def __init__(self, services: Services, notifier: Notifier) -> None:
        """Keep what a reload replaces."""
        self.services = services
        self.settings, self.tokens, self.metrics = services.settings, services.tokens, services.metrics
        self.config_path = services.config_path
        self.notifier = notifier
        self._reloading: asyncio.Task[None] | None = None
        self._reload_again = False

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
        return fresh, Directory.load(fresh.directory.path, beside_loop=True)

    def _put_in_force(self, fresh: Settings, directory: Directory) -> str:
        """Swap in the new policy, tokens and directory at once; the status line for systemd."""
        self.settings.policy = fresh.policy
        self.settings.auth = fresh.auth
        self.settings.approval = fresh.approval
        self.tokens.replace(fresh.auth.tokens)
        self.services.directory.replace(directory)
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


async def watchdog_loop(store: Store, notifier: Notifier) -> None:
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
                check = asyncio.create_task(store.ping_write(), name="warnd.watchdog.check")
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


async def _wait_for_signal(reloader: Reloader) -> None:
    """Wait for SIGTERM or SIGINT; SIGHUP reloads."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reloader.reload)
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
    on_ready: Callable[[Services], Any] | None = None,
) -> None:
    """Run warnd until the shutdown trigger (default: SIGTERM/SIGINT) fires."""
    limit_malloc_arenas()  # before the store's and the workers' threads start
    notifier = Notifier.from_env()
    factories = dict(adapters) if adapters is not None else enabled_adapters(settings)
    async with build(settings, factories.values(), clock=clock, config_path=config_path) as services:
        reloader = Reloader(services, notifier)
        runner = web.AppRunner(make_app(services), access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, settings.http.host, settings.http.port)
            await site.start()
            directory = services.directory()
            log.info(
                "warnd.started",
                http=f"{settings.http.host}:{settings.http.port}",
                villages=len(directory.villages),
                people=len(directory.people),
                channels=sorted(services.adapters),
                recovered=services.recovered,
            )
            notifier.ready()
            if on_ready is not None:
                on_ready(services)

            async def stop_when_triggered() -> None:
                """Stop accepting, let sends in flight finish, then stop every loop."""
                await (shutdown_trigger() if shutdown_trigger else _wait_for_signal(reloader))
                log.info("warnd.stopping")
                notifier.stopping()
                await site.stop()
                await services.dispatcher.drain(settings.dispatch.grace_s)
                raise Shutdown

            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(stop_when_triggered(), name="warnd.shutdown")
                    tg.create_task(services.scheduler.loop(), name="warnd.scheduler")
                    for channel, adapter in services.adapters.items():
                        tg.create_task(
                            services.dispatcher.channel_loop(channel), name=f"warnd.dispatch.{channel}"
                        )
                        if adapter.not_ready_reason is not None:
                            tg.create_task(
                                retry_start_loop(adapter, services.clock, services.wake),
                                name=f"warnd.setup.{channel}",
                            )
                    tg.create_task(watchdog_loop(services.store, notifier), name="warnd.watchdog")
                    tg.create_task(services.metrics.loop_lag_loop(), name="warnd.loop_lag")
                    for name, coro in services.background():
                        tg.create_task(coro, name=name)
            except* Shutdown:
                pass
        finally:
            await runner.cleanup()
        log.info("warnd.stopped")
