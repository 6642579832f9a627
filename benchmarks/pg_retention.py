"""PostgreSQL retention: the gateway's row deletes against daily partitions dropped whole.

Why it exists: issue #17 asks whether, on PostgreSQL, partitioning
``telemetry_data`` by day and dropping a day's partition beats the gateway's row
deletes. Both layouts are filled identically, server side, with N simulated
days of telemetry (10 devices, 15 readings per message, in time order), on a
throwaway PostgreSQL 15 cluster on a free loopback port (the test fixtures'
``postgres_clusters``). Then one day is expired in each:

- **A, row deletes**: the schema as ``autocore.schema.ensure_schema`` creates it,
  expired by the gateway's own ``Retention.step`` (2,000 rows per transaction:
  select the oldest, upsert their hourly roll-up, ``DELETE ... WHERE id IN``),
  one transaction per step with the gateway's pause in between, under a clock
  this script controls; then ``VACUUM``, which makes the freed space reusable.
- **A′**: A's table again, a later day expired in the same 2,000-row batches done
  by the server in one statement each (``DELETE ... RETURNING`` into the
  roll-up): what row deletes cost without Python in the loop.
- **B, daily partitions**: the same columns and indexes, declared
  ``PARTITION BY RANGE (timestamp)`` with one partition per day (so the primary
  key becomes ``(id, timestamp)``), expired by the same roll-up done in SQL, one
  hour per transaction, and ``DROP TABLE`` of the day's partition.

Each run measures, per layout:

1. **Quiet** (nothing else running): the expiry's time, rows/s, WAL bytes
   (``pg_current_wal_insert_lsn`` before and after), the size of the table and
   its indexes before, after and after ``VACUUM``, and the ``VACUUM`` itself.
   Autovacuum is off in the cluster, so its work is all counted there.
2. **Loaded**: a reader process does what the Config App does (the latest 50
   rows of one device, every 100 ms) and an inserter process writes what the
   gateway writes at 100 msg/s x 15 readings (a COPY of 30 rows and a COMMIT
   every 20 ms); their latencies are taken for a quiet baseline and while the
   next day expires (A: the Retention loop, then ``VACUUM``; B: roll-up + DROP,
   then another day with ``DETACH ... CONCURRENTLY``, roll-up of the detached
   table, DROP).

Every run checks that nothing is lost: the roll-ups' counts plus the raw rows
left equal the rows written, and B's hourly roll-ups equal A's.

    python benchmarks/pg_retention.py                    # 2,000,000 rows over 4 days, 3 runs
    python benchmarks/pg_retention.py --rows 400000 --runs 1
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import create_engine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root, for tests.fixtures
from autocore.gateway import RETENTION_PAUSE_S  # noqa: E402
from autocore.schema import ensure_schema  # noqa: E402
from autocore.storage.retention import BATCH_ROWS, Retention, RetentionSettings  # noqa: E402
from autocore.storage.telemetry import _COPY_TELEMETRY  # noqa: E402
from tests.fixtures.services import PostgresCluster, postgres_clusters  # noqa: E402

DEVICES = 10
#: One telemetry message's readings: (data_type, data_key, unit, base value, swing).
SIGNALS = (
    ("can_bus", "can_rpm", "rpm", 2500.0, 1800.0), ("can_bus", "can_tps", "%", 45.0, 40.0),
    ("can_bus", "can_ect", "°C", 85.0, 10.0), ("can_bus", "can_speed", "km/h", 60.0, 55.0),
    ("can_bus", "can_maf", "g/s", 12.0, 9.0), ("can_bus", "can_iat", "°C", 30.0, 8.0),
    ("can_bus", "can_map", "kPa", 60.0, 40.0), ("analog_sensor", "analog_fuel_level", "%", 55.0, 5.0),
    ("analog_sensor", "analog_oil_pressure", "kPa", 300.0, 120.0),
    ("analog_sensor", "analog_battery", "V", 13.8, 0.6), ("system_status", "cpu_temp", "°C", 48.0, 6.0),
    ("system_status", "free_heap", "B", 150000.0, 20000.0), ("system_status", "wifi_rssi", "dBm", -60.0, 10.0),
    ("gps", "gps_lat", "°", -34.6, 0.01), ("gps", "gps_lon", "°", -58.4, 0.01),
)
#: The first simulated day (midnight, naive local time as the shared database keeps it).
DAY0 = datetime(2026, 1, 5)
#: The gateway's telemetry load while a day expires: 100 msg/s x 15 readings, committed every 20 ms.
INSERT_PERIOD_S = 0.02
INSERT_ROWS = 30
#: The Config App's live view: the latest 50 rows of one device, every 100 ms.
READ_PERIOD_S = 0.1
READ_SQL = ("SELECT timestamp, data_type, data_key, data_value, unit FROM telemetry_data "
            "WHERE device_id = %s ORDER BY timestamp DESC LIMIT 50")
#: A value the roll-up averages: what Python's float() reads in the gateway's rows.
NUMBER_RE = r"^\s*[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?\s*$"
MB = 1024 * 1024

# -- schema and data ---------------------------------------------------------------------

#: Layout B: the columns, foreign key and indexes of autocore.schema.telemetry_data, declared
#: partitioned by day; a primary key of a partitioned table must include the partition key.
PARTITIONED_TABLE = """
CREATE TABLE telemetry_data (
    id SERIAL NOT NULL,
    timestamp TIMESTAMP WITHOUT TIME ZONE NOT NULL,
    device_id INTEGER NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    data_type VARCHAR(50) NOT NULL,
    data_key VARCHAR(100) NOT NULL,
    data_value TEXT NOT NULL,
    unit VARCHAR(20),
    PRIMARY KEY (id, timestamp)
) PARTITION BY RANGE (timestamp);
CREATE INDEX idx_telemetry_type ON telemetry_data (data_type);
CREATE INDEX idx_telemetry_key ON telemetry_data (data_key);
CREATE INDEX idx_telemetry_timestamp ON telemetry_data (timestamp, device_id);
"""

#: Raw rows (from ``{source}``) averaged into telemetry_hourly, merged as Retention's upsert
#: merges (counts add, min/max combine, averages weighted by the counts).
ROLLUP_SQL = f"""
INSERT INTO telemetry_hourly AS old
    (device_id, data_type, data_key, hour_timestamp, avg_value, min_value, max_value, count, unit)
