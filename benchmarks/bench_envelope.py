"""parse_topic + validate on the gateway's hot path, one number per build (``impl`` fixture).

Run: ``pytest benchmarks/bench_envelope.py --benchmark-only``. Each benchmark times
what the gateway does per MQTT message: classify the topic, then validate the
payload with a Validator created once at start-up.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from autocore import _fast

FIXTURES = Path(__file__).parent.parent / "tests" / "data" / "fixtures"
TELEMETRY_TOPIC = "autocore/devices/esp32-sensor-001/telemetry"
#: Signals in the synthetic CAN burst (a busy ECU frame set).
CAN_BURST_SIGNALS = 20

TYPICAL_TELEMETRY = (FIXTURES / "telemetry_analog_system.json").read_bytes()
BAD_JSON = (FIXTURES / "invalid_not_json.json").read_bytes()


def _can_burst() -> bytes:
    """A telemetry message carrying CAN_BURST_SIGNALS decoded signals."""
    signals = {
        f"SIG_{n:02d}": {"value": 1000.5 + n * 13.25, "unit": "rpm" if n % 2 else "%",
                         "can_id": f"0x{0x200 + n:03X}"}
        for n in range(CAN_BURST_SIGNALS)
    }
    payload = {
        "protocol_version": "2.2.0", "uuid": "esp32-sensor-001",
        "timestamp": "2025-08-12T20:53:17Z", "can_data": {"signals": signals},
    }
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


CAN_BURST = _can_burst()


def _pipeline(impl: _fast.Implementation, topic: str, payload: bytes) -> Callable[[], Any]:
    validator = impl.Validator()
    parse_topic = impl.parse_topic
    validate = validator.validate

    def run() -> Any:
        return validate(parse_topic(topic), payload)

    return run


def test_bench_envelope_typical_telemetry(benchmark: Any, impl: _fast.Implementation) -> None:
    result = benchmark(_pipeline(impl, TELEMETRY_TOPIC, TYPICAL_TELEMETRY))
    assert len(result.rows) == 7


def test_bench_envelope_can_burst(benchmark: Any, impl: _fast.Implementation) -> None:
    result = benchmark(_pipeline(impl, TELEMETRY_TOPIC, CAN_BURST))
    assert len(result.rows) == CAN_BURST_SIGNALS


def test_bench_envelope_bad_json(benchmark: Any, impl: _fast.Implementation) -> None:
    result = benchmark(_pipeline(impl, "autocore/devices/esp32-relay-001/status", BAD_JSON))
    assert result.reason == "bad_json"
