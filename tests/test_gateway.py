"""End to end: ``autocore run`` against a real Mosquitto and a SQLite file with the installed schema.

Each test gets its own broker (no retained state leaks between tests) and its
own database built from the original's schema; simulated ESP32s are paho clients.
"""

from __future__ import annotations

import json
import signal
from datetime import datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.fixtures.services import fixture_bytes, wait_for

GATEWAY_STATUS = "autocore/devices/autocore-gateway/status"


def payload(message) -> dict:  # type: ignore[no-untyped-def]
    return json.loads(message.payload)


def assert_local_naive(text: str) -> None:
    """Timestamps in the shared DB are naive local time (the suite runs at UTC-3)."""
    moment = datetime.fromisoformat(text)
    assert moment.tzinfo is None
    assert abs(datetime.now() - moment) < timedelta(minutes=2), text


def test_gateway_announces_itself_online_and_registers(env) -> None:  # type: ignore[no-untyped-def]
    env.gateway()
    observer = env.peer()
    observer.subscribe(GATEWAY_STATUS)
    status = payload(observer.expect(lambda m: m.topic == GATEWAY_STATUS and m.retain))
    assert status["status"] == "online"
    assert status["protocol_version"] == "2.2.0" and status["uuid"] == "autocore-gateway"
    assert status["message_type"] == "gateway_status" and status["device_type"] == "gateway"
    row = wait_for(lambda: env.rows("SELECT * FROM devices WHERE uuid='autocore-gateway'"))[0]
    assert row["status"] == "online" and row["type"] == "gateway" and row["is_active"] == 1
    assert_local_naive(row["last_seen"])
    assert env.rows("SELECT * FROM event_logs WHERE event_type='system' AND action='startup'")


def test_announce_creates_then_updates_the_device_row(env) -> None:  # type: ignore[no-untyped-def]
    env.gateway()
    device = env.peer()
    device.publish("autocore/devices/esp32-display-001/announce", fixture_bytes("announce.json"))
    row = wait_for(lambda: env.rows("SELECT * FROM devices WHERE uuid='esp32-display-001'"))[0]
    assert row["name"] == "Device esp32_display" and row["type"] == "esp32_display"
    assert row["firmware_version"] == "1.2.0" and row["hardware_version"] == "v2.1"
    assert json.loads(row["capabilities_json"]) == ["display", "touch", "telemetry"]
    assert row["ip_address"] == "192.168.4.21" and row["mac_address"] == "AA:BB:CC:DD:EE:01"
    assert row["status"] == "online" and row["is_active"] == 1
    for column in ("last_seen", "created_at", "updated_at"):
        assert_local_naive(row[column])
    again = json.loads(fixture_bytes("announce.json"))
    again["firmware_version"] = "1.3.0"
    device.publish("autocore/devices/esp32-display-001/announce", json.dumps(again))
    updated = wait_for(lambda: env.rows(
        "SELECT * FROM devices WHERE uuid='esp32-display-001' AND firmware_version='1.3.0'"))[0]
    assert updated["id"] == row["id"] and updated["name"] == row["name"]
    events = env.rows("SELECT * FROM event_logs WHERE source='esp32-display-001' AND action='announce'")
    assert len(events) == 2 and events[0]["status"] == "success"


