# cython: language_level=3
# cython: boundscheck=False, wraparound=False
"""Check a device payload against the v2.2.0 envelope (compiled twin of ``_envelope_py.py``).

``_envelope_py.py`` is the specification: this module must return the same
record, field for field, for every topic and payload. It walks simdjson's DOM
and, for telemetry, builds only the row tuples and the few strings a Message
needs, never the whole document.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free
from cpython.unicode cimport PyUnicode_DecodeUTF8, PyUnicode_GET_LENGTH
cimport cython
from cython.operator cimport dereference as deref, preincrement as inc
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.string cimport memchr, memcmp, memcpy
from libcpp.vector cimport vector

from ..errors import ConfigError
from ._names import (
    ANNOUNCE, RELAY_COMMAND, RELAY_STATE, RELAY_TELEMETRY, RESPONSE, STATUS, TELEMETRY,
)


cdef extern from "Python.h":
    const int Py_DTSF_ADD_DOT_0
    const Py_ssize_t PY_SSIZE_T_MAX
    char *PyOS_double_to_string(double value, char format_code, int precision, int flags,
                                int *kind) except NULL
    bint PyUnicode_IS_COMPACT_ASCII(object text)
    void *PyUnicode_DATA(object text)
    object PyUnicode_New(Py_ssize_t size, Py_UCS4 maxchar)


cdef extern from "_envelope_dom.h" namespace "autocore_envelope" nogil:
    cdef cppclass Element "simdjson::dom::element":
        Element()

    cdef cppclass DomObject "simdjson::dom::object":
        cppclass iterator:
            iterator()
            iterator& operator++()
            bint operator!=(const iterator&)
            const char *key_c_str()
            uint32_t key_length()
            Element value()
        DomObject()
        iterator begin()
        iterator end()

    cdef cppclass DomArray "simdjson::dom::array":
        cppclass iterator:
            iterator()
            iterator& operator++()
            bint operator!=(const iterator&)
            Element operator*()
        DomArray()
        iterator begin()
        iterator end()

    cdef cppclass Parser "simdjson::dom::parser":
        Parser()

    cdef cppclass Field:
        const char *key
        size_t key_length
        Element value

    cdef cppclass Scratch:
        vector[Field] fields

    enum:
        KEY_PROTOCOL_VERSION
        KEY_UUID
        KEY_TIMESTAMP
        KEY_CAN_DATA
        KEY_ANALOG_SENSORS
        KEY_SYSTEM_STATUS
        KEY_GPS
        KEY_EVENT
        KEY_CHANNEL
        KEY_STATE
        KEY_DEVICE_TYPE
        KEY_FIRMWARE_VERSION
        KEY_CAPABILITIES
        KEY_COMMAND_ID
        KEY_COMMAND
        KEY_STATUS
        KEY_CHANNELS
        KEY_RELAYS
        TOP_KEY_COUNT
        SYSTEM_STATUS_KEY_COUNT
        GPS_KEY_COUNT
        SIGNAL_VALUE
        SIGNAL_UNIT
        SIGNAL_KEY_COUNT
        RELAY_ITEM_ID
        RELAY_ITEM_STATE
        RELAY_KEY_COUNT

    int parse(Parser &json_parser, const char *data, size_t length, Element &root)
    bint utf8_ok(const char *data, size_t length)
    char type_code(const Element &value)
    DomObject as_object(const Element &value)
    DomArray as_array(const Element &value)
    int64_t as_int64(const Element &value)
    uint64_t as_uint64(const Element &value)
    double as_double(const Element &value)
    bint as_bool(const Element &value)
    const char *string_data(const Element &value)
    size_t string_length(const Element &value)
    uint64_t collect_top(const DomObject &fields, Element *values)
    uint64_t collect_system_status(const DomObject &fields, Element *values)
    uint64_t collect_gps(const DomObject &fields, Element *values)
    uint64_t collect_signal(const DomObject &fields, Element *values)
    uint64_t collect_relay(const DomObject &fields, Element *values)
    uint64_t collect_can_signals(const DomObject &fields, Element *values)
    void unique_fields(const DomObject &fields, Scratch &scratch) except +
    enum:
        FLOAT_TEXT_BYTES
    int int_repr(int64_t value, char *out)
    int float_repr(double value, char *out)


cdef enum:
    _MAX_DEPTH = 32
    _MAX_SENSOR_NAME_LENGTH = 64
    _MAX_DATA_KEY_LENGTH = 100
    _MAX_UNIT_LENGTH = 20
    _MAX_UUID_LENGTH = 64
    _FIRST_CHANNEL = 1
    _LAST_CHANNEL = 16
    # Room for "analog_" + a 64-character ASCII name.
    _SENSOR_KEY_BUFFER_BYTES = 80
    _ASCII_ZERO = 48  # ord("0"): digit arithmetic on C chars

# Kind codes, so the rules switch on a C int instead of comparing strings.
# ANNOUNCE..RELAY_STATE are the kinds whose topic uuid a payload uuid must match.
cdef enum:
    OTHER_KIND
    KIND_ANNOUNCE
    KIND_STATUS
    KIND_TELEMETRY
    KIND_RESPONSE
    KIND_RELAY_STATE
    KIND_RELAY_COMMAND
    KIND_RELAY_TELEMETRY

#: Default payload limit (D14); firmware payloads stay under 512 bytes.
DEFAULT_MAX_PAYLOAD_BYTES = 65536
#: Deepest nesting of objects/arrays accepted; real envelopes use three levels.
MAX_DEPTH = _MAX_DEPTH
MAX_DATA_KEY_LENGTH = _MAX_DATA_KEY_LENGTH
MAX_UNIT_LENGTH = _MAX_UNIT_LENGTH

cdef dict _KIND_CODES = {
    ANNOUNCE: KIND_ANNOUNCE,
    STATUS: KIND_STATUS,
    TELEMETRY: KIND_TELEMETRY,
    RESPONSE: KIND_RESPONSE,
    RELAY_STATE: KIND_RELAY_STATE,
    RELAY_COMMAND: KIND_RELAY_COMMAND,
    RELAY_TELEMETRY: KIND_RELAY_TELEMETRY,
}
cdef tuple _RELAY_SENSORS = tuple([
    "relay_%d" % n for n in range(_FIRST_CHANNEL, _LAST_CHANNEL + 1)
])
# Sensor names and units of the fixed-key sections, in the key order of _envelope_dom.h.
cdef tuple _SYSTEM_STATUS_ROWS = (
    ("cpu_temp", "°C"),
    ("memory_used", "%"),
    ("uptime", "seconds"),
    ("wifi_signal", "dBm"),
    ("battery_voltage", "V"),
)
cdef tuple _GPS_ROWS = (
    ("gps_lat", "degrees"),
    ("gps_lng", "degrees"),
    ("gps_alt", "meters"),
    ("gps_speed", "km/h"),
    ("gps_heading", "degrees"),
    ("gps_satellites", "count"),
)
cdef str _ONE_TEXT = "1.0"
cdef str _ZERO_TEXT = "0.0"
cdef const char *_UUID_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-"
cdef size_t _UUID_CHAR_COUNT = 66


@cython.final
@cython.freelist(16)
cdef class Message:
    """An accepted payload: who sent it, its envelope fields and the rows it yields.

    ``rows`` holds ``(data_type, data_key, data_value, unit)`` tuples ready for
    ``telemetry_data``; ``skipped`` counts sensor entries left out because they
    were malformed. ``data`` is the whole payload, except for ``telemetry``
    where it is ``None`` so the hot path builds no dict.
    """

    cdef readonly object kind
    cdef readonly object uuid
    cdef readonly object sub
    cdef readonly object timestamp
    cdef readonly object version
    cdef readonly bint version_ok
    cdef readonly object rows
    cdef readonly object data
    cdef readonly Py_ssize_t skipped

    def __init__(self, kind, uuid, sub, timestamp, version, version_ok, rows, data, skipped):
        self.kind = kind
        self.uuid = uuid
        self.sub = sub
        self.timestamp = timestamp
        self.version = version
        self.version_ok = version_ok
        self.rows = rows
        self.data = data
        self.skipped = skipped

    def as_tuple(self):
        """Return every field in declaration order, the form the twins are compared in."""
        return (
            self.kind, self.uuid, self.sub, self.timestamp, self.version, self.version_ok,
            self.rows, self.data, self.skipped,
        )

    def __eq__(self, other):
        """Compare field by field, so records of the two builds compare equal too."""
        if type(other).__name__ != "Message" or not hasattr(other, "as_tuple"):
            return NotImplemented
        return self.as_tuple() == other.as_tuple()

    def __repr__(self):
        return (
            "Message(kind=%r, uuid=%r, sub=%r, timestamp=%r, version=%r, version_ok=%r, "
            "rows=%r, data=%r, skipped=%r)" % self.as_tuple()
        )


@cython.final
@cython.freelist(16)
cdef class Reject:
    """A refused payload: ``reason`` is the machine-readable code, ``path`` the bad value.

    ``uuid`` is the uuid the message would have carried, as far as validation
    got: the topic's uuid, or the payload's once the uuid rule has run.
    """

    cdef readonly object kind
    cdef readonly object uuid
    cdef readonly object reason
    cdef readonly object path

    def __init__(self, kind, uuid, reason, path):
        self.kind = kind
        self.uuid = uuid
        self.reason = reason
        self.path = path

    def as_tuple(self):
        """Return every field in declaration order, the form the twins are compared in."""
        return (self.kind, self.uuid, self.reason, self.path)

    def __eq__(self, other):
        """Compare field by field, so records of the two builds compare equal too."""
        if type(other).__name__ != "Reject" or not hasattr(other, "as_tuple"):
            return NotImplemented
        return self.as_tuple() == other.as_tuple()

    def __hash__(self):
        return hash(self.as_tuple())

    def __repr__(self):
        return "Reject(kind=%r, uuid=%r, reason=%r, path=%r)" % self.as_tuple()


cdef Reject _reject(object kind, object uuid, str reason, str path):
    """Build a Reject without the cost of a Python-level __init__ call."""
    cdef Reject result = Reject.__new__(Reject)
    result.kind = kind
    result.uuid = uuid
    result.reason = reason
    result.path = path
    return result


cdef inline bint _has(uint64_t present, int key) noexcept:
    return (present >> key) & 1


cdef inline str _text(const char *data, size_t length):
    return PyUnicode_DecodeUTF8(data, <Py_ssize_t>length, NULL)


cdef inline str _ascii_text(const char *data, size_t length):
    """Build a str from bytes known to be ASCII, skipping the UTF-8 decoder."""
    text = PyUnicode_New(<Py_ssize_t>length, 127)
    memcpy(PyUnicode_DATA(text), data, length)
    return text


cdef inline str _string_of(Element value):
    return _text(string_data(value), string_length(value))


cdef inline bint _bytes_equal(const char *data, size_t length, const char *literal,
                              size_t literal_length) noexcept:
    return length == literal_length and memcmp(data, literal, length) == 0


cdef bint _string_is(Element value, const char *literal, size_t literal_length) noexcept:
    return type_code(value) == b'"' and _bytes_equal(
        string_data(value), string_length(value), literal, literal_length)


cdef bint _same_text(object text, const char *data, size_t length):
    """Compare a topic level with a payload string without building a str when ASCII."""
    if type(text) is str and PyUnicode_IS_COMPACT_ASCII(text):
        return _bytes_equal(
            data, length, <const char *>PyUnicode_DATA(text), <size_t>PyUnicode_GET_LENGTH(text))
    return text == _text(data, length)


cdef Py_ssize_t _count_byte(const char *data, Py_ssize_t length, char byte,
                            Py_ssize_t limit) noexcept:
    """Count ``byte`` in ``data``, giving up as soon as the count passes ``limit``."""
    cdef Py_ssize_t count = 0
    cdef const char *cursor = data
    cdef const char *end = data + length
    while count <= limit:
        cursor = <const char *>memchr(cursor, byte, end - cursor)
        if cursor == NULL:
            break
        count += 1
        cursor += 1
    return count


cdef bint _too_deep(const char *data, Py_ssize_t length) noexcept:
    """Tell whether brackets outside strings nest deeper than ``MAX_DEPTH``.

    Decided on the raw bytes before parsing, so the verdict does not depend on
    how far a parser gets; payloads with few brackets skip the scan entirely.
    """
    cdef Py_ssize_t depth = _count_byte(data, length, b'{', _MAX_DEPTH)
    if depth + _count_byte(data, length, b'[', _MAX_DEPTH - depth) <= _MAX_DEPTH:
        return False
    depth = 0
    cdef Py_ssize_t index = 0
    cdef bint in_string = False
    cdef char byte
    while index < length:
        byte = data[index]
        if in_string:
            if byte == b'\\':
                index += 1
            elif byte == b'"':
                in_string = False
        elif byte == b'"':
            in_string = True
        elif byte == b'{' or byte == b'[':
            depth += 1
            if depth > _MAX_DEPTH:
                return True
        elif byte == b'}' or byte == b']':
            depth -= 1
        index += 1
    return False


cdef inline bint _has_bom(const char *data, Py_ssize_t length) noexcept:
    """Spot a UTF-8 byte order mark: simdjson skips it, but strict JSON parsers refuse it."""
    return length >= 3 and memcmp(data, b"\xef\xbb\xbf", 3) == 0


cdef bint _version_ok(const char *data, size_t length) noexcept:
    """Accept protocol major 2 (``"2.2.0"``, ``"2.1.0"``, ``"2"``): devices mix 2.1 and 2.2."""
    cdef size_t major_length = 0
    cdef int major = 0
    while major_length < length and data[major_length] != b'.':
        if not b'0' <= data[major_length] <= b'9' or major_length == 3:
            return False
        major = major * 10 + (data[major_length] - _ASCII_ZERO)
        major_length += 1
    return major_length > 0 and major == 2


cdef bint _safe_uuid(const char *data, size_t length) noexcept:
    """Accept uuids that are safe to echo into topics and SQL rows."""
    if length == 0 or length > _MAX_UUID_LENGTH:
        return False
    if _bytes_equal(data, length, b".", 1) or _bytes_equal(data, length, b"..", 2):
        return False
    cdef size_t index
    for index in range(length):
        if memchr(_UUID_CHARS, data[index], _UUID_CHAR_COUNT) == NULL:
            return False
    return True


cdef inline bint _digits(const char *data, size_t start, size_t count) noexcept:
    cdef size_t index
    for index in range(start, start + count):
        if not b'0' <= data[index] <= b'9':
            return False
    return True


cdef inline int _two_digits(const char *data, size_t start) noexcept:
    return (data[start] - _ASCII_ZERO) * 10 + (data[start + 1] - _ASCII_ZERO)


cdef bint _timestamp_ok(const char *data, size_t length) noexcept:
    """Accept ``YYYY-MM-DDTHH:MM:SS[.f{1,9}][Z|±HH:MM]`` with calendar-plausible fields."""
    if length < 19 or not (
        _digits(data, 0, 4) and data[4] == b'-' and _digits(data, 5, 2) and data[7] == b'-'
        and _digits(data, 8, 2) and data[10] == b'T' and _digits(data, 11, 2)
        and data[13] == b':' and _digits(data, 14, 2) and data[16] == b':'
        and _digits(data, 17, 2)
    ):
        return False
    if not (1 <= _two_digits(data, 5) <= 12 and 1 <= _two_digits(data, 8) <= 31
            and _two_digits(data, 11) <= 23 and _two_digits(data, 14) <= 59
            and _two_digits(data, 17) <= 60):
        return False
    cdef size_t index = 19
    cdef size_t fraction_digits = 0
    if index < length and data[index] == b'.':
        index += 1
        while index < length and b'0' <= data[index] <= b'9':
            fraction_digits += 1
            index += 1
        if fraction_digits == 0 or fraction_digits > 9:
            return False
    if index < length and data[index] == b'Z':
        index += 1
    elif index < length and (data[index] == b'+' or data[index] == b'-'):
        if length - index != 6 or not (
            _digits(data, index + 1, 2) and data[index + 3] == b':' and _digits(data, index + 4, 2)
            and _two_digits(data, index + 1) <= 23 and _two_digits(data, index + 4) <= 59
        ):
            return False
        index += 6
    return index == length


cdef inline int _channel_of(Element value) noexcept:
    """Return the relay channel a JSON integer names, or 0 when it is not 1-16."""
    cdef int64_t channel
    if type_code(value) != b'l':
        return 0
    channel = as_int64(value)
    return <int>channel if _FIRST_CHANNEL <= channel <= _LAST_CHANNEL else 0


cdef int _channel_key(const char *data, size_t length) noexcept:
    """Return the channel a ``channels`` key names ("1".."16"), or 0."""
    if length == 1 and b'1' <= data[0] <= b'9':
        return data[0] - _ASCII_ZERO
    if length == 2 and data[0] == b'1' and b'0' <= data[1] <= b'6':
        return 10 + data[1] - _ASCII_ZERO
    return 0


cdef str _float_text(double value):
    """Render a double exactly as Python's ``repr(float)`` does."""
    cdef char buffer[FLOAT_TEXT_BYTES]
    cdef int length = float_repr(value, buffer)
    if length:
        return _ascii_text(buffer, length)
    cdef char *text = PyOS_double_to_string(value, b'r', 0, Py_DTSF_ADD_DOT_0, NULL)
    try:
        return text.decode("ascii")
    finally:
        PyMem_Free(text)


