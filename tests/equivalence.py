"""Helpers shared by the property tests and the fuzz targets that compare the two builds."""

from __future__ import annotations

import math
from typing import Any

#: One topic of each kind the validator treats differently (order matters to the tests).
ENVELOPE_TOPICS = (
    "autocore/devices/esp32-sensor-001/telemetry",
    "autocore/telemetry/relays/data",
    "autocore/devices/esp32-relay-001/relays/state",
    "autocore/devices/esp32-relay-001/status",
    "autocore/devices/esp32-relay-001/announce",
    "autocore/devices/esp32-relay-001/response",
    "autocore/devices/all/relays/command",
    "autocore/devices/esp32-relay-001/relays/set",
    "autocore/discovery/announce",
    "autocore/errors/esp32-relay-001/payload",
    "autocore/modes/parking",
)


def typed(value: Any) -> Any:
    """Spell out types and float signs, which ``==`` ignores (1 == 1.0 == True, -0.0 == 0.0)."""
    if isinstance(value, dict):
        return [(k, typed(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [typed(v) for v in value]
    if isinstance(value, float):
        return ("float", math.copysign(1.0, value), value)
    return (type(value).__name__, value)


def varint(value: int) -> bytes:
    """MQTT's variable byte integer (remaining length, property lengths), for building packets."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)
