"""Topic parser: every topic shape and reject reason of PROTOCOL.md, once per build (``impl``)."""

from __future__ import annotations

import pickle
import random

import pytest
from paho.mqtt.client import topic_matches_sub

from autocore._fast import _names, _topics_py

DEVICE = "esp32-relay-001"
GATEWAY = "autocore-gateway"
MAX_LEVEL_LENGTH = _topics_py.MAX_LEVEL_LENGTH
MAX_TOPIC_LENGTH = _topics_py.MAX_TOPIC_LENGTH

#: (topic, (kind, uuid, sub, reason)) for every shape the gateway sees or sends.
ACCEPTED = [
    # Subscriptions S1-S11 (PROTOCOL.md §2).
    (f"autocore/devices/{DEVICE}/announce", ("announce", DEVICE, "", "")),
    (f"autocore/devices/{GATEWAY}/status", ("status", GATEWAY, "", "")),
    ("autocore/devices/esp32-sensor-001/telemetry", ("telemetry", "esp32-sensor-001", "", "")),
    (f"autocore/devices/{DEVICE}/response", ("response", DEVICE, "", "")),
    (f"autocore/devices/{DEVICE}/relays/state", ("relay_state", DEVICE, "", "")),
    ("autocore/discovery/announce", ("discovery", "", "announce", "")),
    ("autocore/gateway/commands/restart", ("gateway_command", "", "restart", "")),
    (f"autocore/devices/{DEVICE}/relays/command", ("relay_command", DEVICE, "", "")),
    ("autocore/devices/all/relays/command", ("relay_command", "all", "", "")),
    ("autocore/system/broadcast", ("system", "", "broadcast", "")),
    (f"autocore/devices/{DEVICE}/macros/status", ("macro_status", DEVICE, "", "")),
    ("autocore/modes/parking", ("mode", "", "parking", "")),
    # Relay firmware telemetry (D3), errors (§7), commands (§4, §5).
    ("autocore/telemetry/relays/data", ("relay_telemetry", "", "", "")),
    (f"autocore/errors/{DEVICE}/payload", ("error", DEVICE, "payload", "")),
    (f"autocore/errors/{GATEWAY}/protocol_mismatch", ("error", GATEWAY, "protocol_mismatch", "")),
    (f"autocore/devices/{DEVICE}/commands/reboot", ("device_command", DEVICE, "reboot", "")),
    ("autocore/commands/all/ota", ("device_command", "all", "ota", "")),
    (f"autocore/devices/{DEVICE}/command", ("command", DEVICE, "", "")),
    (f"autocore/devices/{DEVICE}/relays/set", ("relay_set", DEVICE, "", "")),
    (f"autocore/devices/{DEVICE}/relays/heartbeat", ("relay_heartbeat", DEVICE, "", "")),
    # Every character a uuid or free level may use.
    ("autocore/devices/AA:BB:CC:DD:EE:FF/status", ("status", "AA:BB:CC:DD:EE:FF", "", "")),
    ("autocore/devices/board_1.2-x/status", ("status", "board_1.2-x", "", "")),
    ("autocore/devices/a/status", ("status", "a", "", "")),
    ("autocore/modes/...", ("mode", "", "...", "")),
    ("autocore/system/.hidden", ("system", "", ".hidden", "")),
    # Longest uuid and free level.
    (f"autocore/devices/{'u' * 64}/status", ("status", "u" * 64, "", "")),
    (f"autocore/errors/{'u' * 64}/{'e' * 64}", ("error", "u" * 64, "e" * 64, "")),
    (f"autocore/gateway/commands/{'c' * 64}", ("gateway_command", "", "c" * 64, "")),
]


def _reject(reason: str) -> tuple[str, str, str, str]:
    return ("invalid", "", "", reason)


