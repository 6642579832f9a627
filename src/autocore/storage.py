"""The database thread: batched telemetry writes and every other DB job, off the event loop.

The event loop never waits on the database. Telemetry goes into a ring buffer
that this thread drains; the thread writes a batch in one transaction when it
holds ``TELEMETRY_BATCH_SIZE`` rows or when its oldest row has waited
``TELEMETRY_FLUSH_INTERVAL``. Other work (device upserts, status changes, event
rows) arrives as jobs and runs on the same thread, so SQLite sees one writer
per process and the Config App's writes only wait on our short transactions.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import create_engine, delete, event, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from autocore.config import Settings
from autocore.errors import StorageError
from autocore.filewatch import start_watch
from autocore.pglisten import start_listen
from autocore.ringbuffer import Ring
from autocore.schema import devices, gateway_message_keys, telemetry_data

log = logging.getLogger(__name__)

#: How long SQLite waits for another writer (the Config App) before failing.
SQLITE_BUSY_TIMEOUT_MS = 5000
#: Default shortest time between two telemetry commits (AUTOCORE_WRITE_INTERVAL):
#: one commit then carries everything that arrived meanwhile. SQLite's
#: per-commit cost dominates small batches (17 us/row at 40 rows per commit,
#: 9 us at 400, on the 2-core benchmark machine); 20 ms keeps p95 latency well
#: under 50 ms.
WRITE_INTERVAL_S = 0.02
#: Default capacity of the QoS 1/2 ring (the gateway sizes it from the receive maximum).
RELIABLE_CAPACITY = 4096
#: Messages taken from each ring per batch.
MAX_BATCH_MESSAGES = 2000
#: Longest sleep of an idle writer; pushes and jobs wake it earlier.
IDLE_WAIT_S = 1.0
#: Most rows written in one transaction.
MAX_BATCH_ROWS = 5000
#: Pause after a failed write before retrying, doubled up to the maximum.
RETRY_MIN_S = 0.1
RETRY_MAX_S = 5.0
#: Polls owed at start and after a NOTIFY or an explicit request: one now, one a
#: poll interval later for a writer that had not committed yet.
POLLS_PER_CHANGE = 2
#: Looks for another process's commit after each write the file watch reports:
#: at once, RECHECK_SOON_S later and a write interval later (see ``_checks_owed``).
#: A look costs a few microseconds; each one that finds a commit runs the pollers.
CHECKS_PER_CHANGE = 3
RECHECK_SOON_S = 0.002
#: With a file watch, pollers still run this often in case a change went unseen.
WATCHED_POLL_S = 10.0
#: How long an unknown device uuid is remembered as unknown.
UNKNOWN_DEVICE_TTL_S = 30.0
#: Device ids remembered by the writer (uuid -> devices.id).
DEVICE_ID_CACHE_SIZE = 4096


class TelemetryItem(NamedTuple):
    """One validated telemetry message waiting for the writer."""

    device_id: int | None  # None when the event loop did not know it yet
    uuid: str
    received_at: datetime  # naive local receive time, the rows' timestamp
    rows: list[tuple[str, str, str, str | None]]
    ack: Any = None  # QoS 1/2 token to acknowledge once the rows are committed
    dedup_key: str | None = None  # idempotency key of a QoS 1/2 message
    redelivered: bool = False  # MQTT DUP flag: may already be stored


def database_url(settings: Settings) -> str:
    """The SQLAlchemy URL to open: DATABASE_URL, else the SQLite file DATABASE_PATH.

    A PostgreSQL URL without a driver (``postgresql://``, ``postgres://``) gets
    psycopg 3, the driver autocore's PostgreSQL writer is built on.
    """
    url = settings.database_url
    if not url:
        return f"sqlite:///{Path(settings.database_path).expanduser().resolve()}"
    for bare in ("postgresql://", "postgres://"):
        if url.startswith(bare):
            return "postgresql+psycopg://" + url[len(bare):]
    return url


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def open_engine(settings: Settings) -> Engine:
    """Open the shared database; SQLite gets WAL and a busy timeout for the Config App."""
    url = database_url(settings)
    if url.startswith("sqlite"):
        path = Path(settings.database_path).expanduser()
        if not settings.database_url and not path.exists():
            if not settings.create_database:
                raise StorageError(
                    f"database file {path} does not exist "
                    "(set DATABASE_PATH, or AUTOCORE_CREATE_DATABASE=true to create it)"
                )
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "handle_error", _drop_read_only_connections)
        return engine
    if url.startswith("postgresql+") and not url.startswith("postgresql+psycopg"):
        raise StorageError("autocore talks to PostgreSQL through psycopg 3: "
                           "use a postgresql:// or postgresql+psycopg:// DATABASE_URL")
    try:
        return create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=4)
    except ModuleNotFoundError as exc:
        raise StorageError(f"{exc.name} is not installed: pip install 'autocore[postgres]'") from None


def _telemetry_insert(engine: Engine) -> tuple[str, Callable[[datetime], Any]]:
    """The telemetry INSERT in the driver's own paramstyle, and how to pass a timestamp.

    Telemetry is the one bulk write, so it skips per-row bind processing: rows go
    to the DBAPI ``executemany`` as tuples. On SQLite the timestamp is the text
    SQLAlchemy's DateTime type itself stores (``YYYY-MM-DD HH:MM:SS.ffffff``), so
    the Config App reads the same values either way.
    """
    columns = ("timestamp", "device_id", "data_type", "data_key", "data_value", "unit")
    dialect = engine.dialect
    marker = {"qmark": "?", "format": "%s", "pyformat": "%s", "numeric": ":{n}"}.get(dialect.paramstyle, "?")
    quote = dialect.identifier_preparer.quote
    values = ", ".join(marker.format(n=n + 1) for n in range(len(columns)))
    sql = f"INSERT INTO {quote(telemetry_data.name)} ({', '.join(quote(c) for c in columns)}) VALUES ({values})"
    if dialect.name == "sqlite":
        return sql, lambda moment: moment.isoformat(" ", "microseconds")  # strftime: 3x slower
    return sql, lambda moment: moment


#: COPY statement of the PostgreSQL telemetry writer. Measured against psycopg's
#: pipelined executemany on loopback (benchmarks/pg_write.py): 1.4-1.5x faster at
#: 50 rows per batch, 1.7-2.5x at 500 and 5,000; multi-row VALUES is slower still.
_COPY_TELEMETRY = ("COPY telemetry_data (timestamp, device_id, data_type, data_key, data_value, unit) "
                   "FROM STDIN")


def _copy_rows(conn: Connection, rows: list[tuple[Any, ...]]) -> None:
    """Stream telemetry rows into PostgreSQL with COPY, inside the caller's transaction."""
    raw = conn.connection.driver_connection
    with raw.cursor() as cursor, cursor.copy(_COPY_TELEMETRY) as copy:
        for row in rows:
            copy.write_row(row)


#: Records a batch's idempotency keys in one round trip; returns those that were new.
_PG_KEYS_INSERT = (
    "INSERT INTO gateway_message_keys (message_key, received_at) "
    "SELECT * FROM unnest(%s::text[], %s::timestamp[]) ON CONFLICT (message_key) DO NOTHING "
    "RETURNING message_key"
)


def _key_insert(engine: Engine) -> tuple[str, str]:
    """INSERT-if-absent and lookup statements for idempotency keys, in the driver's paramstyle."""
    marker = "?" if engine.dialect.paramstyle == "qmark" else "%s"
    table = gateway_message_keys.name
    insert_sql = (f"INSERT INTO {table} (message_key, received_at) VALUES ({marker}, {marker}) "
                  "ON CONFLICT (message_key) DO NOTHING")
    return insert_sql, f"SELECT 1 FROM {table} WHERE message_key = {marker}"


def prune_message_keys(conn: Connection, older_than: datetime) -> None:
    """Forget idempotency keys past their retention (DB-thread job)."""
    conn.execute(delete(gateway_message_keys).where(gateway_message_keys.c.received_at < older_than))


_SQLITE_READONLY = 8  # primary result code of "attempt to write a readonly database"


def _drop_read_only_connections(context: Any) -> None:
    """A SQLite connection opened while the file was unwritable stays read-only for good.

    Treating "attempt to write a readonly database" as a lost connection makes
    the pool open a fresh one on the next retry, so writes resume once the
    file's permissions are fixed, without a restart.
    """
    original = context.original_exception
    code = getattr(original, "sqlite_errorcode", None)  # Python 3.11+; the message before that
    read_only = (code & 0xFF) == _SQLITE_READONLY if code is not None else "readonly database" in str(original)
    if read_only:
        context.is_disconnect = True


def short_error(exc: BaseException) -> str:
    """The first line of a database error, without the SQL and parameters SQLAlchemy appends."""
    text = str(getattr(exc, "orig", None) or exc)
    return text.splitlines()[0] if text else type(exc).__name__


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _nothing() -> None:
    """The job of a barrier: it only marks a place in the queue."""


class Job(NamedTuple):
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    future: asyncio.Future[Any] | None
    loop: asyncio.AbstractEventLoop | None
    transaction: bool = True  # run as fn(conn, *args) inside a transaction


class Database:
    """Owns the engine and the single database thread.

    ``push_telemetry``, ``push_reliable`` and ``post`` are the only calls the
    event loop makes; they return at once. ``call`` returns an awaitable future.
    Best-effort (QoS 0) telemetry and QoS 1/2 telemetry use separate rings, so
    the drop-oldest policy of the first can never evict a message whose
    acknowledgement the broker is still waiting for.
    """

    def __init__(self, engine: Engine, ring: Any, batch_rows: int, flush_interval_s: float,
                 reliable_ring: Any = None, write_interval_s: float = WRITE_INTERVAL_S) -> None:
        self.engine = engine
        self.ring = ring
        self.reliable_ring = reliable_ring if reliable_ring is not None else Ring(RELIABLE_CAPACITY, "reject")
        # Reading stops at a quarter of the reliable ring: the rest absorbs what the
        # client has already read (one 64 KiB chunk holds up to ~1,100 small messages).
        capacity = self.reliable_ring.stats()["capacity"]
        self._reliable_high = max(1, capacity // 4)
        self._reliable_low = capacity // 8
        self.batch_rows = batch_rows
        self.flush_interval_s = flush_interval_s
        self.write_interval_s = write_interval_s
        self._jobs: deque[Job] = deque()  # append/popleft are thread-safe
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._device_ids: OrderedDict[str, int] = OrderedDict()
        self._unknown: dict[str, float] = {}
        # Counters (written by the DB thread, read anywhere).
        self.rows_written = 0
        self.batches_written = 0
        self.write_errors = 0
        self.rows_unknown_device = 0
        self.last_commit_monotonic = 0.0
        self.last_batch_seconds = 0.0
        #: Called on the DB thread with the ack tokens of each committed batch.
        self.on_acks: Callable[[list[Any]], None] | None = None
        #: Called on the DB thread with the duration of each committed batch, s (metrics).
        self.on_batch_seconds: Callable[[float], None] | None = None
        self.duplicates_skipped = 0
        self.job_retries = 0
        self._job_retry_s = RETRY_MIN_S
        self._pollers: list[list[Any]] = []  # [fn, interval_s, last run, seconds it asked for]
        # The DB thread's one connection: every write, job and poll uses it, so on
        # SQLite its ``PRAGMA data_version`` changes only when another process commits.
        self._conn: Connection | None = None
        self._data_version: int | None = None
        self._sqlite = engine.dialect.name == "sqlite"
        self._watch: Any = None  # FileWatch (SQLite) or ListenWatch (PostgreSQL): has stop()
        # Polls owed now (at start, after a NOTIFY or an explicit request).
        self._polls_owed = POLLS_PER_CHANGE
        # Looks owed after the file watch saw a write (set by the watch thread): the
        # gateway's own commits write the file too, and polling after each of them
        # was a fifth of the DB thread's work under load. Several: the first write
        # is seen before the writer has committed, so later looks catch the commit
        # (most within 2 ms, a large transaction within a write interval).
        self._checks_owed = 0
        self._next_check = 0.0
        # Set by the DB thread while its next decision depends on new data: only
        # then does a push (or a file change) need to wake it.
        self._wake_on_push = False
        self._insert_sql, self._stamp = _telemetry_insert(engine)
        self._key_insert = _key_insert(engine)
        self._postgres = is_postgres(engine)

    # -- event-loop side ---------------------------------------------------

    def push_telemetry(self, item: TelemetryItem) -> bool:
        """Queue a telemetry message; False when the ring refused it."""
        stored = bool(self.ring.push(item))
        if self._wake_on_push:
            self._wake.set()
        return stored

    def push_reliable(self, item: TelemetryItem) -> bool:
        """Queue a QoS 1/2 telemetry message without ever evicting; False when full (not acked)."""
        stored = bool(self.reliable_ring.offer(item))
        if self._wake_on_push:
            self._wake.set()
        return stored

    def reliable_backlog_high(self) -> bool:
        """QoS 1/2 messages wait past the high-water mark: stop reading from the broker."""
        return len(self.reliable_ring) >= self._reliable_high

    def reliable_backlog_low(self) -> bool:
        """The backlog fell to the low-water mark: reading may resume."""
        return len(self.reliable_ring) <= self._reliable_low

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(conn, *args)`` on the DB thread in a transaction; errors are logged."""
        self._jobs.append(Job(fn, args, None, None))
        self._wake.set()

    def post_plain(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the DB thread without a connection (thread-owned state)."""
        self._jobs.append(Job(fn, args, None, None, transaction=False))
        self._wake.set()

    def call(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Run ``fn(conn, *args)`` on the DB thread; await the returned future for its result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._jobs.append(Job(fn, args, future, loop))
        self._wake.set()
        return future

    def barrier(self) -> asyncio.Future[None]:
        """A future that resolves once every job queued before it has run.

        Jobs run in order (a retried job keeps its place), so a message whose
        effects were queued as jobs can be acknowledged when this resolves.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._jobs.append(Job(_nothing, (), future, loop, transaction=False))
        self._wake.set()
        return future

    def add_poller(self, fn: Callable[[Connection], float | None], interval_s: float) -> None:
        """Run ``fn(conn)`` on the DB thread to look for changes made by other processes.

        Where changes are announced (SQLite file watch, PostgreSQL LISTEN), ``fn``
        runs (at most every ``interval_s``) only after one, and otherwise every
        WATCHED_POLL_S or as soon as ``fn`` last asked for; elsewhere it runs
        every ``interval_s``.
        """
        self._pollers.append([fn, interval_s, 0.0, None])

    def request_poll(self) -> None:
        """Run the pollers soon: another process (or this one) changed what they look at."""
        self._polls_owed = POLLS_PER_CHANGE
        if self._wake_on_push:  # a busy writer polls within its write interval anyway
            self._wake.set()

    def _file_changed(self) -> None:
        """The SQLite file was written, by us or by another process (watch thread)."""
        self._checks_owed = CHECKS_PER_CHANGE
        self._next_check = 0.0
        if self._wake_on_push:
            self._wake.set()

    # -- lifecycle ----------------------------------------------------------

    def start(self, notify_channel: str | None = None) -> None:
        """Start the thread; changes are noticed by inotify (SQLite) or LISTEN ``notify_channel``."""
        if self._sqlite and self.engine.url.database:
            self._watch = start_watch(Path(self.engine.url.database), self._file_changed)
        elif self._postgres and notify_channel:
            self._watch = start_listen(self.engine.url, notify_channel, self.request_poll)
        self._thread = threading.Thread(target=self._run, name="autocore-db", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0, discard_jobs: bool = False) -> bool:
        """Flush everything queued, then stop; False if the flush did not finish in time.

        ``discard_jobs`` drops queued jobs instead of running them (a start-up
        that was abandoned has nothing worth writing).
        """
        if discard_jobs:
            while self._jobs:
                job = self._jobs.popleft()
                if job.future is not None:
                    self._resolve(job, None, StorageError("stopped before this job ran"))
        self._stopping.set()
        self._wake.set()
        if self._thread is None:
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def close(self) -> None:
        if self._watch is not None:
            self._watch.stop()
        self.engine.dispose()

    # -- database thread ----------------------------------------------------

    def _run(self) -> None:
        """Commit telemetry in batches, at most once per write interval, and run jobs in between.

        Rows are taken from the rings only when a commit may follow, so a busy
        ring never wakes the thread per message; an idle writer (or one holding
        fewer rows than the batch size) asks to be woken by the next push.
        """
        pending: list[TelemetryItem] = []
        pending_rows = 0
        oldest = 0.0
        last_commit = 0.0
        retry_s = RETRY_MIN_S
        while True:
            self._run_jobs()
            next_poll = self._run_pollers()
            stopping = self._stopping.is_set()
            now = time.monotonic()
            spaced = stopping or now - last_commit >= self.write_interval_s
            if spaced and pending_rows < MAX_BATCH_ROWS:
                items = self.reliable_ring.drain(MAX_BATCH_MESSAGES) + self.ring.drain(MAX_BATCH_MESSAGES)
                if items:
                    if not pending:
                        oldest = now
                    pending.extend(items)
                    pending_rows += sum(len(item.rows) for item in items)
            wanted = bool(pending) and (
                stopping or pending_rows >= self.batch_rows or now - oldest >= self.flush_interval_s)
            if wanted and spaced:
                if self._write_batch(pending):
                    pending, pending_rows, retry_s = [], 0, RETRY_MIN_S
                    last_commit = time.monotonic()
                    continue
                if stopping and retry_s >= RETRY_MAX_S:
                    log.error("giving up on %d telemetry messages at shutdown", len(pending))
                    self._drop_connection()
                    return
                time.sleep(retry_s)
                retry_s = min(retry_s * 2, RETRY_MAX_S)
                continue
            if stopping and not pending and not self._queued() and not self._jobs:
                self._drop_connection()
                return
            if wanted or (self._queued() and not spaced):  # only the write interval holds us back
                timeout, wake_on_push = last_commit + self.write_interval_s - now, False
            elif pending:  # below the batch size: the next push or the age limit decides
                timeout, wake_on_push = oldest + self.flush_interval_s - now, True
            else:
                timeout, wake_on_push = IDLE_WAIT_S, True
            self._wake_on_push = wake_on_push
            if wake_on_push and self._queued():  # a push raced the decision
                self._wake_on_push = False
                continue
            self._wake.wait(max(0.0, min(timeout, next_poll - now)))
            self._wake_on_push = False
            self._wake.clear()

    def _queued(self) -> int:
        return len(self.ring) + len(self.reliable_ring)

    def _run_jobs(self) -> None:
        """Run queued jobs in order; a job that meets a locked or failing database waits and retries.

        Status changes and event rows must not be lost because the Config App
        held the database for a while, so a transient error puts the job back
        at the head of the queue and the thread backs off (telemetry keeps
        buffering in the rings meanwhile).
        """
        while self._jobs:
            job = self._jobs.popleft()
            try:
                if job.transaction:
                    with self._transaction() as conn:
                        result = job.fn(conn, *job.args)
                else:
                    result = job.fn(*job.args)
            except OperationalError as exc:
                self.job_retries += 1
                self._jobs.appendleft(job)
                if self._job_retry_s >= RETRY_MAX_S and self._stopping.is_set():
                    self._jobs.popleft()
                    self._fail_job(job, exc)
                    continue
                log.warning("database job %s failed, will retry in %.1fs: %s",
                            job.fn.__name__, self._job_retry_s, short_error(exc))
                time.sleep(self._job_retry_s)
                self._job_retry_s = min(self._job_retry_s * 2, RETRY_MAX_S)
                return
            except Exception as exc:  # a bad job must never kill the thread
                self._fail_job(job, exc)
            else:
                self._job_retry_s = RETRY_MIN_S
                if job.future is not None:
                    self._resolve(job, result, None)

    def _fail_job(self, job: Job, exc: BaseException) -> None:
        if job.future is None:
            log.error("database job %s failed: %s", job.fn.__name__, exc)
        else:
            self._resolve(job, None, exc)

    def _run_pollers(self) -> float:
        """Run the pollers that are due; return when the next one is.

        A poller may return a number of seconds: it then runs again that soon
        even if nothing changed (it is waiting for time to pass, e.g. an expiry).
        """
        now = time.monotonic()
        next_due = now + IDLE_WAIT_S
        if self._checks_owed and now >= self._next_check:
            self._checks_owed -= 1
            soon = self._checks_owed == CHECKS_PER_CHANGE - 1
            self._next_check = now + (RECHECK_SOON_S if soon else self.write_interval_s)
            if self._foreign_commit():
                self._polls_owed = max(self._polls_owed, 1)
        if self._checks_owed:
            next_due = min(next_due, self._next_check)
        changed = self._polls_owed > 0 or self._watch is None
        for poller in self._pollers:
            fn, interval_s, last, asked = poller
            quiet_s = WATCHED_POLL_S if asked is None else max(interval_s, min(asked, WATCHED_POLL_S))
            due = last + (interval_s if changed else quiet_s)
            if due <= now:
                self._polls_owed = max(0, self._polls_owed - 1)
                try:
                    conn = self._connection()
                    wanted = fn(conn)
                    conn.rollback()  # never keep a read snapshot open
                except SQLAlchemyError as exc:
                    log.warning("database poll %s failed: %s", getattr(fn, "__name__", fn), short_error(exc))
                    self._drop_connection()
                    wanted = interval_s
                except Exception:  # a bug in a poller must not end the thread
                    log.exception("database poll %s failed", getattr(fn, "__name__", fn))
                    self._drop_connection()
                    wanted = interval_s
                poller[2] = now
                poller[3] = asked = float(wanted) if isinstance(wanted, (int, float)) else None
                quiet_s = WATCHED_POLL_S if asked is None else max(interval_s, min(asked, WATCHED_POLL_S))
                owed = self._watch is None or self._polls_owed > 0
                due = now + (interval_s if owed else quiet_s)
            next_due = min(next_due, due)
        return next_due

    def _foreign_commit(self) -> bool:
        """Whether another process may have committed since the last look.

        SQLite's ``data_version`` changes for commits made on any other
        connection, never for the connection's own, and this thread commits
        only through ``_conn``. Elsewhere (and on any doubt) the answer is yes.
        """
        if not self._sqlite:
            return True
        try:
            raw = self._connection().connection.driver_connection
            version = raw.execute("PRAGMA data_version").fetchone()[0]
        except (SQLAlchemyError, sqlite3.Error):
            self._drop_connection()
            return True
        changed, self._data_version = version != self._data_version, version
        return changed

    def _connection(self) -> Connection:
        if self._conn is None:
            self._conn = self.engine.connect()
            self._data_version = None  # a new connection: anything may have changed
        return self._conn

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """A transaction on the thread's connection; a failed one is dropped, its successor fresh."""
        conn = self._connection()
        try:
            with conn.begin():
                yield conn
        except SQLAlchemyError:
            self._drop_connection()
            raise

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except SQLAlchemyError:
                pass
            self._conn = None

    @staticmethod
    def _resolve(job: Job, result: Any, exc: BaseException | None) -> None:
        def settle() -> None:
            if job.future is None or job.future.done():
                return
            if exc is None:
                job.future.set_result(result)
            else:
                job.future.set_exception(exc)

        assert job.loop is not None
        try:
            job.loop.call_soon_threadsafe(settle)
        except RuntimeError:  # loop already closed at shutdown
            pass

    def _write_batch(self, items: list[TelemetryItem]) -> bool:
        started = time.monotonic()
        try:
            with self._transaction() as conn:
                rows = self._rows_for(conn, items)
                if rows and self._postgres:
                    _copy_rows(conn, rows)
                elif rows:
                    conn.exec_driver_sql(self._insert_sql, rows)
        except SQLAlchemyError as exc:
            self.write_errors += 1
            log.warning("telemetry write of %d messages failed, will retry: %s", len(items), short_error(exc))
            return False
        self.rows_written += len(rows)
        self.batches_written += 1
        self.last_commit_monotonic = time.monotonic()
        self.last_batch_seconds = self.last_commit_monotonic - started
        if self.on_batch_seconds is not None:
            self.on_batch_seconds(self.last_batch_seconds)
        acks = [item.ack for item in items if item.ack is not None]
        if acks and self.on_acks is not None:
            self.on_acks(acks)
        return True

    def _rows_for(self, conn: Connection, items: list[TelemetryItem]) -> list[tuple[Any, ...]]:
        """Positional rows for the prepared INSERT; one timestamp conversion per message."""
        rows: list[tuple[Any, ...]] = []
        stamp = self._stamp
        fresh = self._record_keys(conn, items) if self._postgres else None
        for item in items:
            if item.dedup_key is not None:
                if fresh is None:
                    first = self._first_delivery(conn, item)
                else:  # the first item holding a new key takes it; a redelivery finds it taken
                    first = item.dedup_key in fresh or not item.redelivered
                    fresh.discard(item.dedup_key)
                if not first:
                    self.duplicates_skipped += 1
                    continue
            device_id = item.device_id
            if device_id is None:
                device_id = self._device_id(conn, item.uuid)
                if device_id is None:
                    self.rows_unknown_device += len(item.rows)
                    continue
            ts = stamp(item.received_at)
            rows.extend([(ts, device_id, data_type, key, value, unit)
                         for data_type, key, value, unit in item.rows])
        return rows

    def _first_delivery(self, conn: Connection, item: TelemetryItem) -> bool:
        """Record the message's idempotency key; False when a redelivery was already stored.

        Only redeliveries (DUP flag) are checked, so two identical readings sent
        within the same second both count; the key of every QoS 1 message is
        kept, in the same transaction as its rows.
        """
        if item.redelivered:
            seen = conn.exec_driver_sql(self._key_insert[1], (item.dedup_key,)).first()
            if seen is not None:
                return False
        conn.exec_driver_sql(self._key_insert[0], (item.dedup_key, self._stamp(item.received_at)))
        return True

    def _record_keys(self, conn: Connection, items: list[TelemetryItem]) -> set[str]:
        """Insert every idempotency key of the batch at once (PostgreSQL); return the new ones.

        One round trip instead of one per message; the unique key makes it safe
        when several gateways store redeliveries of the same message at once.
        """
        keyed = [item for item in items if item.dedup_key is not None]
        if not keyed:
            return set()
        result = conn.exec_driver_sql(_PG_KEYS_INSERT, (
            [item.dedup_key for item in keyed], [item.received_at for item in keyed]))
        return {key for (key,) in result}

    def _device_id(self, conn: Connection, uuid: str) -> int | None:
        cached = self._device_ids.get(uuid)
        if cached is not None:
            self._device_ids.move_to_end(uuid)
            return cached
        now = time.monotonic()
        if self._unknown.get(uuid, 0.0) > now:
            return None
        found = conn.execute(
            select(devices.c.id).where(devices.c.uuid == uuid, devices.c.is_active.is_not(False))
        ).scalar()
        if found is None:
            if len(self._unknown) >= DEVICE_ID_CACHE_SIZE:
                self._unknown = {u: t for u, t in self._unknown.items() if t > now}
                if len(self._unknown) >= DEVICE_ID_CACHE_SIZE:
                    self._unknown.clear()
            self._unknown[uuid] = now + UNKNOWN_DEVICE_TTL_S
            return None
        self.remember_device(uuid, int(found))
        return int(found)

    def remember_device(self, uuid: str, device_id: int) -> None:
        """Record a uuid -> id mapping (DB thread only)."""
        self._device_ids[uuid] = device_id
        self._device_ids.move_to_end(uuid)
        self._unknown.pop(uuid, None)
        while len(self._device_ids) > DEVICE_ID_CACHE_SIZE:
            self._device_ids.popitem(last=False)

    def stats(self) -> dict[str, Any]:
        return {
            "rows_written": self.rows_written,
            "batches_written": self.batches_written,
            "write_errors": self.write_errors,
            "rows_unknown_device": self.rows_unknown_device,
            "duplicates_skipped": self.duplicates_skipped,
            "ring": self.ring.stats(),
            "reliable_ring": self.reliable_ring.stats(),
        }
