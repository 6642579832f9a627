"""Historian compression: swinging door, deadband, heartbeat, caps, non-numbers and flush, per build."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest

from autocore import compression
from autocore.compression import DEADBAND, DROP, HELD, KEEP, SWINGING_DOOR
from autocore.errors import ConfigError

#: Large enough that no test below reaches a heartbeat unless it means to.
NO_HEARTBEAT_S = 1e9


def run(comp: Any, readings: list[tuple[Any, ...]]) -> list[tuple[Any, float, Any]]:
    """Offer ``(name, t, value)`` readings of device ``"dev"``, flush, return what is stored.

    Stored points come as ``(name, t, value)``, in the order the caller would
    write them: a released held reading before the reading that released it.
    """
    stored = []
    for name, t, value in readings:
        flags = comp.offer("dev", name, t, value, (name, t, value))
        if flags & HELD:
            held_t, held_v, item = comp.take_held()
            assert item == (name, held_t, held_v)
            stored.append(item)
        if flags & KEEP:
            stored.append((name, t, value))
    stored.extend((name, t, value) for _, name, t, value, _ in comp.flush())
    return stored


def interpolate(points: list[tuple[float, float]], t: float) -> float:
    """Value of the straight line between the stored points around ``t``."""
    for (t0, v0), (t1, v1) in zip(points, points[1:]):
        if t0 <= t <= t1:
            return v0 + (v1 - v0) * (t - t0) / (t1 - t0)
    raise AssertionError(f"no stored points around t={t}")


def counters_add_up(comp: Any) -> None:
    s = comp.stats()
    assert s["offered"] == s["kept"] + s["released"] + s["dropped"] + s["pending"]
    assert s["keys"] == len(comp) <= s["max_keys"]


# -- swinging door ---------------------------------------------------------------------


def test_a_straight_line_keeps_only_its_ends(impl):
    comp = impl.Compressor(SWINGING_DOOR, deviation=0.5, heartbeat_s=NO_HEARTBEAT_S)
    readings = [("rpm", float(t), 800.0 + 25.0 * t) for t in range(101)]
    assert run(comp, readings) == [readings[0], readings[-1]]
    counters_add_up(comp)


def test_a_line_with_a_corner_keeps_the_corner(impl):
    comp = impl.Compressor(SWINGING_DOOR, deviation=0.5, heartbeat_s=NO_HEARTBEAT_S)
    up = [("rpm", float(t), 10.0 * t) for t in range(11)]
    down = [("rpm", float(t), 200.0 - 10.0 * t) for t in range(11, 21)]
    assert run(comp, up + down) == [up[0], up[-1], down[-1]]


def test_a_step_is_kept_on_both_sides(impl):
    comp = impl.Compressor(SWINGING_DOOR, deviation=0.5, heartbeat_s=NO_HEARTBEAT_S)
    values = [20.0] * 5 + [30.0] * 5
    readings = [("temp", float(t), v) for t, v in enumerate(values)]
    stored = run(comp, readings)
    # The last reading before the step, the first after, and both ends.
    assert stored == [readings[0], readings[4], readings[5], readings[9]]


def test_noise_within_the_deviation_is_dropped(impl):
    comp = impl.Compressor(SWINGING_DOOR, deviation=0.5, heartbeat_s=NO_HEARTBEAT_S)
    noise = [0.1, -0.2, 0.15, 0.0, -0.1, 0.2, -0.15, 0.05] * 10
    readings = [("temp", t * 0.1, 20.0 + n) for t, n in enumerate(noise)]
    stored = run(comp, readings)
    assert len(stored) <= 4
    points = [(t, v) for _, t, v in stored]
    for _, t, v in readings:
        assert abs(interpolate(points, t) - v) <= 0.5


def test_offer_returns_the_documented_flags(impl):
    comp = impl.Compressor(SWINGING_DOOR, deviation=1.0, heartbeat_s=NO_HEARTBEAT_S)
    assert comp.offer("dev", "x", 0.0, 0.0, "a") == KEEP  # first reading of a key
    assert comp.offer("dev", "x", 1.0, 0.0, "b") == DROP  # held
    assert comp.take_held() is None
    assert comp.offer("dev", "x", 2.0, 0.5, "c") == DROP  # "b" lies on the line to "c"
    assert comp.offer("dev", "x", 3.0, 9.0, "d") == HELD  # the door closes on "c"
    assert comp.take_held() == (2.0, 0.5, "c")
    assert comp.take_held() is None  # handed over once
    assert comp.offer("dev", "x", 4.0, math.nan, "e") == KEEP | HELD  # "d" first, then the NaN
    assert comp.take_held() == (3.0, 9.0, "d")
    assert comp.stats()["pending"] == 0


def test_every_dropped_reading_lies_on_the_stored_lines(impl):
    comp = impl.Compressor(SWINGING_DOOR, deviation=2.0, heartbeat_s=NO_HEARTBEAT_S)
    readings = [("gps", t * 0.5, 100.0 * math.sin(t / 15.0) + (t % 7) * 0.3) for t in range(400)]
    stored = run(comp, readings)
    assert len(stored) < len(readings) // 3
    points = [(t, v) for _, t, v in stored]
    assert max(abs(interpolate(points, t) - v) for _, t, v in readings) <= 2.0


# -- deadband --------------------------------------------------------------------------


def test_deadband_stores_moves_beyond_the_deviation(impl):
    comp = impl.Compressor(DEADBAND, deviation=1.0, heartbeat_s=NO_HEARTBEAT_S)
    values = [10.0, 10.5, 11.0, 11.2, 9.5, 9.4, 12.0, 12.0]
    readings = [("temp", float(t), v) for t, v in enumerate(values)]
    stored = run(comp, readings)
    # 11.2 is 1.2 from 10.0; 9.5 is 1.7 from 11.2; 12.0 is 2.5 from 9.5. Nothing is held.
    assert stored == [readings[0], readings[3], readings[4], readings[6]]
    last = None
    for reading in readings:  # holding the last stored value stays within the deviation
        if reading in stored:
            last = reading[2]
        assert abs(reading[2] - last) <= 1.0
    assert comp.stats()["released"] == 0


# -- heartbeat -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [SWINGING_DOOR, DEADBAND])
def test_heartbeat_stores_a_constant_signal_every_period(impl, mode):
    comp = impl.Compressor(mode, deviation=1.0, heartbeat_s=60.0)
    readings = [("rpm", i / 10, 800.0) for i in range(3001)]  # 10 Hz for 300 s
    stored = run(comp, readings)
    assert [t for _, t, _ in stored] == [0.0, 60.0, 120.0, 180.0, 240.0, 300.0]


def test_heartbeat_counts_from_the_last_stored_point(impl):
    comp = impl.Compressor(SWINGING_DOOR, deviation=0.5, heartbeat_s=10.0)
    readings = [("v", float(t), 0.0) for t in range(6)]
    readings += [("v", float(t), 2.0 * (t - 5)) for t in range(6, 16)]  # a ramp from t=5
    stored = [t for _, t, _ in run(comp, readings)]
    assert stored == [0.0, 5.0, 15.0]  # not 10.0: the corner stored at t=5 restarts the count


# -- keys, caps, expiry ----------------------------------------------------------------


def test_keys_are_independent_and_take_their_own_deviation(impl):
    comp = impl.Compressor(SWINGING_DOOR, deviation=0.1, heartbeat_s=NO_HEARTBEAT_S,
                           deviations={"rpm": 50.0})
    assert comp.deviation_for("rpm") == 50.0 and comp.deviation_for("temp") == 0.1
    assert comp.deviations == {"rpm": 50.0}
    for t in range(5):  # same wobble on both signals
        value = 20.0 + (t % 2) * 10.0
        comp.offer("dev", "rpm", float(t), value)
        comp.offer("dev", "temp", float(t), value)
    flushed = comp.flush()
    assert [name for _, name, _, _, _ in flushed] == ["rpm", "temp"]
    stats = comp.stats()
    assert stats["dropped"] == 3  # the rpm wobble; every temp reading was stored or released


def test_same_name_on_two_devices_is_two_keys(impl):
    comp = impl.Compressor(SWINGING_DOOR, deviation=1.0, heartbeat_s=NO_HEARTBEAT_S)
    assert comp.offer("dev-a", "temp", 0.0, 20.0) == KEEP
    assert comp.offer("dev-b", "temp", 0.0, 50.0) == KEEP
    assert len(comp) == 2


def test_keys_beyond_the_cap_store_everything(impl):
    comp = impl.Compressor(SWINGING_DOOR, deviation=1.0, heartbeat_s=30.0, max_keys=2)
    comp.offer("dev", "a", 0.0, 1.0)
    comp.offer("dev", "b", 0.0, 1.0)
    assert [comp.offer("dev", "c", float(t), 1.0) for t in range(5)] == [KEEP] * 5
    assert comp.stats()["untracked"] == 5 and len(comp) == 2
    comp.offer("dev", "a", 40.0, 1.0)  # "a" reports on, "b" goes silent
    assert comp.expire(45.0) == []  # "b" (last seen at 0) is forgotten, nothing was held
    assert len(comp) == 1
    assert comp.offer("dev", "c", 46.0, 1.0) == KEEP  # tracked now
    assert comp.offer("dev", "c", 47.0, 1.0) == DROP
    assert comp.stats()["untracked"] == 5
    counters_add_up(comp)


def test_expire_releases_what_silent_keys_hold_and_forgets_them(impl):
    comp = impl.Compressor(SWINGING_DOOR, deviation=1.0, heartbeat_s=30.0)
    for t in range(3):
        comp.offer("dev-1", "temp", float(t), 20.0, f"row{t}")
    comp.offer("dev-2", "temp", 20.0, 5.0, "other")
    assert comp.expire(31.0) == []  # dev-1's last reading (t=2) is 29 s old
    assert comp.expire(32.0) == [("dev-1", "temp", 2.0, 20.0, "row2")]
    assert len(comp) == 1 and comp.stats()["pending"] == 0
    assert comp.offer("dev-1", "temp", 33.0, 20.0) == KEEP  # a new key again
    counters_add_up(comp)


def test_flush_releases_every_held_reading_and_forgets_every_key(impl):
    comp = impl.Compressor(SWINGING_DOOR, deviation=1.0, heartbeat_s=NO_HEARTBEAT_S)
    comp.offer("dev-1", "a", 0.0, 1.0, "a0")
    comp.offer("dev-1", "a", 1.0, 1.0, "a1")  # held
    comp.offer("dev-2", "b", 0.0, 1.0, "b0")  # stored, nothing held
    comp.offer("dev-1", "c", 0.0, 1.0, "c0")
    comp.offer("dev-1", "c", 1.0, 2.0, "c1")  # held
    assert comp.flush() == [("dev-1", "a", 1.0, 1.0, "a1"), ("dev-1", "c", 1.0, 2.0, "c1")]
    assert len(comp) == 0 and comp.flush() == []
    stats = comp.stats()
    assert stats["released"] == 2 and stats["pending"] == 0 and stats["kept"] == 3
    counters_add_up(comp)


def test_many_keys_come_and_go(impl):
    """Slots of forgotten keys are reused and every held reading comes back once."""
    comp = impl.Compressor(SWINGING_DOOR, deviation=1.0, heartbeat_s=5.0, max_keys=100)
    released = 0
    for round_ in range(20):
        base = round_ * 10.0
        for n in range(70):
            source = f"dev-{(round_ * 70 + n) % 130}"
            for t in (base, base + 1.0):
                if comp.offer(source, "v", t, 1.0) & HELD:
                    released += 1
        released += len(comp.expire(base + 5.5))  # the previous round's keys
        assert len(comp) <= 100
        counters_add_up(comp)
    released += len(comp.flush())
    assert released == comp.stats()["released"] > 0


# -- readings that are always stored ---------------------------------------------------


@pytest.mark.parametrize("mode", [SWINGING_DOOR, DEADBAND])
@pytest.mark.parametrize("odd", [math.nan, math.inf, -math.inf, "OPEN", None, 10**400, b"1"])
def test_non_numbers_are_stored_and_restart_the_key(impl, mode, odd):
    comp = impl.Compressor(mode, deviation=100.0, heartbeat_s=NO_HEARTBEAT_S)
    assert comp.offer("dev", "x", 0.0, 1.5) == KEEP
    comp.offer("dev", "x", 1.0, 1.5)
    expected = KEEP | HELD if mode == SWINGING_DOOR else KEEP
    assert comp.offer("dev", "x", 2.0, odd) == expected
    assert comp.offer("dev", "x", 3.0, odd) == KEEP
    assert comp.offer("dev", "x", 4.0, 1.5) == KEEP  # the first number after is stored too
    assert comp.offer("dev", "x", 5.0, 1.5) == DROP
    counters_add_up(comp)


@pytest.mark.parametrize("mode", [SWINGING_DOOR, DEADBAND])
def test_changes_between_0_and_1_are_stored_at_once(impl, mode):
    comp = impl.Compressor(mode, deviation=5.0, heartbeat_s=NO_HEARTBEAT_S)
    states = [0, 0, 0, 1, 1, 1, 0, True, False]
    flags = [comp.offer("dev", "relay_1", float(t), s) for t, s in enumerate(states)]
    held = KEEP | HELD if mode == SWINGING_DOOR else KEEP
    assert flags == [KEEP, DROP, DROP, held, DROP, DROP, held, KEEP, KEEP]


def test_integers_and_bools_count_as_numbers(impl):
    comp = impl.Compressor(SWINGING_DOOR, deviation=0.5, heartbeat_s=NO_HEARTBEAT_S)
    assert comp.offer("dev", "gear", 0, 3) == KEEP
    assert comp.offer("dev", "gear", 1, 3) == DROP
    assert comp.offer("dev", "gear", 2, 3.0) == DROP


@pytest.mark.parametrize("mode", [SWINGING_DOOR, DEADBAND])
@pytest.mark.parametrize("t", [5.0, 4.0, math.nan, math.inf])
def test_a_time_that_does_not_move_forward_is_stored(impl, mode, t):
    comp = impl.Compressor(mode, deviation=100.0, heartbeat_s=NO_HEARTBEAT_S)
    comp.offer("dev", "x", 0.0, 1.0)
    comp.offer("dev", "x", 5.0, 1.0)
    expected = KEEP | HELD if mode == SWINGING_DOOR else KEEP
    assert comp.offer("dev", "x", t, 1.0) == expected
    counters_add_up(comp)


# -- misuse ----------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, key", [
    ({"mode": "off"}, "mode"),
    ({"mode": "SDT"}, "mode"),
    ({"deviation": -1.0}, "deviation"),
    ({"deviation": math.nan}, "deviation"),
    ({"deviation": math.inf}, "deviation"),
    ({"deviation": "1"}, "deviation"),
    ({"deviation": True}, "deviation"),
    ({"heartbeat_s": 0}, "heartbeat_s"),
    ({"heartbeat_s": math.inf}, "heartbeat_s"),
    ({"max_keys": 0}, "max_keys"),
    ({"max_keys": 1.5}, "max_keys"),
    ({"max_keys": True}, "max_keys"),
    ({"max_keys": 10**7 + 1}, "max_keys"),
    ({"deviations": {"rpm": -1}}, "deviations['rpm']"),
    ({"deviations": {1: 1.0}}, "deviations"),
])
def test_bad_configuration_raises_config_error(impl, kwargs, key):
    with pytest.raises(ConfigError) as raised:
        impl.Compressor(**kwargs)
    assert raised.value.key == key


@pytest.mark.parametrize("t", ["1.0", None, b"1", [1.0]])
def test_time_must_be_a_number(impl, t):
    comp = impl.Compressor()
    with pytest.raises(TypeError, match="t must be a number of seconds"):
        comp.offer("dev", "x", t, 1.0)
    with pytest.raises(TypeError, match="t must be a number of seconds"):
        comp.expire(t)
    assert comp.stats()["offered"] == 0


def test_unhashable_keys_raise_type_error(impl):
    comp = impl.Compressor()
    with pytest.raises(TypeError):
        comp.offer(["dev"], "x", 0.0, 1.0)
    comp.offer("dev", "x", 0.0, 1.0)
    with pytest.raises(TypeError):
        comp.offer("dev", ["x"], 0.0, 1.0)
    assert len(comp) == 1


def test_properties_and_repr(impl):
    comp = impl.Compressor(DEADBAND, deviation=2, heartbeat_s=30, max_keys=7)
    assert (comp.mode, comp.deviation, comp.heartbeat_s, comp.max_keys) == (DEADBAND, 2.0, 30.0, 7)
    assert repr(comp) == "Compressor(mode='deadband', deviation=2.0, heartbeat_s=30.0, keys=0)"
    assert impl.Compressor().mode == SWINGING_DOOR


def test_compressor_made_without_init_stores_everything(impl):
    if impl.name == "python":
        pytest.skip("the pure twin has no state before __init__")
    comp = impl.Compressor.__new__(impl.Compressor)
    assert comp.offer("dev", "x", 0.0, 1.0) == KEEP
    assert comp.offer("dev", "x", 1.0, 1.0) == KEEP
    assert comp.flush() == [] and comp.stats()["untracked"] == 2


# -- the gateway's side: text rows, settings -------------------------------------------


def test_filter_rows_parses_text_values_and_returns_released_rows(impl):
    comp = impl.Compressor(SWINGING_DOOR, deviation=0.5, heartbeat_s=NO_HEARTBEAT_S)
    first = [("sensor", "temp", "20.0", "C"), ("relay", "relay_1", "0", None),
             ("sensor", "mode", "eco", None)]
    assert compression.filter_rows(comp, "dev", 100.0, first) == (first, [])
    second = [("sensor", "temp", "20.1", "C"), ("relay", "relay_1", "0", None),
              ("sensor", "mode", "eco", None)]
    assert compression.filter_rows(comp, "dev", 101.0, second) == ([second[2]], [])
    third = [("sensor", "temp", "25.0", "C"), ("relay", "relay_1", "1", None)]
    kept, released = compression.filter_rows(comp, "dev", 102.0, third)
    assert kept == [third[1]]  # the relay change; the temperature jump is held
    assert released == [(101.0, [second[0], second[1]])]
    assert compression.group_released(comp.flush()) == [("dev", 102.0, [third[0]])]


def test_group_released_makes_one_group_per_message():
    released = [("a", "x", 1.0, 0.0, "ax"), ("b", "x", 1.0, 0.0, "bx"), ("a", "y", 1.0, 0.0, "ay"),
                ("a", "z", 2.0, 0.0, "az")]
    assert compression.group_released(released) == [
        ("a", 1.0, ["ax", "ay"]), ("b", 1.0, ["bx"]), ("a", 2.0, ["az"])]


@pytest.mark.parametrize("text, pairs", [
    ("", ()),
    (" ", ()),
    ("can_rpm=25,analog_temp=0.2", (("can_rpm", 25.0), ("analog_temp", 0.2))),
    (" can_rpm = 25 , ", (("can_rpm", 25.0),)),
    ("x=0", (("x", 0.0),)),
])
def test_parse_deviations(text, pairs):
    assert compression.parse_deviations(text) == pairs


@pytest.mark.parametrize("text", ["rpm", "=1", "rpm=", "rpm=-1", "rpm=nan", "rpm=inf", "a=1,a=2",
                                  "rpm=x"])
def test_parse_deviations_refuses_malformed_entries(text):
    with pytest.raises(ValueError):
        compression.parse_deviations(text)


def test_from_settings_is_off_by_default():
    assert compression.from_settings(SimpleNamespace()) is None
    assert compression.from_settings(SimpleNamespace(compression="off")) is None
    comp = compression.from_settings(SimpleNamespace(
        compression="deadband", compression_deviation=0.5, compression_heartbeat_s=30.0,
        compression_max_keys=10, compression_deviations=(("can_rpm", 25.0),)))
    assert isinstance(comp, compression.Compressor)
    assert (comp.mode, comp.deviation, comp.heartbeat_s, comp.max_keys) == ("deadband", 0.5, 30.0, 10)
    assert comp.deviation_for("can_rpm") == 25.0


# -- through a running gateway -------------------------------------------------------------------


def test_a_gateway_with_swinging_door_stores_a_ramp_by_its_ends(env) -> None:  # type: ignore[no-untyped-def]
    """A straight ramp keeps its end points, a step is stored, held rows reach the database at shutdown.

    Times are receive times: the 50 rpm deviation covers 100 ms of delivery jitter on a 500 rpm/s ramp.
    """
    import json
    import time

    from tests.fixtures.services import wait_for

    gateway = env.gateway(AUTOCORE_COMPRESSION="swinging_door", AUTOCORE_COMPRESSION_DEVIATION="50",
                          AUTOCORE_WRITE_INTERVAL="0.05")
    env.register("esp32-can-001", "esp32_can")
    device = env.peer()

    def send(rpm: float) -> None:
        body = {"protocol_version": "2.2.0", "uuid": "esp32-can-001", "timestamp": "2025-08-12T20:53:17Z",
                "can_data": {"signals": {"rpm": {"value": rpm, "unit": "rpm"}}}}
        device.publish("autocore/devices/esp32-can-001/telemetry", json.dumps(body).encode(), qos=1)

    for n in range(20):  # a ramp of 10 rpm per message
        send(1000 + 10 * n)
        time.sleep(0.02)
    send(5000)  # a step: the ramp's last point is released; the step itself is held
    wait_for(lambda: env.rows("SELECT id FROM telemetry_data WHERE data_value = '1190.0'"),
             what="the ramp's end point, released by the step")
    assert gateway.stop() == 0  # shutdown stores what the filter still holds
    values = [float(r["data_value"]) for r in env.rows("SELECT data_value FROM telemetry_data ORDER BY id")]
    assert values[0] == 1000 and 1190 in values and values[-1] == 5000
    assert len(values) <= 6  # 21 readings; receive-time jitter may keep a point or two of the ramp
