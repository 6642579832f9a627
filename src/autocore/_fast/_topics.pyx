# cython: language_level=3, boundscheck=False, wraparound=False
"""Classify an AutoCore topic into a small record (compiled twin of ``_topics_py.py``).

``_topics_py.py`` is the specification of the topic parser: this module must
give the same record, field for field, for every input string. It reads the
topic once, character by character, notes where the first levels start and
end, and compares those spans in place with ASCII constants: no list of levels
is built, and the only substrings made are the ``uuid`` and ``sub`` it returns.
"""

cimport cython
from cpython.unicode cimport (
    PyUnicode_1BYTE_KIND, PyUnicode_DATA, PyUnicode_GET_LENGTH, PyUnicode_KIND, PyUnicode_READ,
)
from libc.string cimport memcmp, strlen

from ._names import (
    ANNOUNCE, COMMAND, DEVICE_COMMAND, DISCOVERY, ERROR, GATEWAY_COMMAND, INVALID,
    MACRO_STATUS, MODE, RELAY_COMMAND, RELAY_HEARTBEAT, RELAY_SET, RELAY_STATE,
    RELAY_TELEMETRY, RESPONSE, STATUS, SYSTEM, TELEMETRY,
)

cdef extern from *:
    """
    #if PY_VERSION_HEX < 0x030C0000
    #define autocore_unicode_ready(op) PyUnicode_READY(op)
    #else
    #define autocore_unicode_ready(op) 0
    #endif
    """
    # Strings made by the legacy (pre-PEP 393) C API must be readied before
    # PyUnicode_KIND/DATA; since 3.12 every string is.
    int _unicode_ready "autocore_unicode_ready"(object) except -1

cdef enum:
    _MAX_TOPIC_LENGTH = 256
    _MAX_LEVEL_LENGTH = 64
    # Deepest shape classified: autocore/devices/{uuid}/{group}/{leaf}.
    _TRACKED_LEVELS = 5
    _ASCII_CODES = 128
    _LATIN1_CODES = 256
    # Character classes of the scan besides the Problem codes it can return.
    _PLAIN = 0
    _SLASH = -1

#: Longest topic accepted; ours are under 120 characters.
MAX_TOPIC_LENGTH = _MAX_TOPIC_LENGTH
#: Longest device uuid or free level (the firmware allows 8-64 characters).
MAX_LEVEL_LENGTH = _MAX_LEVEL_LENGTH

ROOT = "autocore"
_LEVEL_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-"

# Reject reasons, in the order parse_topic checks them; the values index _REASONS.
cdef enum Problem:
    NO_PROBLEM
    TOPIC_TOO_LONG
    WILDCARD
    BAD_CHAR
    EMPTY_LEVEL
    NOT_OURS
    UNKNOWN_KIND
    BAD_UUID
    UUID_TOO_LONG
    BAD_LEVEL
    LEVEL_TOO_LONG

cdef tuple _REASONS = (
    "", "topic_too_long", "wildcard", "bad_char", "empty_level", "not_ours",
    "unknown_kind", "bad_uuid", "uuid_too_long", "bad_level", "level_too_long",
)

# Where one pass over the topic found its levels.
cdef struct Scan:
    int kind  # PEP 393 storage: 1, 2 or 4 bytes per character
    void* data
    Py_ssize_t levels  # number of '/'-separated levels, tracked or not
    Py_ssize_t start[_TRACKED_LEVELS]
    Py_ssize_t end[_TRACKED_LEVELS]

# 1 for the ASCII codes allowed in a uuid or free level.
cdef unsigned char _LEVEL_CHAR_OK[_ASCII_CODES]
# What a code point below 256 means to the scan: _PLAIN, _SLASH, WILDCARD or BAD_CHAR.
cdef signed char _CHAR_CLASS[_LATIN1_CODES]

