"""A person channel (sms, voice) over its providers: fallback order, which provider sent it, polling.

See adapters/providers/base.py for the provider interface and the fallback rule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from adapters.providers import provider_classes
from adapters.providers.base import Provider, passes_on, tagged
from warnd.adapter import (
    Adapter,
    AdapterContext,
    AuthError,
    Message,
    QuotaUse,
    Receipt,
    TransientError,
    Webhook,
)
from warnd.pacing import Pacer
from warnd.polling import poll_loop

if TYPE_CHECKING:
    from warnd.config import Settings

log = structlog.get_logger("warnd.providers")

# Share of the gap between two sends kept free: absorbs the jitter between leaving the spacer
# and the provider's clock, so warnd itself never causes a 429 (bench/sms_rate.py measures both).
RATE_MARGIN = 0.02


class ProviderChannel(Adapter):
    """A person channel (sms, voice) sending through its providers in the configured fallback order.

    Args:
        ctx: what the daemon lends the adapter.
    """

    def __init__(self, ctx: AdapterContext) -> None:
        """Build the configured providers, in order; start them in `start()`."""
        super().__init__(ctx)
        self.pacer = Pacer(RATE_MARGIN)
        classes = provider_classes(self.kind, ctx.settings)
        configured = [cls for cls in classes if cls.configured(ctx.settings)]
        self.providers: list[Provider] = [cls(ctx, self.pacer) for cls in configured]
        for p in self.providers[:-1]:
            p.hand_on = True
        if self.providers:
            self.limits = self.providers[0].limits  # type: ignore[misc]

    @classmethod
    def configured(cls, settings: Settings) -> bool:
        """At least one of the channel's providers has what it needs."""
        return any(p.configured(settings) for p in provider_classes(cls.kind, settings))

    def active(self) -> list[Provider]:
        """The providers that can send, in fallback order."""
        return [p for p in self.providers if p.disabled_reason is None]

    def provider(self, name: str) -> Provider | None:
        """The provider of this name, if configured."""
        return next((p for p in self.providers if p.name == name), None)

    async def quota_use(self, addresses: Sequence[str]) -> list[QuotaUse]:
        """Today's use of the daily quota per number at each provider that has one."""
        out = []
        for p in self.active():
            limit = p.daily_quota()
            if limit is None:
                continue
            used = await p.quota_used(addresses)
            out += [QuotaUse(a, p.name, n, limit) for a, n in sorted(used.items())]
        return out

    async def start(self) -> None:
        """Start every provider; only when none can start is the channel disabled."""
        failed: AuthError | None = None
        for p in self.providers:
            try:
                await p.start()
            except AuthError as exc:
                p.disabled_reason = exc.reason
                failed = exc
                log.error("provider.auth_failed", channel=self.kind, provider=p.name, reason=exc.reason)
        if failed is not None and not self.active():
            raise failed

    async def aclose(self) -> None:
        """Close every provider."""
        for p in self.providers:
            await p.aclose()

    def ready(self) -> bool:
        """Some provider can send."""
        return super().ready() and bool(self.active())

    def webhooks(self) -> list[Webhook]:
        """Every provider's callbacks."""
        return [r for p in self.providers for r in p.webhooks()]

    def background(self) -> list[tuple[str, Any]]:
        """A core-owned polling loop per provider that pulls instead of being called back."""
        loops = []
        for p in self.providers:
            if p.poll_interval_s() is not None:
                name = f"{p.name}.{self.kind}"
                loops.append((f"warnd.{name}.poll", poll_loop(name, p.poll_once, _interval(p))))
        return loops

    async def poll_once(self) -> int:
        """One pulling round of every provider that pulls; how many changes they found."""
        found = 0
        for p in self.active():
            if p.poll_interval_s() is not None:
                found += await p.poll_once()
        return found

    async def send(self, message: Message) -> Receipt:
        """Send one message (through send_batch, with fallback)."""
        [result] = await self.send_batch([message])
        if isinstance(result, BaseException):
            raise result
        return result

    async def send_batch(self, messages: Sequence[Message]) -> list[Receipt | BaseException]:
        """Send through the first provider; what it surely did not send goes to the next one."""
        results: list[Receipt | BaseException] = [TransientError("no provider can send")] * len(messages)
        remaining = list(range(len(messages)))
        providers = self.active()
        if not providers and self.providers:
            # Every provider's credentials were refused: the channel is misconfigured, as with one.
            reason = "; ".join(f"{p.name}: {p.disabled_reason}" for p in self.providers)
            return [AuthError(reason) for _ in messages]
        for n, p in enumerate(providers):
            if not remaining:
                break
            answers = await p.send_batch([messages[i] for i in remaining])
            last = n == len(providers) - 1
            passed: list[int] = []
            for i, r in zip(remaining, answers, strict=True):
                results[i] = tagged(r, p.name)
                if isinstance(r, AuthError) and p.disabled_reason is None:
                    p.disabled_reason = r.reason
                    log.error("provider.auth_failed", channel=self.kind, provider=p.name, reason=r.reason)
                if not last and passes_on(r):
                    passed.append(i)
            if passed:
                first = answers[remaining.index(passed[0])]
                reason = getattr(first, "reason", type(first).__name__)
                log.warning("provider.fallback", channel=self.kind, provider=p.name,
                            to=providers[n + 1].name, count=len(passed), reason=reason)  # fmt: skip
            remaining = passed
        if any(p.disabled_reason is None for p in self.providers):
            # One provider's credentials are that provider's problem while another can still send.
            results = [TransientError(r.reason) if isinstance(r, AuthError) else r for r in results]
        try:
            await self._record_providers(messages, results)
        except Exception:
            # The sends happened: their receipts stand (a lost receipt would send them again).
            log.exception("provider.record_failed", channel=self.kind)
        return results

    async def reconcile(self, message: Message) -> Receipt | None:
        """Ask each provider, in order, whether it has the message by our id; the first that has it wins."""
        for p in self.active():
            try:
                found = await p.reconcile(message)
            except AuthError as exc:
                # That provider's credentials: it stops, and nobody can tell yet whether it sent this.
                p.disabled_reason = exc.reason
                log.error("provider.auth_failed", channel=self.kind, provider=p.name, reason=exc.reason)
                raise TransientError(f"{p.name} cannot look the message up: {exc.reason}") from None
            if found is not None:
                return tagged(found, p.name)  # type: ignore[return-value]
        return None

    async def _record_providers(self, messages: Sequence[Message], results: Sequence[Any]) -> None:
        """Write which provider took each message the deliveries' `provider` column."""
        pairs = [(m.delivery.id, r.provider) for m, r in zip(messages, results, strict=True)
                 if isinstance(r, Receipt) and r.provider]  # fmt: skip
        if pairs and self.ctx.store is not None:
            await self.ctx.store.set_delivery_providers(pairs)


def _interval(p: Provider) -> Callable[[], float]:
    """A provider's polling interval, read each round (a reload may change it)."""
    return lambda: p.poll_interval_s() or 60.0
