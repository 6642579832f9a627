"""Several gateways on one broker and one PostgreSQL database, splitting the traffic.

Every gateway subscribes through the same MQTT 5 shared subscription, so each
device message reaches exactly one of them. These tests run real ``autocore
run`` processes, kill one with SIGKILL mid-load, and check what the database
holds: every QoS 1 message exactly once, every command sent at most once and
resolved exactly once, and one presence transition per real change.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from collections import Counter

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.fixtures.services import fixture_bytes, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

TELEMETRY = json.loads(fixture_bytes("telemetry_can.json"))
GROUP = "autocore"


def numbered(uuid: str, seq: int) -> bytes:
    return json.dumps({**TELEMETRY, "uuid": uuid, "analog_sensors": {"seq": seq}}).encode()


class Fleet:
    """Simulated ESP32s: ``clients`` connections, each speaking for a slice of the devices.

    Every device answers each generic command it receives with a successful
    ``response`` and remembers how often it saw each ``command_id``.
    """

    def __init__(self, broker, uuids: list[str], clients: int) -> None:  # type: ignore[no-untyped-def]
        self.received: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.slices = [uuids[i::clients] for i in range(clients)]
        self.clients = []
        for index, owned in enumerate(self.slices):
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"fleet-{index}")
            client.on_message = self._on_message
            subscribed = threading.Event()
            client.on_subscribe = lambda *args, ready=subscribed: ready.set()
            client.connect(broker.host, broker.port)
            client.loop_start()
            client.subscribe([(f"autocore/devices/{uuid}/command", 1) for uuid in owned])
            assert subscribed.wait(10)
            self.clients.append(client)

    def _on_message(self, client, _userdata, message) -> None:  # type: ignore[no-untyped-def]
        body = json.loads(message.payload)
        uuid = message.topic.split("/")[2]
        with self._lock:
            self.received[body["command_id"]] += 1
        reply = {"protocol_version": "2.2.0", "uuid": uuid, "command_id": body["command_id"], "success": True}
        client.publish(f"autocore/devices/{uuid}/response", json.dumps(reply), qos=1)

    def say_online(self) -> None:
        for client, owned in zip(self.clients, self.slices):
            for uuid in owned:
                client.publish(f"autocore/devices/{uuid}/status", json.dumps(
                    {"protocol_version": "2.2.0", "uuid": uuid, "status": "online"}), qos=1)

    def publish_load(self, messages: int, rate_hz: float) -> list[threading.Thread]:
        """Every device sends ``messages`` numbered QoS 1 readings at ``rate_hz`` (one thread per client)."""
        def run(client: mqtt.Client, owned: list[str]) -> None:
            for seq in range(messages):
                started = time.monotonic()
                for uuid in owned:
                    client.publish(f"autocore/devices/{uuid}/telemetry", numbered(uuid, seq), qos=1)
                time.sleep(max(0.0, 1.0 / rate_hz - (time.monotonic() - started)))

        threads = [threading.Thread(target=run, args=pair, daemon=True) for pair in zip(self.clients, self.slices)]
        for thread in threads:
            thread.start()
        return threads

    def close(self) -> None:
        for client in self.clients:
            client.disconnect()
            client.loop_stop()


@pytest.fixture
def cluster(broker_factory, postgres_db, gateway_factory, tmp_path):  # type: ignore[no-untyped-def]
    """A broker, a PostgreSQL database, and a way to start members of the shared group."""

    class Cluster:
        broker = broker_factory()
        db = postgres_db
        fleets: list[Fleet] = []

        def gateway(self, name: str, **settings: str):  # type: ignore[no-untyped-def]
            return gateway_factory(self.broker, tmp_path / "unused.db", DATABASE_URL=self.db.url,
                                   MQTT_CLIENT_ID=name, AUTOCORE_SHARED_GROUP=GROUP, **settings)

        def fleet(self, uuids: list[str], clients: int) -> Fleet:
            made = Fleet(self.broker, uuids, clients)
            self.fleets.append(made)
            return made

    world = Cluster()
    yield world
    for fleet in world.fleets:
        fleet.close()


def stored_pairs(db) -> Counter[tuple[str, int]]:  # type: ignore[no-untyped-def]
    rows = db.rows("SELECT d.uuid, t.data_value FROM telemetry_data t JOIN devices d ON d.id = t.device_id "
                   "WHERE t.data_key = 'analog_seq'")
    return Counter((row["uuid"], int(float(row["data_value"]))) for row in rows)


def test_three_gateways_split_the_load_and_survive_a_sigkill(cluster) -> None:  # type: ignore[no-untyped-def]
    devices, messages = 100, 20
    uuids = [f"esp32-can-{n:03d}" for n in range(devices)]
    for uuid in uuids:
        cluster.db.register(uuid, "esp32_can")
    settings = {"MESSAGE_TIMEOUT": "8"}
    gateways = {name: cluster.gateway(name, **settings) for name in ("gw-a", "gw-b", "gw-c")}
    fleet = cluster.fleet(uuids, clients=10)
    fleet.say_online()
    wait_for(lambda: cluster.db.rows("SELECT count(*) AS n FROM devices WHERE status='online' "
                                     "AND type='esp32_can'")[0]["n"] == devices, what="every device online")

    publishers = fleet.publish_load(messages, rate_hz=4)
    wait_for(lambda: sum(stored_pairs(cluster.db).values()) >= devices * messages // 4, timeout_s=30,
             what="a quarter of the load stored")
    command_ids = [cluster.db.insert_command(uuid, "ping", {"n": n}) for n, uuid in enumerate(uuids)]
    wait_for(lambda: cluster.db.rows("SELECT count(*) AS n FROM gateway_commands WHERE status <> 'pending'")
             [0]["n"] >= 20, what="commands under way")
    gateways["gw-b"].stop(signal.SIGKILL)
    time.sleep(1.0)  # the broker queues gw-b's share in its persistent session meanwhile
    restarted = cluster.gateway("gw-b", **settings)
    for thread in publishers:
        thread.join(60)

    expected = {(uuid, seq) for uuid in uuids for seq in range(messages)}
    wait_for(lambda: set(stored_pairs(cluster.db)) >= expected, timeout_s=60, what="every reading stored")
    wait_for(lambda: cluster.db.rows("SELECT count(*) AS n FROM gateway_commands "
                                     "WHERE status IN ('pending', 'sent')")[0]["n"] == 0,
             timeout_s=60, what="every command resolved")
    time.sleep(0.5)  # anything stored twice would land by now
    counts = stored_pairs(cluster.db)
    assert set(counts) == expected
    assert [pair for pair, n in counts.items() if n != 1] == [], "readings stored more than once"

    rows = cluster.db.rows("SELECT id, command_id, status, attempts, claimed_by FROM gateway_commands")
    assert sorted(row["id"] for row in rows) == sorted(command_ids)
    assert {row["status"] for row in rows} <= {"acked", "timeout"}
    assert all(row["attempts"] == 1 for row in rows)
    assert len({row["claimed_by"] for row in rows}) >= 2, "one gateway claimed every command"
    assert max(fleet.received.values()) == 1, "a command reached its device twice"
    for row in rows:  # acked exactly when the device got it (and answered)
        assert (row["status"] == "acked") == (fleet.received[row["command_id"]] == 1), row
    assert sum(row["status"] == "acked" for row in rows) >= devices * 3 // 4

    logs = "".join(gateway.log for gateway in [*gateways.values(), restarted])
    recorded = Counter(re.findall(r"command=(\S+) device=\S+ (?:acked|timeout)\b", logs))
    assert all(recorded[row["command_id"]] <= 1 for row in rows), "an outcome recorded twice"
    # An outcome is logged once committed: the SIGKILL may fall between the two (seen
    # once: gw-b committed a response to gw-a's command and died before its log line).
    unlogged = [row["command_id"] for row in rows if recorded[row["command_id"]] == 0]
    assert len(unlogged) <= 2, ("outcomes recorded and never logged", unlogged)
    assert all(g.alive() for g in (gateways["gw-a"], gateways["gw-c"], restarted))


def test_presence_is_decided_once_across_gateways(cluster) -> None:  # type: ignore[no-untyped-def]
    """A chatty device stays online; a silent one goes offline once and comes back once."""
    chatty, silent = "esp32-can-001", "esp32-can-002"
    for uuid in (chatty, silent):
        cluster.db.register(uuid, "esp32_can")
    settings = {"DEVICE_TIMEOUT": "2", "AUTOCORE_HEARTBEAT_INTERVAL": "0.5"}
    first, second = cluster.gateway("gw-a", **settings), cluster.gateway("gw-b", **settings)
    fleet = cluster.fleet([chatty, silent], clients=1)
    fleet.say_online()

    def events(uuid: str) -> list[str]:
        return [row["action"] for row in cluster.db.rows(
            "SELECT action FROM event_logs WHERE source=%s AND action IN ('online', 'offline') ORDER BY id", uuid)]

    client = fleet.clients[0]
    deadline = time.monotonic() + 30
    while events(silent) != ["online", "offline"] and time.monotonic() < deadline:
        client.publish(f"autocore/devices/{chatty}/telemetry", numbered(chatty, 0), qos=1)
        time.sleep(0.2)
    assert events(silent) == ["online", "offline"]
    assert events(chatty) == ["online"]
    client.publish(f"autocore/devices/{silent}/telemetry", numbered(silent, 0), qos=1)
    wait_for(lambda: events(silent) == ["online", "offline", "online"], what="the silent device back")
    time.sleep(1.0)
    assert events(silent) == ["online", "offline", "online"]
    assert cluster.db.rows("SELECT status FROM devices WHERE uuid=%s", silent) == [{"status": "online"}]
    assert "unknown_device" not in first.log + second.log  # peers' heartbeats are not devices


def test_relay_commands_are_confirmed_by_whichever_gateway_hears_the_board(cluster) -> None:  # type: ignore[no-untyped-def]
    """The board's ``relays/state`` may reach the gateway that did not send the command."""
    from tests.test_commands import RelayBoard

    uuid = "esp32-relay-001"
    cluster.db.register(uuid)
    gateways = [cluster.gateway(name) for name in ("gw-a", "gw-b")]
    board = RelayBoard(cluster.broker, uuid)
    try:
        board.client.publish(f"autocore/devices/{uuid}/status", json.dumps(
            {"protocol_version": "2.2.0", "uuid": uuid, "status": "online"}), qos=1)
        wait_for(lambda: cluster.db.rows("SELECT status FROM devices WHERE uuid=%s", uuid)
                 == [{"status": "online"}], what="board online")
        ids = [cluster.db.insert_command(uuid, "relay", {"channel": ch, "command": "on"}) for ch in range(1, 13)]
        wait_for(lambda: cluster.db.rows("SELECT count(*) AS n FROM gateway_commands WHERE status='acked'")
                 [0]["n"] == len(ids), timeout_s=20, what="every relay command acked")
        rows = cluster.db.rows("SELECT * FROM gateway_commands ORDER BY id")
        assert all(row["attempts"] == 1 and json.loads(row["response_payload"])["channels"] for row in rows)
        assert sorted(c["channel"] for c in board.commands) == list(range(1, 13))
        logs = "".join(g.log for g in gateways)
        recorded = Counter(re.findall(r"command=(\S+) device=\S+ acked\b", logs))
        assert sorted(recorded) == sorted(row["command_id"] for row in rows)
        assert set(recorded.values()) == {1}
    finally:
        board.close()