cdef str _int_text(int64_t value):
    """Render ``str(float(value))`` for a JSON integer, skipping the double when exact."""
    cdef char buffer[FLOAT_TEXT_BYTES]
    cdef int length = int_repr(value, buffer)
    if length:
        return _ascii_text(buffer, length)
    return _float_text(<double>value)


cdef object _number_text(Element value):
    """Render a JSON number (booleans included) as ``str(float(v))``; None for non-numbers."""
    cdef char code = type_code(value)
    if code == b'd':
        return _float_text(as_double(value))
    if code == b'l':
        return _int_text(as_int64(value))
    if code == b'u':
        return _float_text(<double>as_uint64(value))
    if code == b't':
        return _ONE_TEXT if as_bool(value) else _ZERO_TEXT
    return None


cdef Py_ssize_t _plain_characters(const char *data, size_t length) noexcept:
    """Code points of UTF-8 text (as ``len(str)`` counts them), or -1 if it holds an ASCII control."""
    cdef size_t index
    cdef Py_ssize_t characters = 0
    cdef unsigned char byte
    for index in range(length):
        byte = <unsigned char>data[index]
        if byte < 0x20 or byte == 0x7F:
            return -1
        if (byte & 0xC0) != 0x80:
            characters += 1
    return characters


cdef bint _sensor_name_ok(const char *data, size_t length) noexcept:
    """Accept names of 1-64 characters (code points, as ``len(str)`` counts) without ASCII controls.

    A NUL or a line break in a ``data_key`` would reach the Config App and its
    logs; a real sensor is never named that way.
    """
    return 0 < _plain_characters(data, length) <= _MAX_SENSOR_NAME_LENGTH


