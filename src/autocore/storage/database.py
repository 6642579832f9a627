"""The database thread: batched telemetry commits and every other database job, off the event loop.

The event loop never waits on the database. Telemetry goes into ring buffers
that this thread drains and commits when :class:`~autocore.storage.policy.CommitPolicy`
says so. Other work (device upserts, status changes, event rows) arrives as
jobs and runs on the same thread, so SQLite sees one writer per process and
the Config App's writes only wait on our short transactions.

If the thread ever dies, ``failure`` says why and ``on_failure`` is called, so
the gateway stops instead of staying up storing nothing.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from autocore.errors import StorageError
from autocore.ringbuffer import Ring
from autocore.storage.changes import IDLE_WAIT_S, ChangeFeed
from autocore.storage.engine import is_postgres, short_error
from autocore.storage.filewatch import start_watch
from autocore.storage.pglisten import start_listen
from autocore.storage.policy import MAX_BATCH_MESSAGES, WRITE_INTERVAL_S, CommitPolicy
from autocore.storage.telemetry import BatchResult, Rejected, TelemetryItem, TelemetryWriter
from autocore.throttle import Throttle

log = logging.getLogger(__name__)

#: Default capacity of the QoS 1/2 ring (the gateway sizes it from the receive maximum).
RELIABLE_CAPACITY = 4096
#: Pause after a failed write before retrying, doubled up to the maximum.
RETRY_MIN_S = 0.1
RETRY_MAX_S = 5.0
#: A refused message is logged at most once per device and reason per window, s.
REJECT_LOG_WINDOW_S = 60.0
#: Default receive maximum: the broker's in-flight window of QoS 1/2 messages.
DEFAULT_ACK_WINDOW = 100


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
                 reliable_ring: Any = None, write_interval_s: float = WRITE_INTERVAL_S,
                 ack_window: int = DEFAULT_ACK_WINDOW) -> None:
        self.engine = engine
        self.ring = ring
        self.reliable_ring = reliable_ring if reliable_ring is not None else Ring(RELIABLE_CAPACITY, "reject")
        # Reading stops at a quarter of the reliable ring: the rest absorbs what the
        # client has already read (one 64 KiB chunk holds up to ~1,100 small messages).
        capacity = self.reliable_ring.stats()["capacity"]
        self._reliable_high = max(1, capacity // 4)
        self._reliable_low = capacity // 8
        self.policy = CommitPolicy.for_window(ack_window, write_interval_s=write_interval_s,
                                              flush_interval_s=flush_interval_s, batch_rows=batch_rows)
        self._jobs: deque[Job] = deque()  # append/popleft are thread-safe
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._sqlite = engine.dialect.name == "sqlite"
        self._postgres = is_postgres(engine)
        self.writer = TelemetryWriter(engine)
        # The thread's one connection: every write, job and poll uses it, so on
        # SQLite its ``PRAGMA data_version`` changes only when another process commits.
        self._conn: Connection | None = None
        self.changes = ChangeFeed(self._sqlite, self._connection, self._drop_connection, self._wake.set)
        self._watch: Any = None  # FileWatch (SQLite) or ListenWatch (PostgreSQL): has stop()
        # Set by the thread while a push may change its next decision; the loop
        # thread then wakes it. Pushes past the urgency thresholds always wake it.
        self._wake_on_push = False
        self._acks_pending = 0  # acknowledgements held in the thread's current batch
        self._reject_log = Throttle(REJECT_LOG_WINDOW_S)
        # Counters (written by the DB thread, read anywhere).
        self.rows_written = 0
        self.batches_written = 0
        self.write_errors = 0
        self.rows_unknown_device = 0
        self.duplicates_skipped = 0
        self.messages_rejected = 0
        self.job_retries = 0
        self._job_retry_s = RETRY_MIN_S
        self.last_commit_monotonic = 0.0
        self.last_batch_seconds = 0.0
        #: Why the thread died, if it did (it never should).
        self.failure: BaseException | None = None
        #: Called on the DB thread with the ack tokens of each committed batch.
        self.on_acks: Callable[[list[Any]], None] | None = None
        #: Called on the DB thread with the duration of each committed batch, s (metrics).
        self.on_batch_seconds: Callable[[float], None] | None = None
        #: Called on the DB thread with (uuid, reason) of each message the database refused.
        self.on_rejected: Callable[[list[tuple[str, str]]], None] | None = None
        #: Called on the DB thread, once, if the thread dies.
        self.on_failure: Callable[[BaseException], None] | None = None

    @property
    def write_interval_s(self) -> float:
        return self.policy.write_interval_s

    # -- event-loop side ---------------------------------------------------

    def push_telemetry(self, item: TelemetryItem) -> bool:
        """Queue a telemetry message; False when the ring refused it."""
        stored = bool(self.ring.push(item))
        if (self._wake_on_push or len(self.ring) >= self.policy.max_queued) and not self._wake.is_set():
            self._wake.set()  # set() takes the event's lock even when it is set already: ~1 us a message
        return stored

    def push_reliable(self, item: TelemetryItem) -> bool:
        """Queue a QoS 1/2 telemetry message without ever evicting; False when full (not acked)."""
        stored = bool(self.reliable_ring.offer(item))
        if (self._wake_on_push or len(self.reliable_ring) + self._acks_pending >= self.policy.ack_threshold) \
                and not self._wake.is_set():
            self._wake.set()
        return stored

    def reliable_backlog_high(self) -> bool:
        """QoS 1/2 messages wait past the high-water mark: stop reading from the broker."""
        return len(self.reliable_ring) + self._acks_pending >= self._reliable_high

    def reliable_backlog_low(self) -> bool:
        """The backlog fell to the low-water mark: reading may resume."""
        return len(self.reliable_ring) + self._acks_pending <= self._reliable_low

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
        if self.failure is not None:
            future.set_exception(StorageError(f"the database thread has stopped: {self.failure!r}"))
            return future
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
        if self.failure is not None:
            future.set_exception(StorageError(f"the database thread has stopped: {self.failure!r}"))
            return future
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
        self.changes.add_poller(fn, interval_s)

    def request_poll(self) -> None:
        """Run the pollers soon: another process (or this one) changed what they look at."""
        self.changes.request_poll()

    def remember_device(self, uuid: str, device_id: int) -> None:
        """Record a uuid -> id mapping (DB thread only)."""
        self.writer.remember_device(uuid, device_id)

    @property
    def alive(self) -> bool:
        """The thread runs (or has not started yet) and has not failed."""
        return self.failure is None and (self._thread is None or self._thread.is_alive()
                                         or self._stopping.is_set())

    # -- lifecycle ----------------------------------------------------------

    def start(self, notify_channel: str | None = None) -> None:
        """Start the thread; changes are noticed by inotify (SQLite) or LISTEN ``notify_channel``."""
        if self._sqlite and self.engine.url.database:
            self._watch = start_watch(Path(self.engine.url.database), self.changes.file_changed)
        elif self._postgres and notify_channel:
            self._watch = start_listen(self.engine.url, notify_channel, self.changes.request_poll)
        self.changes.watched = self._watch is not None
        self._thread = threading.Thread(target=self._main, name="autocore-db", daemon=True)
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

    def _main(self) -> None:
        """Run the thread; a death of any cause is recorded and reported, never silent."""
        try:
            self._run()
        except BaseException as exc:
            self.failure = exc
            log.critical("the database thread died: %r; nothing more can be stored", exc, exc_info=exc)
            self._drop_connection()  # its connection (and the write lock it may hold) goes with it
            self._fail_queued_jobs(exc)
            if self.on_failure is not None:
                try:
                    self.on_failure(exc)
                except Exception:
                    log.exception("reporting the database thread's death failed")

    def _run(self) -> None:
        """Commit telemetry when the policy says so, and run jobs and pollers in between.

        Rows are taken from the rings only when a commit may follow, so a busy
        ring never wakes the thread per message; the loop thread wakes it early
        only when a push crosses an urgency threshold (acks owed, queue length)
        or when the thread asked for it (fewer rows than the batch size).
        """
        policy = self.policy
        pending: list[TelemetryItem] = []
        pending_rows = 0
        oldest = 0.0
        last_commit = 0.0
        retry_s = RETRY_MIN_S
        while True:
            self._run_jobs()
            next_poll = self.changes.run()
            stopping = self._stopping.is_set()
            now = time.monotonic()
            queued = max(len(self.ring), len(self.reliable_ring))
            urgent = policy.urgent(pending_rows, self._acks_pending + len(self.reliable_ring), queued, stopping)
            spaced = now - last_commit >= policy.write_interval_s
            if (urgent or spaced) and pending_rows < policy.max_rows:
                items = self.reliable_ring.drain(MAX_BATCH_MESSAGES) + self.ring.drain(MAX_BATCH_MESSAGES)
                if items:
                    if not pending:
                        oldest = now
                    pending.extend(items)
                    pending_rows += sum(len(item.rows) for item in items)
                    self._acks_pending += sum(1 for item in items if item.ack is not None)
            if pending and (urgent or policy.due(now - last_commit, now - oldest, pending_rows)):
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
            self._sleep(pending_rows, oldest, last_commit, now, next_poll)

    def _sleep(self, pending_rows: int, oldest: float, last_commit: float, now: float, next_poll: float) -> None:
        """Wait for the next reason to act: the write interval, the oldest row's age, a push, a poll."""
        policy = self.policy
        spacing_ends = last_commit + policy.write_interval_s
        if pending_rows >= policy.batch_rows or self._queued():
            # Rows enough, or rows left in the rings: only the write interval holds them back.
            deadline, wake_on_push = spacing_ends, False
        elif pending_rows:  # below the batch size: the next push or the age limit decides
            deadline, wake_on_push = max(spacing_ends, oldest + policy.flush_interval_s), True
        else:
            deadline, wake_on_push = now + IDLE_WAIT_S, True
        self._wake_on_push = wake_on_push
        if wake_on_push and self._queued():  # a push raced the decision
            self._wake_on_push = False
            return
        self._wake.wait(max(0.0, min(deadline, next_poll) - now))
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
            log.error("database job %s failed: %s", job.fn.__name__, short_error(exc))
        else:
            self._resolve(job, None, exc)

    def _fail_queued_jobs(self, exc: BaseException) -> None:
        error = StorageError(f"the database thread has stopped: {exc!r}")
        while self._jobs:
            job = self._jobs.popleft()
            if job.future is not None:
                self._resolve(job, None, error)

    def _connection(self) -> Connection:
        if self._conn is None:
            self._conn = self.engine.connect()
            self.changes.connection_replaced()
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
        except Exception:
            # A driver error outside SQLAlchemy (COPY on the raw connection) leaves
            # the connection in an unknown state; begin() has rolled back already.
            self._drop_connection()
            raise

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # closing a broken connection may fail; it is gone either way
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
        """Commit a batch; False (nothing committed, retry later) when the database failed.

        Messages the database refuses for good are left out of the commit and
        acknowledged with it: the broker must not deliver them again and again.
        """
        started = time.monotonic()
        try:
            result = self.writer.write(self._transaction, items)
        except Exception as exc:
            self.write_errors += 1
            log.warning("telemetry write of %d messages failed, will retry: %s", len(items), short_error(exc))
            return False
        self._count(result)
        self.last_commit_monotonic = time.monotonic()
        self.last_batch_seconds = self.last_commit_monotonic - started
        if self.on_batch_seconds is not None:
            self.on_batch_seconds(self.last_batch_seconds)
        acks = [item.ack for item in items if item.ack is not None]
        # No longer owed once committed, and before the loop thread sees them: it
        # resumes a paused reader only if the backlog is low when the acks arrive.
        self._acks_pending = 0
        if acks and self.on_acks is not None:
            self.on_acks(acks)
        return True

    def _count(self, result: BatchResult) -> None:
        self.rows_written += result.rows
        self.batches_written += 1
        self.duplicates_skipped += result.duplicates
        self.rows_unknown_device += result.unknown_rows
        if result.rejected:
            self.messages_rejected += len(result.rejected)
            for rejected in result.rejected:
                self._log_rejected(rejected)
            if self.on_rejected is not None:
                self.on_rejected([(r.item.uuid, r.reason) for r in result.rejected])

    def _log_rejected(self, rejected: Rejected) -> None:
        if self._reject_log.allow((rejected.item.uuid, rejected.reason)):
            log.warning("device=%s telemetry message refused by the database (%s), the rest of its batch "
                        "stored: %s", rejected.item.uuid, rejected.reason, rejected.error)

    def stats(self) -> dict[str, Any]:
        return {
            "rows_written": self.rows_written,
            "batches_written": self.batches_written,
            "write_errors": self.write_errors,
            "rows_unknown_device": self.rows_unknown_device,
            "duplicates_skipped": self.duplicates_skipped,
            "messages_rejected": self.messages_rejected,
            "alive": self.alive,
            "ring": self.ring.stats(),
            "reliable_ring": self.reliable_ring.stats(),
        }