def test_every_telemetry_variant_lands_in_telemetry_data(env) -> None:  # type: ignore[no-untyped-def]
    env.gateway()
    can_id = env.register("esp32-can-001", "esp32_can")
    sensor_id = env.register("esp32-sensor-001", "sensor_board")
    relay_id = env.register("esp32-relay-001")
    device = env.peer()
    device.publish("autocore/devices/esp32-can-001/telemetry", fixture_bytes("telemetry_can.json"), qos=0)
    device.publish("autocore/devices/esp32-sensor-001/telemetry",
                   fixture_bytes("telemetry_analog_system.json"), qos=0)
    device.publish("autocore/devices/esp32-sensor-001/telemetry", fixture_bytes("telemetry_gps.json"), qos=0)
    device.publish("autocore/telemetry/relays/data", fixture_bytes("telemetry_relay_change.json"), qos=0)
    device.publish("autocore/telemetry/relays/data", fixture_bytes("telemetry_safety_shutoff.json"))
    device.publish("autocore/devices/esp32-relay-001/relays/state", fixture_bytes("relay_state.json"))

    expected = 3 + 7 + 6 + 1 + 1 + 16
    rows = wait_for(lambda: (r := env.rows("SELECT * FROM telemetry_data ORDER BY id")) and
                    len(r) >= expected and r, what=f"{expected} telemetry rows")
    assert len(rows) == expected
    by_key = {(r["device_id"], r["data_type"], r["data_key"]): (r["data_value"], r["unit"]) for r in rows}
    assert by_key[(can_id, "can_bus", "can_rpm")] == ("2500.0", "rpm")
    assert by_key[(can_id, "can_bus", "can_ect")] == ("85.7", "°C")
    assert by_key[(sensor_id, "analog_sensor", "analog_fuel_level")] == ("67.8", None)
    assert by_key[(sensor_id, "system_status", "cpu_temp")] == ("42.1", "°C")
    assert by_key[(sensor_id, "system_status", "memory_used")] == ("68.0", "%")
    assert by_key[(sensor_id, "gps", "gps_lat")] == ("-23.5505", "degrees")
    assert by_key[(sensor_id, "gps", "gps_satellites")] == ("8.0", "count")
    assert by_key[(relay_id, "relay", "relay_1")] == ("1", None)
    relay_rows = [r for r in rows if r["data_key"] == "relay_2"]
    assert [r["data_value"] for r in relay_rows] == ["0", "0"]  # relay_change event, then relay state
    for row in rows:
        assert_local_naive(row["timestamp"])


def test_telemetry_at_every_qos_and_with_mqtt5_properties_is_stored(env) -> None:  # type: ignore[no-untyped-def]
    """Plain QoS 0/1 packets take the client's own decoder; QoS 2 and packets with
    properties take paho's. Every one of them must be stored, once."""
    env.gateway()
    can_id = env.register("esp32-can-001", "esp32_can")
    device = env.peer(protocol=mqtt.MQTTv5)
    properties = Properties(PacketTypes.PUBLISH)
    properties.PayloadFormatIndicator = 1
    properties.ContentType = "application/json"
    properties.UserProperty = ("firmware", "1.2.0")
    body = json.loads(fixture_bytes("telemetry_can.json"))
    cases = [(qos, props) for props in (None, properties) for qos in (0, 1, 2)]
    for n, (qos, props) in enumerate(cases):
        body["can_data"]["signals"]["RPM"]["value"] = 1000 + n
        info = device.client.publish("autocore/devices/esp32-can-001/telemetry", json.dumps(body), qos=qos,
                                     properties=props)
        info.wait_for_publish(10)
    rows = wait_for(lambda: (r := env.rows("SELECT data_value FROM telemetry_data WHERE data_key='can_rpm' "
                                           "AND device_id=? ORDER BY id", can_id)) and len(r) >= len(cases) and r,
                    what=f"{len(cases)} rpm rows")
    assert sorted(float(r["data_value"]) for r in rows) == [1000.0 + n for n in range(len(cases))]


def test_telemetry_from_unknown_devices_is_not_stored(env) -> None:  # type: ignore[no-untyped-def]
    gateway = env.gateway()
    known = env.register("esp32-can-001", "esp32_can")
    device = env.peer()
    device.publish("autocore/devices/esp32-ghost-001/telemetry",
                   fixture_bytes("telemetry_can.json").replace(b"esp32-can-001", b"esp32-ghost-001"), qos=0)
    device.publish("autocore/devices/esp32-can-001/telemetry", fixture_bytes("telemetry_can.json"), qos=0)
    wait_for(lambda: len(env.rows("SELECT * FROM telemetry_data")) >= 3)
    assert {r["device_id"] for r in env.rows("SELECT device_id FROM telemetry_data")} == {known}
    assert gateway.alive()


