"""Check a device payload against the v2.2.0 envelope (pure-Python twin of ``_envelope.pyx``).

This file is the specification of the envelope validator: ``_envelope.pyx``
must return the same record, field for field, for every topic and payload.
Rules run in a fixed order and the first failure wins, so both builds agree on
the reason *and* the path of a reject.
"""

from __future__ import annotations

import json
import re
from typing import Any, Optional, Union

from ..errors import ConfigError
from ._names import (
    ANNOUNCE, RELAY_COMMAND, RELAY_STATE, RELAY_TELEMETRY, RESPONSE, STATUS, TELEMETRY,
)

#: Default payload limit (D14); firmware payloads stay under 512 bytes.
DEFAULT_MAX_PAYLOAD_BYTES = 65536
#: Deepest nesting of objects/arrays accepted; real envelopes use three levels.
MAX_DEPTH = 32
#: Longest sensor name turned into a row; longer names are counted as skipped.
MAX_SENSOR_NAME_LENGTH = 64
#: Longest ``data_key`` (``telemetry_data.data_key`` is VARCHAR(100)); lower-casing
#: can lengthen a name ("İ" becomes two code points), so the key itself is checked.
MAX_DATA_KEY_LENGTH = 100
#: Longest unit (``telemetry_data.unit`` is VARCHAR(20)); a signal with a longer
#: unit or a control character in it is counted as skipped, never truncated.
MAX_UNIT_LENGTH = 20
_CONTROL_CHARACTER = re.compile("[\x00-\x1f\x7f]")
#: Longest uuid accepted from a payload (the firmware allows 8-64 characters).
MAX_UUID_LENGTH = 64
#: Relay channels of the 16-channel board.
FIRST_CHANNEL = 1
LAST_CHANNEL = 16
#: Integer range a 64-bit JSON parser can represent (int64 and uint64 together).
SMALLEST_INT = -(2**63)
LARGEST_INT = 2**64 - 1

# Kinds whose topic names the device: a payload uuid must then match it.
_TOPIC_UUID_KINDS = frozenset((ANNOUNCE, STATUS, TELEMETRY, RESPONSE, RELAY_STATE))
_UUID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-")
_RELAY_COMMANDS = frozenset(("on", "off", "toggle"))
_CHANNEL_KEYS = {str(n): "relay_%d" % n for n in range(FIRST_CHANNEL, LAST_CHANNEL + 1)}
_NUMBER_TYPES = (int, float, bool)

# Fixed-key sections: (payload key, sensor name, unit), in row order.
_SYSTEM_STATUS_FIELDS = (
    ("cpu_temperature", "cpu_temp", "°C"),
    ("memory_usage", "memory_used", "%"),
    ("uptime", "uptime", "seconds"),
    ("wifi_signal", "wifi_signal", "dBm"),
    ("battery_voltage", "battery_voltage", "V"),
)
_GPS_FIELDS = (
    ("latitude", "gps_lat", "degrees"),
    ("longitude", "gps_lng", "degrees"),
    ("altitude", "gps_alt", "meters"),
    ("speed", "gps_speed", "km/h"),
    ("heading", "gps_heading", "degrees"),
    ("satellites", "gps_satellites", "count"),
)

# Explicit [0-9] classes: ``\d`` would also take non-ASCII digits.
_TIMESTAMP = re.compile(
    r"[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
    r"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:(?:[0-5][0-9]|60)"
    r"(?:\.[0-9]{1,9})?"
    r"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])?"
)
# One token of the depth pre-scan: a whole (maybe unterminated) string, or a bracket.
_DEPTH_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[{\]}]', re.DOTALL)
_SURROGATE = re.compile("[\ud800-\udfff]")
_MISSING = object()

Row = tuple[str, str, str, Optional[str]]


