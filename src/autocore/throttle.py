"""Once-per-window gate keyed by (device, reason): bounded, loop-thread only."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

#: Keys remembered; the oldest are forgotten first (and may then pass again).
MAX_KEYS = 10_000


class Throttle:
    """``allow(key)`` is True at most once per ``window_s`` for each key."""

    def __init__(self, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self._clock = clock
        self._last: OrderedDict[Hashable, float] = OrderedDict()
        self.suppressed = 0

    def allow(self, key: Hashable) -> bool:
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.window_s:
            self.suppressed += 1
            return False
        self._last[key] = now
        self._last.move_to_end(key)
        if len(self._last) > MAX_KEYS:
            self._last.popitem(last=False)
        return True
