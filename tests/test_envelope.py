"""Envelope validator: every fixture and every rule, once per build (``impl`` fixture)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from autocore import _fast
from autocore.errors import ConfigError

FIXTURES = Path(__file__).parent / "data" / "fixtures"

DEVICE = "esp32-relay-001"
STATUS_TOPIC = f"autocore/devices/{DEVICE}/status"
TELEMETRY_TOPIC = "autocore/devices/esp32-sensor-001/telemetry"
RELAY_DATA_TOPIC = "autocore/telemetry/relays/data"
RELAY_COMMAND_TOPIC = f"autocore/devices/{DEVICE}/relays/command"

#: Topic each fixture arrives on (fixtures/README.md).
FIXTURE_TOPICS = {
    "announce.json": "autocore/devices/esp32-display-001/announce",
    "command_response.json": f"autocore/devices/{DEVICE}/response",
    "discovery.json": "autocore/discovery/announce",
    "error_device.json": f"autocore/errors/{DEVICE}/payload",
    "error_gateway_protocol_mismatch.json": f"autocore/errors/{DEVICE}/protocol_mismatch",
    "gateway_status_lwt.json": "autocore/devices/autocore-gateway/status",
    "gateway_status_online.json": "autocore/devices/autocore-gateway/status",
    "gateway_status_shutdown.json": "autocore/devices/autocore-gateway/status",
    "mode_change.json": "autocore/modes/parking",
    "relay_command_in.json": RELAY_COMMAND_TOPIC,
    "relay_heartbeat.json": f"autocore/devices/{DEVICE}/relays/heartbeat",
    "relay_set_out.json": f"autocore/devices/{DEVICE}/relays/set",
    "relay_state.json": f"autocore/devices/{DEVICE}/relays/state",
    "status_offline_lwt.json": STATUS_TOPIC,
    "status_online.json": STATUS_TOPIC,
    "telemetry_analog_system.json": TELEMETRY_TOPIC,
    "telemetry_can.json": "autocore/devices/esp32-can-001/telemetry",
    "telemetry_gps.json": TELEMETRY_TOPIC,
    "telemetry_relay_change.json": RELAY_DATA_TOPIC,
    "telemetry_safety_shutoff.json": RELAY_DATA_TOPIC,
    "invalid_not_json.json": STATUS_TOPIC,
    "invalid_not_object.json": STATUS_TOPIC,
    "invalid_missing_version.json": STATUS_TOPIC,
    "invalid_wrong_version.json": STATUS_TOPIC,
    "invalid_version_not_string.json": STATUS_TOPIC,
    "invalid_announce_missing_fields.json": "autocore/devices/esp32-display-009/announce",
    "invalid_response_no_command_id.json": f"autocore/devices/{DEVICE}/response",
    "invalid_relay_command_no_channel.json": RELAY_COMMAND_TOPIC,
}

#: Fixtures that must be refused, with (reason, path).
FIXTURE_REJECTS = {
    "invalid_not_json.json": ("bad_json", "$"),
    "invalid_not_object.json": ("not_object", "$"),
    "invalid_announce_missing_fields.json": ("missing_field:device_type", "$.device_type"),
    "invalid_response_no_command_id.json": ("missing_field:command_id", "$.command_id"),
    "invalid_relay_command_no_channel.json": ("missing_field:channel", "$.channel"),
}

RELAY_STATE_ROWS = [("relay", "relay_1", "1", None)] + [
    ("relay", f"relay_{n}", "0", None) for n in range(2, 17)
]

#: Rows the telemetry-like fixtures must yield, in order.
FIXTURE_ROWS = {
    "telemetry_can.json": [
        ("can_bus", "can_rpm", "2500.0", "rpm"),
        ("can_bus", "can_tps", "45.2", "%"),
        ("can_bus", "can_ect", "85.7", "°C"),
    ],
    "telemetry_analog_system.json": [
        ("analog_sensor", "analog_fuel_level", "67.8", None),
        ("analog_sensor", "analog_oil_pressure", "45.2", None),
        ("system_status", "cpu_temp", "42.1", "°C"),
        ("system_status", "memory_used", "68.0", "%"),
        ("system_status", "uptime", "86400.0", "seconds"),
        ("system_status", "wifi_signal", "-58.0", "dBm"),
        ("system_status", "battery_voltage", "12.6", "V"),
    ],
    "telemetry_gps.json": [
        ("gps", "gps_lat", "-23.5505", "degrees"),
        ("gps", "gps_lng", "-46.6333", "degrees"),
        ("gps", "gps_alt", "760.0", "meters"),
        ("gps", "gps_speed", "65.4", "km/h"),
        ("gps", "gps_heading", "180.5", "degrees"),
        ("gps", "gps_satellites", "8.0", "count"),
    ],
    "telemetry_relay_change.json": [("relay", "relay_2", "0", None)],
    "telemetry_safety_shutoff.json": [("relay", "relay_1", "0", None)],
    "relay_state.json": RELAY_STATE_ROWS,
}


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def check(impl: _fast.Implementation, topic: str, payload: Any, **options: int) -> Any:
    """Validate ``payload`` (bytes, or an object dumped to JSON) received on ``topic``."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        payload = json.dumps(payload, ensure_ascii=False).encode()
    return impl.Validator(**options).validate(impl.parse_topic(topic), payload)


