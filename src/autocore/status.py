"""The gateway's own retained status: online at connect, heartbeat, LWT, shutdown.

All four go to ``autocore/devices/{MQTT_CLIENT_ID}/status`` with QoS 1 and the
retain flag (Decisions D1, D2), with the original's payload fields.
"""

from __future__ import annotations

import os
import resource
import time

from autocore import envelope

STATUS_QOS = 1
MESSAGE_TYPE = "gateway_status"
DEVICE_TYPE = "gateway"


def online(uuid: str, uptime_s: float, messages_processed: int) -> bytes:
    """Payload published after every successful (re)connect."""
    return envelope.dumps(envelope.build(
        uuid, MESSAGE_TYPE, status="online", device_type=DEVICE_TYPE,
        uptime=round(uptime_s, 3), connected_devices=0, messages_processed=messages_processed,
    ))


def heartbeat(uuid: str, uptime_s: float, devices_online: int, usage: dict[str, float]) -> bytes:
    """Payload of the periodic heartbeat."""
    return envelope.dumps(envelope.build(
        uuid, MESSAGE_TYPE, status="online", device_type=DEVICE_TYPE,
        uptime=int(uptime_s), devices_online=devices_online, memory_usage=usage,
    ))


def last_will(uuid: str, connected_at_utc: str) -> bytes:
    """Payload the broker publishes for us if the connection dies."""
    return envelope.dumps(envelope.build(
        uuid, MESSAGE_TYPE, status="offline", device_type=DEVICE_TYPE,
        reason="unexpected_disconnect", last_seen=connected_at_utc,
    ))


def shutdown(uuid: str) -> bytes:
    """Payload of a graceful stop."""
    return envelope.dumps(envelope.build(
        uuid, MESSAGE_TYPE, status="offline", device_type=DEVICE_TYPE, reason="shutdown",
    ))


class ResourceMeter:
    """RSS in MB and CPU % since the previous reading, without extra dependencies."""

    def __init__(self) -> None:
        self._last_cpu = self._cpu_seconds()
        self._last_wall = time.monotonic()

    @staticmethod
    def _cpu_seconds() -> float:
        times = os.times()
        return times.user + times.system

    @staticmethod
    def rss_mb() -> float:
        try:
            with open("/proc/self/statm") as statm:
                pages = int(statm.read().split()[1])
            return pages * os.sysconf("SC_PAGE_SIZE") / 1_048_576
        except (OSError, ValueError, IndexError):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def read(self) -> dict[str, float]:
        cpu, wall = self._cpu_seconds(), time.monotonic()
        elapsed = wall - self._last_wall
        percent = 100.0 * (cpu - self._last_cpu) / elapsed if elapsed > 0 else 0.0
        self._last_cpu, self._last_wall = cpu, wall
        return {"ram_mb": round(self.rss_mb(), 1), "cpu_percent": round(percent, 1)}
