"""Receive path speed: the frame decoder per build, and the client's read with and without it.

Run: ``pytest benchmarks/bench_frames.py --benchmark-only``. The stream is
``FRAMES`` MQTT 5 PUBLISH packets of a sensor board's full telemetry report
(QoS 0, as a broker forwards them). ``extra_info["per_message_ns"]`` is the
median round divided by the messages it delivered.

* ``decode``: ``decode_frames`` over the whole stream in one call (``impl``: compiled and pure).
* ``client read``: the stream written into a socket pair and read by the
  gateway's ``_BufferedClient``, once through the frame decoder (each build) and
  once through paho's own packet path, the way the gateway read before the
  decoder (``paho``). Each delivery reaches a handler that only counts.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from autocore import _fast
from autocore.client import _BufferedClient
from benchmarks.e2e import FULL_PAYLOAD

pytestmark = pytest.mark.benchmark(group="frames", warmup=True)

#: Messages per round: about 60 KiB, one socket read.
FRAMES = 100
TOPIC = b"autocore/devices/esp32-sensor-001/telemetry"


def _frame(payload: bytes) -> bytes:
    body = struct.pack("!H", len(TOPIC)) + TOPIC + b"\x00" + payload  # no packet id (QoS 0), no properties
    length, encoded = len(body), bytearray()
    while True:
        byte, length = length & 0x7F, length >> 7
        encoded.append(byte | (0x80 if length else 0))
        if not length:
            break
    return b"\x30" + bytes(encoded) + body


STREAM = b"".join(_frame(json.dumps({**FULL_PAYLOAD, "analog_sensors": {"seq": n}}).encode())
                  for n in range(FRAMES))


def _record(benchmark: Any) -> None:
    benchmark.extra_info["per_message_ns"] = round(benchmark.stats.stats.median / FRAMES * 1e9, 1)
    benchmark.extra_info["stream_bytes"] = len(STREAM)


def test_bench_decode(benchmark: Any, impl: _fast.Implementation) -> None:
    decode = impl.decode_frames

    def round_trip() -> int:
        messages, pos, _ = decode(STREAM, 0, True, 1 << 20)
        return len(messages) // 4

    assert benchmark(round_trip) == FRAMES
    _record(benchmark)


@pytest.fixture(params=["decoder", "paho"])
def read_path(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_bench_client_read(benchmark: Any, impl: _fast.Implementation, read_path: str) -> None:
    if read_path == "paho" and impl.name != _fast.CYTHON:
        pytest.skip("paho's path does not depend on the build")
    ours, broker = socket.socketpair()
    ours.setblocking(False)
    client = _BufferedClient(CallbackAPIVersion.VERSION2, client_id="bench", protocol=mqtt.MQTTv5,
                             manual_ack=True)
    delivered = [0]

    def count_batch(messages: list[Any]) -> None:
        delivered[0] += len(messages) // 4

    def count_one(*_args: Any) -> None:
        delivered[0] += 1

    client.on_message = count_one
    client.on_publishes = count_batch if read_path == "decoder" else None
    client.decode_frames = impl.decode_frames
    client._sock = ours

    def round_trip() -> int:
        delivered[0] = 0
        broker.sendall(STREAM)
        while delivered[0] < FRAMES:
            client.loop_read()
        return delivered[0]

    try:
        assert benchmark(round_trip) == FRAMES
        _record(benchmark)
    finally:
        client._sock = None
        ours.close()
        broker.close()
