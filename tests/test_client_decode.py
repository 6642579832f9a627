"""The client's frame decoder delivers exactly what paho's would, in both builds.

Byte streams of MQTT 5 and 3.1.1 packets go through a real socket pair into
two clients, one with the batch frame decoder (compiled or pure, through the
``impl`` fixture) and one with paho's path only, sent in chunks that split
packets anywhere; both must hand the gateway the same messages in the same
order. The two builds of the decoder must also agree on any bytes at all.
"""

from __future__ import annotations

import socket
import struct

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from autocore.client import _BufferedClient
from tests.equivalence import varint

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def publish_packet(topic: bytes, payload: bytes, qos: int, mid: int, dup: bool, retain: bool,
                   properties: bytes | None) -> bytes:
    """A PUBLISH packet; ``properties`` None for MQTT 3.1.1 (no properties field at all)."""
    body = struct.pack("!H", len(topic)) + topic
    if qos:
        body += struct.pack("!H", mid)
    if properties is not None:
        body += varint(len(properties))
    body += (properties or b"") + payload
    header = 0x30 | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    return bytes([header]) + varint(len(body)) + body


#: MQTT 5 PUBLISH properties as a broker forwards them: payload format indicator, content type, user property.
PROPERTIES = [
    b"",
    b"\x01\x01",
    b"\x03" + struct.pack("!H", 16) + b"application/json",
    b"\x26" + struct.pack("!H", 3) + b"key" + struct.pack("!H", 5) + b"value",
]
#: Properties paho refuses or accepts on the edge (found by tests/fuzz/fuzz_frames.py): the decoder
#: must leave the refused ones to paho, which drops the connection, instead of delivering them.
EDGE_PROPERTIES = [
    b"\x01\x02",  # payload format indicator other than 0 or 1
    b"\x01\x00\x01\x01",  # a property that may come once, twice
    b"\x03\x00\x01\x00",  # U+0000 in a string
    b"\x03\x00\x03\xef\xbb\xbf",  # U+FEFF in a string
    b"\x0b\x00",  # subscription identifier 0
    b"\x0b\x05\x0b\x06",  # two subscription identifiers: allowed
    b"\x26\x00\x01k\x00\x01v\x26\x00\x01k\x00\x01w",  # two user properties: allowed
    b"\x09\x00\x02\x00\xff",  # correlation data is binary: anything goes
]

messages = st.tuples(
    st.one_of(st.text(min_size=1, max_size=60).map(lambda t: t.encode()),
              st.binary(min_size=1, max_size=20)),  # topics that are not UTF-8 too
    st.one_of(st.binary(max_size=300), st.integers(60_000, 70_000).map(lambda n: b"x" * n)),
    st.integers(0, 2),
    st.integers(1, 65535),
    st.booleans(),
    st.booleans(),
    st.one_of(st.sampled_from(PROPERTIES), st.sampled_from(EDGE_PROPERTIES)),
)


#: Largest piece sent before the client reads: the socket pair's buffer must never fill up.
SEND_PIECE_BYTES = 32 * 1024


def deliveries(stream: bytes, cuts: list[int], decoder: object = None,
               protocol: int = mqtt.MQTTv5) -> list[tuple[object, ...]]:
    """What a client hands on for ``stream`` sent in pieces at ``cuts``; paho's path alone without ``decoder``.

    A packet paho refuses ends the list with ("connection dropped", its error), as paho then closes.
    """
    ours, broker = socket.socketpair()
    ours.setblocking(False)
    client = _BufferedClient(CallbackAPIVersion.VERSION2, client_id="decode", protocol=protocol,
                             manual_ack=True)
    got: list[tuple[object, ...]] = []

    def add(topic: str | bytes, payload: bytes, retained: bool, qos: int, mid: int, dup: bool) -> None:
        got.append((topic.encode() if isinstance(topic, str) else bytes(topic), bytes(payload), retained, qos,
                    mid, dup))

    def paho_message(_c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        add(message._topic, message.payload, bool(message.retain), message.qos, message.mid, bool(message.dup))

    def batch(messages: list[object]) -> None:
        for at in range(0, len(messages), 4):
            header = messages[at + 2]
            assert isinstance(header, int)
            add(messages[at], messages[at + 1], bool(header & 1), (header >> 1) & 3, messages[at + 3],
                bool(header & 8))

    client.on_message = paho_message
    client.on_publishes = batch if decoder is not None else None
    if decoder is not None:
        client.decode_frames = decoder
    client._sock = ours
    try:
        edges = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts),
                        *range(0, len(stream), SEND_PIECE_BYTES)})
        for start, stop in zip(edges, edges[1:]):
            broker.sendall(stream[start:stop])
            for _ in range(10_000):  # bounded: each round takes at least one packet or one recv
                rc = client.loop_read()
                if rc != mqtt.MQTT_ERR_SUCCESS:  # paho refused a packet: it drops the connection
                    got.append(("connection dropped", rc))
                    return got
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