SELECT device_id, data_type, data_key, date_trunc('hour', timestamp), avg(v), min(v), max(v), count(*),
       min(unit)
FROM (SELECT device_id, data_type, data_key, timestamp, unit,
             CASE WHEN data_value ~ '{NUMBER_RE}' THEN data_value::float8 END AS v
      FROM {{source}}) AS raw
GROUP BY device_id, data_type, data_key, date_trunc('hour', timestamp)
ON CONFLICT (device_id, data_type, data_key, hour_timestamp) DO UPDATE SET
    avg_value = CASE WHEN old.avg_value IS NULL THEN excluded.avg_value
                     WHEN excluded.avg_value IS NULL THEN old.avg_value
                     ELSE (old.avg_value * old.count + excluded.avg_value * excluded.count)
                          / (old.count + excluded.count) END,
    min_value = least(old.min_value, excluded.min_value),
    max_value = greatest(old.max_value, excluded.max_value),
    count = old.count + excluded.count,
    unit = coalesce(old.unit, excluded.unit)
"""

#: ``rows_per_day`` rows of one day: messages in time order, devices taking turns, 15 readings each.
FILL_SQL = """
INSERT INTO telemetry_data (timestamp, device_id, data_type, data_key, data_value, unit)
SELECT %(start)s::timestamp + (m.n * 86400000000 / %(per_day)s) * interval '1 microsecond',
       %(first_device)s + m.n %% %(devices)s,
       s.data_type, s.data_key,
       round((s.base + s.swing * (((m.n * 37 + s.k * 11) %% 101) - 50) / 50.0)::numeric, 2)::text, s.unit
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS m(n)
CROSS JOIN LATERAL (VALUES {signals}) AS s(k, data_type, data_key, unit, base, swing)
"""


def partition_name(day: datetime) -> str:
    return f"telemetry_data_p{day:%Y%m%d}"


def signals_sql() -> str:
    def literal(text: str) -> str:
        return "'" + text.replace("'", "''").replace("%", "%%") + "'"  # %% : FILL_SQL has parameters
    return ", ".join(f"({k}, {literal(t)}, {literal(key)}, {literal(u)}, {base}::float8, {swing}::float8)"
                     for k, (t, key, u, base, swing) in enumerate(SIGNALS))


@dataclass
class Scale:
    rows: int
    days: int

    @property
    def messages_per_day(self) -> int:
        return max(DEVICES, self.rows // self.days // len(SIGNALS))

    @property
    def rows_per_day(self) -> int:
        return self.messages_per_day * len(SIGNALS)


def dsn_of(cluster: PostgresCluster, database: str) -> str:
    return f"postgresql://postgres@127.0.0.1:{cluster.port}/{database}"


def create_database(cluster: PostgresCluster, layout: str, scale: Scale, run: int) -> tuple[str, list[int], int]:
    """A fresh database with the gateway's schema in the given layout, filled.

    Returns its DSN, the devices' ids and the WAL bytes the fill wrote per day.
    """
    name = f"bench_{layout.lower()}{run}"
    with psycopg.connect(dsn_of(cluster, "postgres"), autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {name}")
    dsn = dsn_of(cluster, name)
    if layout == "B":  # the partitioned table first: ensure_schema then leaves it as it is
        engine = create_engine(dsn.replace("postgresql://", "postgresql+psycopg://"))
        try:
            from autocore.schema import metadata
            with engine.begin() as conn:
                metadata.create_all(conn, tables=[metadata.tables["devices"]])
        finally:
            engine.dispose()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(PARTITIONED_TABLE)
            for day in range(scale.days + 2):  # today's partition and tomorrow's, created ahead
                start = DAY0 + timedelta(days=day)
                conn.execute(f"CREATE TABLE {partition_name(start)} PARTITION OF telemetry_data "
                             f"FOR VALUES FROM ('{start:%Y-%m-%d}') TO ('{start + timedelta(days=1):%Y-%m-%d}')")
    engine = create_engine(dsn.replace("postgresql://", "postgresql+psycopg://"))
    try:
        ensure_schema(engine)
    finally:
        engine.dispose()
    with psycopg.connect(dsn, autocommit=True) as conn:
        now = DAY0
        devices = [int(row[0]) for row in conn.execute(
            "INSERT INTO devices (uuid, name, type, status, is_active, created_at, updated_at) "
            "SELECT 'bench-' || lpad(n::text, 4, '0'), 'Bench ' || n, 'esp32_can', 'offline', true, %s, %s "
            "FROM generate_series(1, %s) AS n RETURNING id", (now, now, DEVICES)).fetchall()]
        assert devices == list(range(devices[0], devices[0] + DEVICES))
        check_columns(conn)
        fill = FILL_SQL.format(signals=signals_sql())
        per_day = scale.messages_per_day
        lsn = wal_lsn(conn)
        for day in range(scale.days):
            conn.execute(fill, {"start": DAY0, "per_day": per_day, "first_device": devices[0],
                                "devices": DEVICES, "first": day * per_day, "last": (day + 1) * per_day - 1})
        fill_wal = wal_since(conn, lsn) // scale.days
        conn.execute("VACUUM ANALYZE")  # what autovacuum would long have done to days-old rows
        conn.execute("CHECKPOINT")
    return dsn, devices, fill_wal


def check_columns(conn: psycopg.Connection[Any]) -> None:
    """Both layouts hold the columns of autocore.schema.telemetry_data, with the same types."""
    from autocore.schema import telemetry_data
    found = conn.execute("SELECT column_name, data_type, is_nullable FROM information_schema.columns "
                         "WHERE table_name = 'telemetry_data' ORDER BY ordinal_position").fetchall()
    assert [name for name, _, _ in found] == [c.name for c in telemetry_data.columns], found
    assert [nullable == "YES" for _, _, nullable in found] == [c.nullable for c in telemetry_data.columns], found


def drop_database(cluster: PostgresCluster, dsn: str) -> None:
    name = dsn.rsplit("/", 1)[1]
    with psycopg.connect(dsn_of(cluster, "postgres"), autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# -- measurements ------------------------------------------------------------------------


def wal_lsn(conn: psycopg.Connection[Any]) -> str:
    return str(conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0])  # type: ignore[index]


def wal_since(conn: psycopg.Connection[Any], lsn: str) -> int:
    return int(conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %s)",  # type: ignore[index]
                            (lsn,)).fetchone()[0])


#: telemetry_data's heap tables: itself (A) or its partitions (B).
HEAPS = ("SELECT oid FROM pg_class WHERE oid = 'telemetry_data'::regclass AND relkind = 'r' "
         "UNION ALL SELECT inhrelid FROM pg_inherits WHERE inhparent = 'telemetry_data'::regclass")


def table_bytes(conn: psycopg.Connection[Any]) -> int:
    """telemetry_data with its indexes and TOAST, every partition included."""
    return int(conn.execute(f"SELECT coalesce(sum(pg_total_relation_size(oid)), 0) "  # type: ignore[index]
                            f"FROM ({HEAPS}) AS heaps").fetchone()[0])


def reusable_bytes(conn: psycopg.Connection[Any]) -> int:
    """Free space the free space map offers inserts in telemetry_data's heaps."""
    conn.execute("CREATE EXTENSION IF NOT EXISTS pg_freespacemap")
    return int(conn.execute(f"SELECT coalesce(sum(f.avail), 0) FROM ({HEAPS}) AS heaps, "  # type: ignore[index]
                            f"pg_freespace(heaps.oid::regclass) AS f").fetchone()[0])