class Message:
    """An accepted payload: who sent it, its envelope fields and the rows it yields.

    ``rows`` holds ``(data_type, data_key, data_value, unit)`` tuples ready for
    ``telemetry_data``; ``skipped`` counts sensor entries left out because they
    were malformed. ``data`` is the whole payload, except for ``telemetry``
    where it is ``None`` so the hot path builds no dict.
    """

    __slots__ = (
        "_kind", "_uuid", "_sub", "_timestamp", "_version", "_version_ok", "_rows", "_data",
        "_skipped",
    )

    def __init__(
        self, kind: str, uuid: str, sub: str, timestamp: Optional[str], version: Optional[str],
        version_ok: bool, rows: list[Row], data: Optional[dict[str, Any]], skipped: int,
    ) -> None:
        self._kind = kind
        self._uuid = uuid
        self._sub = sub
        self._timestamp = timestamp
        self._version = version
        self._version_ok = version_ok
        self._rows = rows
        self._data = data
        self._skipped = skipped

    kind = property(lambda self: self._kind)
    uuid = property(lambda self: self._uuid)
    sub = property(lambda self: self._sub)
    timestamp = property(lambda self: self._timestamp)
    version = property(lambda self: self._version)
    version_ok = property(lambda self: self._version_ok)
    rows = property(lambda self: self._rows)
    data = property(lambda self: self._data)
    skipped = property(lambda self: self._skipped)

    def as_tuple(self) -> tuple[Any, ...]:
        """Return every field in declaration order, the form the twins are compared in."""
        return (
            self._kind, self._uuid, self._sub, self._timestamp, self._version, self._version_ok,
            self._rows, self._data, self._skipped,
        )

    def __eq__(self, other: object) -> bool:
        """Compare field by field, so records of the two builds compare equal too."""
        if type(other).__name__ != "Message" or not hasattr(other, "as_tuple"):
            return NotImplemented
        return bool(self.as_tuple() == other.as_tuple())

    def __repr__(self) -> str:
        return (
            "Message(kind=%r, uuid=%r, sub=%r, timestamp=%r, version=%r, version_ok=%r, "
            "rows=%r, data=%r, skipped=%r)" % self.as_tuple()
        )


class Reject:
    """A refused payload: ``reason`` is the machine-readable code, ``path`` the bad value.

    ``uuid`` is the uuid the message would have carried, as far as validation
    got: the topic's uuid, or the payload's once the uuid rule has run.
    """

    __slots__ = ("_kind", "_uuid", "_reason", "_path")

    def __init__(self, kind: str, uuid: str, reason: str, path: str) -> None:
        self._kind = kind
        self._uuid = uuid
        self._reason = reason
        self._path = path

    kind = property(lambda self: self._kind)
    uuid = property(lambda self: self._uuid)
    reason = property(lambda self: self._reason)
    path = property(lambda self: self._path)

    def as_tuple(self) -> tuple[str, str, str, str]:
        """Return every field in declaration order, the form the twins are compared in."""
        return (self._kind, self._uuid, self._reason, self._path)

    def __eq__(self, other: object) -> bool:
        """Compare field by field, so records of the two builds compare equal too."""
        if type(other).__name__ != "Reject" or not hasattr(other, "as_tuple"):
            return NotImplemented
        return bool(self.as_tuple() == other.as_tuple())

    def __hash__(self) -> int:
        return hash(self.as_tuple())

    def __repr__(self) -> str:
        return "Reject(kind=%r, uuid=%r, reason=%r, path=%r)" % self.as_tuple()


class _Refused(ValueError):
    """Raised by the parser hooks for values RFC 8259 or a 64-bit parser cannot hold."""


class _Invalid(Exception):
    """Carry a reject (reason, path) out of the nested rule helpers."""

    def __init__(self, reason: str, path: str) -> None:
        super().__init__(reason, path)
        self.reason = reason
        self.path = path


def _refuse_constant(name: str) -> Any:
    raise _Refused(name)


def _parse_float(text: str) -> float:
    """Refuse numbers that overflow a double, as a strict parser does (``1e400``)."""
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _Refused(text)
    return value


def _parse_int(text: str) -> int:
    """Refuse integers outside the int64/uint64 range a compiled parser represents."""
    value = int(text)
    if not SMALLEST_INT <= value <= LARGEST_INT:
        raise _Refused(text)
    return value


