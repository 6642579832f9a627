"""The QoS 0 telemetry queue holds at most its rows (memory) and its messages, dropping the oldest."""

from __future__ import annotations

import threading
from typing import Any, NamedTuple

import pytest

from autocore import _fast
from autocore.storage.buffer import TelemetryBuffer, rows_for


class Item(NamedTuple):
    n: int
    rows: list[tuple[str, str, str, None]]


def item(n: int, rows: int = 12) -> Item:
    return Item(n, [("analog", f"k{r}", str(n), None) for r in range(rows)])


def buffer(impl: _fast.Implementation, capacity: int, max_rows: int) -> TelemetryBuffer:
    return TelemetryBuffer(impl.Ring(capacity, "drop_oldest"), max_rows)


def test_rows_bound_drops_the_oldest_messages(impl: _fast.Implementation) -> None:
    queue = buffer(impl, 1000, 50)
    for n in range(10):
        assert queue.push(item(n))
    assert len(queue) == 4 and queue.rows == 48  # a fifth message of 12 rows would pass 50
    stats = queue.stats()
    assert stats["dropped"] == 6 and stats["rows"] == 48 and stats["max_rows"] == 50
    assert [i.n for i in queue.drain(100)] == [6, 7, 8, 9]
    assert queue.rows == 0


def test_message_bound_keeps_the_row_count_exact(impl: _fast.Implementation) -> None:
    queue = buffer(impl, 5, 10_000)
    for n in range(12):
        queue.push(item(n, rows=n % 3 + 1))
    held = queue.drain(100)
    assert [i.n for i in held] == [7, 8, 9, 10, 11]
    assert queue.rows == 0 and queue.stats()["dropped"] == 7


def test_a_message_larger_than_the_bound_is_still_kept_alone(impl: _fast.Implementation) -> None:
    queue = buffer(impl, 100, 10)
    queue.push(item(1, rows=4))
    queue.push(item(2, rows=30))
    assert [i.n for i in queue.drain(10)] == [2]


def test_counts_stay_exact_with_a_concurrent_drainer(impl: _fast.Implementation) -> None:
    queue = buffer(impl, 64, 300)
    drained: list[Any] = []
    done = threading.Event()

    def drainer() -> None:
        while not done.is_set() or len(queue):
            drained.extend(queue.drain(7))

    thread = threading.Thread(target=drainer)
    thread.start()
    for n in range(20_000):
        queue.push(item(n, rows=n % 5 + 1))
        assert queue.rows <= 300 + 5  # the bound, give or take a message the drainer is counting
    done.set()
    thread.join()
    stats = queue.stats()
    assert queue.rows == 0
    assert len(drained) + stats["dropped"] == 20_000
    assert [i.n for i in drained] == sorted(i.n for i in drained)  # oldest first, none twice


def test_megabytes_to_rows() -> None:
    assert rows_for(4) == 20_000
    assert rows_for(0) == 64  # never less than a message's worth


@pytest.mark.parametrize("megabytes", ["0.5", "4"])
def test_setting(megabytes: str) -> None:
    from autocore.config import Settings

    settings = Settings.from_env(environ={"AUTOCORE_BUFFER_MB": megabytes}, env_file=None)
    assert settings.buffer_mb == float(megabytes)
