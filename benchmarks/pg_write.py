"""PostgreSQL telemetry batch write: COPY against pipelined executemany and multi-row VALUES.

Why it exists: ``storage.telemetry._copy_rows`` writes each telemetry batch with COPY
(``cursor.copy`` + ``write_row``), and the comment there quotes this script's
numbers. It measures the three ways psycopg 3 can send one batch of
``telemetry_data`` rows, on a throwaway cluster over loopback TCP, as the
gateway's database thread does: one transaction per batch, committed. Each
timing is the whole transaction (BEGIN, write, COMMIT) divided by its rows;
the write alone (without the COMMIT) is shown as well.

Batch sizes and methods are interleaved (the method order rotates every
repetition) after one untimed warm-up round, and every cell is the median of
``--repeat`` runs, because the 2-core machine is shared.

    python benchmarks/pg_write.py                    # batches of 50, 500, 5000; 15 repetitions
    python benchmarks/pg_write.py --batches 50,500 --repeat 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import create_engine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root, for tests.fixtures
from autocore.schema import ensure_schema  # noqa: E402
from autocore.storage.telemetry import _COPY_TELEMETRY  # noqa: E402
from tests.fixtures.services import postgres_clusters  # noqa: E402

COLUMNS = "timestamp, device_id, data_type, data_key, data_value, unit"
INSERT_ONE = f"INSERT INTO telemetry_data ({COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s)"
#: The CAN fixture's three signals: (data_key, unit, first value).
SIGNALS = (("can_RPM", "rpm", 2500.0), ("can_TPS", "%", 45.2), ("can_ECT", "°C", 85.7))

Row = tuple[datetime, int, str, str, str, str]
Writer = Callable[[psycopg.Cursor[Any], list[Row]], None]
#: (method, rows per batch) -> [(write s, write + commit s)], one pair per repetition.
Samples = dict[tuple[str, int], list[tuple[float, float]]]


def write_copy(cursor: psycopg.Cursor[Any], rows: list[Row]) -> None:
    """What autocore does (storage.telemetry._copy_rows): COPY FROM STDIN, one write_row per row."""
    with cursor.copy(_COPY_TELEMETRY) as copy:
        for row in rows:
            copy.write_row(row)


def write_executemany(cursor: psycopg.Cursor[Any], rows: list[Row]) -> None:
    """psycopg 3's executemany, which pipelines the INSERTs (one network round trip per batch)."""
    cursor.executemany(INSERT_ONE, rows)


def write_values(cursor: psycopg.Cursor[Any], rows: list[Row]) -> None:
    """One INSERT ... VALUES (...), (...), ... with every row's parameters (6 per row)."""
    marks = ", ".join(["(%s, %s, %s, %s, %s, %s)"] * len(rows))
    cursor.execute(f"INSERT INTO telemetry_data ({COLUMNS}) VALUES {marks}",
                   [value for row in rows for value in row])


METHODS: dict[str, Writer] = {"copy": write_copy, "executemany": write_executemany, "values": write_values}


def make_rows(device_id: int, count: int, start: datetime) -> list[Row]:
    """``count`` rows as a 10 Hz CAN reader produces them: three signals per reading."""
    rows = []
    for n in range(count):
        key, unit, base = SIGNALS[n % len(SIGNALS)]
        moment = start + timedelta(milliseconds=100 * (n // len(SIGNALS)))
        rows.append((moment, device_id, "can", key, repr(base + n % 17), unit))
    return rows


def timed_batch(conn: psycopg.Connection[Any], writer: Writer, rows: list[Row]) -> tuple[float, float]:
    """Write one batch in its own transaction; return (write, write + commit) in seconds."""
    started = time.perf_counter()
    with conn.cursor() as cursor:  # psycopg opens the transaction on the first statement
        writer(cursor, rows)
    written = time.perf_counter()
    conn.commit()
    return written - started, time.perf_counter() - started


def setup_database(url: str) -> int:
    """The gateway's tables, created as the gateway creates them, and one registered device."""
    engine = create_engine(url)
    try:
        ensure_schema(engine)
    finally:
        engine.dispose()
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        now = datetime.now()
        row = conn.execute(
            "INSERT INTO devices (uuid, name, type, status, is_active, created_at, updated_at) "
            "VALUES ('bench-0000', 'Bench 0', 'esp32_can', 'offline', true, %s, %s) RETURNING id",
            (now, now)).fetchone()
    assert row is not None
    return int(row[0])


def measure(dsn: str, device_id: int, batches: list[int], repeat: int) -> Samples:
    """Interleaved runs: every repetition writes every (method, batch) once, in a rotated order."""
    names = list(METHODS)
    samples: Samples = {(m, b): [] for m in names for b in batches}
    start = datetime.now()
    with psycopg.connect(dsn) as conn:
        for round_no in range(repeat + 1):  # round 0 warms up caches, the table and prepared statements
            order = names[round_no % len(names):] + names[:round_no % len(names)]
            for size in batches:
                for name in order:
                    rows = make_rows(device_id, size, start)
                    write_s, total_s = timed_batch(conn, METHODS[name], rows)
                    if round_no:
                        samples[(name, size)].append((write_s, total_s))
            start += timedelta(minutes=1)
            print(f"  round {round_no}/{repeat} done", file=sys.stderr, flush=True)
        with conn.cursor() as cursor:
            stored = cursor.execute("SELECT count(*) FROM telemetry_data").fetchone()
        conn.commit()
    expected = (repeat + 1) * len(names) * sum(batches)
    if stored is None or stored[0] != expected:
        raise SystemExit(f"telemetry_data holds {stored} rows, expected {expected}")
    return samples


def us_per_row(values: list[tuple[float, float]], size: int, index: int) -> float:
    return statistics.median(v[index] for v in values) / size * 1e6


def report(samples: Samples, batches: list[int]) -> str:
    lines = []
    for index, title in ((1, "transaction (write + COMMIT), median us/row"), (0, "write only, median us/row")):
        lines.append(title)
        header = ["rows/batch", *METHODS, "executemany / copy", "values / copy"]
        table = [header]
        for size in batches:
            cell = {name: us_per_row(samples[(name, size)], size, index) for name in METHODS}
            table.append([f"{size:,}", *(f"{cell[name]:.1f}" for name in METHODS),
                          f"{cell['executemany'] / cell['copy']:.2f}x", f"{cell['values'] / cell['copy']:.2f}x"])
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        lines.extend("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in table)
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="50,500,5000", help="rows per batch, comma-separated")
    parser.add_argument("--repeat", type=int, default=15, help="timed repetitions per cell (median)")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",") if b]
    began = time.monotonic()
    with postgres_clusters() as start_cluster:
        cluster = start_cluster()
        version = cluster.psql("SHOW server_version")
        device_id = setup_database(cluster.url)
        dsn = cluster.url.replace("postgresql+psycopg://", "postgresql://")
        samples = measure(dsn, device_id, batches, args.repeat)
    print(f"PostgreSQL {version.strip()}, psycopg {psycopg.__version__} ({psycopg.pq.__impl__}), "
          f"loopback TCP, {args.repeat} repetitions, {time.monotonic() - began:.0f} s")
    print()
    print(report(samples, batches))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
