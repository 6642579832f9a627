# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""MQTT frame decoder for whole socket reads (compiled twin of ``_frames_py.py``).

The pure twin is the specification: same messages, same positions, same
verdicts for every byte string. This one reads the buffer through a C pointer
and builds only the objects the pipeline needs (the topic, the payload, two
small ints per message).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_Append
from cpython.unicode cimport PyUnicode_DecodeUTF8

NEED_MORE = 0
PAHO = 1

cdef enum:
    _PUBLISH = 0x30
    _CUT = -1  # a variable byte integer runs past the buffer
    _MALFORMED = -2  # more than four bytes


cdef inline Py_ssize_t _varint(const unsigned char* data, Py_ssize_t at, Py_ssize_t end,
                               Py_ssize_t* value) noexcept:
    """Decode a variable byte integer at ``at``; return the next position, _CUT or _MALFORMED."""
    cdef Py_ssize_t result = 0
    cdef int shift = 0
    cdef unsigned char byte
    while True:
        if at >= end:
            return _CUT
        if shift > 21:
            return _MALFORMED
        byte = data[at]
        at += 1
        result |= <Py_ssize_t>(byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            value[0] = result
            return at


cdef bint _utf8_ok(const unsigned char* data, Py_ssize_t start, Py_ssize_t stop):
    """An MQTT UTF-8 string: valid UTF-8 without U+0000 or U+FEFF (paho refuses those)."""
    cdef Py_ssize_t i
    for i in range(start, stop):
        if data[i] == 0:
            return False
        # U+FEFF is EF BB BF in UTF-8
        if data[i] == 0xEF and i + 2 < stop and data[i + 1] == 0xBB and data[i + 2] == 0xBF:
            return False
    try:
        PyUnicode_DecodeUTF8(<const char*>data + start, stop - start, NULL)
    except UnicodeDecodeError:
        return False
    return True


cdef Py_ssize_t _properties_end(const unsigned char* data, Py_ssize_t at, Py_ssize_t stop) except -2:
    """Where the PUBLISH properties at ``at`` end, or -1 when paho must look at them (see the pure twin)."""
    cdef Py_ssize_t length = 0, end, size = 0
    cdef unsigned char kind
    cdef int strings, i
    cdef unsigned long long seen = 0
    at = _varint(data, at, stop, &length)
    if at < 0 or at + length > stop:
        return -1
    end = at + length
    while at < end:
        kind = data[at]
        at += 1
        if kind < 64 and kind != 0x0B and kind != 0x26:  # at most once, as paho requires
            if seen & (1ULL << kind):
                return -1
            seen |= 1ULL << kind
        if kind == 0x01:  # payload format indicator: 0 or 1
            if at >= end or data[at] > 1:
                return -1
            at += 1
        elif kind == 0x02:  # message expiry interval
            at += 4
        elif kind == 0x0B:  # subscription identifier: at least 1
            at = _varint(data, at, end, &size)
            if at < 0 or size < 1:
                return -1
        elif kind == 0x03 or kind == 0x08 or kind == 0x09 or kind == 0x26:
            strings = 2 if kind == 0x26 else 1  # user property: a pair; correlation data: binary
            for i in range(strings):
                if at + 2 > end:
                    return -1
                size = (<Py_ssize_t>data[at] << 8) | data[at + 1]
                at += 2
                if at + size > end or (kind != 0x09 and not _utf8_ok(data, at, at + size)):
                    return -1
                at += size
        else:  # unknown here, not allowed on a PUBLISH, or a topic alias (0x23)
            return -1
        if at > end:
            return -1
    return end


def decode(bytes data not None, Py_ssize_t pos, bint mqtt5, Py_ssize_t max_frame):
    """Decode the PUBLISH frames of ``data`` from ``pos``: (messages, position reached, NEED_MORE or PAHO)."""
    cdef list out = []
    cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t end = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t length = 0, body, stop, topic_end, at
    cdef unsigned char header
    cdef int packet_id
    cdef object topic
    if pos < 0:
        raise ValueError("pos must be >= 0")
    while pos < end:
        header = buf[pos]
        body = _varint(buf, pos + 1, end, &length)
        if body == _CUT:
            return out, pos, NEED_MORE
        if body == _MALFORMED or header & 0xF0 != _PUBLISH or header & 0x06 >= 0x04 or length > max_frame:
            return out, pos, PAHO
        stop = body + length
        if stop > end:
            return out, pos, NEED_MORE
        if length < 2:
            return out, pos, PAHO
        topic_end = body + 2 + ((<Py_ssize_t>buf[body] << 8) | buf[body + 1])
        if topic_end == body + 2 or topic_end > stop:
            return out, pos, PAHO
        at = topic_end
        packet_id = 0
        if header & 0x06:
            if at + 2 > stop:
                return out, pos, PAHO
            packet_id = (buf[at] << 8) | buf[at + 1]
            at += 2
        if mqtt5:
            at = _properties_end(buf, at, stop)
            if at < 0:
                return out, pos, PAHO
        try:
            topic = PyUnicode_DecodeUTF8(<const char*>buf + body + 2, topic_end - body - 2, NULL)
        except UnicodeDecodeError:
            topic = PyBytes_FromStringAndSize(<const char*>buf + body + 2, topic_end - body - 2)
        PyList_Append(out, topic)
        PyList_Append(out, PyBytes_FromStringAndSize(<const char*>buf + at, stop - at))
        PyList_Append(out, header)
        PyList_Append(out, packet_id)
        pos = stop
    return out, pos, NEED_MORE
