"""Floods the per-device rate limiter does not cover: each is bounded, and still processed.

- QoS 1 messages are never rate limited: a device repeating a large announce
  wrote a device update and an ``event_logs`` row with the whole payload (up
  to 64 KiB) per message.
- Every status message spawned a task plus a database barrier; with the
  database locked they piled up without bound.
- Telemetry from made-up uuids: each costs a look-up, never one per message.

These run the pipeline in process over a real SQLite file (``tests.inprocess``),
where the tasks and the database queue can be counted exactly.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import event

from autocore.pipeline import MAX_PENDING_TASKS
from autocore.registry import ANNOUNCE_EVENT_MAX_BYTES, CAPABILITIES_MAX_BYTES
from tests.fixtures.services import fixture_bytes, query
from tests.inprocess import World, envelope, register

ANNOUNCE = "autocore/devices/esp32-relay-001/announce"


def announce(firmware: str = "1.0.0", capabilities: int = 4000, stamp: int = 0) -> bytes:
    return envelope("esp32-relay-001", device_type="esp32_relay", firmware_version=firmware,
                    timestamp=f"2025-08-12T20:53:{stamp % 60:02d}Z",
                    capabilities=[f"capability_{n:05d}" for n in range(capabilities)])


def test_repeated_large_announces_write_one_bounded_event(installed_db: Path) -> None:
    async def scenario() -> list:
        world = await World.start(str(installed_db))
        try:
            mid = 0
            for n in range(300):  # the same announce again and again, QoS 1, ~70 KB each (64 KiB limit: 60 KB)
                mid += 1
                world.pipeline.handle(ANNOUNCE, announce(capabilities=3000, stamp=n), False, 1, mid)
                if n % 50 == 0:
                    await world.settle()
            for n in range(20):  # a new firmware each time: stored each time, summarised
                mid += 1
                world.pipeline.handle(ANNOUNCE, announce(firmware=f"1.0.{n + 1}", capabilities=3000), False, 1, mid)
                await world.settle()
            await world.settle()
            return list(world.acks)
        finally:
            await world.close()

    acks = asyncio.run(scenario())
    assert Counter(token[0] for _source, token in acks) == Counter(range(1, 321))
    events = query(installed_db, "SELECT payload FROM event_logs WHERE action='announce'")
    assert len(events) == 1 + 20, len(events)
    assert max(len(e["payload"].encode()) for e in events) <= ANNOUNCE_EVENT_MAX_BYTES
    assert json.loads(events[-1]["payload"])["truncated"] is True
    [device] = query(installed_db, "SELECT * FROM devices WHERE uuid='esp32-relay-001'")
    assert len(device["capabilities_json"].encode()) <= CAPABILITIES_MAX_BYTES
    assert device["firmware_version"] == "1.0.20"


def test_status_floods_while_the_database_is_locked_stay_bounded(installed_db: Path) -> None:
    register(str(installed_db), "esp32-relay-001", status="offline")
    blocker = sqlite3.connect(installed_db, isolation_level=None, check_same_thread=False)
    peaks = {"tasks": 0, "jobs": 0}

    async def scenario() -> tuple[list, int]:
        world = await World.start(str(installed_db))
        try:
            blocker.execute("BEGIN IMMEDIATE")
            # A status change of a known device: its database job waits for the lock, and
            # every job queued behind it waits too.
            world.pipeline.handle("autocore/devices/esp32-relay-001/status",
                                  envelope("esp32-relay-001", status="online"), False, 0, 0)
            mid = 0
            for n in range(20_000):
                ghost = f"ghost-{n % 10_000:05d}"
                qos = 1 if n % 200 == 0 else 0
                mid += qos
                world.pipeline.handle(f"autocore/devices/{ghost}/status", envelope(ghost, status="online"),
                                      False, qos, mid if qos else 0)
                if n % 100 == 0:
                    peaks["tasks"] = max(peaks["tasks"], len(world.pipeline._tasks))
                    peaks["jobs"] = max(peaks["jobs"], len(world.db._jobs))
                    await asyncio.sleep(0)
            blocker.execute("COMMIT")
            await world.settle(timeout_s=60)
            return list(world.acks), mid
        finally:
            if blocker.in_transaction:
                blocker.execute("COMMIT")
            await world.close()

    try:
        acks, qos1 = asyncio.run(scenario())
    finally:
        blocker.close()
    # QoS 1 statuses hold their acknowledgement (the broker's receive maximum bounds
    # them); QoS 0 ones past the bound are dropped and counted.
    assert peaks["tasks"] <= MAX_PENDING_TASKS + qos1, peaks
    assert peaks["jobs"] <= 2 * MAX_PENDING_TASKS + qos1, peaks
    assert Counter(token[0] for _source, token in acks) == Counter(range(1, qos1 + 1))
    assert query(installed_db, "SELECT status FROM devices WHERE uuid='esp32-relay-001'")[0]["status"] == "online"


def test_telemetry_from_made_up_uuids_costs_a_bounded_number_of_lookups(installed_db: Path) -> None:
    register(str(installed_db), "esp32-can-001", "esp32_can")
    good = fixture_bytes("telemetry_can.json")
    statements: list[str] = []

    async def scenario() -> tuple[float, Any]:
        world = await World.start(str(installed_db))
        event.listen(world.db.engine, "before_cursor_execute",
                     lambda _c, _cur, sql, *_a: statements.append(sql))
        try:
            started = asyncio.get_running_loop().time()
            for round_ in range(5):
                for n in range(1000):
                    ghost = f"ghost-{n:04d}"
                    world.pipeline.handle(f"autocore/devices/{ghost}/telemetry",
                                          good.replace(b"esp32-can-001", ghost.encode()), False, round_ % 2,
                                          n + 1 if round_ % 2 else 0)
                world.pipeline.handle("autocore/devices/esp32-can-001/telemetry", good, False, 0, 0)
                await asyncio.sleep(0.2)
            await world.settle()
            return asyncio.get_running_loop().time() - started, world.metrics
        finally:
            await world.close()

    elapsed_s, metrics = asyncio.run(scenario())
    lookups = [sql for sql in statements if "FROM devices" in sql and "WHERE devices.uuid" in sql]
    # Look-ups are budgeted on both threads (registry: 200 + 200/s; writer: 200 + 50/s).
    assert len(lookups) <= 400 + 250 * elapsed_s + 50, (len(lookups), elapsed_s)
    assert len(lookups) < 5000 / 2
    rows = query(installed_db, "SELECT DISTINCT device_id FROM telemetry_data")
    assert [r["device_id"] for r in rows] == [query(installed_db, "SELECT id FROM devices WHERE uuid='esp32-can-001'")[0]["id"]]
    assert len(query(installed_db, "SELECT id FROM telemetry_data")) >= 5 * 3
    assert metrics.rejected_by_reason["unknown_device"] > 0


def test_announces_from_made_up_uuids_create_a_bounded_number_of_devices(installed_db: Path) -> None:
    """Each made-up uuid's announce created a devices row: a flood grew the shared table without bound."""
    from autocore.registry import NEW_DEVICE_BURST

    register(str(installed_db), "esp32-relay-001", status="offline")

    async def scenario() -> int:
        world = await World.start(str(installed_db))
        try:
            for n in range(NEW_DEVICE_BURST + 150):
                uuid = f"ghost-{n:05d}"
                world.pipeline.handle(f"autocore/devices/{uuid}/announce",
                                      envelope(uuid, device_type="esp32_relay", firmware_version="1.0.0",
                                               capabilities=[]), False, 1, n + 1)
                if n % 50 == 0:
                    await world.settle()
            world.pipeline.handle(ANNOUNCE, announce(capabilities=4), False, 1, 10_000)  # a known board
            await world.settle()
            return world.registry.devices_refused
        finally:
            await world.close()

    refused = asyncio.run(scenario())
    ghosts = query(installed_db, "SELECT count(*) AS n FROM devices WHERE uuid LIKE 'ghost-%'")[0]["n"]
    assert ghosts <= NEW_DEVICE_BURST + 2 and refused >= 148  # the budget refills 10 a minute
    [board] = query(installed_db, "SELECT status FROM devices WHERE uuid='esp32-relay-001'")
    assert board["status"] == "online"  # a device already in the table is never refused
