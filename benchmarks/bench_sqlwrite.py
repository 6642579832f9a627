"""The telemetry INSERT on SQLite: the compiled twin against the pure one (``executemany``).

Why it exists: SQLite's insert was the largest item left in the database
thread's profile. Both twins of ``autocore._fast`` ``TelemetryInsert`` write
the same batches, alternately, into one file database with the gateway's
schema (``autocore.schema``) and pragmas (WAL, ``synchronous=FULL``: the
engine's ``configure_sqlite``), a commit per batch, as the writer does it:
``Connection.begin()`` and the driver connection. A batch is ``--messages``
messages of ``--rows`` rows from 50 devices. Per build: µs per row of the
insert call alone and of the whole transaction (insert and durable commit),
medians over the batches of a run, then the median and range over ``--runs``
runs (a fresh file each).

    python benchmarks/bench_sqlwrite.py [--runs 5] [--batches 60] [--messages 100] [--rows 12]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from autocore._fast import _sqlwrite_py
from autocore.config import Settings
from autocore.schema import ensure_schema
from autocore.storage import open_engine
from autocore.storage.telemetry import _telemetry_insert

try:
    from autocore._fast import _sqlwrite
except ImportError:  # not compiled here, or refused to load
    _sqlwrite = None  # type: ignore[assignment]

DEVICES = 50
#: A CAN message's rows, then GPS and system status ones, as the validator builds them.
KEYS = ([("can_bus", f"can_signal_{n}", "rpm") for n in range(8)]
        + [("gps", "gps_lat", None), ("gps", "gps_lon", None), ("system_status", "uptime", "s"),
           ("analog_sensor", "analog_a0", None)])


def batches(count: int, messages: int, rows: int, stamp: Any) -> list[list[tuple[str, int, list[Any]]]]:
    """Distinct batches, timestamp text made once per message as the writer does."""
    start = datetime(2026, 12, 5, 8, 0, 0)
    made = []
    for b in range(count):
        batch = []
        for m in range(messages):
            n = b * messages + m
            values = [(data_type, key, f"{(n * 7 + r) % 10000 / 10:.1f}", unit)
                      for r, (data_type, key, unit) in ((r, KEYS[r % len(KEYS)]) for r in range(rows))]
            batch.append((stamp(start + timedelta(milliseconds=n)), 1 + n % DEVICES, values))
        made.append(batch)
    return made


def run(builds: dict[str, Any], args: argparse.Namespace, folder: Path) -> dict[str, tuple[float, float]]:
    """One fresh file; per build (median µs per row of the insert, of the transaction)."""
    path = folder / f"bench-{time.monotonic_ns()}.db"
    engine = open_engine(Settings.from_env({"DATABASE_PATH": str(path), "AUTOCORE_CREATE_DATABASE": "true"},
                                           env_file=None))
    try:
        ensure_schema(engine)
        sql, stamp = _telemetry_insert(engine)
        with engine.begin() as conn:
            for device in range(1, DEVICES + 1):
                conn.exec_driver_sql("INSERT INTO devices (id, uuid, name, type, status, is_active) "
                                     "VALUES (?, ?, 'bench', 'esp32_can', 'online', 1)", (device, f"dev-{device}"))
        inserts = {name: module.TelemetryInsert(sql) for name, module in builds.items()}
        work = batches(args.batches * len(builds), args.messages, args.rows, stamp)
        rows = args.messages * args.rows
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in builds}
        with engine.connect() as conn:
            for n, batch in enumerate(work):
                names = list(builds)
                name = names[(n + n // len(names)) % len(names)]  # alternate, and swap who goes first
                started = time.perf_counter()
                with conn.begin():
                    inserted = inserts[name].insert(conn.connection.driver_connection, batch)
                    inserted_at = time.perf_counter()
                committed = time.perf_counter()
                assert inserted == rows
                times[name].append(((inserted_at - started) / rows, (committed - started) / rows))
        return {name: (statistics.median(t[0] for t in got) * 1e6, statistics.median(t[1] for t in got) * 1e6)
                for name, got in times.items()}
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batches", type=int, default=60, help="batches per build and run")
    parser.add_argument("--messages", type=int, default=100, help="messages per batch")
    parser.add_argument("--rows", type=int, default=12, help="rows per message")
    parser.add_argument("--dir", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="where the database files go (a real disk, not tmpfs)")
    args = parser.parse_args(argv)
    builds: dict[str, Any] = {"pure": _sqlwrite_py}
    if _sqlwrite is not None:
        builds["compiled"] = _sqlwrite
    else:
        print("the compiled twin is not in use here: pure numbers only")
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in builds}
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        for _ in range(args.runs):
            for name, got in run(builds, args, Path(folder)).items():
                results[name].append(got)
    print(f"{args.messages} messages x {args.rows} rows per batch, {args.batches} batches per build "
          f"and run, {args.runs} runs; µs per row, median of runs (min-max)")
    print("| build | insert | insert + commit |")
    print("|---|---|---|")
    medians = {}
    for name, got in results.items():
        insert, whole = [g[0] for g in got], [g[1] for g in got]
        medians[name] = (statistics.median(insert), statistics.median(whole))
        print(f"| {name} | {medians[name][0]:.2f} ({min(insert):.2f}-{max(insert):.2f}) "
              f"| {medians[name][1]:.2f} ({min(whole):.2f}-{max(whole):.2f}) |")
    if "compiled" in medians:
        for i, what in enumerate(("insert", "insert + commit")):
            per_run = [c[i] / p[i] for c, p in zip(results["compiled"], results["pure"])]
            print(f"compiled / pure, {what}: {medians['compiled'][i] / medians['pure'][i]:.2f} "
                  f"(per run {min(per_run):.2f}-{max(per_run):.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
