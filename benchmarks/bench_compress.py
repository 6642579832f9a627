"""Historian compression speed, one number per build (``impl`` fixture).

Run: ``pytest benchmarks/bench_compress.py --benchmark-only``. A round offers one
minute of the synthetic drive of ``benchmarks/compression.py`` (11 signals at
10 Hz) to a fresh compressor; ``extra_info["per_reading_ns"]`` is the median
round divided by the readings it offered. ``compression.py`` reports the rows
saved and the reconstruction error on the same signals.
"""

from __future__ import annotations

from typing import Any

import pytest

from autocore import _fast
from autocore.compression import DEADBAND, HELD, SWINGING_DOOR, filter_rows
from benchmarks.compression import DEVICE, DEVIATIONS, HEARTBEAT_S, UNITS, drive

pytestmark = pytest.mark.benchmark(group="compress", warmup=True)

#: Simulated seconds per round, at 10 Hz.
ROUND_SECONDS = 60.0

TIMES, SERIES = drive(ROUND_SECONDS, 10.0, seed=1)
TICKS = [[(name, SERIES[name][i]) for name in SERIES] for i in range(len(TIMES))]
MESSAGES = [[("sensor", name, repr(float(value)), UNITS.get(name)) for name, value in tick]
            for tick in TICKS]
READINGS = len(TIMES) * len(SERIES)


def _record_per_reading(benchmark: Any) -> None:
    median_s = benchmark.stats.stats.median
    benchmark.extra_info["per_reading_ns"] = round(median_s / READINGS * 1e9, 1)


def _offer_round(impl: _fast.Implementation, mode: str) -> None:
    comp = impl.Compressor(mode, heartbeat_s=HEARTBEAT_S, deviations=DEVIATIONS)
    offer, take = comp.offer, comp.take_held
    for t, tick in zip(TIMES, TICKS):
        for name, value in tick:
            if offer(DEVICE, name, t, value, None) & HELD:
                take()


def test_bench_compress_swinging_door(benchmark: Any, impl: _fast.Implementation) -> None:
    benchmark(_offer_round, impl, SWINGING_DOOR)
    _record_per_reading(benchmark)


def test_bench_compress_deadband(benchmark: Any, impl: _fast.Implementation) -> None:
    benchmark(_offer_round, impl, DEADBAND)
    _record_per_reading(benchmark)


def test_bench_compress_text_rows(benchmark: Any, impl: _fast.Implementation) -> None:
    """What the gateway's telemetry handler would run: filter_rows on one message's text rows."""

    def rows_round() -> None:
        comp = impl.Compressor(SWINGING_DOOR, heartbeat_s=HEARTBEAT_S, deviations=DEVIATIONS)
        for t, rows in zip(TIMES, MESSAGES):
            filter_rows(comp, DEVICE, t, rows)

    benchmark(rows_round)
    _record_per_reading(benchmark)
