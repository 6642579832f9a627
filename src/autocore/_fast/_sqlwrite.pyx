# cython: language_level=3, boundscheck=False, wraparound=False
"""The telemetry INSERT on SQLite (compiled twin of ``_sqlwrite_py.py``).

The pure twin builds a tuple per row for ``executemany``, which binds each
value again through pysqlite. This twin binds the strings' own UTF-8 (no
copy, ``SQLITE_STATIC``) into one prepared statement, stepped and reset per
row, on the very connection and the very SQLite library that ``sqlite3``
uses: the library is not linked in, its functions are looked up at import in
the library ``_sqlite3`` loaded, and the connection handle is read from the
``sqlite3.Connection`` object, whose C layout is known for CPython 3.10-3.14.
Where any of that does not hold, importing this module raises ImportError and
the chooser takes the pure twin.

Results and errors are the pure twin's:

* a connection that fails the handle checks (closed, another layout, not a
  ``sqlite3.Connection``, a SQL text that is not one plain six-parameter
  statement) goes the pure way, so pysqlite raises its own error;
* a row whose values are not plain ``str``/``None`` (``int`` for the device
  id), or that SQLite refuses to bind, is handed to pysqlite on its own, with
  the same conversions and errors as in ``executemany``;
* a refused row raises the stdlib ``sqlite3`` error pysqlite would raise (same
  class, message and error code) and leaves the statement reset.

Rows join the connection's transaction; where pysqlite would open one before
an INSERT (its default, legacy transaction control), this twin opens it the
same way, so pysqlite's ``commit()`` and ``rollback()`` decide. Rows are
gathered 128 at a time with the GIL (pointers into the str objects, which
stay referenced) and bound and stepped without it: the event loop keeps
running through a long batch, and the thread does not queue for the GIL
after every row.
"""

from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.ref cimport PyObject, Py_INCREF, Py_XDECREF
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from libc.limits cimport INT_MAX

import os
import sys

import sqlite3

from . import _sqlwrite_py as _py

cdef extern from *:
    """
    #if defined(_WIN32)
    #include <windows.h>
    /* CPython for Windows ships SQLite as sqlite3.dll, which _sqlite3 imports. */
    static void *autocore_sqlite_library(const char *path) {
        (void)path;
        return (void *)GetModuleHandleW(L"sqlite3.dll");
    }
    static void *autocore_sqlite_symbol(void *library, const char *name) {
        return (void *)GetProcAddress((HMODULE)library, name);
    }
    #else
    #include <dlfcn.h>
    /* The library _sqlite3 already loaded (NULL: the interpreter itself); never loads a new one. */
    static void *autocore_sqlite_library(const char *path) {
        return dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    }
    static void *autocore_sqlite_symbol(void *library, const char *name) {
        return dlsym(library, name);
    }
    #endif
    /* pysqlite_Connection of CPython 3.10-3.14 starts with its sqlite3 handle. */
    typedef struct {
        PyObject_HEAD
        void *db;
    } autocore_pysqlite_connection;
    """
    void* autocore_sqlite_library(const char* path) nogil
    # Declared here without an exception check: a str pysqlite must encode itself.
    const char* PyUnicode_AsUTF8AndSize(object unicode, Py_ssize_t* size) noexcept
    void PyErr_Clear() noexcept
    void* autocore_sqlite_symbol(void* library, const char* name) nogil
    ctypedef struct autocore_pysqlite_connection:
        void* db

# SQLite's prototypes, as function pointers: the library is found at import.
ctypedef void (*destructor_f)(void*) noexcept nogil
ctypedef int (*prepare_v2_f)(void* db, const char* sql, int nbyte, void** stmt,
                             const char** tail) noexcept nogil
ctypedef int (*bind_text_f)(void* stmt, int index, const char* text, int nbyte,
                            destructor_f destructor) noexcept nogil
