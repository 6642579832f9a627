"""Telemetry ring buffer: order, overflow policies, counters, re-entrance and threads, per build."""

from __future__ import annotations

import gc
import sys
import threading
import time
import weakref

import pytest

#: Items the concurrency test pushes through a small ring.
CONCURRENT_ITEMS = 200_000
#: Upper bound for one threaded run; a deadlock fails the test instead of hanging it.
THREAD_TIMEOUT_S = 60.0
#: More list objects than CPython keeps for reuse (80 in 3.11).
LIST_FREE_LIST_SIZE = 200
#: Tries at catching the collector inside drain's allocation (about a third succeed).
COLLECTION_ATTEMPTS = 30
#: Switch threads this often during the threaded tests, to interleave them finely.
SWITCH_INTERVAL_S = 1e-5


def _counters_add_up(ring) -> None:
    stats = ring.stats()
    assert stats["pushed"] == stats["drained"] + stats["dropped"] + stats["depth"]
    assert stats["depth"] == len(ring) <= ring.capacity
    assert stats["high_water"] <= ring.capacity


def _run_threads(*targets) -> None:
    """Run each target in its own thread; fail (rather than hang) if one blocks."""
    errors = []

    def guarded(target):
        try:
            target()
        except BaseException as exc:  # re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(t,), daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + THREAD_TIMEOUT_S
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), "ring operation blocked (deadlock?)"
    if errors:
        raise errors[0]


@pytest.fixture
def fine_switching():
    previous = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    yield
    sys.setswitchinterval(previous)


def test_fifo_order(impl):
    ring = impl.Ring(8)
    for item in "abcde":
        assert ring.push(item) is True
    assert len(ring) == 5
    assert ring.drain(3) == ["a", "b", "c"]
    assert ring.drain(10) == ["d", "e"]
    assert ring.drain(10) == []
    assert len(ring) == 0


def test_wraps_around_many_times(impl):
    ring = impl.Ring(5)
    expected = []
    got = []
    for step in range(1, 200):
        for n in range(step % 4 + 1):
            item = (step, n)
            expected.append(item)
            assert ring.push(item)
        got += ring.drain(step % 3 + 2)
    got += ring.drain(100)
    # Never more than five items waited, so drop_oldest never fired.
    assert ring.dropped == 0
    assert got == expected
    _counters_add_up(ring)


def test_drop_oldest_keeps_the_newest(impl):
    ring = impl.Ring(3)
    for item in range(10):
        assert ring.push(item) is True
    assert ring.full
    assert ring.dropped == 7
    assert ring.rejected == 0
    assert ring.pushed == 10
    assert ring.drain(10) == [7, 8, 9]
    _counters_add_up(ring)


def test_reject_policy_keeps_the_oldest(impl):
    ring = impl.Ring(3, overflow="reject")
    results = [ring.push(item) for item in range(5)]
    assert results == [True, True, True, False, False]
    assert ring.rejected == 2
    assert ring.dropped == 0
    assert ring.pushed == 3
    assert ring.drain(10) == [0, 1, 2]
    assert ring.push(5) is True
    _counters_add_up(ring)


@pytest.mark.parametrize("overflow", ["drop_oldest", "reject"])
def test_offer_never_evicts(impl, overflow):
    ring = impl.Ring(2, overflow=overflow)
    assert ring.offer("a") and ring.offer("b")
    assert ring.offer("c") is False
    assert ring.rejected == 1
    assert ring.dropped == 0
    assert ring.drain(5) == ["a", "b"]
    assert ring.offer("d") is True
    _counters_add_up(ring)


def test_drain_zero_and_more_than_depth(impl):
    ring = impl.Ring(4)
    ring.push(1)
    ring.push(2)
    assert ring.drain(0) == []
    assert len(ring) == 2
    assert ring.drain(10**30) == [1, 2]  # far beyond any index-sized integer
    assert ring.drained == 2
    assert ring.drain(1) == []


def test_drain_accepts_integer_like_counts(impl):
    class Three:
        def __index__(self):
            return 3

    ring = impl.Ring(8)
    for item in range(6):
        ring.push(item)
    assert ring.drain(Three()) == [0, 1, 2]
    assert ring.drain(True) == [3]


def test_high_water_mark(impl):
    ring = impl.Ring(10)
    for item in range(4):
        ring.push(item)
    ring.drain(3)
    ring.push(4)
    assert ring.high_water == 4
    for item in range(20):
        ring.push(item)
    assert ring.high_water == 10
    ring.drain(10)
    assert ring.high_water == 10


def test_stats_and_repr(impl):
    ring = impl.Ring(3, overflow="reject")
    for item in range(5):
        ring.push(item)
    ring.drain(1)
    assert ring.stats() == {
        "depth": 2, "capacity": 3, "pushed": 3, "drained": 1,
        "dropped": 0, "rejected": 2, "high_water": 3,
    }
    assert list(ring.stats()) == [
        "depth", "capacity", "pushed", "drained", "dropped", "rejected", "high_water",
    ]
    assert repr(ring) == "Ring(capacity=3, overflow='reject', depth=2)"
    assert (ring.capacity, ring.overflow, ring.full) == (3, "reject", False)


