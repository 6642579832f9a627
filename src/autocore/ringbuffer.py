"""Telemetry ring buffer between the event loop and the database thread (see ``_fast._ring_py``)."""

from autocore._fast import Ring
from autocore._fast._ring_py import DROP_OLDEST, OVERFLOW_POLICIES, REJECT

__all__ = ["DROP_OLDEST", "OVERFLOW_POLICIES", "REJECT", "Ring"]
