"""``autocore db stats | prune | vacuum``: the original maintenance script, safe beside a running gateway.

Every command works in short transactions, so the gateway and the Config App
keep writing while it runs:

- ``stats``: rows per table, size against the cap and the disk, oldest and
  newest telemetry, and the days until the database is full at the rate of the
  last hour (or the size retention holds it at).
- ``prune``: what the running gateway's retention does, batch by batch, now.
- ``vacuum``: gives freed pages back to the file system. The gateway reuses
  freed pages, so this matters only after a one-time deletion. With SQLite's
  ``auto_vacuum=INCREMENTAL`` it frees pages a few MB per transaction; a
  database without it needs one ``--full`` rewrite first, which holds the
  write lock for its whole duration and is refused while a gateway answers.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any, NamedTuple

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from autocore.config import Settings
from autocore.schema import (
    ensure_schema, event_logs, gateway_commands, gateway_message_keys, local_now, telemetry_data, telemetry_hourly,
)
from autocore.storage import open_engine
from autocore.storage.retention import MB, Retention, RetentionSettings, Usage

#: Tables listed by ``stats``.
TABLES = (telemetry_data, telemetry_hourly, event_logs, gateway_commands, gateway_message_keys)
#: Pages freed per transaction by an incremental vacuum (4 MB of 4 KB pages).
VACUUM_STEP_PAGES = 1000
#: Free space a full rewrite needs besides the database itself (a temporary copy).
FULL_VACUUM_HEADROOM = 1.1


class Projection(NamedTuple):
    """Where the database is heading at the rate of the last hour."""

    rows_per_day: float
    bytes_per_day: float
    room_bytes: int | None  # until the cap or the free-space floor, whichever binds first
    days_until_full: float | None  # None: it never fills (retention holds it) or nothing grows
    steady_bytes: float | None  # the size retention holds it at, when that is below the room

    def describe(self) -> str:
        growth = f"{self.rows_per_day:,.0f} rows/day, {self.bytes_per_day / MB:,.1f} MB/day"
        if self.days_until_full is not None:
            return f"{growth}: full in {self.days_until_full:,.1f} days"
        if self.steady_bytes is not None:
            return f"{growth}: never full (retention holds it near {self.steady_bytes / MB:,.0f} MB)"
        return f"{growth}: not growing"


def project(usage: Usage, raw_rows: int, rows_per_day: float, settings: RetentionSettings) -> Projection:
    """Days until full at ``rows_per_day``, and the size retention holds the database at."""
    per_row = usage.used / raw_rows if raw_rows else 200.0  # measured: 160-200 B per row with indexes
    bytes_per_day = rows_per_day * per_row
    rooms = []
    if usage.cap is not None:
        rooms.append(usage.cap - usage.used)
    if usage.disk_free is not None:
        # Freed pages inside the file are reused before the file grows.
        rooms.append(usage.disk_free - settings.min_free_bytes + (usage.file - usage.used))
    room = max(0, min(rooms)) if rooms else None
    steady = bytes_per_day * settings.telemetry_s / 86400 if settings.telemetry_s else None
    if bytes_per_day <= 0:
        return Projection(rows_per_day, bytes_per_day, room, None, None)
    if steady is not None and room is not None and steady - usage.used < room:
        return Projection(rows_per_day, bytes_per_day, room, None, steady)
    return Projection(rows_per_day, bytes_per_day, room, room / bytes_per_day if room is not None else None, None)


def stats(engine: Engine, settings: RetentionSettings) -> dict[str, Any]:
    retention = Retention(engine, settings)
    with engine.connect() as conn:
        rows = {table.name: int(conn.execute(select(func.count()).select_from(table)).scalar() or 0)
                for table in TABLES}
        oldest, newest = conn.execute(select(func.min(telemetry_data.c.timestamp),
                                             func.max(telemetry_data.c.timestamp))).one()
        last_hour = int(conn.execute(select(func.count()).select_from(telemetry_data).where(
            telemetry_data.c.timestamp >= local_now() - timedelta(hours=1))).scalar() or 0)
        usage = retention.measure(conn)
    return {"rows": rows, "oldest": oldest, "newest": newest, "usage": usage,
            "projection": project(usage, rows["telemetry_data"], last_hour * 24.0, settings)}


def print_stats(engine: Engine, settings: RetentionSettings) -> None:
    found = stats(engine, settings)
    usage: Usage = found["usage"]
    for name, count in found["rows"].items():
        print(f"{name:<22} {count:>12,} rows")
    print(f"{'telemetry from':<22} {found['oldest'] or '-'} to {found['newest'] or '-'}")
    size = f"{usage.used / MB:,.1f} MB in use, file {usage.file / MB:,.1f} MB"
    if usage.cap is not None:
        size += f", cap {usage.cap / MB:,.0f} MB"
    if usage.disk_free is not None:
        size += f", {usage.disk_free / MB:,.0f} MB free on its file system"
    print(f"{'size':<22} {size}")
    print(f"{'projection':<22} {found['projection'].describe()}")


def prune(engine: Engine, settings: RetentionSettings) -> dict[str, int]:
    retention = Retention(engine, settings)
    retention.new_round()
    while True:
        with engine.begin() as conn:
            if not retention.step(conn):
                break
        time.sleep(0.02)  # the gateway's commits get the write lock in between
    return {name: count for name, count in retention.removed.items() if count}


def vacuum(engine: Engine, full: bool, gateway_answers: bool) -> str:
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for table in TABLES:
                conn.exec_driver_sql(f"VACUUM (ANALYZE) {table.name}")
        return "VACUUM (ANALYZE) done: PostgreSQL reuses the freed space; it never blocks writers"
    with engine.connect() as conn:
        mode = int(conn.exec_driver_sql("PRAGMA auto_vacuum").scalar() or 0)
        page_size = int(conn.exec_driver_sql("PRAGMA page_size").scalar() or 4096)
        free_pages = int(conn.exec_driver_sql("PRAGMA freelist_count").scalar() or 0)
        pages = int(conn.exec_driver_sql("PRAGMA page_count").scalar() or 0)
    if mode == 2:  # INCREMENTAL: a few MB per transaction
        freed = 0
        while True:
            with engine.begin() as conn:
                before = int(conn.exec_driver_sql("PRAGMA freelist_count").scalar() or 0)
                conn.exec_driver_sql(f"PRAGMA incremental_vacuum({VACUUM_STEP_PAGES})")
                after = int(conn.exec_driver_sql("PRAGMA freelist_count").scalar() or 0)
            freed += before - after
            if after == 0 or before == after:
                break
            time.sleep(0.02)
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        return f"gave {freed * page_size / MB:,.1f} MB back to the file system"
    if not full:
        return (f"{free_pages * page_size / MB:,.1f} MB of {pages * page_size / MB:,.1f} MB are free pages, "
                "which the gateway reuses. Giving them back to the file system needs a one-time "
                "`autocore db vacuum --full` (rewrites the file, holding the write lock meanwhile; "
                "stop the gateway first), after which `autocore db vacuum` works in small steps.")
    if gateway_answers:
        return "refused: a gateway answers on its metrics port; stop it before a full rewrite"
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("PRAGMA auto_vacuum=INCREMENTAL")
        started = time.monotonic()
        conn.exec_driver_sql("VACUUM")
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    return (f"rewrote the database in {time.monotonic() - started:.1f}s with auto_vacuum=INCREMENTAL; "
            f"{free_pages * page_size / MB:,.1f} MB given back")


def run(settings: Settings, action: str, full: bool = False) -> int:
    """Entry point of ``autocore db``; returns the exit code."""
    engine = open_engine(settings)
    retention = RetentionSettings.from_settings(settings)
    try:
        ensure_schema(engine)  # as the gateway does at start: telemetry_hourly where absent
        if action == "stats":
            print_stats(engine, retention)
        elif action == "prune":
            removed = prune(engine, retention)
            print(", ".join(f"{name}: {count:,}" for name, count in removed.items()) or "nothing to remove")
        else:
            message = vacuum(engine, full, _gateway_answers(settings))
            print(message)
            if message.startswith("refused"):
                return 1
    finally:
        engine.dispose()
    return 0


def _gateway_answers(settings: Settings) -> bool:
    from autocore.overview import base_url, fetch

    if not settings.metrics_port:
        return False
    try:
        status, _ = fetch(base_url(settings) + "/healthz")
    except OSError:
        return False
    return status in (200, 503)


