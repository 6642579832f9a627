"""Retention, hourly roll-ups and the size cap, against real SQLite files and PostgreSQL.

The suite runs at UTC-3: every cut-off must be naive local time, like the rows.
"""

from __future__ import annotations

import json
import sqlite3
import urllib.request
from contextlib import closing
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from autocore.broker import find_free_port
from autocore.config import Settings
from autocore.schema import ensure_schema
from autocore.storage import open_engine
from autocore.storage.retention import BATCH_ROWS, MB, Retention, RetentionSettings
from tests.fixtures.services import wait_for

NOW = datetime(2026, 12, 5, 14, 30, 0)


def sqlite_engine(path: Path) -> Any:
    engine = open_engine(Settings.from_env({"DATABASE_PATH": str(path)}, env_file=None))
    ensure_schema(engine)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO devices (id, uuid, name, type, status, is_active) "
                          "VALUES (7, 'esp32-can-001', 'CAN', 'esp32_can', 'online', 1)"))
    return engine


def add_rows(engine: Any, rows: list[tuple[datetime, str, str]]) -> None:
    """Raw readings (timestamp, key, value) of device 7, written as the gateway writes them."""
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO telemetry_data (timestamp, device_id, data_type, data_key, data_value, unit) "
                          "VALUES (:ts, 7, 'can_bus', :key, :value, 'rpm')"),
                     [{"ts": ts, "key": key, "value": value} for ts, key, value in rows])


def run_until_idle(engine: Any, retention: Retention) -> list[int]:
    """One round of retention, as the gateway runs it every RETENTION_CHECK_S."""
    retention.new_round()
    batches = []
    while True:
        with engine.begin() as conn:
            removed = retention.step(conn)
        if not removed:
            return batches
        batches.append(removed)


def counts(engine: Any) -> tuple[int, int]:
    with engine.connect() as conn:
        raw = conn.execute(text("SELECT count(*) FROM telemetry_data")).scalar()
        rolled = conn.execute(text("SELECT coalesce(sum(count), 0) FROM telemetry_hourly")).scalar()
    return int(raw), int(rolled)


def test_expired_rows_are_rolled_up_then_deleted_in_batches(installed_db: Path) -> None:
    engine = sqlite_engine(installed_db)
    old = NOW - timedelta(days=8)
    total = 2 * BATCH_ROWS + 1000  # readings one per second from 14:30
    add_rows(engine, [(old + timedelta(seconds=n), "can_rpm", str(1000 + n % 100)) for n in range(total)])
    add_rows(engine, [(NOW - timedelta(hours=1), "can_rpm", "5")])
    retention = Retention(engine, RetentionSettings(telemetry_s=7 * 86400), clock=lambda: NOW)
    assert run_until_idle(engine, retention) == [BATCH_ROWS, BATCH_ROWS, 1000]
    assert counts(engine) == (1, total)
    with engine.connect() as conn:
        hours = conn.execute(text("SELECT hour_timestamp, count, min_value, max_value, avg_value, unit "
                                  "FROM telemetry_hourly ORDER BY hour_timestamp")).all()
    expected, start = [], 30 * 60  # the first hour has 1,800 readings, the next ones 3,600
    while start < total + 30 * 60:
        hour = start // 3600
        end = min((hour + 1) * 3600, total + 30 * 60)
        expected.append((f"2026-11-27 {14 + hour - 0:02d}:00:00", end - start))
        start = end
    assert [(str(h[0])[:19], h[1]) for h in hours] == expected
    assert all(h[2] == 1000 and h[3] == 1099 and h[5] == "rpm" for h in hours)
    assert abs(hours[0][4] - 1049.5) < 1e-9
    engine.dispose()


def test_an_hour_rolled_up_in_two_passes_merges(installed_db: Path) -> None:
    """Counts add, min/max combine and the average is weighted (INSERT OR REPLACE would overwrite)."""
    engine = sqlite_engine(installed_db)
    hour = NOW.replace(minute=0) - timedelta(days=10)
    add_rows(engine, [(hour + timedelta(minutes=1), "can_rpm", "10")] * 3)
    retention = Retention(engine, RetentionSettings(telemetry_s=7 * 86400), clock=lambda: NOW)
    run_until_idle(engine, retention)
    add_rows(engine, [(hour + timedelta(minutes=2), "can_rpm", "30"), (hour + timedelta(minutes=3), "can_rpm", "-2")])
    assert counts(engine) == (2, 3)  # at every commit: raw + rolled up = stored
    run_until_idle(engine, retention)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT count, min_value, max_value, avg_value FROM telemetry_hourly")).one()
    assert (row[0], row[1], row[2]) == (5, -2, 30)
    assert abs(row[3] - (3 * 10 + 30 - 2) / 5) < 1e-9
    engine.dispose()


