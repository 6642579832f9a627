"""The telemetry INSERT on SQLite, per build: the very rows and errors of ``executemany``.

Every test runs against real SQLite files with the installed schema and the
gateway's pragmas. The reference is the statement the writer used before the
compiled insert: the DB-API ``executemany`` with one tuple per row.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from autocore import _fast
from autocore.config import Settings
from autocore.schema import telemetry_data
from autocore.storage import open_engine
from autocore.storage import telemetry as telemetry_module
from autocore.storage.policy import configure_sqlite
from autocore.storage.telemetry import TelemetryItem, TelemetryWriter, _telemetry_insert

#: The writer's INSERT on SQLite, as ``_telemetry_insert`` builds it.
SQL = ('INSERT INTO telemetry_data (timestamp, device_id, data_type, data_key, data_value, unit) '
       'VALUES (?, ?, ?, ?, ?, ?)')
#: Every column, and what SQLite stored it as.
DUMP = ("SELECT timestamp, typeof(timestamp), device_id, typeof(device_id), data_type, data_key, "
        "data_value, typeof(data_value), unit, typeof(unit) FROM telemetry_data ORDER BY id")
TS = "2026-11-25 10:41:10.123456"


def connect(path: Path, **kwargs: Any) -> sqlite3.Connection:
    conn = sqlite3.connect(path, **kwargs)
    configure_sqlite(conn)
    return conn


@pytest.fixture
def databases(installed_db: Path, tmp_path: Path) -> Iterator[tuple[sqlite3.Connection, sqlite3.Connection]]:
    """Two files with the installed schema: one for the build under test, one for the reference."""
    reference = tmp_path / "reference.db"
    shutil.copyfile(installed_db, reference)
    tested, expected = connect(installed_db), connect(reference)
    yield tested, expected
    tested.close()
    expected.close()


def flat(batch: list[tuple[Any, Any, Any]]) -> list[tuple[Any, ...]]:
    """The rows as the writer built them before the compiled insert."""
    return [(ts, device_id, data_type, key, value, unit)
            for ts, device_id, rows in batch for data_type, key, value, unit in rows]


def reference_insert(conn: sqlite3.Connection, batch: list[tuple[Any, Any, Any]]) -> int:
    rows = flat(batch)
    conn.executemany(SQL, rows)
    return len(rows)


def dump(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
    return conn.execute(DUMP).fetchall()


def count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM telemetry_data").fetchone()[0])


def stored(path: Path, sql: str = "SELECT count(*) FROM telemetry_data") -> Any:
    """What another connection reads: committed rows only."""
    with closing(sqlite3.connect(path)) as conn:
        row = conn.execute(sql).fetchone()
    return row[0] if len(row) == 1 else row


def outcome(fn: Any, *args: Any) -> tuple[Any, ...]:
    """What a call did: its result, or its exception as pysqlite describes it."""
    try:
        return ("ok", fn(*args))
    except Exception as exc:
        return (type(exc), str(exc), getattr(exc, "sqlite_errorcode", None), getattr(exc, "sqlite_errorname", None))


def sample_batch(messages: int = 60, rows_per_message: int = 12) -> list[tuple[str, int, list[Any]]]:
    """Many devices, unicode keys and units, NULL units, values up to 100 kB, past several chunks."""
    batch = []
    for m in range(messages):
        rows = []
        for r in range(rows_per_message):
            unit = [None, "°C", "km/h", "µS/cm", "", "日本"][r % 6]
            value = "x" * 100_000 if (m, r) == (3, 4) else ("é" * r + str(m * r) if r % 3 else f"{m}.{r}")
            rows.append((["can_bus", "gps", "analog_sensor"][r % 3], f"can_ключ_{r}_{'İ' * (r % 4)}", value, unit))
        batch.append((f"2026-11-25 10:41:{m % 60:02d}.{m:06d}", 1 + m % 50, rows))
    return batch


# -- the same rows ------------------------------------------------------------------


def test_rows_match_executemany_in_every_column(impl: _fast.Implementation, databases) -> None:  # type: ignore[no-untyped-def]
    tested, expected = databases
    batch = sample_batch()
    assert impl.TelemetryInsert(SQL).insert(tested, batch) == 720
    assert reference_insert(expected, batch) == 720
    tested.commit()
    expected.commit()
    rows = dump(tested)
    assert rows == dump(expected)
    assert len(rows) == 720 and {r[1] for r in rows} == {"text"} and {r[3] for r in rows} == {"integer"}
    assert any(r[8] is None for r in rows) and any(r[8] == "日本" for r in rows)
    assert max(len(r[6]) for r in rows) == 100_000


def test_the_writers_statement_and_timestamp_text(impl: _fast.Implementation, installed_db: Path) -> None:
    """The SQL text ``_telemetry_insert`` builds; SQLAlchemy's DateTime reads the text back."""
    engine = open_engine(Settings.from_env({"DATABASE_PATH": str(installed_db)}, env_file=None))
    sql, stamp = _telemetry_insert(engine)
    received = datetime(2026, 11, 25, 10, 41, 10, 123456)
    try:
        with engine.connect() as conn:
            with conn.begin():
                inserted = impl.TelemetryInsert(sql).insert(
                    conn.connection.driver_connection, [(stamp(received), 7, [("gps", "gps_lat", "-23.5", None)])])
            assert inserted == 1
            row = conn.execute(select(telemetry_data)).one()
        assert (row.timestamp, row.device_id, row.data_key, row.data_value, row.unit) == (
            received, 7, "gps_lat", "-23.5", None)
    finally:
        engine.dispose()