cdef bint _unit_ok(const char *data, size_t length) noexcept:
    """Accept units of at most 20 characters without ASCII controls (PostgreSQL refuses NUL)."""
    return 0 <= _plain_characters(data, length) <= _MAX_UNIT_LENGTH


cdef str _sensor_key(str prefix, const char *data, size_t length):
    """Return ``prefix + name.lower()`` (``prefix`` is ASCII), lower-casing ASCII names in C."""
    cdef char buffer[_SENSOR_KEY_BUFFER_BYTES]
    cdef size_t prefix_length = PyUnicode_GET_LENGTH(prefix)
    cdef size_t index
    cdef char byte
    if prefix_length + length > _SENSOR_KEY_BUFFER_BYTES:
        return prefix + _text(data, length).lower()
    memcpy(buffer, PyUnicode_DATA(prefix), prefix_length)
    for index in range(length):
        byte = data[index]
        if <unsigned char>byte >= 0x80:
            return prefix + _text(data, length).lower()
        buffer[prefix_length + index] = byte + 32 if b'A' <= byte <= b'Z' else byte
    return _ascii_text(buffer, prefix_length + length)


cdef object _to_python(Element value):
    """Build the Python value json.loads gives for one DOM element."""
    cdef char code = type_code(value)
    if code == b'"':
        return _string_of(value)
    if code == b'l':
        return as_int64(value)
    if code == b'd':
        return as_double(value)
    if code == b't':
        return as_bool(value)
    if code == b'n':
        return None
    if code == b'u':
        return as_uint64(value)
    if code == b'{':
        return _dict_of(as_object(value))
    return _list_of(as_array(value))


