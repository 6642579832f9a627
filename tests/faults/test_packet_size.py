"""The gateway announces a Maximum Packet Size: the broker drops oversized publishes for it.

Without it the broker may send packets of up to 256 MB, each read whole into
the gateway's memory before the 64 KiB payload check rejects it. With it
(payload limit plus header room, MQTT 5) such a publish never reaches the
gateway: the broker logs the drop, the gateway counts nothing, and normal
traffic goes on.
"""

from __future__ import annotations

import json

from autocore.broker import find_free_port
from autocore.client import PACKET_HEADROOM_BYTES
from tests.fixtures.services import fixture_bytes, wait_for
from tests.test_operations import scrape, value

TELEMETRY = json.loads(fixture_bytes("telemetry_can.json"))
TOPIC = "autocore/devices/esp32-can-001/telemetry"


def reading(seq: int, filler: int = 0) -> bytes:
    body = {**TELEMETRY, "analog_sensors": {"seq": seq}}
    if filler:
        body["filler"] = "x" * filler
    return json.dumps(body).encode()


def test_a_200_kb_publish_is_dropped_by_the_broker_and_traffic_goes_on(env, broker_factory) -> None:  # type: ignore[no-untyped-def]
    env.broker = broker_factory(extra_config=["log_type debug"])
    port = find_free_port()
    gateway = env.gateway(AUTOCORE_METRICS_PORT=str(port))
    env.register("esp32-can-001", "esp32_can")
    device = env.peer()
    device.publish(TOPIC, reading(0))
    wait_for(lambda: env.rows("SELECT id FROM telemetry_data WHERE data_key='analog_seq'"), what="first row")
    before = scrape(port)
    received = value(before, "autocore_messages_received_total")
    statuses = value(before, "autocore_messages_accepted_total", kind="status")
    for qos in (0, 1):
        device.publish(TOPIC, reading(1, filler=200_000), qos=qos)
    # Just under the limit the broker still delivers; the gateway rejects the payload as before.
    device.publish(TOPIC, reading(2, filler=65536 + PACKET_HEADROOM_BYTES // 2), qos=1)
    for seq in range(3, 13):
        device.publish(TOPIC, reading(seq))
    wait_for(lambda: len(env.rows("SELECT id FROM telemetry_data WHERE data_key='analog_seq'")) == 11,
             what="the ten normal readings after the big ones")
    samples = scrape(port)
    assert value(samples, "autocore_messages_rejected_total", reason="payload_too_large") == 1
    # Ten readings and one payload past 64 KiB reached the gateway, plus its own status messages.
    own_status = value(samples, "autocore_messages_accepted_total", kind="status") - statuses
    assert value(samples, "autocore_messages_received_total") - received - own_status == 11
    drops = [line for line in env.broker.read_log().splitlines()
             if "Dropping too large outgoing PUBLISH for autocore-gateway" in line]
    assert len(drops) == 2, drops
    assert gateway.alive() and "Traceback" not in gateway.log
