"""The database thread against a real SQLite file: batching, timestamps, lock recovery, file watch."""

from __future__ import annotations

import sqlite3
import sys
import threading
import time
from contextlib import closing
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from autocore.config import Settings
from autocore.storage.filewatch import start_watch
from autocore.ringbuffer import Ring
from autocore.schema import ensure_schema, telemetry_data
from autocore.storage import Database, TelemetryItem, open_engine
from tests.fixtures.services import wait_for

ROWS = [("can_bus", "can_rpm", "2500.0", "rpm"), ("can_bus", "can_tps", "45.2", "%"),
        ("can_bus", "can_ect", "85.7", "°C"), ("gps", "gps_lat", "-23.5505", "degrees")]


@pytest.fixture
def database(installed_db: Path):  # type: ignore[no-untyped-def]
    made: list[Database] = []

    def make(batch_rows: int = 10, flush_interval_s: float = 0.1) -> Database:
        engine = open_engine(Settings.from_env({"DATABASE_PATH": str(installed_db)}, env_file=None))
        ensure_schema(engine)
        with closing(sqlite3.connect(installed_db)) as conn, conn:
            conn.execute("INSERT INTO devices (id, uuid, name, type, status, is_active) "
                         "VALUES (7, 'esp32-can-001', 'CAN', 'esp32_can', 'online', 1)")
        db = Database(engine, Ring(1000), batch_rows, flush_interval_s, write_interval_s=0.05)
        db.start()
        made.append(db)
        return db

    yield make
    for db in made:
        db.stop(10)
        db.close()


def count(path: Path) -> int:
    with closing(sqlite3.connect(path)) as conn, conn:
        return int(conn.execute("SELECT count(*) FROM telemetry_data").fetchone()[0])


def test_rows_read_back_through_sqlalchemy_with_the_receive_time(database, installed_db) -> None:  # type: ignore[no-untyped-def]
    db = database()
    received = datetime(2026, 11, 25, 10, 41, 10, 123456)
    db.push_telemetry(TelemetryItem(None, "esp32-can-001", received, ROWS))
    wait_for(lambda: count(installed_db) == 4)
    with db.engine.connect() as conn:
        rows = conn.execute(select(telemetry_data).order_by(telemetry_data.c.id)).all()
    assert [r.timestamp for r in rows] == [received] * 4  # SQLAlchemy's own DateTime reads it back
    assert [(r.device_id, r.data_type, r.data_key, r.data_value, r.unit) for r in rows] == [(7, *r) for r in ROWS]
    with closing(sqlite3.connect(installed_db)) as conn, conn:
        assert conn.execute("SELECT timestamp FROM telemetry_data").fetchone()[0] == "2026-11-25 10:41:10.123456"


def test_batch_waits_for_size_or_age_and_stop_flushes(database, installed_db) -> None:  # type: ignore[no-untyped-def]
    db = database(batch_rows=10, flush_interval_s=60)
    db.push_telemetry(TelemetryItem(7, "esp32-can-001", datetime.now(), ROWS))
    time.sleep(0.5)
    assert count(installed_db) == 0  # 4 rows < 10 and younger than 60 s: still pending
    for _ in range(2):
        db.push_telemetry(TelemetryItem(7, "esp32-can-001", datetime.now(), ROWS))
    wait_for(lambda: count(installed_db) == 12)
    db.push_telemetry(TelemetryItem(7, "esp32-can-001", datetime.now(), ROWS))
    assert db.stop(10)
    assert count(installed_db) == 16


def test_unknown_devices_are_counted_not_stored(database, installed_db) -> None:  # type: ignore[no-untyped-def]
    db = database(batch_rows=1)
    db.push_telemetry(TelemetryItem(None, "esp32-ghost-001", datetime.now(), ROWS))
    db.push_telemetry(TelemetryItem(None, "esp32-can-001", datetime.now(), ROWS))
    wait_for(lambda: count(installed_db) == 4)
    assert db.rows_unknown_device == 4


