"""One gateway on PostgreSQL: the same rows as on SQLite, COPY batches, LISTEN/NOTIFY pick-up."""

from __future__ import annotations

import json
import signal
from datetime import datetime, timedelta

import pytest

from tests.faults.test_delivery import Publisher
from tests.fixtures.services import fixture_bytes, wait_for
from tests.test_commands import RelayBoard

pytestmark = [pytest.mark.postgres]

UUID = "esp32-relay-001"


@pytest.fixture
def world(broker_factory, postgres_db, gateway_factory, peer_factory, tmp_path):  # type: ignore[no-untyped-def]
    """A private broker, a PostgreSQL database and helpers to start gateways on them."""

    class World:
        broker = broker_factory()
        db = postgres_db

        def gateway(self, **settings: str):  # type: ignore[no-untyped-def]
            return gateway_factory(self.broker, tmp_path / "unused.db", DATABASE_URL=self.db.url, **settings)

        def peer(self):  # type: ignore[no-untyped-def]
            return peer_factory(target=self.broker)

    made: list[RelayBoard] = []
    world = World()
    world.board = lambda uuid, answer=True: made.append(RelayBoard(world.broker, uuid, answer)) or made[-1]
    yield world
    for board in made:
        board.close()


def status(world, uuid: str) -> str | None:  # type: ignore[no-untyped-def]
    rows = world.db.rows("SELECT status FROM devices WHERE uuid=%s", uuid)
    return rows[0]["status"] if rows else None


def test_announce_telemetry_and_presence_are_stored(world) -> None:  # type: ignore[no-untyped-def]
    world.gateway()
    device = world.peer()
    announce = {**json.loads(fixture_bytes("announce.json")), "uuid": "esp32-can-001", "device_type": "esp32_can"}
    device.publish("autocore/devices/esp32-can-001/announce", json.dumps(announce))
    wait_for(lambda: status(world, "esp32-can-001") == "online", what="announced device online")
    before = datetime.now()
    for _ in range(3):
        device.publish("autocore/devices/esp32-can-001/telemetry", fixture_bytes("telemetry_can.json"))
    rows = wait_for(lambda: len(r := world.db.rows(
        "SELECT t.* FROM telemetry_data t JOIN devices d ON d.id = t.device_id "
        "WHERE d.uuid = 'esp32-can-001'")) >= 3 and r, what="telemetry rows")
    assert {row["data_type"] for row in rows} == {"can_bus"}
    # Naive local time, as the Config App expects (the suite runs at UTC-3).
    assert all(abs(row["timestamp"] - before) < timedelta(minutes=1) for row in rows)
    assert all(row["timestamp"].tzinfo is None for row in rows)
    gateway_row = world.db.rows("SELECT type, status FROM devices WHERE uuid='autocore-gateway'")
    assert gateway_row == [{"type": "gateway", "status": "online"}]
    events = world.db.rows("SELECT action FROM event_logs WHERE source='esp32-can-001'")
    assert "announce" in {e["action"] for e in events}


def test_new_command_rows_are_announced_by_notify(world) -> None:  # type: ignore[no-untyped-def]
    """The trigger the gateway installs notifies the channel for every new pending row."""
    import psycopg

    world.gateway()  # installs (or finds) the trigger
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:{world.db.cluster.port}/postgres",
                         autocommit=True) as listener:
        listener.execute("LISTEN autocore_commands")
        row_id = world.db.insert_command("esp32-ghost-001", "relay", {"channel": 1, "command": "on"})
        heard = [n.payload for n in listener.notifies(timeout=5.0, stop_after=1)]
    assert heard == [str(row_id)]


def test_relay_command_round_trip(world) -> None:  # type: ignore[no-untyped-def]
    gateway = world.gateway()
    world.db.register(UUID)
    board = world.board(UUID)
    world.peer().publish(f"autocore/devices/{UUID}/status",
                         json.dumps({"protocol_version": "2.2.0", "uuid": UUID, "status": "online"}))
    wait_for(lambda: status(world, UUID) == "online", what="board online")
    row_id = world.db.insert_command(UUID, "relay", {"channel": 3, "command": "on"})
    row = wait_for(lambda: (r := world.db.rows("SELECT * FROM gateway_commands WHERE id=%s", row_id)[0])
                   ["status"] == "acked" and r, what="acked command")
    assert row["attempts"] == 1 and row["claimed_by"] == "autocore-gateway" and row["sent_at"]
    assert [c["channel"] for c in board.commands] == [3]
    assert "LISTEN autocore_commands failed" not in gateway.log


def test_sigkill_under_load_stores_every_message_once(world) -> None:  # type: ignore[no-untyped-def]
    first = world.gateway()
    world.db.register("esp32-can-001", "esp32_can")
    publisher = Publisher(world.peer(), count=400, rate_hz=80)
    publisher.start()

    def stored() -> list[int]:
        return sorted(int(float(r["data_value"])) for r in world.db.rows(
            "SELECT data_value FROM telemetry_data WHERE data_key='analog_seq'"))

    wait_for(lambda: len(stored()) > 100, what="rows before the crash")
    first.stop(signal.SIGKILL)
    world.gateway()
    publisher.join(30)
    assert publisher.sent == 400
    wait_for(lambda: len(stored()) >= 400, timeout_s=30, what="every message stored")
    assert stored() == list(range(400))
