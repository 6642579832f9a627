"""The gateway's pipeline in the test process, over a real database, without a broker.

The pieces are wired as ``Gateway`` wires them (database thread, registry,
pipeline, outbox), so a test can feed messages straight into
``Pipeline.handle`` and see every acknowledgement, publish and row. Only the
MQTT client is left out: what the gateway would publish is recorded, and
acknowledgements are recorded with where they came from (the pipeline at
once, or the database thread after a commit).
"""

from __future__ import annotations

import asyncio
import json
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from autocore.config import Settings
from autocore.metrics import Metrics
from autocore.outbox import Outbox
from autocore.pipeline import Pipeline
from autocore.registry import Registry, register_gateway
from autocore.reports import ErrorReporter
from autocore.ringbuffer import Ring
from autocore.schema import ensure_schema
from autocore.storage import RELIABLE_CAPACITY, Database, TelemetryBuffer, open_engine, rows_for

ENVELOPE = {"protocol_version": "2.2.0", "timestamp": "2025-08-12T20:53:17Z"}


def envelope(uuid: str, **fields: Any) -> bytes:
    return json.dumps({**ENVELOPE, "uuid": uuid, **fields}).encode()


@dataclass
class Published:
    """What ``MqttClient.publish`` returns, as far as the pipeline and outbox look at it."""

    rc: int = 0
    mid: int = 0

    def is_published(self) -> bool:
        return True


@dataclass
class World:
    """A started pipeline; use ``async with World.start(...)``."""

    settings: Settings
    db: Database
    registry: Registry
    pipeline: Pipeline
    metrics: Metrics
    outbox: Outbox | None = None
    published: list[tuple[str, bytes, int, bool]] = field(default_factory=list)
    #: (source, token): source is "pipeline" (acknowledged at once) or "commit".
    acks: list[tuple[str, Any]] = field(default_factory=list)

    @classmethod
    async def start(cls, database_path: str | None = None, database_url: str | None = None,
                    outbox: bool = False, **environ: str) -> World:
        values = {"DATABASE_PATH": database_path or "unused.db", "AUTOCORE_CREATE_DATABASE": "true",
                  "TELEMETRY_FLUSH_INTERVAL": "0.05", "AUTOCORE_WRITE_INTERVAL": "0.05", **environ}
        if database_url:
            values["DATABASE_URL"] = database_url
        settings = Settings.from_env(environ=values, env_file=None)
        loop = asyncio.get_running_loop()
        engine = open_engine(settings)
        await loop.run_in_executor(None, ensure_schema, engine)
        ring = TelemetryBuffer(Ring(settings.ring_capacity, "drop_oldest"), rows_for(settings.buffer_mb))
        db = Database(engine, ring, settings.telemetry_batch_size,
                      settings.telemetry_flush_interval_s,
                      Ring(max(8 * settings.max_concurrent_messages, RELIABLE_CAPACITY), "reject"),
                      settings.write_interval_s, ack_window=settings.max_concurrent_messages)
        db.start()
        await db.call(register_gateway, settings.gateway_uuid, "test")
        registry = Registry(db, settings.device_cache_size, settings.device_timeout_s, settings.gateway_uuid)
        await registry.load()
        metrics = Metrics()
        world = cls(settings, db, registry, None, metrics)  # type: ignore[arg-type]

        def publish(topic: str, payload: bytes, qos: int, retain: bool, *_: Any, **__: Any) -> Published:
            world.published.append((topic, payload, qos, retain))
            return Published()

        reporter = ErrorReporter(settings.gateway_uuid, publish)
        world.pipeline = Pipeline(settings, db, registry, metrics, reporter, publish)
        world.pipeline.ack = lambda *token: world.acks.append(("pipeline", token))
        db.on_acks = lambda tokens: loop.call_soon_threadsafe(
            world.acks.extend, [("commit", token) for token in tokens])
        db.on_rejected = lambda refused: loop.call_soon_threadsafe(
            lambda: [metrics.reject(reason, uuid) for uuid, reason in refused])
        if outbox:
            world.outbox = Outbox(db, reporter, publish, settings.gateway_uuid, settings.message_timeout_s,
                                  settings.command_max_age_s)
            world.outbox.on_unknown = world.pipeline.unknown_response
            world.pipeline.outbox = world.outbox
            registry.on_online = world.outbox.device_online
        return world

    async def settle(self, timeout_s: float = 10.0) -> None:
        """Wait until the pipeline's tasks ran and everything queued is committed."""
        await self.pipeline.drain_tasks(timeout_s)
        await asyncio.wait_for(self.db.barrier(), timeout_s)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while (len(self.db.ring) or len(self.db.reliable_ring) or self.db._acks_pending) and \
                asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.wait_for(self.db.barrier(), timeout_s)
        await asyncio.sleep(0.05)  # acks and job results are delivered with call_soon_threadsafe

    async def close(self) -> None:
        if self.outbox is not None:
            self.outbox.stop()
        self.pipeline.accepting = False
        await self.pipeline.drain_tasks(5.0)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.db.stop, 10.0)
        self.db.close()

    async def __aenter__(self) -> World:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


def register(db_path: str, uuid: str, device_type: str = "esp32_relay", status: str = "offline") -> None:
    """Insert a device the way the Config App does."""
    import sqlite3

    now = datetime.now()
    with closing(sqlite3.connect(db_path)) as conn, conn:
        conn.execute("INSERT INTO devices (uuid, name, type, status, is_active, created_at, updated_at)"
                     " VALUES (?, ?, ?, ?, 1, ?, ?)", (uuid, f"Board {uuid}", device_type, status, now, now))
