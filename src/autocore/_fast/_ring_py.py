"""Bounded telemetry ring buffer (pure-Python twin of ``_ring.pyx``).

One producer (the event-loop thread) pushes, one consumer (the database writer
thread) drains. This twin guards its state with a ``threading.Lock`` so it is
also correct on interpreters without a GIL; the compiled twin relies on each of
its methods running under the GIL without releasing it.
"""

from __future__ import annotations

import threading
from typing import Any

DROP_OLDEST = "drop_oldest"
REJECT = "reject"
OVERFLOW_POLICIES = (DROP_OLDEST, REJECT)


class Ring:
    """Fixed-capacity FIFO with an explicit overflow policy and counters.

    ``push`` applies the policy when the ring is full: ``drop_oldest`` evicts
    the oldest item (counted in ``dropped``) and always stores the new one;
    ``reject`` stores nothing and returns False (counted in ``rejected``).
    ``offer`` never evicts, whatever the policy: it returns False when full, the
    back-pressure signal used for QoS 1 messages that must not be lost.
    """

    __slots__ = (
        "_slots", "_head", "_count", "_capacity", "_overflow", "_lock",
        "_pushed", "_drained", "_dropped", "_rejected", "_high_water",
    )

    def __init__(self, capacity: int, overflow: str = DROP_OLDEST) -> None:
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ValueError(f"capacity must be a positive integer, got {capacity!r}")
        if overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"overflow must be one of {OVERFLOW_POLICIES}, got {overflow!r}")
        self._slots: list[Any] = [None] * capacity
        self._head = 0  # index of the oldest item
        self._count = 0
        self._capacity = capacity
        self._overflow = overflow
        self._lock = threading.Lock()
        self._pushed = 0
        self._drained = 0
        self._dropped = 0
        self._rejected = 0
        self._high_water = 0

    def _store(self, item: Any) -> None:
        # Caller holds the lock and has made room.
        self._slots[(self._head + self._count) % self._capacity] = item
        self._count += 1
        self._pushed += 1
        if self._count > self._high_water:
            self._high_water = self._count

    def push(self, item: Any) -> bool:
        """Store ``item``, applying the overflow policy when full; False means refused."""
        with self._lock:
            if self._count == self._capacity:
                if self._overflow == REJECT:
                    self._rejected += 1
                    return False
                self._slots[self._head] = None
                self._head = (self._head + 1) % self._capacity
                self._count -= 1
                self._dropped += 1
            self._store(item)
            return True

    def offer(self, item: Any) -> bool:
        """Store ``item`` only if there is room; never evicts. False means full."""
        with self._lock:
            if self._count == self._capacity:
                self._rejected += 1
                return False
            self._store(item)
            return True

    def drain(self, max_items: int) -> list[Any]:
        """Remove and return up to ``max_items`` items, oldest first."""
        if max_items < 0:
            raise ValueError(f"max_items must be >= 0, got {max_items!r}")
        with self._lock:
            n = min(max_items, self._count)
            out = []
            head = self._head
            slots = self._slots
            capacity = self._capacity
            for _ in range(n):
                out.append(slots[head])
                slots[head] = None
                head += 1
                if head == capacity:
                    head = 0
            self._head = head
            self._count -= n
            self._drained += n
            return out

    def __len__(self) -> int:
        return self._count

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def overflow(self) -> str:
        return self._overflow

    @property
    def full(self) -> bool:
        return self._count == self._capacity

    @property
    def pushed(self) -> int:
        return self._pushed

    @property
    def drained(self) -> int:
        return self._drained

    @property
    def dropped(self) -> int:
        return self._dropped

    @property
    def rejected(self) -> int:
        return self._rejected

    @property
    def high_water(self) -> int:
        return self._high_water

    def stats(self) -> dict[str, int]:
        """Counters as a plain dict, for metrics export."""
        return {
            "depth": self._count,
            "capacity": self._capacity,
            "pushed": self._pushed,
            "drained": self._drained,
            "dropped": self._dropped,
            "rejected": self._rejected,
            "high_water": self._high_water,
        }

    def __repr__(self) -> str:
        return f"Ring(capacity={self._capacity}, overflow={self._overflow!r}, depth={self._count})"