cdef dict _dict_of(DomObject fields):
    """Build a dict with json.loads' duplicate-key rule: first position, last value."""
    cdef dict result = {}
    cdef DomObject.iterator it = fields.begin()
    cdef DomObject.iterator end = fields.end()
    while it != end:
        result[_text(it.key_c_str(), it.key_length())] = _to_python(it.value())
        inc(it)
    return result


cdef list _list_of(DomArray items):
    cdef list result = []
    cdef DomArray.iterator it = items.begin()
    cdef DomArray.iterator end = items.end()
    while it != end:
        result.append(_to_python(deref(it)))
        inc(it)
    return result


cdef tuple _relay_row(int channel, bint state):
    return ("relay", _RELAY_SENSORS[channel - 1], "1" if state else "0", None)


cdef Py_ssize_t _fixed_rows(uint64_t present, Element *values, int count, str data_type,
                            tuple names, list rows) except -1:
    """Turn the known keys of ``system_status``/``gps`` into rows, in fixed order."""
    cdef Py_ssize_t skipped = 0
    cdef int index
    for index in range(count):
        if not _has(present, index):
            continue
        text = _number_text(values[index])
        if text is None:
            skipped += 1
        else:
            sensor, unit = <tuple>names[index]
            rows.append((data_type, sensor, text, unit))
    return skipped