def accepted(impl: _fast.Implementation, topic: str, payload: Any) -> Any:
    result = check(impl, topic, payload)
    assert isinstance(result, impl.Message), result
    return result


def refused(impl: _fast.Implementation, topic: str, payload: Any) -> tuple[str, str]:
    result = check(impl, topic, payload)
    assert isinstance(result, impl.Reject), result
    return result.reason, result.path


def telemetry(**sections: Any) -> dict[str, Any]:
    return {"protocol_version": "2.2.0", "uuid": "esp32-sensor-001", **sections}


# -- fixtures -------------------------------------------------------------------------


#: Every fixture on disk: one without a FIXTURE_TOPICS entry fails with a KeyError.
ALL_FIXTURES = sorted(p.name for p in FIXTURES.glob("*.json"))


@pytest.mark.parametrize("name", [n for n in ALL_FIXTURES if n not in FIXTURE_REJECTS])
def test_valid_fixture_is_accepted(impl: _fast.Implementation, name: str) -> None:
    message = accepted(impl, FIXTURE_TOPICS[name], fixture_bytes(name))
    topic = impl.parse_topic(FIXTURE_TOPICS[name])
    assert (message.kind, message.sub) == (topic.kind, topic.sub)
    assert message.rows == FIXTURE_ROWS.get(name, [])
    assert message.skipped == 0
    if message.kind == "telemetry":
        assert message.data is None
    else:
        assert message.data == json.loads(fixture_bytes(name))


@pytest.mark.parametrize("name", sorted(FIXTURE_REJECTS))
def test_invalid_fixture_is_refused(impl: _fast.Implementation, name: str) -> None:
    assert refused(impl, FIXTURE_TOPICS[name], fixture_bytes(name)) == FIXTURE_REJECTS[name]


def test_reject_carries_kind_and_topic_uuid(impl: _fast.Implementation) -> None:
    name = "invalid_announce_missing_fields.json"
    result = check(impl, FIXTURE_TOPICS[name], fixture_bytes(name))
    assert result.as_tuple() == (
        "announce", "esp32-display-009", "missing_field:device_type", "$.device_type",
    )


def test_envelope_fields_of_a_valid_fixture(impl: _fast.Implementation) -> None:
    message = accepted(impl, TELEMETRY_TOPIC, fixture_bytes("telemetry_analog_system.json"))
    assert message.uuid == "esp32-sensor-001"
    assert message.timestamp == "2025-08-12T20:53:17Z"
    assert (message.version, message.version_ok) == ("2.2.0", True)


def test_duplicate_timestamp_last_one_wins(impl: _fast.Implementation) -> None:
    message = accepted(impl, RELAY_DATA_TOPIC, fixture_bytes("telemetry_relay_change.json"))
    assert message.kind == "relay_telemetry"
    assert message.uuid == DEVICE
    assert message.timestamp == "2025-08-12T17:53:17"
    assert message.data["timestamp"] == "2025-08-12T17:53:17"


@pytest.mark.parametrize(
    ("name", "version", "ok"),
    [
        ("invalid_missing_version.json", None, False),
        ("invalid_wrong_version.json", "1.0.0", False),
        ("invalid_version_not_string.json", None, False),
        ("status_online.json", "2.2.0", True),
    ],
)
def test_version_is_flagged_not_refused(
    impl: _fast.Implementation, name: str, version: Any, ok: bool,
) -> None:
    message = accepted(impl, STATUS_TOPIC, fixture_bytes(name))
    assert (message.version, message.version_ok) == (version, ok)