def test_status_and_last_will_drive_presence(env) -> None:  # type: ignore[no-untyped-def]
    env.gateway()
    env.register("esp32-relay-001")
    device = env.peer()
    status_topic = "autocore/devices/esp32-relay-001/status"
    device.publish(status_topic, fixture_bytes("status_online.json"), retain=True)
    wait_for(lambda: env.rows("SELECT * FROM devices WHERE uuid='esp32-relay-001' AND status='online'"))
    device.publish(status_topic, fixture_bytes("status_offline_lwt.json"), retain=True)
    wait_for(lambda: env.rows("SELECT * FROM devices WHERE uuid='esp32-relay-001' AND status='offline'"))
    actions = [r["action"] for r in env.rows(
        "SELECT action FROM event_logs WHERE source='esp32-relay-001' ORDER BY id")]
    assert actions == ["online", "offline"]

    # A real last will: the device's connection dies without DISCONNECT.
    env.register("esp32-relay-002")
    will = fixture_bytes("status_offline_lwt.json").replace(b"esp32-relay-001", b"esp32-relay-002")
    board = env.peer(client_id="esp32-relay-002",
                     will=("autocore/devices/esp32-relay-002/status", will))
    board.publish("autocore/devices/esp32-relay-002/status",
                  fixture_bytes("status_online.json").replace(b"esp32-relay-001", b"esp32-relay-002"),
                  retain=True)
    wait_for(lambda: env.rows("SELECT * FROM devices WHERE uuid='esp32-relay-002' AND status='online'"))
    board.client.socket().close()  # abrupt loss: the broker publishes the will
    wait_for(lambda: env.rows("SELECT * FROM devices WHERE uuid='esp32-relay-002' AND status='offline'"))


def test_silent_device_goes_offline_once(env) -> None:  # type: ignore[no-untyped-def]
    env.gateway(DEVICE_TIMEOUT="1", AUTOCORE_HEARTBEAT_INTERVAL="0.3")
    env.register("esp32-relay-001")
    device = env.peer()
    device.publish("autocore/devices/esp32-relay-001/status", fixture_bytes("status_online.json"))
    wait_for(lambda: env.rows("SELECT * FROM devices WHERE uuid='esp32-relay-001' AND status='online'"))
    wait_for(lambda: env.rows("SELECT * FROM devices WHERE uuid='esp32-relay-001' AND status='offline'"),
             timeout_s=5)
    device.drain(quiet_s=1.5)  # several sweeps pass: no flapping, one offline event
    events = env.rows("SELECT action, payload FROM event_logs WHERE source='esp32-relay-001' ORDER BY id")
    assert [e["action"] for e in events] == ["online", "offline"]
    assert json.loads(events[1]["payload"]) == {"reason": "timeout"}


def test_bad_input_is_rejected_reported_and_does_not_stop_good_traffic(env) -> None:  # type: ignore[no-untyped-def]
    gateway = env.gateway(AUTOCORE_MAX_PAYLOAD="1024")
    env.register("esp32-relay-001")
    env.register("esp32-can-001", "esp32_can")
    observer = env.peer()
    observer.subscribe("autocore/errors/#")
    observer.subscribe("autocore/devices/+/relays/set")
    sender = env.peer()
    status_topic = "autocore/devices/esp32-relay-001/status"
    good = fixture_bytes("telemetry_can.json")
    bad_cases = [
        (status_topic, fixture_bytes("invalid_not_json.json")),
        (status_topic, fixture_bytes("invalid_not_object.json")),
        ("autocore/devices/esp32-display-009/announce", fixture_bytes("invalid_announce_missing_fields.json")),
        ("autocore/devices/esp32-relay-001/response", fixture_bytes("invalid_response_no_command_id.json")),
        ("autocore/devices/esp32-relay-001/relays/command", fixture_bytes("invalid_relay_command_no_channel.json")),
        ("autocore/devices/esp32-can-001/telemetry", b"{" + b" " * 2000 + b"}"),
        ("autocore/devices/esp32-can-001/telemetry", b'{"protocol_version":"2.2.0","x":"\xff\xfe"}'),
        ("autocore/devices//status", fixture_bytes("status_online.json")),
    ]
    for topic, body in bad_cases:  # interleave good telemetry from another device
        sender.publish(topic, body)
        sender.publish("autocore/devices/esp32-can-001/telemetry", good, qos=0)
    wait_for(lambda: len(env.rows("SELECT * FROM telemetry_data")) >= 3 * len(bad_cases),
             what="good telemetry to keep flowing")

    def error(uuid: str, code: str):  # type: ignore[no-untyped-def]
        return observer.expect(lambda m: m.topic.startswith(f"autocore/errors/{uuid}/")
                               and payload(m)["error_code"] == code, what=f"{code} for {uuid}")

    err = payload(error("esp32-relay-001", "ERR_002"))
    assert err["error_type"] == "INVALID_PAYLOAD" and err["source"] == "gateway"
    assert err["context"]["reason"] == "bad_json"
    assert payload(error("esp32-display-009", "ERR_002"))["context"]["reason"] == "missing_field:device_type"
    assert payload(error("esp32-can-001", "ERR_002"))["context"]["reason"] == "payload_too_large"
    messages = observer.drain()
    assert not [m for m in messages if m.topic.endswith("/relays/set")]
    # Throttled: one report per device and code, not one per bad message.
    relay_reports = [m for m in messages if m.topic == "autocore/errors/esp32-relay-001/invalid_payload"]
    assert len(relay_reports) == 1
    log = gateway.log
    for reason in ("bad_json", "not_object", "missing_field:device_type", "missing_field:command_id",
                   "missing_field:channel", "payload_too_large", "not_utf8", "empty_level"):
        assert f"rejected: {reason}" in log, reason
    assert gateway.alive()
    assert not env.rows("SELECT * FROM devices WHERE uuid='esp32-display-009'")


