"""Bounded telemetry ring buffer (pure-Python twin of ``_ring.pyx``).

One producer (the event-loop thread) pushes, one consumer (the database writer
thread) drains. This twin guards its state with a ``threading.Lock`` so it is
also correct on interpreters without a GIL; the compiled twin relies on each of
its methods running under the GIL without releasing it.

Neither twin runs foreign code while its state is half-updated: an evicted item
is released only after the ring is consistent again (and, here, after the lock
is released), so an item whose ``__del__`` pushes into the same ring neither
deadlocks nor corrupts it. Nothing the garbage collector tracks is allocated
under the lock either (``drain`` makes its list first), so on CPython up to 3.11
the collector cannot start there. One hazard is left to this twin: code the
interpreter runs asynchronously between two bytecodes under the lock (a signal
handler; on 3.12+ also the collector and the finalizers it calls) blocks on the
lock if it calls into the same ring from the same thread. The compiled twin has
no lock and runs no bytecode, so it is immune.
"""

from __future__ import annotations

import operator
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
        capacity = operator.index(capacity)  # an exact int, whatever int subclass came in
        self._slots: list[Any] = [None] * capacity
        self._head = 0  # index of the oldest item
        self._count = 0
        self._capacity = capacity
        # The policy constant itself, not an equal str subclass the caller passed.
        self._overflow = REJECT if overflow == REJECT else DROP_OLDEST
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
        evicted = None
        with self._lock:
            if self._count == self._capacity:
                if self._overflow == REJECT:
                    self._rejected += 1
                    return False
                evicted = self._slots[self._head]
                self._slots[self._head] = None
                self._head = (self._head + 1) % self._capacity
                self._count -= 1
                self._dropped += 1
            self._store(item)
        # Released outside the lock: its __del__ may push into this very ring.
        del evicted
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
        """Remove and return up to ``max_items`` items, oldest first.

        ``max_items`` is any integer (``__index__``); floats raise TypeError.
        """
        wanted = operator.index(max_items)
        if wanted < 0:
            raise ValueError(f"max_items must be >= 0, got {max_items!r}")
        out: list[Any] = []  # allocated before the lock: it may start the collector
        with self._lock:
            n = min(wanted, self._count)
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
        """Counters as a plain dict, for metrics export; one consistent snapshot."""
        with self._lock:  # read only: nothing here allocates or calls out
            depth = self._count
            pushed = self._pushed
            drained = self._drained
            dropped = self._dropped
            rejected = self._rejected
            high_water = self._high_water
        return {
            "depth": depth,
            "capacity": self._capacity,
            "pushed": pushed,
            "drained": drained,
            "dropped": dropped,
            "rejected": rejected,
            "high_water": high_water,
        }

    def __repr__(self) -> str:
        return f"Ring(capacity={self._capacity}, overflow={self._overflow!r}, depth={self._count})"
