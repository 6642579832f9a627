"""Fuzz the compiled ring buffer against its pure twin (atheris / libFuzzer).

The input picks a capacity and a policy, then a sequence of operations that
run on a compiled and a pure ring side by side: push, offer, drain (with odd
counts too), and items whose ``__del__`` pushes into their own ring when it is
evicted or drained. After every step both rings must show the same result,
the same error and the same counters.

    python tests/fuzz/fuzz_ring.py -max_total_time=60
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["autocore"]):
    from autocore._fast import _ring_py

from autocore._fast import _ring

#: Largest ring tried; small rings wrap and overflow often.
MAX_CAPACITY = 17
#: Most operations taken from one input.
MAX_OPERATIONS = 400
#: drain() counts tried besides small integers: odd types and huge values.
ODD_COUNTS = (-1, -(2**70), 2**70, 2**63, True, 2.0, "3", None)


class Echo:
    """An item that pushes a marker into its ring when it is released."""

    def __init__(self, ring: object, tag: int) -> None:
        self.ring = ring
        self.tag = tag

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Echo) and other.tag == self.tag

    def __hash__(self) -> int:
        return hash(self.tag)

    def __repr__(self) -> str:
        return f"Echo({self.tag})"

    def __del__(self) -> None:
        self.ring.push(("echo", self.tag))


def _outcome(call, *args):
    try:
        return ("ok", call(*args))
    except Exception as exc:  # compared, not swallowed
        return ("error", type(exc).__name__, str(exc))


def _observe(ring) -> tuple:
    return (len(ring), ring.full, ring.stats(), repr(ring), ring.capacity, ring.overflow)


def _drain_count(provider: atheris.FuzzedDataProvider) -> object:
    if provider.ConsumeIntInRange(0, 9) == 0:
        return ODD_COUNTS[provider.ConsumeIntInRange(0, len(ODD_COUNTS) - 1)]
    return provider.ConsumeIntInRange(0, MAX_CAPACITY + 2)


def _step(provider: atheris.FuzzedDataProvider, fast, slow, tag: int) -> None:
    operation = provider.ConsumeIntInRange(0, 4)
    if operation <= 1:  # push / offer a plain item
        name = "push" if operation == 0 else "offer"
        results = [_outcome(getattr(ring, name), tag) for ring in (fast, slow)]
    elif operation == 2:  # push an item that echoes when released
        results = [_outcome(ring.push, Echo(ring, tag)) for ring in (fast, slow)]
    else:
        count = _drain_count(provider)
        results = [_outcome(ring.drain, count) for ring in (fast, slow)]
        # The drained lists die here, fast first: each Echo in them pushes now.
    if results[0] != results[1]:
        raise AssertionError(f"step {tag}: compiled {results[0]!r} != pure {results[1]!r}")
    del results
    if _observe(fast) != _observe(slow):
        raise AssertionError(f"step {tag}: compiled {_observe(fast)} != pure {_observe(slow)}")


def test_one_input(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    capacity = provider.ConsumeIntInRange(1, MAX_CAPACITY)
    overflow = _ring_py.OVERFLOW_POLICIES[provider.ConsumeIntInRange(0, 1)]
    fast, slow = _ring.Ring(capacity, overflow), _ring_py.Ring(capacity, overflow)
    for tag in range(MAX_OPERATIONS):
        if not provider.remaining_bytes():
            break
        _step(provider, fast, slow, tag)
    final = [ring.drain(MAX_CAPACITY) for ring in (fast, slow)]
    if final[0] != final[1]:
        raise AssertionError(f"final contents differ: {final[0]!r} != {final[1]!r}")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
