"""The shared database: an installed system's schema is accepted unchanged."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from sqlalchemy import create_engine, event

from autocore.schema import OWN_TABLES, ROLLUP_TABLES, SHARED_TABLES, ensure_schema


def schema_of(path: Path) -> dict[str, str]:
    with closing(sqlite3.connect(path)) as conn, conn:
        return {name: sql for name, sql in conn.execute("SELECT name, sql FROM sqlite_master")}


def test_installed_schema_is_never_altered(installed_db: Path) -> None:
    before = schema_of(installed_db)
    # The fixture's header says 15 tables; the file defines 14 (no alembic_version).
    assert len([n for n in before if not n.startswith(("idx_", "sqlite_"))]) == 14
    engine = create_engine(f"sqlite:///{installed_db}")
    ddl: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def record(_conn, _cursor, statement, *_args):  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith(("CREATE", "ALTER", "DROP")):
            ddl.append(statement)

    assert ensure_schema(engine) == [*OWN_TABLES, *ROLLUP_TABLES]
    assert ensure_schema(engine) == []  # idempotent
    engine.dispose()
    after = schema_of(installed_db)
    for name, sql in before.items():
        assert after[name] == sql, f"{name} changed"
    touched = [s for s in ddl if not any(own in s for own in (*OWN_TABLES, *ROLLUP_TABLES))]
    assert touched == [], touched


def test_fresh_database_gets_every_gateway_table(tmp_path: Path) -> None:
    path = tmp_path / "fresh.db"
    engine = create_engine(f"sqlite:///{path}")
    assert sorted(ensure_schema(engine)) == sorted((*SHARED_TABLES, *OWN_TABLES, *ROLLUP_TABLES))
    engine.dispose()
    created = schema_of(path)
    for index in ("idx_devices_uuid", "idx_telemetry_timestamp", "idx_events_timestamp"):
        assert index in created


def test_shared_tables_match_the_installed_columns(installed_db: Path, tmp_path: Path) -> None:
    fresh = tmp_path / "fresh.db"
    engine = create_engine(f"sqlite:///{fresh}")
    ensure_schema(engine)
    engine.dispose()

    def columns(path: Path, table: str) -> list[tuple[str, str, int]]:
        with closing(sqlite3.connect(path)) as conn, conn:
            return [(r[1], r[2], r[3]) for r in conn.execute(f"PRAGMA table_info({table})")]

    for table in SHARED_TABLES:
        assert columns(fresh, table) == columns(installed_db, table), table


def test_an_older_command_table_gets_the_new_column(tmp_path: Path) -> None:
    """autocore's own tables grow by nullable columns; rows already there are kept."""
    path = tmp_path / "older.db"
    engine = create_engine(f"sqlite:///{path}")
    ensure_schema(engine)
    engine.dispose()
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("ALTER TABLE gateway_commands DROP COLUMN claimed_by")
        conn.execute("INSERT INTO gateway_commands (device_uuid, command_type, status, created_at) "
                     "VALUES ('esp32-relay-001', 'relay', 'acked', '2026-01-01 00:00:00')")
    engine = create_engine(f"sqlite:///{path}")
    assert ensure_schema(engine) == []
    engine.dispose()
    with closing(sqlite3.connect(path)) as conn, conn:
        names = [row[1] for row in conn.execute("PRAGMA table_info(gateway_commands)")]
        assert names[-1] == "claimed_by"
        assert conn.execute("SELECT status, claimed_by FROM gateway_commands").fetchall() == [("acked", None)]
