"""Memory stays bounded whatever valid MQTT arrives, from any number of made-up devices."""

from __future__ import annotations

import json
import threading
import time
import uuid as uuidlib

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.fixtures.services import fixture_bytes, wait_for

GOOD_CAN = fixture_bytes("telemetry_can.json")


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


# -- a minute of valid traffic from made-up devices ------------------------------------------

#: The memory bound of the issue: whatever valid MQTT arrives, from any number of uuids.
RSS_LIMIT_MB = 80.0
FLOOD_S = 60.0
FLOOD_RATE_HZ = 1000
FLOOD_MAX_MESSAGES = int(FLOOD_S * FLOOD_RATE_HZ)
ENVELOPE = {"protocol_version": "2.2.0", "timestamp": "2025-08-12T20:53:17Z"}


def flood_message(n: int) -> tuple[str, bytes, int]:
    """The n-th message of the flood: every kind a device sends, from a new uuid every few messages."""
    uuid = f"ghost-{n // 2:06d}"  # 30,000 distinct uuids
    kind = n % 10
    qos = 1 if n % 4 == 0 else 0
    body: dict[str, object] = {**ENVELOPE, "uuid": uuid}
    if kind < 4:
        topic = f"autocore/devices/{uuid}/telemetry"
        body["can_data"] = {"signals": {f"SIG_{s}": {"value": n + s, "unit": "rpm"} for s in range(20)}}
        body["analog_sensors"] = {f"a{s}": s * 1.5 for s in range(8)}
    elif kind < 6:
        topic = f"autocore/devices/{uuid}/status"
        body["status"] = "online" if n % 20 else "offline"
    elif kind == 6:
        topic = f"autocore/devices/{uuid}/relays/state"
        body["channels"] = {str(ch): ch % 2 == 0 for ch in range(1, 17)}
    elif kind == 7:
        topic = f"autocore/devices/{uuid}/response"
        body.update(command_id=f"cmd-{n}", success=True)
    elif kind == 8 and n % 50 == 8:  # announces register devices: fewer of them (each one is a row)
        topic = f"autocore/devices/{uuid}/announce"
        body.update(device_type="esp32_relay", firmware_version="1.0.0", capabilities=["relay"] * 40)
        qos = 1
    else:
        topic = "autocore/telemetry/relays/data"
        body.update(event="relay_change", relays=[{"relay_id": 1 + n % 16, "state": True}])
    return topic, json.dumps(body).encode(), qos


def paho_publisher(broker) -> mqtt.Client:  # type: ignore[no-untyped-def]
    """A publisher with room for many QoS 1 messages in flight (set before connecting)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="flooder")
    client.max_inflight_messages_set(500)
    connected = threading.Event()
    client.on_connect = lambda *args: connected.set()
    client.connect(broker.host, broker.port)
    client.loop_start()
    assert connected.wait(10)
    return client


@pytest.mark.slow
def test_a_minute_of_valid_traffic_from_made_up_devices_stays_under_80_mb(env) -> None:  # type: ignore[no-untyped-def]
    """RSS of the gateway, sampled every 0.25 s through a 60 s flood and its drain, stays <= 80 MB."""
    gateway = env.gateway()
    env.register("esp32-can-001", "esp32_can")
    flooder = paho_publisher(env.broker)
    samples: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(rss_mb(gateway.proc.pid))
            time.sleep(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    sent = 0
    try:
        while sent < FLOOD_MAX_MESSAGES and time.monotonic() - started < FLOOD_S + 15:
            topic, payload, qos = flood_message(sent)
            flooder.publish(topic, payload, qos=qos)
            sent += 1
            if sent % 150 == 0:  # paced: FLOOD_RATE_HZ on average
                time.sleep(max(0.0, started + sent / FLOOD_RATE_HZ - time.monotonic()))
        flood_s = time.monotonic() - started
        # A known device's reading after the flood is stored: the gateway kept working
        # (on a busy machine it may still be working through what the broker queued).
        flooder.publish("autocore/devices/esp32-can-001/telemetry", GOOD_CAN, qos=1).wait_for_publish(30)
        wait_for(lambda: env.rows("SELECT id FROM telemetry_data WHERE data_key='can_rpm'"), timeout_s=300,
                 what="the known device's reading after the flood")
        time.sleep(3.0)
    finally:
        done.set()
        sampler.join(5)
        flooder.disconnect()
        flooder.loop_stop()
    peak = max(samples)
    print(f"flood: {sent} messages in {flood_s:.1f} s, drained {time.monotonic() - started - flood_s:.1f} s "
          f"later; RSS first {samples[0]:.1f} MB, peak {peak:.1f} MB, last {samples[-1]:.1f} MB")
    assert flood_s >= FLOOD_S * 0.9, "the flood was cut short"
    assert peak <= RSS_LIMIT_MB, f"RSS peaked at {peak:.1f} MB"
    assert gateway.alive() and "Traceback" not in gateway.log
    ghosts = env.rows("SELECT count(*) AS n FROM devices WHERE uuid LIKE 'ghost-%'")[0]["n"]
    assert ghosts > 0  # announces were processed (they register devices)
