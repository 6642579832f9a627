"""The compiled and the pure envelope validator agree on any topic and any bytes.

These tests drive both builds with the same input instead of taking the ``impl``
fixture: the pure twin is the specification and the compiled one must return
the very same record (``as_tuple()``), reject reason and path included.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("autocore._fast._envelope")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from autocore import _fast  # noqa: E402
from tests.equivalence import ENVELOPE_TOPICS, typed  # noqa: E402

if _fast.extensions_disabled():
    pytest.skip("AUTOCORE_NO_EXTENSIONS is set: compiled build not in use", allow_module_level=True)

pytestmark = pytest.mark.cython

FIXTURES = Path(__file__).parent / "data" / "fixtures"
FIXTURE_PAYLOADS = {p.name: p.read_bytes() for p in sorted(FIXTURES.glob("*.json"))}

COMPILED = _fast.load(_fast.CYTHON)
PURE = _fast.load(_fast.PYTHON)
COMPILED_VALIDATOR = COMPILED.Validator()
PURE_VALIDATOR = PURE.Validator()

TOPICS = ENVELOPE_TOPICS
UUIDS = ("esp32-sensor-001", "esp32-relay-001", "", ".", "bad/uuid", "x" * 65, "ünï")
#: Topics whose payloads yield rows; the device is the first uuid of UUIDS.
ROW_TOPICS = (
    "autocore/devices/esp32-sensor-001/telemetry",
    "autocore/telemetry/relays/data",
    "autocore/devices/esp32-sensor-001/relays/state",
)

EXAMPLES = settings(
    max_examples=400, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def agree(topic: str, payload: bytes) -> None:
    """Validate with both builds and require identical records."""
    compiled = COMPILED_VALIDATOR.validate(COMPILED.parse_topic(topic), payload)
    pure = PURE_VALIDATOR.validate(PURE.parse_topic(topic), payload)
    assert type(compiled).__name__ == type(pure).__name__, (compiled, pure)
    assert compiled.as_tuple() == pure.as_tuple()
    if type(pure).__name__ == "Message":
        assert typed(compiled.data) == typed(pure.data)


# -- JSON text with duplicate keys: objects are lists of (key, value) pairs ---------------


class Obj(list):
    """An object as ordered pairs, so generated documents can repeat keys."""


def dump(value: Any) -> str:
    if isinstance(value, Obj):
        return "{" + ",".join(json.dumps(k) + ":" + dump(v) for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


numbers = st.one_of(
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)
junk = st.one_of(
    st.none(), st.text(max_size=5), st.lists(st.integers(-(2**63), 2**64 - 1), max_size=2),
)
sensor_values = st.one_of(numbers, numbers, junk)
names = st.one_of(
    st.sampled_from(["RPM", "TPS", "fuel_level", "a", "A", "", "Ünï", "N" * 64, "N" * 65]),
    st.text(max_size=70),
)


def objects(keys: Any, values: Any, max_size: int = 6) -> Any:
    """Objects with repeated keys now and then."""
    return st.lists(st.tuples(keys, values), max_size=max_size).map(Obj)


signal = st.one_of(
    objects(
        st.sampled_from(["value", "unit", "can_id"]), st.one_of(sensor_values, st.text(max_size=4)),
    ),
    junk,
)
fixed_keys = st.sampled_from([
    "cpu_temperature", "memory_usage", "uptime", "wifi_signal", "battery_voltage", "latitude",
    "longitude", "altitude", "speed", "heading", "satellites", "accuracy", "other",
])
channels = st.one_of(st.integers(-1, 18), st.sampled_from(["1", "all", True, None, 2.0]))
relay_items = st.one_of(
    objects(st.sampled_from(["relay_id", "state"]), st.one_of(channels, st.booleans())), junk,
)
sections = st.fixed_dictionaries(
    {},
    optional={
        "protocol_version": st.sampled_from(["2.2.0", "2.1.0", "1.0.0", "2", "", 2.2]),
        # Mostly the right device, so that most examples get as far as the rows.
        "uuid": st.one_of(
            st.just(UUIDS[0]), st.just(UUIDS[0]), st.sampled_from(UUIDS), st.integers(),
        ),
        "timestamp": st.sampled_from([
            "2025-08-12T20:53:17Z", "2025-08-12T20:53:17.469804Z", "2025-08-12T17:53:17",
            "2025-08-12T20:53:17+03:00", "2025-08-12T20:53:17Z", "2025-13-12T20:53:17", 5,
        ]),
        "can_data": st.one_of(objects(st.just("signals"), objects(names, signal)), junk),
        "analog_sensors": st.one_of(objects(names, sensor_values, max_size=25), junk),
        "system_status": st.one_of(objects(fixed_keys, sensor_values), junk),
        "gps": st.one_of(objects(fixed_keys, sensor_values), junk),
        "event": st.sampled_from(["relay_change", "safety_shutoff", "other", 1]),
        "channel": channels,
        "state": st.one_of(st.booleans(), st.integers(0, 1)),
        "channels": objects(st.sampled_from(["1", "2", "16", "17", "01", "x"]), st.booleans(), 20),
        "relays": st.lists(relay_items, max_size=4),
        "command": st.sampled_from(["on", "off", "toggle", "ON", 1]),
        "status": st.sampled_from(["online", 1]),
    },
)


@st.composite
def envelopes(draw: Any) -> str:
    """A telemetry-like envelope, sections in random order, keys sometimes repeated."""
    pairs = list(draw(sections).items())
    pairs = draw(st.permutations(pairs)) if pairs else pairs
    if pairs and draw(st.booleans()):
        pairs.append(draw(st.sampled_from(pairs)))
    return dump(Obj(pairs))


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=8)),
    lambda children: st.one_of(
        st.lists(children, max_size=4), objects(st.text(max_size=6), children, max_size=4),
    ),
    max_leaves=20,
)


# -- the properties ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FIXTURE_PAYLOADS))
@pytest.mark.parametrize("topic", TOPICS)
def test_agree_on_every_fixture(name: str, topic: str) -> None:
    agree(topic, FIXTURE_PAYLOADS[name])


@EXAMPLES
@given(topic=st.sampled_from(ROW_TOPICS + TOPICS[3:]), text=envelopes())
def test_agree_on_generated_telemetry(topic: str, text: str) -> None:
    agree(topic, text.encode())


@EXAMPLES
@given(
    topic=st.sampled_from(TOPICS),
    name=st.sampled_from(sorted(FIXTURE_PAYLOADS)),
    edits=st.lists(
        st.tuples(st.sampled_from(["flip", "cut", "insert", "delete"]), st.integers(0, 10**4),
                  st.binary(min_size=1, max_size=3)),
        min_size=1, max_size=4,
    ),
)
def test_agree_on_mutated_fixtures(topic: str, name: str, edits: list) -> None:
    payload = bytearray(FIXTURE_PAYLOADS[name])
    for action, where, data in edits:
        where %= len(payload) + 1
        if action == "flip" and where < len(payload):
            payload[where] ^= data[0] or 1
        elif action == "cut":
            del payload[where:]
        elif action == "insert":
            payload[where:where] = data
        else:
            del payload[where:where + len(data)]
    agree(topic, bytes(payload))


@EXAMPLES
@given(topic=st.sampled_from(TOPICS), payload=st.binary(max_size=200))
def test_agree_on_random_bytes(topic: str, payload: bytes) -> None:
    agree(topic, payload)


@EXAMPLES
@given(
    topic=st.sampled_from(TOPICS),
    value=json_values,
    wrap=st.booleans(),
    tokens=st.lists(st.sampled_from([
        "[", "]", "{", "}", '"', "\\", ",", ":", "1e400", "-0", "NaN", "\\ud800", "\ufeff", " ",
    ]), max_size=6),
)
def test_agree_on_random_json(topic: str, value: Any, wrap: bool, tokens: list) -> None:
    text = dump(Obj([("uuid", "esp32-relay-001"), ("v", value)]) if wrap else value)
    agree(topic, text.encode())
    agree(topic, (text + "".join(tokens)).encode())
    agree(topic, ("".join(tokens) + text).encode())


@EXAMPLES
@given(depth=st.integers(28, 40), filler=st.sampled_from(['"[', '"\\"[', "[", '{"a":']))
def test_agree_on_deep_nesting(depth: int, filler: str) -> None:
    agree(TOPICS[0], (filler + "[" * depth + "]" * depth).encode())


# -- fields at their column's limit and one past it, case mappings, huge channel maps ----------

#: Characters whose lower- or upper-case form has another length ('İ' lowers to two
#: code points, 'ß' uppers to two, 'ﬃ' to three): data keys are lower-cased names.
CASE_CHANGERS = "İßﬃŉǰΐΰﬀẞǅΣσςıKÅ"


@st.composite
def names_near_limits(draw: Any) -> str:
    """Sensor names around 64 code points, and names whose lower-cased key is around 100."""
    size = draw(st.sampled_from([1, 47, 48, 49, 50, 63, 64, 65]))
    return draw(st.text(alphabet=CASE_CHANGERS + "aZ_9", min_size=size, max_size=size))


units_near_limits = st.integers(18, 22).flatmap(
    lambda n: st.text(alphabet=CASE_CHANGERS + "km/h°%\x00\x7f", min_size=n, max_size=n))


@EXAMPLES
@given(
    topic=st.sampled_from(ROW_TOPICS),
    signals=st.lists(st.tuples(names_near_limits(), st.one_of(numbers, junk), st.one_of(units_near_limits, junk)),
                     max_size=6),
    sensors=st.lists(st.tuples(names_near_limits(), numbers), max_size=6),
)
def test_agree_on_names_and_units_at_their_limits(topic: str, signals: list, sensors: list) -> None:
    text = dump(Obj([
        ("protocol_version", "2.2.0"), ("uuid", UUIDS[0]),
        ("can_data", Obj([("signals", Obj([(name, Obj([("value", value), ("unit", unit)]))
                                           for name, value, unit in signals]))])),
        ("analog_sensors", Obj(sensors)),
    ]))
    agree(topic, text.encode())


@EXAMPLES
@given(
    keys=st.one_of(
        st.integers(0, 5000).map(lambda n: [str(k) for k in range(n)]),  # huge maps, mostly past 16
        st.lists(st.sampled_from(["1", "16", "17", "01", "²", "٣", "１", "-1", " 1", "1e1", "all", ""]),
                 max_size=40),
    ),
    state=st.one_of(st.booleans(), st.integers(0, 1), st.none()),
)
def test_agree_on_huge_and_odd_channel_maps(keys: list, state: Any) -> None:
    text = dump(Obj([("protocol_version", "2.2.0"), ("uuid", "esp32-relay-001"),
                     ("channels", Obj([(key, state) for key in keys]))]))
    agree("autocore/devices/esp32-relay-001/relays/state", text.encode())


@EXAMPLES
@given(
    uuid_size=st.sampled_from([1, 35, 36, 37, 63, 64, 65]),
    device_type=st.integers(0, 60).flatmap(lambda n: st.text(alphabet=CASE_CHANGERS + "esp32_\x00", min_size=n,
                                                              max_size=n)),
    firmware=st.integers(0, 24).flatmap(lambda n: st.text(min_size=n, max_size=n)),
)
def test_agree_on_announces_at_their_limits(uuid_size: int, device_type: str, firmware: str) -> None:
    uuid = ("esp32-" + "x" * 64)[:uuid_size]
    text = dump(Obj([("protocol_version", "2.2.0"), ("uuid", uuid), ("device_type", device_type),
                     ("firmware_version", firmware), ("capabilities", ["relay"] * 3)]))
    agree(f"autocore/devices/{uuid}/announce", text.encode())


FUZZ_SEEDS = Path(__file__).parent / "fuzz" / "corpus" / "envelope"


@pytest.mark.parametrize("seed", sorted(p.name for p in FUZZ_SEEDS.iterdir()))
def test_agree_on_every_fuzz_seed(seed: str) -> None:
    """The fuzz target's seeds (first byte: the topic) give both builds the same record."""
    data = (FUZZ_SEEDS / seed).read_bytes()
    agree(TOPICS[data[0] % len(TOPICS)], data[1:])