# The kind constants as C-level references, so the hot path skips module lookups.
cdef str _ANNOUNCE = ANNOUNCE
cdef str _STATUS = STATUS
cdef str _TELEMETRY = TELEMETRY
cdef str _RESPONSE = RESPONSE
cdef str _COMMAND = COMMAND
cdef str _DEVICE_COMMAND = DEVICE_COMMAND
cdef str _RELAY_STATE = RELAY_STATE
cdef str _RELAY_COMMAND = RELAY_COMMAND
cdef str _RELAY_SET = RELAY_SET
cdef str _RELAY_HEARTBEAT = RELAY_HEARTBEAT
cdef str _MACRO_STATUS = MACRO_STATUS
cdef str _DISCOVERY = DISCOVERY
cdef str _GATEWAY_COMMAND = GATEWAY_COMMAND
cdef str _SYSTEM = SYSTEM
cdef str _MODE = MODE
cdef str _ERROR = ERROR
cdef str _RELAY_TELEMETRY = RELAY_TELEMETRY
cdef str _INVALID = INVALID


@cython.freelist(32)
cdef class Topic:
    """What a topic says: message ``kind``, device ``uuid``, extra level ``sub``.

    A rejected topic has ``kind == "invalid"``, empty ``uuid``/``sub`` and a
    reason code in ``reason``; an accepted one has ``reason == ""``. Records are
    read-only because they are hashable and may be shared between callers.
    """

    def __init__(self, kind, uuid="", sub="", reason=""):
        self.kind = kind
        self.uuid = uuid
        self.sub = sub
        self.reason = reason

    @property
    def ok(self):
        return not self.reason

    def as_tuple(self):
        return (self.kind, self.uuid, self.sub, self.reason)

    def __eq__(self, other):
        if not hasattr(other, "as_tuple") or not hasattr(other, "reason"):
            return NotImplemented
        return self.as_tuple() == other.as_tuple()

    def __ne__(self, other):
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    def __hash__(self):
        return hash(self.as_tuple())

    def __reduce__(self):
        return (type(self), self.as_tuple())

    def __repr__(self):
        return "Topic(kind=%r, uuid=%r, sub=%r, reason=%r)" % self.as_tuple()


cdef inline Topic _record(str kind, str uuid, str sub, str reason):
    # Skips __init__: every field is set right here.
    cdef Topic topic = Topic.__new__(Topic)
    topic.kind = kind
    topic.uuid = uuid
    topic.sub = sub
    topic.reason = reason
    return topic


cdef inline Topic _rejected(int problem):
    return _record(_INVALID, "", "", <str>_REASONS[problem])


cdef void _fill_char_tables() noexcept:
    cdef Py_UCS4 ch
    for ch in _LEVEL_CHARS:
        _LEVEL_CHAR_OK[ch] = 1
    for ch in range(0x20):
        _CHAR_CLASS[ch] = BAD_CHAR
    _CHAR_CLASS[0x7f] = BAD_CHAR  # DEL
    _CHAR_CLASS[ord("+")] = WILDCARD
    _CHAR_CLASS[ord("#")] = WILDCARD
    _CHAR_CLASS[ord("/")] = _SLASH


_fill_char_tables()


cdef inline int _char_class(int kind, const void* data, Py_ssize_t index) noexcept:
    # ASCII and Latin-1 topics (nearly all) take the first branch, one load per character.
    cdef Py_UCS4 ch
    if kind == PyUnicode_1BYTE_KIND:
        return _CHAR_CLASS[(<const unsigned char*>data)[index]]
    ch = PyUnicode_READ(kind, data, index)
    return _CHAR_CLASS[ch] if ch < _LATIN1_CODES else _PLAIN


cdef int _scan(str topic, Scan* scan) noexcept:
    """Check every character once; fill ``scan`` and return the first problem found.

    A wildcard or control character wins over an empty level, whatever their
    positions, exactly as in the pure twin (which checks characters first).
    """
    cdef Py_ssize_t length = PyUnicode_GET_LENGTH(topic)
    cdef int kind = PyUnicode_KIND(topic)
    cdef void* data = PyUnicode_DATA(topic)
    cdef Py_ssize_t i
    cdef Py_ssize_t level = 0
    cdef Py_ssize_t level_start = 0
    cdef bint empty = False
    cdef int char_class
    for i in range(length):
        char_class = _char_class(kind, data, i)
        if char_class == _PLAIN:
            continue
        if char_class != _SLASH:
            return char_class  # WILDCARD or BAD_CHAR
        empty = empty or i == level_start
        if level < _TRACKED_LEVELS:
            scan.start[level] = level_start
            scan.end[level] = i
        level += 1
        level_start = i + 1
    empty = empty or length == level_start  # trailing '/', or the empty topic
    if level < _TRACKED_LEVELS:
        scan.start[level] = level_start
        scan.end[level] = length
    scan.levels = level + 1
    scan.kind = kind
    scan.data = data
    return EMPTY_LEVEL if empty else NO_PROBLEM