def test_policy_and_capacity_are_normalised(impl):
    class Policy(str):
        pass

    class Size(int):
        pass

    ring = impl.Ring(Size(4), overflow=Policy("reject"))
    assert type(ring.overflow) is str and ring.overflow == "reject"
    assert type(ring.capacity) is int and ring.capacity == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0,), "capacity must be a positive integer, got 0"),
        ((-3,), "capacity must be a positive integer, got -3"),
        ((True,), "capacity must be a positive integer, got True"),
        ((2.0,), "capacity must be a positive integer, got 2.0"),
        (("8",), "capacity must be a positive integer, got '8'"),
        ((None,), "capacity must be a positive integer, got None"),
        ((4, "newest"), "overflow must be one of ('drop_oldest', 'reject'), got 'newest'"),
        ((4, None), "overflow must be one of ('drop_oldest', 'reject'), got None"),
    ],
)
def test_invalid_construction(impl, args, message):
    with pytest.raises(ValueError) as error:
        impl.Ring(*args)
    assert str(error.value) == message


@pytest.mark.parametrize(
    ("count", "error", "message"),
    [
        (-1, ValueError, "max_items must be >= 0, got -1"),
        (-(10**30), ValueError, f"max_items must be >= 0, got {-(10**30)}"),
        (2.5, TypeError, "'float' object cannot be interpreted as an integer"),
        (1.0, TypeError, "'float' object cannot be interpreted as an integer"),
        ("5", TypeError, "'str' object cannot be interpreted as an integer"),
        (None, TypeError, "'NoneType' object cannot be interpreted as an integer"),
    ],
)
def test_invalid_drain_counts(impl, count, error, message):
    ring = impl.Ring(4)
    ring.push("kept")
    with pytest.raises(error) as raised:
        ring.drain(count)
    assert str(raised.value) == message
    assert ring.drain(1) == ["kept"]  # nothing changed


def test_huge_capacity_fails_like_a_huge_list(impl):
    with pytest.raises((MemoryError, OverflowError)):
        impl.Ring(2**62)
    with pytest.raises(OverflowError):
        impl.Ring(2**64)


def test_uninitialised_ring_refuses_work(impl):
    ring = impl.Ring.__new__(impl.Ring)
    with pytest.raises((AttributeError, RuntimeError)):
        ring.push(1)


def test_evicted_item_may_push_while_released(impl):
    """An evicted item's ``__del__`` that pushes into the ring sees a consistent ring."""
    ring = impl.Ring(2)
    finalised = []

    class Echo:
        def __init__(self, name):
            self.name = name

        def __del__(self):
            finalised.append(self.name)
            ring.push(f"echo-{self.name}")

    def scenario():
        ring.push(Echo("a"))
        ring.push("b")
        ring.push("c")  # evicts a, whose echo then evicts b
        ring.push(Echo("d"))  # evicts c
        ring.push("e")  # evicts echo-a
        ring.push("f")  # evicts d, whose echo then evicts e

    _run_threads(scenario)
    assert finalised == ["a", "d"]
    assert ring.drain(10) == ["f", "echo-d"]
    assert ring.pushed == 8
    assert ring.dropped == 6
    _counters_add_up(ring)


def test_evicted_item_may_drain_while_released(impl):
    ring = impl.Ring(3)
    seen = []

    class Drainer:
        def __del__(self):
            seen.append(ring.drain(10))

    def scenario():
        ring.push(Drainer())
        ring.push(1)
        ring.push(2)
        ring.push(3)  # evicts the drainer, which empties the ring

    _run_threads(scenario)
    assert seen == [[1, 2, 3]]
    assert len(ring) == 0
    assert ring.push(4) and ring.drain(5) == [4]
    _counters_add_up(ring)


class _Box:
    """A fresh object that the collector counts (no free list)."""


def _drain_during_collection(ring_class, allocations: int) -> tuple[list, list]:
    """Drain 5 of 6 items while a collector callback may drain 4 and push one.

    ``allocations`` extra objects shift the collector's counter, so that some
    attempts have it start exactly on drain's allocation.
    """
    ring = ring_class(8)
    for item in range(6):
        ring.push(item)
    armed = []
    stolen = []

    def steal(phase, info):
        if phase == "start" and armed:
            armed.clear()
            stolen.append(ring.drain(4))
            ring.push("late")

    gc.callbacks.append(steal)
    try:
        # Empty the free list of list objects, so that drain's result list is
        # a fresh allocation, one the collector counts and may start on.
        hold = [[] for _ in range(LIST_FREE_LIST_SIZE)]
        for _ in range(allocations):  # no temporary list: it would refill the free list
            hold.append(_Box())
        armed.append(True)
        batch = ring.drain(5)
        armed.clear()
    finally:
        gc.callbacks.remove(steal)
    del hold
    _counters_add_up(ring)
    return batch, stolen