@pytest.mark.parametrize(
    ("version", "ok"),
    [
        ("2.2.0", True), ("2.1.0", True), ("2", True), ("02.0", True), ("2.x", True),
        ("1.0.0", False), ("3.0", False), ("x", False), ("", False), (".2", False),
        ("0002.0", False), ("２.0", False), ("22.0", False),
    ],
)
def test_version_major_must_be_two(impl: _fast.Implementation, version: str, ok: bool) -> None:
    payload = {"uuid": DEVICE, "protocol_version": version}
    message = accepted(impl, STATUS_TOPIC, payload)
    assert (message.version, message.version_ok) == (version, ok)


# -- rules 1-5: the raw payload ---------------------------------------------------------


def test_payload_over_the_limit(impl: _fast.Implementation) -> None:
    payload = b'{"uuid":"esp32-relay-001"}'
    assert isinstance(check(impl, STATUS_TOPIC, payload, max_payload=len(payload)), impl.Message)
    result = check(impl, STATUS_TOPIC, payload, max_payload=len(payload) - 1)
    assert (result.reason, result.path) == ("payload_too_large", "$")


def test_size_is_checked_before_anything_else(impl: _fast.Implementation) -> None:
    result = check(impl, STATUS_TOPIC, b"\xff" * 100, max_payload=10)
    assert result.reason == "payload_too_large"


@pytest.mark.parametrize(
    "payload",
    [b'{"a":"\xff"}', b'{"a":"\xc3"}', b'{"a":"\xed\xa0\x80"}', b'{"a":"\xc0\xaf"}', b"\x80{}"],
    ids=["ff", "truncated", "surrogate", "overlong", "leading-continuation"],
)
def test_not_utf8(impl: _fast.Implementation, payload: bytes) -> None:
    assert refused(impl, STATUS_TOPIC, payload) == ("not_utf8", "$")


def test_nesting_limit(impl: _fast.Implementation) -> None:
    def nested(depth: int) -> bytes:
        return b'{"a":' * (depth - 1) + b"{}" + b"}" * (depth - 1)

    assert isinstance(check(impl, STATUS_TOPIC, nested(32)), impl.Message)
    assert refused(impl, STATUS_TOPIC, nested(33)) == ("too_deep", "$")
    assert refused(impl, STATUS_TOPIC, b"[" * 33) == ("too_deep", "$")


def test_brackets_inside_strings_do_not_count(impl: _fast.Implementation) -> None:
    payload = {"uuid": DEVICE, "note": "[{" * 40 + '\\"[[' * 10}
    accepted(impl, STATUS_TOPIC, payload)


def test_many_shallow_brackets_are_fine(impl: _fast.Implementation) -> None:
    payload = {"uuid": DEVICE, "items": [{"n": n} for n in range(100)]}
    accepted(impl, STATUS_TOPIC, payload)


def test_depth_is_decided_before_json_validity(impl: _fast.Implementation) -> None:
    assert refused(impl, STATUS_TOPIC, b"[" * 40 + b"garbage") == ("too_deep", "$")


@pytest.mark.parametrize(
    "payload",
    [
        b"", b"   ", b'{"a":1} x', b'{"a":1}{}', b'{"a":NaN}', b'{"a":Infinity}',
        b'{"a":-Infinity}', b'{"a":1e400}', b'{"a":-1e400}', b'{"a":18446744073709551616}',
        b'{"a":-9223372036854775809}', b'{"a":"\\ud800"}', b'{"a":"\\udc00"}',
        b'{"a":"\\ud800\\u0041"}', b'{"\\udfff":1}', b'{"a":"tab\there"}', b'{"a":"nl\nx"}',
        b'{"a":01}', b'{"a":1.}', b'{"a":.5}', b'{"a":+1}', b"{'a':1}", b'{"a":1,}',
        b'{"a":"\\x"}', b"\xef\xbb\xbf{}", b'{"a":tru}', b'{"a" 1}', b"{\"a\":1\x00}",
    ],
)
def test_bad_json(impl: _fast.Implementation, payload: bytes) -> None:
    assert refused(impl, STATUS_TOPIC, payload) == ("bad_json", "$")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("18446744073709551615", 2**64 - 1), ("-9223372036854775808", -(2**63)),
        ("1e-400", 0.0), ("-0", 0), ("1E5", 100000.0), ('"\\ud83d\\ude00"', "\U0001f600"),
        ('"\\u0000"', "\x00"), ("1.7976931348623157e308", 1.7976931348623157e308),
    ],
)
def test_edge_values_that_are_valid_json(impl: _fast.Implementation, text: str, value: Any) -> None:
    message = accepted(impl, STATUS_TOPIC, ('{"uuid":"%s","v":%s}' % (DEVICE, text)).encode())
    assert message.data["v"] == value
    assert type(message.data["v"]) is type(value)


