"""Exception tree of autocore.

Pure Python on purpose: the compiled hot-path modules import it too, so both
builds raise the very same classes with the same messages. Hot paths return
reject records for bad *input*; these exceptions are for bad *use* (wrong
arguments, broken configuration, failed services).
"""

from __future__ import annotations


class AutocoreError(Exception):
    """Root of every error autocore raises on purpose."""


class ConfigError(AutocoreError):
    """A configuration value is missing or malformed.

    ``key`` names the setting and ``expected`` the accepted form, so the CLI can
    print one actionable line.
    """

    def __init__(self, key: str, value: object, expected: str) -> None:
        self.key = key
        self.value = value
        self.expected = expected
        super().__init__(f"{key}={value!r} is invalid: expected {expected}")


class TopicError(AutocoreError):
    """A topic cannot be built or parsed; ``reason`` is the machine-readable code."""

    def __init__(self, reason: str, topic: str) -> None:
        self.reason = reason
        self.topic = topic
        super().__init__(f"{reason}: {topic!r}")


class EnvelopeError(AutocoreError):
    """A payload breaks the v2.2.0 envelope; ``path`` points at the bad value (``$.uuid``)."""

    def __init__(self, reason: str, path: str = "$") -> None:
        self.reason = reason
        self.path = path
        super().__init__(f"{reason} at {path}")


class StorageError(AutocoreError):
    """The database refused or could not take a write."""


class CommandError(AutocoreError):
    """A command cannot be delivered (unknown device, bad channel, bad parameters)."""


class BrokerError(AutocoreError):
    """The MQTT broker refused the connection or a request; ``rc`` is paho's code."""

    def __init__(self, message: str, rc: object = None) -> None:
        self.rc = rc
        super().__init__(message)
