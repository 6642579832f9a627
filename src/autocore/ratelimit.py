"""Per-device token buckets: one flooding device cannot starve the others.

Runs on the event-loop thread only, so no lock. Buckets live in a bounded LRU
map: a flood of made-up uuids evicts old buckets instead of growing memory.
"""

from __future__ import annotations

import time
from collections import OrderedDict

#: Buckets kept; an evicted device simply starts again with a full bucket.
MAX_BUCKETS = 10_000


class RateLimiter:
    """Allow ``rate_per_s`` messages per second per device with ``burst`` headroom.

    ``rate_per_s == 0`` disables limiting (every message is allowed).
    """

    def __init__(self, rate_per_s: float, burst: int, clock=time.monotonic) -> None:
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self._clock = clock
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()  # uuid -> [tokens, stamp]

    def allow(self, uuid: str) -> bool:
        """Take one token for ``uuid``; False means the message must be dropped."""
        if self.rate_per_s <= 0:
            return True
        now = self._clock()
        bucket = self._buckets.get(uuid)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._buckets.popitem(last=False)
            self._buckets[uuid] = [self.burst - 1.0, now]
            return True
        self._buckets.move_to_end(uuid)
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate_per_s)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True

    def __len__(self) -> int:
        return len(self._buckets)