ctypedef int (*bind_int64_f)(void* stmt, int index, long long value) noexcept nogil
ctypedef int (*stmt_f)(void* stmt) noexcept nogil
ctypedef int (*bind_null_f)(void* stmt, int index) noexcept nogil
ctypedef const char* (*bind_parameter_name_f)(void* stmt, int index) noexcept nogil
ctypedef int (*db_f)(void* db) noexcept nogil
ctypedef const char* (*errmsg_f)(void* db) noexcept nogil
ctypedef const char* (*db_filename_f)(void* db, const char* name) noexcept nogil
ctypedef const char* (*libversion_f)() noexcept nogil

cdef enum:
    SQLITE_OK = 0
    SQLITE_ERROR = 1
    SQLITE_INTERNAL = 2
    SQLITE_PERM = 3
    SQLITE_ABORT = 4
    SQLITE_BUSY = 5
    SQLITE_LOCKED = 6
    SQLITE_NOMEM = 7
    SQLITE_READONLY = 8
    SQLITE_INTERRUPT = 9
    SQLITE_IOERR = 10
    SQLITE_CORRUPT = 11
    SQLITE_NOTFOUND = 12
    SQLITE_FULL = 13
    SQLITE_CANTOPEN = 14
    SQLITE_PROTOCOL = 15
    SQLITE_EMPTY = 16
    SQLITE_SCHEMA = 17
    SQLITE_TOOBIG = 18
    SQLITE_CONSTRAINT = 19
    SQLITE_MISMATCH = 20
    SQLITE_MISUSE = 21
    SQLITE_RANGE = 25
    SQLITE_DONE = 101

cdef enum:
    CHUNK = 128  # rows bound and stepped per release of the GIL
    TEXTS = 5  # timestamp, data_type, data_key, data_value, unit
    HELD = 3  # references kept per row: timestamp, device id, row

cdef prepare_v2_f _prepare_v2 = NULL
cdef bind_text_f _bind_text = NULL
cdef bind_int64_f _bind_int64 = NULL
cdef bind_null_f _bind_null = NULL
cdef stmt_f _step = NULL
cdef stmt_f _reset = NULL
cdef stmt_f _clear_bindings = NULL
cdef stmt_f _finalize = NULL
cdef stmt_f _bind_parameter_count = NULL
cdef bind_parameter_name_f _bind_parameter_name = NULL
cdef stmt_f _column_count = NULL
cdef db_f _errcode = NULL
cdef db_f _extended_errcode = NULL
cdef db_f _get_autocommit = NULL
cdef errmsg_f _errmsg = NULL
cdef db_filename_f _db_filename = NULL
cdef libversion_f _libversion = NULL


cdef void* _symbol(void* library, const char* name) except NULL:
    cdef void* found = autocore_sqlite_symbol(library, name)
    if found == NULL:
        raise ImportError(f"{__name__}: the SQLite library of sqlite3 does not export "
                          f"{name.decode()}")
    return found


def _require_known_layout():
    """Refuse to load where the connection's C layout or the GIL cannot be relied on."""
    if sys.implementation.name != "cpython" or not (3, 10) <= sys.version_info[:2] <= (3, 14):
        raise ImportError(f"{__name__} reads sqlite3.Connection's C layout, known for "
                          "CPython 3.10-3.14 only")
    gil_enabled = getattr(sys, "_is_gil_enabled", None)
    if gil_enabled is not None and not gil_enabled():
        raise ImportError(f"{__name__} relies on the GIL, which this interpreter runs without")