def _too_deep(payload: bytes) -> bool:
    """Tell whether brackets outside strings nest deeper than ``MAX_DEPTH``.

    Decided on the raw bytes before parsing, so the verdict does not depend on
    how far a parser gets; payloads with few brackets skip the scan entirely.
    """
    if payload.count(b"{") + payload.count(b"[") <= MAX_DEPTH:
        return False
    depth = 0
    for token in _DEPTH_TOKEN.finditer(payload):
        first = token.group()[0]
        if first == 0x7B or first == 0x5B:  # { [
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif first != 0x22:  # } ] (a string token starts with ")
            depth -= 1
    return False


def _has_surrogate(value: Any) -> bool:
    """Find a lone surrogate left by a ``\\u`` escape, in keys and values at any depth."""
    if type(value) is str:
        return _SURROGATE.search(value) is not None
    if type(value) is dict:
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    if type(value) is list:
        return any(_has_surrogate(item) for item in value)
    return False


def _parse_json(decoder: json.JSONDecoder, text: str) -> Any:
    """Parse strict RFC 8259 JSON; raise ValueError for everything a strict parser refuses."""
    value = decoder.decode(text)
    if "\\u" in text and _has_surrogate(value):
        raise _Refused("lone surrogate")
    return value


def _version_ok(version: str) -> bool:
    """Accept protocol major 2 (``"2.2.0"``, ``"2.1.0"``, ``"2"``): devices mix 2.1 and 2.2."""
    major = version.partition(".")[0]
    return 1 <= len(major) <= 3 and major.isascii() and major.isdigit() and int(major) == 2


def _safe_uuid(uuid: str) -> bool:
    """Accept uuids that are safe to echo into topics and SQL rows."""
    return (
        0 < len(uuid) <= MAX_UUID_LENGTH and uuid not in (".", "..")
        and _UUID_CHARS.issuperset(uuid)
    )


def _is_channel(value: Any) -> bool:
    return type(value) is int and FIRST_CHANNEL <= value <= LAST_CHANNEL


def _number_text(value: Any) -> Optional[str]:
    """Render a JSON number (booleans included) as ``str(float(v))``; None for non-numbers."""
    if type(value) in _NUMBER_TYPES:
        return repr(float(value))
    return None


def _sensor_name_ok(name: str) -> bool:
    """Accept names of 1-64 characters (code points, as ``len(str)`` counts) without ASCII controls.

    A NUL or a line break in a ``data_key`` would reach the Config App and its
    logs; a real sensor is never named that way.
    """
    return 0 < len(name) <= MAX_SENSOR_NAME_LENGTH and _CONTROL_CHARACTER.search(name) is None


def _unit_ok(unit: str) -> bool:
    """Accept units of at most 20 characters without ASCII controls (PostgreSQL refuses NUL)."""
    return len(unit) <= MAX_UNIT_LENGTH and _CONTROL_CHARACTER.search(unit) is None


def _check_uuid(kind: str, topic_uuid: str, payload: dict[str, Any]) -> str:
    """Apply the uuid rule and return the message uuid."""
    uuid = payload.get("uuid", _MISSING)
    if uuid is _MISSING:
        if kind == RELAY_TELEMETRY:
            raise _Invalid("missing_field:uuid", "$.uuid")
        return topic_uuid
    if type(uuid) is not str:
        raise _Invalid("bad_type:uuid", "$.uuid")
    if kind in _TOPIC_UUID_KINDS and uuid != topic_uuid:
        raise _Invalid("uuid_mismatch", "$.uuid")
    if kind == RELAY_TELEMETRY and not _safe_uuid(uuid):
        raise _Invalid("bad_value:uuid", "$.uuid")
    return topic_uuid or uuid


def _check_timestamp(payload: dict[str, Any]) -> Optional[str]:
    timestamp = payload.get("timestamp")
    if timestamp is None and "timestamp" not in payload:
        return None
    if type(timestamp) is not str or _TIMESTAMP.fullmatch(timestamp) is None:
        raise _Invalid("bad_timestamp", "$.timestamp")
    return timestamp


def _require(payload: dict[str, Any], field: str, types: Any) -> Any:
    """Return a required field, rejecting it when absent or of the wrong JSON type."""
    value = payload.get(field, _MISSING)
    if value is _MISSING:
        raise _Invalid("missing_field:" + field, "$." + field)
    if type(value) not in types:
        raise _Invalid("bad_type:" + field, "$." + field)
    return value


