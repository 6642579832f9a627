"""Telemetry into ``telemetry_data``: one batch per transaction, poison rows isolated.

A batch is many devices' messages. The database may refuse one of them for
good (a value past a column's limit on PostgreSQL, a device deleted under a
foreign key): that message alone is rejected with a reason and the rest of the
batch is stored. A refusal that would hit any batch (locked, disk full,
connection lost) is not the rows' fault; it rolls the whole batch back for the
writer to retry.
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from typing import Any, ContextManager, NamedTuple

from sqlalchemy import select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DataError, IntegrityError, InterfaceError

from autocore._fast import TelemetryInsert
from autocore._fast._sqlwrite_py import flat_rows
from autocore.schema import devices, gateway_message_keys, telemetry_data
from autocore.storage.engine import is_read_only, short_error

#: How long an unknown device uuid is remembered as unknown.
UNKNOWN_DEVICE_TTL_S = 30.0
#: Device ids remembered by the writer (uuid -> devices.id).
DEVICE_ID_CACHE_SIZE = 4096
#: Uuids per look-up statement: a batch's unknown uuids are looked up together,
#: so a flood of made-up uuids costs a statement per batch, not one per message,
#: and no reading of a real device is ever given up for want of a look-up.
LOOKUP_CHUNK = 500
#: DB-API error classes that blame the rows, not the database (PEP 249 names, so
#: sqlite3's and psycopg's alike), and Python errors raised while a row is encoded.
_ROW_ERROR_NAMES = frozenset({"DataError", "IntegrityError", "InterfaceError"})
_ROW_ERRORS = (DataError, IntegrityError, InterfaceError, TypeError, ValueError, OverflowError)


class TelemetryItem(NamedTuple):
    """One validated telemetry message waiting for the writer."""

    device_id: int | None  # None when the event loop did not know it yet
    uuid: str
    received_at: datetime  # naive local receive time, the rows' timestamp
    rows: list[tuple[str, str, str, str | None]]
    ack: Any = None  # QoS 1/2 token to acknowledge once the rows are committed
    dedup_key: str | None = None  # idempotency key of a QoS 1/2 message
    redelivered: bool = False  # MQTT DUP flag: may already be stored


class Rejected(NamedTuple):
    """A message the database refused for good: never retried, acknowledged, counted."""

    item: TelemetryItem
    reason: str  # bounded reason code for metrics: db_data_error, db_integrity_error, ...
    error: str  # the database's first line, for the log


#: One message's rows for the INSERT: (timestamp, device id, the validator's rows).
Message = tuple[Any, int, list[tuple[str, str, str, str | None]]]


class BatchResult(NamedTuple):
    rows: int  # rows inserted
    duplicates: int  # redelivered messages found already stored
    unknown_rows: int  # rows of devices not in the database
    rejected: list[Rejected]


def blames_rows(exc: BaseException) -> bool:
    """Whether the database refused these rows themselves, so retrying them can never succeed."""
    if isinstance(exc, _ROW_ERRORS):
        return True
    return any(cls.__name__ in _ROW_ERROR_NAMES for cls in type(exc).__mro__)


def reason_for(exc: BaseException) -> str:
    """A bounded reason code for a refused message."""
    names = {cls.__name__ for cls in type(getattr(exc, "orig", None) or exc).__mro__}
    if "IntegrityError" in names:
        return "db_integrity_error"
    if "DataError" in names:
        return "db_data_error"
    return "db_rejected"


def _telemetry_insert(engine: Engine) -> tuple[str, Callable[[datetime], Any]]:
    """The telemetry INSERT in the driver's own paramstyle, and how to pass a timestamp.

    Telemetry is the one bulk write, so it skips SQLAlchemy's per-row bind
    processing: on SQLite the rows go to :class:`autocore._fast.TelemetryInsert`,
    elsewhere to the DBAPI as tuples. On SQLite the timestamp is the text
    SQLAlchemy's DateTime type itself stores (``YYYY-MM-DD HH:MM:SS.ffffff``), so
    the Config App reads the same values either way.
    """
    columns = ("timestamp", "device_id", "data_type", "data_key", "data_value", "unit")
    dialect = engine.dialect
    marker = {"qmark": "?", "format": "%s", "pyformat": "%s", "numeric": ":{n}"}.get(dialect.paramstyle, "?")
    quote = dialect.identifier_preparer.quote
    values = ", ".join(marker.format(n=n + 1) for n in range(len(columns)))
    sql = f"INSERT INTO {quote(telemetry_data.name)} ({', '.join(quote(c) for c in columns)}) VALUES ({values})"
    if dialect.name == "sqlite":
        return sql, lambda moment: moment.isoformat(" ", "microseconds")  # strftime: 3x slower
    return sql, lambda moment: moment


#: COPY statement of the PostgreSQL telemetry writer. Measured against psycopg's
#: pipelined executemany on loopback (benchmarks/pg_write.py): 1.4-1.5x faster at
#: 50 rows per batch, 1.7-2.5x at 500 and 5,000; multi-row VALUES is slower still.
_COPY_TELEMETRY = ("COPY telemetry_data (timestamp, device_id, data_type, data_key, data_value, unit) "
                   "FROM STDIN")


def _copy_rows(conn: Connection, rows: list[tuple[Any, ...]]) -> None:
    """Stream telemetry rows into PostgreSQL with COPY, inside the caller's transaction."""
    raw = conn.connection.driver_connection
    with raw.cursor() as cursor, cursor.copy(_COPY_TELEMETRY) as copy:
        for row in rows:
            copy.write_row(row)


