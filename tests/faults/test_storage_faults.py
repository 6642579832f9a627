"""Storage faults for real: a full filesystem and an unwritable database file under QoS 1 load.

Both faults are made genuinely, not mocked:

- **disk full**: the database lives on a private, small tmpfs (``mount -t tmpfs
  -o size=...``) that the test fills with a filler file, so SQLite's own writes
  fail with SQLITE_FULL ("database or disk is full"). ``PRAGMA max_page_count``
  would not do: it limits only the connection that sets it, not the gateway's.
  Mounting needs root (CAP_SYS_ADMIN); without it the test is skipped.
- **unwritable file**: ``chattr +i`` on the database and its ``-wal`` file. The
  tests run as root, for whom ``chmod`` changes nothing, but the immutable flag
  also stops root, and it applies to descriptors already open, so the gateway's
  pooled connections fail (SQLITE_IOERR) as they would on a file gone read-only.
  The ``-shm`` file is left alone: SQLite maps it into memory, and a mapped
  immutable file raises SIGBUS, which is no database fault but a test artefact.

The first two tests assert that the gateway stays up, that the failure shows in
the log and in ``autocore_db_write_errors_total``, and that every QoS 1 message
published during the fault is stored exactly once after the fault is removed.
The third restarts the gateway while the file is unwritable: SQLite then opens
it read-only, and the gateway must drop that connection once the file is
writable again instead of failing for good.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from autocore.broker import find_free_port
from tests.faults.test_delivery import Publisher, numbered, stored_sequence
from tests.fixtures.services import fixture_bytes, wait_for
from tests.test_operations import scrape, value

# Build-independent (storage, client, broker): the pure and 32-bit ARM legs of
# ./run.sh test skip them with -m 'not slow'.
pytestmark = pytest.mark.slow

#: Size of the private filesystem: the installed schema takes about 300 KiB.
SMALL_DISK = "8m"
#: Where the test device publishes.
TOPIC = "autocore/devices/esp32-can-001/telemetry"
#: QoS 1 messages published while the fault lasts.
MESSAGES = 200
#: How long the tests wait for the writes to resume once the fault is gone, s
#: (the writer backs off up to 5 s between attempts).
RECOVERY_WAIT_S = 40.0


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=30)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A private tmpfs of SMALL_DISK, unmounted at the end (lazily if something still holds it)."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = run("mount", "-t", "tmpfs", "-o", f"size={SMALL_DISK},mode=0755", "tmpfs", str(folder))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield folder
    if run("umount", str(folder)).returncode != 0:
        run("umount", "-l", str(folder))


def fill(folder: Path) -> Path:
    """Write a filler file until the filesystem has no block left."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as out:
        for chunk in (1 << 20, 1 << 16, 1 << 12):  # big steps first, then page by page
            block = b"\0" * chunk
            try:
                while True:
                    out.write(block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    return filler


def truncate_wal(db: Path) -> None:
    """Checkpoint the WAL into the database and empty it, so the next commit needs new blocks."""
    conn = sqlite3.connect(db, timeout=10)
    try:
        wait_for(lambda: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0,
                 what="a complete WAL checkpoint")
    finally:
        conn.close()


def test_disk_full_loses_nothing_and_recovers(small_disk, env) -> None:  # type: ignore[no-untyped-def]
    db = small_disk / "autocore.db"
    db.write_bytes(env.db.read_bytes())
    env.db = db
    port = find_free_port()
    gateway = env.gateway(AUTOCORE_METRICS_PORT=str(port))
    env.register("esp32-can-001", "esp32_can")
    truncate_wal(db)
    filler = fill(small_disk)

    publisher = Publisher(env.peer(), count=MESSAGES, rate_hz=50)
    publisher.start()
    wait_for(lambda: value(scrape(port), "autocore_db_write_errors_total") >= 2, timeout_s=20,
             what="failed writes on the full disk")
    publisher.join(30)
    assert stored_sequence(db) == []  # nothing could be committed meanwhile
    assert gateway.alive()

    filler.unlink()  # space returns
    wait_for(lambda: len(stored_sequence(db)) >= MESSAGES, timeout_s=RECOVERY_WAIT_S,
             what="the writes to resume after the disk was freed")
    assert stored_sequence(db) == list(range(MESSAGES)), "lost or duplicated messages"
    samples = scrape(port)
    assert value(samples, "autocore_db_write_errors_total") >= 2
    assert value(samples, "autocore_db_rows_written_total") >= MESSAGES
    log = gateway.log
    assert "failed, will retry" in log and "database or disk is full" in log
    assert "Traceback" not in log and gateway.alive()
    assert env.rows("SELECT status FROM devices WHERE uuid='esp32-can-001'")[0]["status"] == "online"


@pytest.fixture
def immutable(tmp_path: Path) -> Iterator[list[Path]]:
    """Files to mark immutable with chattr; the flag is always cleared at the end."""
    probe = tmp_path / "chattr-probe"
    probe.touch()
    if run("chattr", "+i", str(probe)).returncode != 0:
        pytest.skip("chattr +i is not available on this filesystem (or we are not root)")
    run("chattr", "-i", str(probe))
    files: list[Path] = []
    yield files
    for path in files:
        run("chattr", "-i", str(path))


def test_unwritable_database_file_loses_nothing_and_recovers(env, immutable) -> None:  # type: ignore[no-untyped-def]
    port = find_free_port()
    gateway = env.gateway(AUTOCORE_METRICS_PORT=str(port))
    env.register("esp32-can-001", "esp32_can")
    env.peer().publish(TOPIC, fixture_bytes("telemetry_can.json"))  # the writer's connection is open
    wait_for(lambda: env.rows("SELECT id FROM telemetry_data"), what="a first stored message")
    wal = Path(f"{env.db}-wal")
    for path in (env.db, wal):
        immutable.append(path)
        assert run("chattr", "+i", str(path)).returncode == 0

    publisher = Publisher(env.peer(), count=MESSAGES, rate_hz=50)
    publisher.start()
    wait_for(lambda: value(scrape(port), "autocore_db_write_errors_total") >= 2, timeout_s=20,
             what="failed writes on the unwritable file")
    publisher.join(30)
    assert stored_sequence(env.db) == []
    assert gateway.alive()

    for path in immutable:  # writable again
        assert run("chattr", "-i", str(path)).returncode == 0
    wait_for(lambda: len(stored_sequence(env.db)) >= MESSAGES, timeout_s=RECOVERY_WAIT_S,
             what="the writes to resume after the file became writable")
    assert stored_sequence(env.db) == list(range(MESSAGES)), "lost or duplicated messages"
    assert value(scrape(port), "autocore_db_write_errors_total") >= 2
    log = gateway.log
    assert "telemetry write of" in log and "failed, will retry" in log and "disk I/O error" in log
    assert "Traceback" not in log and gateway.alive()


def test_restart_while_the_file_is_unwritable_recovers(env, immutable) -> None:  # type: ignore[no-untyped-def]
    """systemd restarts the gateway (Restart=always) while the file is unwritable, then it is fixed."""
    first = env.gateway()  # creates the gateway's tables and its persistent session
    env.register("esp32-can-001", "esp32_can")
    assert first.stop() == 0
    immutable.append(env.db)
    assert run("chattr", "+i", str(env.db)).returncode == 0
    device = env.peer()
    for seq in range(MESSAGES):  # the broker queues them for the gateway's session
        device.client.publish(TOPIC, numbered(seq), qos=1)
    second = env.gateway(wait_ready=False)
    wait_for(lambda: "readonly database" in second.log, what="the gateway to meet the unwritable file")
    assert second.alive()

    assert run("chattr", "-i", str(env.db)).returncode == 0
    wait_for(lambda: len(stored_sequence(env.db)) >= MESSAGES, timeout_s=RECOVERY_WAIT_S,
             what="the writes to resume after the file became writable")
    assert stored_sequence(env.db) == list(range(MESSAGES)), "lost or duplicated messages"
    assert "Traceback" not in second.log and second.alive()


def test_sigterm_while_start_up_waits_for_a_locked_database(env) -> None:  # type: ignore[no-untyped-def]
    """A gateway stuck at start-up behind another writer's lock still stops when asked to."""
    first = env.gateway()  # the file is in WAL mode and has every table from here on
    assert first.stop() == 0
    blocker = sqlite3.connect(env.db, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        second = env.gateway(wait_ready=False)
        wait_for(lambda: "will retry" in second.log, timeout_s=20, what="start-up to wait on the lock")
        assert second.stop(timeout_s=15) == 0  # fails the test if the signal is ignored
        assert "stopped while waiting for the database" in second.log
        assert "Traceback" not in second.log
    finally:
        blocker.close()


def test_unwritable_database_at_first_start_is_one_clear_line(env, immutable) -> None:  # type: ignore[no-untyped-def]
    """The installed file (not yet in WAL mode) cannot be written: exit 1, no traceback."""
    immutable.append(env.db)
    assert run("chattr", "+i", str(env.db)).returncode == 0
    gateway = env.gateway(wait_ready=False)
    wait_for(lambda: not gateway.alive(), timeout_s=30, what="the gateway to give up")
    assert gateway.proc.returncode == 1
    assert "cannot open the database" in gateway.log and "Traceback" not in gateway.log


def test_an_io_error_opening_the_database_at_start_up_is_tried_again(env) -> None:  # type: ignore[no-untyped-def]
    """SQLITE_IOERR at start-up (seen on LazyFS after power cuts) gets a few more tries, not an exit.

    A FIFO where the shared-memory file goes makes SQLite fail with
    SQLITE_IOERR_SHMOPEN (it cannot be truncated) until it is removed.
    """
    first = env.gateway()  # the file is in WAL mode from here on
    assert first.stop() == 0
    shm = Path(f"{env.db}-shm")
    shm.unlink(missing_ok=True)
    os.mkfifo(shm)
    try:
        second = env.gateway(wait_ready=False)
        wait_for(lambda: "cannot open the database yet" in second.log or not second.alive(),
                 what="the start-up's first I/O error")
    finally:
        shm.unlink()
    wait_for(lambda: "running" in second.log or not second.alive(), what="the gateway to start after all")
    assert second.alive(), second.log
    assert "SQLITE_IOERR_SHMOPEN" in second.log and "Traceback" not in second.log
    assert second.stop() == 0