def _check_announce(payload: dict[str, Any]) -> None:
    _require(payload, "device_type", (str,))
    _require(payload, "firmware_version", (str,))
    capabilities = _require(payload, "capabilities", (list,))
    for index, item in enumerate(capabilities):
        if type(item) is not str:
            raise _Invalid("bad_type:capabilities", "$.capabilities[%d]" % index)


def _check_relay_command(payload: dict[str, Any]) -> None:
    """Accept channel 1-16 or ``"all"`` (bool is not a channel), then on/off/toggle."""
    channel = _require(payload, "channel", (int, str))
    if channel != "all" and not _is_channel(channel):
        raise _Invalid("bad_value:channel", "$.channel")
    if _require(payload, "command", (str,)) not in _RELAY_COMMANDS:
        raise _Invalid("bad_value:command", "$.command")


def _check_status(payload: dict[str, Any]) -> None:
    if "status" in payload and type(payload["status"]) is not str:
        raise _Invalid("bad_type:status", "$.status")


def _check_kind_fields(kind: str, payload: dict[str, Any]) -> None:
    """Apply the required-field rules of the kinds that have them."""
    if kind == ANNOUNCE:
        _check_announce(payload)
    elif kind == RESPONSE:
        _require(payload, "command_id", (str,))
    elif kind == RELAY_COMMAND:
        _check_relay_command(payload)
    elif kind == STATUS:
        _check_status(payload)
    elif kind == RELAY_TELEMETRY:
        _require(payload, "event", (str,))


def _can_rows(can_data: Any, rows: list[Row]) -> int:
    """Turn ``can_data.signals`` into ``can_bus`` rows; return the skipped count."""
    signals = can_data.get("signals") if type(can_data) is dict else None
    if type(signals) is not dict:
        return 0
    skipped = 0
    for name, signal in signals.items():
        text = _number_text(signal.get("value")) if type(signal) is dict else None
        if text is None or not _sensor_name_ok(name):
            skipped += 1
            continue
        unit = signal.get("unit")
        key = "can_" + name.lower()
        if type(unit) is not str:
            unit = None
        elif not _unit_ok(unit):
            skipped += 1
            continue
        if len(key) > MAX_DATA_KEY_LENGTH:
            skipped += 1
            continue
        rows.append(("can_bus", key, text, unit))
    return skipped


def _analog_rows(sensors: Any, rows: list[Row]) -> int:
    """Turn ``analog_sensors`` into ``analog_sensor`` rows; return the skipped count."""
    if type(sensors) is not dict:
        return 0
    skipped = 0
    for name, value in sensors.items():
        text = _number_text(value)
        if text is None or not _sensor_name_ok(name):
            skipped += 1
            continue
        key = "analog_" + name.lower()
        if len(key) > MAX_DATA_KEY_LENGTH:
            skipped += 1
            continue
        rows.append(("analog_sensor", key, text, None))
    return skipped


def _fixed_rows(section: Any, data_type: str, fields: Any, rows: list[Row]) -> int:
    """Turn the known keys of ``system_status``/``gps`` into rows, in fixed order."""
    if type(section) is not dict:
        return 0
    skipped = 0
    for key, sensor, unit in fields:
        value = section.get(key, _MISSING)
        if value is _MISSING:
            continue
        text = _number_text(value)
        if text is None:
            skipped += 1
        else:
            rows.append((data_type, sensor, text, unit))
    return skipped


def _event_rows(payload: dict[str, Any], rows: list[Row]) -> int:
    """Turn a relay event into one relay row; return 1 when the event is malformed."""
    event = payload.get("event")
    if event != "relay_change" and event != "safety_shutoff":
        return 0
    channel = payload.get("channel")
    if not _is_channel(channel):
        return 1
    if event == "safety_shutoff":
        rows.append(("relay", _CHANNEL_KEYS[str(channel)], "0", None))
        return 0
    state = payload.get("state")
    if type(state) is not bool:
        return 1
    rows.append(("relay", _CHANNEL_KEYS[str(channel)], "1" if state else "0", None))
    return 0