cdef Py_ssize_t _event_rows(uint64_t present, Element *top, list rows) except -1:
    """Turn a relay event into one relay row; return 1 when the event is malformed."""
    if not _has(present, KEY_EVENT):
        return 0
    cdef Element event = top[KEY_EVENT]
    cdef bint shutoff = _string_is(event, b"safety_shutoff", 14)
    if not shutoff and not _string_is(event, b"relay_change", 12):
        return 0
    cdef int channel = _channel_of(top[KEY_CHANNEL]) if _has(present, KEY_CHANNEL) else 0
    if channel == 0:
        return 1
    if shutoff:
        rows.append(_relay_row(channel, False))
        return 0
    if not _has(present, KEY_STATE) or type_code(top[KEY_STATE]) != b't':
        return 1
    rows.append(_relay_row(channel, as_bool(top[KEY_STATE])))
    return 0


cdef tuple _field_problem(uint64_t present, Element *top, int key, char code, str field):
    """Return (reason, path) when a required field is absent or of the wrong JSON type."""
    if not _has(present, key):
        return ("missing_field:" + field, "$." + field)
    if type_code(top[key]) != code:
        return ("bad_type:" + field, "$." + field)
    return None


cdef tuple _announce_problem(uint64_t present, Element *top):
    problem = (
        _field_problem(present, top, KEY_DEVICE_TYPE, b'"', "device_type")
        or _field_problem(present, top, KEY_FIRMWARE_VERSION, b'"', "firmware_version")
        or _field_problem(present, top, KEY_CAPABILITIES, b'[', "capabilities")
    )
    if problem is not None:
        return problem
    cdef DomArray capabilities = as_array(top[KEY_CAPABILITIES])
    cdef DomArray.iterator it = capabilities.begin()
    cdef DomArray.iterator end = capabilities.end()
    cdef Py_ssize_t index = 0
    while it != end:
        if type_code(deref(it)) != b'"':
            return ("bad_type:capabilities", "$.capabilities[%d]" % index)
        index += 1
        inc(it)
    return None


