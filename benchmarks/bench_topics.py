"""Topic parser speed, one number per build (``impl`` fixture).

Run: ``pytest benchmarks/bench_topics.py --benchmark-only``. Each benchmark times
one ``parse_topic`` call, the first thing the gateway does with every message.
"""

from __future__ import annotations

from typing import Any

import pytest

from autocore import _fast

# Warm up first: the calls are short enough for a cold cache to skew calibration.
pytestmark = pytest.mark.benchmark(group="topics", warmup=True)

#: Device telemetry, the most frequent topic on a busy bus.
TELEMETRY_TOPIC = "autocore/devices/esp32-sensor-001/telemetry"
#: Relay state, the longest common shape (five levels).
RELAY_STATE_TOPIC = "autocore/devices/esp32-relay-001/relays/state"
#: A subscribed shape whose uuid fails the character check on its last character.
INVALID_TOPIC = "autocore/devices/esp32-relay-00$/relays/state"


def test_bench_topics_telemetry(benchmark: Any, impl: _fast.Implementation) -> None:
    record = benchmark(impl.parse_topic, TELEMETRY_TOPIC)
    assert record.kind == "telemetry"


def test_bench_topics_relay_state(benchmark: Any, impl: _fast.Implementation) -> None:
    record = benchmark(impl.parse_topic, RELAY_STATE_TOPIC)
    assert record.kind == "relay_state"


def test_bench_topics_invalid(benchmark: Any, impl: _fast.Implementation) -> None:
    record = benchmark(impl.parse_topic, INVALID_TOPIC)
    assert record.reason == "bad_uuid"
