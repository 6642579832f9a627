"""Helpers shared by the property tests and the fuzz targets that compare the two builds."""

from __future__ import annotations

import math
from typing import Any


def typed(value: Any) -> Any:
    """Spell out types and float signs, which ``==`` ignores (1 == 1.0 == True, -0.0 == 0.0)."""
    if isinstance(value, dict):
        return [(k, typed(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [typed(v) for v in value]
    if isinstance(value, float):
        return ("float", math.copysign(1.0, value), value)
    return (type(value).__name__, value)
