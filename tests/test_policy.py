"""The commit policy: few large commits for the SD card, early ones when the broker waits on acks."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from datetime import datetime
from pathlib import Path

from autocore.config import Settings
from autocore.ringbuffer import Ring
from autocore.schema import ensure_schema
from autocore.storage import CommitPolicy, Database, TelemetryItem, open_engine
from tests.fixtures.services import wait_for

ROWS = [("can_bus", f"can_{n}", str(n), None) for n in range(15)]


def test_rows_wait_for_the_write_interval_then_commit_together() -> None:
    policy = CommitPolicy(write_interval_s=30.0, flush_interval_s=5.0, batch_rows=10)
    assert not policy.due(since_commit_s=29.9, oldest_age_s=29.9, pending_rows=4000)
    assert policy.due(since_commit_s=30.0, oldest_age_s=0.0, pending_rows=10)
    assert not policy.due(since_commit_s=30.0, oldest_age_s=4.9, pending_rows=9)  # too few, too young
    assert policy.due(since_commit_s=30.0, oldest_age_s=5.0, pending_rows=1)


def test_acks_owed_and_caps_make_a_commit_urgent() -> None:
    policy = CommitPolicy.for_window(100, write_interval_s=30.0)
    assert policy.ack_threshold == 50
    assert not policy.urgent(pending_rows=100, acks_owed=49, queued=49, stopping=False)
    assert policy.urgent(pending_rows=100, acks_owed=50, queued=0, stopping=False)
    assert policy.urgent(pending_rows=policy.max_rows, acks_owed=0, queued=0, stopping=False)
    assert policy.urgent(pending_rows=0, acks_owed=0, queued=policy.max_queued, stopping=False)
    assert policy.urgent(pending_rows=0, acks_owed=0, queued=0, stopping=True)


def _database(installed_db: Path, write_interval_s: float, ack_window: int, reliable: Ring | None = None) -> Database:
    engine = open_engine(Settings.from_env({"DATABASE_PATH": str(installed_db)}, env_file=None))
    ensure_schema(engine)
    with closing(sqlite3.connect(installed_db)) as conn, conn:
        conn.execute("INSERT INTO devices (id, uuid, name, type, status, is_active) "
                     "VALUES (7, 'esp32-can-001', 'CAN', 'esp32_can', 'online', 1)")
    db = Database(engine, Ring(10_000), 10, 60.0, reliable, write_interval_s=write_interval_s, ack_window=ack_window)
    db.start()
    return db


def test_a_qos1_backlog_commits_at_half_the_window_not_at_the_interval(installed_db: Path) -> None:
    db = _database(installed_db, write_interval_s=60.0, ack_window=20)
    acks: list[object] = []
    db.on_acks = acks.extend
    try:
        time.sleep(0.2)  # the start-up commit window passes
        now = datetime.now()
        for n in range(10):  # half the window of 20
            db.push_reliable(TelemetryItem(7, "esp32-can-001", now, ROWS, ack=(n + 1, 1), dedup_key=f"k{n}"))
        wait_for(lambda: len(acks) == 10, what="the early commit at half the window")
        for n in range(10, 15):  # below the threshold: they wait for the 60 s interval
            db.push_reliable(TelemetryItem(7, "esp32-can-001", now, ROWS, ack=(n + 1, 1), dedup_key=f"k{n}"))
        time.sleep(0.5)
        assert len(acks) == 10 and db.batches_written == 1
    finally:
        db.stop()
        db.close()
    assert len(acks) == 15  # flushed at shutdown


def test_committed_acks_no_longer_count_as_backlog_when_they_are_handed_over(installed_db: Path) -> None:
    """Reading resumes only where the acks arrive: they must not still count as owed there.

    The loop thread runs the acks callback as soon as it is scheduled; if the
    database thread reset its count only afterwards, a paused reader saw a high
    backlog that was gone, and no later commit came to resume it (a hang).
    """
    db = _database(installed_db, write_interval_s=60.0, ack_window=20, reliable=Ring(40, "reject"))
    assert db._reliable_low < 10  # the commit below is a backlog until it is acked
    low_when_acked: list[bool] = []
    db.on_acks = lambda acks: low_when_acked.append(db.reliable_backlog_low())
    try:
        time.sleep(0.2)
        now = datetime.now()
        for n in range(10):  # half the window: one commit
            db.push_reliable(TelemetryItem(7, "esp32-can-001", now, ROWS, ack=(n + 1, 1), dedup_key=f"k{n}"))
        wait_for(lambda: low_when_acked, what="the acks of the commit")
        assert low_when_acked == [True]
    finally:
        db.stop()
        db.close()


def test_qos0_telemetry_is_committed_once_per_interval(installed_db: Path) -> None:
    db = _database(installed_db, write_interval_s=0.5, ack_window=100)
    try:
        deadline = time.monotonic() + 2.1
        while time.monotonic() < deadline:  # 50 messages/s for 2 s
            db.push_telemetry(TelemetryItem(7, "esp32-can-001", datetime.now(), ROWS))
            time.sleep(0.02)
        wait_for(lambda: db.rows_written >= 100 * 15 * 0.9, what="rows committed")
        assert db.batches_written <= 6  # about 2.1 s / 0.5 s, not one commit per message
    finally:
        db.stop()
        db.close()


def test_idempotency_keys_grow_with_the_device_time_so_inserts_append() -> None:
    """A hash alone lands on a random page of the key index: one page written per QoS 1 message."""
    from autocore.pipeline import Delivery, _dedup_key

    def key(payload: bytes, timestamp: str | None) -> str:
        return _dedup_key("esp32-can-001", Delivery("autocore/devices/esp32-can-001/telemetry", payload,
                                                    False, 1, 7, False), timestamp)

    first = key(b'{"a":1}', "2026-12-05T10:00:01.250Z")
    assert first == key(b'{"a":1}', "2026-12-05T10:00:01.250Z")  # a redelivery finds it
    assert first != key(b'{"a":2}', "2026-12-05T10:00:01.250Z")
    later = [key(b'{"a":%d}' % n, f"2026-12-05T10:00:{n:02d}Z") for n in range(2, 60)]
    assert sorted(later) == later and first < later[0]  # later messages sort after earlier ones
    assert all(len(k) <= 64 for k in later)  # gateway_message_keys.message_key is VARCHAR(64)
    assert len(key(b"{}", None)) == 32  # no device time: the hash alone
