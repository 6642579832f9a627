"""Property tests of historian compression: the two builds agree, and what is dropped stays within the deviation."""

from __future__ import annotations

import math
from typing import Any

import pytest

pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from autocore import _fast  # noqa: E402
from autocore.compression import DEADBAND, HELD, KEEP, MODES, SWINGING_DOOR  # noqa: E402



def _compiled_build() -> _fast.Implementation | None:
    if _fast.extensions_disabled():
        return None
    try:
        return _fast.load(_fast.CYTHON)
    except ImportError:
        return None


#: The compiled build, or None where it is not in use (the equivalence test then skips).
COMPILED = _compiled_build()

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SOURCES = ("dev-a", "dev-b", "dev-c")
NAMES = ("rpm", "temp", "relay_1")
#: Values that are not finite numbers, or numbers of other types.
ODD_VALUES = (math.nan, math.inf, -math.inf, "OPEN", "", None, b"1", 10**400, -(10**400), True,
              False, 0, 1, -0.0, 2**53 + 1)
#: Times that are not plain floats.
ODD_TIMES = (math.nan, math.inf, -math.inf, 0, 7, True, 10**400)


# -- both builds make the same decisions --------------------------------------------------

configs = st.fixed_dictionaries({
    "mode": st.sampled_from(MODES),
    "deviation": st.one_of(st.sampled_from([0.0, 0.5, 1.0, 5.0]), st.floats(0, 1e3)),
    "heartbeat_s": st.one_of(st.sampled_from([0.5, 3.0, 60.0]), st.floats(1e-3, 1e4)),
    "max_keys": st.integers(1, 6),
    "deviations": st.dictionaries(st.sampled_from(NAMES), st.floats(0, 100), max_size=2),
})

values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-100, 100),
    st.sampled_from([0.0, 1.0, 20.0, 20.5]),
    st.integers(-5, 5),
    st.sampled_from(ODD_VALUES),
)

operations = st.lists(
    st.one_of(
        st.tuples(st.just("offer"), st.sampled_from(SOURCES), st.sampled_from(NAMES),
                  st.one_of(st.floats(-1, 5), st.sampled_from([0.0, 0.1, 1.0]),
                            st.sampled_from(ODD_TIMES)),
                  values),
        st.tuples(st.just("expire"), st.one_of(st.floats(0, 20), st.sampled_from(ODD_TIMES))),
        st.tuples(st.just("take")),
        st.tuples(st.just("flush")),
    ),
    max_size=120,
)


def _outcome(call: Any, *args: Any) -> tuple[Any, ...]:
    try:
        return ("ok", call(*args))
    except Exception as exc:  # compared, not swallowed
        return ("error", type(exc).__name__, str(exc))


def _replay(build: _fast.Implementation, config: dict[str, Any], ops: list[tuple[Any, ...]]) -> list[str]:
    comp = build.Compressor(**config)
    clock = 0.0
    trace = []
    for tag, op in enumerate(ops):
        if op[0] == "offer":
            _, source, name, step, value = op
            if type(step) is float and math.isfinite(step):
                clock += step  # mostly forward, sometimes still or back
                t: Any = clock
            else:
                t = step
            result = _outcome(comp.offer, source, name, t, value, tag)
        elif op[0] == "expire":
            result = _outcome(comp.expire, clock + op[1] if type(op[1]) is float else op[1])
        elif op[0] == "take":
            result = _outcome(comp.take_held)
        else:
            result = _outcome(comp.flush)
        # repr tells -0.0 from 0.0 and shows every bit of a float.
        trace.append(repr((result, comp.stats(), len(comp))))
    trace.append(repr((comp.flush(), comp.take_held(), comp.stats(), repr(comp))))
    return trace


@pytest.mark.cython
@pytest.mark.skipif(COMPILED is None, reason="compiled build not in use (disabled or not built)")
@SETTINGS
@given(config=configs, ops=operations)
def test_both_builds_make_the_same_decisions(config: dict[str, Any], ops: list[tuple[Any, ...]]) -> None:
    assert COMPILED is not None
    assert _replay(COMPILED, config, ops) == _replay(_fast.load(_fast.PYTHON), config, ops)


# -- what is dropped can be rebuilt from what is stored -----------------------------------