@pytest.mark.parametrize("payload", [b"[]", b'"x"', b"1", b"null", b"true"])
def test_not_object(impl: _fast.Implementation, payload: bytes) -> None:
    assert refused(impl, STATUS_TOPIC, payload) == ("not_object", "$")


def test_bytearray_and_memoryview_payloads(impl: _fast.Implementation) -> None:
    payload = fixture_bytes("telemetry_gps.json")
    expected = check(impl, TELEMETRY_TOPIC, payload).as_tuple()
    assert check(impl, TELEMETRY_TOPIC, bytearray(payload)).as_tuple() == expected
    assert check(impl, TELEMETRY_TOPIC, memoryview(payload)).as_tuple() == expected


# -- rule 6: duplicate keys -------------------------------------------------------------


def test_duplicate_keys_last_wins_at_every_level(impl: _fast.Implementation) -> None:
    payload = (
        b'{"uuid":"esp32-relay-001","status":1,"status":"online",'
        b'"nested":{"a":1,"b":2,"a":{"x":1,"x":[1,{"y":1,"y":2}]}}}'
    )
    message = accepted(impl, STATUS_TOPIC, payload)
    assert message.data == {
        "uuid": DEVICE, "status": "online", "nested": {"a": {"x": [1, {"y": 2}]}, "b": 2},
    }
    assert list(message.data["nested"]) == ["a", "b"]


def test_duplicate_sensor_names_keep_first_position_last_value(impl: _fast.Implementation) -> None:
    payload = (
        b'{"uuid":"esp32-sensor-001","analog_sensors":{"a":1,"b":2,"a":3},'
        b'"system_status":{"uptime":1,"uptime":"x"},'
        b'"can_data":{"signals":{"S":{"value":1,"value":2,"unit":"V","unit":7}}}}'
    )
    message = accepted(impl, TELEMETRY_TOPIC, payload)
    assert message.rows == [
        ("can_bus", "can_s", "2.0", None),
        ("analog_sensor", "analog_a", "3.0", None),
        ("analog_sensor", "analog_b", "2.0", None),
    ]
    assert message.skipped == 1


def test_many_duplicate_sensor_names(impl: _fast.Implementation) -> None:
    fields = ",".join('"s%d":%d' % (n % 20, n) for n in range(60))
    payload = ('{"uuid":"esp32-sensor-001","analog_sensors":{%s}}' % fields).encode()
    message = accepted(impl, TELEMETRY_TOPIC, payload)
    assert message.rows == [
        ("analog_sensor", "analog_s%d" % n, "%d.0" % (n + 40), None) for n in range(20)
    ]


# -- rules 8-9: uuid and timestamp ------------------------------------------------------


def test_uuid_of_the_wrong_type(impl: _fast.Implementation) -> None:
    assert refused(impl, STATUS_TOPIC, {"uuid": 7}) == ("bad_type:uuid", "$.uuid")
    assert refused(impl, "autocore/modes/parking", {"uuid": None}) == ("bad_type:uuid", "$.uuid")


@pytest.mark.parametrize(
    "topic",
    [
        STATUS_TOPIC, f"autocore/devices/{DEVICE}/announce", f"autocore/devices/{DEVICE}/telemetry",
        f"autocore/devices/{DEVICE}/response", f"autocore/devices/{DEVICE}/relays/state",
    ],
)
def test_uuid_must_match_the_topic(impl: _fast.Implementation, topic: str) -> None:
    assert refused(impl, topic, {"uuid": "esp32-relay-002"}) == ("uuid_mismatch", "$.uuid")


def test_uuid_mismatch_is_allowed_where_the_topic_names_the_target(
    impl: _fast.Implementation,
) -> None:
    message = accepted(impl, RELAY_COMMAND_TOPIC, {"uuid": "app", "channel": 1, "command": "on"})
    assert message.uuid == DEVICE


def test_missing_uuid_takes_the_topic_uuid(impl: _fast.Implementation) -> None:
    assert accepted(impl, STATUS_TOPIC, {"status": "online"}).uuid == DEVICE


def test_topic_without_uuid_takes_the_payload_uuid(impl: _fast.Implementation) -> None:
    assert accepted(impl, "autocore/discovery/announce", {"uuid": "esp32-x"}).uuid == "esp32-x"
    assert accepted(impl, "autocore/discovery/announce", {}).uuid == ""


