"""Fuzz the compiled topic parser against its pure twin (atheris / libFuzzer).

Each input becomes one or more strings: UTF-8 with lone surrogates kept,
Latin-1, atheris' own Unicode (any width, surrogates included), and topics
joined from real level names, so the fuzzer reaches deep shapes quickly. Both
builds must return equal records and never raise.

    python tests/fuzz/fuzz_topics.py -max_total_time=60
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["autocore"]):
    from autocore._fast import _topics_py

from autocore._fast import _topics

#: Level names of PROTOCOL.md and values on the edges of the rules.
LEVELS = (
    "autocore", "devices", "relays", "state", "status", "announce", "telemetry", "response",
    "command", "commands", "set", "heartbeat", "macros", "discovery", "gateway", "system",
    "modes", "errors", "data", "all", "esp32-relay-001", "AA:BB:CC:DD:EE:FF", "", ".", "..",
    "+", "#", "é", "\x00", "\ud800", "u" * 64, "u" * 65,
)
#: Most levels a joined topic gets; deeper ones are all unknown_kind anyway.
MAX_JOINED_LEVELS = 8


def _joined_levels(provider: atheris.FuzzedDataProvider) -> str:
    count = provider.ConsumeIntInRange(0, MAX_JOINED_LEVELS)
    levels = []
    for _ in range(count):
        if provider.ConsumeBool():
            levels.append(LEVELS[provider.ConsumeIntInRange(0, len(LEVELS) - 1)])
        else:
            levels.append(provider.ConsumeUnicode(provider.ConsumeIntInRange(0, 70)))
    return "/".join(levels)


def _topics_from(data: bytes) -> list[str]:
    provider = atheris.FuzzedDataProvider(data)
    return [
        data.decode("utf-8", "surrogateescape"),  # invalid bytes become lone surrogates
        data.decode("latin-1"),
        _joined_levels(provider),
        provider.ConsumeUnicode(provider.remaining_bytes()),
    ]


def check(topic: str) -> None:
    """Both builds give the same record; neither raises for a str."""
    fast = _topics.parse_topic(topic)
    slow = _topics_py.parse_topic(topic)
    if fast.as_tuple() != slow.as_tuple() or fast != slow or hash(fast) != hash(slow):
        raise AssertionError(f"builds disagree on {topic!r}: {fast!r} != {slow!r}")


def test_one_input(data: bytes) -> None:
    for topic in _topics_from(data):
        check(topic)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
