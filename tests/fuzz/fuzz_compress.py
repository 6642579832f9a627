"""Fuzz the compiled compressor against its pure twin (atheris / libFuzzer).

The input picks a mode, a deviation, a heartbeat and a key cap, then a
sequence of operations that run on a compiled and a pure compressor side by
side: offers of any value (finite, NaN, infinite, 0/1, text, huge integers) at
times that mostly move forward but also stand still, step back or are not
finite; expiry at any time; hand-overs of held readings; flushes. After every
step both must show the same result, the same error and the same counters.

    python tests/fuzz/fuzz_compress.py -max_total_time=60
"""

from __future__ import annotations

import math
import sys

import atheris

with atheris.instrument_imports(include=["autocore"]):
    from autocore._fast import _compress_py

from autocore._fast import _compress

#: Most operations taken from one input.
MAX_OPERATIONS = 400
SOURCES = ("dev-a", "dev-b", "dev-c")
NAMES = ("rpm", "temp", "relay_1", "gps_lat")
#: Values other than plain floats drawn from the input.
ODD_VALUES = (math.nan, -math.nan, math.inf, -math.inf, 0.0, -0.0, 1.0, 0, 1, True, False, "OPEN",
              None, b"1", 10**400, 2**53 + 1, 5e-324, 1.7976931348623157e308)
#: Times other than the running clock.
ODD_TIMES = (math.nan, math.inf, -math.inf, 0, True, 10**400, "1.0", None)


def _outcome(call, *args):
    try:
        return ("ok", call(*args))
    except Exception as exc:  # compared, not swallowed
        return ("error", type(exc).__name__, str(exc))


def _observe(comp) -> str:
    # repr tells -0.0 from 0.0 and shows every bit of a float.
    return repr((comp.stats(), len(comp), repr(comp)))


def _value(provider: atheris.FuzzedDataProvider) -> object:
    choice = provider.ConsumeIntInRange(0, 3)
    if choice == 0:
        return ODD_VALUES[provider.ConsumeIntInRange(0, len(ODD_VALUES) - 1)]
    if choice == 1:
        return provider.ConsumeRegularFloat()
    return provider.ConsumeIntInRange(-4000, 4000) / 16.0  # small steps: doors open and close


def _time(provider: atheris.FuzzedDataProvider, clock: float) -> tuple[object, float]:
    choice = provider.ConsumeIntInRange(0, 15)
    if choice == 0:
        return ODD_TIMES[provider.ConsumeIntInRange(0, len(ODD_TIMES) - 1)], clock
    if choice == 1:
        clock += provider.ConsumeRegularFloat()
        return clock, clock
    clock += provider.ConsumeIntInRange(-2, 40) / 8.0
    return clock, clock


def test_one_input(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    mode = _compress_py.MODES[provider.ConsumeIntInRange(0, 1)]
    config = {
        "deviation": provider.ConsumeIntInRange(0, 64) / 8.0,
        "heartbeat_s": provider.ConsumeIntInRange(1, 400) / 4.0,
        "max_keys": provider.ConsumeIntInRange(1, 8),
        "deviations": {"rpm": provider.ConsumeIntInRange(0, 64) / 2.0},
    }
    fast, slow = _compress.Compressor(mode, **config), _compress_py.Compressor(mode, **config)
    clock = 0.0
    for tag in range(MAX_OPERATIONS):
        if not provider.remaining_bytes():
            break
        operation = provider.ConsumeIntInRange(0, 15)
        if operation <= 11:
            source = SOURCES[provider.ConsumeIntInRange(0, len(SOURCES) - 1)]
            name = NAMES[provider.ConsumeIntInRange(0, len(NAMES) - 1)]
            t, clock = _time(provider, clock)
            value = _value(provider)
            results = [_outcome(c.offer, source, name, t, value, tag) for c in (fast, slow)]
        elif operation <= 13:
            now = clock + provider.ConsumeIntInRange(0, 800) / 4.0
            results = [_outcome(c.expire, now) for c in (fast, slow)]
        elif operation == 14:
            results = [_outcome(c.take_held) for c in (fast, slow)]
        else:
            results = [_outcome(c.flush) for c in (fast, slow)]
        if repr(results[0]) != repr(results[1]):
            raise AssertionError(f"step {tag}: compiled {results[0]!r} != pure {results[1]!r}")
        if _observe(fast) != _observe(slow):
            raise AssertionError(f"step {tag}: compiled {_observe(fast)} != pure {_observe(slow)}")
    final = [repr((c.flush(), c.take_held(), c.stats())) for c in (fast, slow)]
    if final[0] != final[1]:
        raise AssertionError(f"final state differs: {final[0]} != {final[1]}")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