def count_rows(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    raw = conn.execute("SELECT count(*) FROM telemetry_data").fetchone()[0]  # type: ignore[index]
    rolled = conn.execute("SELECT coalesce(sum(count), 0) FROM telemetry_hourly").fetchone()[0]  # type: ignore[index]
    return int(raw), int(rolled)


def hourly_before(conn: psycopg.Connection[Any], until: datetime) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in conn.execute(
        "SELECT d.uuid, h.data_type, h.data_key, h.hour_timestamp, h.count, h.avg_value, h.min_value, "
        "h.max_value, h.unit FROM telemetry_hourly h JOIN devices d ON d.id = h.device_id "
        "WHERE h.hour_timestamp < %s ORDER BY 1, 2, 3, 4", (until,)).fetchall()]


def same_rollups(a: list[tuple[Any, ...]], b: list[tuple[Any, ...]]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x[:5] != y[:5] or x[8] != y[8]:
            return False
        if not all(math.isclose(u, v, rel_tol=1e-9, abs_tol=1e-9) for u, v in zip(x[5:8], y[5:8])):
            return False
    return True


def expire_rows(dsn: str, scale: Scale, day: int) -> dict[str, Any]:
    """Layout A: the gateway's Retention loop, one step per transaction, until day ``day`` is gone."""
    engine = create_engine(dsn.replace("postgresql://", "postgresql+psycopg://"), pool_size=1)
    keep_s = 2 * 86400.0
    cutoff = DAY0 + timedelta(days=day + 1)  # everything before the end of that day has expired
    retention = Retention(engine, RetentionSettings(telemetry_s=keep_s),
                          clock=lambda: cutoff + timedelta(seconds=keep_s))
    steps: list[float] = []
    try:
        started = time.perf_counter()
        while True:
            begun = time.perf_counter()
            with engine.begin() as conn:
                removed = retention.step(conn)
            steps.append(time.perf_counter() - begun)
            if not removed:
                break
            time.sleep(RETENTION_PAUSE_S)  # the gateway's telemetry commits run in between
        wall = time.perf_counter() - started
    finally:
        engine.dispose()
    removed = retention.removed["telemetry"]
    if removed != scale.rows_per_day:
        raise SystemExit(f"Retention removed {removed:,} rows, expected the day's {scale.rows_per_day:,}")
    tenth = max(1, len(steps) // 10)
    return {"seconds": wall, "in_transactions_s": sum(steps), "batches": len(steps) - 1, "rows": removed,
            "first_batches_ms": statistics.median(steps[:tenth]) * 1e3,
            "last_batches_ms": statistics.median(steps[-tenth - 1:-1] or steps) * 1e3}


#: Layout A, server side: the same 2,000-row batch as Retention's, in one statement.
SQL_BATCH = ("WITH gone AS (DELETE FROM telemetry_data WHERE id IN (SELECT id FROM telemetry_data "
             "WHERE timestamp < %s ORDER BY timestamp LIMIT %s) RETURNING *) " + ROLLUP_SQL.format(source="gone"))


def expire_rows_in_sql(dsn: str, scale: Scale, day: int) -> dict[str, Any]:
    """Layout A′: Retention's batches done by the server (no rows through Python), same pause."""
    cutoff = DAY0 + timedelta(days=day + 1)
    steps: list[float] = []
    with psycopg.connect(dsn) as conn:
        before = count_rows(conn)[0]
        conn.commit()
        started = time.perf_counter()
        while True:
            begun = time.perf_counter()
            groups = conn.execute(SQL_BATCH, (cutoff, BATCH_ROWS)).rowcount
            conn.commit()
            steps.append(time.perf_counter() - begun)
            if not groups:
                break
            time.sleep(RETENTION_PAUSE_S)
        wall = time.perf_counter() - started
        removed = before - count_rows(conn)[0]
        conn.commit()
    if removed != scale.rows_per_day:
        raise SystemExit(f"the SQL batches removed {removed:,} rows, expected the day's {scale.rows_per_day:,}")
    return {"seconds": wall, "in_transactions_s": sum(steps), "batches": len(steps) - 1, "rows": removed}


def roll_up_hours(conn: psycopg.Connection[Any], table: str, day: datetime) -> None:
    """The day's roll-up, one hour per transaction (each reads 1/24 of the day's partition)."""
    sql = ROLLUP_SQL.format(source=f"{table} WHERE timestamp >= %s AND timestamp < %s")
    for hour in range(24):
        start = day + timedelta(hours=hour)
        with conn.transaction():
            conn.execute(sql, (start, start + timedelta(hours=1)))


def expire_partition(dsn: str, day: int, concurrently: bool) -> dict[str, Any]:
    """Layout B: roll the day up and drop its partition.

    Plain: roll up, then ``DROP TABLE`` (the parent's ACCESS EXCLUSIVE lock for a moment).
    Concurrently: ``DETACH PARTITION ... CONCURRENTLY`` first (no new row can reach the day
    afterwards), roll up the detached table, then drop it.
    """
    start = DAY0 + timedelta(days=day)
    name = partition_name(start)
    with psycopg.connect(dsn, autocommit=True) as conn:
        began = time.perf_counter()
        if concurrently:
            conn.execute(f"ALTER TABLE telemetry_data DETACH PARTITION {name} CONCURRENTLY")
            detached = time.perf_counter()
            roll_up_hours(conn, name, start)
        else:
            roll_up_hours(conn, "telemetry_data", start)
            detached = time.perf_counter()
        rolled = time.perf_counter()
        conn.execute(f"DROP TABLE {name}")
        done = time.perf_counter()
    if concurrently:
        return {"seconds": done - began, "rollup_s": rolled - detached, "drop_s": (detached - began) + (done - rolled)}
    return {"seconds": done - began, "rollup_s": rolled - began, "drop_s": done - rolled}


def quiet_expiry(dsn: str, layout: str, scale: Scale, day: int = 0) -> dict[str, Any]:
    """A day expires with nothing else running: time, WAL, sizes, VACUUM (layout "A'": A, in SQL)."""
    result: dict[str, Any] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CHECKPOINT")  # every layout starts alike: its first change of a page is logged whole
        result["size_before"] = table_bytes(conn)
        reusable_before = reusable_bytes(conn)
        lsn = wal_lsn(conn)
        if layout == "A":
            result.update(expire_rows(dsn, scale, day))
        elif layout == "A'":
            result.update(expire_rows_in_sql(dsn, scale, day))
        else:
            result.update(expire_partition(dsn, day, concurrently=False))
            result["rows"] = scale.rows_per_day
        result["wal"] = wal_since(conn, lsn)
        result["size_after"] = table_bytes(conn)
        lsn = wal_lsn(conn)
        began = time.perf_counter()
        conn.execute("VACUUM telemetry_data, telemetry_hourly")
        result["vacuum_s"] = time.perf_counter() - began
        result["vacuum_wal"] = wal_since(conn, lsn)
        result["size_vacuumed"] = table_bytes(conn)
        result["reusable"] = reusable_bytes(conn) - reusable_before  # what this day's expiry freed
    result["rows_per_s"] = result["rows"] / result["seconds"]
    return result


# -- concurrent load ---------------------------------------------------------------------


def reader_process(dsn: str, device_id: int, stop: Any, results: Any) -> None:
    """The Config App's live view; reports (start, latency) in monotonic seconds."""
    samples: list[tuple[float, float]] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        tick = time.monotonic()
        while not stop.is_set():
            began = time.monotonic()
            rows = conn.execute(READ_SQL, (device_id,)).fetchall()
            samples.append((began, time.monotonic() - began))
            assert len(rows) == 50
            tick += READ_PERIOD_S
            time.sleep(max(0.0, tick - time.monotonic()))
    results.put(("reader", samples))


def inserter_process(dsn: str, devices: list[int], scale: Scale, stop: Any, results: Any) -> None:
    """The gateway's telemetry commits: COPY 30 rows + COMMIT every 20 ms, stamped 'now' (after the filled days)."""
    samples: list[tuple[float, float]] = []
    now0 = DAY0 + timedelta(days=scale.days)
    written = 0
    with psycopg.connect(dsn) as conn:
        t0 = tick = time.monotonic()
        message = 0
        while not stop.is_set():
            stamp = now0 + timedelta(seconds=time.monotonic() - t0)
            rows = []
            while len(rows) < INSERT_ROWS:
                device = devices[message % len(devices)]
                rows.extend((stamp, device, t, key, f"{base:.1f}", unit) for t, key, unit, base, _ in SIGNALS)
                message += 1
            began = time.monotonic()
            with conn.cursor() as cursor, cursor.copy(_COPY_TELEMETRY) as copy:
                for row in rows:
                    copy.write_row(row)
            conn.commit()
            samples.append((began, time.monotonic() - began))
            written += len(rows)
            tick += INSERT_PERIOD_S
            time.sleep(max(0.0, tick - time.monotonic()))
    results.put(("inserter", samples, written))


@dataclass
class Window:
    name: str
    start: float
    end: float


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def loaded_expiry(dsn: str, layout: str, scale: Scale, devices: list[int], baseline_s: float) -> dict[str, Any]:
    """Reader and inserter running; a quiet baseline, then day 1 (and for B day 2) expires."""
    ctx = mp.get_context("spawn")
    stop, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=reader_process, args=(dsn, devices[0], stop, results), daemon=True),
             ctx.Process(target=inserter_process, args=(dsn, devices, scale, stop, results), daemon=True)]
    windows: list[Window] = []
    out: dict[str, Any] = {}
    for proc in procs:
        proc.start()
    try:
        time.sleep(1.0)  # connections made, first samples in
        mark = time.monotonic()
        time.sleep(baseline_s)
        windows.append(Window("baseline", mark, time.monotonic()))
        if layout == "A":
            mark = time.monotonic()
            out["expiry"] = expire_rows(dsn, scale, 1)
            windows.append(Window("expiry", mark, time.monotonic()))
            with psycopg.connect(dsn, autocommit=True) as conn:
                mark = time.monotonic()
                conn.execute("VACUUM telemetry_data, telemetry_hourly")
                windows.append(Window("vacuum", mark, time.monotonic()))
        else:
            mark = time.monotonic()
            out["expiry"] = expire_partition(dsn, 1, concurrently=False)
            windows.append(Window("expiry", mark, time.monotonic()))
            time.sleep(1.0)
            mark = time.monotonic()
            out["expiry_detach"] = expire_partition(dsn, 2, concurrently=True)
            windows.append(Window("expiry_detach", mark, time.monotonic()))
        time.sleep(0.5)
    finally:
        stop.set()
        collected: dict[str, Any] = {}
        for _ in procs:
            try:
                item = results.get(timeout=30)
            except Exception:  # noqa: BLE001 - a child that died reports nothing; said below
                break
            collected[item[0]] = item
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
    if set(collected) != {"reader", "inserter"}:
        raise SystemExit(f"a load process failed (got {sorted(collected)})")
    out["inserted"] = collected["inserter"][2]
    for who in ("reader", "inserter"):
        samples = collected[who][1]
        for window in windows:
            # a sample belongs to a window when it overlaps it
            inside = [lat * 1e3 for began, lat in samples if began < window.end and began + lat > window.start]
            out[f"{who}_{window.name}_p50_ms"] = percentile(inside, 0.5)
            out[f"{who}_{window.name}_p99_ms"] = percentile(inside, 0.99)
            out[f"{who}_{window.name}_max_ms"] = max(inside) if inside else float("nan")
            out[f"{who}_{window.name}_n"] = len(inside)
    for window in windows:
        out[f"{window.name}_s"] = window.end - window.start
    return out


