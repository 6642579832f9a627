"""Fuzz the compiled frame decoder against its pure twin and paho (atheris / libFuzzer).

Each input is a byte stream: read as it is, and as the payload of PUBLISH
frames built around it, so the fuzzer also reaches deep into well-formed
packets (properties, packet ids, frames cut anywhere). Both builds must make
the same messages, stop at the same position with the same verdict, and
never raise. Where a stream is nothing but QoS 0/1 PUBLISH frames, a paho
client reading it through a socket pair must deliver the same messages.

    python tests/fuzz/fuzz_frames.py -max_total_time=60
"""

from __future__ import annotations

import socket
import struct
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["autocore"]):
    from autocore._fast import _frames_py

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from autocore._fast import _frames
from autocore.client import _BufferedClient

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for tests.equivalence
from tests.equivalence import varint  # noqa: E402


def _framed(provider: atheris.FuzzedDataProvider, mqtt5: bool) -> bytes:
    """PUBLISH frames whose topics, packet ids, properties and payloads come from the input."""
    stream = b""
    for _ in range(provider.ConsumeIntInRange(1, 6)):
        qos = provider.ConsumeIntInRange(0, 1)
        topic = provider.ConsumeBytes(provider.ConsumeIntInRange(1, 40)) or b"t"
        body = struct.pack("!H", len(topic)) + topic
        if qos:
            body += struct.pack("!H", provider.ConsumeIntInRange(1, 65535))
        if mqtt5:
            properties = provider.ConsumeBytes(provider.ConsumeIntInRange(0, 12))
            body += varint(len(properties)) + properties
        body += provider.ConsumeBytes(provider.ConsumeIntInRange(0, 200))
        stream += bytes([0x30 | (qos << 1) | provider.ConsumeIntInRange(0, 1)]) + varint(len(body)) + body
    return stream


def _decode_all(decode, data: bytes, mqtt5: bool, max_frame: int) -> list[object]:  # type: ignore[no-untyped-def]
    results: list[object] = []
    pos = 0
    while True:
        out, new_pos, status = decode(data, pos, mqtt5, max_frame)
        results.append((out, new_pos, status))
        if new_pos == pos:
            return results
        pos = new_pos


def _paho_deliveries(stream: bytes, mqtt5: bool) -> list[tuple[object, ...]]:
    ours, broker = socket.socketpair()
    ours.setblocking(False)
    client = _BufferedClient(CallbackAPIVersion.VERSION2, client_id="fuzz",
                             protocol=mqtt.MQTTv5 if mqtt5 else mqtt.MQTTv311, manual_ack=True)
    got: list[tuple[object, ...]] = []
    client.on_message = lambda _c, _u, m: got.append((m._topic, m.payload, m.retain, m.qos, m.mid, m.dup))
    client._sock = ours
    try:
        broker.sendall(stream)
        for _ in range(len(stream) + 2):  # bounded: each round takes a packet or a read
            if client.loop_read() != mqtt.MQTT_ERR_SUCCESS:
                break
            if client.has_buffered():
                continue
            try:
                ours.recv(1, socket.MSG_PEEK)
            except BlockingIOError:
                break
        return got
    finally:
        client._sock = None
        ours.close()
        broker.close()


def check(data: bytes, mqtt5: bool, max_frame: int) -> None:
    fast = _decode_all(_frames.decode, data, mqtt5, max_frame)
    slow = _decode_all(_frames_py.decode, data, mqtt5, max_frame)
    if fast != slow:
        raise AssertionError(f"builds disagree on {data!r} (mqtt5={mqtt5}): {fast!r} != {slow!r}")
    messages, end, _status = fast[0]
    if end == len(data) and data:  # nothing but QoS 0/1 PUBLISH frames, all decoded at once
        ours = [(topic.encode() if isinstance(topic, str) else topic, payload, bool(header & 1),
                 (header >> 1) & 3, mid, bool(header & 8))
                for topic, payload, header, mid in zip(*[iter(messages)] * 4)]  # type: ignore[misc]
        paho = [(bytes(t), bytes(p), bool(r), q, m, bool(d)) for t, p, r, q, m, d in _paho_deliveries(data, mqtt5)]
        if ours != paho:
            raise AssertionError(f"decoder and paho disagree on {data!r}: {ours!r} != {paho!r}")


def test_one_input(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    mqtt5 = provider.ConsumeBool()
    max_frame = provider.ConsumeIntInRange(0, 1 << 16)
    check(data, mqtt5, max_frame)
    framed = _framed(provider, mqtt5)
    check(framed, mqtt5, 1 << 20)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