def test_protocol_version_problems_give_one_err_008_and_are_processed(env) -> None:  # type: ignore[no-untyped-def]
    env.gateway()
    env.register("esp32-relay-001")
    observer = env.peer()
    observer.subscribe("autocore/errors/#")
    sender = env.peer()
    for name in ("invalid_missing_version.json", "invalid_wrong_version.json",
                 "invalid_version_not_string.json"):
        sender.publish("autocore/devices/esp32-relay-001/status", fixture_bytes(name))
    wait_for(lambda: env.rows("SELECT * FROM devices WHERE uuid='esp32-relay-001' AND status='online'"))
    report = payload(observer.expect(lambda m: m.topic == "autocore/errors/esp32-relay-001/protocol_mismatch"))
    assert report["error_code"] == "ERR_008" and report["context"]["expected_version"] == "2.2.0"
    mismatches = [m for m in observer.drain() if m.topic.endswith("/protocol_mismatch")]
    assert len(mismatches) == 1


def test_flooding_device_is_rate_limited_with_one_err_005(env) -> None:  # type: ignore[no-untyped-def]
    gateway = env.gateway(AUTOCORE_RATE_LIMIT="50", AUTOCORE_RATE_BURST="50")
    env.register("esp32-can-001", "esp32_can")
    observer = env.peer()
    observer.subscribe("autocore/errors/#")
    flood = env.peer()
    for _ in range(400):
        flood.client.publish("autocore/devices/esp32-can-001/telemetry", fixture_bytes("telemetry_can.json"))
    observer.expect(lambda m: m.topic == "autocore/errors/esp32-can-001/device_busy")
    busy = [m for m in observer.drain(quiet_s=1.0) if m.topic.endswith("/device_busy")]
    assert len(busy) == 1
    # The burst's rows may reach the database in more than one commit.
    stored = wait_for(lambda: (n := len(env.rows("SELECT * FROM telemetry_data"))) >= 3 * 50 and n)
    assert stored < 3 * 400
    assert "rate limited" in gateway.log


def test_relay_command_is_routed_to_the_topic_device(env) -> None:  # type: ignore[no-untyped-def]
    env.gateway()
    env.register("esp32-relay-000")  # first by name: the original would pick it (defect 11)
    env.register("esp32-relay-001")
    board = env.peer()
    board.subscribe("autocore/devices/+/relays/set")
    app = env.peer()
    app.publish("autocore/devices/esp32-relay-001/relays/command", fixture_bytes("relay_command_in.json"))
    message = board.expect(lambda m: m.topic.endswith("/relays/set"))
    assert message.topic == "autocore/devices/esp32-relay-001/relays/set"
    body = payload(message)
    assert body["protocol_version"] == "2.2.0" and body["uuid"] == "autocore-gateway"
    assert body["timestamp"].endswith("Z")
    assert (body["channel"], body["command"], body["state"]) == (3, "on", True)
    assert body["function_type"] == "normal" and body["source"] == "macro_executor"
    assert wait_for(lambda: env.rows("SELECT * FROM event_logs WHERE event_type='relay_command'"))