# -- runs --------------------------------------------------------------------------------


def run_layout(cluster: PostgresCluster, layout: str, scale: Scale, run: int, baseline_s: float
               ) -> tuple[dict[str, Any], list[tuple[Any, ...]]]:
    began = time.monotonic()
    dsn, devices, fill_wal = create_database(cluster, layout, scale, run)
    filled = time.monotonic()
    try:
        result = {"layout": layout, "run": run, "fill_s": filled - began, "fill_wal_per_day": fill_wal}
        result["quiet"] = quiet_expiry(dsn, layout, scale)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
        result["loaded"] = loaded_expiry(dsn, layout, scale, devices, baseline_s)
        if layout == "A":  # day 2 (B's DETACH day) goes in server-side batches: the deletes without Python
            result["quiet_sql"] = quiet_expiry(dsn, "A'", scale, day=2)
        with psycopg.connect(dsn, autocommit=True) as conn:
            raw, rolled = count_rows(conn)
            written = scale.rows_per_day * scale.days + result["loaded"]["inserted"]
            if raw + rolled != written:
                raise SystemExit(f"layout {layout}: {raw:,} raw + {rolled:,} rolled up != {written:,} written")
            rollups = hourly_before(conn, DAY0 + timedelta(days=3))
        result["seconds"] = time.monotonic() - began
        print(f"  run {run} layout {layout}: fill {result['fill_s']:.0f} s, quiet expiry "
              f"{result['quiet']['seconds']:.2f} s, total {result['seconds']:.0f} s", file=sys.stderr, flush=True)
        return result, rollups
    finally:
        drop_database(cluster, dsn)


