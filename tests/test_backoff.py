"""The one backoff rule, and each retry in warnd that uses it with its own base, cap and spread."""

from __future__ import annotations

import random

import pytest

from warnd import confirm
from warnd.backoff import backoff_s, retry_delay_s


class Fixed(random.Random):
    """A random source that always draws the same value (0.0 or 1.0 pick the ends of a spread)."""

    def __init__(self, value: float) -> None:
        """Remember the value."""
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        """The fixed draw."""
        return self.value


@pytest.mark.parametrize(
    ("attempt", "draw", "expected_s"),
    [
        (1, 1.0, 10.0),  # the first retry: about the base
        (1, 0.0, 5.0),  # up to half off
        (2, 1.0, 20.0),
        (4, 1.0, 80.0),
        (5, 1.0, 100.0),  # capped
        (0, 1.0, 10.0),  # no attempt yet counts as the first
        (10_000, 1.0, 100.0),  # a very long failure streak does not overflow
    ],
)
def test_doubles_from_the_base_up_to_the_cap(attempt: int, draw: float, expected_s: float) -> None:
    """base · 2^(attempt−1), capped, times the draw within (0.5, 1.0)."""
    assert backoff_s(attempt, 10.0, 100.0, Fixed(draw)) == pytest.approx(expected_s)


def test_spread_and_factor_are_the_callers() -> None:
    """Full jitter can reach zero; a factor of 1.5 grows more slowly."""
    assert backoff_s(3, 10.0, 100.0, Fixed(0.0), spread=(0.0, 1.0)) == 0.0
    assert backoff_s(3, 1.0, 100.0, Fixed(1.0), factor=1.5, spread=(0.0, 1.0)) == pytest.approx(2.25)


def test_jitter_stays_inside_the_spread() -> None:
    """Many draws from a real random source: all between half the ceiling and the ceiling, not all equal."""
    rng = random.Random(7)
    delays = [backoff_s(3, 10.0, 100.0, rng) for _ in range(500)]
    assert all(20.0 <= d <= 40.0 for d in delays)
    assert max(delays) - min(delays) > 15.0


def test_delivery_retry_never_sooner_than_retry_after() -> None:
    """The dispatcher's retry is the backoff, or the far end's Retry-After when that is longer."""
    assert retry_delay_s(2, None, base_s=10, cap_s=100, rng=Fixed(1.0)) == 20.0
    assert retry_delay_s(2, 300.0, base_s=10, cap_s=100, rng=Fixed(1.0)) == 300.0


def test_confirmation_rounds_never_sooner_than_the_timeout() -> None:
    """Rounds double from the timeout, up to a quarter more; a cap below the timeout is the timeout."""
    assert confirm.delay_s(1, 60, 3600, Fixed(0.0)) == 60
    assert confirm.delay_s(3, 60, 3600, Fixed(1.0)) == pytest.approx(300)
    assert confirm.delay_s(9, 60, 30, Fixed(0.0)) == 60