def test_empty_batches_insert_nothing_and_open_no_transaction(impl: _fast.Implementation, databases) -> None:  # type: ignore[no-untyped-def]
    tested, _ = databases
    insert = impl.TelemetryInsert(SQL)
    assert insert.insert(tested, []) == 0
    assert insert.insert(tested, [(TS, 1, []), (TS, 2, [])]) == 0
    assert not tested.in_transaction and count(tested) == 0


# -- transactions -------------------------------------------------------------------


def test_rollback_discards_the_rows_and_commit_keeps_them(impl: _fast.Implementation, databases,  # type: ignore[no-untyped-def]
                                                         installed_db: Path) -> None:
    tested, _ = databases
    insert = impl.TelemetryInsert(SQL)
    batch = sample_batch(30)
    assert not tested.in_transaction
    insert.insert(tested, batch)
    assert tested.in_transaction  # opened as pysqlite opens one before an INSERT
    tested.rollback()
    assert count(tested) == 0
    insert.insert(tested, batch)
    assert stored(installed_db) == 0  # not committed yet: invisible to another connection
    tested.commit()
    assert stored(installed_db) == 360 and not tested.in_transaction


def test_rows_join_a_transaction_already_open(impl: _fast.Implementation, databases) -> None:  # type: ignore[no-untyped-def]
    tested, _ = databases
    tested.execute("INSERT INTO devices (id, uuid, name, type, status) VALUES (99, 'u-99', 'n', 't', 'online')")
    assert tested.in_transaction
    impl.TelemetryInsert(SQL).insert(tested, [(TS, 99, [("can_bus", "rpm", "1", None)])])
    tested.rollback()
    assert count(tested) == 0
    assert tested.execute("SELECT count(*) FROM devices WHERE id = 99").fetchone()[0] == 0


def test_autocommit_connection_commits_each_row(impl: _fast.Implementation, installed_db: Path) -> None:
    conn = connect(installed_db, isolation_level=None)
    try:
        impl.TelemetryInsert(SQL).insert(conn, sample_batch(5))
        assert not conn.in_transaction
        assert stored(installed_db) == 60
    finally:
        conn.close()