def test_writes_resume_after_another_writer_held_the_lock(database, installed_db) -> None:  # type: ignore[no-untyped-def]
    db = database(batch_rows=1)
    blocker = sqlite3.connect(installed_db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the Config App in a long write transaction
    for _ in range(5):
        db.push_telemetry(TelemetryItem(7, "esp32-can-001", datetime.now(), ROWS))
    wait_for(lambda: db.write_errors >= 1, timeout_s=15, what="a failed write while locked")
    blocker.execute("COMMIT")
    blocker.close()
    wait_for(lambda: count(installed_db) == 20, timeout_s=15, what="all rows after the lock")


def test_file_watch_sees_another_process_commit(tmp_path: Path) -> None:
    path = tmp_path / "autocore.db"
    sqlite3.connect(path).close()
    seen = threading.Event()
    watch = start_watch(path, seen.set)
    if watch is None:
        pytest.skip("inotify is not available here")
    try:
        with closing(sqlite3.connect(path)) as conn, conn:
            conn.execute("CREATE TABLE t (x)")
        assert seen.wait(5)
    finally:
        watch.stop()


def test_own_commits_do_not_run_the_pollers_but_another_process_commit_does(database, installed_db) -> None:  # type: ignore[no-untyped-def]
    """The file watch sees the gateway's own commits too; only a foreign commit may run a poll."""
    db = database(batch_rows=1)
    runs: list[float] = []
    db.add_poller(lambda _conn: runs.append(time.monotonic()), 0.02)
    db.push_telemetry(TelemetryItem(None, "esp32-can-001", datetime.now(), ROWS))  # warm-up: first look
    wait_for(lambda: count(installed_db) == 4 and len(runs) >= 2)
    time.sleep(0.3)
    settled = len(runs)
    for _ in range(20):  # 20 commits of our own, each one a write the file watch reports
        db.push_telemetry(TelemetryItem(None, "esp32-can-001", datetime.now(), ROWS))
        time.sleep(0.03)
    wait_for(lambda: count(installed_db) == 84)
    time.sleep(0.3)
    assert len(runs) == settled
    with closing(sqlite3.connect(installed_db)) as conn, conn:  # the Config App's commit
        conn.execute("UPDATE devices SET name = 'CAN bus reader' WHERE id = 7")
    # Well before the fallback poll (storage.changes.WATCHED_POLL_S, 10 s).
    wait_for(lambda: len(runs) > settled, timeout_s=5.0, what="a poll after another process committed")



@pytest.mark.skipif(sys.version_info < (3, 11), reason="sqlite3 errors name their code from Python 3.11")
def test_a_database_error_names_its_extended_code(tmp_path: Path) -> None:
    """"disk I/O error" alone does not say which step failed; SQLite's extended code does."""
    from sqlalchemy.exc import OperationalError

    from autocore.storage.engine import short_error

    engine = open_engine(Settings.from_env({"DATABASE_PATH": str(tmp_path)}, env_file=None))  # a folder
    with pytest.raises(OperationalError) as caught:
        engine.connect().close()
    engine.dispose()
    assert short_error(caught.value) == "unable to open database file (SQLITE_CANTOPEN)"


def test_a_new_device_is_stored_while_made_up_uuids_flood_the_writer(installed_db: Path) -> None:
    """A flood of made-up uuids costs the writer one look-up statement per batch, and sheds no real device.

    The writer once looked uuids up one by one within a budget (200, then 50 a
    second). A device the Config App registered after the gateway started came
    after a flood had spent it: its QoS 1 reading was acknowledged without a row.
    """
    from contextlib import contextmanager

    from sqlalchemy import event

    from autocore.storage.telemetry import LOOKUP_CHUNK, TelemetryWriter

    engine = open_engine(Settings.from_env({"DATABASE_PATH": str(installed_db)}, env_file=None))
    ensure_schema(engine)
    with closing(sqlite3.connect(installed_db)) as conn, conn:
        conn.execute("INSERT INTO devices (uuid, name, type, status, is_active) "
                     "VALUES ('esp32-can-001', 'CAN', 'esp32_can', 'online', 1)")
    writer = TelemetryWriter(engine)
    lookups: list[str] = []
    event.listen(engine, "before_cursor_execute",
                 lambda _c, _cur, sql, *_a: lookups.append(sql) if "FROM devices" in sql else None)

    @contextmanager
    def transaction():  # type: ignore[no-untyped-def]
        with engine.connect() as conn, conn.begin():
            yield conn

    now = datetime.now()
    row = [("can_bus", "can_rpm", "1", "rpm")]
    try:
        flood = [TelemetryItem(None, f"ghost-{n}", now, row, ack=(n + 1, 1, 0), dedup_key=f"g{n}")
                 for n in range(2 * LOOKUP_CHUNK + 1)]
        late = TelemetryItem(None, "esp32-can-001", now, row, ack=(9999, 1, 0), dedup_key="k1")
        result = writer.write(transaction, [*flood, late])
        assert (result.rows, result.unknown_rows) == (1, len(flood))
        assert len(lookups) == 3  # one statement per LOOKUP_CHUNK uuids
        again = writer.write(transaction, [*flood, TelemetryItem(None, "esp32-can-001", now, row)])
        assert (again.rows, again.unknown_rows) == (1, len(flood))
        assert len(lookups) == 3  # found and missing uuids are both remembered
    finally:
        engine.dispose()
    assert count(installed_db) == 2