cdef tuple _relay_command_problem(uint64_t present, Element *top):
    """Accept channel 1-16 or ``"all"`` (bool is not a channel), then on/off/toggle."""
    if not _has(present, KEY_CHANNEL):
        return ("missing_field:channel", "$.channel")
    cdef Element channel = top[KEY_CHANNEL]
    cdef char code = type_code(channel)
    if code != b'l' and code != b'u' and code != b'"':
        return ("bad_type:channel", "$.channel")
    if _channel_of(channel) == 0 and not _string_is(channel, b"all", 3):
        return ("bad_value:channel", "$.channel")
    problem = _field_problem(present, top, KEY_COMMAND, b'"', "command")
    if problem is not None:
        return problem
    cdef Element command = top[KEY_COMMAND]
    if not (_string_is(command, b"on", 2) or _string_is(command, b"off", 3)
            or _string_is(command, b"toggle", 6)):
        return ("bad_value:command", "$.command")
    return None


cdef tuple _kind_problem(int kind_code, uint64_t present, Element *top):
    """Apply the required-field rules of the kinds that have them."""
    if kind_code == KIND_ANNOUNCE:
        return _announce_problem(present, top)
    if kind_code == KIND_RESPONSE:
        return _field_problem(present, top, KEY_COMMAND_ID, b'"', "command_id")
    if kind_code == KIND_RELAY_COMMAND:
        return _relay_command_problem(present, top)
    if kind_code == KIND_STATUS:
        if _has(present, KEY_STATUS) and type_code(top[KEY_STATUS]) != b'"':
            return ("bad_type:status", "$.status")
        return None
    if kind_code == KIND_RELAY_TELEMETRY:
        return _field_problem(present, top, KEY_EVENT, b'"', "event")
    return None


