"""Historian-style compression of telemetry readings (pure-Python twin of ``_compress.pyx``).

A ``Compressor`` decides, reading by reading, which rows of a signal are worth
storing. Each signal is one key, ``(source, name)``: a device uuid and a data
key. The state of a key is a few doubles, the number of keys is capped, and
only the event-loop thread uses a compressor (neither twin takes a lock).

Two modes, as process historians offer them:

``deadband``
    Store a reading when it differs from the last stored one by more than the
    key's deviation. Holding the last stored value reproduces every dropped
    reading within the deviation.

``swinging_door``
    Store the readings that a straight line cannot skip. The latest reading of
    a key is *held* (not stored yet). When the next reading arrives, the held
    one is dropped if the line from the last stored point to the new reading
    passes within the deviation of it and of every reading dropped since that
    stored point; otherwise the door closes and the held reading is released
    to be stored, becoming the new starting point. Linear interpolation between
    stored points therefore reproduces every dropped reading within the
    deviation (in the signal's unit), which is the swinging-door guarantee.
    A released reading belongs to an earlier call: ``offer`` says so with the
    ``HELD`` flag and ``take_held`` hands it over with its own time.

In both modes:

* the first reading of a key is stored, and so is every reading that is not a
  finite number (text, None, NaN, infinities; the next number is stored too);
* a change between 0 and 1 (relay states, booleans) is stored at once, with
  the held reading before it;
* a reading whose time is not later than the key's previous reading (a clock
  step, two readings with one receive time) is stored, with the held reading;
* heartbeat: a reading that comes ``heartbeat_s`` or more after the key's last
  stored point is stored, so a signal that never changes still gets a row at
  least that often (the Config App shows the latest rows of a device);
* ``expire(now)`` releases the held reading of every key silent for
  ``heartbeat_s`` and forgets that key; ``flush()`` releases all of them at
  shutdown. Held readings live only in memory: a power cut loses them;
* once ``max_keys`` keys are tracked, readings of new keys are all stored
  (counted as ``untracked``) until ``expire`` forgets silent keys.

Times are seconds as ``int`` or ``float`` (epoch or monotonic, one clock per
compressor). Values count as numbers when they are ``int`` or ``float``
(``bool`` included); anything else is stored as it is.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Hashable, Mapping
from typing import Any, cast

from autocore.errors import ConfigError

DEADBAND = "deadband"
SWINGING_DOOR = "swinging_door"
MODES = (DEADBAND, SWINGING_DOOR)

#: ``offer`` result flags: store nothing, store this reading, store the held one first.
DROP = 0
KEEP = 1
HELD = 2

#: Longest a key goes without a stored row while it keeps reporting, s.
HEARTBEAT_S = 60.0
#: Keys tracked at most; readings of further keys are all stored.
MAX_KEYS = 4096
#: Largest ``max_keys`` accepted.
MAX_KEYS_LIMIT = 10_000_000

# Key states.
_RESTART = 0  # no usable starting point: the next number is stored
_STORED = 1  # the key's last reading is its last stored point
_HOLDING = 2  # the key's last reading is held, not stored yet

_INF = math.inf
_NAN = math.nan


def _seconds(t: object) -> float:
    if type(t) is float:
        return t
    if isinstance(t, (int, float)):
        return float(t)
    raise TypeError(f"t must be a number of seconds (int or float), got {type(t).__name__}")


def _checked_number(key: str, value: object, positive: bool) -> float:
    expected = "a finite number > 0" if positive else "a finite number >= 0"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(key, value, expected)
    try:
        number = float(value)
    except OverflowError:
        raise ConfigError(key, value, expected) from None
    if not math.isfinite(number) or number < 0.0 or (positive and number == 0.0):
        raise ConfigError(key, value, expected)
    return number


class _Key:
    """State of one signal: its last stored point, its last reading and the door's slopes."""

    __slots__ = ("anchor_t", "anchor_v", "last_t", "last_v", "lo", "hi", "deviation", "state",
                 "item")

    def __init__(self, deviation: float) -> None:
        self.anchor_t = _NAN
        self.anchor_v = _NAN
        self.last_t = -_INF
        self.last_v = _NAN
        self.lo = -_INF
        self.hi = _INF
        self.deviation = deviation
        self.state = _RESTART
        self.item: Any = None


