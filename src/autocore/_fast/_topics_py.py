"""Classify an AutoCore topic into a small record (pure-Python twin of ``_topics.pyx``).

This file is the specification of the topic parser: ``_topics.pyx`` must give
the same record, field for field, for every input string.
"""

from __future__ import annotations

from ._names import (
    ANNOUNCE, COMMAND, DEVICE_COMMAND, DISCOVERY, ERROR, GATEWAY_COMMAND, INVALID,
    MACRO_STATUS, MODE, RELAY_COMMAND, RELAY_HEARTBEAT, RELAY_SET, RELAY_STATE,
    RELAY_TELEMETRY, RESPONSE, STATUS, SYSTEM, TELEMETRY,
)

#: Longest topic accepted; ours are under 120 characters.
MAX_TOPIC_LENGTH = 256
#: Longest device uuid or free level (the firmware allows 8-64 characters).
MAX_LEVEL_LENGTH = 64

ROOT = "autocore"
# Bypasses Topic.__setattr__, which refuses every write after construction.
_set_field = object.__setattr__
_LEVEL_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-")

# Leaf level under autocore/devices/{uuid}/...
_DEVICE_LEAVES = {
    "announce": ANNOUNCE,
    "status": STATUS,
    "telemetry": TELEMETRY,
    "response": RESPONSE,
    "command": COMMAND,
}
# autocore/devices/{uuid}/relays/{leaf}
_RELAY_LEAVES = {
    "state": RELAY_STATE,
    "command": RELAY_COMMAND,
    "set": RELAY_SET,
    "heartbeat": RELAY_HEARTBEAT,
}


class Topic:
    """What a topic says: message ``kind``, device ``uuid``, extra level ``sub``.

    A rejected topic has ``kind == "invalid"``, empty ``uuid``/``sub`` and a
    reason code in ``reason``; an accepted one has ``reason == ""``. Records are
    read-only because they are hashable and may be shared between callers.
    """

    __slots__ = ("kind", "uuid", "sub", "reason")
    kind: str
    uuid: str
    sub: str
    reason: str

    def __init__(self, kind: str, uuid: str = "", sub: str = "", reason: str = "") -> None:
        _set_field(self, "kind", kind)
        _set_field(self, "uuid", uuid)
        _set_field(self, "sub", sub)
        _set_field(self, "reason", reason)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"attribute {name!r} of 'Topic' objects is not writable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"attribute {name!r} of 'Topic' objects is not writable")

    @property
    def ok(self) -> bool:
        return not self.reason

    def as_tuple(self) -> tuple[str, str, str, str]:
        return (self.kind, self.uuid, self.sub, self.reason)

    def __eq__(self, other: object) -> bool:
        if not hasattr(other, "as_tuple") or not hasattr(other, "reason"):
            return NotImplemented
        return bool(self.as_tuple() == other.as_tuple())

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    def __hash__(self) -> int:
        return hash(self.as_tuple())

    def __reduce__(self) -> tuple[type, tuple[str, str, str, str]]:
        return (type(self), self.as_tuple())

    def __repr__(self) -> str:
        return "Topic(kind=%r, uuid=%r, sub=%r, reason=%r)" % self.as_tuple()


def _reject(reason: str) -> Topic:
    return Topic(INVALID, "", "", reason)


def _plain_str(topic: object) -> str:
    """Return the exact-``str`` value of ``topic``; raise TypeError for non-strings."""
    if not isinstance(topic, str):
        raise TypeError(f"topic must be str, not {type(topic).__name__}")
    return str.__str__(topic)


def _level_problem(level: str, reason: str) -> str:
    """Return ``reason`` when a uuid/free level is unsafe, else ``""``."""
    if len(level) > MAX_LEVEL_LENGTH:
        return "uuid_too_long" if reason == "bad_uuid" else "level_too_long"
    if level == "." or level == ".." or not _LEVEL_CHARS.issuperset(level):
        return reason
    return ""


def parse_topic(topic: str) -> Topic:
    """Classify ``topic``; never raises for a ``str``, returns a reject record instead.

    Wildcards, control characters and empty levels are refused because devices
    never publish to such topics; uuids and free levels must be 1-64 characters
    of ``[A-Za-z0-9_.:-]`` so they are safe to echo into topics and SQL rows.
    A ``str`` subclass is parsed by its string value (its overrides are
    ignored); anything else raises TypeError.
    """
    if type(topic) is not str:
        topic = _plain_str(topic)
    if len(topic) > MAX_TOPIC_LENGTH:
        return _reject("topic_too_long")
    for ch in topic:
        if ch == "+" or ch == "#":
            return _reject("wildcard")
        if ch < " " or ch == "\x7f":
            return _reject("bad_char")
    levels = topic.split("/")
    if "" in levels:
        return _reject("empty_level")
    if levels[0] != ROOT:
        return _reject("not_ours")
    n = len(levels)
    if n < 3:
        return _reject("unknown_kind")
    area = levels[1]

    if area == "devices":
        uuid = levels[2]
        kind = ""
        sub = ""
        if n == 4:
            kind = _DEVICE_LEAVES.get(levels[3], "")
        elif n == 5:
            group, leaf = levels[3], levels[4]
            if group == "relays":
                kind = _RELAY_LEAVES.get(leaf, "")
            elif group == "macros" and leaf == "status":
                kind = MACRO_STATUS
            elif group == "commands":
                kind = DEVICE_COMMAND
                sub = leaf
        if not kind:
            return _reject("unknown_kind")
        problem = _level_problem(uuid, "bad_uuid") or (sub and _level_problem(sub, "bad_level"))
        if problem:
            return _reject(problem)
        return Topic(kind, uuid, sub, "")

    if area == "errors":
        if n != 4:
            return _reject("unknown_kind")
        uuid, sub = levels[2], levels[3]
        problem = _level_problem(uuid, "bad_uuid") or _level_problem(sub, "bad_level")
        return _reject(problem) if problem else Topic(ERROR, uuid, sub, "")

    if area == "telemetry":
        if n == 4 and levels[2] == "relays" and levels[3] == "data":
            return Topic(RELAY_TELEMETRY, "", "", "")
        return _reject("unknown_kind")

    if area == "commands":
        if n == 4 and levels[2] == "all":
            problem = _level_problem(levels[3], "bad_level")
            return _reject(problem) if problem else Topic(DEVICE_COMMAND, "all", levels[3], "")
        return _reject("unknown_kind")

    if area == "gateway":
        if n == 4 and levels[2] == "commands":
            sub = levels[3]
            problem = _level_problem(sub, "bad_level")
            return _reject(problem) if problem else Topic(GATEWAY_COMMAND, "", sub, "")
        return _reject("unknown_kind")

    single_level_areas = {"discovery": DISCOVERY, "system": SYSTEM, "modes": MODE}
    kind = single_level_areas.get(area, "")
    if not kind or n != 3:
        return _reject("unknown_kind")
    sub = levels[2]
    problem = _level_problem(sub, "bad_level")
    return _reject(problem) if problem else Topic(kind, "", sub, "")