@st.composite
def signals(draw: st.DrawFn) -> list[tuple[str, float, Any]]:
    """Readings of two keys at strictly increasing times: jumps, holds, ramps, noise, NaN, 0/1."""
    readings = []
    t = draw(st.floats(-1e6, 1e6))
    last = {name: 0.0 for name in NAMES[:2]}
    for _ in range(draw(st.integers(1, 150))):
        t += draw(st.floats(1e-3, 50))
        name = draw(st.sampled_from(NAMES[:2]))
        shape = draw(st.integers(0, 9))
        if shape == 0:
            value: Any = draw(st.floats(-1e6, 1e6))
        elif shape == 1:
            value = draw(st.sampled_from([math.nan, "OPEN", 0.0, 1.0]))
        elif shape <= 4:
            value = last[name]
        else:
            value = last[name] + draw(st.floats(-10, 10))
        if isinstance(value, float) and math.isfinite(value):
            last[name] = value
        readings.append((name, t, value))
    return readings


def _split(comp: Any, readings: list[tuple[str, float, Any]]) -> tuple[dict[str, list[tuple[float, Any]]], list[int]]:
    """Offer every reading; return the stored points per key and the indexes of dropped readings."""
    stored: dict[str, list[tuple[float, Any]]] = {name: [] for name in NAMES}
    kept = set()
    for index, (name, t, value) in enumerate(readings):
        flags = comp.offer("dev", name, t, value, index)
        if flags & HELD:
            kept.add(comp.take_held()[2])
        if flags & KEEP:
            kept.add(index)
    kept.update(item for *_, item in comp.flush())
    for index in sorted(kept):
        name, t, value = readings[index]
        stored[name].append((t, value))
    dropped = [i for i in range(len(readings)) if i not in kept]
    stats = comp.stats()
    assert stats["offered"] == len(readings) == len(kept) + len(dropped)
    assert stats["dropped"] == len(dropped) and stats["pending"] == 0
    return stored, dropped


def _tolerance(deviation: float, *numbers: float) -> float:
    # The filter decides on slopes; rebuilding on values rounds differently, by a few ulps.
    return deviation + 1e-9 * max(1.0, *(abs(n) for n in numbers))


@SETTINGS
@given(readings=signals(), deviation=st.floats(0, 1e3), heartbeat_s=st.floats(1e-2, 1e4))
def test_swinging_door_rebuilds_every_dropped_reading_within_the_deviation(
    impl: _fast.Implementation, readings: list[tuple[str, float, Any]], deviation: float,
    heartbeat_s: float,
) -> None:
    comp = impl.Compressor(SWINGING_DOOR, deviation=deviation, heartbeat_s=heartbeat_s)
    stored, dropped = _split(comp, readings)
    for index in dropped:
        name, t, value = readings[index]
        before = max(p for p in stored[name] if p[0] < t)
        after = min(p for p in stored[name] if p[0] > t)
        (t0, v0), (t1, v1) = before, after
        assert isinstance(v0, float) and isinstance(v1, float)  # never dropped next to a non-number
        assert math.isfinite(v0) and math.isfinite(v1) and math.isfinite(value)
        line = v0 + (v1 - v0) * (t - t0) / (t1 - t0)
        assert abs(line - value) <= _tolerance(deviation, v0, v1, value), (before, after, (t, value))
        assert t - t0 < heartbeat_s  # a heartbeat would have stored it


@SETTINGS
@given(readings=signals(), deviation=st.floats(0, 1e3), heartbeat_s=st.floats(1e-2, 1e4))
def test_deadband_holds_every_dropped_reading_within_the_deviation(
    impl: _fast.Implementation, readings: list[tuple[str, float, Any]], deviation: float,
    heartbeat_s: float,
) -> None:
    comp = impl.Compressor(DEADBAND, deviation=deviation, heartbeat_s=heartbeat_s)
    stored, dropped = _split(comp, readings)
    for index in dropped:
        name, t, value = readings[index]
        t0, v0 = max(p for p in stored[name] if p[0] < t)
        assert isinstance(v0, float) and math.isfinite(v0) and math.isfinite(value)
        assert abs(value - v0) <= deviation
        assert t - t0 < heartbeat_s


@SETTINGS
@given(readings=signals(), mode=st.sampled_from(MODES), deviation=st.floats(0, 1e3))
def test_non_numbers_first_readings_and_0_1_changes_are_always_stored(
    impl: _fast.Implementation, readings: list[tuple[str, float, Any]], mode: str, deviation: float,
) -> None:
    comp = impl.Compressor(mode, deviation=deviation, heartbeat_s=1e9)
    _, dropped = _split(comp, readings)
    previous: dict[str, Any] = {}
    dropped_set = set(dropped)
    for index, (name, _, value) in enumerate(readings):
        must_store = (
            name not in previous
            or not (isinstance(value, float) and math.isfinite(value))
            or not (isinstance(previous[name], float) and math.isfinite(previous[name]))
            or (previous[name] in (0.0, 1.0) and value in (0.0, 1.0) and value != previous[name])
        )
        if must_store:
            assert index not in dropped_set, readings[: index + 1]
        previous[name] = value
