# cython: language_level=3, boundscheck=False, wraparound=False
"""Bounded telemetry ring buffer (compiled twin of ``_ring_py.py``).

One producer (the event-loop thread) pushes, one consumer (the database writer
thread) drains. The pure twin guards its state with a ``threading.Lock``; this
twin has no lock and relies on the GIL instead, under two rules every method
keeps:

* it never releases the GIL;
* it runs no Python code (no call out, no finalizer, no garbage collection)
  while the ring's state is half-updated. An evicted item is released only
  after head, count and counters are consistent again, so its ``__del__`` may
  push into this very ring; ``drain`` makes its one allocation, the result
  list (which may start the garbage collector, and so finalizers and thread
  switches), before it reads the state; ``stats`` copies the counters into C
  variables before it builds its dict.

Each method is therefore atomic for every other thread and for any finalizer.
On a free-threaded interpreter running without the GIL these rules protect
nothing, so importing this module raises ImportError there and the chooser
falls back to the pure twin.
"""

cimport cython
from cpython.list cimport PyList_GET_SIZE, PyList_New
from cpython.ref cimport PyObject, Py_INCREF, Py_XDECREF
from cpython.sequence cimport PySequence_Fast_ITEMS

import sys

cdef extern from "Python.h":
    # With a NULL exception type, huge integers clip to PY_SSIZE_T_MIN/MAX.
    Py_ssize_t PyNumber_AsSsize_t(object o, PyObject* exc) except? -1
    # Truncate a list in place without freeing its buffer (no allocation).
    void Py_SET_SIZE(object o, Py_ssize_t size)


def _require_gil():
    """Refuse to load where the GIL is off: this twin's atomicity comes from it."""
    gil_enabled = getattr(sys, "_is_gil_enabled", None)
    if gil_enabled is not None and not gil_enabled():
        raise ImportError(f"{__name__} relies on the GIL, which this interpreter runs without")


_require_gil()

DROP_OLDEST = "drop_oldest"
REJECT = "reject"
OVERFLOW_POLICIES = (DROP_OLDEST, REJECT)

# None, held as a raw pointer to refill drained slots.
cdef PyObject* _NONE = <PyObject*>None


cdef Py_ssize_t _wanted_items(object max_items) except -1:
    # Same contract as operator.index() followed by a sign check in the pure twin.
    cdef Py_ssize_t wanted = PyNumber_AsSsize_t(max_items, NULL)
    if wanted < 0:
        raise ValueError(f"max_items must be >= 0, got {max_items!r}")
    return wanted


cdef inline PyObject** _slot_array(Ring ring) except NULL:
    # The slot list never changes length. If it did (the garbage collector
    # cleared it while breaking a cycle, or code reached it through
    # gc.get_referents), indexing it would corrupt memory: refuse instead.
    if PyList_GET_SIZE(ring._slots) != ring._capacity:
        raise RuntimeError("ring storage was cleared or resized; this ring is unusable")
    return PySequence_Fast_ITEMS(ring._slots)


cdef inline void _store(Ring ring, PyObject** items, object item) noexcept:
    # Caller has made room, so the tail slot holds None.
    cdef Py_ssize_t tail = ring._head + ring._count
    if tail >= ring._capacity:
        tail -= ring._capacity
    cdef PyObject* placeholder = items[tail]
    Py_INCREF(item)
    items[tail] = <PyObject*>item
    ring._count += 1
    ring._pushed += 1
    if ring._count > ring._high_water:
        ring._high_water = ring._count
    Py_XDECREF(placeholder)  # None: runs no code