def test_cut_offs_are_naive_local_time(installed_db: Path) -> None:
    """At UTC-3 a cut-off computed in UTC would keep rows three hours too long."""
    engine = sqlite_engine(installed_db)
    now = datetime.now()
    add_rows(engine, [(now - timedelta(seconds=100), "can_old", "1"), (now - timedelta(seconds=20), "can_new", "2")])
    run_until_idle(engine, Retention(engine, RetentionSettings(telemetry_s=40)))
    with engine.connect() as conn:
        keys = [r[0] for r in conn.execute(text("SELECT data_key FROM telemetry_data"))]
    assert keys == ["can_new"]
    engine.dispose()


def test_events_commands_rollups_and_keys_expire_but_kept_types_stay(installed_db: Path) -> None:
    engine = sqlite_engine(installed_db)
    old, recent = NOW - timedelta(days=40), NOW - timedelta(days=1)
    with engine.begin() as conn:
        for event_type in ("system", "relay_command", "error", "warning", "security", "critical"):
            for stamp in (old, recent):
                conn.execute(text("INSERT INTO event_logs (timestamp, event_type, source) VALUES (:t, :e, 'gateway')"),
                             {"t": stamp, "e": event_type})
        for status, stamp in (("acked", old), ("timeout", old), ("pending", old), ("acked", recent)):
            conn.execute(text("INSERT INTO gateway_commands (device_uuid, command_type, status, created_at, "
                              "completed_at) VALUES ('esp32-relay-001', 'relay', :s, :t, :t)"), {"s": status, "t": stamp})
        conn.execute(text("INSERT INTO telemetry_hourly (device_id, data_type, data_key, hour_timestamp, count) "
                          "VALUES (7, 'can_bus', 'can_rpm', :t, 1)"), {"t": NOW - timedelta(days=400)})
        conn.execute(text("INSERT INTO gateway_message_keys (message_key, received_at) VALUES ('k-old', :t), "
                          "('k-new', :n)"), {"t": NOW - timedelta(days=2), "n": NOW})
    run_until_idle(engine, Retention(engine, RetentionSettings(), clock=lambda: NOW))
    with engine.connect() as conn:
        events = sorted((r[0], str(r[1])[:10]) for r in conn.execute(text("SELECT event_type, timestamp FROM event_logs")))
        commands = sorted(r[0] for r in conn.execute(text("SELECT status FROM gateway_commands")))
        assert conn.execute(text("SELECT count(*) FROM telemetry_hourly")).scalar() == 0
        assert [r[0] for r in conn.execute(text("SELECT message_key FROM gateway_message_keys"))] == ["k-new"]
    kept = {"error", "warning", "security", "critical"}
    assert events == sorted([(e, str(old)[:10]) for e in kept] + [(e, str(recent)[:10]) for e in
                                                                  ("system", "relay_command", *kept)])
    assert commands == ["acked", "pending"]  # a pending row is never deleted, however old
    engine.dispose()