def _sqlite_rows(conn: Connection, insert: Any, batch: list[Message]) -> int:
    """Insert on SQLite's own connection, in the caller's transaction.

    The driver's errors come unwrapped (the row-blaming checks go by class
    name). SQLAlchemy never sees this statement, so a read-only connection is
    invalidated here, as ``engine._drop_read_only_connections`` does for the others.
    """
    try:
        return int(insert.insert(conn.connection.driver_connection, batch))
    except Exception as exc:
        if is_read_only(exc):
            conn.invalidate(exc)
        raise


#: Records a batch's idempotency keys in one round trip; returns those that were new.
_PG_KEYS_INSERT = (
    "INSERT INTO gateway_message_keys (message_key, received_at) "
    "SELECT * FROM unnest(%s::text[], %s::timestamp[]) ON CONFLICT (message_key) DO NOTHING "
    "RETURNING message_key"
)


def _key_insert(engine: Engine) -> tuple[str, str]:
    """INSERT-if-absent and lookup statements for idempotency keys, in the driver's paramstyle."""
    marker = "?" if engine.dialect.paramstyle == "qmark" else "%s"
    table = gateway_message_keys.name
    insert_sql = (f"INSERT INTO {table} (message_key, received_at) VALUES ({marker}, {marker}) "
                  "ON CONFLICT (message_key) DO NOTHING")
    return insert_sql, f"SELECT 1 FROM {table} WHERE message_key = {marker}"


