# cython: language_level=3
"""Fields of the compiled topic record, so other compiled modules can read them in C."""


cdef class Topic:
    cdef readonly object kind
    cdef readonly object uuid
    cdef readonly object sub
    cdef readonly object reason
