"""Notice writes to the SQLite file by other processes (Linux inotify), without polling.

The Config App signals a new command only by committing a row. Polling the
database for it at 50 Hz costs about 1 % of a core on a Pi-class machine even
when nothing happens; inotify costs nothing until a write lands. Where inotify
is unavailable, :func:`start_watch` returns None and callers poll instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import select
import struct
import sys
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

_IN_MODIFY = 0x00000002
_IN_CLOSE_WRITE = 0x00000008
_IN_MOVED_TO = 0x00000080
_IN_CREATE = 0x00000100
_EVENT_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len
_READ_BYTES = 64 * 1024
#: Pause after each wake-up, s: the gateway's own commits write the WAL many times
#: each (a wake-up per write cost 15 us a message at 500 msg/s); the events of
#: the pause are read at once. It adds at most this to a command's pick-up.
COALESCE_S = 0.005


class FileWatch:
    """A thread that calls ``on_change()`` whenever a file named ``stem*`` in ``folder`` is written."""

    def __init__(self, fd: int, folder: Path, stem: str, on_change: Callable[[], None]) -> None:
        self._fd = fd
        self._stem = os.fsencode(stem)
        self._on_change = on_change
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="autocore-filewatch", daemon=True)
        self.folder = folder
        self.events = 0

    def start(self) -> FileWatch:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while True:
                ready, _, _ = select.select([self._fd, self._stop_r], [], [])
                if self._stop_r in ready:
                    return
                data = os.read(self._fd, _READ_BYTES)
                if self._matches(data):
                    self.events += 1
                    self._on_change()
                if select.select([self._stop_r], [], [], COALESCE_S)[0]:
                    return
        except OSError as exc:  # watch removed (folder deleted) or fd closed
            log.warning("file watch on %s ended: %s", self.folder, exc)
        finally:
            os.close(self._fd)

    def _matches(self, data: bytes) -> bool:
        offset = 0
        while offset + _EVENT_HEADER.size <= len(data):
            _wd, _mask, _cookie, length = _EVENT_HEADER.unpack_from(data, offset)
            name = data[offset + _EVENT_HEADER.size: offset + _EVENT_HEADER.size + length].rstrip(b"\0")
            if name.startswith(self._stem):
                return True
            offset += _EVENT_HEADER.size + length
        return False

    def stop(self) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join(2.0)
        os.close(self._stop_r)
        os.close(self._stop_w)


def start_watch(path: Path, on_change: Callable[[], None]) -> FileWatch | None:
    """Watch ``path`` and its ``-wal``/``-journal`` siblings; None where inotify is unavailable."""
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        fd = libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK)
    except (OSError, AttributeError):
        return None
    if fd < 0:
        return None
    folder = path.resolve().parent
    mask = _IN_MODIFY | _IN_CLOSE_WRITE | _IN_MOVED_TO | _IN_CREATE
    if libc.inotify_add_watch(fd, os.fsencode(str(folder)), mask) < 0:
        os.close(fd)
        return None
    return FileWatch(fd, folder, path.name, on_change).start()
