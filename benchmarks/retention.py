"""What retention costs at a steady load: CPU, bytes written, file size, and a reader's latency.

Why it exists: retention (``storage/retention.py``) deletes as many rows as
arrive, rolled up first, while the gateway stores telemetry and the Config
App reads. This runs ``benchmarks/wear.py``'s measurement (``write_bytes`` per
stored reading with the checkpoint debt, CPU per message) twice per round,
interleaved: retention off (``AUTOCORE_TELEMETRY_RETENTION=0``) and on, with a
retention of ``--retention`` seconds and a database prefilled with exactly that
window of readings at the offered rate, so rows expire as fast as they arrive
from the first second: the steady state of a gateway that has run for a week.

Meanwhile a Config-App-like reader (its own SQLite connection) asks for the
latest 50 rows of one device every 100 ms and records each query's time, and
the database file (plus WAL) is sampled once a second: with retention the file
must stay flat.

The retention must outlast the run (warm-up, window and drain): the rows
expiring are the prefill's, at the offered rate, and every reading the run
stores is still there to be counted when it ends.

    python benchmarks/retention.py                       # 500 msg/s, 200 s retention, 3 rounds
    python benchmarks/retention.py --load 10x10 --retention 150 --window 60
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import wear  # noqa: E402
from benchmarks.e2e import percentile  # noqa: E402

#: The Config App's live view: the latest rows of one device.
READER_SQL = ("SELECT id, timestamp, data_type, data_key, data_value, unit FROM telemetry_data "
              "WHERE device_id = ? ORDER BY timestamp DESC LIMIT 50")
READER_PERIOD_S = 0.1


class Observer(threading.Thread):
    """Finds the run's database in ``folder``, then reads like the Config App and samples file sizes."""

    def __init__(self, folder: Path) -> None:
        super().__init__(daemon=True)
        self.folder = folder
        self.stop = threading.Event()
        self.latencies_ms: list[float] = []
        self.errors: list[str] = []
        self.sizes: list[tuple[float, int]] = []  # (monotonic time, db + wal bytes)

    def run(self) -> None:
        db_path = None
        while db_path is None and not self.stop.wait(0.05):
            found = sorted(self.folder.glob("autocore-wear-*/autocore.db"))
            db_path = found[-1] if found else None
        if db_path is None:
            return
        time.sleep(2.0)  # the gateway starts and the prefill is in place
        conn = sqlite3.connect(db_path, timeout=10)  # as the Config App opens it
        device = conn.execute("SELECT id FROM devices WHERE uuid LIKE 'bench-%' ORDER BY id").fetchone()[0]
        next_size = 0.0
        while not self.stop.wait(READER_PERIOD_S):
            started = time.perf_counter()
            try:
                conn.execute(READER_SQL, (device,)).fetchall()
            except sqlite3.Error as exc:
                self.errors.append(str(exc))
                continue
            self.latencies_ms.append((time.perf_counter() - started) * 1000)
            if time.monotonic() >= next_size:
                next_size = time.monotonic() + 1.0
                self.sizes.append((time.monotonic(), sum(wear.file_sizes(db_path)[k] for k in ("db", "wal"))))
        conn.close()