def test_sigterm_flushes_telemetry_and_publishes_offline(env) -> None:  # type: ignore[no-untyped-def]
    # A window of 200 lets the 50 QoS 1 messages wait: the writer commits early only
    # once acknowledgements owed reach half the window.
    gateway = env.gateway(TELEMETRY_BATCH_SIZE="100000", TELEMETRY_FLUSH_INTERVAL="60",
                          AUTOCORE_WRITE_INTERVAL="60", MAX_CONCURRENT_MESSAGES="200")
    env.register("esp32-can-001", "esp32_can")
    observer = env.peer()
    observer.subscribe(GATEWAY_STATUS)
    device = env.peer()
    for _ in range(50):
        device.publish("autocore/devices/esp32-can-001/telemetry", fixture_bytes("telemetry_can.json"), qos=1)
    # The broker keeps one publisher's order: once this announce is stored, all 50 were received.
    device.publish("autocore/devices/esp32-display-001/announce", fixture_bytes("announce.json"))
    wait_for(lambda: env.rows("SELECT * FROM devices WHERE uuid='esp32-display-001'"))
    assert env.rows("SELECT count(*) AS n FROM telemetry_data")[0]["n"] == 0  # still buffered
    assert gateway.stop(signal.SIGTERM) == 0
    assert env.rows("SELECT count(*) AS n FROM telemetry_data")[0]["n"] == 150
    offline = observer.expect(lambda m: m.topic == GATEWAY_STATUS and payload(m)["status"] == "offline")
    assert payload(offline)["reason"] == "shutdown"
    late = env.peer()
    late.subscribe(GATEWAY_STATUS)
    retained = late.expect(lambda m: m.topic == GATEWAY_STATUS)
    assert retained.retain and payload(retained)["status"] == "offline"
    assert env.rows("SELECT status FROM devices WHERE uuid='autocore-gateway'")[0]["status"] == "offline"
    assert env.rows("SELECT * FROM event_logs WHERE event_type='system' AND action='shutdown'")
    assert "Traceback" not in gateway.log


def test_missing_database_file_exits_1_with_a_clear_message(env, tmp_path: Path,
                                                            gateway_factory) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_factory(env.broker, tmp_path / "missing" / "autocore.db", wait_ready=False)
    assert gateway.proc.wait(30) == 1
    assert "does not exist" in gateway.log and "Traceback" not in gateway.log


def test_unreachable_broker_exits_1(env, broker_factory, gateway_factory) -> None:  # type: ignore[no-untyped-def]
    dead = broker_factory()
    dead.stop()
    gateway = gateway_factory(dead, env.db, wait_ready=False, AUTOCORE_CONNECT_TIMEOUT="1")
    assert gateway.proc.wait(30) == 1
    assert "broker" in gateway.log and "Traceback" not in gateway.log


def test_discovery_modes_and_responses_are_handled_quietly(env) -> None:  # type: ignore[no-untyped-def]
    gateway = env.gateway()
    observer = env.peer()
    observer.subscribe("autocore/errors/#")
    app = env.peer()
    app.publish("autocore/discovery/announce", fixture_bytes("discovery.json"))
    app.publish("autocore/modes/parking", fixture_bytes("mode_change.json"))
    app.publish("autocore/devices/esp32-relay-001/response", fixture_bytes("command_response.json"))
    app.publish("autocore/system/broadcast", b'{"protocol_version":"2.2.0","message":"hello"}')
    app.publish("autocore/gateway/commands/restart", b'{"protocol_version":"2.2.0"}')
    event = wait_for(lambda: env.rows("SELECT * FROM event_logs WHERE event_type='discovery'"))[0]
    assert event["source"] == "gateway" and event["action"] == "device_found"
    assert json.loads(event["payload"])["device_uuid"] == "esp32-relay-002"
    wait_for(lambda: "mode=parking status=active source=macro_executor" in gateway.log)
    assert observer.drain(quiet_s=0.5) == []  # no error storm for app messages
    assert gateway.alive()


def test_two_gateways_with_one_client_id_are_told_so(env) -> None:  # type: ignore[no-untyped-def]
    """A copy-pasted MQTT_CLIENT_ID makes two gateways take each other's session: say it plainly."""
    first = env.gateway(AUTOCORE_SHARED_GROUP="autocore")
    second = env.gateway(AUTOCORE_SHARED_GROUP="autocore")
    hint = "may use MQTT_CLIENT_ID=autocore-gateway; every gateway needs its own client id"
    wait_for(lambda: hint in first.log + second.log, timeout_s=20, what="the clash to be logged")
