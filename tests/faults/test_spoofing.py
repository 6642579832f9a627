"""Valid messages that claim an identity they must not have: counted, logged once, without effect."""

from __future__ import annotations

import json

from autocore import __version__
from autocore.broker import find_free_port
from tests.fixtures.services import wait_for
from tests.test_operations import scrape, value


def announce(uuid: str, device_type: str = "esp32_relay", firmware: str = "9.9.9") -> bytes:
    return json.dumps({"protocol_version": "2.2.0", "uuid": uuid, "timestamp": "2025-08-12T20:53:17Z",
                       "device_type": device_type, "firmware_version": firmware,
                       "capabilities": ["relay_control"]}).encode()


def test_an_announce_on_the_gateways_own_uuid_changes_nothing(env) -> None:  # type: ignore[no-untyped-def]
    """It used to rewrite the gateway's row (type, firmware) and cache the gateway as a device."""
    port = find_free_port()
    gateway = env.gateway(AUTOCORE_METRICS_PORT=str(port))
    before = env.rows("SELECT * FROM devices WHERE uuid='autocore-gateway'")[0]
    spoofer = env.peer()
    for qos in (0, 1, 1):
        spoofer.publish("autocore/devices/autocore-gateway/announce", announce("autocore-gateway"), qos=qos)
    spoofer.publish("autocore/devices/esp32-relay-001/announce", announce("esp32-relay-001"))  # ordered after
    wait_for(lambda: env.rows("SELECT id FROM devices WHERE uuid='esp32-relay-001'"), what="the real announce")

    after = env.rows("SELECT * FROM devices WHERE uuid='autocore-gateway'")[0]
    assert (after["type"], after["firmware_version"], after["name"]) == ("gateway", __version__[:20],
                                                                        before["name"])
    assert after["capabilities_json"] == before["capabilities_json"]
    assert not env.rows("SELECT id FROM event_logs WHERE action='announce' AND source='autocore-gateway'")
    samples = scrape(port)
    assert value(samples, "autocore_messages_rejected_by_device_total", reason="gateway_uuid",
                 device="autocore-gateway") == 3
    assert gateway.log.count("an announce on a gateway's uuid") == 1  # throttled per device and reason
    # The gateway is not cached as a device: the heartbeat counts only the real one.
    heartbeat = env.peer()
    heartbeat.subscribe("autocore/devices/autocore-gateway/status")
    heartbeat.expect(lambda m: json.loads(m.payload).get("devices_online") == 1,
                     what="a heartbeat counting the one real device online")
    assert gateway.alive() and "Traceback" not in gateway.log