def _telemetry_rows(payload: dict[str, Any], rows: list[Row]) -> int:
    """Collect telemetry rows section by section, in the fixed order."""
    skipped = _can_rows(payload.get("can_data"), rows)
    skipped += _analog_rows(payload.get("analog_sensors"), rows)
    skipped += _fixed_rows(
        payload.get("system_status"), "system_status", _SYSTEM_STATUS_FIELDS, rows,
    )
    skipped += _fixed_rows(payload.get("gps"), "gps", _GPS_FIELDS, rows)
    return skipped + _event_rows(payload, rows)


def _relay_state_rows(payload: dict[str, Any], rows: list[Row]) -> int:
    """Turn ``channels`` (and the legacy ``relays`` list) into relay rows."""
    skipped = 0
    channels = payload.get("channels")
    if type(channels) is dict:
        for key, state in channels.items():
            sensor = _CHANNEL_KEYS.get(key)
            if sensor is None or type(state) is not bool:
                skipped += 1
            else:
                rows.append(("relay", sensor, "1" if state else "0", None))
    relays = payload.get("relays")
    if type(relays) is list:
        for item in relays:
            relay_id = item.get("relay_id") if type(item) is dict else None
            state = item.get("state") if type(item) is dict else None
            if not _is_channel(relay_id) or type(state) is not bool:
                skipped += 1
            else:
                rows.append(("relay", _CHANNEL_KEYS[str(relay_id)], "1" if state else "0", None))
    return skipped


class Validator:
    """Validate payloads one by one with a reusable parser; one instance per thread."""

    __slots__ = ("_max_payload", "_decoder")

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD_BYTES) -> None:
        if type(max_payload) is not int or max_payload < 0:
            raise ConfigError("max_payload", max_payload, "an int >= 0 (bytes)")
        self._max_payload = max_payload
        self._decoder = json.JSONDecoder(
            parse_float=_parse_float, parse_int=_parse_int, parse_constant=_refuse_constant,
        )

    @property
    def max_payload(self) -> int:
        """Largest payload accepted, in bytes."""
        return self._max_payload

    def validate(
        self, topic: Any, payload: Union[bytes, bytearray, memoryview],
    ) -> Union[Message, Reject]:
        """Check ``payload`` received on ``topic``; return a Message or a Reject, never raise.

        Bad input is data, not an error: the gateway counts rejects and
        publishes ERR_002 for them, so nothing a device sends may raise here.
        """
        kind = topic.kind
        if topic.reason:
            return Reject(kind, topic.uuid, "bad_topic", "$")
        if type(payload) is not bytes:
            payload = bytes(payload)
        if len(payload) > self._max_payload:
            return Reject(kind, topic.uuid, "payload_too_large", "$")
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            return Reject(kind, topic.uuid, "not_utf8", "$")
        if _too_deep(payload):
            return Reject(kind, topic.uuid, "too_deep", "$")
        try:
            document = _parse_json(self._decoder, text)
        except ValueError:
            return Reject(kind, topic.uuid, "bad_json", "$")
        if type(document) is not dict:
            return Reject(kind, topic.uuid, "not_object", "$")
        return self._check(topic, kind, document)

    def _check(self, topic: Any, kind: str, payload: dict[str, Any]) -> Union[Message, Reject]:
        """Apply the envelope rules that look inside the parsed object."""
        version = payload.get("protocol_version")
        if type(version) is not str:
            version = None
        uuid = topic.uuid
        try:
            uuid = _check_uuid(kind, uuid, payload)
            timestamp = _check_timestamp(payload)
            _check_kind_fields(kind, payload)
        except _Invalid as invalid:
            return Reject(kind, uuid, invalid.reason, invalid.path)
        rows: list[Row] = []
        skipped = 0
        if kind == TELEMETRY or kind == RELAY_TELEMETRY:
            skipped = _telemetry_rows(payload, rows)
        elif kind == RELAY_STATE:
            skipped = _relay_state_rows(payload, rows)
        return Message(
            kind, uuid, topic.sub, timestamp, version,
            version is not None and _version_ok(version), rows,
            None if kind == TELEMETRY else payload, skipped,
        )


__all__ = ["DEFAULT_MAX_PAYLOAD_BYTES", "MAX_DATA_KEY_LENGTH", "MAX_DEPTH", "MAX_UNIT_LENGTH", "Message", "Reject", "Validator"]