@pytest.mark.skipif(sys.version_info < (3, 12), reason="sqlite3.Connection.autocommit is 3.12+")
def test_pep249_autocommit_false_keeps_its_transaction(impl: _fast.Implementation, installed_db: Path) -> None:
    conn = connect(installed_db)
    conn.autocommit = False  # type: ignore[attr-defined]  # after the pragmas: a transaction is always open
    try:
        impl.TelemetryInsert(SQL).insert(conn, sample_batch(5))
        conn.rollback()
        assert count(conn) == 0
        impl.TelemetryInsert(SQL).insert(conn, sample_batch(5))
        conn.commit()
        assert count(conn) == 60
        conn.autocommit = True  # type: ignore[attr-defined]  # no transaction: each row commits
        impl.TelemetryInsert(SQL).insert(conn, sample_batch(5))
        assert not conn.in_transaction and stored(installed_db) == 120
    finally:
        conn.close()


def test_sqlalchemy_transaction_commits_or_rolls_back_the_rows(impl: _fast.Implementation,
                                                               installed_db: Path) -> None:
    """The writer's own setting: ``Connection.begin()`` over pysqlite's implicit transactions."""
    engine = open_engine(Settings.from_env({"DATABASE_PATH": str(installed_db)}, env_file=None))
    insert = impl.TelemetryInsert(SQL)
    try:
        with engine.connect() as conn:
            with pytest.raises(RuntimeError), conn.begin():
                insert.insert(conn.connection.driver_connection, sample_batch(10))
                raise RuntimeError("roll back")
            assert conn.exec_driver_sql("SELECT count(*) FROM telemetry_data").scalar() == 0
            conn.rollback()  # ends the transaction the SELECT began
            with conn.begin():
                insert.insert(conn.connection.driver_connection, sample_batch(10))
        assert stored(installed_db) == 120
    finally:
        engine.dispose()


def test_closing_the_connection_closes_the_database(impl: _fast.Implementation, installed_db: Path) -> None:
    """The last close checkpoints and removes the WAL, as after ``executemany``.

    A statement the insert kept prepared used to hold the connection open
    past pysqlite's close: a clean shutdown left -wal and -shm behind, and the
    next opener had to recover the WAL.
    """
    insert = impl.TelemetryInsert(SQL)  # alive after the close, as the writer's is
    conn = connect(installed_db)
    insert.insert(conn, sample_batch(5))
    conn.commit()
    wal = installed_db.with_name(installed_db.name + "-wal")
    assert wal.exists()
    conn.close()
    assert not wal.exists()
    assert not installed_db.with_name(installed_db.name + "-shm").exists()
    assert stored(installed_db) == 5 * 12


# -- errors -------------------------------------------------------------------------


def _refused(impl: _fast.Implementation, databases, batch: list[Any]) -> tuple[tuple[Any, ...], int]:  # type: ignore[no-untyped-def]
    """Insert ``batch`` into both files; the outcome, once it is the same for both."""
    tested, expected = databases
    got = outcome(impl.TelemetryInsert(SQL).insert, tested, batch)
    want = outcome(reference_insert, expected, batch)
    assert got == want
    assert dump(tested) == dump(expected)  # the rows before the refused one, in the transaction
    return got, count(tested)


def test_not_null_violation_is_an_integrity_error_and_the_connection_stays_usable(
        impl: _fast.Implementation, databases) -> None:  # type: ignore[no-untyped-def]
    tested, _ = databases
    batch = sample_batch(20)
    batch[15][2][3] = ("can_bus", "can_bad", None, None)
    got, stored = _refused(impl, databases, batch)
    assert got[:2] == (sqlite3.IntegrityError, "NOT NULL constraint failed: telemetry_data.data_value")
    assert stored == 15 * 12 + 3
    if sys.version_info >= (3, 11):
        assert got[2:] == (1299, "SQLITE_CONSTRAINT_NOTNULL")
    tested.rollback()
    insert = impl.TelemetryInsert(SQL)
    assert insert.insert(tested, sample_batch(2)) == 24
    tested.commit()
    assert count(tested) == 24