def _load_sqlite():
    """Find the functions of the SQLite library ``_sqlite3`` uses; ImportError when absent."""
    global _prepare_v2, _bind_text, _bind_int64, _bind_null, _step, _reset, _clear_bindings
    global _finalize, _bind_parameter_count, _bind_parameter_name, _column_count, _errcode
    global _extended_errcode, _get_autocommit, _errmsg, _db_filename, _libversion
    import _sqlite3
    path = getattr(_sqlite3, "__file__", None)  # None: built into the interpreter
    cdef bytes encoded = os.fsencode(path) if path else None
    cdef void* library = autocore_sqlite_library(<const char*>encoded if encoded is not None else NULL)
    if library == NULL:
        raise ImportError(f"{__name__}: cannot find the SQLite library of {path or '_sqlite3'}")
    _prepare_v2 = <prepare_v2_f>_symbol(library, b"sqlite3_prepare_v2")
    _bind_text = <bind_text_f>_symbol(library, b"sqlite3_bind_text")
    _bind_int64 = <bind_int64_f>_symbol(library, b"sqlite3_bind_int64")
    _bind_null = <bind_null_f>_symbol(library, b"sqlite3_bind_null")
    _step = <stmt_f>_symbol(library, b"sqlite3_step")
    _reset = <stmt_f>_symbol(library, b"sqlite3_reset")
    _clear_bindings = <stmt_f>_symbol(library, b"sqlite3_clear_bindings")
    _finalize = <stmt_f>_symbol(library, b"sqlite3_finalize")
    _bind_parameter_count = <stmt_f>_symbol(library, b"sqlite3_bind_parameter_count")
    _bind_parameter_name = <bind_parameter_name_f>_symbol(library, b"sqlite3_bind_parameter_name")
    _column_count = <stmt_f>_symbol(library, b"sqlite3_column_count")
    _errcode = <db_f>_symbol(library, b"sqlite3_errcode")
    _extended_errcode = <db_f>_symbol(library, b"sqlite3_extended_errcode")
    _get_autocommit = <db_f>_symbol(library, b"sqlite3_get_autocommit")
    _errmsg = <errmsg_f>_symbol(library, b"sqlite3_errmsg")
    _db_filename = <db_filename_f>_symbol(library, b"sqlite3_db_filename")
    _libversion = <libversion_f>_symbol(library, b"sqlite3_libversion")
    version = (<bytes>_libversion()).decode()
    if version != sqlite3.sqlite_version:
        raise ImportError(f"{__name__}: found SQLite {version}, sqlite3 runs {sqlite3.sqlite_version}")


_require_known_layout()
_load_sqlite()

#: pysqlite's exception class per primary result code (Modules/_sqlite/util.c).
_ERRORS = {
    SQLITE_INTERNAL: sqlite3.InternalError, SQLITE_NOTFOUND: sqlite3.InternalError,
    SQLITE_CORRUPT: sqlite3.DatabaseError, SQLITE_TOOBIG: sqlite3.DataError,
    SQLITE_CONSTRAINT: sqlite3.IntegrityError, SQLITE_MISMATCH: sqlite3.IntegrityError,
    SQLITE_MISUSE: sqlite3.InterfaceError,
    # 3.10 has no case for SQLITE_RANGE: the default, DatabaseError.
    SQLITE_RANGE: sqlite3.InterfaceError if sys.version_info >= (3, 11) else sqlite3.DatabaseError,
}
for _code in (SQLITE_ERROR, SQLITE_PERM, SQLITE_ABORT, SQLITE_BUSY, SQLITE_LOCKED, SQLITE_READONLY,
              SQLITE_INTERRUPT, SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN, SQLITE_PROTOCOL,
              SQLITE_EMPTY, SQLITE_SCHEMA):
    _ERRORS[_code] = sqlite3.OperationalError
del _code

#: 3.11+ name the (extended) code on the exception, as ``sqlite3.SQLITE_*`` does.
_NAMES_ON_ERRORS = sys.version_info >= (3, 11)
#: SQLite's primary result codes; an extended code's name starts with its primary's.
_PRIMARY_NAMES = (
    None, "ERROR", "INTERNAL", "PERM", "ABORT", "BUSY", "LOCKED", "NOMEM", "READONLY", "INTERRUPT",
    "IOERR", "CORRUPT", "NOTFOUND", "FULL", "CANTOPEN", "PROTOCOL", "EMPTY", "SCHEMA", "TOOBIG",
    "CONSTRAINT", "MISMATCH", "MISUSE", "NOLFS", "AUTH", "FORMAT", "RANGE", "NOTADB", "NOTICE",
    "WARNING",
)


def _error_names():
    """Result code -> name, from sqlite3's own constants (3.11+).

    sqlite3 also holds authorizer and limit constants whose values clash with
    error codes; only a name that starts with its code's primary name counts.
    """
    names = {}
    for name, value in vars(sqlite3).items():
        if not name.startswith("SQLITE_") or type(value) is not int or value <= 0:
            continue
        primary = value & 0xFF
        if not 0 < primary < len(_PRIMARY_NAMES):
            continue
        base = "SQLITE_" + _PRIMARY_NAMES[primary]
        if name == base or name.startswith(base + "_"):
            names[value] = name
    return names