@cython.final
cdef class Validator:
    """Validate payloads one by one with a reusable parser; one instance per thread."""

    cdef Parser _parser
    cdef Scratch _scratch
    cdef Py_ssize_t _limit
    cdef object _max_payload
    cdef object _last_version

    def __init__(self, max_payload=DEFAULT_MAX_PAYLOAD_BYTES):
        if type(max_payload) is not int or max_payload < 0:
            raise ConfigError("max_payload", max_payload, "an int >= 0 (bytes)")
        self._max_payload = max_payload
        self._limit = min(max_payload, PY_SSIZE_T_MAX)

    @property
    def max_payload(self):
        """Largest payload accepted, in bytes."""
        return self._max_payload

    def validate(self, topic, payload):
        """Check ``payload`` received on ``topic``; return a Message or a Reject, never raise.

        Bad input is data, not an error: the gateway counts rejects and
        publishes ERR_002 for them, so nothing a device sends may raise here.
        """
        cdef const char *data
        cdef Py_ssize_t length
        cdef Element root
        kind = topic.kind
        if topic.reason:
            return _reject(kind, topic.uuid, "bad_topic", "$")
        if type(payload) is not bytes:
            payload = bytes(payload)
        data = PyBytes_AS_STRING(payload)
        length = PyBytes_GET_SIZE(payload)
        if length > self._limit:
            return _reject(kind, topic.uuid, "payload_too_large", "$")
        if not utf8_ok(data, length):
            return _reject(kind, topic.uuid, "not_utf8", "$")
        if _too_deep(data, length):
            return _reject(kind, topic.uuid, "too_deep", "$")
        if _has_bom(data, length) or parse(self._parser, data, length, root) != 0:
            return _reject(kind, topic.uuid, "bad_json", "$")
        if type_code(root) != b'{':
            return _reject(kind, topic.uuid, "not_object", "$")
        return self._check(topic, kind, as_object(root))

    cdef object _check(self, object topic, object kind, DomObject payload):
        """Apply the envelope rules that look inside the parsed object."""
        cdef Element top[TOP_KEY_COUNT]
        cdef uint64_t present = collect_top(payload, top)
        # Telemetry is most of the traffic: an identity test spares it the dict lookup.
        cdef int kind_code = (
            KIND_TELEMETRY if kind is TELEMETRY else _KIND_CODES.get(kind, OTHER_KIND))
        version = None
        cdef bint version_ok = False
        if _has(present, KEY_PROTOCOL_VERSION) and type_code(top[KEY_PROTOCOL_VERSION]) == b'"':
            version = self._version_text(top[KEY_PROTOCOL_VERSION])
            version_ok = _version_ok(
                string_data(top[KEY_PROTOCOL_VERSION]), string_length(top[KEY_PROTOCOL_VERSION]))
        uuid = topic.uuid
        problem = _uuid_problem(kind_code, uuid, present, top)
        if problem is not None:
            return _reject(kind, uuid, problem[0], problem[1])
        if not uuid and _has(present, KEY_UUID):
            uuid = _string_of(top[KEY_UUID])
        timestamp = None
        if _has(present, KEY_TIMESTAMP):
            if not _string_is_timestamp(top[KEY_TIMESTAMP]):
                return _reject(kind, uuid, "bad_timestamp", "$.timestamp")
            # The timestamp rule admits ASCII only, so the UTF-8 decoder can be skipped.
            timestamp = _ascii_text(
                string_data(top[KEY_TIMESTAMP]), string_length(top[KEY_TIMESTAMP]))
        problem = _kind_problem(kind_code, present, top)
        if problem is not None:
            return _reject(kind, uuid, problem[0], problem[1])
        cdef Message message = Message.__new__(Message)
        message.kind = kind
        message.uuid = uuid
        message.sub = topic.sub
        message.timestamp = timestamp
        message.version = version
        message.version_ok = version_ok
        message.rows = []
        if kind_code == KIND_TELEMETRY or kind_code == KIND_RELAY_TELEMETRY:
            message.skipped = self._telemetry_rows(present, top, message.rows)
        elif kind_code == KIND_RELAY_STATE:
            message.skipped = self._relay_state_rows(present, top, message.rows)
        message.data = None if kind_code == KIND_TELEMETRY else _dict_of(payload)
        return message

    cdef str _version_text(self, Element value):
        """Return the version as str, reusing the last one: every device repeats "2.2.0"."""
        if self._last_version is None or not _same_text(
                self._last_version, string_data(value), string_length(value)):
            self._last_version = _string_of(value)
        return self._last_version

    cdef Py_ssize_t _telemetry_rows(self, uint64_t present, Element *top, list rows) except -1:
        """Collect telemetry rows section by section, in the fixed order."""
        cdef Element values[GPS_KEY_COUNT]
        cdef Py_ssize_t skipped = 0
        if _has(present, KEY_CAN_DATA) and type_code(top[KEY_CAN_DATA]) == b'{':
            skipped += self._can_rows(as_object(top[KEY_CAN_DATA]), rows)
        if _has(present, KEY_ANALOG_SENSORS) and type_code(top[KEY_ANALOG_SENSORS]) == b'{':
            skipped += self._analog_rows(as_object(top[KEY_ANALOG_SENSORS]), rows)
        if _has(present, KEY_SYSTEM_STATUS) and type_code(top[KEY_SYSTEM_STATUS]) == b'{':
            skipped += _fixed_rows(
                collect_system_status(as_object(top[KEY_SYSTEM_STATUS]), values), values,
                SYSTEM_STATUS_KEY_COUNT, "system_status", _SYSTEM_STATUS_ROWS, rows)
        if _has(present, KEY_GPS) and type_code(top[KEY_GPS]) == b'{':
            skipped += _fixed_rows(
                collect_gps(as_object(top[KEY_GPS]), values), values, GPS_KEY_COUNT, "gps",
                _GPS_ROWS, rows)
        return skipped + _event_rows(present, top, rows)

    cdef Py_ssize_t _can_rows(self, DomObject can_data, list rows) except -1:
        """Turn ``can_data.signals`` into ``can_bus`` rows; return the skipped count."""
        cdef Element signals[1]
        cdef Element values[SIGNAL_KEY_COUNT]
        cdef Field *field
        cdef uint64_t present
        cdef Py_ssize_t skipped = 0
        cdef size_t index
        if not collect_can_signals(can_data, signals) or type_code(signals[0]) != b'{':
            return 0
        unique_fields(as_object(signals[0]), self._scratch)
        for index in range(self._scratch.fields.size()):
            field = &self._scratch.fields[index]
            if type_code(field.value) != b'{' or not _sensor_name_ok(field.key, field.key_length):
                skipped += 1
                continue
            present = collect_signal(as_object(field.value), values)
            text = _number_text(values[SIGNAL_VALUE]) if _has(present, SIGNAL_VALUE) else None
            if text is None:
                skipped += 1
                continue
            unit = None
            if _has(present, SIGNAL_UNIT) and type_code(values[SIGNAL_UNIT]) == b'"':
                if not _unit_ok(string_data(values[SIGNAL_UNIT]), string_length(values[SIGNAL_UNIT])):
                    skipped += 1
                    continue
                unit = _string_of(values[SIGNAL_UNIT])
            key = _sensor_key("can_", field.key, field.key_length)
            if PyUnicode_GET_LENGTH(key) > _MAX_DATA_KEY_LENGTH:
                skipped += 1
                continue
            rows.append(("can_bus", key, text, unit))
        return skipped

    cdef Py_ssize_t _analog_rows(self, DomObject sensors, list rows) except -1:
        """Turn ``analog_sensors`` into ``analog_sensor`` rows; return the skipped count."""
        cdef Py_ssize_t skipped = 0
        cdef size_t index
        cdef Field *field
        unique_fields(sensors, self._scratch)
        for index in range(self._scratch.fields.size()):
            field = &self._scratch.fields[index]
            text = _number_text(field.value)
            if text is None or not _sensor_name_ok(field.key, field.key_length):
                skipped += 1
                continue
            key = _sensor_key("analog_", field.key, field.key_length)
            if PyUnicode_GET_LENGTH(key) > _MAX_DATA_KEY_LENGTH:
                skipped += 1
                continue
            rows.append(("analog_sensor", key, text, None))
        return skipped

    cdef Py_ssize_t _relay_state_rows(self, uint64_t present, Element *top, list rows) except -1:
        """Turn ``channels`` (and the legacy ``relays`` list) into relay rows."""
        cdef Py_ssize_t skipped = 0
        cdef size_t index
        cdef int channel
        cdef Element values[RELAY_KEY_COUNT]
        cdef uint64_t item_present
        cdef Field *field
        cdef DomArray relays
        cdef DomArray.iterator it
        cdef DomArray.iterator end
        if _has(present, KEY_CHANNELS) and type_code(top[KEY_CHANNELS]) == b'{':
            unique_fields(as_object(top[KEY_CHANNELS]), self._scratch)
            for index in range(self._scratch.fields.size()):
                field = &self._scratch.fields[index]
                channel = _channel_key(field.key, field.key_length)
                if channel == 0 or type_code(field.value) != b't':
                    skipped += 1
                else:
                    rows.append(_relay_row(channel, as_bool(field.value)))
        if _has(present, KEY_RELAYS) and type_code(top[KEY_RELAYS]) == b'[':
            relays = as_array(top[KEY_RELAYS])
            it = relays.begin()
            end = relays.end()
            while it != end:
                item_present = 0
                if type_code(deref(it)) == b'{':
                    item_present = collect_relay(as_object(deref(it)), values)
                channel = 0
                if _has(item_present, RELAY_ITEM_ID):
                    channel = _channel_of(values[RELAY_ITEM_ID])
                if (channel == 0 or not _has(item_present, RELAY_ITEM_STATE)
                        or type_code(values[RELAY_ITEM_STATE]) != b't'):
                    skipped += 1
                else:
                    rows.append(_relay_row(channel, as_bool(values[RELAY_ITEM_STATE])))
                inc(it)
        return skipped


