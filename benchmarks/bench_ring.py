"""Ring buffer speed, one number per build (``impl`` fixture).

Run: ``pytest benchmarks/bench_ring.py --benchmark-only``. A round pushes
``ROUND_ITEMS`` items and drains them in batches of ``DRAIN_BATCH``, as the
gateway loop and the database writer do; ``extra_info["per_item_ns"]`` is the
median round divided by the items it moved.
"""

from __future__ import annotations

from typing import Any

import pytest

from autocore import _fast

pytestmark = pytest.mark.benchmark(group="ring", warmup=True)

#: Items pushed, then drained, per benchmark round.
ROUND_ITEMS = 1000
#: Items per drain call, as the writer thread takes them.
DRAIN_BATCH = 100
#: Room for a whole round, so that push+drain never evicts.
RING_CAPACITY = 1024

ITEMS = tuple(range(ROUND_ITEMS))


def _record_per_item(benchmark: Any) -> None:
    median_s = benchmark.stats.stats.median
    benchmark.extra_info["per_item_ns"] = round(median_s / ROUND_ITEMS * 1e9, 1)


def test_bench_ring_push_drain(benchmark: Any, impl: _fast.Implementation) -> None:
    ring = impl.Ring(RING_CAPACITY)
    push, drain = ring.push, ring.drain
    batches = range(ROUND_ITEMS // DRAIN_BATCH)

    def round_trip() -> None:
        for item in ITEMS:
            push(item)
        for _ in batches:
            drain(DRAIN_BATCH)

    benchmark(round_trip)
    _record_per_item(benchmark)
    assert len(ring) == 0 and ring.dropped == 0


def test_bench_ring_push_evicting(benchmark: Any, impl: _fast.Implementation) -> None:
    """Push into a full drop_oldest ring: every push evicts the oldest item."""
    ring = impl.Ring(DRAIN_BATCH)
    push = ring.push
    for item in range(DRAIN_BATCH):
        push(item)

    def overflow() -> None:
        for item in ITEMS:
            push(item)

    benchmark(overflow)
    _record_per_item(benchmark)
    assert ring.full and ring.dropped >= ROUND_ITEMS