cdef inline bint _level_is(const Scan* scan, Py_ssize_t level, const char* word) noexcept:
    """Tell whether tracked ``level`` equals the NUL-terminated ASCII ``word``."""
    # Inlined with a constant word, so the compiler folds strlen and memcmp.
    cdef Py_ssize_t start = scan.start[level]
    cdef Py_ssize_t length = <Py_ssize_t>strlen(word)
    cdef Py_ssize_t i
    if scan.end[level] - start != length:
        return False
    if scan.kind == PyUnicode_1BYTE_KIND:
        return memcmp(<const char*>scan.data + start, word, length) == 0
    for i in range(length):
        if PyUnicode_READ(scan.kind, scan.data, start + i) != <Py_UCS4>word[i]:
            return False
    return True


cdef int _level_problem(const Scan* scan, Py_ssize_t level, int problem) noexcept:
    """Return ``problem`` when a uuid/free level is unsafe, else NO_PROBLEM."""
    cdef Py_ssize_t start = scan.start[level]
    cdef Py_ssize_t end = scan.end[level]
    cdef Py_ssize_t i
    cdef Py_UCS4 ch
    if end - start > _MAX_LEVEL_LENGTH:
        return UUID_TOO_LONG if problem == BAD_UUID else LEVEL_TOO_LONG
    if _level_is(scan, level, b".") or _level_is(scan, level, b".."):
        return problem
    for i in range(start, end):
        ch = PyUnicode_READ(scan.kind, scan.data, i)
        if ch >= _ASCII_CODES or not _LEVEL_CHAR_OK[ch]:
            return problem
    return NO_PROBLEM


cdef inline str _level_text(str topic, const Scan* scan, Py_ssize_t level):
    return topic[scan.start[level]:scan.end[level]]


cdef str _device_leaf(const Scan* scan):
    # autocore/devices/{uuid}/{leaf}
    if _level_is(scan, 3, b"announce"):
        return _ANNOUNCE
    if _level_is(scan, 3, b"status"):
        return _STATUS
    if _level_is(scan, 3, b"telemetry"):
        return _TELEMETRY
    if _level_is(scan, 3, b"response"):
        return _RESPONSE
    if _level_is(scan, 3, b"command"):
        return _COMMAND
    return None


cdef str _relay_leaf(const Scan* scan):
    # autocore/devices/{uuid}/relays/{leaf}
    if _level_is(scan, 4, b"state"):
        return _RELAY_STATE
    if _level_is(scan, 4, b"command"):
        return _RELAY_COMMAND
    if _level_is(scan, 4, b"set"):
        return _RELAY_SET
    if _level_is(scan, 4, b"heartbeat"):
        return _RELAY_HEARTBEAT
    return None


cdef Topic _device_topic(str topic, const Scan* scan):
    # autocore/devices/{uuid}/{leaf} and autocore/devices/{uuid}/{group}/{leaf}
    cdef str kind = None
    cdef str sub
    cdef bint has_sub = False
    cdef int problem
    if scan.levels == 4:
        kind = _device_leaf(scan)
    elif scan.levels == 5:
        if _level_is(scan, 3, b"relays"):
            kind = _relay_leaf(scan)
        elif _level_is(scan, 3, b"macros") and _level_is(scan, 4, b"status"):
            kind = _MACRO_STATUS
        elif _level_is(scan, 3, b"commands"):
            kind = _DEVICE_COMMAND
            has_sub = True
    if kind is None:
        return _rejected(UNKNOWN_KIND)
    problem = _level_problem(scan, 2, BAD_UUID)
    if problem == NO_PROBLEM and has_sub:
        problem = _level_problem(scan, 4, BAD_LEVEL)
    if problem != NO_PROBLEM:
        return _rejected(problem)
    sub = _level_text(topic, scan, 4) if has_sub else ""
    return _record(kind, _level_text(topic, scan, 2), sub, "")


