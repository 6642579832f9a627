"""The client's own PUBLISH decoder delivers exactly what paho's would.

Byte streams of MQTT 5 packets go through a real socket pair into two clients,
one with the plain-PUBLISH decoder and one with paho's path only, sent in
chunks that split packets anywhere; both must hand the gateway the same
messages in the same order.
"""

from __future__ import annotations

import socket
import struct

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from autocore.client import _BufferedClient

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def publish_packet(topic: bytes, payload: bytes, qos: int, mid: int, dup: bool, retain: bool,
                   properties: bytes) -> bytes:
    body = struct.pack("!H", len(topic)) + topic
    if qos:
        body += struct.pack("!H", mid)
    body += varint(len(properties)) + properties + payload
    header = 0x30 | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    return bytes([header]) + varint(len(body)) + body


#: MQTT 5 PUBLISH properties as a broker forwards them: payload format indicator, content type, user property.
PROPERTIES = [
    b"",
    b"\x01\x01",
    b"\x03" + struct.pack("!H", 16) + b"application/json",
    b"\x26" + struct.pack("!H", 3) + b"key" + struct.pack("!H", 5) + b"value",
]

messages = st.tuples(
    st.one_of(st.text(min_size=1, max_size=60).map(lambda t: t.encode()),
              st.binary(min_size=1, max_size=20)),  # topics that are not UTF-8 too
    st.one_of(st.binary(max_size=300), st.integers(60_000, 70_000).map(lambda n: b"x" * n)),
    st.integers(0, 2),
    st.integers(1, 65535),
    st.booleans(),
    st.booleans(),
    st.sampled_from(PROPERTIES),
)


#: Largest piece sent before the client reads: the socket pair's buffer must never fill up.
SEND_PIECE_BYTES = 32 * 1024


def deliveries(stream: bytes, cuts: list[int], plain: bool) -> list[tuple[object, ...]]:
    """What a client hands on for ``stream`` sent in pieces at ``cuts``."""
    ours, broker = socket.socketpair()
    ours.setblocking(False)
    client = _BufferedClient(CallbackAPIVersion.VERSION2, client_id="decode", protocol=mqtt.MQTTv5,
                             manual_ack=True)
    got: list[tuple[object, ...]] = []

    def add(topic: str | bytes, payload: bytes, retained: bool, qos: int, mid: int, dup: bool) -> None:
        got.append((topic.encode() if isinstance(topic, str) else bytes(topic), bytes(payload), retained, qos,
                    mid, dup))

    def paho_message(_c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        add(message._topic, message.payload, bool(message.retain), message.qos, message.mid, bool(message.dup))

    client.on_message = paho_message
    client.plain_publish = add if plain else None
    client._sock = ours
    try:
        edges = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts),
                        *range(0, len(stream), SEND_PIECE_BYTES)})
        for start, stop in zip(edges, edges[1:]):
            broker.sendall(stream[start:stop])
            for _ in range(10_000):  # bounded: each round takes at least one packet or one recv
                rc = client.loop_read()
                assert rc == mqtt.MQTT_ERR_SUCCESS, rc
                if not client.has_buffered():
                    try:
                        pending = ours.recv(1, socket.MSG_PEEK)
                    except BlockingIOError:
                        break
                    assert pending
        return got
    finally:
        client._sock = None
        ours.close()
        broker.close()


def with_releases(packets: list[tuple[bytes, bytes, int, int, bool, bool, bytes]]) -> tuple[bytes, int]:
    """The packets as one stream, each QoS 2 one followed by the broker's PUBREL; and how many there are."""
    stream = b""
    count = 0
    used: set[int] = set()
    for topic, payload, qos, mid, dup, retain, properties in packets:
        if qos == 2:
            if mid in used:  # one QoS 2 message per id in flight
                continue
            used.add(mid)
        stream += publish_packet(topic, payload, qos, mid, dup, retain, properties)
        count += 1
        if qos == 2:
            stream += bytes([0x62, 2]) + struct.pack("!H", mid)
    return stream, count


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(messages, min_size=1, max_size=8), st.lists(st.integers(0, 200_000), max_size=6))
def test_plain_decoder_delivers_what_paho_delivers(packets, cuts) -> None:  # type: ignore[no-untyped-def]
    stream, count = with_releases(packets)
    expected = deliveries(stream, cuts, plain=False)
    assert len(expected) == count
    assert deliveries(stream, cuts, plain=True) == expected


def test_telemetry_burst_in_one_chunk() -> None:
    """Many small QoS 0/1 messages in one recv(), the shape of a backlog being redelivered."""
    packets = [(f"autocore/devices/esp32-{i % 7:03d}/telemetry".encode(), b'{"n":%d}' % i, i % 2, i + 1,
                False, False, b"") for i in range(500)]
    stream, _count = with_releases(packets)
    got = deliveries(stream, [], plain=True)
    assert got == deliveries(stream, [], plain=False)
    assert [p[1] for p in got] == [b'{"n":%d}' % i for i in range(500)]