def test_the_size_cap_trims_the_oldest_telemetry_inside_its_retention(installed_db: Path) -> None:
    engine = sqlite_engine(installed_db)
    add_rows(engine, [(NOW - timedelta(hours=5, seconds=-n), f"can_{n % 15}", str(n)) for n in range(40_000)])
    with engine.connect() as conn:
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar() * conn.exec_driver_sql("PRAGMA page_size").scalar()
    cap = int(pages * 0.8)
    retention = Retention(engine, RetentionSettings(max_bytes=cap), clock=lambda: NOW)
    before = counts(engine)
    run_until_idle(engine, retention)
    raw, rolled = counts(engine)
    assert raw + rolled == before[0] and rolled > 0  # nothing lost: rolled up before deletion
    assert retention.usage is not None and retention.usage.used < cap * 0.9
    assert retention.trimming is None  # back under the cap
    assert retention.removed["telemetry_trimmed"] == rolled
    with engine.connect() as conn:  # the oldest went first
        oldest = conn.execute(text("SELECT min(CAST(data_value AS INTEGER)) FROM telemetry_data")).scalar()
    assert oldest == rolled
    size = installed_db.stat().st_size
    add_rows(engine, [(NOW, f"can_{n % 15}", str(n)) for n in range(rolled // 2)])
    assert installed_db.stat().st_size <= size  # freed pages are reused: the file does not grow
    engine.dispose()


# -- a running gateway -----------------------------------------------------------------------------


def test_a_running_gateway_expires_rolls_up_and_reports(env, installed_db: Path) -> None:  # type: ignore[no-untyped-def]
    """40 s retention: rows past it are gone within the retention check, and counted in /metrics."""
    device_id = env.register("esp32-can-001", "esp32_can")
    old = datetime.now() - timedelta(seconds=300)
    with closing(sqlite3.connect(installed_db)) as conn, conn:
        conn.executemany("INSERT INTO telemetry_data (timestamp, device_id, data_type, data_key, data_value, unit) "
                         "VALUES (?, ?, 'can_bus', 'can_rpm', ?, 'rpm')",
                         [((old + timedelta(milliseconds=n)).isoformat(" "), device_id, str(n)) for n in range(3000)])
    port = find_free_port()
    env.gateway(AUTOCORE_TELEMETRY_RETENTION="40", AUTOCORE_METRICS_PORT=str(port))
    device = env.peer()
    payload = json.dumps({"protocol_version": "2.2.0", "uuid": "esp32-can-001", "timestamp": "2025-08-12T20:53:17Z",
                          "can_data": {"signals": {"rpm": {"value": 900, "unit": "rpm"}}}}).encode()
    for _ in range(5):
        device.publish("autocore/devices/esp32-can-001/telemetry", payload, qos=1)
    wait_for(lambda: env.rows("SELECT count(*) AS n FROM telemetry_data")[0]["n"] == 5, timeout_s=30,
             what="expired rows gone, the fresh ones kept")
    rolled = env.rows("SELECT sum(count) AS n FROM telemetry_hourly")[0]["n"]
    assert rolled == 3000
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        page = response.read().decode()
    assert 'autocore_retention_rows_removed_total{table="telemetry"} 3000.0' in page
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
        checks = json.loads(response.read())["checks"]
    assert checks["storage"]["ok"] and "cap" in checks["storage"]["detail"]


@pytest.mark.postgres
def test_retention_and_cap_on_postgres(postgres_db) -> None:  # type: ignore[no-untyped-def]
    device_id = postgres_db.register("esp32-can-001", "esp32_can")
    engine = open_engine(Settings.from_env({"DATABASE_URL": postgres_db.url}, env_file=None))
    hour = NOW.replace(minute=0) - timedelta(days=9)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO telemetry_data (timestamp, device_id, data_type, data_key, data_value, unit) "
                          "VALUES (:ts, :d, 'can_bus', 'can_rpm', :v, 'rpm')"),
                     [{"ts": hour + timedelta(seconds=n % 3600), "d": device_id, "v": str(n % 7)}
                      for n in range(BATCH_ROWS + 500)]
                     + [{"ts": NOW, "d": device_id, "v": "1"}])
    retention = Retention(engine, RetentionSettings(), clock=lambda: NOW)
    assert run_until_idle(engine, retention) == [BATCH_ROWS, 500]
    rows = postgres_db.rows("SELECT count, min_value, max_value FROM telemetry_hourly ORDER BY hour_timestamp")
    assert [(r["count"], r["min_value"], r["max_value"]) for r in rows] == [(BATCH_ROWS + 500, 0, 6)]
    assert postgres_db.rows("SELECT count(*) AS n FROM telemetry_data")[0]["n"] == 1
    # A cap below the database's size trims even rows inside their retention (rolled up first).
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO telemetry_data (timestamp, device_id, data_type, data_key, data_value) "
                          "VALUES (:ts, :d, 'can_bus', 'can_rpm', '3')"),
                     [{"ts": NOW - timedelta(seconds=n), "d": device_id} for n in range(3000)])
    with engine.connect() as conn:
        size = retention.measure(conn).used
    trimmer = Retention(engine, RetentionSettings(max_bytes=int(size * 0.5)), clock=lambda: NOW)
    trimmer.new_round()
    with engine.begin() as conn:
        assert trimmer.step(conn) > 0
    assert trimmer.trimming is not None and "cap" in trimmer.trimming
    total = postgres_db.rows("SELECT (SELECT count(*) FROM telemetry_data) + "
                             "(SELECT sum(count) FROM telemetry_hourly) AS n")[0]["n"]
    assert total == BATCH_ROWS + 500 + 1 + 3000
    engine.dispose()


def test_auto_cap_is_a_quarter_of_the_file_system(installed_db: Path) -> None:
    engine = sqlite_engine(installed_db)
    with engine.connect() as conn:
        usage = Retention(engine, RetentionSettings()).measure(conn)
    assert usage.disk_total and usage.cap == int(usage.disk_total * 0.25)
    assert usage.used <= usage.file and usage.cap > 16 * MB
    engine.dispose()


def test_a_kind_that_caught_up_rests_until_the_next_round(installed_db: Path) -> None:
    """Under a steady flow a few rows expire between any two batches: no tiny batch after a partial one."""
    engine = sqlite_engine(installed_db)
    add_rows(engine, [(NOW - timedelta(days=8), "can_rpm", "1")] * (BATCH_ROWS + 10))
    retention = Retention(engine, RetentionSettings(), clock=lambda: NOW)
    assert run_until_idle(engine, retention) == [BATCH_ROWS, 10]
    add_rows(engine, [(NOW - timedelta(days=8), "can_rpm", "1")] * 5)
    with engine.begin() as conn:
        assert retention.step(conn) == 0  # caught up this round: the 5 wait for the next one
    assert run_until_idle(engine, retention) == [5]
    engine.dispose()