class TelemetryWriter:
    """Turns queued messages into rows and inserts them; owned by the database thread."""

    def __init__(self, engine: Engine) -> None:
        self._insert_sql, self._stamp = _telemetry_insert(engine)
        self._key_insert = _key_insert(engine)
        self._postgres = engine.dialect.name == "postgresql"
        # Compiled where it can be (autocore._fast): one prepared statement, no tuple per row.
        self._sqlite_insert = TelemetryInsert(self._insert_sql) if engine.dialect.name == "sqlite" else None
        self._device_ids: OrderedDict[str, int] = OrderedDict()
        self._unknown: dict[str, float] = {}

    def write(self, transaction: Callable[[], ContextManager[Connection]],
              items: list[TelemetryItem]) -> BatchResult:
        """Insert the batch in one transaction; messages the database refuses are left out.

        When the database blames the rows, the batch is halved, each half in a
        transaction of its own, until each refused message stands alone: a
        poison message costs about 2*log2(batch) extra transactions and the
        others are stored. Any other error propagates, nothing of the batch
        committed, for the caller to retry.
        """
        try:
            with transaction() as conn:
                return self._insert(conn, items)
        except Exception as exc:
            if not blames_rows(exc):
                raise
            if len(items) == 1:
                self.forget_device(items[0].uuid)  # a deleted device: look it up again next time
                return BatchResult(0, 0, 0, [Rejected(items[0], reason_for(exc), short_error(exc))])
        half = len(items) // 2
        first, second = self.write(transaction, items[:half]), self.write(transaction, items[half:])
        return BatchResult(first.rows + second.rows, first.duplicates + second.duplicates,
                           first.unknown_rows + second.unknown_rows, first.rejected + second.rejected)

    def _insert(self, conn: Connection, items: list[TelemetryItem]) -> BatchResult:
        batch, rows, duplicates, unknown = self._rows_for(conn, items)
        if rows and self._postgres:
            _copy_rows(conn, flat_rows(batch))
        elif rows and self._sqlite_insert is not None:
            _sqlite_rows(conn, self._sqlite_insert, batch)
        elif rows:
            conn.exec_driver_sql(self._insert_sql, flat_rows(batch))
        return BatchResult(rows, duplicates, unknown, [])

    def _rows_for(self, conn: Connection, items: list[TelemetryItem]) -> tuple[list[Message], int, int, int]:
        """The messages to insert, with their row count; one timestamp conversion per message."""
        batch: list[Message] = []
        rows = duplicates = unknown = 0
        stamp = self._stamp
        found = self._look_up(conn, items)
        fresh = self._record_keys(conn, items) if self._postgres else None
        for item in items:
            if item.dedup_key is not None:
                if fresh is None:
                    first = self._first_delivery(conn, item)
                else:  # the first item holding a new key takes it; a redelivery finds it taken
                    first = item.dedup_key in fresh or not item.redelivered
                    fresh.discard(item.dedup_key)
                if not first:
                    duplicates += 1
                    continue
            device_id = item.device_id
            if device_id is None:
                device_id = found.get(item.uuid)
                if device_id is None:
                    unknown += len(item.rows)
                    continue
            batch.append((stamp(item.received_at), device_id, item.rows))
            rows += len(item.rows)
        return batch, rows, duplicates, unknown

    def _first_delivery(self, conn: Connection, item: TelemetryItem) -> bool:
        """Record the message's idempotency key; False when a redelivery was already stored.

        Only redeliveries (DUP flag) are checked, so two identical readings sent
        within the same second both count; the key of every QoS 1 message is
        kept, in the same transaction as its rows.
        """
        if item.redelivered:
            seen = conn.exec_driver_sql(self._key_insert[1], (item.dedup_key,)).first()
            if seen is not None:
                return False
        conn.exec_driver_sql(self._key_insert[0], (item.dedup_key, self._stamp(item.received_at)))
        return True

    def _record_keys(self, conn: Connection, items: list[TelemetryItem]) -> set[str]:
        """Insert every idempotency key of the batch at once (PostgreSQL); return the new ones.

        One round trip instead of one per message; the unique key makes it safe
        when several gateways store redeliveries of the same message at once.
        """
        keyed = [item for item in items if item.dedup_key is not None]
        if not keyed:
            return set()
        result = conn.exec_driver_sql(_PG_KEYS_INSERT, (
            [item.dedup_key for item in keyed], [item.received_at for item in keyed]))
        return {key for (key,) in result}

    def _look_up(self, conn: Connection, items: list[TelemetryItem]) -> dict[str, int]:
        """Device ids of the batch's messages the event loop could not name, from cache or database.

        The uuids neither remembered nor recently found missing are looked up
        together, LOOKUP_CHUNK at a time: one indexed statement per chunk.
        """
        ids: dict[str, int] = {}
        wanted: set[str] = set()
        now = time.monotonic()
        for item in items:
            uuid = item.uuid
            if item.device_id is not None or uuid in ids or uuid in wanted:
                continue
            cached = self._device_ids.get(uuid)
            if cached is not None:
                self._device_ids.move_to_end(uuid)
                ids[uuid] = cached
            elif self._unknown.get(uuid, 0.0) <= now:
                wanted.add(uuid)
        if not wanted:
            return ids
        ordered = sorted(wanted)
        for start in range(0, len(ordered), LOOKUP_CHUNK):
            chunk = ordered[start:start + LOOKUP_CHUNK]
            rows = conn.execute(select(devices.c.uuid, devices.c.id).where(
                devices.c.uuid.in_(chunk), devices.c.is_active.is_not(False)))
            for uuid, device_id in rows:
                ids[uuid] = int(device_id)
                self.remember_device(uuid, int(device_id))
        self._remember_unknown(wanted.difference(ids), now)
        return ids

    def _remember_unknown(self, uuids: set[str], now: float) -> None:
        """Skip these uuids' look-ups for UNKNOWN_DEVICE_TTL_S, in a bounded map."""
        if len(self._unknown) + len(uuids) > DEVICE_ID_CACHE_SIZE:
            self._unknown = {u: t for u, t in self._unknown.items() if t > now}
            if len(self._unknown) + len(uuids) > DEVICE_ID_CACHE_SIZE:
                self._unknown.clear()
        expiry = now + UNKNOWN_DEVICE_TTL_S
        for uuid in itertools.islice(uuids, DEVICE_ID_CACHE_SIZE):
            self._unknown[uuid] = expiry

    def remember_device(self, uuid: str, device_id: int) -> None:
        """Record a uuid -> id mapping (DB thread only)."""
        self._device_ids[uuid] = device_id
        self._device_ids.move_to_end(uuid)
        self._unknown.pop(uuid, None)
        while len(self._device_ids) > DEVICE_ID_CACHE_SIZE:
            self._device_ids.popitem(last=False)

    def forget_device(self, uuid: str) -> None:
        self._device_ids.pop(uuid, None)

