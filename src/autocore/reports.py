"""Error reports on ``autocore/errors/{uuid}/{type}``, throttled per device and code.

The payload is the original's (PROTOCOL.md section 7). Unlike the original, a
device that keeps sending bad messages gets one report per code per window,
not one per message: an error storm would only amplify an overload (D12).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from autocore import envelope, topics
from autocore.ratelimit import RateLimiter
from autocore.throttle import Throttle

ERROR_QOS = 1
#: Reports for one (device, code) pair at most once per window.
REPORT_WINDOW_S = 10.0
#: Reports per second over all devices (and burst): made-up uuids must not
#: turn a flood of bad input into a flood of error messages.
REPORTS_PER_S = 10.0
REPORT_BURST = 50

# code -> (error_type, severity)
ERRORS = {
    "ERR_001": ("COMMAND_FAILED", "medium"),
    "ERR_002": ("INVALID_PAYLOAD", "medium"),
    "ERR_003": ("TIMEOUT", "high"),
    "ERR_004": ("UNAUTHORIZED", "high"),
    "ERR_005": ("DEVICE_BUSY", "medium"),
    "ERR_006": ("HARDWARE_FAULT", "critical"),
    "ERR_007": ("NETWORK_ERROR", "high"),
    "ERR_008": ("PROTOCOL_MISMATCH", "high"),
}

Publish = Callable[[str, bytes, int, bool], Any]


class ErrorReporter:
    """Build, throttle and publish error reports; ``publish(topic, payload, qos, retain)``."""

    def __init__(self, gateway_uuid: str, publish: Publish, window_s: float = REPORT_WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.gateway_uuid = gateway_uuid
        self._publish = publish
        self._throttle = Throttle(window_s, clock)
        self._budget = RateLimiter(REPORTS_PER_S, REPORT_BURST, clock)
        self.error_count = 0
        self.over_budget = 0

    def report(self, code: str, message: str, uuid: str | None = None, **context: Any) -> bool:
        """Publish one report unless the same (device, code) was reported in this window."""
        uuid = uuid or self.gateway_uuid
        if not self._throttle.allow((uuid, code)):
            return False
        if not self._budget.allow(""):
            self.over_budget += 1
            return False
        error_type, severity = ERRORS[code]
        payload = envelope.build(
            uuid, "error", error_code=code, error_type=error_type, error_message=message,
            context=context, severity=severity, source="gateway", error_count=self.error_count + 1,
        )
        self._publish(topics.error_topic(uuid, error_type), envelope.dumps(payload), ERROR_QOS, False)
        self.error_count += 1
        return True

    @property
    def suppressed(self) -> int:
        return self._throttle.suppressed + self.over_budget
