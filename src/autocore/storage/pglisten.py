"""Notice new command rows in PostgreSQL with LISTEN/NOTIFY instead of polling.

The PostgreSQL twin of :mod:`autocore.storage.filewatch`: a trigger on
``gateway_commands`` (see :mod:`autocore.schema`) notifies a channel whenever
a row becomes pending, and this thread, holding its own autocommit connection,
turns each notification into ``on_change()``. After every (re)connect it calls
``on_change()`` once, so rows written while nobody listened are found too.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

#: How long one wait for notifications lasts before the stop flag is checked, s.
WAIT_S = 0.5
#: Pause before reconnecting after the listening connection failed, s (doubled up to MAX).
RETRY_MIN_S = 0.5
RETRY_MAX_S = 10.0


class ListenWatch:
    """A thread that LISTENs on ``channel`` and calls ``on_change()`` for each notification."""

    def __init__(self, conninfo: str, channel: str, on_change: Callable[[], None]) -> None:
        self._conninfo = conninfo
        self._channel = channel
        self._on_change = on_change
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="autocore-pglisten", daemon=True)
        self.notifications = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(WAIT_S * 4)

    def _run(self) -> None:
        import psycopg
        from psycopg import sql

        retry_s = RETRY_MIN_S
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                    retry_s = RETRY_MIN_S
                    self._on_change()
                    while not self._stopping.is_set():
                        for _notification in conn.notifies(timeout=WAIT_S):
                            self.notifications += 1
                            self._on_change()
            except psycopg.Error as exc:
                if self._stopping.is_set():
                    return
                log.warning("LISTEN %s failed, retrying in %.1fs: %s", self._channel, retry_s, exc)
                self._stopping.wait(retry_s)
                retry_s = min(retry_s * 2, RETRY_MAX_S)


def start_listen(url: Any, channel: str, on_change: Callable[[], None]) -> ListenWatch:
    """Listen on ``channel`` of the database at SQLAlchemy ``url`` (a psycopg connection of its own)."""
    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    watch = ListenWatch(conninfo, channel, on_change)
    watch.start()
    return watch
