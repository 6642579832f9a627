"""Faults against real processes: nothing QoS 1 is lost or stored twice, and the gateway recovers by itself."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import threading
import time
from contextlib import closing

import pytest

from autocore.broker import find_free_port
from tests.fixtures.services import fixture_bytes, wait_for
from tests.test_operations import scrape, value

# Build-independent (storage, client, broker): the pure and 32-bit ARM legs of
# ./run.sh test skip them with -m 'not slow'.
pytestmark = pytest.mark.slow

TELEMETRY = json.loads(fixture_bytes("telemetry_can.json"))
#: QoS 1 messages queued for a stopped gateway: more than its QoS 1 buffer (4,096) holds.
BACKLOG = 10_000


def numbered(seq: int) -> bytes:
    """The spec's CAN telemetry with a sequence number, stored as the analog_seq row."""
    return json.dumps({**TELEMETRY, "analog_sensors": {"seq": seq}}).encode()


def stored_sequence(db) -> list[int]:  # type: ignore[no-untyped-def]
    with closing(sqlite3.connect(db)) as conn, conn:
        rows = conn.execute("SELECT data_value FROM telemetry_data WHERE data_key='analog_seq'").fetchall()
    return sorted(int(float(value)) for (value,) in rows)


class Publisher(threading.Thread):
    """A device publishing ``count`` numbered QoS 1 messages at ``rate_hz`` (bounded)."""

    def __init__(self, peer, count: int, rate_hz: float) -> None:  # type: ignore[no-untyped-def]
        super().__init__(daemon=True)
        self.peer, self.count, self.period_s = peer, count, 1.0 / rate_hz
        self.sent = 0

    def run(self) -> None:
        for seq in range(self.count):
            self.peer.client.publish("autocore/devices/esp32-can-001/telemetry", numbered(seq), qos=1)
            self.sent += 1
            time.sleep(self.period_s)


def test_sigkill_under_load_loses_and_duplicates_nothing(env) -> None:  # type: ignore[no-untyped-def]
    first = env.gateway()
    env.register("esp32-can-001", "esp32_can")
    publisher = Publisher(env.peer(), count=600, rate_hz=80)
    publisher.start()
    wait_for(lambda: len(stored_sequence(env.db)) > 150, what="rows before the crash")
    first.stop(signal.SIGKILL)
    killed_at = len(stored_sequence(env.db))
    time.sleep(0.5)  # messages published now are queued by the broker for our session
    second = env.gateway()
    publisher.join(30)
    wait_for(lambda: len(stored_sequence(env.db)) >= 600, timeout_s=30, what="all 600 messages")
    time.sleep(0.5)
    assert stored_sequence(env.db) == list(range(600)), "lost or duplicated messages"
    assert 150 < killed_at < 600
    assert second.alive()


def test_broker_restart_is_survived_without_a_gateway_restart(env, broker_factory) -> None:  # type: ignore[no-untyped-def]
    broker = broker_factory(persistence=True)
    env.broker = broker
    gateway = env.gateway()
    env.register("esp32-can-001", "esp32_can")
    device = env.peer()
    device.publish("autocore/devices/esp32-can-001/telemetry", numbered(0))
    wait_for(lambda: stored_sequence(env.db) == [0])
    device.client.disconnect()
    device.client.loop_stop()
    broker.stop()
    time.sleep(1.5)
    broker.start()  # same port, same persistence directory
    wait_for(lambda: "reconnected to broker" in gateway.log, timeout_s=20, what="the gateway to reconnect")
    observer = env.peer()
    observer.subscribe("autocore/devices/autocore-gateway/status")
    status = observer.expect(lambda m: json.loads(m.payload)["status"] == "online")
    assert status.retain
    device = env.peer()
    for seq in range(1, 21):
        device.publish("autocore/devices/esp32-can-001/telemetry", numbered(seq))
    wait_for(lambda: stored_sequence(env.db) == list(range(21)), what="telemetry after the restart")
    assert gateway.alive()


