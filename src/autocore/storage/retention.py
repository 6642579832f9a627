"""Bounded storage: retention, hourly roll-ups and a size cap, in small batches.

Nothing the gateway writes may grow without bound on a Pi's SD card. Each
call of :meth:`Retention.step` does one small batch of the most urgent work and
returns how many rows it removed; the gateway calls it as a database job again
and again while there is work, so every batch holds the write lock briefly and
telemetry commits (and the Config App) get the database in between.

In order of urgency:

1. **Size cap / free-space floor.** When the database's pages in use reach
   ``TRIM_START`` of its cap, or the file system's free space falls below its
   floor, the oldest raw telemetry is rolled up and deleted even inside its
   retention, until use is back under ``TRIM_STOP``. Freed pages are reused by
   later inserts, so the file stops growing.
2. **Raw telemetry past its retention**, rolled up into ``telemetry_hourly``
   first. In every committed state, ``sum(telemetry_hourly.count)`` plus the raw
   rows left equals the readings ever stored.
3. Roll-ups, ``event_logs`` (but errors, warnings, security and critical
   events), finished ``gateway_commands`` and idempotency keys past theirs.

Every cut-off is naive local time, the convention of the shared database.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import DateTime, and_, bindparam, delete, func, not_, select, text
from sqlalchemy.engine import Connection, Engine

from autocore.schema import (
    event_logs, gateway_commands, gateway_message_keys, local_now, telemetry_hourly,
)

log = logging.getLogger(__name__)

#: Rows removed per transaction. Measured here: 8 ms for 2,000 rows, 18 ms for 5,000,
#: 35 ms for 10,000 (roll-up and delete), so a Pi Zero holds the write lock about
#: 0.2 s, as long as a telemetry commit of MAX_BATCH_ROWS. Fewer rows per batch
#: rewrite the same index and roll-up pages more often: 2,000 wrote 2.5x the
#: bytes per row removed that 5,000 do.
BATCH_ROWS = 5000
#: Trimming for the size cap starts at this share of the cap and stops below the second.
TRIM_START = 0.95
TRIM_STOP = 0.90
#: Share of the database's file system the cap defaults to (AUTOCORE_DB_MAX_MB=auto).
AUTO_CAP_SHARE = 0.25
#: Sizes are measured at most this often, s, unless the cap binds (pg_database_size
#: and statvfs are not free, and a batch of expiry changes little).
MEASURE_EVERY_S = 5.0
#: Event types never deleted by retention (the original maintenance script's rule).
KEPT_EVENT_TYPES = ("error", "warning", "security", "critical")
#: Statuses of gateway_commands rows that are finished.
FINISHED_COMMANDS = ("acked", "failed", "timeout", "expired")
MB = 1024 * 1024


@dataclass(frozen=True)
class RetentionSettings:
    """How long each kind of row is kept, s (0: forever), and how large the database may grow."""

    telemetry_s: float = 7 * 86400
    rollup_s: float = 365 * 86400
    event_s: float = 30 * 86400
    command_s: float = 30 * 86400
    dedup_s: float = 86400
    max_bytes: int | None = None  # None: AUTO_CAP_SHARE of the file system (SQLite), no cap (PostgreSQL)
    min_free_bytes: int = 256 * MB

    @classmethod
    def from_settings(cls, settings: Any) -> RetentionSettings:
        return cls(settings.telemetry_retention_s, settings.rollup_retention_s, settings.event_retention_s,
                   settings.command_retention_s, settings.dedup_retention_s,
                   None if settings.db_max_mb is None else int(settings.db_max_mb * MB),
                   int(settings.disk_min_free_mb * MB))


class Usage(NamedTuple):
    """How full the database is, in bytes; cap and free space are None where unknown."""

    used: int  # pages holding data (SQLite: page_count - freelist_count), or the database's size
    file: int  # the database file plus its WAL
    cap: int | None
    disk_free: int | None
    disk_total: int | None

    def trim_reason(self, min_free: int, trimming: bool) -> str | None:
        """Why the oldest telemetry must go now (None: it need not)."""
        share = TRIM_STOP if trimming else TRIM_START
        if self.cap is not None and self.used >= self.cap * share:
            return f"the database uses {self.used / MB:,.0f} MB of its {self.cap / MB:,.0f} MB cap"
        if self.disk_free is not None and self.disk_free < min_free:
            # Inserts that reuse freed pages do not grow the file: keep a tenth of it free.
            if self.used >= self.file * (TRIM_STOP if trimming else TRIM_START):
                return (f"{self.disk_free / MB:,.0f} MB free on its file system, "
                        f"below the {min_free / MB:,.0f} MB floor")
        return None


class Retention:
    """Removes what has expired, one batch per :meth:`step`; owned by the database thread."""

    def __init__(self, engine: Engine, settings: RetentionSettings,
                 clock: Callable[[], datetime] = local_now) -> None:
        self.settings = settings
        self._clock = clock
        self._postgres = engine.dialect.name == "postgresql"
        database = engine.url.database if engine.dialect.name == "sqlite" else None
        self._path = Path(database) if database and database != ":memory:" else None
        self._rollup_sql = _rollup_sql(engine)
        #: Why the size cap binds now, or None; read by /readyz and /metrics.
        self.trimming: str | None = None
        self.usage: Usage | None = None
        self._measured = 0.0  # monotonic time of the last measure()
        self._caught_up: set[str] = set()  # kinds whose last batch this round was partial
        # Counters (DB thread writes, anyone reads).
        self.removed: dict[str, int] = {"telemetry": 0, "telemetry_trimmed": 0, "telemetry_hourly": 0,
                                        "event_logs": 0, "gateway_commands": 0, "gateway_message_keys": 0}
        self.rolled_up = 0

    # -- one batch ------------------------------------------------------------------

    def step(self, conn: Connection) -> int:
        """Do the most urgent batch (in the caller's transaction); return the rows it removed.

        Each kind of row is drained in full batches during one round; a kind
        whose batch came back partial has caught up and rests until
        :meth:`new_round`. Otherwise, under a steady flow, a few rows expire
        between any two batches and retention would commit tiny batches
        non-stop: each commit rewrites the same index pages, and that wrote
        four times the bytes of the telemetry removed.
        """
        now = self._clock()
        if self.usage is None or self.trimming is not None or time.monotonic() - self._measured >= MEASURE_EVERY_S:
            self.usage = self.measure(conn)
            self._measured = time.monotonic()
        reason = self.usage.trim_reason(self.settings.min_free_bytes, self.trimming is not None)
        if reason != self.trimming:
            if reason is not None and self.trimming is None:
                log.warning("%s: deleting the oldest raw telemetry (rolled up first), even inside its retention",
                            reason)
            elif reason is None:
                log.info("the database is back under its size limits (%.0f MB in use)", self.usage.used / MB)
            self.trimming = reason
        if self.trimming is not None:
            removed = self._roll_up_and_delete(conn, None)
            if removed:
                self.removed["telemetry_trimmed"] += removed
                return removed
        for name, work in (("telemetry", self._expire_telemetry), ("telemetry_hourly", self._expire_rollups),
                           ("event_logs", self._expire_events), ("gateway_commands", self._expire_commands),
                           ("gateway_message_keys", self._expire_keys)):
            if name in self._caught_up:
                continue
            removed = work(conn, now)
            if removed < BATCH_ROWS:
                self._caught_up.add(name)
            if removed:
                self.removed[name] += removed
                return removed
        return 0

    def new_round(self) -> None:
        """Let every kind of row be looked at again (the gateway calls this every RETENTION_CHECK_S)."""
        self._caught_up.clear()

    def _expire_telemetry(self, conn: Connection, now: datetime) -> int:
        if not self.settings.telemetry_s:
            return 0
        return self._roll_up_and_delete(conn, now - timedelta(seconds=self.settings.telemetry_s))

    def _roll_up_and_delete(self, conn: Connection, before: datetime | None) -> int:
        """Average the oldest raw rows (all older than ``before``, if given) into their hours, then delete them.

        Both statements select the same rows (the oldest BATCH_ROWS by timestamp,
        then id) in one transaction that holds the write lock from the first, so
        what is rolled up is exactly what is deleted. The database does the work:
        no row is carried into Python.
        """
        where = "WHERE timestamp < :before " if before is not None else ""
        batch = f"SELECT id FROM telemetry_data {where}ORDER BY timestamp, id LIMIT {BATCH_ROWS}"
        params = {"before": before} if before is not None else {}
        typed = (bindparam("before", type_=DateTime),) if before is not None else ()
        conn.execute(text(self._rollup_sql.format(batch=batch)).bindparams(*typed), params)
        deleted = conn.execute(text(f"DELETE FROM telemetry_data WHERE id IN ({batch})").bindparams(*typed), params)
        removed = int(deleted.rowcount or 0)
        self.rolled_up += removed
        return removed

    def _expire_rollups(self, conn: Connection, now: datetime) -> int:
        h = telemetry_hourly.c
        return self._delete_oldest(conn, telemetry_hourly, h.id, h.hour_timestamp, self.settings.rollup_s, now)

    def _expire_events(self, conn: Connection, now: datetime) -> int:
        e = event_logs.c
        return self._delete_oldest(conn, event_logs, e.id, e.timestamp, self.settings.event_s, now,
                                   not_(e.event_type.in_(KEPT_EVENT_TYPES)))

    def _expire_commands(self, conn: Connection, now: datetime) -> int:
        c = gateway_commands.c
        return self._delete_oldest(conn, gateway_commands, c.id, func.coalesce(c.completed_at, c.created_at),
                                   self.settings.command_s, now, c.status.in_(FINISHED_COMMANDS))

    def _expire_keys(self, conn: Connection, now: datetime) -> int:
        k = gateway_message_keys.c
        return self._delete_oldest(conn, gateway_message_keys, k.message_key, k.received_at,
                                   self.settings.dedup_s, now)

    @staticmethod
    def _delete_oldest(conn: Connection, table: Any, key: Any, stamp: Any, keep_s: float, now: datetime,
                       *conditions: Any) -> int:
        if not keep_s:
            return 0
        expired = and_(stamp < now - timedelta(seconds=keep_s), *conditions)
        keys = [row[0] for row in conn.execute(select(key).where(expired).order_by(stamp).limit(BATCH_ROWS))]
        if keys:
            conn.execute(delete(table).where(key.in_(keys)))
        return len(keys)

    # -- size -----------------------------------------------------------------------

    def measure(self, conn: Connection) -> Usage:
        """Pages in use, file size, cap and free space of the database's file system."""
        if self._postgres:
            used = int(conn.exec_driver_sql("SELECT pg_database_size(current_database())").scalar() or 0)
            return Usage(used, used, self.settings.max_bytes, None, None)
        page_size = int(conn.exec_driver_sql("PRAGMA page_size").scalar() or 4096)
        pages = int(conn.exec_driver_sql("PRAGMA page_count").scalar() or 0)
        free_pages = int(conn.exec_driver_sql("PRAGMA freelist_count").scalar() or 0)
        used = (pages - free_pages) * page_size
        file_bytes = pages * page_size
        disk_free = disk_total = None
        if self._path is not None:
            wal = self._path.with_name(self._path.name + "-wal")
            try:
                file_bytes += wal.stat().st_size
            except OSError:
                pass
            try:
                fs = os.statvfs(self._path.parent)
            except OSError:
                fs = None
            if fs is not None and fs.f_blocks:  # some FUSE file systems report 0 blocks: unknown
                disk_free, disk_total = fs.f_bavail * fs.f_frsize, fs.f_blocks * fs.f_frsize
        cap = self.settings.max_bytes
        if cap is None and disk_total is not None:
            cap = int(disk_total * AUTO_CAP_SHARE)
        return Usage(used, file_bytes, cap, disk_free, disk_total)

    def snapshot(self) -> dict[str, Any]:
        return {"removed": dict(self.removed), "rolled_up": self.rolled_up, "trimming": self.trimming,
                "usage": self.usage._asdict() if self.usage else None, "checked": time.monotonic()}


#: Hourly roll-up of a batch of raw rows, merged into an hour already rolled up: counts
#: add, minima and maxima combine, the average is weighted by the counts (the original
#: script's INSERT OR REPLACE overwrote an hour rolled up in two passes). The weights
#: count every row, numeric or not; the gateway writes only numbers. ``{batch}`` selects
#: the ids of the batch.
_ROLLUP_MERGE = """
ON CONFLICT (device_id, data_type, data_key, hour_timestamp) DO UPDATE SET
    avg_value = CASE WHEN telemetry_hourly.avg_value IS NULL THEN excluded.avg_value
                     WHEN excluded.avg_value IS NULL THEN telemetry_hourly.avg_value
                     ELSE (telemetry_hourly.avg_value * telemetry_hourly.count
                           + excluded.avg_value * excluded.count)
                          / (telemetry_hourly.count + excluded.count) END,
    min_value = {least}(coalesce(telemetry_hourly.min_value, excluded.min_value),
                        coalesce(excluded.min_value, telemetry_hourly.min_value)),
    max_value = {greatest}(coalesce(telemetry_hourly.max_value, excluded.max_value),
                           coalesce(excluded.max_value, telemetry_hourly.max_value)),
    count = telemetry_hourly.count + excluded.count,
    unit = coalesce(telemetry_hourly.unit, excluded.unit)
"""
_ROLLUP_INSERT = """
INSERT INTO telemetry_hourly
    (device_id, data_type, data_key, hour_timestamp, avg_value, min_value, max_value, count, unit)
SELECT device_id, data_type, data_key, {hour}, avg(v), min(v), max(v), count(*), max(unit)
FROM (SELECT device_id, data_type, data_key, timestamp, unit, {number} AS v
      FROM telemetry_data WHERE id IN ({{batch}})) AS raw
WHERE true
GROUP BY device_id, data_type, data_key, {hour}
"""
#: Per dialect: the start of a row's hour (SQLite: the text SQLAlchemy's DateTime stores,
#: also from a Config App timestamp written with a 'T'), its value as a number or NULL,
#: and the two-argument minimum and maximum.
_ROLLUP_DIALECTS = {
    "sqlite": {
        "hour": "replace(substr(timestamp, 1, 13), 'T', ' ') || ':00:00.000000'",
        "number": "CASE WHEN data_value GLOB '*[0-9]*' AND data_value NOT GLOB '*[^0-9eE.+-]*' "
                  "THEN CAST(data_value AS REAL) END",
        "least": "min", "greatest": "max",
    },
    "postgresql": {
        "hour": "date_trunc('hour', timestamp)",
        "number": r"CASE WHEN data_value ~ '^[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$' "
                  "THEN CAST(data_value AS double precision) END",
        "least": "least", "greatest": "greatest",
    },
}


def _rollup_sql(engine: Engine) -> str:
    """The roll-up statement in the engine's dialect, with ``{batch}`` left to fill."""
    parts = _ROLLUP_DIALECTS["postgresql" if engine.dialect.name == "postgresql" else "sqlite"]
    return (_ROLLUP_INSERT.format(hour=parts["hour"], number=parts["number"])
            + _ROLLUP_MERGE.format(least=parts["least"], greatest=parts["greatest"]))
