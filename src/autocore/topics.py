"""Topic layout of the AutoCore protocol: the only module that knows how topics look.

Parsing is the hot path and lives in ``autocore._fast``; this module re-exports
it and builds the topics the gateway publishes and subscribes to.
"""

from __future__ import annotations

from autocore._fast import Topic, parse_topic
from autocore._fast._names import *  # noqa: F403  (message kinds)

ROOT = "autocore"

#: The original gateway's 11 subscriptions (all QoS 1) plus the relay telemetry
#: topic the firmware publishes on (Decision D3).
SUBSCRIPTIONS: tuple[tuple[str, int], ...] = (
    ("autocore/devices/+/announce", 1),
    ("autocore/devices/+/status", 1),
    ("autocore/devices/+/telemetry", 1),
    ("autocore/devices/+/response", 1),
    ("autocore/devices/+/relays/state", 1),
    ("autocore/discovery/+", 1),
    ("autocore/gateway/commands/+", 1),
    ("autocore/devices/+/relays/command", 1),
    ("autocore/system/+", 1),
    ("autocore/devices/+/macros/status", 1),
    ("autocore/modes/+", 1),
    ("autocore/telemetry/relays/data", 1),
)


def shared(subscriptions: tuple[tuple[str, int], ...], group: str) -> tuple[tuple[str, int], ...]:
    """The same filters as MQTT 5 shared subscriptions: the broker gives each message to one member.

    Shared subscriptions receive no retained messages, so gateways in a group
    rely on the database for presence instead of retained device statuses.
    """
    return tuple((f"$share/{group}/{topic_filter}", qos) for topic_filter, qos in subscriptions)


def status_topic(uuid: str) -> str:
    """Retained online/offline status of a device or of the gateway itself."""
    return f"{ROOT}/devices/{uuid}/status"


def error_topic(uuid: str, error_type: str) -> str:
    """Where error reports go: ``autocore/errors/{uuid}/{error_type lower}``."""
    return f"{ROOT}/errors/{uuid}/{error_type.lower()}"


def relay_set_topic(uuid: str) -> str:
    """Relay command topic the relay firmware subscribes to."""
    return f"{ROOT}/devices/{uuid}/relays/set"


def device_command_topic(uuid: str, command: str) -> str:
    """Device command topic (reset, status, reboot, ota) of the firmware."""
    return f"{ROOT}/devices/{uuid}/commands/{command}"


def command_topic(uuid: str) -> str:
    """Generic gateway -> device command topic of the protocol docs (``/command``)."""
    return f"{ROOT}/devices/{uuid}/command"


def broadcast_command_topic(command: str) -> str:
    """Device command every firmware listens to (``reset``, ``status``, ``reboot``, ``ota``)."""
    return f"{ROOT}/commands/all/{command}"


def announce_topic(uuid: str) -> str:
    return f"{ROOT}/devices/{uuid}/announce"


def telemetry_topic(uuid: str) -> str:
    return f"{ROOT}/devices/{uuid}/telemetry"


__all__ = [
    "ROOT", "SUBSCRIPTIONS", "Topic", "announce_topic", "broadcast_command_topic", "command_topic", "device_command_topic", "error_topic",
    "parse_topic", "relay_set_topic", "shared", "status_topic", "telemetry_topic",
]