def test_foreign_key_violation_is_an_integrity_error(impl: _fast.Implementation, databases) -> None:  # type: ignore[no-untyped-def]
    tested, expected = databases
    for conn in (tested, expected):
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("INSERT INTO devices (id, uuid, name, type, status) VALUES (1, 'u-1', 'n', 't', 'online')")
        conn.commit()
    batch = [(TS, 1, [("can_bus", "rpm", "1", "rpm")]), (TS, 404, [("can_bus", "rpm", "2", "rpm")])]
    got, stored = _refused(impl, databases, batch)
    assert got[:2] == (sqlite3.IntegrityError, "FOREIGN KEY constraint failed") and stored == 1


def test_a_locked_database_is_an_operational_error(impl: _fast.Implementation, databases) -> None:  # type: ignore[no-untyped-def]
    blockers = []
    for conn in databases:
        conn.execute("PRAGMA busy_timeout=50")
        path = conn.execute("PRAGMA database_list").fetchone()[2]
        blockers.append(sqlite3.connect(path, isolation_level=None))
        blockers[-1].execute("BEGIN IMMEDIATE")  # another writer holds the lock
    try:
        got, _ = _refused(impl, databases, sample_batch(2))
        assert got[:2] == (sqlite3.OperationalError, "database is locked")
    finally:
        for blocker in blockers:
            blocker.execute("ROLLBACK")
            blocker.close()
    tested, _ = databases
    tested.rollback()
    assert impl.TelemetryInsert(SQL).insert(tested, sample_batch(2)) == 24


#: Values the validator never builds, each bound by pysqlite exactly as ``executemany`` binds it.
ODD_ROWS = [
    ("can_bus", "rpm", 2500, None),  # stored as text by the column's affinity
    ("can_bus", "rpm", 2.5, "rpm"),
    ("can_bus", "rpm", b"\x00\x01", "rpm"),  # a blob
    ("can_bus", "rpm", "1", 20),
    ("can_bus", "rpm", "1", "rpm"),
]


@pytest.mark.parametrize("odd", [
    pytest.param(("x", 7, [("can_bus", "rpm", [1], None)]), id="list value"),
    pytest.param(("x", 7, [("can_bus", "rpm", "\ud800", None)]), id="lone surrogate"),
    pytest.param(("x", 7, [("can_bus", "rpm", "1")]), id="three-field row"),
    pytest.param(("x", 7, ["abc"]), id="row is a str"),
    pytest.param(("x", 7, [None]), id="row is None"),
    pytest.param(("x", 2**70, [("can_bus", "rpm", "1", None)]), id="device id past int64"),
    pytest.param(("x", 7, 5), id="rows not iterable"),
    pytest.param(("x", 7), id="two-field message"),
    pytest.param(("\udcff", 7, [("can_bus", "rpm", "1", None)]), id="surrogate timestamp"),
])
def test_rows_the_validator_never_builds_fail_as_in_executemany(impl: _fast.Implementation, databases,  # type: ignore[no-untyped-def]
                                                                 odd: Any) -> None:
    # Each batch has stored rows before the odd one: past a whole chunk.
    batch = [*sample_batch(12), odd, *sample_batch(2)]
    tested, expected = databases
    got = outcome(impl.TelemetryInsert(SQL).insert, tested, batch)
    want = outcome(reference_insert, expected, batch)
    assert got == want and got[0] != "ok"


def test_values_pysqlite_converts_are_stored_as_executemany_stores_them(impl: _fast.Implementation,  # type: ignore[no-untyped-def]
                                                                         databases) -> None:
    batch = [*sample_batch(3), (TS, 7, ODD_ROWS), (TS, True, ODD_ROWS[:1]), (TS, None, []),
             [TS, 7, [("a", "b", "c", None)]], (datetime(2026, 1, 1).isoformat(" "), 7, tuple(ODD_ROWS))]
    got, stored = _refused(impl, databases, batch)
    assert got == ("ok", 36 + 5 + 1 + 1 + 5) and stored == 48


