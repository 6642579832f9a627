"""One malformed ``gateway_commands`` row never stops the commands behind it.

The Config App writes these rows and SQLite stores whatever it is given: text
in a number column, a timestamp that is not one, a device uuid that cannot
name a topic. Each such row is failed with the reason; every other command
is still sent. A claim that committed (rows now ``sent``) is delivered even
when the orphan sweep after it fails.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.exc import OperationalError

from autocore.outbox import SENT, CommandFeed
from autocore.schema import ensure_schema
from tests.fixtures.services import query
from tests.test_commands import boards, go_online, insert_command, wait_status  # noqa: F401 (fixture)


def test_malformed_rows_fail_with_a_reason_and_good_ones_are_sent(env, boards) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    env.gateway(MESSAGE_TIMEOUT="5")
    env.register("esp32-relay-001")
    env.register("bad+board")  # the Config App may register anything
    board = boards(env.broker, "esp32-relay-001")
    go_online(env, "esp32-relay-001")
    with closing(sqlite3.connect(env.db)) as conn, conn:
        conn.execute("UPDATE devices SET status='online' WHERE uuid='bad+board'")
    on = {"channel": 1, "command": "on"}
    # A row another gateway left ``sent`` with a timeout that is not a number: the
    # orphan sweep after every claim read it with float() and raised.
    stuck = insert_command(env.db, "esp32-relay-001", "relay", on, status="sent", claimed_by="gateway-gone",
                           timeout_s="soon", sent_at=datetime.now() - timedelta(hours=1))
    cases = {
        insert_command(env.db, "esp32-relay-001", "relay", on, timeout_s="soon"): "bad timeout_s",
        insert_command(env.db, "esp32-relay-001", "relay", on, max_age_s="x"): "bad max_age_s",
        insert_command(env.db, "esp32-relay-001", "relay", on, created_at="yesterday"): "bad created_at",
        insert_command(env.db, "esp32-relay-001", "relay", on, created_at=12345): "bad created_at",
        insert_command(env.db, "esp32-relay-001", "  ", on): "missing command_type",
        insert_command(env.db, "bad+board", "relay", on): "cannot name a topic",
    }
    utc_now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # ISO with a UTC offset: fine
    good = [insert_command(env.db, "esp32-relay-001", "relay", {"channel": 2, "command": "on"},
                           created_at=utc_now),
            insert_command(env.db, "esp32-relay-001", "relay", {"channel": 3, "command": "on"})]
    for row_id in good:
        wait_status(env.db, row_id, "acked")
    for row_id, reason in cases.items():
        assert reason in wait_status(env.db, row_id, "failed")["error_message"], (row_id, reason)
    assert "(sender gone)" in wait_status(env.db, stuck, "timeout")["error_message"]
    assert sorted(c["channel"] for c in board.commands) == [2, 3]


def test_a_claim_is_delivered_when_the_orphan_sweep_after_it_fails(installed_db: Path) -> None:
    engine = create_engine(f"sqlite:///{installed_db}")
    ensure_schema(engine)
    now = datetime.now()
    with closing(sqlite3.connect(installed_db)) as conn, conn:
        conn.execute("INSERT INTO devices (uuid, name, type, status, is_active, created_at, updated_at) "
                     "VALUES ('esp32-relay-001', 'Board', 'esp32_relay', 'online', 1, ?, ?)", (now, now))
        conn.execute("INSERT INTO gateway_commands (device_uuid, command_type, payload, created_at, status) "
                     "VALUES ('esp32-relay-001', 'relay', ?, ?, 'pending')",
                     (json.dumps({"channel": 1, "command": "on"}), now))
    delivered: list[Any] = []

    class SweepFails(CommandFeed):
        def _orphans(self, conn):  # type: ignore[no-untyped-def]
            raise OperationalError("SELECT ... FROM gateway_commands", {}, sqlite3.OperationalError("disk I/O error"))

    feed = SweepFails("autocore-gateway", 30.0, 60.0, lambda claimed, outcomes: delivered.append(claimed))
    try:
        with engine.connect() as conn:
            try:
                feed.poll(conn)
            except OperationalError:
                pass  # the database thread logs it and polls again
            else:
                raise AssertionError("the injected failure did not happen")
    finally:
        engine.dispose()
    [row] = query(installed_db, "SELECT status FROM gateway_commands")
    assert row["status"] == SENT
    assert [[item.command.params for item in batch] for batch in delivered] == [[{"channel": 1, "command": "on"}]]
    asyncio.run(asyncio.sleep(0))  # nothing left pending on a loop
