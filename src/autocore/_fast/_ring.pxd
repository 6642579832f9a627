# cython: language_level=3
"""Fields of the compiled ring buffer, so other compiled modules can read them in C."""


cdef class Ring:
    # Fixed-length list of slots: GC-visible like the pure twin's, never resized.
    # Slots outside [head, head + count) hold None.
    cdef list _slots
    cdef Py_ssize_t _head  # index of the oldest item
    cdef Py_ssize_t _count
    cdef Py_ssize_t _capacity
    cdef bint _reject_when_full
    cdef str _overflow
    cdef unsigned long long _pushed
    cdef unsigned long long _drained
    cdef unsigned long long _dropped
    cdef unsigned long long _rejected
    cdef Py_ssize_t _high_water
