# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Historian-style compression of telemetry readings (compiled twin of ``_compress_py.py``).

A ``Compressor`` decides, reading by reading, which rows of a signal are worth
storing. Each signal is one key, ``(source, name)``: a device uuid and a data
key. The state of a key is a few doubles, the number of keys is capped, and
only the event-loop thread uses a compressor (neither twin takes a lock).

Two modes, as process historians offer them:

``deadband``
    Store a reading when it differs from the last stored one by more than the
    key's deviation. Holding the last stored value reproduces every dropped
    reading within the deviation.

``swinging_door``
    Store the readings that a straight line cannot skip. The latest reading of
    a key is *held* (not stored yet). When the next reading arrives, the held
    one is dropped if the line from the last stored point to the new reading
    passes within the deviation of it and of every reading dropped since that
    stored point; otherwise the door closes and the held reading is released
    to be stored, becoming the new starting point. Linear interpolation between
    stored points therefore reproduces every dropped reading within the
    deviation (in the signal's unit), which is the swinging-door guarantee.
    A released reading belongs to an earlier call: ``offer`` says so with the
    ``HELD`` flag and ``take_held`` hands it over with its own time.

In both modes:

* the first reading of a key is stored, and so is every reading that is not a
  finite number (text, None, NaN, infinities; the next number is stored too);
* a change between 0 and 1 (relay states, booleans) is stored at once, with
  the held reading before it;
* a reading whose time is not later than the key's previous reading (a clock
  step, two readings with one receive time) is stored, with the held reading;
* heartbeat: a reading that comes ``heartbeat_s`` or more after the key's last
  stored point is stored, so a signal that never changes still gets a row at
  least that often (the Config App shows the latest rows of a device);
* ``expire(now)`` releases the held reading of every key silent for
  ``heartbeat_s`` and forgets that key; ``flush()`` releases all of them at
  shutdown. Held readings live only in memory: a power cut loses them;
* once ``max_keys`` keys are tracked, readings of new keys are all stored
  (counted as ``untracked``) until ``expire`` forgets silent keys.

Times are seconds as ``int`` or ``float`` (epoch or monotonic, one clock per
compressor). Values count as numbers when they are ``int`` or ``float``
(``bool`` included); anything else is stored as it is.

