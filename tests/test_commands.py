"""Commands: a Config App row reaches the device and its outcome is recorded, exactly once."""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
from contextlib import closing
from datetime import datetime, timedelta

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.fixtures.services import fixture_bytes, query, wait_for


class RelayBoard:
    """A simulated relay board: applies ``relays/set`` and publishes ``relays/state``."""

    def __init__(self, broker, uuid: str, answer: bool = True) -> None:  # type: ignore[no-untyped-def]
        self.uuid = uuid
        self.answer = answer
        self.channels = {str(ch): False for ch in range(1, 17)}
        self.commands: list[dict] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"board-{uuid}")
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.on_connect = lambda client, *args: client.subscribe(
            [(f"autocore/devices/{uuid}/relays/set", 1), (f"autocore/devices/{uuid}/command", 1)])
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert subscribed.wait(10)

    def _on_message(self, client, _userdata, message) -> None:  # type: ignore[no-untyped-def]
        body = json.loads(message.payload)
        self.commands.append(body)
        if not self.answer:
            return
        if message.topic.endswith("/command"):
            reply = {"protocol_version": "2.2.0", "uuid": self.uuid, "command_id": body["command_id"],
                     "success": False, "error_message": "sensor not fitted"}
            client.publish(f"autocore/devices/{self.uuid}/response", json.dumps(reply), qos=1)
            return
        targets = list(self.channels) if body["channel"] == "all" else [str(body["channel"])]
        for ch in targets:
            self.channels[ch] = (not self.channels[ch]) if body["command"] == "toggle" else body["command"] == "on"
        state = {"protocol_version": "2.2.0", "uuid": self.uuid, "board_id": 1, "channels": self.channels}
        client.publish(f"autocore/devices/{self.uuid}/relays/state", json.dumps(state), qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def boards():  # type: ignore[no-untyped-def]
    made: list[RelayBoard] = []

    def make(broker, uuid: str, answer: bool = True) -> RelayBoard:  # type: ignore[no-untyped-def]
        board = RelayBoard(broker, uuid, answer)
        made.append(board)
        return board

    yield make
    for board in made:
        board.close()


def insert_command(db, device_uuid: str, command_type: str, payload: object, **columns: object) -> int:  # type: ignore[no-untyped-def]
    """Write a command row the way the Config App would."""
    values = {"device_uuid": device_uuid, "command_type": command_type, "created_at": datetime.now(),
              "status": "pending",
              "payload": payload if isinstance(payload, str) else json.dumps(payload), **columns}
    with closing(sqlite3.connect(db)) as conn, conn:
        cursor = conn.execute(
            f"INSERT INTO gateway_commands ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
            tuple(values.values()))
        return int(cursor.lastrowid or 0)


def command_row(db, row_id: int):  # type: ignore[no-untyped-def]
    return query(db, "SELECT * FROM gateway_commands WHERE id=?", (row_id,))[0]


def wait_status(db, row_id: int, *statuses: str, timeout_s: float = 10.0):  # type: ignore[no-untyped-def]
    return wait_for(lambda: (row := command_row(db, row_id))["status"] in statuses and row,
                    timeout_s=timeout_s, what=f"command {row_id} to become {statuses}")


def go_online(env, uuid: str) -> None:  # type: ignore[no-untyped-def]
    env.peer().publish(f"autocore/devices/{uuid}/status",
                       json.dumps({"protocol_version": "2.2.0", "uuid": uuid, "status": "online"}))
    wait_for(lambda: query(env.db, "SELECT 1 FROM devices WHERE uuid=? AND status='online'", (uuid,)))


def test_relay_command_is_delivered_with_qos2_and_confirmed_by_relay_state(env, boards) -> None:  # type: ignore[no-untyped-def]
    env.gateway()
    env.register("esp32-relay-001")
    board = boards(env.broker, "esp32-relay-001")
    go_online(env, "esp32-relay-001")
    row_id = insert_command(env.db, "esp32-relay-001", "relay", {"channel": 3, "command": "on", "source": "web"})
    row = wait_status(env.db, row_id, "acked")
    assert row["topic"] == "autocore/devices/esp32-relay-001/relays/set"
    assert row["attempts"] == 1 and row["error_message"] is None
    assert json.loads(row["response_payload"]) == {"channels": {"3": True}}
    sent_at, done_at = datetime.fromisoformat(row["sent_at"]), datetime.fromisoformat(row["completed_at"])
    assert datetime.fromisoformat(row["created_at"]) <= sent_at <= done_at
    assert abs(datetime.now() - done_at) < timedelta(minutes=1)  # naive local time
    [sent] = board.commands
    assert (sent["channel"], sent["command"], sent["state"], sent["protocol_version"]) == (3, "on", True, "2.2.0")
    assert sent["command_id"] == row["command_id"] and sent["source"] == "web"


def test_device_error_response_fails_the_command_with_its_text(env, boards) -> None:  # type: ignore[no-untyped-def]
    env.gateway()
    env.register("esp32-sensor-001", "sensor_board")
    boards(env.broker, "esp32-sensor-001")
    go_online(env, "esp32-sensor-001")
    row_id = insert_command(env.db, "esp32-sensor-001", "calibrate", {"sensor": "oil"})
    row = wait_status(env.db, row_id, "failed")
    assert row["error_message"] == "sensor not fitted"
    assert row["topic"] == "autocore/devices/esp32-sensor-001/command"
    assert json.loads(row["response_payload"])["success"] is False


def test_silent_device_times_out_with_err_003(env, boards) -> None:  # type: ignore[no-untyped-def]
    env.gateway(MESSAGE_TIMEOUT="1")
    env.register("esp32-relay-001")
    board = boards(env.broker, "esp32-relay-001", answer=False)
    go_online(env, "esp32-relay-001")
    observer = env.peer()
    observer.subscribe("autocore/errors/#")
    row_id = insert_command(env.db, "esp32-relay-001", "relay", {"channel": 1, "command": "toggle"})
    row = wait_status(env.db, row_id, "timeout")
    assert "no confirmation" in row["error_message"]
    report = observer.expect(lambda m: m.topic == "autocore/errors/esp32-relay-001/timeout")
    assert json.loads(report.payload)["error_code"] == "ERR_003"
    assert len(board.commands) == 1


def test_offline_device_gets_fresh_commands_on_return_and_stale_ones_expire(env, boards) -> None:  # type: ignore[no-untyped-def]
    gateway = env.gateway()
    env.register("esp32-relay-001")
    board = boards(env.broker, "esp32-relay-001")
    stale = insert_command(env.db, "esp32-relay-001", "relay", {"channel": 1, "command": "on"}, max_age_s=1)
    fresh = insert_command(env.db, "esp32-relay-001", "relay", {"channel": 2, "command": "on"}, max_age_s=600)
    wait_for(lambda: gateway.log.count("offline: held") == 2, what="both commands held")
    # The stale one outlives its maximum age while the board is away: expired, never sent.
    stale_row = wait_status(env.db, stale, "expired")
    assert stale_row["sent_at"] is None and "offline" in stale_row["error_message"]
    assert command_row(env.db, fresh)["status"] == "pending" and board.commands == []
    go_online(env, "esp32-relay-001")
    wait_status(env.db, fresh, "acked")
    assert [c["channel"] for c in board.commands] == [2]


def test_bad_commands_fail_and_publish_nothing(env, boards) -> None:  # type: ignore[no-untyped-def]
    env.gateway()
    env.register("esp32-relay-001")
    board = boards(env.broker, "esp32-relay-001")
    go_online(env, "esp32-relay-001")
    cases = {
        insert_command(env.db, "esp32-ghost-001", "relay", {"channel": 1, "command": "on"}): "unknown device",
        insert_command(env.db, "esp32-relay-001", "relay", {"channel": 17, "command": "on"}): "bad channel",
        insert_command(env.db, "esp32-relay-001", "relay", {"channel": "3", "command": "on"}): "bad channel",
        insert_command(env.db, "esp32-relay-001", "relay", {"channel": 3, "command": "ON"}): "bad command",
        insert_command(env.db, "esp32-relay-001", "relay", "{not json"): "not a JSON object",
    }
    for row_id, reason in cases.items():
        assert reason in wait_status(env.db, row_id, "failed")["error_message"]
    assert board.commands == []


def test_sigkill_mid_command_is_resolved_after_restart_and_never_sent_twice(env, boards) -> None:  # type: ignore[no-untyped-def]
    first = env.gateway(MESSAGE_TIMEOUT="3")
    env.register("esp32-relay-001")
    board = boards(env.broker, "esp32-relay-001", answer=False)
    go_online(env, "esp32-relay-001")
    confirmed = insert_command(env.db, "esp32-relay-001", "relay", {"channel": 4, "command": "off"})
    wait_for(lambda: len(board.commands) == 1)
    board.answer = True  # confirm by hand what the board did
    env.peer().publish("autocore/devices/esp32-relay-001/relays/state", json.dumps(
        {"protocol_version": "2.2.0", "uuid": "esp32-relay-001", "channels": board.channels}))
    wait_status(env.db, confirmed, "acked")
    board.answer = False
    in_flight = insert_command(env.db, "esp32-relay-001", "relay", {"channel": 5, "command": "on"})
    wait_status(env.db, in_flight, "sent")
    # The row is marked before it is published: kill only once the board has it,
    # so that the restart meets a command that really is in flight.
    wait_for(lambda: len(board.commands) == 2)
    first.stop(signal.SIGKILL)
    env.gateway(MESSAGE_TIMEOUT="3")
    row = wait_status(env.db, in_flight, "timeout")
    assert row["attempts"] == 1
    assert command_row(env.db, confirmed)["status"] == "acked"
    assert [c["channel"] for c in board.commands] == [4, 5]  # nothing re-sent


def test_commands_are_picked_up_while_the_gateway_writes_telemetry(env, boards) -> None:  # type: ignore[no-untyped-def]
    """The gateway's own commits touch the database file as the Config App's do.

    Only another process's commit may start a poll (SQLite ``data_version``);
    this proves the Config App's rows are still seen while telemetry commits
    every few milliseconds, before the 10 s fallback poll (``WATCHED_POLL_S``).
    """
    env.gateway()
    env.register("esp32-relay-001")
    env.register("esp32-can-001", "esp32_can")
    board = boards(env.broker, "esp32-relay-001")
    go_online(env, "esp32-relay-001")
    sensor = env.peer()
    payload = fixture_bytes("telemetry_can.json")
    streaming = threading.Event()
    streaming.set()

    def stream() -> None:
        for _ in range(3000):  # bounded: about 15 s at 200 msg/s
            if not streaming.is_set():
                return
            sensor.publish("autocore/devices/esp32-can-001/telemetry", payload, qos=0)
            time.sleep(0.005)

    streamer = threading.Thread(target=stream, daemon=True)
    streamer.start()
    try:
        wait_for(lambda: query(env.db, "SELECT count(*) AS n FROM telemetry_data")[0]["n"] > 0)
        for channel in range(1, 9):
            row_id = insert_command(env.db, "esp32-relay-001", "relay", {"channel": channel, "command": "on"})
            wait_status(env.db, row_id, "acked", timeout_s=5.0)
    finally:
        streaming.clear()
        streamer.join()
    assert [c["channel"] for c in board.commands] == list(range(1, 9))


def test_hundred_concurrent_commands_to_ten_devices(env, boards) -> None:  # type: ignore[no-untyped-def]
    env.gateway()
    uuids = [f"esp32-relay-{i:03d}" for i in range(10)]
    for uuid in uuids:
        env.register(uuid)
    fleet = [boards(env.broker, uuid) for uuid in uuids]
    for uuid in uuids:
        go_online(env, uuid)
    ids = []
    with closing(sqlite3.connect(env.db)) as conn, conn:
        for n in range(100):
            values = (uuids[n % 10], "relay", json.dumps({"channel": n // 10 + 1, "command": "on"}),
                      datetime.now(), "pending")
            ids.append(conn.execute("INSERT INTO gateway_commands (device_uuid, command_type, payload, "
                                    "created_at, status) VALUES (?, ?, ?, ?, ?)", values).lastrowid)
    wait_for(lambda: query(env.db, "SELECT count(*) AS n FROM gateway_commands WHERE status='acked'")[0]["n"]
             == 100, timeout_s=30, what="100 acknowledged commands")
    rows = query(env.db, "SELECT * FROM gateway_commands")
    assert sorted(r["id"] for r in rows) == sorted(ids)
    assert all(r["attempts"] == 1 and r["completed_at"] for r in rows)
    assert len({r["command_id"] for r in rows}) == 100
    for board in fleet:
        assert sorted(c["channel"] for c in board.commands) == list(range(1, 11))
