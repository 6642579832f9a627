"""What a durable commit costs: SQLite ``synchronous=FULL`` against an explicit WAL fsync.

Why it exists: an acknowledged QoS 1 message must be on stable storage before
its PUBACK (``storage/policy.py``). Two ways give that in WAL mode:

- ``synchronous=FULL``: SQLite syncs the WAL at every commit;
- ``synchronous=NORMAL`` plus ``os.fsync`` of the ``-wal`` file after the commits
  that carry acknowledgements (QoS 0-only commits would skip it).

Both are measured here side by side, with ``NORMAL`` alone (not durable) as the
floor, on the original schema's ``telemetry_data`` and its three indexes, in a
file on the disk this runs from. Per configuration: time per commit (median of
``--runs`` runs) and bytes written per row (``write_bytes`` of this process).

    python benchmarks/sync_cost.py [--rows 40 750 5000] [--commits 200] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE devices (id INTEGER PRIMARY KEY, uuid TEXT);
CREATE TABLE telemetry_data (
    id INTEGER PRIMARY KEY, timestamp DATETIME NOT NULL, device_id INTEGER NOT NULL REFERENCES devices(id),
    data_type VARCHAR(50) NOT NULL, data_key VARCHAR(100) NOT NULL, data_value TEXT NOT NULL, unit VARCHAR(20));
CREATE INDEX idx_telemetry_data_type ON telemetry_data(data_type);
CREATE INDEX idx_telemetry_data_key ON telemetry_data(data_key);
CREATE INDEX idx_telemetry_timestamp ON telemetry_data(timestamp);
"""
KEYS = [("can_bus", f"can_signal_{n}", "rpm") for n in range(12)] + [("gps", "gps_lat", None),
                                                                      ("gps", "gps_lon", None),
                                                                      ("system_status", "uptime", "s")]
CONFIGS = ("NORMAL (not durable)", "FULL", "NORMAL + fsync(wal)")


def write_bytes() -> int:
    with open("/proc/self/io") as io:
        for line in io:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    return 0


def run(config: str, rows_per_commit: int, commits: int) -> tuple[float, float]:
    """Return (median seconds per commit, bytes written per row)."""
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent.parent) as folder:
        path = Path(folder) / "sync.db"
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=" + ("FULL" if config == "FULL" else "NORMAL"))
        conn.executescript(SCHEMA)
        conn.execute("INSERT INTO devices VALUES (1, 'esp32-can-001')")
        wal = os.open(str(path) + "-wal", os.O_RDONLY)
        sync = config.endswith("fsync(wal)")
        sql = "INSERT INTO telemetry_data (timestamp, device_id, data_type, data_key, data_value, unit) VALUES (?,?,?,?,?,?)"
        os.sync()
        before = write_bytes()
        times = []
        for commit in range(commits):
            stamp = f"2026-12-05 00:00:{commit % 60:02d}.{commit:06d}"
            rows = [(stamp, 1, data_type, key, f"{commit}.{n}", unit)
                    for n in range(rows_per_commit) for data_type, key, unit in [KEYS[n % len(KEYS)]]]
            started = time.perf_counter()
            conn.execute("BEGIN")
            conn.executemany(sql, rows)
            conn.execute("COMMIT")
            if sync:
                os.fsync(wal)
            times.append(time.perf_counter() - started)
        conn.close()
        os.close(wal)
        os.sync()
        written = write_bytes() - before
    return statistics.median(times), written / (rows_per_commit * commits)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[40, 750, 5000], help="rows per commit")
    parser.add_argument("--commits", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    print("| rows/commit | configuration | time per commit (median) | bytes written per row |")
    print("|---|---|---|---|")
    for rows in args.rows:
        results: dict[str, list[tuple[float, float]]] = {config: [] for config in CONFIGS}
        for _ in range(args.runs):  # interleaved, so drift on a shared machine hits all alike
            for config in CONFIGS:
                results[config].append(run(config, rows, max(20, args.commits * 40 // rows)))
        for config in CONFIGS:
            seconds = statistics.median(r[0] for r in results[config])
            per_row = statistics.median(r[1] for r in results[config])
            print(f"| {rows:,} | {config} | {seconds * 1e3:.2f} ms | {per_row:,.0f} B |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
