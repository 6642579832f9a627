"""Property tests: the compiled and the pure topic parser give the same record for any string."""

from __future__ import annotations

import pytest

hypothesis = pytest.importorskip("hypothesis")
compiled = pytest.importorskip("autocore._fast._topics")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from autocore._fast import _topics_py as pure  # noqa: E402

SETTINGS = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

#: Level names of PROTOCOL.md, plus values that sit on the edges of the rules.
LEVELS = (
    "autocore", "devices", "relays", "state", "status", "announce", "telemetry", "response",
    "command", "commands", "set", "heartbeat", "macros", "discovery", "gateway", "system",
    "modes", "errors", "data", "all", "esp32-relay-001", "autocore-gateway", "AA:BB:CC:DD:EE:FF",
    "", ".", "..", "...", "+", "#", "a b", "é", "\x00", "\x7f", "\x80", "\ud800", "\U0001f600",
    "u" * 64, "u" * 65,
)
VALID_TOPICS = (
    "autocore/devices/esp32-relay-001/announce",
    "autocore/devices/autocore-gateway/status",
    "autocore/devices/esp32-relay-001/relays/state",
    "autocore/devices/all/relays/command",
    "autocore/devices/esp32-relay-001/macros/status",
    "autocore/devices/esp32-relay-001/commands/reboot",
    "autocore/commands/all/ota",
    "autocore/telemetry/relays/data",
    "autocore/errors/esp32-relay-001/invalid_payload",
    "autocore/gateway/commands/restart",
    "autocore/discovery/announce",
    "autocore/system/broadcast",
    "autocore/modes/parking",
)
#: Characters a mutation inserts: separators, wildcards, controls, and each string width.
MUTATION_CHARS = st.one_of(
    st.sampled_from("/+#.:_-aZ9 \x00\x1f\x7f\x80é€\ud800\U0001f600"),
    st.characters(exclude_categories=()),
)

# Any code point, lone surrogates included (excluded from st.text() by default).
any_text = st.text(st.characters(exclude_categories=()), max_size=300)
level_topics = st.lists(st.sampled_from(LEVELS), min_size=0, max_size=8).map("/".join)


@st.composite
def mutated_topics(draw: st.DrawFn) -> str:
    """A real topic with a few characters inserted, deleted or replaced."""
    topic = draw(st.sampled_from(VALID_TOPICS))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(topic)))
        action = draw(st.sampled_from(("insert", "delete", "replace")))
        char = draw(MUTATION_CHARS)
        if action == "insert":
            topic = topic[:at] + char + topic[at:]
        elif action == "delete":
            topic = topic[:at] + topic[at + 1:]
        else:
            topic = topic[:at] + char + topic[at + 1:]
    return topic


def _assert_same(topic: str) -> None:
    fast, slow = compiled.parse_topic(topic), pure.parse_topic(topic)
    assert fast.as_tuple() == slow.as_tuple()
    assert fast == slow and slow == fast
    assert hash(fast) == hash(slow)
    assert fast.ok == slow.ok


@SETTINGS
@given(any_text)
def test_builds_agree_on_random_text(topic):
    _assert_same(topic)


@SETTINGS
@given(st.text(alphabet="autocre/+#.:-_ \x00é", max_size=40))
def test_builds_agree_on_topic_like_text(topic):
    _assert_same(topic)


@SETTINGS
@given(level_topics)
def test_builds_agree_on_joined_levels(topic):
    _assert_same(topic)


@SETTINGS
@given(mutated_topics())
def test_builds_agree_on_mutated_topics(topic):
    _assert_same(topic)


@SETTINGS
@given(st.one_of(st.binary(), st.integers(), st.none(), st.floats()))
def test_builds_raise_the_same_error_for_non_str(value):
    with pytest.raises(TypeError) as fast:
        compiled.parse_topic(value)
    with pytest.raises(TypeError) as slow:
        pure.parse_topic(value)
    assert str(fast.value) == str(slow.value)
