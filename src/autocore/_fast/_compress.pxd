# cython: language_level=3
"""Fields of the compiled compressor, so other compiled modules can read them in C."""


ctypedef struct KeyState:
    # One signal: its last stored point, its last reading and the door's slopes.
    double anchor_t
    double anchor_v
    double last_t
    double last_v
    double lo
    double hi
    double deviation
    int state


cdef class Compressor:
    # source -> {name: slot}; a slot indexes _keys and _items.
    cdef dict _index
    cdef dict _deviations
    # Item of each slot's held reading (None when the slot holds nothing); its
    # length is always _allocated.
    cdef list _items
    cdef KeyState* _keys
    cdef Py_ssize_t* _free  # stack of slots given back by forgotten keys
    cdef Py_ssize_t _n_free
    cdef Py_ssize_t _used  # slots handed out at least once: [0, _used)
    cdef Py_ssize_t _allocated
    cdef str _mode
    cdef bint _sdt
    cdef double _deviation
    cdef double _heartbeat
    cdef Py_ssize_t _max_keys
    cdef Py_ssize_t _count
    cdef object _held
    cdef unsigned long long _offered
    cdef unsigned long long _kept
    cdef unsigned long long _released
    cdef unsigned long long _dropped
    cdef unsigned long long _untracked
    cdef Py_ssize_t _pending

    cdef Py_ssize_t _new_slot(self) except -1
    cdef object _release(self, KeyState* key, Py_ssize_t slot)
    cdef list _sweep(self, double now)
