"""Noticing what other processes write: pollers run after a change is announced, rarely otherwise.

The Config App asks for a command only by committing a row. On SQLite an
inotify watch (:mod:`autocore.storage.filewatch`) sees every write to the file,
the gateway's own included; ``PRAGMA data_version`` then tells whether another
process committed, so the gateway's own commits never run a poll. On
PostgreSQL a ``LISTEN`` (:mod:`autocore.storage.pglisten`) announces new rows.
Without either, pollers run at their own interval.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from autocore.storage.engine import short_error

log = logging.getLogger(__name__)

#: Polls owed at start and after a NOTIFY or an explicit request: one now, one a
#: poll interval later for a writer that had not committed yet.
POLLS_PER_CHANGE = 2
#: Looks for another process's commit after each write the file watch reports:
#: at once, RECHECK_SOON_S later and a recheck interval later (see ``file_changed``).
#: A look costs a few microseconds; each one that finds a commit runs the pollers.
CHECKS_PER_CHANGE = 3
RECHECK_SOON_S = 0.002
#: The last look after a write, s: a large transaction of another process commits within it.
RECHECK_LATE_S = 0.02
#: With a watch, pollers still run this often in case a change went unseen.
WATCHED_POLL_S = 10.0
#: Longest sleep of an idle database thread, s.
IDLE_WAIT_S = 1.0


class ChangeFeed:
    """Decides when the database thread runs its pollers; owned by that thread.

    ``file_changed`` and ``request_poll`` may be called from any thread; they
    only set counters and call ``wake``.
    """

    def __init__(self, sqlite: bool, connection: Callable[[], Connection],
                 drop_connection: Callable[[], None], wake: Callable[[], None]) -> None:
        self._sqlite = sqlite
        self._connection = connection
        self._drop_connection = drop_connection
        self._wake = wake
        self.watched = False  # a file watch or LISTEN announces changes
        self._pollers: list[list[Any]] = []  # [fn, interval_s, last run, seconds it asked for]
        self._data_version: int | None = None
        # Polls owed now (at start, after a NOTIFY or an explicit request).
        self._polls_owed = POLLS_PER_CHANGE
        # Looks owed after the file watch saw a write (set by the watch thread): the
        # gateway's own commits write the file too, and polling after each of them
        # was a fifth of the database thread's work under load. Several: the first
        # write is seen before the writer has committed, so later looks catch the
        # commit (most within 2 ms, a large transaction within RECHECK_LATE_S).
        self._checks_owed = 0
        self._next_check = 0.0

    def add_poller(self, fn: Callable[[Connection], float | None], interval_s: float) -> None:
        self._pollers.append([fn, interval_s, 0.0, None])

    def request_poll(self) -> None:
        """Run the pollers soon: another process (or this one) changed what they look at."""
        self._polls_owed = POLLS_PER_CHANGE
        self._wake()

    def file_changed(self) -> None:
        """The SQLite file was written, by us or by another process (watch thread)."""
        self._checks_owed = CHECKS_PER_CHANGE
        self._next_check = 0.0
        self._wake()

    def connection_replaced(self) -> None:
        self._data_version = None  # a new connection: anything may have changed

    def run(self) -> float:
        """Run the pollers that are due; return (monotonic) when the next one is.

        A poller may return a number of seconds: it then runs again that soon
        even if nothing changed (it is waiting for time to pass, e.g. an expiry).
        """
        now = time.monotonic()
        next_due = now + IDLE_WAIT_S
        if self._checks_owed and now >= self._next_check:
            self._checks_owed -= 1
            soon = self._checks_owed == CHECKS_PER_CHANGE - 1
            self._next_check = now + (RECHECK_SOON_S if soon else RECHECK_LATE_S)
            if self._foreign_commit():
                self._polls_owed = max(self._polls_owed, 1)
        if self._checks_owed:
            next_due = min(next_due, self._next_check)
        changed = self._polls_owed > 0 or not self.watched
        for poller in self._pollers:
            fn, interval_s, last, asked = poller
            quiet_s = WATCHED_POLL_S if asked is None else max(interval_s, min(asked, WATCHED_POLL_S))
            due = last + (interval_s if changed else quiet_s)
            if due <= now:
                self._polls_owed = max(0, self._polls_owed - 1)
                wanted = self._poll(fn, interval_s)
                poller[2] = now
                poller[3] = asked = float(wanted) if isinstance(wanted, (int, float)) else None
                quiet_s = WATCHED_POLL_S if asked is None else max(interval_s, min(asked, WATCHED_POLL_S))
                owed = not self.watched or self._polls_owed > 0
                due = now + (interval_s if owed else quiet_s)
            next_due = min(next_due, due)
        return next_due

    def _poll(self, fn: Callable[[Connection], Any], interval_s: float) -> Any:
        try:
            conn = self._connection()
            wanted = fn(conn)
            conn.rollback()  # never keep a read snapshot open
            return wanted
        except SQLAlchemyError as exc:
            log.warning("database poll %s failed: %s", getattr(fn, "__name__", fn), short_error(exc))
        except Exception:  # a bug in a poller must not end the thread
            log.exception("database poll %s failed", getattr(fn, "__name__", fn))
        self._drop_connection()
        return interval_s

    def _foreign_commit(self) -> bool:
        """Whether another process may have committed since the last look.

        SQLite's ``data_version`` changes for commits made on any other
        connection, never for the connection's own, and the database thread
        commits only through its one connection. Elsewhere (and on any doubt)
        the answer is yes.
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
