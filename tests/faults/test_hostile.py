"""Hostile input against a running gateway: everything is rejected or stored safely, nothing crashes."""

from __future__ import annotations

import json
import threading
import time

from tests.fixtures.services import fixture_bytes, wait_for

GOOD = fixture_bytes("telemetry_can.json")
ENVELOPE = '{"protocol_version":"2.2.0","uuid":"esp32-can-001","timestamp":"2025-08-12T20:53:17Z",'

HOSTILE_PAYLOADS = [
    b"{" + b'"a":' * 0 + b'"x":"' + b"A" * 200_000 + b'"}',          # oversized
    b'{"a":' * 2000 + b"1" + b"}" * 2000,                                 # deep nesting
    (ENVELOPE + '"analog_sensors":{"big":1e999}}').encode(),              # overflowing number
    (ENVELOPE + '"analog_sensors":{"big":123456789012345678901234567890}}').encode(),
    (ENVELOPE + '"analog_sensors":{"nan":NaN,"inf":Infinity}}').encode(),  # not JSON
    ENVELOPE.encode() + b'"analog_sensors":{"bad":"\xff\xfe"}}',          # invalid UTF-8
    (ENVELOPE + '"analog_sensors":{"x\\u0000y":1}}').encode(),            # NUL inside a key
    b"\x00\x01\x02\x03" * 100,
    b"",
    b"[]" * 1000,
]


def test_hostile_payloads_topics_and_uuid_floods(env) -> None:  # type: ignore[no-untyped-def]
    gateway = env.gateway(AUTOCORE_MAX_PAYLOAD="65536", AUTOCORE_DEVICE_CACHE_SIZE="64")
    env.register("esp32-can-001", "esp32_can")
    good = env.peer()
    stop = threading.Event()

    def steady() -> None:  # a well-behaved device keeps publishing throughout
        while not stop.is_set():
            good.client.publish("autocore/devices/esp32-can-001/telemetry", GOOD, qos=0)
            time.sleep(0.05)

    steady_thread = threading.Thread(target=steady, daemon=True)
    steady_thread.start()
    hostile = env.peer()
    for payload in HOSTILE_PAYLOADS:
        hostile.client.publish("autocore/devices/esp32-can-001/telemetry", payload, qos=1)
    sql = "x'); DROP TABLE devices; --"
    hostile.publish("autocore/devices/esp32-can-001/telemetry",
                    (ENVELOPE + json.dumps({"analog_sensors": {sql: 1.5}})[1:]).encode())
    for topic in ("autocore/devices/../telemetry", "autocore/devices/a b/telemetry",
                  "autocore/devices/" + "x" * 300 + "/telemetry", "autocore/devices/%00/status",
                  "autocore/devices/esp32-can-001/status/../../x"):
        hostile.client.publish(topic, GOOD, qos=1)
    for i in range(3000):  # made-up device uuids at a high rate
        ghost = f"ghost-{i:05d}"
        hostile.client.publish(f"autocore/devices/{ghost}/telemetry",
                               GOOD.replace(b"esp32-can-001", ghost.encode()), qos=0)
    hostile.publish("autocore/devices/ghost-end/status", b"{}")  # ordered after the flood
    before = len(env.rows("SELECT id FROM telemetry_data"))
    wait_for(lambda: len(env.rows("SELECT id FROM telemetry_data")) > before + 30, timeout_s=20,
             what="steady telemetry to keep flowing")
    stop.set()
    steady_thread.join(5)

    assert gateway.alive()
    assert {r["uuid"] for r in env.rows("SELECT uuid FROM devices")} == {"autocore-gateway", "esp32-can-001"}
    stored = env.rows("SELECT data_key, data_value FROM telemetry_data WHERE data_type='analog_sensor'")
    assert [(r["data_key"], r["data_value"]) for r in stored] == [("analog_" + sql.lower(), "1.5")]
    log = gateway.log
    assert log.count("ghost-") < 100  # the flood of made-up uuids does not flood the log
    for reason in ("too_deep", "bad_json", "not_utf8", "bad_uuid", "topic_too_long"):
        assert f"rejected: {reason}" in log, reason
    # The 200 KB payload never reaches the gateway: the broker drops it (Maximum
    # Packet Size at CONNECT, tests/faults/test_packet_size.py).
    assert "payload_too_large" not in log
    assert "Traceback" not in log
