"""Historian-style telemetry compression, opt-in (see ``_fast._compress_py`` for the filter).

The gateway stores every reading unless ``AUTOCORE_COMPRESSION`` turns on a
deadband or swinging-door filter. This module holds what the settings and the
pipeline need around the filter: parsing the per-key deviations, building a
``Compressor`` from settings, and applying it to the rows of one telemetry
message, whose values arrive as text (``"20.5"``, ``"1"``).

Rows are ``(data_type, data_key, data_value_text, unit)``; a key is the device
uuid and the row's ``data_key``. Rows released late (held readings) keep the
receive time of the message they came in, so the caller stores them with it.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any

from autocore._fast import Compressor
from autocore._fast._compress_py import (
    DEADBAND, DROP, HEARTBEAT_S, HELD, KEEP, MAX_KEYS, MAX_KEYS_LIMIT, MODES, SWINGING_DOOR,
)

#: ``AUTOCORE_COMPRESSION`` value that stores every reading (the default).
OFF = "off"
#: Values ``AUTOCORE_COMPRESSION`` accepts.
SETTING_MODES = (OFF, DEADBAND, SWINGING_DOOR)

Row = tuple[str, str, str, "str | None"]

__all__ = [
    "DEADBAND", "DROP", "HEARTBEAT_S", "HELD", "KEEP", "MAX_KEYS", "MAX_KEYS_LIMIT", "MODES", "OFF",
    "SETTING_MODES", "SWINGING_DOOR", "Compressor", "filter_rows", "from_settings",
    "group_released", "parse_deviations",
]


def parse_deviations(text: str) -> tuple[tuple[str, float], ...]:
    """Parse ``"can_rpm=25,analog_temp=0.2"`` into pairs; ValueError on any malformed entry.

    Empty text means no per-key deviation. Each number must be finite and >= 0,
    and a name may appear once: a repeated name is a typo, not an override.
    """
    pairs: list[tuple[str, float]] = []
    seen: set[str] = set()
    for entry in text.split(","):
        if not entry.strip():
            continue
        name, sep, number = entry.partition("=")
        name = name.strip()
        if not sep or not name or name in seen:
            raise ValueError(f"bad deviation entry {entry!r}")
        value = float(number.strip())
        if not 0.0 <= value < float("inf"):  # also refuses NaN
            raise ValueError(f"bad deviation entry {entry!r}")
        seen.add(name)
        pairs.append((name, value))
    return tuple(pairs)


def from_settings(settings: Any) -> Compressor | None:
    """Build the gateway's compressor, or None when ``AUTOCORE_COMPRESSION`` is off (the default).

    Reads the ``compression*`` fields of ``Settings``; a settings object
    without them means compression off.
    """
    mode = getattr(settings, "compression", OFF)
    if mode == OFF:
        return None
    return Compressor(
        mode,
        deviation=getattr(settings, "compression_deviation", 0.0),
        heartbeat_s=getattr(settings, "compression_heartbeat_s", HEARTBEAT_S),
        max_keys=getattr(settings, "compression_max_keys", MAX_KEYS),
        deviations=dict(getattr(settings, "compression_deviations", ())),
    )


def _value(text: object) -> object:
    # Numbers arrive as text; anything float() refuses is offered as it is (always stored).
    if isinstance(text, str):
        try:
            return float(text)
        except ValueError:
            return text
    return text


def filter_rows(compressor: Compressor, source: Hashable, t: float,
                rows: Iterable[Row]) -> tuple[list[Row], list[tuple[float, list[Row]]]]:
    """Split one message's rows, received at ``t``, into those to store now and released ones.

    Returns ``(kept, released)``: ``kept`` are rows of this message to store with
    its receive time; ``released`` are held rows of earlier messages that are
    now to be stored, as ``(t, rows)`` groups in the order they were released,
    each with the receive time of the message the rows came in.
    """
    kept: list[Row] = []
    released: list[tuple[float, list[Row]]] = []
    offer = compressor.offer
    for row in rows:
        flags = offer(source, row[1], t, _value(row[2]), row)
        if flags & HELD:
            held = compressor.take_held()
            if held is not None:
                held_t, _, held_row = held
                if released and released[-1][0] == held_t:
                    released[-1][1].append(held_row)
                else:
                    released.append((held_t, [held_row]))
        if flags & KEEP:
            kept.append(row)
    return kept, released


def group_released(
    released: Iterable[tuple[Any, Any, float, float, Any]],
) -> list[tuple[Any, float, list[Any]]]:
    """Group what ``expire``/``flush`` released into ``(source, t, rows)``, one per message."""
    groups: dict[tuple[Any, float], list[Any]] = {}
    for source, _, t, _, row in released:
        groups.setdefault((source, t), []).append(row)
    return [(source, t, rows) for (source, t), rows in groups.items()]