def one_run(load: wear.Load, retention_s: float, enabled: bool, args: argparse.Namespace,
            folder: Path, fs: str) -> tuple[wear.WearResult, Observer]:
    readings_per_message = len(wear.message_rows(wear.PAYLOADS["full"], "bench-0000"))
    prefill = int(load.per_s * readings_per_message * retention_s)
    env = {"AUTOCORE_TELEMETRY_RETENTION": f"{retention_s:g}" if enabled else "0"}
    config = f"retention {retention_s:g} s" if enabled else "retention off"
    run_folder = Path(tempfile.mkdtemp(prefix="retention-", dir=folder))
    observer = Observer(run_folder)
    observer.start()
    saved = wear.PREFILL_SPAN_S
    wear.PREFILL_SPAN_S = retention_s  # the prefill spans exactly the retention window
    try:
        result = wear.run_once(load, config, env, 0, "full", "compiled", args.warmup, args.window, prefill,
                               run_folder, fs, keep=False)
    finally:
        wear.PREFILL_SPAN_S = saved
        observer.stop.set()
        observer.join(10)
    return result, observer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load", default="50x10", help="DEVICESxHZ (default 50x10: 500 msg/s)")
    parser.add_argument("--retention", type=float, default=200.0,
                        help="retention under test, s (longer than warm-up + window + drain)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--window", type=float, default=45.0)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--soak", type=float, default=0.0,
                        help="instead: run retention for this many seconds and print the file's size "
                             "once a minute (rows expire during the run: no loss or per-reading figures)")
    parser.add_argument("--raw", action="store_true",
                        help="instead: the floor, plain sqlite3 inserting and deleting as many rows")
    args = parser.parse_args(argv)
    load = wear.Load.parse(args.load)
    if args.raw:
        return raw_floor([5000, 15000])
    if args.soak:
        return soak(load, args)
    if args.retention < args.warmup + args.window + 30:
        parser.error("--retention must outlast the run (warm-up + window + 30 s of drain)")
    fs = wear.fs_type(args.dir)
    if fs in wear.MEMORY_FS:
        parser.error(f"{args.dir} is on {fs}: write_bytes stays 0 there; pass --dir on a disk")
    rows: dict[bool, list[tuple[wear.WearResult, Observer]]] = {False: [], True: []}
    for round_number in range(args.runs):
        for enabled in (False, True):
            result, observer = one_run(load, args.retention, enabled, args, args.dir, fs)
            rows[enabled].append((result, observer))
            print(f"round {round_number + 1}: {result.config}: {result.written_per_reading:,.0f} B/reading, "
                  f"{result.cpu_us_per_message:,.0f} us/msg, reader p99 "
                  f"{percentile(observer.latencies_ms, 0.99):.1f} ms ({len(observer.latencies_ms)} reads, "
                  f"{len(observer.errors)} failed), lost {result.lost}", flush=True)
    print()
    print(f"{load.label}, retention {args.retention:g} s, medians of {args.runs} runs")
    print("| | written per reading | CPU per message | reader p50 / p99 / max | file during window "
          "(start -> end, max) | lost |")
    print("|---|---|---|---|---|---|")
    medians: dict[bool, dict[str, float]] = {}
    for enabled in (False, True):
        results = [r for r, _ in rows[enabled]]
        latencies = [lat for _, o in rows[enabled] for lat in o.latencies_ms]
        growth = [_file_drift(o) for _, o in rows[enabled]]
        medians[enabled] = {
            "written": statistics.median(r.written_per_reading for r in results),
            "cpu": statistics.median(r.cpu_us_per_message for r in results),
        }
        start_mb, end_mb, max_mb = (statistics.median(g[i] for g in growth) for i in range(3))
        print(f"| {results[0].config} | {medians[enabled]['written']:,.0f} B | {medians[enabled]['cpu']:,.0f} us "
              f"| {percentile(latencies, 0.5):.1f} / {percentile(latencies, 0.99):.1f} / {max(latencies):.1f} ms "
              f"| {start_mb:,.1f} -> {end_mb:,.1f} MB (max {max_mb:,.1f}) | {sum(r.lost for r in results)} |")
    off, on = medians[False], medians[True]
    print(f"\nretention costs {100 * (on['written'] / off['written'] - 1):+.0f} % bytes written per reading, "
          f"{100 * (on['cpu'] / off['cpu'] - 1):+.0f} % CPU per message")
    return 0


def soak(load: wear.Load, args: argparse.Namespace) -> int:
    """Retention on for ``--soak`` seconds: the database file plus WAL, minute by minute."""
    fs = wear.fs_type(args.dir)
    args.window = args.soak
    _, observer = one_run(load, args.retention, True, args, args.dir, fs)
    print(f"{load.label}, retention {args.retention:g} s: database + WAL, MB")
    first = observer.sizes[0][0] if observer.sizes else 0.0
    print("| minute | size | max in that minute |")
    print("|---|---|---|")
    minute, sizes = 0, []
    for at, size in observer.sizes:
        if at - first >= 60 * (minute + 1):
            print(f"| {minute + 1} | {sizes[-1] / 2**20:,.1f} | {max(sizes) / 2**20:,.1f} |")
            minute, sizes = minute + 1, []
        sizes.append(size)
    latencies = observer.latencies_ms
    print(f"reader: {len(latencies)} reads, p50 {percentile(latencies, 0.5):.1f} ms, "
          f"p99 {percentile(latencies, 0.99):.1f} ms, max {max(latencies):.1f} ms")
    return 0


