"""Durability and write policy: when the gateway commits, and what a commit guarantees.

Two facts of the machine decide everything here:

- **Power is cut at every ignition-off.** A QoS 1/2 message is acknowledged
  to the broker only after the commit holding its rows (or its database job)
  returned, and the broker then forgets it. So every commit must be on stable
  storage when it returns: SQLite runs with ``synchronous=FULL``, which in WAL
  mode syncs the WAL at each commit. (``NORMAL`` syncs only at checkpoints; a
  power cut then loses acknowledged commits. On PostgreSQL the server's default
  ``synchronous_commit=on`` gives the same guarantee.) QoS 0 telemetry is never
  acknowledged: it waits in memory until the next commit, so a power cut loses
  at most one write interval of it.
- **The database sits on an SD card.** Every commit appends each page it
  touched to the WAL, and the telemetry table's indexes touch a page per
  distinct key, however few rows the commit carries. Few large commits wear the
  card far less than many small ones, so telemetry is committed at most once
  per write interval (``AUTOCORE_WRITE_INTERVAL``) with everything that arrived
  meanwhile, and sooner only when waiting would stall the broker (acks owed) or
  hold too much in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: How long SQLite waits for another writer (the Config App) before failing.
SQLITE_BUSY_TIMEOUT_MS = 5000
#: WAL pages after which a commit checkpoints them into the database file
#: (SQLite's default). A page rewritten by many commits between two checkpoints
#: reaches the database file once.
WAL_AUTOCHECKPOINT_PAGES = 1000
#: After a checkpoint the WAL file is cut back to this size (a Config App read
#: that held the checkpoint back must not leave a large file behind).
JOURNAL_SIZE_LIMIT_BYTES = 8 * 1024 * 1024

#: Default shortest time between two telemetry commits (AUTOCORE_WRITE_INTERVAL), s.
#: Measured (benchmarks/wear.py, 3 msg/s of 12 readings, a 200,000-reading table):
#: 1 s wrote about 5 KB per stored reading, 30 s 665 B, 60 s 475 B. From about 100
#: msg/s up, commits of MAX_BATCH_ROWS come sooner than the interval anyway.
WRITE_INTERVAL_S = 60.0
#: Most rows written in one transaction (bounds the write lock the Config App waits on).
MAX_BATCH_ROWS = 5000
#: Messages taken from each ring per batch; a ring holding this many commits early.
#: With up to 15 readings a message, about MAX_BATCH_ROWS: 2,000 let a commit carry
#: 24,000 rows, and one commit every 20 s at 100 msg/s.
MAX_BATCH_MESSAGES = 400
#: Share of the broker's in-flight window (the receive maximum) that may wait for
#: a commit before the writer commits early: the broker sends no further QoS 1/2
#: message once the whole window awaits acknowledgement.
ACK_WINDOW_SHARE = 0.5


def configure_sqlite(dbapi_connection: Any) -> None:
    """Apply WAL, durable commits, checkpoint cadence, cheap deletes and the busy timeout to a connection."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
    cursor.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT_BYTES}")
    # Debian's SQLite (and so Raspberry Pi OS's) overwrites deleted rows and freed
    # pages with zeros; FAST zeroes only within pages a delete writes anyway.
    # Without it retention wrote 4x the bytes of the telemetry it removed.
    cursor.execute("PRAGMA secure_delete=FAST")
    cursor.close()


@dataclass(frozen=True)
class CommitPolicy:
    """When the database thread commits the telemetry it holds.

    Telemetry is committed at most once per write interval, when rows are
    pending and either ``batch_rows`` of them wait (TELEMETRY_BATCH_SIZE) or
    the oldest has waited ``flush_interval_s`` (TELEMETRY_FLUSH_INTERVAL). At
    low load the write interval is thus the commit period: the most a QoS 0
    reading waits, and what a power cut may lose of it.

    A commit is *urgent*, whatever the interval, at shutdown, when the
    acknowledgements owed reach ``ack_threshold`` (the broker would otherwise
    stop sending), and when the pending rows or queued messages reach their
    caps: at high load commits carry ``max_rows`` rows, past which a larger
    commit saves little wear and holds the Config App's write lock longer.
    """

    write_interval_s: float = WRITE_INTERVAL_S
    flush_interval_s: float = 5.0
    batch_rows: int = 10
    ack_threshold: int = 50
    max_rows: int = MAX_BATCH_ROWS
    max_queued: int = MAX_BATCH_MESSAGES

    @classmethod
    def for_window(cls, receive_maximum: int, **kwargs: Any) -> CommitPolicy:
        """A policy that commits before half the broker's in-flight window awaits acks."""
        return cls(ack_threshold=max(1, int(receive_maximum * ACK_WINDOW_SHARE)), **kwargs)

    def urgent(self, pending_rows: int, acks_owed: int, queued: int, stopping: bool) -> bool:
        """Whether to commit now, without waiting for the write interval."""
        return (stopping or acks_owed >= self.ack_threshold or pending_rows >= self.max_rows
                or queued >= self.max_queued)

    def due(self, since_commit_s: float, oldest_age_s: float, pending_rows: int) -> bool:
        """Whether pending rows are due: the interval has passed, and rows or age call for it."""
        return since_commit_s >= self.write_interval_s and (
            pending_rows >= self.batch_rows or oldest_age_s >= self.flush_interval_s)
