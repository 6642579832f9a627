"""Power cuts under QoS 1 load: what the gateway acknowledged survives on its storage.

A power cut is made with LazyFS (``tests/fixtures/lazyfs.py``): the database
lives on a LazyFS mount, the gateway (and PostgreSQL) get SIGKILL, and then
``lazyfs::clear-cache`` drops every byte that was never fsynced, as losing the
power drops the page cache. The gateway then starts again on the same files.

The oracle is the broker. A QoS 1 message the gateway has acknowledged (PUBACK)
is never delivered to it again, and one it has not acknowledged is delivered
again when its persistent session resumes. So once the devices have had every
message acknowledged by the broker and the gateway has drained its session,
each of those messages must be stored exactly once, whatever the cuts hit: a
missing one was acknowledged before it was on stable storage, a doubled one was
redelivered after it was stored (the gateway's idempotency keys must catch it).

Only the gateway's machine loses power here. The private broker keeps its
persistence directory off the LazyFS mount and never stops: a real cut would
take Mosquitto's queue with it, but what is tested is the gateway's durability,
with the broker as a witness that does not forget.

The control test shows that the harness catches the fault: plain SQLite in WAL
mode loses acknowledged commits with ``synchronous=NORMAL`` and none with
``synchronous=FULL``. Set ``AUTOCORE_POWER_CUT_SEED`` to replay the cut times of
a failed run (the seed is printed).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from autocore.broker import find_free_port
from tests.fixtures.lazyfs import LazyFSMount
from tests.fixtures.services import (ORIGINAL_SCHEMA, WAIT_S, PostgresCluster, PostgresDatabase, _as_postgres,
                                     _pg_bin, fixture_bytes)

TELEMETRY = json.loads(fixture_bytes("telemetry_can.json"))
#: Simulated devices, and the messages per second they publish together.
DEVICES = 4
RATE_HZ = 200
#: Upper bound of messages a load may send (a bound, never reached in a normal run).
MAX_MESSAGES = 60_000
#: A cut falls at a random time this long after the gateway became ready (s).
CUT_WINDOW_S = (0.3, 2.5)
SQLITE_ROUNDS = 10
POSTGRES_ROUNDS = 4
#: How long the gateway may take to drain the broker's backlog at the end (s).
DRAIN_S = 90.0
#: The drain ends early when nothing new was stored for this long (s).
STALL_S = 10.0
#: The gateway runs on its defaults. LazyFS answers statfs with a file system of 0
#: bytes: the size cap and free-space floor (shares of the file system) must take
#: that as unknown, not as a full disk that calls for deleting all telemetry.
SQLITE_SETTINGS: dict[str, str] = {}


def reading(uuid: str, seq: int) -> bytes:
    """The spec's CAN telemetry from ``uuid``, numbered: ``seq`` is stored as its analog_seq row."""
    return json.dumps({**TELEMETRY, "uuid": uuid, "analog_sensors": {"seq": seq}}).encode()


def cut_rng() -> random.Random:
    seed = int(os.environ.get("AUTOCORE_POWER_CUT_SEED") or random.SystemRandom().randrange(2**32))
    print(f"AUTOCORE_POWER_CUT_SEED={seed}")
    return random.Random(seed)


class Devices(threading.Thread):
    """Simulated devices sending numbered QoS 1 telemetry, one paho client each, until stopped.

    The sequence numbers are unique across devices. Bounded by ``MAX_MESSAGES``
    and by ``stop()``.
    """

    def __init__(self, peers: list[Any], uuids: list[str], rate_hz: float) -> None:
        super().__init__(daemon=True)
        self.peers, self.uuids, self.period_s = peers, uuids, 1.0 / rate_hz
        self.infos: list[Any] = []
        self.halt = threading.Event()

    def run(self) -> None:
        due = time.monotonic()
        for seq in range(MAX_MESSAGES):
            if self.halt.is_set():
                return
            device = seq % len(self.peers)
            topic = f"autocore/devices/{self.uuids[device]}/telemetry"
            self.infos.append(self.peers[device].client.publish(topic, reading(self.uuids[device], seq), qos=1))
            due += self.period_s
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def stop(self) -> set[int]:
        """Stop sending; return the numbers the broker acknowledged (all of them: it never stops)."""
        self.halt.set()
        self.join(WAIT_S)
        assert not self.is_alive(), "the devices did not stop"
        for info in self.infos:
            info.wait_for_publish(30)
        return {seq for seq, info in enumerate(self.infos) if info.is_published()}