def test_relay_telemetry_needs_a_safe_uuid(impl: _fast.Implementation) -> None:
    event = {"event": "relay_change", "channel": 1, "state": True}
    assert refused(impl, RELAY_DATA_TOPIC, event) == ("missing_field:uuid", "$.uuid")
    for bad in ("", ".", "..", "a/b", "a" * 65, "é"):
        assert refused(impl, RELAY_DATA_TOPIC, {"uuid": bad, **event}) == (
            "bad_value:uuid", "$.uuid",
        ), bad
    assert accepted(impl, RELAY_DATA_TOPIC, {"uuid": "a" * 64, **event}).uuid == "a" * 64


def test_relay_telemetry_reject_names_the_payload_uuid(impl: _fast.Implementation) -> None:
    result = check(impl, RELAY_DATA_TOPIC, {"uuid": DEVICE})
    assert result.as_tuple() == ("relay_telemetry", DEVICE, "missing_field:event", "$.event")


@pytest.mark.parametrize(
    "timestamp",
    [
        "2025-08-12T20:53:17Z", "2025-08-12T20:53:17.469804Z", "2025-08-12T17:53:17",
        "1970-01-01T00:00:00", "2025-08-12T20:53:17+03:00", "2025-08-12T20:53:17.1-03:00",
        "2025-12-31T23:59:60.123456789",
    ],
)
def test_good_timestamps(impl: _fast.Implementation, timestamp: str) -> None:
    assert accepted(impl, STATUS_TOPIC, {"timestamp": timestamp}).timestamp == timestamp


@pytest.mark.parametrize(
    "timestamp",
    [
        "", "2025-08-12", "2025-08-12 20:53:17", "2025-13-12T20:53:17", "2025-00-12T20:53:17",
        "2025-08-32T20:53:17", "2025-08-00T20:53:17", "2025-08-12T24:00:00",
        "2025-08-12T20:60:17", "2025-08-12T20:53:61", "2025-08-12T20:53:17.", "2025-08-12t20:53:17",
        "2025-08-12T20:53:17.1234567890", "2025-08-12T20:53:17z", "2025-08-12T20:53:17+0300",
        "2025-08-12T20:53:17+24:00", "2025-08-12T20:53:17Z\n", "２025-08-12T20:53:17",
        1723495997, None,
    ],
)
def test_bad_timestamps(impl: _fast.Implementation, timestamp: Any) -> None:
    assert refused(impl, STATUS_TOPIC, {"timestamp": timestamp}) == (
        "bad_timestamp", "$.timestamp",
    )


def test_uuid_rule_runs_before_timestamp_rule(impl: _fast.Implementation) -> None:
    payload = {"uuid": 1, "timestamp": "soon"}
    assert refused(impl, STATUS_TOPIC, payload) == ("bad_type:uuid", "$.uuid")


# -- rule 10: kind-specific fields ------------------------------------------------------


ANNOUNCE_TOPIC = f"autocore/devices/{DEVICE}/announce"
GOOD_ANNOUNCE = {"device_type": "esp32_relay", "firmware_version": "2.0", "capabilities": []}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"device_type": 1}, ("bad_type:device_type", "$.device_type")),
        ({"firmware_version": None}, ("bad_type:firmware_version", "$.firmware_version")),
        ({"capabilities": "relay"}, ("bad_type:capabilities", "$.capabilities")),
        ({"capabilities": ["a", "b", 3]}, ("bad_type:capabilities", "$.capabilities[2]")),
    ],
)
def test_announce_fields(impl: _fast.Implementation, change: dict, expected: tuple) -> None:
    assert refused(impl, ANNOUNCE_TOPIC, {**GOOD_ANNOUNCE, **change}) == expected


def test_announce_field_order(impl: _fast.Implementation) -> None:
    payload = {"capabilities": 1}
    assert refused(impl, ANNOUNCE_TOPIC, payload) == (
        "missing_field:device_type", "$.device_type",
    )
    payload = {"device_type": "x", "capabilities": 1}
    assert refused(impl, ANNOUNCE_TOPIC, payload) == (
        "missing_field:firmware_version", "$.firmware_version",
    )


