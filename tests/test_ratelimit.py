"""Token buckets per device: rate, burst, isolation between devices, bounded memory."""

from __future__ import annotations

from autocore import ratelimit
from autocore.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_steady_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(10, burst=5, clock=clock)
    assert [limiter.allow("a") for _ in range(7)] == [True] * 5 + [False] * 2
    clock.now += 0.1  # one token back
    assert limiter.allow("a") and not limiter.allow("a")
    clock.now += 10  # refills to the burst, never above
    assert sum(limiter.allow("a") for _ in range(20)) == 5


def test_one_flooding_device_does_not_starve_another() -> None:
    clock = Clock()
    limiter = RateLimiter(100, burst=100, clock=clock)
    assert sum(limiter.allow("flood") for _ in range(2000)) == 100
    assert all(limiter.allow("quiet") for _ in range(50))


def test_zero_rate_disables_limiting() -> None:
    limiter = RateLimiter(0, burst=1)
    assert all(limiter.allow("a") for _ in range(1000))


def test_made_up_uuids_cannot_grow_memory(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(ratelimit, "MAX_BUCKETS", 100)
    limiter = RateLimiter(1, burst=1)
    for i in range(1000):
        limiter.allow(f"ghost-{i}")
    assert len(limiter) == 100
