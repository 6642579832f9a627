"""MQTT frame decoder for whole socket reads (pure twin of ``_frames.pyx``).

The client reads 64 KiB at a time and hands the whole buffer here: every
complete PUBLISH at QoS 0 or 1 (MQTT 3.1.1 or 5, properties included) is
decoded in one call, and decoding stops at the first frame that is not one,
for paho to handle (CONNACK, SUBACK, PUBACK, PINGRESP, DISCONNECT, QoS 2 with
its handshake, a topic alias, anything malformed), or at a frame that is not
whole yet, whose bytes the caller keeps and completes with the next read.

paho keeps the session; this only saves it the per-packet work it would spend
on a telemetry message (a ``Properties`` object, an ``MQTTMessage`` with its
own lock, three more locks and a log call per packet).

Messages come back in one flat list, four entries each, instead of a tuple per
message: ``topic, payload, header, packet_id``. ``topic`` is a str, or the raw
bytes when it is not valid UTF-8 (the pipeline rejects it by name); ``header``
is the fixed-header byte (retain: bit 0, QoS: bits 1-2, DUP: bit 3);
``packet_id`` is 0 at QoS 0.
"""

from __future__ import annotations

#: The buffer ends inside a frame (or exactly at a frame's end): read more.
NEED_MORE = 0
#: A whole frame that paho must handle starts at the returned position.
PAHO = 1

_PUBLISH = 0x30
#: MQTT 5 PUBLISH properties by identifier: the size of a fixed-size value, or a
#: negative code for the variable-size kinds. Any other identifier is paho's.
_STRING = -1  # two-byte length + UTF-8
_BINARY = -2  # two-byte length + bytes
_PAIR = -3  # two strings
_VARINT = -4
_TOPIC_ALIAS = 0x23
_PAYLOAD_FORMAT = 0x01
#: Properties that may come more than once: subscription identifier, user property.
_REPEATABLE = frozenset({0x0B, 0x26})
PUBLISH_PROPERTIES = {
    0x01: 1,  # payload format indicator
    0x02: 4,  # message expiry interval
    0x03: _STRING,  # content type
    0x08: _STRING,  # response topic
    0x09: _BINARY,  # correlation data
    0x0B: _VARINT,  # subscription identifier
    0x26: _PAIR,  # user property
}


def _varint(data: bytes, at: int, end: int) -> tuple[int, int]:
    """A variable byte integer at ``at``: (value, next position); next = -1 if cut short, -2 if malformed."""
    value = shift = 0
    while True:
        if at >= end:
            return 0, -1
        if shift > 21:
            return 0, -2
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def _utf8_ok(data: bytes, start: int, stop: int) -> bool:
    """An MQTT UTF-8 string: valid UTF-8 without U+0000 or U+FEFF (paho refuses those)."""
    try:
        text = data[start:stop].decode("utf-8")
    except UnicodeDecodeError:
        return False
    return "\x00" not in text and "\ufeff" not in text


def _properties_end(data: bytes, at: int, stop: int) -> int:
    """Where the PUBLISH properties starting at ``at`` end, or -1 when paho must look at them.

    Only what paho itself accepts is decoded here: each property at most once
    (user properties and subscription identifiers excepted), a payload format
    indicator of 0 or 1, a subscription identifier of at least 1.
    """
    length, at = _varint(data, at, stop)
    if at < 0 or at + length > stop:
        return -1
    end = at + length
    seen = 0
    while at < end:
        ident = data[at]
        kind = PUBLISH_PROPERTIES.get(ident)
        at += 1
        if kind is None:  # unknown here, not allowed on a PUBLISH, or a topic alias
            return -1
        if ident not in _REPEATABLE:
            if seen & (1 << ident):
                return -1
            seen |= 1 << ident
        if kind > 0:
            if ident == _PAYLOAD_FORMAT and (at >= end or data[at] > 1):
                return -1
            at += kind
        elif kind == _VARINT:
            value, at = _varint(data, at, end)
            if at < 0 or value < 1:
                return -1
        else:
            for _ in range(2 if kind == _PAIR else 1):
                if at + 2 > end:
                    return -1
                size = (data[at] << 8) | data[at + 1]
                at += 2
                if at + size > end or (kind != _BINARY and not _utf8_ok(data, at, at + size)):
                    return -1
                at += size
        if at > end:
            return -1
    return end


def decode(data: bytes, pos: int, mqtt5: bool, max_frame: int) -> tuple[list[object], int, int]:
    """Decode the PUBLISH frames of ``data`` from ``pos``: (messages, position reached, NEED_MORE or PAHO).

    ``max_frame`` bounds what is buffered here: a longer frame is left to
    paho, which the broker should never send (our CONNECT names a Maximum
    Packet Size).
    """
    if not isinstance(data, bytes):
        raise TypeError(f"data must be bytes, not {type(data).__name__}")
    if pos < 0:
        raise ValueError("pos must be >= 0")
    out: list[object] = []
    end = len(data)
    while pos < end:
        header = data[pos]
        length, body = _varint(data, pos + 1, end)
        if body == -1:
            return out, pos, NEED_MORE
        if body == -2 or header & 0xF0 != _PUBLISH or header & 0x06 >= 0x04 or length > max_frame:
            return out, pos, PAHO  # not ours: another packet type, QoS 2 (or 3), malformed, too big
        stop = body + length
        if stop > end:
            return out, pos, NEED_MORE
        if length < 2:
            return out, pos, PAHO
        topic_end = body + 2 + ((data[body] << 8) | data[body + 1])
        if topic_end == body + 2 or topic_end > stop:  # an empty topic (an alias) or a bad length
            return out, pos, PAHO
        at = topic_end
        packet_id = 0
        if header & 0x06:
            if at + 2 > stop:
                return out, pos, PAHO
            packet_id = (data[at] << 8) | data[at + 1]
            at += 2
        if mqtt5:
            at = _properties_end(data, at, stop)
            if at < 0:
                return out, pos, PAHO
        raw_topic = data[body + 2:topic_end]
        try:
            topic: str | bytes = raw_topic.decode("utf-8")
        except UnicodeDecodeError:
            topic = raw_topic
        out += (topic, data[at:stop], header, packet_id)
        pos = stop
    return out, pos, NEED_MORE