@pytest.mark.skipif(sys.version_info < (3, 11), reason="Connection.setlimit is 3.11+")
def test_a_value_past_sqlites_length_limit_fails_as_in_executemany(impl: _fast.Implementation,  # type: ignore[no-untyped-def]
                                                                   databases) -> None:
    """SQLite refuses to bind it (SQLITE_TOOBIG); pysqlite then binds the row itself and says why."""
    tested, expected = databases
    for conn in (tested, expected):
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 1000)
    batch = [*sample_batch(3), (TS, 7, [("can_bus", "rpm", "y" * 5000, None)])]
    got, _ = _refused(impl, databases, batch)
    assert got[0] in (sqlite3.DataError, sqlite3.InterfaceError, sqlite3.ProgrammingError)


def test_the_writer_isolates_a_refused_message(impl: _fast.Implementation, installed_db: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer's bisection and reasons are those of executemany's errors."""
    monkeypatch.setattr(telemetry_module, "TelemetryInsert", impl.TelemetryInsert)
    engine = open_engine(Settings.from_env({"DATABASE_PATH": str(installed_db)}, env_file=None))
    writer = TelemetryWriter(engine)

    @contextmanager
    def transaction() -> Iterator[Any]:
        with engine.connect() as conn, conn.begin():
            yield conn

    now = datetime.now()
    items = [TelemetryItem(7, "esp32-can-001", now, [("can_bus", "can_rpm", str(n), "rpm")] * 3) for n in range(9)]
    items[5] = TelemetryItem(7, "esp32-can-001", now, [("can_bus", "can_bad", None, None)])
    try:
        result = writer.write(transaction, items)
        assert result.rows == 24 and [r.reason for r in result.rejected] == ["db_integrity_error"]
        assert stored(installed_db) == 24
    finally:
        engine.dispose()


def test_a_read_only_connection_is_dropped_from_the_pool(installed_db: Path) -> None:
    """SQLAlchemy never sees the insert's error, so the writer invalidates the connection itself."""
    engine = open_engine(Settings.from_env({"DATABASE_PATH": str(installed_db)}, env_file=None))
    writer = TelemetryWriter(engine)
    items = [TelemetryItem(7, "esp32-can-001", datetime.now(), [("can_bus", "can_rpm", "1", "rpm")])]
    conn = engine.connect()
    conn.exec_driver_sql("PRAGMA query_only=1")  # "attempt to write a readonly database"
    conn.commit()
    try:
        @contextmanager
        def transaction() -> Iterator[Any]:
            with conn.begin():
                yield conn

        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            writer.write(transaction, items)
        assert conn.invalidated
        conn.close()
        with engine.connect() as fresh, fresh.begin():  # a new connection: writable
            writer.write(lambda: _nested(fresh), items)
        assert stored(installed_db) == 1
    finally:
        engine.dispose()


@contextmanager
def _nested(conn: Any) -> Iterator[Any]:
    yield conn


# -- connections --------------------------------------------------------------------


def test_a_closed_connection_raises_as_pysqlite_does(impl: _fast.Implementation, databases) -> None:  # type: ignore[no-untyped-def]
    """Decided: a closed connection goes the pure way, so pysqlite raises its ProgrammingError."""
    tested, expected = databases
    insert = impl.TelemetryInsert(SQL)
    insert.insert(tested, sample_batch(1))  # a statement prepared on it, then the connection closes
    tested.close()
    expected.close()
    assert outcome(insert.insert, tested, sample_batch(1)) == outcome(reference_insert, expected, sample_batch(1))
    with pytest.raises(sqlite3.ProgrammingError, match="closed database"):
        insert.insert(tested, sample_batch(1))


def test_the_compiled_build_binds_the_rows_itself(impl: _fast.Implementation, installed_db: Path) -> None:
    """No executemany on a live connection; pysqlite sees only the rows it must bind itself."""
    calls: list[tuple[str, int]] = []

    class Spy(sqlite3.Connection):
        def executemany(self, sql: str, rows: Any) -> Any:  # type: ignore[override]
            rows = list(rows)
            calls.append(("executemany", len(rows)))
            return super().executemany(sql, rows)

        def execute(self, sql: str, *args: Any) -> Any:  # type: ignore[override]
            if sql == SQL:
                calls.append(("execute", 1))
            return super().execute(sql, *args)

    conn = sqlite3.connect(installed_db, factory=Spy)
    try:
        batch = [*sample_batch(20), (TS, 7, [("can_bus", "rpm", 2500, None)]), *sample_batch(2)]
        assert impl.TelemetryInsert(SQL).insert(conn, batch) == 265
        conn.commit()
    finally:
        conn.close()
    compiled = [("execute", 1)]  # the row with an int value only
    assert calls == (compiled if impl.name == _fast.CYTHON else [("executemany", 265)])


def test_a_connection_closed_while_the_batch_is_read(impl: _fast.Implementation, databases) -> None:  # type: ignore[no-untyped-def]
    def batch(conn: sqlite3.Connection) -> Iterator[tuple[str, int, list[Any]]]:
        yield from sample_batch(20)
        conn.close()
        yield from sample_batch(20)

    tested, expected = databases
    got = outcome(impl.TelemetryInsert(SQL).insert, tested, batch(tested))
    assert got == outcome(reference_insert, expected, batch(expected))
    assert got[:2] == (sqlite3.ProgrammingError, "Cannot operate on a closed database.")


def test_connections_that_fail_the_handle_check_take_the_pure_way(impl: _fast.Implementation) -> None:
    """Anything that is not a live sqlite3.Connection gets executemany, whatever it does with it."""
    calls: list[tuple[str, list[Any]]] = []

    class Recorder:
        def executemany(self, sql: str, rows: list[Any]) -> None:
            calls.append((sql, rows))

    batch = sample_batch(2)
    assert impl.TelemetryInsert(SQL).insert(Recorder(), batch) == 24
    assert calls == [(SQL, flat(batch))]


def test_statements_that_are_not_one_plain_insert_take_the_pure_way(impl: _fast.Implementation,  # type: ignore[no-untyped-def]
                                                                    databases) -> None:
    """pysqlite's own errors for SQL the compiled statement could not run as executemany does."""
    tested, expected = databases
    batch = sample_batch(1)
    five = ("INSERT INTO telemetry_data (timestamp, device_id, data_type, data_key, data_value) "
            "VALUES (?, ?, ?, ?, ?)")
    named = SQL.replace("?, ?, ?, ?, ?, ?", ":a, :b, :c, :d, :e, :f")
    for sql in (SQL + "; SELECT 1", five, "INSERT INTO nowhere VALUES (?, ?, ?, ?, ?, ?)", "   ", named):
        got = outcome(impl.TelemetryInsert(sql).insert, tested, batch)
        want = outcome(lambda c, b, s=sql: (c.executemany(s, flat(b)), len(flat(b)))[1], expected, batch)
        assert got[:2] == want[:2] and (got[0] != "ok" or sql == named)
        assert dump(tested) == dump(expected)
        tested.rollback()
        expected.rollback()
    with pytest.raises(TypeError):
        impl.TelemetryInsert(b"INSERT")  # type: ignore[arg-type]


def test_a_subclass_connection_and_several_connections_in_turn(impl: _fast.Implementation, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                               installed_db: Path) -> None:
    """Rows land in the connection given, however often the statement moves between them."""

    class Logged(sqlite3.Connection):
        pass

    paths = [installed_db] + [tmp_path / f"other-{n}.db" for n in range(2)]
    for path in paths[1:]:
        shutil.copyfile(installed_db, path)
    conns = [connect(paths[0]), sqlite3.connect(paths[1], factory=Logged), connect(paths[2])]
    insert = impl.TelemetryInsert(SQL)
    for n in range(6):
        conn = conns[n % 3]
        insert.insert(conn, [(TS, n, [("can_bus", "n", str(n), None)])])
        conn.commit()
    conns[0].close()  # its statement is still prepared: finalized after the close
    insert.insert(conns[1], [(TS, 9, [("can_bus", "n", "9", None)])])
    conns[1].commit()
    assert [r[0] for r in conns[1].execute("SELECT device_id FROM telemetry_data ORDER BY id")] == [1, 4, 9]
    assert [r[0] for r in conns[2].execute("SELECT device_id FROM telemetry_data ORDER BY id")] == [2, 5]
    conns[1].close()
    del insert  # finalizes a statement whose connection is closed
    conns[2].close()


def test_one_insert_object_used_by_two_threads_at_once(impl: _fast.Implementation, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                       installed_db: Path) -> None:
    """The statement is never shared by two threads: the second one goes the pure way."""
    second = tmp_path / "second.db"
    shutil.copyfile(installed_db, second)
    insert = impl.TelemetryInsert(SQL)
    errors: list[BaseException] = []

    def writer(path: Path, device_id: int) -> None:
        try:
            conn = connect(path)
            for _ in range(10):
                insert.insert(conn, [(TS, device_id, sample_batch(50)[0][2])] * 50)
                conn.commit()
            conn.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(path, n)) for n, path in enumerate((installed_db, second))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    for n, path in enumerate((installed_db, second)):
        assert stored(path, "SELECT count(*), min(device_id), max(device_id) FROM telemetry_data") == (6000, n, n)