def test_response_command_id_type(impl: _fast.Implementation) -> None:
    topic = f"autocore/devices/{DEVICE}/response"
    assert refused(impl, topic, {"command_id": 5}) == ("bad_type:command_id", "$.command_id")


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"channel": "3", "command": "on"}, ("bad_value:channel", "$.channel")),
        ({"channel": 17, "command": "on"}, ("bad_value:channel", "$.channel")),
        ({"channel": 0, "command": "on"}, ("bad_value:channel", "$.channel")),
        ({"channel": 2**64 - 1, "command": "on"}, ("bad_value:channel", "$.channel")),
        ({"channel": True, "command": "on"}, ("bad_type:channel", "$.channel")),
        ({"channel": 3.0, "command": "on"}, ("bad_type:channel", "$.channel")),
        ({"channel": None, "command": "on"}, ("bad_type:channel", "$.channel")),
        ({"channel": 3}, ("missing_field:command", "$.command")),
        ({"channel": 3, "command": 1}, ("bad_type:command", "$.command")),
        ({"channel": 3, "command": "ON"}, ("bad_value:command", "$.command")),
        ({"channel": "ALL", "command": "on"}, ("bad_value:channel", "$.channel")),
    ],
)
def test_relay_command_fields(impl: _fast.Implementation, payload: dict, expected: tuple) -> None:
    assert refused(impl, RELAY_COMMAND_TOPIC, payload) == expected


@pytest.mark.parametrize(
    ("channel", "command"), [(1, "on"), (16, "off"), ("all", "toggle")],
)
def test_relay_command_accepted(impl: _fast.Implementation, channel: Any, command: str) -> None:
    message = accepted(impl, RELAY_COMMAND_TOPIC, {"channel": channel, "command": command})
    assert message.data == {"channel": channel, "command": command}


def test_status_must_be_a_string_when_present(impl: _fast.Implementation) -> None:
    assert refused(impl, STATUS_TOPIC, {"status": True}) == ("bad_type:status", "$.status")
    assert accepted(impl, STATUS_TOPIC, {}).data == {}


def test_relay_telemetry_event_is_required(impl: _fast.Implementation) -> None:
    assert refused(impl, RELAY_DATA_TOPIC, {"uuid": DEVICE, "event": 1}) == (
        "bad_type:event", "$.event",
    )


def test_other_kinds_have_no_extra_rules(impl: _fast.Implementation) -> None:
    message = accepted(impl, "autocore/devices/x1/relays/heartbeat", {"anything": [1, {"b": None}]})
    assert message.data == {"anything": [1, {"b": None}]}
    assert message.rows == []


def test_rejected_topic_is_refused_not_raised(impl: _fast.Implementation) -> None:
    result = check(impl, "autocore/devices/+/status", b"{}")
    assert (result.reason, result.path) == ("bad_topic", "$")


# -- rules 11-12: data and rows ---------------------------------------------------------


def test_telemetry_builds_no_data(impl: _fast.Implementation) -> None:
    assert accepted(impl, TELEMETRY_TOPIC, telemetry()).data is None


def test_booleans_count_as_numbers(impl: _fast.Implementation) -> None:
    message = accepted(
        impl, TELEMETRY_TOPIC,
        telemetry(analog_sensors={"door": True, "hood": False}, gps={"satellites": True}),
    )
    assert message.rows == [
        ("analog_sensor", "analog_door", "1.0", None),
        ("analog_sensor", "analog_hood", "0.0", None),
        ("gps", "gps_satellites", "1.0", "count"),
    ]


def test_non_numeric_sensor_values_are_skipped(impl: _fast.Implementation) -> None:
    message = accepted(
        impl, TELEMETRY_TOPIC,
        telemetry(
            analog_sensors={"ok": 1, "text": "12", "none": None, "list": [1], "obj": {}},
            system_status={"uptime": "long", "memory_usage": 50, "unknown": "x"},
            gps={"latitude": None, "accuracy": "x", "fix_type": "3d"},
            can_data={"signals": {"A": {"value": "1"}, "B": 5, "C": {"unit": "V"}}},
        ),
    )
    assert message.rows == [
        ("analog_sensor", "analog_ok", "1.0", None),
        ("system_status", "memory_used", "50.0", "%"),
    ]
    assert message.skipped == 4 + 1 + 1 + 3


def test_sensor_name_limits(impl: _fast.Implementation) -> None:
    long_name = "N" * 64
    message = accepted(
        impl, TELEMETRY_TOPIC,
        telemetry(analog_sensors={"": 1, long_name: 2, long_name + "X": 3, "Ünïcode_ÄB": 4}),
    )
    assert message.rows == [
        ("analog_sensor", "analog_" + long_name.lower(), "2.0", None),
        ("analog_sensor", "analog_ünïcode_äb", "4.0", None),
    ]
    assert message.skipped == 2