_NAMES = _error_names() if _NAMES_ON_ERRORS else {}

_LEGACY = getattr(sqlite3, "LEGACY_TRANSACTION_CONTROL", None)  # 3.12+


cdef object _sqlite_error(void* db, int step_rc):
    """The exception pysqlite raises for the connection's last error."""
    cdef int code = _errcode(db)
    cdef int extended = _extended_errcode(db)
    if code == SQLITE_OK:  # not expected after a failed step: report the step's own code
        code = extended = step_rc
    if code & 0xFF == SQLITE_NOMEM:
        return MemoryError()
    message = (<bytes>_errmsg(db)).decode("utf-8")
    error = _ERRORS.get(code, sqlite3.DatabaseError)(message)
    if _NAMES_ON_ERRORS:
        error.sqlite_errorcode = extended
        error.sqlite_errorname = _NAMES.get(extended, "unknown")
    return error


cdef struct Slot:
    const char* text[TEXTS]  # NULL: bind NULL
    int size[TEXTS]
    long long device_id
    bint device_null


cdef int _run(void* stmt, Slot* slots, Py_ssize_t count, Py_ssize_t* done,
              bint* bind_failed) noexcept nogil:
    """Bind and step ``count`` rows; on a failure ``done`` is the failing row's index."""
    cdef Py_ssize_t i
    cdef int k, rc
    cdef Slot* slot
    for i in range(count):
        slot = &slots[i]
        done[0] = i
        bind_failed[0] = True
        for k in range(TEXTS):
            # Parameters: 1 timestamp, 2 device_id, 3-6 data_type, data_key, data_value, unit.
            if slot.text[k] == NULL:
                rc = _bind_null(stmt, 1 if k == 0 else k + 2)
            else:
                rc = _bind_text(stmt, 1 if k == 0 else k + 2, slot.text[k], slot.size[k],
                                <destructor_f>NULL)  # SQLITE_STATIC: the str outlives the binding
            if rc != SQLITE_OK:
                return rc
        rc = _bind_null(stmt, 2) if slot.device_null else _bind_int64(stmt, 2, slot.device_id)
        if rc != SQLITE_OK:
            return rc
        bind_failed[0] = False
        rc = _step(stmt)
        if rc != SQLITE_DONE:
            return rc
        _reset(stmt)
    done[0] = count
    return SQLITE_OK


cdef int _text(object value, const char** text, int* size) noexcept:
    """1: bind this str's UTF-8; 0: bind NULL; -1: not a plain str (pysqlite binds it)."""
    cdef Py_ssize_t length
    cdef const char* data
    if value is None:
        text[0] = NULL
        return 0
    if type(value) is not str:
        return -1
    data = PyUnicode_AsUTF8AndSize(value, &length)  # cached in the str, like pysqlite's
    if data == NULL or length > INT_MAX:  # surrogates, too long: pysqlite says how
        if data == NULL:
            PyErr_Clear()
        return -1
    text[0] = data
    size[0] = <int>length
    return 1