def with_releases(packets: list[tuple[bytes, bytes, int, int, bool, bool, bytes]],
                  mqtt5: bool = True) -> tuple[bytes, int]:
    """The packets as one stream, each QoS 2 one followed by the broker's PUBREL; and how many there are."""
    stream = b""
    count = 0
    used: set[int] = set()
    for topic, payload, qos, mid, dup, retain, properties in packets:
        if qos == 2:
            if mid in used:  # one QoS 2 message per id in flight
                continue
            used.add(mid)
        stream += publish_packet(topic, payload, qos, mid, dup, retain, properties if mqtt5 else None)
        count += 1
        if qos == 2:
            stream += bytes([0x62, 2]) + struct.pack("!H", mid)
    return stream, count


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(messages, min_size=1, max_size=8), st.lists(st.integers(0, 200_000), max_size=6), st.booleans())
def test_frame_decoder_delivers_what_paho_delivers(impl, packets, cuts, mqtt5) -> None:  # type: ignore[no-untyped-def]
    protocol = mqtt.MQTTv5 if mqtt5 else mqtt.MQTTv311
    stream, count = with_releases(packets, mqtt5)
    expected = deliveries(stream, cuts, protocol=protocol)
    dropped = bool(expected) and expected[-1][0] == "connection dropped"  # an edge property paho refuses
    assert dropped or len(expected) == count
    assert deliveries(stream, cuts, impl.decode_frames, protocol) == expected


def test_telemetry_burst_in_one_chunk(impl) -> None:  # type: ignore[no-untyped-def]
    """Many small QoS 0/1 messages in one recv(), the shape of a backlog being redelivered."""
    packets = [(f"autocore/devices/esp32-{i % 7:03d}/telemetry".encode(), b'{"n":%d}' % i, i % 2, i + 1,
                False, False, b"") for i in range(500)]
    stream, _count = with_releases(packets)
    got = deliveries(stream, [], impl.decode_frames)
    assert got == deliveries(stream, [])
    assert [p[1] for p in got] == [b'{"n":%d}' % i for i in range(500)]


def test_frame_cut_anywhere_is_completed_by_the_next_read(impl) -> None:  # type: ignore[no-untyped-def]
    """Every cut point of a three-packet stream, MQTT 5 properties included, delivers all three."""
    stream, _ = with_releases([(b"a/b", b"x" * 40, 1, 7, False, True, PROPERTIES[3]),
                               (b"c", b"", 0, 0, False, False, PROPERTIES[1]),
                               (b"d/e/f", b"payload", 2, 9, True, False, b"")])
    expected = deliveries(stream, [])
    assert len(expected) == 3
    for cut in range(len(stream) + 1):
        assert deliveries(stream, [cut], impl.decode_frames) == expected, cut


# -- the decoder itself: both builds agree on any bytes ------------------------------

def decode_all(decoder, data: bytes, mqtt5: bool, max_frame: int = 1 << 20):  # type: ignore[no-untyped-def]
    """Everything one decoder makes of ``data`` fed from each position it stops at."""
    results, pos = [], 0
    for _ in range(len(data) + 1):
        out, new_pos, status = decoder(data, pos, mqtt5, max_frame)
        results.append((out, new_pos, status))
        if new_pos == pos:
            break
        pos = new_pos
    return results


def both_builds():  # type: ignore[no-untyped-def]
    """The two decoders, the compiled one even where other modules are pure (the 32-bit ARM build)."""
    from autocore import _fast
    from autocore._fast import _frames_py

    if _fast.extensions_disabled():
        pytest.skip("AUTOCORE_NO_EXTENSIONS is set: compiled build not in use")
    try:
        from autocore._fast import _frames
    except ImportError as exc:
        pytest.skip(f"frame decoder not compiled: {exc}")
    return _frames.decode, _frames_py.decode


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400), st.booleans(), st.integers(0, 300))
def test_builds_agree_on_any_bytes(data, mqtt5, max_frame) -> None:  # type: ignore[no-untyped-def]
    compiled, pure = both_builds()
    assert decode_all(compiled, data, mqtt5, max_frame) == decode_all(pure, data, mqtt5, max_frame)