class Compressor:
    """Per-key deadband or swinging-door filter deciding which telemetry readings to store.

    ``offer`` returns ``DROP``, ``KEEP`` (store this reading), ``HELD`` (store
    the held reading that ``take_held`` returns) or ``KEEP | HELD`` (both,
    the held one first). Each key's deviation is ``deviations[name]`` when
    given, else ``deviation``. Every dropped reading lies within its key's
    deviation of the stored ones: of the last stored value (deadband), or of
    the straight line between the two stored points around it (swinging door).
    """

    __slots__ = ("_index", "_mode", "_sdt", "_deviation", "_deviations", "_heartbeat", "_max_keys",
                 "_count", "_held", "_offered", "_kept", "_released", "_dropped", "_pending",
                 "_untracked")

    def __init__(self, mode: str = SWINGING_DOOR, deviation: float = 0.0,
                 heartbeat_s: float = HEARTBEAT_S, max_keys: int = MAX_KEYS,
                 deviations: Mapping[str, float] | None = None) -> None:
        if mode not in MODES:
            raise ConfigError("mode", mode, "one of " + ", ".join(MODES))
        default = _checked_number("deviation", deviation, False)
        heartbeat = _checked_number("heartbeat_s", heartbeat_s, True)
        if (not isinstance(max_keys, int) or isinstance(max_keys, bool)
                or not 1 <= max_keys <= MAX_KEYS_LIMIT):
            raise ConfigError("max_keys", max_keys, f"an integer 1-{MAX_KEYS_LIMIT}")
        per_name: dict[Hashable, float] = {}
        for name, value in (deviations or {}).items():
            if not isinstance(name, str):
                raise ConfigError("deviations", name, "data key names (str)")
            per_name[name] = _checked_number(f"deviations[{name!r}]", value, False)
        self._index: dict[Hashable, dict[Hashable, _Key]] = {}
        self._mode = SWINGING_DOOR if mode == SWINGING_DOOR else DEADBAND
        self._sdt = self._mode == SWINGING_DOOR
        self._deviation = default
        self._deviations = per_name
        self._heartbeat = heartbeat
        self._max_keys = operator.index(max_keys)
        self._count = 0
        self._held: tuple[float, float, Any] | None = None
        self._offered = 0
        self._kept = 0
        self._released = 0
        self._dropped = 0
        self._pending = 0
        self._untracked = 0

    def offer(self, source: Hashable, name: Hashable, t: float, value: object,
              item: Any = None) -> int:
        """Decide whether to store the reading ``value`` of key ``(source, name)`` taken at ``t``.

        Returns ``DROP``, ``KEEP``, ``HELD`` or ``KEEP | HELD``. ``item`` (the
        caller's row) is kept while the reading is held and comes back from
        ``take_held`` when it is released.
        """
        ts = _seconds(t)
        numeric = True
        v = _NAN
        if type(value) is float:
            v = value
        elif isinstance(value, (int, float)):
            try:
                v = float(value)
            except OverflowError:
                numeric = False
        else:
            numeric = False
        if numeric and not math.isfinite(v):
            numeric = False
        inner = self._index.get(source)
        key = inner.get(name) if inner is not None else None
        self._offered += 1
        if key is None:
            if self._count >= self._max_keys:
                self._untracked += 1
                self._kept += 1
                return KEEP
            key = _Key(self._deviations.get(name, self._deviation))
            if inner is None:
                inner = self._index[source] = {}
            inner[name] = key
            self._count += 1
        if not numeric or not math.isfinite(ts):
            flags = KEEP
            if key.state == _HOLDING:
                self._release(key)
                flags = KEEP | HELD
            key.state = _RESTART
            key.last_t = ts if math.isfinite(ts) else -_INF
            key.last_v = _NAN
            key.item = None
            self._kept += 1
            return flags
        if key.state == _RESTART:
            self._anchor(key, ts, v)
            return KEEP
        last_v = key.last_v
        if ts <= key.last_t or (
            (last_v == 0.0 or last_v == 1.0) and (v == 0.0 or v == 1.0) and v != last_v
        ):
            flags = KEEP
            if key.state == _HOLDING:
                self._release(key)
                flags = KEEP | HELD
            self._anchor(key, ts, v)
            return flags
        dev = key.deviation
        if not self._sdt:
            if abs(v - key.anchor_v) > dev or ts - key.anchor_t >= self._heartbeat:
                self._anchor(key, ts, v)
                return KEEP
            key.last_t = ts
            key.last_v = v
            self._dropped += 1
            return DROP
        if key.state == _HOLDING:
            dt = key.last_t - key.anchor_t
            lo = key.lo
            hi = key.hi
            bound = (last_v - key.anchor_v - dev) / dt
            if bound > lo:
                lo = bound
            bound = (last_v - key.anchor_v + dev) / dt
            if bound < hi:
                hi = bound
            slope = (v - key.anchor_v) / (ts - key.anchor_t)
            if lo <= slope <= hi:  # the held reading lies on the new line: drop it
                self._dropped += 1
                if ts - key.anchor_t >= self._heartbeat:
                    self._pending -= 1
                    self._anchor(key, ts, v)
                    return KEEP
                self._hold(key, ts, v, item)
                key.lo = lo
                key.hi = hi
                return DROP
            self._release(key)  # the door closes on the held reading
            if ts - key.anchor_t >= self._heartbeat:
                self._anchor(key, ts, v)
                return KEEP | HELD
            self._hold(key, ts, v, item)
            return HELD
        if ts - key.anchor_t >= self._heartbeat:
            self._anchor(key, ts, v)
            return KEEP
        self._hold(key, ts, v, item)
        return DROP

    def _anchor(self, key: _Key, t: float, v: float) -> None:
        # Store the current reading: it becomes the key's starting point.
        key.anchor_t = key.last_t = t
        key.anchor_v = key.last_v = v
        key.lo = -_INF
        key.hi = _INF
        key.state = _STORED
        key.item = None
        self._kept += 1

    def _hold(self, key: _Key, t: float, v: float, item: Any) -> None:
        # Keep the current reading back until the next one shows whether a line skips it.
        if key.state != _HOLDING:
            self._pending += 1
        key.last_t = t
        key.last_v = v
        key.state = _HOLDING
        key.item = item

    def _release(self, key: _Key) -> None:
        # The held reading is to be stored: it becomes the key's starting point.
        self._held = (key.last_t, key.last_v, key.item)
        key.anchor_t = key.last_t
        key.anchor_v = key.last_v
        key.lo = -_INF
        key.hi = _INF
        key.state = _STORED
        key.item = None
        self._released += 1
        self._pending -= 1

    def take_held(self) -> tuple[float, float, Any] | None:
        """Hand over the reading the last ``HELD`` result released: ``(t, value, item)``, once."""
        held = self._held
        self._held = None
        return held

    def expire(self, now: float) -> list[tuple[Any, Any, float, float, Any]]:
        """Forget keys silent for ``heartbeat_s`` at ``now``; return their held readings to store.

        Each released reading comes as ``(source, name, t, value, item)``. Call
        it every few seconds: it keeps memory bounded and a silent signal's
        last reading from staying unstored.
        """
        return self._sweep(_seconds(now))

    def flush(self) -> list[tuple[Any, Any, float, float, Any]]:
        """Release every held reading and forget every key (shutdown); same tuples as ``expire``."""
        return self._sweep(_INF)

    def _sweep(self, now: float) -> list[tuple[Any, Any, float, float, Any]]:
        out: list[tuple[Any, Any, float, float, Any]] = []
        heartbeat = self._heartbeat
        for source, inner in list(self._index.items()):
            for name, key in list(inner.items()):
                if not now - key.last_t >= heartbeat:
                    continue
                if key.state == _HOLDING:
                    out.append((source, name, key.last_t, key.last_v, key.item))
                    self._released += 1
                    self._pending -= 1
                del inner[name]
                self._count -= 1
            if not inner:
                del self._index[source]
        return out

    def deviation_for(self, name: Hashable) -> float:
        """Deviation a key with data key ``name`` gets: its own, else the default."""
        return self._deviations.get(name, self._deviation)

    def __len__(self) -> int:
        return self._count

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def deviation(self) -> float:
        return self._deviation

    @property
    def deviations(self) -> dict[str, float]:
        return cast("dict[str, float]", dict(self._deviations))  # keys checked to be str

    @property
    def heartbeat_s(self) -> float:
        return self._heartbeat

    @property
    def max_keys(self) -> int:
        return self._max_keys

    def stats(self) -> dict[str, int]:
        """Counters as a plain dict, for metrics export.

        ``offered`` = ``kept`` + ``released`` + ``dropped`` + ``pending``.
        """
        return {
            "keys": self._count,
            "max_keys": self._max_keys,
            "offered": self._offered,
            "kept": self._kept,
            "released": self._released,
            "dropped": self._dropped,
            "pending": self._pending,
            "untracked": self._untracked,
        }

    def __repr__(self) -> str:
        return (f"Compressor(mode={self._mode!r}, deviation={self._deviation!r}, "
                f"heartbeat_s={self._heartbeat!r}, keys={self._count})")