#: (topic, reason) for every reject reason, with the edge cases that pick it.
REJECTED = [
    ("autocore/system/" + "a" * (MAX_TOPIC_LENGTH - 15), "topic_too_long"),
    ("x" * 100_000, "topic_too_long"),
    ("autocore/devices/+/status", "wildcard"),
    ("autocore/#", "wildcard"),
    ("autocore/devices/a+b/status", "wildcard"),
    ("#", "wildcard"),
    ("autocore/devices/a\x00b/status", "bad_char"),
    ("\x00", "bad_char"),
    ("autocore/modes/line\nbreak", "bad_char"),
    ("autocore/modes/tab\t", "bad_char"),
    ("autocore/modes/del\x7f", "bad_char"),
    ("autocore/modes/\x1f", "bad_char"),
    ("", "empty_level"),
    ("/", "empty_level"),
    ("autocore/devices//status", "empty_level"),
    ("autocore/modes/", "empty_level"),
    ("/autocore/modes/x", "empty_level"),
    ("autocore//modes/x", "empty_level"),
    ("homeassistant/status", "not_ours"),
    ("AutoCore/modes/x", "not_ours"),
    ("autocore2/modes/x", "not_ours"),
    ("$SYS/broker/uptime", "not_ours"),
    ("autocorè/modes/x", "not_ours"),
    ("autocore", "unknown_kind"),
    ("autocore/devices", "unknown_kind"),
    ("autocore/devices/x", "unknown_kind"),
    ("autocore/devices/x/unknown", "unknown_kind"),
    ("autocore/devices/x/relays/unknown", "unknown_kind"),
    ("autocore/devices/x/macros/run", "unknown_kind"),
    ("autocore/devices/x/status/health", "unknown_kind"),  # display firmware, not subscribed
    ("autocore/devices/x/telemetry/can", "unknown_kind"),
    ("autocore/devices/x/commands/reboot/now", "unknown_kind"),
    ("autocore/telemetry/relays/other", "unknown_kind"),
    ("autocore/telemetry/macros/events", "unknown_kind"),
    ("autocore/telemetry/relays/data/x", "unknown_kind"),
    ("autocore/commands/one/reboot", "unknown_kind"),
    ("autocore/gateway/macros/execute", "unknown_kind"),
    ("autocore/macros/m1/status", "unknown_kind"),
    ("autocore/errors/x", "unknown_kind"),
    ("autocore/system/state/save", "unknown_kind"),  # S9 is one level deep
    ("autocore/modes/a/b", "unknown_kind"),
    ("autocore/nope/x", "unknown_kind"),
    ("autocore/dévices/x/status", "unknown_kind"),
    ("autocore/devices/../status", "bad_uuid"),
    ("autocore/devices/./status", "bad_uuid"),
    ("autocore/devices/dev ice/status", "bad_uuid"),
    ("autocore/devices/dév/status", "bad_uuid"),
    ("autocore/devices/a;b/status", "bad_uuid"),
    ("autocore/devices/a\\b/relays/state", "bad_uuid"),
    ("autocore/errors/a'b/payload", "bad_uuid"),
    ("autocore/devices/\ud800/status", "bad_uuid"),  # lone surrogate
    ("autocore/devices/\U0001f600/status", "bad_uuid"),  # outside the BMP
    ("autocore/devices/\x80/status", "bad_uuid"),  # C1 control: not a bad_char
    ("autocore/devices/\u00a0/status", "bad_uuid"),
    (f"autocore/devices/{'u' * 65}/status", "uuid_too_long"),
    (f"autocore/errors/{'u' * 65}/payload", "uuid_too_long"),
    (f"autocore/devices/{'é' * 65}/status", "uuid_too_long"),  # length is checked first
    ("autocore/modes/..", "bad_level"),
    ("autocore/system/a b", "bad_level"),
    ("autocore/errors/x/..", "bad_level"),
    ("autocore/devices/x/commands/re%boot", "bad_level"),
    ("autocore/commands/all/.", "bad_level"),
    ("autocore/discovery/ü", "bad_level"),
    (f"autocore/modes/{'m' * 65}", "level_too_long"),
    (f"autocore/errors/x/{'e' * 65}", "level_too_long"),
    (f"autocore/devices/x/commands/{'c' * 65}", "level_too_long"),
    (f"autocore/commands/all/{'c' * 65}", "level_too_long"),
]

#: Topics where two problems compete; the first check of the pure twin wins.
PRECEDENCE = [
    ("autocore/+/\x00", "wildcard"),  # first offending character
    ("autocore/\x00/+", "bad_char"),
    ("autocore//+", "wildcard"),  # characters before levels
    ("//\x01", "bad_char"),
    ("x//y", "empty_level"),  # empty level before ownership
    ("autocore/devices/../unknown", "unknown_kind"),  # shape before uuid
    (f"autocore/devices/{'u' * 65}/nope", "unknown_kind"),
    ("autocore/devices/../commands/..", "bad_uuid"),  # uuid before sub
    (f"autocore/devices/x/commands/{'c' * 65}", "level_too_long"),
    (f"autocore/errors/{'u' * 65}/..", "uuid_too_long"),
    ("autocore/system/" + "." * (MAX_TOPIC_LENGTH - 16), "level_too_long"),  # 256 characters
]