cdef bint _string_is_timestamp(Element value) noexcept:
    return type_code(value) == b'"' and _timestamp_ok(string_data(value), string_length(value))


cdef tuple _uuid_problem(int kind_code, object topic_uuid, uint64_t present, Element *top):
    """Apply the uuid rule; return (reason, path) when the payload uuid is refused."""
    if not _has(present, KEY_UUID):
        if kind_code == KIND_RELAY_TELEMETRY:
            return ("missing_field:uuid", "$.uuid")
        return None
    cdef Element uuid = top[KEY_UUID]
    if type_code(uuid) != b'"':
        return ("bad_type:uuid", "$.uuid")
    if (KIND_ANNOUNCE <= kind_code <= KIND_RELAY_STATE
            and not _same_text(topic_uuid, string_data(uuid), string_length(uuid))):
        return ("uuid_mismatch", "$.uuid")
    if kind_code == KIND_RELAY_TELEMETRY and not _safe_uuid(string_data(uuid), string_length(uuid)):
        return ("bad_value:uuid", "$.uuid")
    return None


__all__ = ["DEFAULT_MAX_PAYLOAD_BYTES", "MAX_DATA_KEY_LENGTH", "MAX_DEPTH", "MAX_UNIT_LENGTH", "Message", "Reject", "Validator"]