def raw_floor(batch_rows: list[int], rounds: int = 40, per_round: int = 30_000) -> int:
    """What SQLite alone writes to delete as many rows as it inserts: plain sqlite3, no gateway.

    The gateway's schema (autocore.schema), durable commits of 5,000 rows, then per round
    as many rows deleted oldest first in batches (with and without the roll-up
    statement retention runs), against inserts alone: bytes written per inserted row.
    """
    from sqlalchemy import create_engine

    from autocore.schema import ensure_schema
    from autocore.storage.retention import _rollup_sql

    keys = [("system_status", f"k{n}") for n in range(5)] + [("gps", f"g{n}") for n in range(6)] + \
        [("analog_sensor", "analog_bench_sent")]
    insert = ("INSERT INTO telemetry_data (timestamp, device_id, data_type, data_key, data_value, unit) "
              "VALUES (?, ?, ?, ?, ?, NULL)")

    def run(mode: str, batch: int) -> float:
        with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent.parent) as folder:
            path = Path(folder) / "raw.db"
            engine = create_engine(f"sqlite:///{path}")
            ensure_schema(engine)
            rollup = _rollup_sql(engine).format(
                batch=f"SELECT id FROM telemetry_data ORDER BY timestamp, id LIMIT {batch}")
            engine.dispose()
            conn = sqlite3.connect(path, isolation_level=None)
            for pragma in ("journal_mode=WAL", "synchronous=FULL", "secure_delete=FAST"):
                conn.execute(f"PRAGMA {pragma}")
            conn.execute("INSERT INTO devices (id, uuid, name, type, status, is_active) VALUES " +
                         ",".join(f"({i}, 'd{i}', 'n', 't', 'online', 1)" for i in range(1, 51)))
            made = [0]

            def rows(count: int) -> list[tuple[Any, ...]]:
                out = []
                for _ in range(count):
                    n = made[0]
                    made[0] += 1
                    second = n // 12 / 500  # 500 messages/s of 12 readings
                    stamp = (f"2026-12-05 {int(second // 3600) % 24:02d}:{int(second // 60) % 60:02d}:"
                             f"{int(second) % 60:02d}.{int(second * 1e6) % 1_000_000:06d}")
                    out.append((stamp, 1 + n // 12 % 50, *keys[n % 12], f"{n}.5"))
                return out

            conn.execute("BEGIN")
            conn.executemany(insert, rows(600_000))
            conn.execute("COMMIT")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            os.sync()
            before = wear.read_io(os.getpid())["write_bytes"]
            for _ in range(rounds):
                for _ in range(per_round // 5000):
                    conn.execute("BEGIN")
                    conn.executemany(insert, rows(5000))
                    conn.execute("COMMIT")
                for _ in range(per_round // batch if mode != "insert" else 0):
                    conn.execute("BEGIN")
                    if mode == "roll-up and delete":
                        conn.execute(rollup)
                    conn.execute("DELETE FROM telemetry_data WHERE id IN "
                                 f"(SELECT id FROM telemetry_data ORDER BY timestamp, id LIMIT {batch})")
                    conn.execute("COMMIT")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.close()
            os.sync()
            return (wear.read_io(os.getpid())["write_bytes"] - before) / (rounds * per_round)

    base = run("insert", 5000)
    print("| plain sqlite3 | batch | written per inserted row | vs inserts alone |")
    print("|---|---|---|---|")
    print(f"| inserts alone | - | {base:,.0f} B | |")
    for batch in batch_rows:
        for mode in ("delete", "roll-up and delete"):
            written = run(mode, batch)
            print(f"| inserts + {mode} as many rows | {batch:,} | {written:,.0f} B | {100 * (written / base - 1):+.0f} % |")
    return 0


def _file_drift(observer: Observer) -> tuple[float, float, float]:
    """Database + WAL size at the first and last sample and its maximum, MB."""
    if not observer.sizes:
        return (0.0, 0.0, 0.0)
    sizes = [size / 2**20 for _, size in observer.sizes]
    return sizes[0], sizes[-1], max(sizes)


if __name__ == "__main__":
    raise SystemExit(main())