#: Filters that deliver each kind: S1-S11, D3, plus what devices and consumers subscribe to.
FILTERS = {
    _names.ANNOUNCE: ("autocore/devices/+/announce",),
    _names.STATUS: ("autocore/devices/+/status",),
    _names.TELEMETRY: ("autocore/devices/+/telemetry",),
    _names.RESPONSE: ("autocore/devices/+/response",),
    _names.RELAY_STATE: ("autocore/devices/+/relays/state",),
    _names.DISCOVERY: ("autocore/discovery/+",),
    _names.GATEWAY_COMMAND: ("autocore/gateway/commands/+",),
    _names.RELAY_COMMAND: ("autocore/devices/+/relays/command",),
    _names.SYSTEM: ("autocore/system/+",),
    _names.MACRO_STATUS: ("autocore/devices/+/macros/status",),
    _names.MODE: ("autocore/modes/+",),
    _names.RELAY_TELEMETRY: ("autocore/telemetry/relays/data",),
    _names.ERROR: ("autocore/errors/+/+",),
    _names.DEVICE_COMMAND: ("autocore/devices/+/commands/+", "autocore/commands/all/+"),
    _names.COMMAND: ("autocore/devices/+/command",),
    _names.RELAY_SET: ("autocore/devices/+/relays/set",),
    _names.RELAY_HEARTBEAT: ("autocore/devices/+/relays/heartbeat",),
}

#: Reasons a topic matching some filter may still get: its characters or free levels.
CONTENT_REASONS = {
    "topic_too_long", "wildcard", "bad_char", "empty_level",
    "bad_uuid", "uuid_too_long", "bad_level", "level_too_long",
}


def _matching_kinds(topic: str) -> set[str]:
    return {
        kind for kind, filters in FILTERS.items()
        if any(topic_matches_sub(pattern, topic) for pattern in filters)
    }


def _corpus(size: int, seed: int) -> list[str]:
    """Topics built from real level names, sample uuids and a few troublemakers."""
    fixed = [
        "autocore", "devices", "relays", "state", "status", "announce", "telemetry", "response",
        "command", "commands", "set", "heartbeat", "macros", "discovery", "gateway", "system",
        "modes", "errors", "data", "all",
    ]
    free = [
        DEVICE, GATEWAY, "AA:BB:CC:DD:EE:FF", "x", "u" * 64, "u" * 65, "..", ".", "a b", "é", "", "+",
    ]
    rnd = random.Random(seed)
    topics = []
    for kind_filters in FILTERS.values():
        for pattern in kind_filters:
            for value in free + fixed:
                topics.append(pattern.replace("+", value))
    while len(topics) < size:
        depth = rnd.randint(1, 6)
        levels = ["autocore"] if rnd.random() < 0.9 else []
        levels += [rnd.choice(fixed if rnd.random() < 0.7 else free) for _ in range(depth)]
        topics.append("/".join(levels))
    return topics


@pytest.mark.parametrize(("topic", "expected"), ACCEPTED)
def test_accepts_every_protocol_shape(impl, topic, expected):
    record = impl.parse_topic(topic)
    assert record.as_tuple() == expected
    assert record.ok
    assert (record.kind, record.uuid, record.sub, record.reason) == expected


@pytest.mark.parametrize(("topic", "reason"), REJECTED + PRECEDENCE)
def test_rejects_with_reason(impl, topic, reason):
    record = impl.parse_topic(topic)
    assert record.as_tuple() == _reject(reason)
    assert not record.ok


def test_every_reason_and_kind_is_covered():
    assert {reason for _, reason in REJECTED} == CONTENT_REASONS | {"not_ours", "unknown_kind"}
    assert {expected[0] for _, expected in ACCEPTED} == set(_names.KINDS)


def test_length_limits_are_inclusive(impl):
    longest = "autocore/system/" + "a" * (MAX_TOPIC_LENGTH - 16)
    assert len(longest) == MAX_TOPIC_LENGTH
    assert impl.parse_topic(longest).reason == "level_too_long"
    assert impl.parse_topic(longest + "a").reason == "topic_too_long"
    uuid = "u" * MAX_LEVEL_LENGTH
    assert impl.parse_topic(f"autocore/devices/{uuid}/status").ok
    assert impl.parse_topic(f"autocore/devices/{uuid}u/status").reason == "uuid_too_long"


