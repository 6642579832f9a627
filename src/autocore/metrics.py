"""In-memory counters of the gateway: plain integers on the hot path, no I/O.

Per-device counters are capped so a flood of made-up device uuids cannot grow
memory without bound; what falls past the cap is counted under ``"(other)"``.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import Counter
from typing import Any

#: Distinct (reason, device) pairs tracked before new pairs fold into "(other)".
MAX_LABELLED_PAIRS = 1000
OTHER = "(other)"
#: Upper bounds of the database commit latency buckets, s: an SSD commits in
#: milliseconds, a Raspberry Pi's SD card can take hundreds of them.
COMMIT_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """Counters the pipeline bumps per message and exporters read."""

    def __init__(self) -> None:
        self.received = 0
        self.received_by_kind: Counter[str] = Counter()
        self.accepted = 0
        self.rejected_by_reason: Counter[str] = Counter()
        self.rejected_by_device: Counter[tuple[str, str]] = Counter()
        self.rate_limited: Counter[str] = Counter()
        self.signals_skipped: Counter[str] = Counter()
        self.telemetry_messages = 0
        self.telemetry_rows = 0
        self.telemetry_dropped = 0
        self.errors_published = 0
        self.handler_failures = 0
        #: Duration of each committed telemetry batch, fed by the database thread.
        self.db_commit_seconds = LatencyHistogram(COMMIT_BUCKETS_S)

    def reject(self, reason: str, uuid: str) -> None:
        """Count a rejected message by reason and by (reason, device), capped."""
        self.rejected_by_reason[reason] += 1
        key = (reason, uuid or OTHER)
        if key not in self.rejected_by_device and len(self.rejected_by_device) >= MAX_LABELLED_PAIRS:
            key = (reason, OTHER)
        self.rejected_by_device[key] += 1

    def limited(self, uuid: str) -> None:
        _count_capped(self.rate_limited, uuid)

    def skipped(self, uuid: str, signals: int) -> None:
        """Count signals an accepted telemetry message carried but no row could hold."""
        _count_capped(self.signals_skipped, uuid, signals)

    @property
    def rejected(self) -> int:
        return sum(self.rejected_by_reason.values())

    def snapshot(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "received_by_kind": dict(self.received_by_kind),
            "accepted": self.accepted,
            "rejected": self.rejected,
            "rejected_by_reason": dict(self.rejected_by_reason),
            "rate_limited": sum(self.rate_limited.values()),
            "telemetry_messages": self.telemetry_messages,
            "telemetry_rows": self.telemetry_rows,
            "telemetry_dropped": self.telemetry_dropped,
            "errors_published": self.errors_published,
            "handler_failures": self.handler_failures,
        }


def _count_capped(counter: Counter[str], uuid: str, n: int = 1) -> None:
    if uuid not in counter and len(counter) >= MAX_LABELLED_PAIRS:
        uuid = OTHER
    counter[uuid] += n


class LatencyHistogram:
    """Cumulative histogram written by one thread and read by another.

    It is fed once per database batch, never per message, so a lock per
    observation costs nothing that matters and keeps every snapshot consistent
    (the bucket counts always add up to the total).
    """

    def __init__(self, bounds_s: tuple[float, ...]) -> None:
        self.bounds_s = tuple(sorted(bounds_s))
        self._counts = [0] * (len(self.bounds_s) + 1)  # the last one is +Inf
        self._sum_s = 0.0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        index = bisect_left(self.bounds_s, seconds)  # first bound >= seconds: Prometheus' "le"
        with self._lock:
            self._counts[index] += 1
            self._sum_s += seconds

    def snapshot(self) -> tuple[list[tuple[float, int]], float]:
        """Return ([(upper bound, cumulative count)...] ending with +Inf, sum of seconds)."""
        with self._lock:
            counts = list(self._counts)
            total_s = self._sum_s
        cumulative, running = [], 0
        for bound, count in zip((*self.bounds_s, float("inf")), counts):
            running += count
            cumulative.append((bound, running))
        return cumulative, total_s
