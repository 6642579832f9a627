"""``autocore db stats | prune | vacuum`` on a real SQLite file, next to nothing but the Config App's schema."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from datetime import datetime, timedelta
from pathlib import Path

from autocore.maintenance import project
from autocore.storage.retention import MB, RetentionSettings, Usage


def autocore(db: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {"DATABASE_PATH": str(db), "AUTOCORE_METRICS_PORT": "0", "PATH": "/usr/bin:/bin",
               "TZ": os.environ.get("TZ", ""), **env}
    return subprocess.run([sys.executable, "-m", "autocore", *args, "--env-file", ""], env=environ,
                          capture_output=True, text=True, timeout=120)


def fill(db: Path, rows: int, age: timedelta) -> None:
    start = datetime.now() - age
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("INSERT INTO devices (id, uuid, name, type, status, is_active) "
                     "VALUES (7, 'esp32-can-001', 'CAN', 'esp32_can', 'online', 1)")
        conn.executemany("INSERT INTO telemetry_data (timestamp, device_id, data_type, data_key, data_value, unit) "
                         "VALUES (?, 7, 'can_bus', 'can_rpm', ?, 'rpm')",
                         [((start + timedelta(seconds=n)).isoformat(" "), str(n)) for n in range(rows)])


def test_stats_prune_and_vacuum(installed_db: Path) -> None:
    fill(installed_db, 20_000, timedelta(days=7, seconds=10_000))  # the first 10,000 s expired
    stats = autocore(installed_db, "db", "stats")
    assert stats.returncode == 0, stats.stderr
    assert "telemetry_data" in stats.stdout and "20,000 rows" in stats.stdout
    assert "projection" in stats.stdout and "MB in use" in stats.stdout

    pruned = autocore(installed_db, "db", "prune")
    assert pruned.returncode == 0, pruned.stderr
    with closing(sqlite3.connect(installed_db)) as conn, conn:
        raw = conn.execute("SELECT count(*) FROM telemetry_data").fetchone()[0]
        rolled = conn.execute("SELECT sum(count) FROM telemetry_hourly").fetchone()[0]
    assert raw + rolled == 20_000 and 9_900 <= rolled <= 10_100  # rolled up, then deleted

    hint = autocore(installed_db, "db", "vacuum")
    assert hint.returncode == 0 and "--full" in hint.stdout  # no incremental auto-vacuum yet
    size = installed_db.stat().st_size
    full = autocore(installed_db, "db", "vacuum", "--full")
    assert full.returncode == 0, full.stderr
    assert installed_db.stat().st_size < size
    with closing(sqlite3.connect(installed_db)) as conn, conn:
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental from now on
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    again = autocore(installed_db, "db", "vacuum")
    assert again.returncode == 0 and "back to the file system" in again.stdout


def test_projection_says_when_the_database_fills_or_that_retention_holds_it() -> None:
    usage = Usage(used=100 * MB, file=100 * MB, cap=1000 * MB, disk_free=10_000 * MB, disk_total=40_000 * MB)
    keep_all = RetentionSettings(telemetry_s=0)
    filling = project(usage, raw_rows=500_000, rows_per_day=450_000, settings=keep_all)  # 200 B a row
    assert filling.days_until_full is not None and abs(filling.days_until_full - 10.0) < 0.01
    held = project(usage, raw_rows=500_000, rows_per_day=450_000, settings=RetentionSettings(telemetry_s=86400))
    assert held.days_until_full is None and "never full" in held.describe()
