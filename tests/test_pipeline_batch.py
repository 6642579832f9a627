"""``Pipeline.handle_batch`` (a socket read's messages at once) does what ``handle`` does for each.

The batch's short lane for QoS 0 telemetry of known, online devices must not
change any outcome: two pipelines over two copies of one database take the
same hypothesis-built traffic, one message by message, the other in batches
as the frame decoder delivers them, and must end with the same rows, device
states, counters, acknowledgements and publishes. The traffic mixes every kind,
QoS 0 and 1, retained messages, undecodable topics, unknown, offline and online
devices, and a rate limit low enough to be hit.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from autocore.ratelimit import RateLimiter
from tests.fixtures.services import query
from tests.inprocess import World, register
from tests.test_pipeline_hypothesis import ENVELOPE, messages

#: Registered in both databases: online, offline (the first reading brings it online), online.
DEVICES = (("esp32-can-001", "esp32_can", "online"), ("esp32-sensor-001", "esp32_sensor", "offline"),
           ("esp32-relay-001", "esp32_relay", "online"))
#: A rate limit a batch sometimes meets: a token a device per example, on a clock the test moves.
RATE_PER_S, BURST = 3.0, 6


def reading(uuid: str, value: int) -> bytes:
    return json.dumps({**ENVELOPE, "uuid": uuid, "analog_sensors": {"a0": value},
                       "system_status": {"cpu_temperature": value}}).encode()


@st.composite
def frames(draw: Any) -> list[Any]:
    """One socket read as ``decode_frames`` returns it: ``[topic, payload, header, packet id] * n``."""
    out: list[Any] = []
    for n in range(draw(st.integers(1, 14))):
        uuid = draw(st.sampled_from([d[0] for d in DEVICES] + ["esp32-nobody-001"]))
        choice = draw(st.integers(0, 9))
        if choice < 6:  # mostly plain readings, the lane's traffic
            topic: str | bytes = f"autocore/devices/{uuid}/telemetry"
            payload, qos = reading(uuid, draw(st.integers(0, 1000))), draw(st.sampled_from([0, 0, 1]))
        elif choice == 6:  # the device goes offline: its next reading must bring it back
            topic, qos = f"autocore/devices/{uuid}/status", draw(st.sampled_from([0, 1]))
            payload = json.dumps({**ENVELOPE, "uuid": uuid, "status": "offline"}).encode()
        else:
            topic, payload, qos = draw(messages())
        if draw(st.integers(0, 30)) == 0:
            topic = b"autocore/devices/\xff\xfe/telemetry"  # not UTF-8: the decoder passes bytes
        retained = draw(st.integers(0, 6)) == 0
        dup = qos and draw(st.booleans())
        out += [topic, payload, (0x08 if dup else 0) | (qos << 1) | int(retained), 0]
    return out


def covering() -> list[Any]:
    """A batch that meets the rate limit, a bad payload and an offline device, whatever hypothesis draws."""
    can, sensor = "autocore/devices/esp32-can-001/telemetry", "autocore/devices/esp32-sensor-001"
    out: list[Any] = []
    for n in range(BURST + 4):
        out += [can, reading("esp32-can-001", n), 0, 0]
    out += [can, b"{not json", 0, 0]
    out += [f"{sensor}/status", json.dumps({**ENVELOPE, "uuid": "esp32-sensor-001", "status": "offline"}).encode(),
            0, 0]
    return out + [f"{sensor}/telemetry", reading("esp32-sensor-001", 1), 0, 0]


def outcome(world: World, db_path: Path) -> dict[str, Any]:
    metrics = world.metrics.snapshot()
    return {
        "metrics": metrics,
        "by_device": {name: dict(getattr(world.metrics, name))
                      for name in ("rejected_by_device", "rate_limited", "signals_skipped")},
        # As a multiset: when a commit falls (QoS 0 and QoS 1 rows queue apart) is timing, not outcome.
        "rows": sorted((tuple(r) for r in query(db_path, "SELECT device_id, data_type, data_key, data_value, "
                                                         "unit FROM telemetry_data")), key=repr),
        "devices": [tuple(r) for r in query(db_path, "SELECT uuid, status, type FROM devices ORDER BY uuid")],
        "online": sorted(uuid for uuid, *_ in DEVICES if (device := world.registry.get(uuid)) and
                         device.status == "online"),
        "acks": sorted(world.acks, key=repr),
        "published": [(topic, qos, retain) for topic, _payload, qos, retain in world.published],
    }


def test_a_batch_has_the_outcome_of_its_messages_one_by_one(installed_db: Path) -> None:
    for uuid, kind, status in DEVICES:
        register(str(installed_db), uuid, kind, status=status)
    batched_db = installed_db.with_name("batched.db")
    shutil.copy(installed_db, batched_db)
    loop = asyncio.new_event_loop()
    one_by_one = loop.run_until_complete(World.start(str(installed_db), outbox=True))
    batched = loop.run_until_complete(World.start(str(batched_db), outbox=True))
    clock = [0.0]
    for world in (one_by_one, batched):
        world.pipeline.limiter = RateLimiter(RATE_PER_S, BURST, clock=lambda: clock[0])
    mids = iter(range(1, 1_000_000))

    @settings(max_examples=40, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(batch=frames())
    @example(batch=covering())
    def run(batch: list[Any]) -> None:
        clock[0] += 1.0  # RATE_PER_S tokens a device
        for at in range(0, len(batch), 4):
            if batch[at + 2] & 0x06:
                batch[at + 3] = next(mids)

        async def feed() -> None:
            for at in range(0, len(batch), 4):
                header = batch[at + 2]
                one_by_one.pipeline.handle(batch[at], batch[at + 1], bool(header & 0x01), (header >> 1) & 0x03,
                                           batch[at + 3], bool(header & 0x08))
            batched.pipeline.handle_batch(batch)
            await one_by_one.settle()
            await batched.settle()

        loop.run_until_complete(feed())
        assert outcome(batched, batched_db) == outcome(one_by_one, installed_db)

    try:
        run()
    finally:
        loop.run_until_complete(one_by_one.close())
        loop.run_until_complete(batched.close())
        loop.close()
    expected = outcome(one_by_one, installed_db)
    assert expected["metrics"]["rate_limited"] > 0 and expected["metrics"]["telemetry_messages"] > 0
    assert expected["metrics"]["rejected"] > 0 and len(expected["rows"]) > 0
