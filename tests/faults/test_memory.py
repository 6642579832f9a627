"""Memory stays bounded whatever valid MQTT arrives, from any number of made-up devices."""

from __future__ import annotations

import json
import uuid as uuidlib

from tests.fixtures.services import wait_for


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def relay_state(uuid: str, channels: int) -> bytes:
    return json.dumps({"protocol_version": "2.2.0", "uuid": uuid, "timestamp": "2025-08-12T20:53:17Z",
                       "channels": {str(n): n % 2 == 0 for n in range(channels)}}).encode()


def test_relay_state_maps_from_made_up_devices_do_not_grow_memory(env) -> None:  # type: ignore[no-untyped-def]
    """300 relays/state messages of 4,000 channels each, from random uuids, took RSS from 50 to 200 MB."""
    gateway = env.gateway()
    env.register("esp32-relay-001", "esp32_relay")
    flooder = env.peer()
    warm = relay_state("esp32-relay-001", 16)
    flooder.publish("autocore/devices/esp32-relay-001/relays/state", warm)
    wait_for(lambda: env.rows("SELECT id FROM telemetry_data WHERE data_key='relay_15'"), what="warm-up rows")
    before = rss_mb(gateway.proc.pid)
    for _ in range(300):
        ghost = f"ghost-{uuidlib.uuid4().hex[:12]}"
        flooder.client.publish(f"autocore/devices/{ghost}/relays/state", relay_state(ghost, 4000), qos=1)
    flooder.publish("autocore/devices/esp32-relay-001/relays/state", relay_state("esp32-relay-001", 4000))
    # Channels outside 1-16 make no rows; the known board's 4,000-key map yields its 15 real channels.
    wait_for(lambda: len(env.rows("SELECT id FROM telemetry_data WHERE data_key='relay_2'")) >= 2,
             what="the last relay map stored")
    grown = rss_mb(gateway.proc.pid) - before
    assert grown < 20, f"RSS grew {grown:.1f} MB"
    assert gateway.alive() and "Traceback" not in gateway.log


def test_a_channel_key_that_isdigit_but_is_not_a_number_is_skipped(env) -> None:  # type: ignore[no-untyped-def]
    """'²'.isdigit() is True and int('²') raises: once a handler failure, acked twice."""
    gateway = env.gateway()
    env.register("esp32-relay-001", "esp32_relay")
    device = env.peer()
    odd = json.dumps({"protocol_version": "2.2.0", "uuid": "esp32-relay-001", "timestamp": "2025-08-12T20:53:17Z",
                      "channels": {"²": True, "3": True}}).encode()
    device.publish("autocore/devices/esp32-relay-001/relays/state", odd, qos=1)
    rows = wait_for(lambda: env.rows("SELECT data_key, data_value FROM telemetry_data"), what="relay rows")
    assert [(r["data_key"], r["data_value"]) for r in rows] == [("relay_3", "1")]
    assert "handler for topic" not in gateway.log and "Traceback" not in gateway.log
