"""Historian compression on a synthetic drive: rows saved, reconstruction error, cost per reading.

One device reports a dozen signals at 10 Hz for a simulated hour (36,000
readings each), shaped like what an ESP32 decodes from a vehicle's CAN bus and
reads from its own inputs:

- ``can_rpm``: idle at ~800 rpm, ramps to 1,800-4,500 rpm and back, gear
  shifts, cruising; 0.25 rpm resolution and 8 rpm of jitter;
- ``can_speed``: follows the drive, 0.01 km/h resolution, 0.3 km/h jitter;
- ``analog_coolant``: warms from 20 to ~88 C over minutes, thermostat wobble,
  0.15 C of ADC noise; ``analog_intake``: slow drift with 0.1 C of noise;
- ``battery_v``: 12.6 V parked, 14.2 V charging, dips when loads switch;
- ``relay_1``..``relay_4``: on/off states that change every few minutes;
- ``gps_lat``/``gps_lon``: a smooth track at the drive's speed with ~2 m of
  GPS noise (degrees).

Each signal gets a deviation an operator would pick (about three times its
noise; ``DEVIATIONS``). For swinging door and deadband, with a 60 s heartbeat:
the share of rows kept, and the largest error of the reconstruction (linear
interpolation between stored points for swinging door, last stored value for
deadband) against every reading, as a multiple of the deviation (never above
1). Then the cost per reading, compiled and pure side by side: ``offer`` alone
on floats, and ``filter_rows`` on the gateway's text rows.

    python benchmarks/compression.py [--seconds 3600] [--hz 10] [--repeat 5] [--seed 1]
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from autocore import _fast
from autocore.compression import DEADBAND, HELD, KEEP, SWINGING_DOOR, filter_rows

#: Deviation per signal, in its unit: about three times its noise.
DEVIATIONS = {
    "can_rpm": 25.0,
    "can_speed": 1.0,
    "analog_coolant": 0.5,
    "analog_intake": 0.3,
    "battery_v": 0.05,
    "relay_1": 0.5, "relay_2": 0.5, "relay_3": 0.5, "relay_4": 0.5,
    "gps_lat": 5e-5,  # about 5.5 m
    "gps_lon": 5e-5,
}
UNITS = {"can_rpm": "rpm", "can_speed": "km/h", "analog_coolant": "C", "analog_intake": "C",
         "battery_v": "V", "gps_lat": "deg", "gps_lon": "deg"}
HEARTBEAT_S = 60.0
DEVICE = "esp32-can-001"


def drive(seconds: float = 3600.0, hz: float = 10.0, seed: int = 1) -> tuple[list[float], dict[str, list[float]]]:
    """Sample times and one series per signal of a synthetic drive (idle, ramps, cruise, stops)."""
    rnd = random.Random(seed)
    n = int(seconds * hz)
    dt = 1.0 / hz
    times = [i * dt for i in range(n)]
    series: dict[str, list[float]] = {name: [] for name in DEVIATIONS}
    rpm_target, rpm, speed, speed_target = 800.0, 800.0, 0.0, 0.0
    phase_end = 0.0
    ramp_rate = 0.0
    heading, lat, lon = 0.3, -23.5505, -46.6333
    gps_lat_err = gps_lon_err = 0.0
    coolant, intake = 20.0, 24.0
    relays = [0.0, 0.0, 0.0, 0.0]
    relay_next = [rnd.expovariate(1 / 180.0) for _ in relays]
    load_dip = 0.0
    for t in times:
        if t >= phase_end:  # next drive phase: idle, accelerate, cruise, brake
            phase = rnd.choices(("idle", "accelerate", "cruise", "brake"), (2, 3, 4, 2))[0]
            duration = rnd.uniform(3.0, 40.0)
            phase_end = t + duration
            if phase == "idle":
                rpm_target, speed_target = rnd.uniform(760, 840), 0.0
            elif phase == "accelerate":
                rpm_target, speed_target = rnd.uniform(2500, 4500), min(130.0, speed + rnd.uniform(20, 50))
            elif phase == "cruise":
                rpm_target, speed_target = rnd.uniform(1800, 2600), max(speed, rnd.uniform(40, 110))
            else:
                rpm_target, speed_target = rnd.uniform(900, 1300), max(0.0, speed - rnd.uniform(20, 60))
            ramp_rate = rnd.uniform(150, 900)  # rpm per second
        if phase == "accelerate" and rpm > rpm_target - 50 and speed < speed_target - 5:
            rpm -= rnd.uniform(900, 1400)  # gear shift
        step = ramp_rate * dt
        rpm += max(-step, min(step, rpm_target - rpm))
        speed += max(-8.0 * dt, min(4.0 * dt, speed_target - speed))
        series["can_rpm"].append(round((rpm + rnd.gauss(0, 8)) * 4) / 4)
        series["can_speed"].append(round(max(0.0, speed + rnd.gauss(0, 0.3)), 2))
        running = rpm > 500
        coolant += (88.0 - coolant) * dt / 480.0 if running else (20.0 - coolant) * dt / 3000.0
        wobble = 1.5 * math.sin(2 * math.pi * t / 180.0) if coolant > 80 else 0.0
        series["analog_coolant"].append(round(coolant + wobble + rnd.gauss(0, 0.15), 2))
        intake += (30.0 + 8.0 * math.sin(t / 900.0) - intake) * dt / 300.0
        series["analog_intake"].append(round(intake + rnd.gauss(0, 0.1), 2))
        for r, due in enumerate(relay_next):
            if t >= due:
                relays[r] = 1.0 - relays[r]
                relay_next[r] = t + rnd.expovariate(1 / 180.0)
                load_dip = 0.4
            series[f"relay_{r + 1}"].append(relays[r])
        load_dip *= 0.9
        volts = (14.2 if running else 12.6) - load_dip - 0.1 * sum(relays)
        series["battery_v"].append(round(volts + rnd.gauss(0, 0.015), 3))
        heading += rnd.gauss(0, 0.01) + (0.02 if int(t) % 120 < 10 else 0.0)
        metres = speed / 3.6 * dt
        lat += metres * math.cos(heading) / 111_320.0
        lon += metres * math.sin(heading) / (111_320.0 * math.cos(math.radians(lat)))
        gps_lat_err = 0.98 * gps_lat_err + rnd.gauss(0, 0.4) / 111_320.0  # correlated GPS noise
        gps_lon_err = 0.98 * gps_lon_err + rnd.gauss(0, 0.4) / 111_320.0
        series["gps_lat"].append(round(lat + gps_lat_err, 7))
        series["gps_lon"].append(round(lon + gps_lon_err, 7))
    return times, series


def stored_points(build: _fast.Implementation, mode: str, times: list[float],
                  series: dict[str, list[float]]) -> dict[str, list[tuple[float, float]]]:
    """Offer the drive tick by tick (all signals of a tick share its time); the points stored per signal."""
    comp = build.Compressor(mode, deviation=0.0, heartbeat_s=HEARTBEAT_S, deviations=DEVIATIONS)
    stored: dict[str, list[tuple[float, float]]] = {name: [] for name in series}
    names = list(series)
    columns = [series[name] for name in names]
    for i, t in enumerate(times):
        for name, column in zip(names, columns):
            value = column[i]
            flags = comp.offer(DEVICE, name, t, value, name)
            if flags & HELD:
                held_t, held_v, held_name = comp.take_held()
                stored[held_name].append((held_t, held_v))
            if flags & KEEP:
                stored[name].append((t, value))
    for _, name, t, value, _ in comp.flush():
        stored[name].append((t, value))
    for points in stored.values():
        points.sort()
    return stored


def worst_error(mode: str, times: list[float], values: list[float],
                points: list[tuple[float, float]]) -> float:
    """Largest distance between a reading and the reconstruction from the stored points."""
    point_times = [p[0] for p in points]
    worst = 0.0
    for t, v in zip(times, values):
        i = bisect.bisect_right(point_times, t) - 1
        t0, v0 = points[i]
        if mode == DEADBAND or t0 == t or i + 1 == len(points):
            rebuilt = v0
        else:
            t1, v1 = points[i + 1]
            rebuilt = v0 + (v1 - v0) * (t - t0) / (t1 - t0)
        worst = max(worst, abs(rebuilt - v))
    return worst


def quality(times: list[float], series: dict[str, list[float]]) -> list[dict[str, Any]]:
    """Rows kept and worst error per signal and mode (the compiled build when available)."""
    build = _fast.load(_fast.PYTHON) if _fast.extensions_disabled() else _best_build()
    rows = []
    for mode in (SWINGING_DOOR, DEADBAND):
        stored = stored_points(build, mode, times, series)
        for name, values in series.items():
            rows.append({
                "mode": mode, "signal": name, "deviation": DEVIATIONS[name],
                "readings": len(values), "stored": len(stored[name]),
                "kept_pct": 100.0 * len(stored[name]) / len(values),
                "error_over_deviation": worst_error(mode, times, values, stored[name]) / DEVIATIONS[name],
            })
    return rows


def _best_build() -> _fast.Implementation:
    try:
        return _fast.load(_fast.CYTHON)
    except ImportError:
        return _fast.load(_fast.PYTHON)


def _per_reading_ns(run: Callable[[], int], repeat: int) -> float:
    """Median over ``repeat`` runs of one pass, per reading."""
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        readings = run()
        samples.append((time.perf_counter() - started) / readings * 1e9)
    return statistics.median(samples)


def speed(times: list[float], series: dict[str, list[float]], repeat: int) -> list[dict[str, Any]]:
    """ns per reading of offer() on floats and of filter_rows() on text rows, per build."""
    builds = [_fast.load(_fast.PYTHON)]
    if not _fast.extensions_disabled():
        try:
            builds.insert(0, _fast.load(_fast.CYTHON))
        except ImportError:
            pass
    names = list(series)
    ticks = [[(name, series[name][i]) for name in names] for i in range(len(times))]
    messages = [[("sensor", name, repr(float(value)), UNITS.get(name)) for name, value in tick]
                for tick in ticks]
    readings = len(times) * len(names)
    results = []
    for mode in (SWINGING_DOOR, DEADBAND):
        for build in builds:
            def offer_pass() -> int:
                comp = build.Compressor(mode, heartbeat_s=HEARTBEAT_S, deviations=DEVIATIONS)
                offer, take = comp.offer, comp.take_held
                for t, tick in zip(times, ticks):
                    for name, value in tick:
                        if offer(DEVICE, name, t, value, None) & HELD:
                            take()
                return readings

            def rows_pass() -> int:
                comp = build.Compressor(mode, heartbeat_s=HEARTBEAT_S, deviations=DEVIATIONS)
                for t, rows in zip(times, messages):
                    filter_rows(comp, DEVICE, t, rows)
                return readings

            results.append({"mode": mode, "build": build.name,
                            "offer_ns": _per_reading_ns(offer_pass, repeat),
                            "filter_rows_ns": _per_reading_ns(rows_pass, repeat)})
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3600.0, help="simulated drive length")
    parser.add_argument("--hz", type=float, default=10.0, help="readings per signal per second")
    parser.add_argument("--repeat", type=int, default=5, help="timed passes per build (median)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", help="append the results as one JSON line to this file")
    args = parser.parse_args(argv)

    times, series = drive(args.seconds, args.hz, args.seed)
    rows = quality(times, series)
    print(f"{len(times)} ticks x {len(series)} signals at {args.hz:g} Hz, heartbeat {HEARTBEAT_S:g} s")
    print("| signal | deviation | swinging door: rows kept | max error / deviation "
          "| deadband: rows kept | max error / deviation |")
    print("|---|---|---|---|---|---|")
    by_mode = {(r["mode"], r["signal"]): r for r in rows}
    for name in series:
        sdt, dead = by_mode[(SWINGING_DOOR, name)], by_mode[(DEADBAND, name)]
        print(f"| {name} | {DEVIATIONS[name]:g} | {sdt['kept_pct']:.2f} % | "
              f"{sdt['error_over_deviation']:.3f} | {dead['kept_pct']:.2f} % | "
              f"{dead['error_over_deviation']:.3f} |")
    totals = {}
    for mode in (SWINGING_DOOR, DEADBAND):
        mode_rows = [r for r in rows if r["mode"] == mode]
        totals[mode] = 100.0 * sum(r["stored"] for r in mode_rows) / sum(r["readings"] for r in mode_rows)
    print(f"| **all signals** | | **{totals[SWINGING_DOOR]:.2f} %** | "
          f"{max(r['error_over_deviation'] for r in rows if r['mode'] == SWINGING_DOOR):.3f} | "
          f"**{totals[DEADBAND]:.2f} %** | "
          f"{max(r['error_over_deviation'] for r in rows if r['mode'] == DEADBAND):.3f} |")

    timing = speed(times, series, args.repeat)
    print()
    print("| mode | build | offer(), ns per reading | filter_rows() on text rows, ns per reading |")
    print("|---|---|---|---|")
    for r in timing:
        print(f"| {r['mode']} | {r['build']} | {r['offer_ns']:.0f} | {r['filter_rows_ns']:.0f} |")
    worst = max(r["error_over_deviation"] for r in rows)
    if args.json:
        with open(args.json, "a") as out:
            out.write(json.dumps({"seconds": args.seconds, "hz": args.hz, "seed": args.seed,
                                  "quality": rows, "timing": timing}) + "\n")
    if worst > 1.0 + 1e-9:
        print(f"reconstruction error {worst:.6f} x deviation exceeds the guarantee", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