def test_sensor_names_with_control_characters_are_skipped(impl: _fast.Implementation) -> None:
    names = {"x\u0000y": 1, "line\nbreak": 2, "tab\there": 3, "del\u007f": 4, "fine name": 5}
    message = accepted(impl, TELEMETRY_TOPIC, telemetry(
        analog_sensors=names, can_data={"signals": {"R\rPM": {"value": 1}}}))
    assert message.rows == [("analog_sensor", "analog_fine name", "5.0", None)]
    assert message.skipped == 5


def test_float_text_is_python_repr(impl: _fast.Implementation) -> None:
    values = [
        0.1, 1e16, 1e-7, 123456789012345678, -0.0, 2**63, 2**64 - 1, 5e-324, 0.30000000000000004,
    ]
    message = accepted(
        impl, TELEMETRY_TOPIC,
        telemetry(analog_sensors={"v%d" % n: v for n, v in enumerate(values)}),
    )
    assert [row[2] for row in message.rows] == [str(float(v)) for v in values]


def test_sections_that_are_not_objects_are_ignored(impl: _fast.Implementation) -> None:
    message = accepted(
        impl, TELEMETRY_TOPIC,
        telemetry(analog_sensors=[1], system_status=5, gps=None, can_data={"signals": [1]}),
    )
    assert (message.rows, message.skipped) == ([], 0)


def test_can_unit_is_optional(impl: _fast.Implementation) -> None:
    message = accepted(
        impl, TELEMETRY_TOPIC,
        telemetry(can_data={"signals": {"Speed": {"value": 88, "unit": 1, "can_id": 5}}}),
    )
    assert message.rows == [("can_bus", "can_speed", "88.0", None)]


@pytest.mark.parametrize(
    ("event", "rows", "skipped"),
    [
        ({"event": "relay_change", "channel": 4, "state": True},
         [("relay", "relay_4", "1", None)], 0),
        ({"event": "relay_change", "channel": 4, "state": 1}, [], 1),
        ({"event": "relay_change", "channel": 17, "state": True}, [], 1),
        ({"event": "relay_change", "channel": True, "state": True}, [], 1),
        ({"event": "safety_shutoff", "channel": 16}, [("relay", "relay_16", "0", None)], 0),
        ({"event": "safety_shutoff", "channel": "1"}, [], 1),
        ({"event": "heartbeat", "channel": 1}, [], 0),
    ],
)
def test_relay_events(impl: _fast.Implementation, event: dict, rows: list, skipped: int) -> None:
    message = accepted(impl, RELAY_DATA_TOPIC, {"uuid": DEVICE, **event})
    assert (message.rows, message.skipped) == (rows, skipped)


def test_relay_event_in_device_telemetry(impl: _fast.Implementation) -> None:
    message = accepted(
        impl, TELEMETRY_TOPIC,
        telemetry(analog_sensors={"a": 1}, event="safety_shutoff", channel=2),
    )
    assert message.rows == [
        ("analog_sensor", "analog_a", "1.0", None), ("relay", "relay_2", "0", None),
    ]


def test_relay_state_channels_and_legacy_list(impl: _fast.Implementation) -> None:
    topic = f"autocore/devices/{DEVICE}/relays/state"
    payload = {
        "channels": {"3": True, "1": False, "01": True, "17": True, "2": 1},
        "relays": [{"relay_id": 5, "state": True}, {"relay_id": 0, "state": True}, 7,
                   {"relay_id": 6}],
    }
    message = accepted(impl, topic, payload)
    assert message.rows == [
        ("relay", "relay_3", "1", None), ("relay", "relay_1", "0", None),
        ("relay", "relay_5", "1", None),
    ]
    assert message.skipped == 3 + 3
    assert message.data == payload


def test_rows_only_for_telemetry_kinds(impl: _fast.Implementation) -> None:
    message = accepted(impl, STATUS_TOPIC, {"analog_sensors": {"a": 1}, "channels": {"1": True}})
    assert (message.rows, message.skipped) == ([], 0)


# -- API ----------------------------------------------------------------------------------


def test_validator_defaults_and_read_only_limit(impl: _fast.Implementation) -> None:
    validator = impl.Validator()
    assert validator.max_payload == 65536
    assert impl.Validator(10).max_payload == 10
    with pytest.raises(AttributeError):
        validator.max_payload = 5


@pytest.mark.parametrize("limit", [-1, 1.5, "10", True, None])
def test_validator_refuses_a_bad_limit(impl: _fast.Implementation, limit: Any) -> None:
    with pytest.raises(ConfigError):
        impl.Validator(limit)