@pytest.mark.parametrize("topic", [b"autocore/modes/x", None, 42, bytearray(b"x"), ["autocore"]])
def test_non_str_raises_type_error(impl, topic):
    with pytest.raises(TypeError, match="topic must be str"):
        impl.parse_topic(topic)


class _TrickyStr(str):
    """A str whose Python-level methods lie; the parser must read the characters."""

    def __iter__(self):
        return iter("+")

    def __len__(self):
        return 0

    def split(self, *args, **kwargs):
        return ["nope"]

    def __eq__(self, other):
        return False

    __hash__ = str.__hash__


def test_str_subclass_is_parsed_by_value(impl):
    record = impl.parse_topic(_TrickyStr(f"autocore/devices/{DEVICE}/status"))
    assert record.as_tuple() == ("status", DEVICE, "", "")
    assert type(record.uuid) is str


def test_returned_fields_are_exact_str(impl):
    record = impl.parse_topic(f"autocore/devices/{DEVICE}/commands/reboot")
    assert all(type(field) is str for field in record.as_tuple())
    assert record.kind is _names.DEVICE_COMMAND


def test_record_is_read_only(impl):
    record = impl.parse_topic(f"autocore/devices/{DEVICE}/status")
    for name in ("kind", "uuid", "sub", "reason"):
        with pytest.raises(AttributeError):
            setattr(record, name, "x")
        with pytest.raises(AttributeError):
            delattr(record, name)
    with pytest.raises(AttributeError):
        record.extra = 1
    assert record.as_tuple() == ("status", DEVICE, "", "")


def test_record_equality_and_hash_across_builds(impl):
    record = impl.parse_topic(f"autocore/devices/{DEVICE}/relays/state")
    pure = _topics_py.Topic("relay_state", DEVICE, "", "")
    assert record == pure and pure == record
    assert not (record != pure) and not (pure != record)
    assert hash(record) == hash(pure) == hash(pure.as_tuple())
    assert len({record, pure}) == 1
    other = _topics_py.Topic("relay_state", DEVICE, "x", "")
    assert record != other and other != record
    assert record != record.as_tuple()  # a tuple has no ``reason``
    assert record != "relay_state"
    with pytest.raises(TypeError):
        record < pure  # noqa: B015 - no ordering on either build


def test_record_constructor_and_repr(impl):
    built = impl.Topic("mode", sub="night")
    assert built.as_tuple() == ("mode", "", "night", "")
    assert built.ok
    assert built == impl.parse_topic("autocore/modes/night")
    assert repr(built) == "Topic(kind='mode', uuid='', sub='night', reason='')"
    assert repr(built) == repr(_topics_py.Topic("mode", "", "night", ""))
    assert not impl.Topic(kind="invalid", reason="wildcard").ok


def test_record_pickles(impl):
    record = impl.parse_topic(f"autocore/errors/{DEVICE}/payload")
    copy = pickle.loads(pickle.dumps(record))
    assert type(copy) is type(record)
    assert copy == record


def test_parse_is_stateless(impl):
    first = impl.parse_topic("autocore/modes/a/b")
    impl.parse_topic(f"autocore/devices/{DEVICE}/status")
    assert impl.parse_topic("autocore/modes/a/b") == first
    assert first.as_tuple() == _reject("unknown_kind")


def test_accepted_kinds_match_their_paho_filters(impl):
    """Whatever the parser classifies as K is delivered by K's filters, and by no other kind's."""
    seen = set()
    for topic in _corpus(2500, seed=7):
        record = impl.parse_topic(topic)
        kinds = _matching_kinds(topic)
        if record.ok:
            assert kinds == {record.kind}, topic
            seen.add(record.kind)
        elif kinds:  # a subscribed shape is never refused for its shape
            assert record.reason in CONTENT_REASONS, (topic, record)
    assert seen == set(_names.KINDS)


def test_corpus_agrees_with_pure_twin(impl):
    for topic in _corpus(5000, seed=11):
        assert impl.parse_topic(topic).as_tuple() == _topics_py.parse_topic(topic).as_tuple(), topic
