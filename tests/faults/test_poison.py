"""One bad message must never stop storage: refused rows are isolated, the rest keeps flowing.

On PostgreSQL a single telemetry message with a unit past ``VARCHAR(20)`` used
to kill the database thread (psycopg's error escaped from ``COPY``), after
which nothing was stored while ``/healthz`` still answered. These tests send
such messages through a running gateway on SQLite and on PostgreSQL, then
through the database thread directly with rows the validator would never
build, and kill the thread to check that the gateway says so and exits.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import urllib.request
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from autocore.broker import find_free_port
from autocore.config import Settings
from autocore.ringbuffer import Ring
from autocore.schema import ensure_schema
from autocore.storage import Database, TelemetryItem, open_engine
from tests.fixtures.services import wait_for

ENVELOPE = {"protocol_version": "2.2.0", "uuid": "esp32-can-001", "timestamp": "2025-08-12T20:53:17Z"}
TOPIC = "autocore/devices/esp32-can-001/telemetry"


def can_message(signals: dict[str, dict[str, Any]]) -> bytes:
    return json.dumps({**ENVELOPE, "can_data": {"signals": signals}}).encode()


#: Each carries one good signal and one the telemetry table cannot hold as is.
HOSTILE = [
    can_message({"rpm": {"value": 1}, "speed": {"value": 2, "unit": "u" * 30}}),       # unit past VARCHAR(20)
    can_message({"rpm": {"value": 1}, "speed": {"value": 2, "unit": "k\u0000m/h"}}),   # NUL in a unit
    can_message({"rpm": {"value": 1}, "\u0130" * 60: {"value": 2}}),                   # lower() -> 120 chars
    can_message({"rpm": {"value": 1}, "\u0130" * 48: {"value": 2}}),                   # can_ + 96 = 100: kept
    can_message({"rpm": {"value": 1}, "speed": {"value": 2, "unit": "u" * 20}}),       # unit of 20: kept
]
GOOD = can_message({"rpm": {"value": 2500}, "speed": {"value": 88.5, "unit": "km/h"}})


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def _send_hostile_then_good(publish: Any) -> None:
    for payload in HOSTILE:
        publish(TOPIC, payload)
    for n in range(20):
        publish(TOPIC, GOOD.replace(b"2500", str(3000 + n).encode()))


def test_hostile_signals_are_skipped_and_counted_on_sqlite(env) -> None:  # type: ignore[no-untyped-def]
    gateway = env.gateway()
    env.register("esp32-can-001", "esp32_can")
    device = env.peer()
    _send_hostile_then_good(lambda topic, payload: device.publish(topic, payload, qos=1))
    wait_for(lambda: len(env.rows("SELECT id FROM telemetry_data WHERE data_key='can_rpm' "
                                  "AND CAST(data_value AS real) >= 3000")) == 20, what="the 20 good messages")
    keys = {r["data_key"] for r in env.rows("SELECT data_key FROM telemetry_data")}
    assert "can_" + "\u0130".lower() * 48 in keys  # exactly at the column's limit: stored
    assert not any(len(key) > 100 for key in keys)
    units = {r["unit"] for r in env.rows("SELECT unit FROM telemetry_data WHERE unit IS NOT NULL")}
    assert units == {"km/h", "u" * 20}
    assert gateway.alive()
    assert "Traceback" not in gateway.log


@pytest.mark.postgres
def test_one_bad_message_does_not_stop_storage_on_postgres(broker_factory, postgres_db, gateway_factory,
                                                          peer_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    broker = broker_factory()
    unused_port = find_free_port()
    device_id = postgres_db.register("esp32-can-001", "esp32_can")
    gateway = gateway_factory(broker, tmp_path / "unused.db", DATABASE_URL=postgres_db.url,
                              AUTOCORE_METRICS_PORT=str(unused_port))
    device = peer_factory(target=broker)
    _send_hostile_then_good(lambda topic, payload: device.publish(topic, payload, qos=1))
    wait_for(lambda: len(postgres_db.rows(
        "SELECT id FROM telemetry_data WHERE data_key='can_rpm' AND CAST(data_value AS float) >= 3000")) == 20,
        what="the 20 good messages after the hostile ones")
    page = _metrics(unused_port)
    assert 'autocore_telemetry_signals_skipped_total{device="esp32-can-001"} 3.0' in page

    # A device deleted under the gateway's cache: its rows break the foreign key.
    other_id = postgres_db.register("esp32-can-002", "esp32_can")
    other = can_message({"rpm": {"value": 7}}).replace(b"esp32-can-001", b"esp32-can-002")
    device.publish("autocore/devices/esp32-can-002/telemetry", other, qos=1)
    wait_for(lambda: postgres_db.rows("SELECT id FROM telemetry_data WHERE device_id=%s", other_id),
             what="the second device's first row")
    postgres_db.execute("DELETE FROM telemetry_data WHERE device_id=%s", other_id)
    postgres_db.execute("DELETE FROM devices WHERE id=%s", other_id)
    for n in range(5):
        device.publish("autocore/devices/esp32-can-002/telemetry", other, qos=1)
        device.publish(TOPIC, GOOD.replace(b"2500", str(5000 + n).encode()), qos=1)
    wait_for(lambda: len(postgres_db.rows(
        "SELECT id FROM telemetry_data WHERE device_id=%s AND data_key='can_rpm' "
        "AND CAST(data_value AS float) >= 5000", device_id)) == 5,
        what="good rows next to a deleted device's")
    assert gateway.alive()
    assert "database thread died" not in gateway.log
    with urllib.request.urlopen(f"http://127.0.0.1:{unused_port}/healthz", timeout=5) as response:
        assert response.status == 200


# -- the database thread directly, with rows the validator never builds ------------------------


def _items(device_id: int, poison: tuple[Any, ...]) -> list[TelemetryItem]:
    now = datetime.now()
    good = [TelemetryItem(device_id, "esp32-can-001", now, [("can_bus", "can_rpm", str(n), "rpm")],
                          ack=(n, 1), dedup_key=f"key-{n}") for n in range(1, 21)]
    bad = TelemetryItem(device_id, "esp32-can-001", now, [poison], ack=(99, 1), dedup_key="key-bad")
    return good[:7] + [bad] + good[7:]


def _run_database(engine: Any, items: list[TelemetryItem]) -> tuple[Database, list[Any], list[Any]]:
    acks: list[Any] = []
    refused: list[Any] = []
    db = Database(engine, Ring(1000), 1, 0.05, write_interval_s=0.0)
    db.on_acks = acks.extend
    db.on_rejected = refused.extend
    db.start()
    for item in items:
        db.push_reliable(item)
    wait_for(lambda: len(acks) == len(items), what="every message acknowledged")
    return db, acks, refused


def test_database_thread_isolates_a_refused_message_on_sqlite(installed_db: Path) -> None:
    engine = open_engine(Settings.from_env({"DATABASE_PATH": str(installed_db)}, env_file=None))
    ensure_schema(engine)
    with closing(sqlite3.connect(installed_db)) as conn, conn:
        conn.execute("INSERT INTO devices (id, uuid, name, type, status, is_active) "
                     "VALUES (7, 'esp32-can-001', 'CAN', 'esp32_can', 'online', 1)")
    # NOT NULL data_value: SQLite's own refusal of a row.
    db, acks, refused = _run_database(engine, _items(7, ("can_bus", "can_bad", None, None)))
    try:
        assert refused == [("esp32-can-001", "db_integrity_error")]
        assert sorted(acks) == sorted([(n, 1) for n in range(1, 21)] + [(99, 1)])
        with closing(sqlite3.connect(installed_db)) as conn, conn:
            values = [int(v) for (v,) in conn.execute("SELECT data_value FROM telemetry_data ORDER BY id")]
            keys = {k for (k,) in conn.execute("SELECT message_key FROM gateway_message_keys")}
        assert values == list(range(1, 21))  # the rest of the batch, in order
        assert "key-bad" not in keys and len(keys) == 20
        assert db.alive and db.messages_rejected == 1
    finally:
        db.stop()
        db.close()


@pytest.mark.postgres
def test_database_thread_isolates_a_refused_message_on_postgres(postgres_db) -> None:  # type: ignore[no-untyped-def]
    device_id = postgres_db.register("esp32-can-001", "esp32_can")
    engine = open_engine(Settings.from_env({"DATABASE_URL": postgres_db.url}, env_file=None))
    db, acks, refused = _run_database(engine, _items(device_id, ("can_bus", "can_bad", "1", "u" * 30)))
    try:
        assert refused == [("esp32-can-001", "db_data_error")]
        assert len(acks) == 21
        values = [int(r["data_value"]) for r in postgres_db.rows("SELECT data_value FROM telemetry_data ORDER BY id")]
        assert values == list(range(1, 21))
        assert db.alive
    finally:
        db.stop()
        db.close()


def test_a_dead_database_thread_fails_health_and_exits_70(installed_db: Path, broker) -> None:  # type: ignore[no-untyped-def]
    """Whatever kills the database thread, the gateway must not stay up storing nothing."""
    from autocore.gateway import EXIT_DATABASE_FAILED, Gateway

    unused_port = find_free_port()
    settings = Settings.from_env({
        "DATABASE_PATH": str(installed_db), "MQTT_BROKER": "127.0.0.1", "MQTT_PORT": str(broker.port),
        "AUTOCORE_METRICS_PORT": str(unused_port), "MQTT_CLIENT_ID": "poison-test-gateway",
    }, env_file=None)

    def get(path: str) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{unused_port}{path}", timeout=5) as response:
            return int(response.status)

    async def scenario() -> tuple[int, int, int]:
        gateway = Gateway(settings)
        running = asyncio.ensure_future(gateway.run(install_signal_handlers=False))
        await asyncio.wait_for(gateway.ready.wait(), 20)
        while gateway.exporter is None:
            await asyncio.sleep(0.05)
        assert gateway.db is not None
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, get, "/healthz") == 200

        def die(*_: Any) -> Any:
            raise SystemExit("injected: the database thread ends")

        gateway.db._run_jobs = die  # type: ignore[method-assign]  # the thread's next turn raises
        gateway.db.post(lambda conn: None)
        health = ready = 0
        exporter = gateway.exporter
        for _ in range(100):
            if not gateway.db.alive:  # what /healthz and /readyz answer (the server stops with the gateway)
                health = (await exporter._healthz())[0]
                ready = (await exporter._readyz())[0]
                break
            await asyncio.sleep(0.05)
        code = await asyncio.wait_for(running, 30)
        return health, ready, code

    health, ready, code = asyncio.run(scenario())
    assert (health, ready) == (503, 503)
    assert code == EXIT_DATABASE_FAILED