def start_devices(peer_factory: Callable[..., Any], broker: Any, uuids: list[str]) -> Devices:
    devices = Devices([peer_factory(target=broker) for _ in uuids], uuids, RATE_HZ)
    devices.start()
    return devices


def wait_until_stored(stored: Callable[[], list[int]], wanted: set[int]) -> list[int]:
    """Poll until every wanted number is stored, nothing new arrived for ``STALL_S``, or ``DRAIN_S``."""
    deadline = time.monotonic() + DRAIN_S
    rows = stored()
    progress_at, count = time.monotonic(), len(rows)
    while not wanted <= set(rows):
        now = time.monotonic()
        if len(rows) != count:
            progress_at, count = now, len(rows)
        if now - progress_at > STALL_S or now > deadline:
            break
        time.sleep(0.2)
        rows = stored()
    return rows


def verdict(acked: set[int], rows: list[int], cuts: int) -> None:
    """Fail unless every acknowledged number is stored exactly once; print the counts either way."""
    lost = sorted(acked - set(rows))
    doubled = len(rows) - len(set(rows))
    summary = (f"{len(lost)} of {len(acked)} acknowledged QoS 1 messages lost, {doubled} stored twice, "
               f"over {cuts} power cuts")
    print(summary)
    assert not lost and not doubled, f"{summary}; first lost: {lost[:10]}"


# -- the control: plain SQLite on the same mount -------------------------------------------------

#: A writer that commits one row at a time and then waits to be killed (no clean close,
#: which would checkpoint).
WRITER = textwrap.dedent("""
    import sqlite3, sys, time
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER)")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the table is on stable storage
    conn.execute("PRAGMA synchronous=" + sys.argv[2])
    for n in range(int(sys.argv[3])):
        conn.execute("INSERT INTO t VALUES (?)", (n,))  # autocommit: one commit per row
    print("committed", flush=True)
    time.sleep(60)
""")