@settings(max_examples=200, deadline=None)
@given(st.lists(messages, min_size=1, max_size=6), st.booleans(), st.integers(0, 10), st.binary(max_size=12))
def test_builds_agree_on_publish_streams_with_damage(packets, mqtt5, flips, noise) -> None:  # type: ignore[no-untyped-def]
    """Well-formed streams with a few bytes overwritten: the two builds still stop at the same place."""
    compiled, pure = both_builds()
    stream = bytearray(with_releases(packets, mqtt5)[0])
    for n, byte in enumerate(noise[:flips]):
        stream[(n * 7919 + byte) % len(stream)] = byte
    data = bytes(stream)
    assert decode_all(compiled, data, mqtt5) == decode_all(pure, data, mqtt5)


@pytest.mark.parametrize("frame, status", [
    (b"\x20\x02\x00\x00", 1),  # CONNACK: paho's
    (b"\x34\x05\x00\x01a\x00\x01", 1),  # QoS 2: paho's (handshake)
    (b"\x36\x05\x00\x01a\x00\x01", 1),  # QoS 3: malformed, paho's
    (b"\x30\x03\x00\x00x", 1),  # empty topic: a topic alias, paho's
    (b"\x30\xff\xff\xff\xff\x01", 1),  # remaining length of five bytes
    (b"\x30\x80\x80", 0),  # remaining length cut short
    (b"\x30\x05\x00\x01", 0),  # body cut short
    (b"\x30\x05\x00\x09abc", 1),  # topic longer than the packet
    (b"\x30\x04\x00\x01a\x00", 0),  # a whole plain message, then nothing
])
def test_verdicts(impl, frame, status) -> None:  # type: ignore[no-untyped-def]
    out, pos, got = impl.decode_frames(frame, 0, False, 1 << 20)
    assert got == status
    assert pos == (len(frame) if out else 0)


@pytest.mark.parametrize("properties", EDGE_PROPERTIES)
def test_each_edge_property_is_delivered_as_paho_delivers_it(impl, properties) -> None:  # type: ignore[no-untyped-def]
    packet = publish_packet(b"t", b"p", 1, 3, False, False, properties)
    stream = packet + publish_packet(b"u", b"q", 0, 0, False, False, b"")
    assert deliveries(stream, [], impl.decode_frames) == deliveries(stream, [])


def test_mqtt5_properties_decoded_and_topic_alias_left_to_paho(impl) -> None:  # type: ignore[no-untyped-def]
    plain = publish_packet(b"t", b"p", 1, 5, False, True, PROPERTIES[2] + PROPERTIES[3] + b"\x02\x00\x00\x00\x05")
    alias = publish_packet(b"t", b"p", 0, 0, False, False, b"\x23\x00\x01")
    out, pos, status = impl.decode_frames(plain + alias, 0, True, 1 << 20)
    assert out == ["t", b"p", 0x33, 5] and pos == len(plain) and status == 1
    bad_utf8 = publish_packet(b"t", b"p", 0, 0, False, False, b"\x03\x00\x01\xff")
    assert impl.decode_frames(bad_utf8, 0, True, 1 << 20) == ([], 0, 1)


def test_not_utf8_topic_comes_as_bytes(impl) -> None:  # type: ignore[no-untyped-def]
    frame = publish_packet(b"\xff\xfe", b"p", 0, 0, False, False, None)
    assert impl.decode_frames(frame, 0, False, 1 << 20) == ([b"\xff\xfe", b"p", 0x30, 0], len(frame), 0)


def test_frame_over_the_limit_is_left_to_paho(impl) -> None:  # type: ignore[no-untyped-def]
    frame = publish_packet(b"t", b"x" * 100, 0, 0, False, False, None)
    assert impl.decode_frames(frame, 0, False, 50) == ([], 0, 1)
    assert impl.decode_frames(frame, 0, False, 200)[1] == len(frame)


def test_bad_arguments(impl) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TypeError):
        impl.decode_frames(bytearray(b"\x30"), 0, False, 10)
    with pytest.raises(ValueError):
        impl.decode_frames(b"\x30", -1, False, 10)