cdef Topic _error_topic(str topic, const Scan* scan):
    # autocore/errors/{uuid}/{error_type}
    cdef int problem
    if scan.levels != 4:
        return _rejected(UNKNOWN_KIND)
    problem = _level_problem(scan, 2, BAD_UUID)
    if problem == NO_PROBLEM:
        problem = _level_problem(scan, 3, BAD_LEVEL)
    if problem != NO_PROBLEM:
        return _rejected(problem)
    return _record(_ERROR, _level_text(topic, scan, 2), _level_text(topic, scan, 3), "")


cdef Topic _free_level_topic(str topic, const Scan* scan, str kind, str uuid, Py_ssize_t level):
    # The last level is free text: {sub} of gateway commands, commands/all, discovery, ...
    cdef int problem = _level_problem(scan, level, BAD_LEVEL)
    if problem != NO_PROBLEM:
        return _rejected(problem)
    return _record(kind, uuid, _level_text(topic, scan, level), "")


cdef str _single_level_kind(const Scan* scan):
    # autocore/{area}/{sub}
    if _level_is(scan, 1, b"discovery"):
        return _DISCOVERY
    if _level_is(scan, 1, b"system"):
        return _SYSTEM
    if _level_is(scan, 1, b"modes"):
        return _MODE
    return None


cdef Topic _classify(str topic, const Scan* scan):
    """Map a topic with clean characters and levels to its record."""
    cdef str kind
    if not _level_is(scan, 0, b"autocore"):
        return _rejected(NOT_OURS)
    if scan.levels < 3:
        return _rejected(UNKNOWN_KIND)
    if _level_is(scan, 1, b"devices"):
        return _device_topic(topic, scan)
    if _level_is(scan, 1, b"errors"):
        return _error_topic(topic, scan)
    if _level_is(scan, 1, b"telemetry"):
        if scan.levels == 4 and _level_is(scan, 2, b"relays") and _level_is(scan, 3, b"data"):
            return _record(_RELAY_TELEMETRY, "", "", "")
        return _rejected(UNKNOWN_KIND)
    if _level_is(scan, 1, b"commands"):
        if scan.levels == 4 and _level_is(scan, 2, b"all"):
            return _free_level_topic(topic, scan, _DEVICE_COMMAND, "all", 3)
        return _rejected(UNKNOWN_KIND)
    if _level_is(scan, 1, b"gateway"):
        if scan.levels == 4 and _level_is(scan, 2, b"commands"):
            return _free_level_topic(topic, scan, _GATEWAY_COMMAND, "", 3)
        return _rejected(UNKNOWN_KIND)
    kind = _single_level_kind(scan)
    if kind is None or scan.levels != 3:
        return _rejected(UNKNOWN_KIND)
    return _free_level_topic(topic, scan, kind, "", 2)


cdef Topic _parse(str topic):
    cdef Scan scan
    cdef int problem
    _unicode_ready(topic)
    if PyUnicode_GET_LENGTH(topic) > _MAX_TOPIC_LENGTH:
        return _rejected(TOPIC_TOO_LONG)
    problem = _scan(topic, &scan)
    if problem != NO_PROBLEM:
        return _rejected(problem)
    return _classify(topic, &scan)


def parse_topic(topic):
    """Classify ``topic``; never raises for a ``str``, returns a reject record instead.

    Wildcards, control characters and empty levels are refused because devices
    never publish to such topics; uuids and free levels must be 1-64 characters
    of ``[A-Za-z0-9_.:-]`` so they are safe to echo into topics and SQL rows.
    A ``str`` subclass is parsed by its string value (its overrides are
    ignored); anything else raises TypeError.
    """
    if not isinstance(topic, str):
        raise TypeError(f"topic must be str, not {type(topic).__name__}")
    return _parse(<str>topic)
