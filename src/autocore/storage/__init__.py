"""Storage: everything between the gateway and its SQL database, one module per concern.

- :mod:`~autocore.storage.policy`: durability and write policy, in one place: what a
  commit guarantees (SQLite ``synchronous=FULL``, WAL and checkpoint sizes) and when
  telemetry is committed (:class:`CommitPolicy`).
- :mod:`~autocore.storage.engine`: which database to open and how connections are set up.
- :mod:`~autocore.storage.database`: the database thread, its jobs and telemetry batches.
- :mod:`~autocore.storage.buffer`: the QoS 0 telemetry queue, bounded by messages and memory.
- :mod:`~autocore.storage.telemetry`: rows into ``telemetry_data``, idempotency keys,
  and isolation of messages the database refuses.
- :mod:`~autocore.storage.retention`: retention, hourly roll-ups and the size cap, in small
  batches.
- :mod:`~autocore.storage.changes`, ``filewatch``, ``pglisten``: noticing what other
  processes (the Config App) write, without polling.
"""

from autocore.storage.buffer import TelemetryBuffer, rows_for
from autocore.storage.database import RELIABLE_CAPACITY, Database
from autocore.storage.engine import database_url, is_io_error, is_postgres, open_engine, short_error
from autocore.storage.policy import WRITE_INTERVAL_S, CommitPolicy
from autocore.storage.retention import Retention, RetentionSettings
from autocore.storage.telemetry import TelemetryItem

__all__ = [
    "RELIABLE_CAPACITY", "WRITE_INTERVAL_S", "CommitPolicy", "Database", "TelemetryBuffer", "TelemetryItem",
    "Retention", "RetentionSettings", "database_url", "is_io_error", "is_postgres", "open_engine", "rows_for",
    "short_error",
]