def median_of(results: list[dict[str, Any]], *path: str) -> float:
    values = []
    for result in results:
        value: Any = result
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, (int, float)) and not math.isnan(value):
            values.append(float(value))
    return statistics.median(values) if values else float("nan")


def fmt(value: float, digits: int = 1) -> str:
    if math.isnan(value):
        return "–"
    return f"{value:,.{digits}f}"


def ratio(a: float, b: float) -> str:
    if math.isnan(a) or math.isnan(b) or b <= 0:
        return "–"
    return f"{a / b:,.0f}×" if a / b >= 10 else f"{a / b:,.1f}×"


def report(results: list[dict[str, Any]], scale: Scale) -> str:
    a = [r for r in results if r["layout"] == "A"]
    b = [r for r in results if r["layout"] == "B"]

    def med(*path: str) -> tuple[float, float, float]:
        """Medians for A, A' (A's "quiet_sql" in place of "quiet") and B."""
        return (median_of(a, *path), median_of(a, "quiet_sql", *path[1:]) if path[0] == "quiet" else math.nan,
                median_of(b, *path))

    lines = [f"| expiring one day ({scale.rows_per_day:,} rows), median of {len(b)} runs | "
             "A: row deletes, `Retention.step` | A′: the same batches in SQL | "
             "B: daily partitions, roll-up + DROP | A ÷ B |",
             "|---|---|---|---|---|"]

    def row(label: str, cells: tuple[str, str, str], ratio_ab: str = "") -> None:
        lines.append(f"| {label} | {' | '.join(cells)} | {ratio_ab} |")

    def numbers(label: str, values: tuple[float, float, float], digits: int = 1, scale_by: float = 1.0,
                with_ratio: bool = True) -> None:
        va, vs, vb = (v / scale_by for v in values)
        row(label, (fmt(va, digits), fmt(vs, digits), fmt(vb, digits)), ratio(va, vb) if with_ratio else "")

    quiet_s, quiet_wal = med("quiet", "seconds"), med("quiet", "wal")
    vacuum_s, vacuum_wal = med("quiet", "vacuum_s"), med("quiet", "vacuum_wal")
    numbers("time to expire the day, s", quiet_s, 2)
    work = med("quiet", "in_transactions_s")
    rollup, drop = median_of(b, "quiet", "rollup_s"), median_of(b, "quiet", "drop_s")
    row("… in transactions (A, A′) / roll-up + DROP (B), s",
        (fmt(work[0], 2), fmt(work[1], 2), f"{fmt(rollup, 2)} + {fmt(drop * 1e3, 0)} ms"))
    numbers("rows expired per s", med("quiet", "rows_per_s"), 0, with_ratio=False)
    numbers("WAL written by the expiry, MB", quiet_wal, 1, MB)
    fill_wal = (median_of(a, "fill_wal_per_day"), math.nan, median_of(b, "fill_wal_per_day"))
    numbers("(for scale: WAL written to insert that day, MB)", fill_wal, 1, MB, with_ratio=False)
    first, last = median_of(a, "quiet", "first_batches_ms"), median_of(a, "quiet", "last_batches_ms")
    row("one batch of 2,000 rows, first tenth → last tenth of the day, ms", (f"{fmt(first, 0)} → {fmt(last, 0)}",
        "–", "–"))
    sizes = [med("quiet", key) for key in ("size_before", "size_after", "size_vacuumed")]
    row("telemetry_data + indexes: before → after expiry → after VACUUM, MB",
        tuple(" → ".join(fmt(size[i] / MB, 0) for size in sizes) for i in range(3)))  # type: ignore[arg-type]
    reusable = med("quiet", "reusable")
    row("space freed", (f"{fmt(reusable[0] / MB, 0)} MB of heap reusable after VACUUM; files keep their size",
                        f"{fmt(reusable[1] / MB, 0)} MB, likewise",
                        f"{fmt((sizes[0][2] - sizes[1][2]) / MB, 0)} MB returned to the file system at once"))
    row("VACUUM telemetry_data, telemetry_hourly afterwards, s",
        (fmt(vacuum_s[0], 2), fmt(vacuum_s[1], 2), f"not needed ({fmt(vacuum_s[2], 2)} if run)"))
    row("… its WAL, MB", (fmt(vacuum_wal[0] / MB, 1), fmt(vacuum_wal[1] / MB, 1), "–"))
    total_s = (quiet_s[0] + vacuum_s[0], quiet_s[1] + vacuum_s[1], quiet_s[2])
    total_wal = (quiet_wal[0] + vacuum_wal[0], quiet_wal[1] + vacuum_wal[1], quiet_wal[2])
    numbers("**expiry (+ VACUUM for A), s**", total_s, 2)
    numbers("**expiry (+ VACUUM for A), WAL MB**", total_wal, 1, MB)
    loaded = (median_of(a, "loaded", "expiry", "seconds"), math.nan, median_of(b, "loaded", "expiry", "seconds"))
    numbers("time to expire a day under the load below, s", loaded, 2)
    for who, label in (("reader", "Config App reader (latest 50 rows of a device, every 100 ms)"),
                       ("inserter", f"gateway inserts (COPY {INSERT_ROWS} rows + COMMIT, every 20 ms)")):
        cells = []
        for layout in (a, b):
            base, during = (median_of(layout, "loaded", f"{who}_{w}_p99_ms") for w in ("baseline", "expiry"))
            top = median_of(layout, "loaded", f"{who}_expiry_max_ms")
            cells.append(f"{fmt(base)} → {fmt(during)} (max {fmt(top)})")
        row(f"{label}: p99 ms, baseline → during the expiry", (cells[0], "–", cells[1]))
        vac = (median_of(a, "loaded", f"{who}_vacuum_p99_ms"), median_of(a, "loaded", f"{who}_vacuum_max_ms"))
        det = (median_of(b, "loaded", f"{who}_expiry_detach_p99_ms"),
               median_of(b, "loaded", f"{who}_expiry_detach_max_ms"))
        row("… during A's VACUUM / during B with DETACH … CONCURRENTLY, p99 ms",
            (f"{fmt(vac[0])} (max {fmt(vac[1])})", "–", f"{fmt(det[0])} (max {fmt(det[1])})"))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="raw telemetry rows filled, all days")
    parser.add_argument("--days", type=int, default=4, help="simulated days they cover (at least 4)")
    parser.add_argument("--runs", type=int, default=3, help="runs per layout (medians)")
    parser.add_argument("--baseline", type=float, default=10.0, help="seconds of load before the expiry")
    parser.add_argument("--json", type=Path, help="append one JSON line per run and layout")
    args = parser.parse_args(argv)
    if args.days < 4:
        parser.error("--days must be at least 4: three days expire and one stays")
    scale = Scale(args.rows, args.days)
    began = time.monotonic()
    results: list[dict[str, Any]] = []
    with postgres_clusters() as start_cluster:
        cluster = start_cluster()
        version = cluster.psql("SHOW server_version").strip()
        # Autovacuum off: the VACUUM each layout needs is run, and counted, by this script.
        cluster.psql("ALTER SYSTEM SET autovacuum = off")
        cluster.psql("SELECT pg_reload_conf()")
        for run in range(1, args.runs + 1):
            rollups: dict[str, list[tuple[Any, ...]]] = {}
            for layout in ("A", "B") if run % 2 else ("B", "A"):
                result, rollups[layout] = run_layout(cluster, layout, scale, run, args.baseline)
                results.append(result)
                if args.json:
                    with args.json.open("a") as out:
                        out.write(json.dumps({"mode": "pg-retention", "rows_per_day": scale.rows_per_day,
                                              **result}) + "\n")
            if not same_rollups(rollups["A"], rollups["B"]):
                raise SystemExit(f"run {run}: the partitions' roll-ups differ from Retention's")
    per_s = scale.rows_per_day / 86400
    print(f"PostgreSQL {version}, psycopg {psycopg.__version__}, loopback TCP, autovacuum off; "
          f"{scale.rows_per_day * scale.days:,} rows over {scale.days} days ({scale.rows_per_day:,} a day, "
          f"{per_s:.1f} rows/s = 1/{1500 / per_s:,.0f} of 100 msg/s x 15 readings), {DEVICES} devices, "
          f"{len(SIGNALS)} readings per message; {args.runs} runs, {time.monotonic() - began:.0f} s")
    print()
    print(report(results, scale))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