cdef class TelemetryInsert:
    """One INSERT statement of six parameters, run for a batch of messages.

    The statement is prepared for each call and finalized before it returns.
    A statement kept prepared keeps its connection open after pysqlite closes
    it (``sqlite3_close_v2`` waits for it), so the last close of the database
    did not checkpoint and remove the WAL: a clean shutdown left ``-wal`` and
    ``-shm`` behind, as a crash does. Preparing costs microseconds; a call
    carries a whole commit's rows.
    """

    cdef object _sql
    cdef bytes _sql_utf8
    cdef object _pure
    cdef void* _db
    cdef void* _stmt
    cdef bint _busy
    cdef Slot _slots[CHUNK]
    cdef PyObject* _held[CHUNK * HELD]
    cdef Py_ssize_t _held_count

    def __cinit__(self, *args, **kwargs):
        self._db = NULL
        self._stmt = NULL
        self._busy = False
        self._held_count = 0

    def __init__(self, sql):
        self._pure = _py.TelemetryInsert(sql)  # the same TypeError for a non-str
        self._forget()
        self._sql = sql
        try:
            self._sql_utf8 = sql.encode("utf-8")
        except UnicodeEncodeError:  # pysqlite refuses it: always the pure way
            self._sql_utf8 = None

    def __dealloc__(self):
        cdef void* stmt = self._stmt
        self._stmt = NULL
        if stmt != NULL:
            with nogil:
                _finalize(stmt)

    def insert(self, dbapi_connection, batch):
        """Insert every row of ``batch`` through ``dbapi_connection``; return the rows inserted."""
        cdef void* db
        if self._busy:  # another thread is using the statement: take the pure way
            return self._pure.insert(dbapi_connection, batch)
        self._busy = True
        try:
            db = self._handle(dbapi_connection)
            if db == NULL:
                return self._pure.insert(dbapi_connection, batch)
            return self._insert(dbapi_connection, db, batch)
        finally:
            self._forget()  # never outlive the call: see the class docstring
            self._busy = False

    cdef void* _handle(self, connection) except? NULL:
        """The connection's sqlite3 handle with a statement prepared on it; NULL: go the pure way."""
        cdef void* db
        cdef void* stmt = NULL
        cdef const char* tail = NULL
        cdef const char* sql
        cdef Py_ssize_t size
        cdef int rc
        if self._sql_utf8 is None or not isinstance(connection, sqlite3.Connection):
            return NULL
        sql = self._sql_utf8
        size = len(self._sql_utf8)
        db = (<autocore_pysqlite_connection*><PyObject*>connection).db
        if db == NULL:  # closed: pysqlite raises ProgrammingError
            return NULL
        if not _same_database(connection, db) or size > INT_MAX:
            return NULL
        with nogil:  # preparing may wait on the schema lock (busy timeout)
            rc = _prepare_v2(db, sql, <int>size, &stmt, &tail)
        if rc != SQLITE_OK or stmt == NULL or not _only_space(tail) or not _six_plain_parameters(stmt) \
                or _column_count(stmt) != 0:
            # An error, an empty or a second statement, another shape: pysqlite says what.
            if stmt != NULL:
                _finalize(stmt)
            return NULL
        self._db = db
        self._stmt = stmt
        return db

    cdef int _forget(self) except -1:
        """Finalize the statement: the call that prepared it is over."""
        cdef void* stmt = self._stmt
        self._stmt = NULL
        self._db = NULL
        if stmt != NULL:
            with nogil:
                _finalize(stmt)
        return 0

    cdef Py_ssize_t _insert(self, connection, void* db, batch) except -1:
        cdef Slot* slot
        cdef Py_ssize_t count = 0, total = 0
        cdef int ts_kind, overflow = 0
        cdef const char* ts_text = NULL
        cdef int ts_size = 0
        cdef long long device_value = 0
        cdef bint device_ok, device_null, ready = False
        try:
            for message in batch:
                if type(message) is tuple and PyTuple_GET_SIZE(message) == 3:
                    ts = <object>PyTuple_GET_ITEM(message, 0)
                    device_id = <object>PyTuple_GET_ITEM(message, 1)
                    rows = <object>PyTuple_GET_ITEM(message, 2)
                else:
                    ts, device_id, rows = _py._message(message)
                ts_kind = _text(ts, &ts_text, &ts_size)
                device_null = device_id is None
                device_ok = device_null
                if type(device_id) is int:
                    device_value = PyLong_AsLongLongAndOverflow(device_id, &overflow)
                    device_ok = overflow == 0  # past int64: pysqlite raises OverflowError
                for row in rows:
                    if not ready:
                        self._begin(connection, db)
                        ready = True
                    slot = &self._slots[count]
                    if ts_kind < 0 or not device_ok or not _fill(slot, row):
                        # Not plain text: pysqlite binds this row, in its place in the batch.
                        total += self._flush(connection, count)
                        count = 0
                        connection.execute(self._sql, _py._row(ts, device_id, row))
                        total += 1
                        continue
                    slot.text[0] = ts_text
                    slot.size[0] = ts_size
                    slot.device_id = device_value
                    slot.device_null = device_null
                    self._hold(ts)
                    self._hold(device_id)
                    self._hold(row)
                    count += 1
                    if count == CHUNK:
                        total += self._flush(connection, count)
                        count = 0
            total += self._flush(connection, count)
        finally:
            self._release()
        return total

    cdef int _begin(self, connection, void* db) except -1:
        """Open a transaction where pysqlite would open one before an INSERT."""
        if not _get_autocommit(db):
            return 0
        level = connection.isolation_level
        if level is None or getattr(connection, "autocommit", _LEGACY) != _LEGACY:
            return 0  # autocommit: each row commits on its own, as with executemany
        connection.execute("BEGIN " + level)  # pysqlite's own implicit BEGIN
        return 0

    cdef inline void _hold(self, object value) noexcept:
        Py_INCREF(value)
        self._held[self._held_count] = <PyObject*>value
        self._held_count += 1

    cdef void _release(self) noexcept:
        """Unbind every value, then let go of the objects that held them."""
        cdef Py_ssize_t i
        if self._held_count == 0:
            return
        _clear_bindings(self._stmt)  # no pointer into a released str stays bound
        for i in range(self._held_count):
            Py_XDECREF(self._held[i])
        self._held_count = 0

    cdef Py_ssize_t _flush(self, connection, Py_ssize_t count) except -1:
        """Bind and step the gathered rows without the GIL; raise a refused row's error."""
        cdef void* stmt = self._stmt
        cdef Py_ssize_t start = 0, done = 0, i
        cdef bint bind_failed = False
        cdef int rc = SQLITE_OK
        cdef PyObject** held = self._held
        try:
            if count and (<autocore_pysqlite_connection*><PyObject*>connection).db != self._db:
                # Closed (or reopened) while the batch was read: as pysqlite says it.
                raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
            while start < count:
                with nogil:
                    rc = _run(stmt, &self._slots[start], count - start, &done, &bind_failed)
                if rc == SQLITE_OK:
                    break
                if not bind_failed:
                    error = _sqlite_error(self._db, rc)
                    _reset(stmt)
                    raise error
                # SQLite refused a value (too long, say): pysqlite binds that row and says why.
                _reset(stmt)
                i = start + done
                connection.execute(self._sql, _py._row(<object>held[i * HELD], <object>held[i * HELD + 1],
                                                       <object>held[i * HELD + 2]))
                start = i + 1
            return count
        finally:
            self._release()