@cython.auto_pickle(False)  # like the pure twin, whose lock cannot be pickled
@cython.no_gc_clear  # _slots stays a list for the ring's whole life; _slot_array() checks it
cdef class Ring:
    """Fixed-capacity FIFO with an explicit overflow policy and counters.

    ``push`` applies the policy when the ring is full: ``drop_oldest`` evicts
    the oldest item (counted in ``dropped``) and always stores the new one;
    ``reject`` stores nothing and returns False (counted in ``rejected``).
    ``offer`` never evicts, whatever the policy: it returns False when full, the
    back-pressure signal used for QoS 1 messages that must not be lost.
    """

    def __cinit__(self, *args, **kwargs):
        # A ring that __init__ never filled in (Ring.__new__) refuses every
        # operation in _slot_array(): its slot list cannot have length -1.
        self._slots = []
        self._capacity = -1
        self._overflow = DROP_OLDEST

    def __init__(self, capacity, overflow=DROP_OLDEST):
        cdef list old_slots = self._slots  # released last: its items may run __del__
        cdef list slots
        cdef bint reject_when_full
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ValueError(f"capacity must be a positive integer, got {capacity!r}")
        if overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"overflow must be one of {OVERFLOW_POLICIES}, got {overflow!r}")
        # Everything that may run Python code comes before the first field is set.
        slots = [None] * capacity  # the same MemoryError/OverflowError as the pure twin
        reject_when_full = overflow == REJECT
        self._slots = slots
        self._capacity = PyList_GET_SIZE(slots)
        self._head = 0
        self._count = 0
        self._reject_when_full = reject_when_full
        self._overflow = REJECT if reject_when_full else DROP_OLDEST
        self._pushed = 0
        self._drained = 0
        self._dropped = 0
        self._rejected = 0
        self._high_water = 0
        del old_slots

    def push(self, item):
        """Store ``item``, applying the overflow policy when full; False means refused."""
        cdef PyObject** items = _slot_array(self)
        cdef PyObject* evicted
        if self._count < self._capacity:
            _store(self, items, item)
            return True
        if self._reject_when_full:
            self._rejected += 1
            return False
        # Full: the oldest slot becomes the newest one and the head moves on.
        evicted = items[self._head]
        Py_INCREF(item)
        items[self._head] = <PyObject*>item
        self._head += 1
        if self._head == self._capacity:
            self._head = 0
        self._dropped += 1
        self._pushed += 1
        # Released once the ring is consistent: its __del__ may push into this very ring.
        Py_XDECREF(evicted)
        return True

    def offer(self, item):
        """Store ``item`` only if there is room; never evicts. False means full."""
        cdef PyObject** items = _slot_array(self)
        if self._count == self._capacity:
            self._rejected += 1
            return False
        _store(self, items, item)
        return True

    def drain(self, max_items):
        """Remove and return up to ``max_items`` items, oldest first.

        ``max_items`` is any integer (``__index__``); floats raise TypeError.
        """
        cdef Py_ssize_t wanted = _wanted_items(max_items)
        cdef Py_ssize_t size = wanted if wanted < self._count else self._count
        # The only allocation; it may run the garbage collector, hence finalizers
        # and other threads, so the state is read only after it.
        cdef list out = PyList_New(size)
        cdef PyObject** taken = PySequence_Fast_ITEMS(out)
        cdef PyObject** items = _slot_array(self)
        cdef Py_ssize_t n = size if size < self._count else self._count
        cdef Py_ssize_t head = self._head
        cdef Py_ssize_t i
        for i in range(n):
            taken[i] = items[head]  # the reference moves from the ring to the list
            Py_INCREF(None)
            items[head] = _NONE
            head += 1
            if head == self._capacity:
                head = 0
        self._head = head
        self._count -= n
        self._drained += n
        if n < size:  # code run by the collector drained some items meanwhile
            Py_SET_SIZE(out, n)
        return out

    def __len__(self):
        return self._count

    @property
    def capacity(self):
        return self._capacity

    @property
    def overflow(self):
        return self._overflow

    @property
    def full(self):
        return self._count == self._capacity

    @property
    def pushed(self):
        return self._pushed

    @property
    def drained(self):
        return self._drained

    @property
    def dropped(self):
        return self._dropped

    @property
    def rejected(self):
        return self._rejected

    @property
    def high_water(self):
        return self._high_water

    def stats(self):
        """Counters as a plain dict, for metrics export; one consistent snapshot."""
        # Copied to C first: building the dict may run the garbage collector.
        cdef Py_ssize_t depth = self._count
        cdef unsigned long long pushed = self._pushed
        cdef unsigned long long drained = self._drained
        cdef unsigned long long dropped = self._dropped
        cdef unsigned long long rejected = self._rejected
        cdef Py_ssize_t high_water = self._high_water
        return {
            "depth": depth,
            "capacity": self._capacity,
            "pushed": pushed,
            "drained": drained,
            "dropped": dropped,
            "rejected": rejected,
            "high_water": high_water,
        }

    def __repr__(self):
        return f"Ring(capacity={self._capacity}, overflow={self._overflow!r}, depth={self._count})"