def test_other_threads_run_during_a_long_batch(impl: _fast.Implementation, databases) -> None:  # type: ignore[no-untyped-def]
    """The GIL is let go while rows are stepped: the event loop's thread is not starved."""
    tested, _ = databases
    batch = sample_batch(8000, 12)  # 96,000 rows
    gaps: list[float] = []
    done = threading.Event()

    def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            time.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    thread = threading.Thread(target=ticker)
    thread.start()
    started = time.perf_counter()
    impl.TelemetryInsert(SQL).insert(tested, batch)
    elapsed = time.perf_counter() - started
    done.set()
    thread.join()
    # Held for the whole call, the GIL would leave one gap as long as the call; a busy
    # machine's scheduling makes gaps of tens of milliseconds, never most of the call.
    assert len(gaps) >= 5 and max(gaps) < elapsed / 2, (max(gaps), elapsed)


# -- random batches -----------------------------------------------------------------

texts = st.text(max_size=30)
units = st.one_of(st.none(), st.text(max_size=20), st.sampled_from(["°C", "km/h", "%"]))
rows_strategy = st.lists(st.tuples(st.sampled_from(["can_bus", "gps", "relay"]), texts, texts, units), max_size=40)
batches = st.lists(st.tuples(st.sampled_from([TS, "2026-01-01 00:00:00.000000", ""]),
                             st.integers(-(2**63), 2**63 - 1), rows_strategy), max_size=12)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(batch=batches)
def test_random_batches_store_the_same_table(impl: _fast.Implementation, databases, batch: Any) -> None:  # type: ignore[no-untyped-def]
    tested, expected = databases
    try:
        assert outcome(impl.TelemetryInsert(SQL).insert, tested, batch) == outcome(reference_insert, expected, batch)
        assert dump(tested) == dump(expected)
    finally:
        tested.rollback()
        expected.rollback()


def test_the_benchmark_harness_runs(tmp_path: Path) -> None:
    """benchmarks/bench_sqlwrite.py still works; its numbers are never asserted."""
    run = subprocess.run([sys.executable, "benchmarks/bench_sqlwrite.py", "--runs", "1", "--batches", "2",
                          "--messages", "5", "--dir", str(tmp_path)],
                         cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "| pure |" in run.stdout
