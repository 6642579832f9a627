"""The telemetry INSERT on SQLite (pure-Python twin of ``_sqlwrite.pyx``).

The database thread hands over a batch of messages, each
``(timestamp_text, device_id, rows)`` with the validator's rows
``(data_type, data_key, data_value, unit)``. This twin flattens them into one
tuple per row and gives them to the DB-API ``executemany``: that is the
specification. The compiled twin stores the same values with the same errors,
binding the strings straight into one prepared statement.

Rows go into the connection's current transaction (pysqlite opens one before
the first row, as for any INSERT), so the caller's commit or rollback decides
their fate. After an error the transaction may hold some rows of the batch
(with ``executemany``, those before the refused one): the caller rolls back.
"""

from __future__ import annotations

from typing import Any, Optional

Row = tuple[str, str, str, Optional[str]]
#: One message: its timestamp text, its device id and its rows.
Message = tuple[str, int, list[Row]]


class TelemetryInsert:
    """One INSERT statement of six parameters, run for a batch of messages."""

    __slots__ = ("_sql",)

    def __init__(self, sql: str) -> None:
        if not isinstance(sql, str):
            raise TypeError(f"sql must be a str, got {type(sql).__name__}")
        self._sql = sql

    def insert(self, dbapi_connection: Any, batch: list[Message]) -> int:
        """Insert every row of ``batch`` through ``dbapi_connection``; return the rows inserted."""
        rows = flat_rows(batch)
        if rows:
            dbapi_connection.executemany(self._sql, rows)
        return len(rows)


def flat_rows(batch: list[tuple[Any, Any, list[Row]]]) -> list[tuple[Any, ...]]:
    """One positional tuple per row, as ``executemany`` (and PostgreSQL's COPY) take them.

    The timestamp and device id pass through as they are (PostgreSQL's are not text).
    """
    return [(ts, device_id, data_type, key, value, unit)
            for ts, device_id, message_rows in batch
            for data_type, key, value, unit in message_rows]


def _message(message: Any) -> tuple[Any, Any, Any]:
    """Unpack a message the compiled twin cannot read directly, with Python's own errors."""
    ts, device_id, rows = message
    return ts, device_id, rows


def _row(ts: Any, device_id: Any, row: Any) -> tuple[Any, ...]:
    """The parameters of a row the compiled twin hands to pysqlite, built as ``insert`` builds them."""
    data_type, key, value, unit = row
    return (ts, device_id, data_type, key, value, unit)
