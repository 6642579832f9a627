"""Command claims: gateways polling one database at the same time never take the same row.

Two feeds (what two gateways run on their database threads) race over the
same pending rows on a real SQLite file and on a real PostgreSQL server.
"""

from __future__ import annotations

import json
import threading
from contextlib import closing
from datetime import datetime, timedelta

import pytest

from autocore import outbox
from autocore.config import Settings
from autocore.outbox import CommandFeed
from autocore.storage import open_engine

ROWS = 200
HELD = 30


@pytest.fixture(autouse=True)
def small_claims(monkeypatch: pytest.MonkeyPatch) -> None:
    """Claim 10 rows per round, so the two feeds take turns instead of one taking everything."""
    monkeypatch.setattr(outbox, "CLAIM_LIMIT", 10)


def seed(execute, marker: str) -> None:  # type: ignore[no-untyped-def]
    """An online relay board, an offline one, and pending commands for both."""
    now = datetime.now()
    for uuid, status in (("esp32-relay-001", "online"), ("esp32-relay-002", "offline")):
        execute("INSERT INTO devices (uuid, name, type, status, is_active, created_at, updated_at) "
                f"VALUES ({marker}, 'board', 'esp32_relay', {marker}, true, {marker}, {marker})",
                (uuid, status, now, now))
    # Rows waiting for the offline board come first: they must not crowd out the others.
    for n in range(HELD):
        execute("INSERT INTO gateway_commands (device_uuid, command_type, payload, created_at, status) "
                f"VALUES ({marker}, 'relay', {marker}, {marker}, 'pending')",
                ("esp32-relay-002", json.dumps({"channel": n % 16 + 1, "command": "on"}), now))
    execute("INSERT INTO gateway_commands (device_uuid, command_type, payload, created_at, status, max_age_s) "
            f"VALUES ({marker}, 'relay', {marker}, {marker}, 'pending', 5)",
            ("esp32-relay-002", json.dumps({"channel": 2, "command": "on"}), now - timedelta(seconds=60)))
    for n in range(ROWS):
        execute("INSERT INTO gateway_commands (device_uuid, command_type, payload, created_at, status) "
                f"VALUES ({marker}, 'relay', {marker}, {marker}, 'pending')",
                ("esp32-relay-001", json.dumps({"channel": n % 16 + 1, "command": "on"}), now))


def race(settings: Settings) -> dict[str, list[int]]:
    """Two feeds poll until nothing claimable is left; returns the row ids each one claimed."""
    claimed: dict[str, list[int]] = {"gw-a": [], "gw-b": []}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def gateway(name: str) -> None:
        engine = open_engine(settings)
        feed = CommandFeed(name, 30.0, 60.0, lambda got, _outcomes: claimed[name].extend(
            item.command.id for item in got))
        try:
            start.wait(10)
            with engine.connect() as conn:
                for _ in range(ROWS):  # bounded: each round claims up to CLAIM_LIMIT rows
                    feed.recheck()
                    before = len(claimed[name])
                    feed.poll(conn)
                    conn.rollback()
                    if len(claimed[name]) == before and sum(map(len, claimed.values())) >= ROWS:
                        break
        except BaseException as exc:  # surfaced in the test below
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=gateway, args=(name,)) for name in claimed]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    print({name: len(ids) for name, ids in claimed.items()})  # how the rows were split
    return claimed


def check(claimed: dict[str, list[int]], rows: list[dict]) -> None:  # type: ignore[type-arg]
    every = claimed["gw-a"] + claimed["gw-b"]
    assert len(every) == len(set(every)) == ROWS, "a row claimed twice, or one left behind"
    sent = {row["id"]: row for row in rows if row["status"] == "sent"}
    assert sorted(sent) == sorted(every)
    for name, ids in claimed.items():
        assert all(sent[i]["claimed_by"] == name and sent[i]["attempts"] == 1 for i in ids)
    others = sorted((row["status"], row["error_message"]) for row in rows if row["status"] != "sent")
    assert others == [("expired", "device offline past the command's maximum age")] + [("pending", None)] * HELD


def test_sqlite_claims_are_exclusive(installed_db) -> None:  # type: ignore[no-untyped-def]
    import sqlite3

    with closing(sqlite3.connect(installed_db)) as conn, conn:
        settings = Settings.from_env({"DATABASE_PATH": str(installed_db)}, env_file=None)
        engine = open_engine(settings)
        from autocore.schema import ensure_schema

        ensure_schema(engine)
        engine.dispose()
        seed(lambda sql, params: conn.execute(sql, params), "?")
    claimed = race(settings)
    with closing(sqlite3.connect(installed_db)) as conn, conn:
        conn.row_factory = sqlite3.Row
        rows = [dict(row) for row in conn.execute("SELECT * FROM gateway_commands")]
    check(claimed, rows)


@pytest.mark.postgres
def test_postgres_claims_are_exclusive(postgres_db) -> None:  # type: ignore[no-untyped-def]
    seed(lambda sql, params: postgres_db.execute(sql, *params), "%s")
    claimed = race(Settings.from_env({"DATABASE_URL": postgres_db.url}, env_file=None))
    check(claimed, postgres_db.rows("SELECT * FROM gateway_commands"))