This twin keeps each key's state in one C array of structs and finds it with
two dict look-ups (source, then name), so ``offer`` allocates nothing on its
common paths. It does the same floating-point operations in the same order as
the pure twin, so both make the same decisions bit for bit. Everything that may
run Python code (number conversion, hashing, allocation) comes before a key's
state is changed, and items a call lets go of are released when it returns.
"""

cimport cython
from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.number cimport PyNumber_Float
from cpython.ref cimport PyObject
from libc.math cimport INFINITY, NAN, fabs, isfinite
from libc.stdlib cimport free, realloc

import operator

from autocore.errors import ConfigError

cdef extern from "Python.h":
    # NULL without an exception when the key is absent.
    PyObject* PyDict_GetItemWithError(object d, object key) except? NULL
    Py_ssize_t PyLong_AsSsize_t(object o) except? -1

DEADBAND = "deadband"
SWINGING_DOOR = "swinging_door"
MODES = (DEADBAND, SWINGING_DOOR)

#: ``offer`` result flags: store nothing, store this reading, store the held one first.
DROP = 0
KEEP = 1
HELD = 2

#: Longest a key goes without a stored row while it keeps reporting, s.
HEARTBEAT_S = 60.0
#: Keys tracked at most; readings of further keys are all stored.
MAX_KEYS = 4096
#: Largest ``max_keys`` accepted.
MAX_KEYS_LIMIT = 10_000_000

cdef enum:
    _DROP = 0
    _KEEP = 1
    _HELD = 2
    # Key states.
    _RESTART = 0  # no usable starting point: the next number is stored
    _STORED = 1  # the key's last reading is its last stored point
    _HOLDING = 2  # the key's last reading is held, not stored yet
    # Slots allocated first; the arrays double from there up to max_keys.
    _FIRST_SLOTS = 16


cdef inline double _seconds(object t) except? -1.0:
    if type(t) is float:
        return PyFloat_AS_DOUBLE(t)
    if isinstance(t, (int, float)):
        return PyFloat_AS_DOUBLE(PyNumber_Float(t))
    raise TypeError(f"t must be a number of seconds (int or float), got {type(t).__name__}")


def _checked_number(key, value, positive):
    expected = "a finite number > 0" if positive else "a finite number >= 0"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(key, value, expected)
    try:
        number = float(value)
    except OverflowError:
        raise ConfigError(key, value, expected) from None
    if not isfinite(number) or number < 0.0 or (positive and number == 0.0):
        raise ConfigError(key, value, expected)
    return number


cdef inline void _anchor(Compressor self, KeyState* key, double t, double v) noexcept:
    # Store the current reading: it becomes the key's starting point.
    key.anchor_t = t
    key.last_t = t
    key.anchor_v = v
    key.last_v = v
    key.lo = -INFINITY
    key.hi = INFINITY
    key.state = _STORED
    self._kept += 1


cdef inline void _hold(Compressor self, KeyState* key, double t, double v) noexcept:
    # Keep the current reading back until the next one shows whether a line skips it.
    if key.state != _HOLDING:
        self._pending += 1
    key.last_t = t
    key.last_v = v
    key.state = _HOLDING


@cython.auto_pickle(False)  # like the pure twin, which has no pickle support for its keys
@cython.final
cdef class Compressor:
    """Per-key deadband or swinging-door filter deciding which telemetry readings to store.

    ``offer`` returns ``DROP``, ``KEEP`` (store this reading), ``HELD`` (store
    the held reading that ``take_held`` returns) or ``KEEP | HELD`` (both,
    the held one first). Each key's deviation is ``deviations[name]`` when
    given, else ``deviation``. Every dropped reading lies within its key's
    deviation of the stored ones: of the last stored value (deadband), or of
    the straight line between the two stored points around it (swinging door).
    """

    def __cinit__(self, *args, **kwargs):
        # A compressor that __init__ never filled in (Compressor.__new__) tracks
        # no key: max_keys 0 stores every reading and never touches the arrays.
        self._index = {}
        self._deviations = {}
        self._items = []
        self._keys = NULL
        self._free = NULL
        self._mode = SWINGING_DOOR
        self._sdt = True
        self._heartbeat = HEARTBEAT_S

    def __dealloc__(self):
        free(self._keys)
        free(self._free)

    def __init__(self, mode=SWINGING_DOOR, deviation=0.0, heartbeat_s=HEARTBEAT_S,
                 max_keys=MAX_KEYS, deviations=None):
        cdef Py_ssize_t limit
        if mode not in MODES:
            raise ConfigError("mode", mode, "one of " + ", ".join(MODES))
        default = _checked_number("deviation", deviation, False)
        heartbeat = _checked_number("heartbeat_s", heartbeat_s, True)
        if (not isinstance(max_keys, int) or isinstance(max_keys, bool)
                or not 1 <= max_keys <= MAX_KEYS_LIMIT):
            raise ConfigError("max_keys", max_keys, f"an integer 1-{MAX_KEYS_LIMIT}")
        per_name = {}
        for name, value in (deviations or {}).items():
            if not isinstance(name, str):
                raise ConfigError("deviations", name, "data key names (str)")
            per_name[name] = _checked_number(f"deviations[{name!r}]", value, False)
        limit = operator.index(max_keys)
        # Everything that may run Python code comes before the first field is set.
        old_index, old_items, old_held = self._index, self._items, self._held
        free(self._keys)
        free(self._free)
        self._keys = NULL
        self._free = NULL
        self._n_free = 0
        self._used = 0
        self._allocated = 0
        self._items = []
        self._index = {}
        self._mode = SWINGING_DOOR if mode == SWINGING_DOOR else DEADBAND
        self._sdt = self._mode == SWINGING_DOOR
        self._deviation = default
        self._deviations = per_name
        self._heartbeat = heartbeat
        self._max_keys = limit
        self._count = 0
        self._held = None
        self._offered = 0
        self._kept = 0
        self._released = 0
        self._dropped = 0
        self._pending = 0
        self._untracked = 0
        del old_index, old_items, old_held

    cdef Py_ssize_t _new_slot(self) except -1:
        cdef Py_ssize_t wanted
        cdef KeyState* keys
        cdef Py_ssize_t* spare
        if self._n_free:
            self._n_free -= 1
            return self._free[self._n_free]
        if self._used == self._allocated:
            wanted = self._allocated * 2 if self._allocated else _FIRST_SLOTS
            if wanted > self._max_keys:
                wanted = self._max_keys
            self._items.extend([None] * (wanted - self._allocated))
            keys = <KeyState*>realloc(self._keys, wanted * sizeof(KeyState))
            if keys == NULL:
                del self._items[self._allocated:]
                raise MemoryError()
            self._keys = keys
            spare = <Py_ssize_t*>realloc(self._free, wanted * sizeof(Py_ssize_t))
            if spare == NULL:
                del self._items[self._allocated:]
                raise MemoryError()
            self._free = spare
            self._allocated = wanted
        self._used += 1
        return self._used - 1

    cdef object _release(self, KeyState* key, Py_ssize_t slot):
        # The held reading is to be stored: it becomes the key's starting point.
        # Returns the previous hand-over, for the caller to let go of last.
        held = (key.last_t, key.last_v, <object>PyList_GET_ITEM(self._items, slot))
        previous = self._held
        self._held = held
        key.anchor_t = key.last_t
        key.anchor_v = key.last_v
        key.lo = -INFINITY
        key.hi = INFINITY
        key.state = _STORED
        self._items[slot] = None
        self._released += 1
        self._pending -= 1
        return previous

    def offer(self, source, name, t, value, item=None):
        """Decide whether to store the reading ``value`` of key ``(source, name)`` taken at ``t``.

        Returns ``DROP``, ``KEEP``, ``HELD`` or ``KEEP | HELD``. ``item`` (the
        caller's row) is kept while the reading is held and comes back from
        ``take_held`` when it is released.
        """
        cdef double ts = _seconds(t)
        cdef double v = NAN
        cdef bint numeric = True
        cdef PyObject* found
        cdef Py_ssize_t slot = -1
        cdef KeyState* key
        cdef double dev, dt, lo, hi, bound, slope, last_v
        cdef object inner = None
        cdef object old_item = None  # let go of on return, once the state is consistent
        cdef object old_held = None
        cdef int flags
        if type(value) is float:
            v = PyFloat_AS_DOUBLE(value)
        elif isinstance(value, (int, float)):
            try:
                v = PyFloat_AS_DOUBLE(PyNumber_Float(value))
            except OverflowError:
                numeric = False
        else:
            numeric = False
        if numeric and not isfinite(v):
            numeric = False
        found = PyDict_GetItemWithError(self._index, source)
        if found != NULL:
            inner = <object>found
            found = PyDict_GetItemWithError(inner, name)
            if found != NULL:
                slot = PyLong_AsSsize_t(<object>found)
        if PyList_GET_SIZE(self._items) != self._allocated:
            raise RuntimeError("compressor storage was cleared; this compressor is unusable")
        self._offered += 1
        if slot < 0:
            if self._count >= self._max_keys:
                self._untracked += 1
                self._kept += 1
                return _KEEP
            found = PyDict_GetItemWithError(self._deviations, name)
            dev = PyFloat_AS_DOUBLE(<object>found) if found != NULL else self._deviation
            slot = self._new_slot()
            if inner is None:
                inner = {}
                self._index[source] = inner
            inner[name] = slot
            key = &self._keys[slot]
            key.anchor_t = NAN
            key.anchor_v = NAN
            key.last_t = -INFINITY
            key.last_v = NAN
            key.lo = -INFINITY
            key.hi = INFINITY
            key.deviation = dev
            key.state = _RESTART
            self._count += 1
        key = &self._keys[slot]
        old_item = <object>PyList_GET_ITEM(self._items, slot)
        if not numeric or not isfinite(ts):
            flags = _KEEP
            if key.state == _HOLDING:
                old_held = self._release(key, slot)
                flags = _KEEP | _HELD
            key.state = _RESTART
            key.last_t = ts if isfinite(ts) else -INFINITY
            key.last_v = NAN
            self._items[slot] = None
            self._kept += 1
            return flags
        if key.state == _RESTART:
            _anchor(self, key, ts, v)
            return _KEEP
        last_v = key.last_v
        if ts <= key.last_t or (
            (last_v == 0.0 or last_v == 1.0) and (v == 0.0 or v == 1.0) and v != last_v
        ):
            flags = _KEEP
            if key.state == _HOLDING:
                old_held = self._release(key, slot)
                flags = _KEEP | _HELD
            _anchor(self, key, ts, v)
            return flags
        dev = key.deviation
        if not self._sdt:
            if fabs(v - key.anchor_v) > dev or ts - key.anchor_t >= self._heartbeat:
                _anchor(self, key, ts, v)
                return _KEEP
            key.last_t = ts
            key.last_v = v
            self._dropped += 1
            return _DROP
        if key.state == _HOLDING:
            dt = key.last_t - key.anchor_t
            lo = key.lo
            hi = key.hi
            bound = (last_v - key.anchor_v - dev) / dt
            if bound > lo:
                lo = bound
            bound = (last_v - key.anchor_v + dev) / dt
            if bound < hi:
                hi = bound
            slope = (v - key.anchor_v) / (ts - key.anchor_t)
            if lo <= slope <= hi:  # the held reading lies on the new line: drop it
                self._dropped += 1
                if ts - key.anchor_t >= self._heartbeat:
                    self._pending -= 1
                    self._items[slot] = None
                    _anchor(self, key, ts, v)
                    return _KEEP
                _hold(self, key, ts, v)
                self._items[slot] = item
                key.lo = lo
                key.hi = hi
                return _DROP
            old_held = self._release(key, slot)  # the door closes on the held reading
            if ts - key.anchor_t >= self._heartbeat:
                _anchor(self, key, ts, v)
                return _KEEP | _HELD
            _hold(self, key, ts, v)
            self._items[slot] = item
            return _HELD
        if ts - key.anchor_t >= self._heartbeat:
            _anchor(self, key, ts, v)
            return _KEEP
        _hold(self, key, ts, v)
        self._items[slot] = item
        return _DROP

    def take_held(self):
        """Hand over the reading the last ``HELD`` result released: ``(t, value, item)``, once."""
        held = self._held
        self._held = None
        return held

    def expire(self, now):
        """Forget keys silent for ``heartbeat_s`` at ``now``; return their held readings to store.

        Each released reading comes as ``(source, name, t, value, item)``. Call
        it every few seconds: it keeps memory bounded and a silent signal's
        last reading from staying unstored.
        """
        return self._sweep(_seconds(now))

    def flush(self):
        """Release every held reading and forget every key (shutdown); same tuples as ``expire``."""
        return self._sweep(INFINITY)

    cdef list _sweep(self, double now):
        cdef list out = []
        cdef list dropped_items = []  # let go of on return, once the state is consistent
        cdef double heartbeat = self._heartbeat
        cdef Py_ssize_t slot
        cdef KeyState* key
        if PyList_GET_SIZE(self._items) != self._allocated:
            raise RuntimeError("compressor storage was cleared; this compressor is unusable")
        for source, inner in list(self._index.items()):
            for name, slot_number in list(inner.items()):
                slot = slot_number
                key = &self._keys[slot]
                if not now - key.last_t >= heartbeat:
                    continue
                item = <object>PyList_GET_ITEM(self._items, slot)
                if key.state == _HOLDING:
                    out.append((source, name, key.last_t, key.last_v, item))
                    self._released += 1
                    self._pending -= 1
                else:
                    dropped_items.append(item)
                del inner[name]
                self._items[slot] = None
                self._free[self._n_free] = slot
                self._n_free += 1
                self._count -= 1
            if not inner:
                del self._index[source]
        return out

    def deviation_for(self, name):
        """Deviation a key with data key ``name`` gets: its own, else the default."""
        return self._deviations.get(name, self._deviation)

    def __len__(self):
        return self._count

    @property
    def mode(self):
        return self._mode

    @property
    def deviation(self):
        return self._deviation

    @property
    def deviations(self):
        return dict(self._deviations)

    @property
    def heartbeat_s(self):
        return self._heartbeat

    @property
    def max_keys(self):
        return self._max_keys

    def stats(self):
        """Counters as a plain dict, for metrics export.

        ``offered`` = ``kept`` + ``released`` + ``dropped`` + ``pending``.
        """
        # Copied to C first: building the dict may run the garbage collector.
        cdef Py_ssize_t count = self._count
        cdef unsigned long long offered = self._offered
        cdef unsigned long long kept = self._kept
        cdef unsigned long long released = self._released
        cdef unsigned long long dropped = self._dropped
        cdef Py_ssize_t pending = self._pending
        cdef unsigned long long untracked = self._untracked
        return {
            "keys": count,
            "max_keys": self._max_keys,
            "offered": offered,
            "kept": kept,
            "released": released,
            "dropped": dropped,
            "pending": pending,
            "untracked": untracked,
        }

    def __repr__(self):
        return (f"Compressor(mode={self._mode!r}, deviation={self._deviation!r}, "
                f"heartbeat_s={self._heartbeat!r}, keys={self._count})")