def test_validator_is_reusable(impl: _fast.Implementation) -> None:
    validator = impl.Validator()
    topic = impl.parse_topic(TELEMETRY_TOPIC)
    big = fixture_bytes("telemetry_analog_system.json")
    first = validator.validate(topic, big).as_tuple()
    validator.validate(topic, b"[" * 20)
    validator.validate(topic, b'{"uuid":"esp32-sensor-001","x":"' + b"y" * 5000 + b'"}')
    assert validator.validate(topic, big).as_tuple() == first


def test_records_are_read_only(impl: _fast.Implementation) -> None:
    message = accepted(impl, STATUS_TOPIC, {})
    reject = check(impl, STATUS_TOPIC, b"[]")
    for record, name in ((message, "rows"), (message, "kind"), (reject, "reason")):
        with pytest.raises(AttributeError):
            setattr(record, name, "x")


def test_records_compare_and_print(impl: _fast.Implementation) -> None:
    message = impl.Message("status", DEVICE, "", None, None, False, [], {}, 0)
    assert message == accepted(impl, STATUS_TOPIC, {})
    assert message != impl.Message("status", DEVICE, "", None, None, False, [], {}, 1)
    assert repr(message).startswith("Message(kind='status', uuid='esp32-relay-001'")
    reject = impl.Reject("status", DEVICE, "not_object", "$")
    assert reject == check(impl, STATUS_TOPIC, b"[]")
    assert reject != message
    assert hash(reject) == hash(impl.Reject("status", DEVICE, "not_object", "$"))
    assert repr(reject) == (
        "Reject(kind='status', uuid='esp32-relay-001', reason='not_object', path='$')"
    )


def test_records_of_both_builds_compare_equal(impl: _fast.Implementation) -> None:
    python = _fast.load(_fast.PYTHON)
    args = ("status", DEVICE, "", None, None, False, [], {}, 0)
    assert impl.Message(*args) == python.Message(*args)
    assert impl.Reject("a", "b", "c", "$") == python.Reject("a", "b", "c", "$")


def test_compiled_build_is_used_when_expected() -> None:
    """Fail, rather than quietly test the pure twin twice, when a compiled build is promised."""
    if os.environ.get("AUTOCORE_EXPECT_EXTENSIONS") != "1":
        pytest.skip("AUTOCORE_EXPECT_EXTENSIONS is not set")
    _fast.load(_fast.CYTHON)
    assert _fast.IMPLEMENTATIONS["envelope"] == _fast.CYTHON


# -- column limits of telemetry_data ------------------------------------------------------


@pytest.mark.parametrize(("unit", "kept"), [
    ("u" * 20, True), ("u" * 21, False), ("é" * 20, True), ("k\u0000m/h", False), ("km\nh", False), ("", True),
])
def test_a_unit_past_varchar_20_or_with_a_control_skips_its_signal(
        impl: _fast.Implementation, unit: str, kept: bool) -> None:
    """PostgreSQL refuses both (``unit`` is VARCHAR(20), NUL is no text); truncating would change data."""
    message = accepted(impl, TELEMETRY_TOPIC, telemetry(
        can_data={"signals": {"rpm": {"value": 1}, "speed": {"value": 2, "unit": unit}}}))
    assert [row[1] for row in message.rows] == (["can_rpm", "can_speed"] if kept else ["can_rpm"])
    assert message.skipped == (0 if kept else 1)
    if kept:
        assert message.rows[1][3] == unit


@pytest.mark.parametrize(("section", "prefix"), [("can_data", "can_"), ("analog_sensors", "analog_")])
def test_a_data_key_that_lower_case_lengthens_past_varchar_100_skips_its_signal(
        impl: _fast.Implementation, section: str, prefix: str) -> None:
    """'İ' lower-cases to two code points: a 64-character name can make a 130-character key."""
    fits = (100 - len(prefix)) // 2  # names whose key is at most 100 characters
    names = ["\u0130" * fits, "\u0130" * (fits + 1)]
    if section == "can_data":
        payload = telemetry(can_data={"signals": {name: {"value": 1} for name in names}})
    else:
        payload = telemetry(analog_sensors={name: 1 for name in names})
    message = accepted(impl, TELEMETRY_TOPIC, payload)
    assert [row[1] for row in message.rows] == [prefix + names[0].lower()]
    assert len(message.rows[0][1]) in (99, 100)
    assert message.skipped == 1
