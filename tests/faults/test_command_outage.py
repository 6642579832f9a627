"""A command never reaches a device after its row says it timed out (or expired).

Three ways a command could arrive late, each reproduced with a private broker:

- the broker is down when the row is claimed: paho used to queue the publish
  (rc 4), the row timed out, and the relay switched when the broker returned;
- the broker stops answering with the command in flight: paho resent it after
  the reconnect, long after the row's timeout;
- the broker holds it for a device whose session outlives its connection: it
  was delivered whenever the device came back.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.fixtures.services import query, wait_for
from tests.test_commands import boards, go_online, insert_command, wait_status  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow


def test_a_command_claimed_while_the_broker_is_away_never_arrives_late(env, boards, broker_factory) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    env.broker = broker_factory()
    gateway = env.gateway(MESSAGE_TIMEOUT="2")
    env.register("esp32-relay-001")
    board = boards(env.broker, "esp32-relay-001")
    go_online(env, "esp32-relay-001")
    env.broker.stop()
    wait_for(lambda: "lost broker" in gateway.log, what="the gateway to notice")
    row_id = insert_command(env.db, "esp32-relay-001", "relay", {"channel": 1, "command": "on"}, max_age_s=3)
    row = wait_status(env.db, row_id, "expired", "timeout", timeout_s=15)
    env.broker.start()
    wait_for(lambda: "reconnected to broker" in gateway.log, timeout_s=30, what="the gateway to reconnect")
    wait_for(lambda: board.client.is_connected(), timeout_s=30, what="the board to reconnect")
    time.sleep(3.0)  # anything paho still held would be sent right after the reconnect
    assert board.commands == [], f"row says {row['status']}, yet the board got {board.commands}"
    assert row["status"] == "expired" and row["sent_at"] is None  # held, not claimed, while the broker was away
    # Fresh commands flow again.
    fresh = insert_command(env.db, "esp32-relay-001", "relay", {"channel": 2, "command": "on"})
    wait_status(env.db, fresh, "acked")
    assert [c["channel"] for c in board.commands] == [2]


def test_a_command_in_flight_when_the_broker_freezes_is_not_resent_after_its_timeout(env, boards, broker_factory) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    env.broker = broker_factory()
    gateway = env.gateway(MESSAGE_TIMEOUT="2")
    env.register("esp32-relay-001")
    boards(env.broker, "esp32-relay-001")  # subscribed, so the command has a taker
    go_online(env, "esp32-relay-001")
    pid = env.broker.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # connections stay up, nothing is answered
    try:
        row_id = insert_command(env.db, "esp32-relay-001", "relay", {"channel": 3, "command": "on"})
        row = wait_status(env.db, row_id, "timeout", timeout_s=15)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.kill(pid, signal.SIGCONT)
    env.broker.process.wait(10)  # type: ignore[union-attr]
    wait_for(lambda: "lost broker" in gateway.log, what="the gateway to notice")
    time.sleep(2.0)  # refused attempts: the gateway's next try is a few seconds away
    env.broker.start()
    observer = env.peer()  # subscribed before the gateway is back, unlike the board
    observer.subscribe("autocore/devices/esp32-relay-001/relays/set")
    wait_for(lambda: "reconnected to broker" in gateway.log, timeout_s=30, what="the gateway to reconnect")
    time.sleep(3.0)  # paho resends what it still holds right after the CONNACK
    late = [m.payload for m in observer.drain()]
    assert late == [], f"row says {row['status']}, yet the command was published again: {late}"


class SleepyBoard:
    """A board whose session (QoS 1 subscription) outlives its connection, as with clean_session=False."""

    def __init__(self, broker, uuid: str) -> None:  # type: ignore[no-untyped-def]
        self.broker, self.uuid = broker, uuid
        self.commands: list[dict] = []
        self.client = self._connect()
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.subscribe(f"autocore/devices/{uuid}/relays/set", 1)
        assert subscribed.wait(10)

    def _connect(self) -> mqtt.Client:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sleepy-{self.uuid}", clean_session=False)
        client.on_message = lambda _c, _u, message: self.commands.append(json.loads(message.payload))
        connected = threading.Event()
        client.on_connect = lambda *args: connected.set()
        client.connect(self.broker.host, self.broker.port)
        client.loop_start()
        assert connected.wait(10)
        return client

    def sleep(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def wake(self) -> None:
        self.client = self._connect()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_a_command_the_broker_holds_for_a_sleeping_device_expires_with_its_row(env, broker_factory) -> None:  # type: ignore[no-untyped-def]
    env.broker = broker_factory()
    env.gateway(MESSAGE_TIMEOUT="1")
    env.register("esp32-relay-001")
    board = SleepyBoard(env.broker, "esp32-relay-001")
    try:
        go_online(env, "esp32-relay-001")
        board.sleep()  # no will: the gateway still thinks it online
        row_id = insert_command(env.db, "esp32-relay-001", "relay", {"channel": 4, "command": "on"})
        wait_status(env.db, row_id, "timeout", timeout_s=15)
        time.sleep(1.5)
        board.wake()
        time.sleep(2.0)
        assert board.commands == [], "delivered after its row timed out"
        # A command sent while it is awake still arrives.
        awake = insert_command(env.db, "esp32-relay-001", "relay", {"channel": 5, "command": "on"})
        wait_for(lambda: board.commands, what="the command sent while awake")
        assert board.commands[0]["channel"] == 5
        assert query(env.db, "SELECT status FROM gateway_commands WHERE id=?", (awake,))
    finally:
        board.close()