def committed_then_killed(db: Path, synchronous: str, commits: int) -> None:
    """Run WRITER until its commits returned, then SIGKILL it (its process is gone at the cut)."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db), synchronous, str(commits)],
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"committed\n"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(WAIT_S)
        if proc.stdout is not None:
            proc.stdout.close()


def rows_and_integrity(db: Path) -> tuple[int, str]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT count(*) FROM t").fetchone()[0], conn.execute(
            "PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def test_the_harness_catches_commits_that_were_never_synced(lazyfs: LazyFSMount) -> None:
    """WAL + NORMAL: committed rows vanish in the cut (not in the kill alone); WAL + FULL: none do."""
    commits = 200
    survived = {}
    for synchronous, cut in (("NORMAL", False), ("NORMAL", True), ("FULL", True)):
        db = lazyfs.path / f"{synchronous.lower()}-{'cut' if cut else 'kill'}.db"
        committed_then_killed(db, synchronous, commits)
        if cut:
            lazyfs.clear_cache()
        count, integrity = rows_and_integrity(db)
        assert integrity == "ok"
        survived[synchronous, cut] = count
    print(f"of {commits} commits survived: {survived}")
    assert survived["NORMAL", False] == commits  # a killed process loses nothing by itself
    assert survived["NORMAL", True] < commits  # the cut loses what no fsync reached
    assert survived["FULL", True] == commits


# -- the gateway on SQLite --------------------------------------------------------------------


#: Tries of a read on the mount (see ``read_db``).
READ_TRIES = 5


def read_db(db: Path, sql: str) -> list[Any]:
    """Rows of ``sql`` on a connection of its own, as the Config App reads.

    LazyFS now and then answers the opening of a WAL database's shared-memory
    file with an I/O error (SQLITE_IOERR_SHMOPEN), cut or no cut: plain sqlite3
    reopening a database there met it in 2 of 400 cycles, and never on ext4.
    Such a read is tried again; the gateway does the same at start-up.
    """
    for attempt in range(READ_TRIES):
        conn = sqlite3.connect(db, timeout=10)
        try:
            return conn.execute(sql).fetchall()
        except sqlite3.OperationalError as exc:
            if attempt == READ_TRIES - 1 or not getattr(exc, "sqlite_errorname", "").startswith("SQLITE_IOERR"):
                raise
        finally:
            conn.close()
        time.sleep(0.1)
    raise AssertionError("unreachable")


def telemetry_numbers(db: Path) -> list[int]:
    """The analog_seq of every stored reading (duplicates kept), read as the Config App would."""
    rows = read_db(db, "SELECT data_value FROM telemetry_data WHERE data_key='analog_seq'")
    return sorted(int(float(value)) for (value,) in rows)


def integrity(db: Path) -> str:
    return "; ".join(row[0] for row in read_db(db, "PRAGMA integrity_check"))


@pytest.mark.slow
def test_sqlite_power_cuts_lose_no_acknowledged_message(  # type: ignore[no-untyped-def]
        lazyfs, env, broker_factory, peer_factory) -> None:
    """Ten cuts at random moments under QoS 1 load from four devices, then a drain and a last cut."""
    rng = cut_rng()
    env.broker = broker_factory(persistence=True)  # its queue lives off the mount, in its own folder
    env.db = lazyfs.path / "autocore.db"
    with closing(sqlite3.connect(env.db)) as conn, conn:
        conn.executescript(ORIGINAL_SCHEMA.read_text())
    conn.close()
    uuids = [f"esp32-can-{n:03d}" for n in range(1, DEVICES + 1)]
    for uuid in uuids:
        env.register(uuid, "esp32_can")
    lazyfs.clear_cache()  # the set-up itself was synced (rollback journal, synchronous=FULL)
    assert len(env.rows("SELECT id FROM devices")) == DEVICES

    gateway = env.gateway(**SQLITE_SETTINGS)  # the persistent session exists before any publish
    devices = start_devices(peer_factory, env.broker, uuids)
    cuts = 0
    for _ in range(SQLITE_ROUNDS):
        time.sleep(rng.uniform(*CUT_WINDOW_S))
        gateway.stop(signal.SIGKILL)
        lazyfs.clear_cache()
        cuts += 1
        gateway = env.gateway(**SQLITE_SETTINGS)  # fails unless it becomes ready on the cut files
    acked = devices.stop()
    assert len(acked) == len(devices.infos) > SQLITE_ROUNDS * RATE_HZ * CUT_WINDOW_S[0]
    wait_until_stored(lambda: telemetry_numbers(env.db), acked)
    time.sleep(1.0)  # the acknowledgements of the last commit leave after it
    gateway.stop(signal.SIGKILL)
    lazyfs.clear_cache()
    cuts += 1
    assert integrity(env.db) == "ok"
    last = env.gateway(**SQLITE_SETTINGS)  # takes what the broker still holds (never acknowledged)
    wait_until_stored(lambda: telemetry_numbers(env.db), acked)
    assert last.stop() == 0
    assert integrity(env.db) == "ok"
    verdict(acked, telemetry_numbers(env.db), cuts)


# -- the gateway on PostgreSQL -----------------------------------------------------------------


class CutCluster:
    """A PostgreSQL cluster whose data directory is on a LazyFS mount, killed like the power.

    The postmaster is the test's own child, not pg_ctl's, so the test reaps it
    at once: a killed postmaster left as a zombie would keep its PID alive and
    make the next start refuse the stale postmaster.pid. Its socket and log stay
    off the mount. fsync and synchronous_commit are on, as they are by default.
    """

    def __init__(self, mount: LazyFSMount) -> None:
        self.mount = mount
        self.side = Path(tempfile.mkdtemp(prefix="autocore-pgcut-"))
        self.datadir = mount.path / "data"
        self.port = find_free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.as_root = os.geteuid() == 0
        self.datadir.mkdir(mode=0o700)
        if self.as_root:
            shutil.chown(self.side, "postgres", "postgres")
            shutil.chown(self.datadir, "postgres", "postgres")
        _as_postgres(["initdb", "-D", str(self.datadir), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                      "--data-checksums"])

    @property
    def log(self) -> str:
        try:
            return (self.side / "server.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self) -> PostgresCluster:
        postgres = _pg_bin("postgres")
        assert postgres is not None
        settings = ["listen_addresses=127.0.0.1", "fsync=on", "synchronous_commit=on", "full_page_writes=on"]
        argv = [postgres, "-D", str(self.datadir), "-p", str(self.port), "-k", str(self.side)]
        for setting in settings:
            argv += ["-c", setting]
        started_at = self.log.count("ready to accept connections")
        with open(self.side / "server.log", "ab") as log:
            self.process = subprocess.Popen(  # type: ignore[call-overload]
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.side,
                start_new_session=True, **({"user": "postgres", "group": "postgres", "extra_groups": []}
                                           if self.as_root else {}))
        deadline = time.monotonic() + 60
        while self.log.count("ready to accept connections") <= started_at:
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"PostgreSQL did not start on the cut data directory: {self.log[-3000:]}")
            time.sleep(0.05)
        return PostgresCluster(self.datadir, self.side, self.port)

    def kill(self) -> None:
        """SIGKILL the postmaster and every process of its group, and wait until none runs."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: the postmaster and its children
        proc.wait(WAIT_S)
        deadline = time.monotonic() + WAIT_S
        while living_in_group(proc.pid):
            assert time.monotonic() < deadline, f"processes of group {proc.pid} outlived SIGKILL"
            time.sleep(0.02)

    def close(self) -> None:
        proc = self.process
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        shutil.rmtree(self.side, ignore_errors=True)


