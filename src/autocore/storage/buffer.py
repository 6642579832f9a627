"""The QoS 0 telemetry queue: a drop-oldest ring bounded by memory as well as by messages.

A queued message costs about 160-270 bytes a reading in Python objects (a
sensor board's 12-reading report: 1.9 KB), so a ring bounded only by
messages let a database that falls behind grow the gateway by 40 MB and
more. The rows held are bounded too (``AUTOCORE_BUFFER_MB``): past either
bound the oldest messages are dropped, and counted, exactly as the ring does.

One thread pushes (the event loop) and one drains (the database thread).
Each counter below is written by one of them only, so no lock is needed; a
reader on the loop thread may briefly see a drained message's rows still
counted, which can only drop a message early, never hold too many.
"""

from __future__ import annotations

from typing import Any

#: Bytes a queued reading takes, for turning AUTOCORE_BUFFER_MB into rows
#: (measured: 161 B a reading in 12-reading messages, 272 B in 4-reading ones).
ROW_BYTES = 200


def rows_for(megabytes: float) -> int:
    """How many queued readings fit in ``megabytes`` (at least one message's worth)."""
    return max(64, int(megabytes * 1_000_000 / ROW_BYTES))


class TelemetryBuffer:
    """A drop-oldest ``Ring`` of telemetry items that also holds at most ``max_rows`` rows."""

    def __init__(self, ring: Any, max_rows: int) -> None:
        self.ring = ring
        self.max_rows = max_rows
        self.capacity = ring.capacity
        self._rows_in = 0  # loop thread
        self._rows_evicted = 0  # loop thread
        self._evicted = 0  # loop thread: messages dropped here (the ring counts its own)
        self._rows_out = 0  # database thread

    @property
    def rows(self) -> int:
        """Readings waiting (may briefly count some the database thread just took)."""
        return self._rows_in - self._rows_evicted - self._rows_out

    def push(self, item: Any) -> bool:
        """Queue ``item``, first dropping the oldest messages while either bound would be passed."""
        rows = len(item.rows)
        ring = self.ring
        while len(ring) and (len(ring) >= self.capacity or self.rows + rows > self.max_rows):
            oldest = ring.drain(1)
            if not oldest:  # the database thread took them meanwhile
                break
            self._rows_evicted += len(oldest[0].rows)
            self._evicted += 1
        stored = bool(ring.push(item))
        if stored:
            self._rows_in += rows
        return stored

    def drain(self, max_items: int) -> list[Any]:
        """Take up to ``max_items`` of the oldest messages (database thread)."""
        items: list[Any] = self.ring.drain(max_items)
        if items:
            self._rows_out += sum(len(item.rows) for item in items)
        return items

    def __len__(self) -> int:
        return len(self.ring)

    def stats(self) -> dict[str, Any]:
        """The ring's statistics, with this buffer's drops counted in ``dropped`` and its rows."""
        stats: dict[str, Any] = self.ring.stats()
        stats["dropped"] += self._evicted
        stats["rows"] = max(0, self.rows)
        stats["max_rows"] = self.max_rows
        return stats