@pytest.mark.skipif(
    sys.version_info >= (3, 12), reason="the collector no longer starts inside allocations"
)
def test_collector_running_inside_drain_cannot_corrupt_it(impl):
    """The garbage collector may start in drain's allocation; callbacks it runs may use the ring."""
    outcomes = []

    def attempts():
        for attempt in range(COLLECTION_ATTEMPTS):
            outcomes.append(_drain_during_collection(impl.Ring, attempt % 3))

    threshold = gc.get_threshold()
    gc.set_threshold(1)  # collect on nearly every allocation
    try:
        _run_threads(attempts)  # the pure twin would block if it allocated under its lock
    finally:
        gc.set_threshold(*threshold)
    for batch, stolen in outcomes:
        if stolen:
            assert (batch, stolen) == ([4, 5, "late"], [[0, 1, 2, 3]])
        else:
            assert batch == [0, 1, 2, 3, 4]
    assert any(stolen for _, stolen in outcomes), "the collector never started inside drain"


def test_items_referencing_the_ring_are_collected(impl):
    class Item:
        pass

    ring = impl.Ring(4)
    item = Item()
    item.ring = ring
    ring.push(item)
    alive = weakref.ref(item)
    del ring, item
    gc.collect()
    assert alive() is None


@pytest.mark.parametrize("overflow", ["drop_oldest", "reject"])
def test_one_producer_one_consumer(impl, overflow, fine_switching):
    """Sequence numbers cross a small ring: none lost silently, none repeated, order kept."""
    ring = impl.Ring(512, overflow=overflow)
    produced = threading.Event()
    received = []
    refused = []

    def produce():
        for seq in range(CONCURRENT_ITEMS):
            if not ring.push(seq):
                refused.append(seq)
        produced.set()

    def consume():
        while not produced.is_set() or len(ring):
            batch = ring.drain(100)
            if batch:
                received.extend(batch)
            else:
                time.sleep(0)

    _run_threads(produce, consume)
    assert all(a < b for a, b in zip(received, received[1:])), "order broken or item repeated"
    assert len(received) + ring.dropped + len(refused) == CONCURRENT_ITEMS
    assert ring.rejected == len(refused)
    assert ring.pushed == CONCURRENT_ITEMS - len(refused) == ring.drained + ring.dropped
    assert set(received).isdisjoint(refused)
    _counters_add_up(ring)


def test_back_pressure_loses_nothing(impl, fine_switching):
    """With ``offer`` and a retrying producer every sequence number arrives, in order."""
    ring = impl.Ring(256)
    produced = threading.Event()
    received = []

    def produce():
        for seq in range(CONCURRENT_ITEMS):
            while not ring.offer(seq):
                time.sleep(0)
        produced.set()

    def consume():
        while not produced.is_set() or len(ring):
            batch = ring.drain(64)
            if batch:
                received.extend(batch)
            else:
                time.sleep(0)

    _run_threads(produce, consume)
    assert received == list(range(CONCURRENT_ITEMS))
    assert ring.dropped == 0 and ring.drained == CONCURRENT_ITEMS
    assert ring.pushed == CONCURRENT_ITEMS
    _counters_add_up(ring)


def test_stats_snapshot_is_consistent_under_load(impl, fine_switching):
    ring = impl.Ring(64)
    stop = threading.Event()

    def produce():
        seq = 0
        while not stop.is_set():
            ring.push(seq)
            seq += 1
            if seq % 50 == 0:
                ring.drain(30)

    worker = threading.Thread(target=produce, daemon=True)
    worker.start()
    try:
        for _ in range(2000):
            stats = ring.stats()
            assert stats["pushed"] == stats["drained"] + stats["dropped"] + stats["depth"]
    finally:
        stop.set()
        worker.join(THREAD_TIMEOUT_S)
    assert not worker.is_alive()


# Guarantees that only the compiled twin has to give.


def test_compiled_ring_refuses_to_load_without_the_gil(monkeypatch):
    compiled = pytest.importorskip("autocore._fast._ring")
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: False, raising=False)
    with pytest.raises(ImportError, match="relies on the GIL"):
        compiled._require_gil()
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: True, raising=False)
    compiled._require_gil()


def test_compiled_ring_survives_tampered_storage():
    compiled = pytest.importorskip("autocore._fast._ring")
    ring = compiled.Ring(4)
    ring.push("a")
    (slots,) = [ref for ref in gc.get_referents(ring) if isinstance(ref, list)]
    slots.clear()
    with pytest.raises(RuntimeError, match="cleared or resized"):
        ring.push("b")
    with pytest.raises(RuntimeError, match="cleared or resized"):
        ring.drain(1)
