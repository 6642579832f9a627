"""The device registry against a real SQLite file: LRU cache, bounded memory under made-up uuids."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path

from autocore.config import Settings
from autocore.registry import ONLINE, Registry
from autocore.ringbuffer import Ring
from autocore.schema import ensure_schema
from autocore.storage import Database, open_engine


def run_with_registry(db_path: Path, body, cache_size: int = 8):  # type: ignore[no-untyped-def]
    async def main():  # type: ignore[no-untyped-def]
        engine = open_engine(Settings.from_env({"DATABASE_PATH": str(db_path)}, env_file=None))
        ensure_schema(engine)
        db = Database(engine, Ring(100), 10, 0.1, write_interval_s=0.05)
        db.start()
        try:
            registry = Registry(db, cache_size, 300, "autocore-gateway")
            await registry.load()
            return await body(registry)
        finally:
            db.stop(5)
            db.close()

    return asyncio.run(main())


def register(db_path: Path, *uuids: str) -> None:
    with closing(sqlite3.connect(db_path)) as conn, conn:
        conn.executemany("INSERT INTO devices (uuid, name, type, status, is_active) VALUES (?, ?, 'esp32_relay', "
                         "'offline', 1)", [(u, u) for u in uuids])


def test_known_devices_cost_one_lookup_then_none(installed_db: Path) -> None:
    async def body(registry: Registry):  # type: ignore[no-untyped-def]
        register(installed_db, "esp32-relay-009")  # registered after start-up, as the Config App does
        first = await registry.resolve("esp32-relay-009")
        again = [await registry.resolve("esp32-relay-009") for _ in range(100)]
        return first, again, registry.lookups_done

    first, again, lookups = run_with_registry(installed_db, body)
    assert first is not None and all(device is first for device in again)
    assert lookups == 1


def test_made_up_uuids_keep_memory_and_queries_bounded(installed_db: Path) -> None:
    register(installed_db, "esp32-relay-001")

    async def body(registry: Registry):  # type: ignore[no-untyped-def]
        results = await asyncio.gather(*(registry.resolve(f"ghost-{i:05d}") for i in range(2000)))
        known = await registry.resolve("esp32-relay-001")
        return results, known, registry

    results, known, registry = run_with_registry(installed_db, body)
    assert not any(results)
    assert known is not None and known.status != ONLINE
    assert len(registry) <= registry.cache_size
    assert len(registry._unknown) <= registry.cache_size
    assert registry.lookups_done + registry.lookups_refused >= 2000
    assert registry.lookups_done <= 400  # the lookup budget, not one query per made-up uuid
    with closing(sqlite3.connect(installed_db)) as conn, conn:
        assert conn.execute("SELECT count(*) FROM devices").fetchone()[0] == 1