cdef bint _fill(Slot* slot, object row) noexcept:
    """Point the slot at the row's four texts; False when pysqlite must bind the row."""
    cdef int k
    if type(row) is not tuple or PyTuple_GET_SIZE(row) != 4:
        return False
    for k in range(4):
        if _text(<object>PyTuple_GET_ITEM(row, k), &slot.text[k + 1], &slot.size[k + 1]) < 0:
            return False
    return True


cdef bint _six_plain_parameters(void* stmt) noexcept:
    """Six ``?`` parameters, bound by position (pysqlite warns about named ones given a tuple)."""
    cdef int i
    if _bind_parameter_count(stmt) != 6:
        return False
    for i in range(1, 7):
        if _bind_parameter_name(stmt, i) != NULL:
            return False
    return True


cdef bint _only_space(const char* tail) noexcept:
    if tail == NULL:
        return True
    while tail[0] != 0:
        if tail[0] not in b" \t\n\r\f\v":
            return False
        tail += 1
    return True


cdef bint _same_database(connection, void* db) except -1:
    """The handle is the connection's: same main file and same transaction state through sqlite3."""
    cdef const char* name
    try:
        cursor = connection.cursor()
        cursor.row_factory = None  # plain tuples, whatever the connection's factory
        listed = [row[2] for row in cursor.execute("PRAGMA database_list") if row[1] == "main"]
        cursor.close()
        in_transaction = connection.in_transaction
    except Exception:  # another thread's connection, say: pysqlite raises it again
        return False
    name = _db_filename(db, b"main")
    if name == NULL or len(listed) != 1 or type(listed[0]) is not str:
        return False
    if (<bytes>name) != listed[0].encode("utf-8", "surrogateescape"):
        return False
    return bool(_get_autocommit(db)) == (not in_transaction)