def living_in_group(pgid: int) -> list[int]:
    """PIDs of the processes of group ``pgid`` that are not zombies."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


@pytest.fixture
def cut_cluster(lazyfs_factory) -> Iterator[CutCluster]:  # type: ignore[no-untyped-def]
    if _pg_bin("initdb") is None or _pg_bin("postgres") is None:
        pytest.skip("PostgreSQL server binaries (initdb, postgres) are not installed")
    pytest.importorskip("psycopg", reason="psycopg is not installed (the postgres extra)")
    # Root runs the server as postgres (it refuses root); anyone else runs it as themselves.
    owner = "postgres" if os.geteuid() == 0 else None
    cluster = CutCluster(lazyfs_factory(cache_size="1gb", owner=owner))
    try:
        yield cluster
    finally:
        cluster.close()


def amcheck(cluster: PostgresCluster) -> str:
    """pg_amcheck over every table and B-tree index (heap pages are checksummed too)."""
    try:
        done = _as_postgres(["pg_amcheck", "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres",
                             "-d", "postgres", "--install-missing", "--heapallindexed"])
    except subprocess.CalledProcessError as error:
        return f"pg_amcheck failed ({error.returncode}): {error.stdout}{error.stderr}"
    return done.stdout.strip() or "ok"


@pytest.mark.slow
@pytest.mark.postgres
def test_postgres_power_cuts_lose_no_acknowledged_message(  # type: ignore[no-untyped-def]
        cut_cluster, broker_factory, gateway_factory, peer_factory, tmp_path) -> None:
    """The same cuts with the data directory on LazyFS; PostgreSQL is killed along with the gateway."""
    from sqlalchemy import create_engine

    from autocore.schema import ensure_schema

    rng = cut_rng()
    broker = broker_factory(persistence=True)
    database = PostgresDatabase(cut_cluster.start())
    engine = create_engine(database.url)
    try:
        ensure_schema(engine)
    finally:
        engine.dispose()
    uuids = [f"esp32-can-{n:03d}" for n in range(1, DEVICES + 1)]
    for uuid in uuids:
        database.register(uuid, "esp32_can")

    def gateway():  # type: ignore[no-untyped-def]
        return gateway_factory(broker, tmp_path / "unused.db", DATABASE_URL=database.url)

    def stored() -> list[int]:
        return sorted(int(float(r["data_value"])) for r in database.rows(
            "SELECT data_value FROM telemetry_data WHERE data_key='analog_seq'"))

    def power_cut(running) -> None:  # type: ignore[no-untyped-def]
        running.stop(signal.SIGKILL)
        cut_cluster.kill()
        cut_cluster.mount.clear_cache()
        cut_cluster.start()  # crash recovery from what was synced

    running = gateway()
    devices = start_devices(peer_factory, broker, uuids)
    cuts = 0
    for _ in range(POSTGRES_ROUNDS):
        time.sleep(rng.uniform(*CUT_WINDOW_S))
        power_cut(running)
        cuts += 1
        running = gateway()
    acked = devices.stop()
    wait_until_stored(stored, acked)
    time.sleep(1.0)
    power_cut(running)
    cuts += 1
    assert amcheck(database.cluster) == "ok"
    last = gateway()
    wait_until_stored(stored, acked)
    assert last.stop() == 0
    verdict(acked, stored(), cuts)