def test_database_locked_for_30_s_loses_no_qos1_and_counts_qos0_drops(env) -> None:  # type: ignore[no-untyped-def]
    """Another writer holds the lock for 30 s: QoS 1 waits with the broker; QoS 0 overflow is counted."""
    port = find_free_port()
    gateway = env.gateway(AUTOCORE_RING_CAPACITY="16", AUTOCORE_METRICS_PORT=str(port))
    env.register("esp32-can-001", "esp32_can")
    env.register("esp32-can-002", "esp32_can")
    blocker = sqlite3.connect(env.db, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock past the busy timeout
    publisher = Publisher(env.peer(), count=300, rate_hz=80)
    publisher.start()
    best_effort = env.peer()
    for seq in range(100):  # QoS 0 from a second device: more than the 16-message buffer holds
        reading = {**TELEMETRY, "uuid": "esp32-can-002", "analog_sensors": {"seq": seq}}
        best_effort.client.publish("autocore/devices/esp32-can-002/telemetry", json.dumps(reading), qos=0)
        time.sleep(0.01)
    time.sleep(30)
    assert stored_sequence(env.db) == []
    blocker.execute("COMMIT")
    blocker.close()
    publisher.join(30)
    wait_for(lambda: len(stored_sequence(env.db)) >= 300 + 16, timeout_s=30, what="rows after the lock")
    with closing(sqlite3.connect(env.db)) as conn, conn:
        rows = conn.execute("SELECT d.uuid, t.data_value FROM telemetry_data t JOIN devices d "
                            "ON d.id = t.device_id WHERE t.data_key='analog_seq'").fetchall()
    qos1 = sorted(int(float(v)) for uuid, v in rows if uuid == "esp32-can-001")
    qos0 = sorted(int(float(v)) for uuid, v in rows if uuid == "esp32-can-002")
    assert qos1 == list(range(300)), "QoS 1 lost or duplicated"
    # The 16-message buffer keeps the newest; a few of the first may have reached the
    # writer before it met the lock. Every other one is counted, and logged.
    dropped = value(scrape(port), "autocore_ring_dropped_total", ring="best_effort")
    assert qos0[-16:] == list(range(100 - 16, 100)) and len(qos0) + dropped == 100
    assert dropped >= 100 - 16 - 4
    logged = re.findall(r"(\d+) QoS 0 messages dropped \(oldest first\)", gateway.log)
    assert sum(map(int, logged)) == dropped
    # The device's status change met the lock too: it was retried, not dropped.
    assert "will retry" in gateway.log and gateway.alive()
    assert env.rows("SELECT status FROM devices WHERE uuid='esp32-can-001'")[0]["status"] == "online"


def test_a_backlog_bigger_than_every_buffer_is_stored_once(env, broker_factory) -> None:  # type: ignore[no-untyped-def]
    """10,000 QoS 1 messages wait in the gateway's session while it is down, then arrive at once.

    Mosquitto 2.0 sends a resumed session's backlog in bursts beyond the receive
    maximum; reading pauses while the database catches up instead of refusing
    (and so losing) what no buffer can hold. The broker restarts mid-drain too.
    """
    env.broker = broker_factory(persistence=True, extra_config=["max_queued_messages 20000"])
    port = find_free_port()
    first = env.gateway()  # creates the persistent session and its subscriptions
    env.register("esp32-can-001", "esp32_can")
    assert first.stop() == 0
    device = env.peer()
    infos = [device.client.publish("autocore/devices/esp32-can-001/telemetry", numbered(seq), qos=1)
             for seq in range(BACKLOG)]
    for info in infos:
        info.wait_for_publish(30)
    second = env.gateway(AUTOCORE_METRICS_PORT=str(port))
    wait_for(lambda: len(stored_sequence(env.db)) >= BACKLOG // 5, timeout_s=60, what="a fifth of the backlog")
    env.broker.stop()  # mid-drain, probably while reading is paused: the new connection must be read
    env.broker.start()
    wait_for(lambda: len(stored_sequence(env.db)) >= BACKLOG, timeout_s=90, what="the whole backlog")
    time.sleep(0.5)
    assert stored_sequence(env.db) == list(range(BACKLOG)), "lost or duplicated messages"
    assert "refused by a full buffer" not in second.log and second.alive()
    print("read pauses:", value(scrape(port), "autocore_mqtt_read_pauses_total"))


def test_after_a_reconnect_every_device_is_asked_for_its_status(env) -> None:  # type: ignore[no-untyped-def]
    """The protocol has no re-announce request; its broadcast ``status`` command is the way to ask."""
    gateway = env.gateway()
    observer = env.peer()
    observer.subscribe("autocore/commands/all/#")
    intruder = env.peer(client_id="autocore-gateway")  # takes the gateway's session once
    intruder.client.disconnect()
    intruder.client.loop_stop()
    wait_for(lambda: "reconnected to broker" in gateway.log, timeout_s=20, what="the gateway to reconnect")
    request = observer.expect(lambda m: m.topic == "autocore/commands/all/status")
    body = json.loads(request.payload)
    assert body["command"] == "status" and body["uuid"] == "autocore-gateway"
    assert body["protocol_version"] == "2.2.0" and request.qos == 1 and not request.retain
