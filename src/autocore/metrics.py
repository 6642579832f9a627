"""In-memory counters of the gateway: plain integers on the hot path, no I/O.

Per-device counters are capped so a flood of made-up device uuids cannot grow
memory without bound; what falls past the cap is counted under ``"(other)"``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

#: Distinct (reason, device) pairs tracked before new pairs fold into "(other)".
MAX_LABELLED_PAIRS = 1000
OTHER = "(other)"


class Metrics:
    """Counters the pipeline bumps per message and exporters read."""

    def __init__(self) -> None:
        self.received = 0
        self.received_by_kind: Counter[str] = Counter()
        self.accepted = 0
        self.rejected_by_reason: Counter[str] = Counter()
        self.rejected_by_device: Counter[tuple[str, str]] = Counter()
        self.rate_limited: Counter[str] = Counter()
        self.telemetry_messages = 0
        self.telemetry_rows = 0
        self.telemetry_dropped = 0
        self.errors_published = 0
        self.handler_failures = 0

    def reject(self, reason: str, uuid: str) -> None:
        """Count a rejected message by reason and by (reason, device), capped."""
        self.rejected_by_reason[reason] += 1
        key = (reason, uuid or OTHER)
        if key not in self.rejected_by_device and len(self.rejected_by_device) >= MAX_LABELLED_PAIRS:
            key = (reason, OTHER)
        self.rejected_by_device[key] += 1

    def limited(self, uuid: str) -> None:
        if uuid not in self.rate_limited and len(self.rate_limited) >= MAX_LABELLED_PAIRS:
            uuid = OTHER
        self.rate_limited[uuid] += 1

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
