"""Scale-out benchmark: how fast 1, 2 and 3 gateways on PostgreSQL drain a backlog, against one on SQLite.

Why it exists: several ``autocore run`` processes can share one broker (MQTT 5
shared subscription ``$share/<group>/...``) and one PostgreSQL database, and
the question is what that buys. On the 2-core benchmark machine live
publishers would take CPU from the gateways, so this measures a drain: no
publisher runs while the gateways work. Per configuration and repetition:

1. a fresh private Mosquitto (``max_queued_messages 0``: unbounded session
   queues) and a fresh database (a SQLite file, or a new database in one
   PostgreSQL cluster kept for the whole script), the simulated devices registered;
2. the N gateways start and wait until /readyz says their subscriptions are
   acknowledged; then they are paused (see below);
3. M numbered QoS 1 telemetry messages are published, every PUBACK awaited,
   and ``$SYS/broker/store/messages/count`` must have grown by at least M (the
   broker queued them for the paused members);
4. the N gateways resume at once, and ``SELECT count(*) FROM telemetry_data`` is
   polled every 50 ms until every row is stored (or nothing moves for 15 s).

The drain rate is measured between 10 % and 90 % of the rows, so start-up is
not counted; the total (resume -> last row) is reported too. Each run checks
the exact row count and that every sequence number is stored exactly once, and
reports each gateway's share, CPU, refused messages and WARNING/ERROR lines.
Configurations are interleaved within each repetition (the order rotates).

The broker here, Mosquitto 2.0.11 (Debian 12), does not keep to a client's
Receive Maximum once messages are queued for it: every PUBACK releases a whole
Receive Maximum of queued messages instead of one, so a gateway is soon sent
the entire backlog. The gateway copes by pausing its reads while its QoS 1
buffer is a quarter full (``autocore_mqtt_read_pauses_total``); this benchmark
found the loss that happened before it did (the ``refused`` column stays 0).
By default every gateway runs with its own default MAX_CONCURRENT_MESSAGES
(100); ``--receive-max auto`` raises it so that one burst holds the backlog.

How the gateways are paused while the backlog is published (``--pause``):
``sigterm`` (default) stops them gracefully (their persistent sessions stay on
the broker) and starts them again; ``sigstop`` freezes them while connected
(SIGCONT resumes them), so no start-up is involved at all.

    python benchmarks/scaleout.py                          # 20,000 messages, 100 devices, 3 repetitions
    python benchmarks/scaleout.py --messages 5000 --repeat 1 --configs sqlite-x1,postgres-x2
    python benchmarks/scaleout.py --receive-max auto --repeat 1  # a receive maximum as big as the backlog
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import create_engine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root, for tests.fixtures
from autocore.broker import Mosquitto, find_free_port  # noqa: E402
from autocore.schema import ensure_schema  # noqa: E402
from benchmarks.e2e import PAYLOAD_TEMPLATE, make_database  # noqa: E402
from tests.fixtures.services import PostgresCluster, postgres_clusters  # noqa: E402

#: Configurations by name: (database, number of gateways).
CONFIGS = {"sqlite-x1": ("sqlite", 1), "postgres-x1": ("postgres", 1),
           "postgres-x2": ("postgres", 2), "postgres-x3": ("postgres", 3)}
PAUSES = ("sigterm", "sigstop")
#: The gateway's reliable ring holds at least RING_PER_RECEIVE_MAX x MAX_CONCURRENT_MESSAGES (gateway.py).
RING_PER_RECEIVE_MAX = 8
GROUP = "bench"
#: The CAN fixture's three signals plus the ``bench_seq`` analog sensor.
ROWS_PER_MESSAGE = 4
SEQ_KEY = "analog_bench_seq"
#: Period of the row-count poll during a drain.
POLL_S = 0.05
#: The drain rate is measured between these fractions of the rows.
WINDOW = (0.10, 0.90)
PUBLISHER_PROCESSES = 2
#: QoS 1 messages a publisher keeps unacknowledged (below paho's 65,535 message ids).
PUBLISH_WINDOW = 5000
PUBLISH_TIMEOUT_S = 120.0
#: Mosquitto's $SYS period here; the store count is read once it stops changing.
SYS_INTERVAL_S = 1
SYS_QUIET_S = 2.5
SYS_TIMEOUT_S = 20.0
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
#: Longest drain: this plus one second per DRAIN_MIN_RATE messages.
DRAIN_BASE_S = 60.0
DRAIN_MIN_RATE = 100
#: A drain that stores nothing new for this long has stopped (messages lost or stuck).
STALL_S = 15.0
#: After the last row, how long to wait for rows that should not come (duplicates).
SETTLE_S = 1.0
TICKS_PER_S = os.sysconf("SC_CLK_TCK")
LOG_LINE = re.compile(r"\b(WARNING|ERROR|CRITICAL|Traceback)\b")


# -- publishers (separate processes) and the broker's store --------------------------------


def _publisher(host: str, port: int, uuids: list[str], seqs: range, acked: Any) -> None:
    """Publish numbered telemetry at QoS 1 as fast as the broker acknowledges it."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{seqs.start}")
    client.max_inflight_messages_set(1000)
    client.connect(host, port, keepalive=60)
    client.loop_start()
    payload = dict(PAYLOAD_TEMPLATE)
    pending: deque[mqtt.MQTTMessageInfo] = deque()
    done = 0
    deadline = time.monotonic() + PUBLISH_TIMEOUT_S
    try:
        for seq in seqs:
            uuid = uuids[seq % len(uuids)]
            payload["uuid"] = uuid
            payload["analog_sensors"] = {"bench_seq": seq}
            pending.append(client.publish(f"autocore/devices/{uuid}/telemetry",
                                          json.dumps(payload, separators=(",", ":")), qos=1))
            while len(pending) > PUBLISH_WINDOW or (seq == seqs[-1] and pending):
                info = pending.popleft()
                info.wait_for_publish(max(0.1, deadline - time.monotonic()))
                if not info.is_published():
                    raise SystemExit(f"publisher {seqs.start}: no PUBACK within {PUBLISH_TIMEOUT_S:g} s")
                done += 1
    finally:
        client.disconnect()
        client.loop_stop()
        with acked.get_lock():
            acked.value += done


def publish_backlog(broker: Mosquitto, uuids: list[str], messages: int) -> int:
    """Publish ``messages`` numbered QoS 1 messages; return how many the broker acknowledged."""
    acked = mp.Value("q", 0)
    procs = [mp.Process(target=_publisher, args=(broker.host, broker.port, uuids,
                                                 range(i, messages, PUBLISHER_PROCESSES), acked))
             for i in range(min(PUBLISHER_PROCESSES, messages))]
    for proc in procs:
        proc.start()
    try:
        for proc in procs:
            proc.join(PUBLISH_TIMEOUT_S + 10)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join(5)
    return int(acked.value)


def stored_messages(broker: Mosquitto) -> int:
    """Messages in the broker's store, queued ones included, once the count has settled.

    Mosquitto publishes ``$SYS`` values (retained) only when they change, at
    most once per ``sys_interval``, and late while it is busy: the value is
    taken when no update has come for SYS_QUIET_S.
    """
    values: list[int] = []
    last = [time.monotonic()]

    def on_message(_client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        values.append(int(message.payload))
        last[0] = time.monotonic()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-sys")
    client.on_message = on_message
    client.on_connect = lambda c, *_: c.subscribe("$SYS/broker/store/messages/count", 0)
    client.connect(broker.host, broker.port)
    client.loop_start()
    deadline = time.monotonic() + SYS_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            time.sleep(0.1)
            if values and time.monotonic() - last[0] >= SYS_QUIET_S:
                return values[-1]
        raise RuntimeError("$SYS/broker/store/messages/count did not settle (is sys_interval set?)")
    finally:
        client.disconnect()
        client.loop_stop()


# -- databases ---------------------------------------------------------------------------------


class Store:
    """The telemetry table of one run, read the way the Config App would read it."""

    def __init__(self, connect: Callable[[], Any]) -> None:
        self._connect = connect
        self._conn: Any = None

    def _query(self, sql: str) -> Any:
        if self._conn is None:
            self._conn = self._connect()
        return self._conn.execute(sql).fetchone()

    def count(self) -> int:
        return int(self._query("SELECT count(*) FROM telemetry_data")[0])

    def sequence_check(self) -> tuple[int, int, int]:
        """(rows holding a sequence number, distinct numbers, numbers stored more than once)."""
        rows, distinct = self._query(f"SELECT count(*), count(DISTINCT data_value) FROM telemetry_data "
                                     f"WHERE data_key = '{SEQ_KEY}'")
        doubled = self._query(f"SELECT count(*) FROM (SELECT data_value FROM telemetry_data WHERE "
                              f"data_key = '{SEQ_KEY}' GROUP BY data_value HAVING count(*) > 1) AS d")[0]
        return int(rows), int(distinct), int(doubled)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@contextlib.contextmanager
def sqlite_database(workdir: Path, uuids: list[str]) -> Iterator[tuple[dict[str, str], Store]]:
    """The installed schema in a new file, with the devices registered (benchmarks/e2e.py)."""
    path = workdir / "autocore.db"
    make_database(path, len(uuids))
    store = Store(lambda: sqlite3.connect(path, timeout=10, isolation_level=None))
    try:
        yield {"DATABASE_PATH": str(path)}, store
    finally:
        store.close()


@contextlib.contextmanager
def postgres_database(cluster: PostgresCluster, name: str,
                      uuids: list[str]) -> Iterator[tuple[dict[str, str], Store]]:
    """A new database in the shared cluster: the gateway's schema and the devices; dropped afterwards."""
    cluster.psql(f"CREATE DATABASE {name}")
    url = f"postgresql+psycopg://postgres@127.0.0.1:{cluster.port}/{name}"
    dsn = f"postgresql://postgres@127.0.0.1:{cluster.port}/{name}"
    store = Store(lambda: psycopg.connect(dsn, autocommit=True))
    try:
        engine = create_engine(url)
        try:
            ensure_schema(engine)
        finally:
            engine.dispose()
        with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cursor:
            now = time.strftime("%Y-%m-%d %H:%M:%S")
            cursor.executemany(
                "INSERT INTO devices (uuid, name, type, status, is_active, created_at, updated_at) "
                "VALUES (%s, %s, 'sensor_board', 'offline', true, %s, %s)",
                [(uuid, f"Bench {n}", now, now) for n, uuid in enumerate(uuids)])
        yield {"DATABASE_URL": url}, store
    finally:
        store.close()
        cluster.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# -- gateways ------------------------------------------------------------------------------------


@dataclass
class Gateway:
    """One ``autocore run`` member, signalled and stopped by its own PID."""

    name: str
    env: dict[str, str]
    log_path: Path
    metrics_port: int
    proc: subprocess.Popen[bytes] | None = None

    def start(self, workdir: Path) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "autocore", "run", "--env-file", "/dev/null"], env=self.env,
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pids(self) -> list[int]:
        """The current process (a restart makes a new one)."""
        return [self.proc.pid] if self.proc is not None else []

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(sig)

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=2) as answer:
                return answer.status, answer.read().decode()
        except OSError as exc:  # refused while starting; HTTPError (503) while not ready
            return getattr(exc, "code", 0), ""

    def wait_ready(self) -> None:
        """Wait until /readyz answers 200: connected, subscriptions acknowledged, database writable."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited at start:\n{self.log_tail()}")
            if self.get("/readyz")[0] == 200:
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready in {READY_TIMEOUT_S:g} s:\n{self.log_tail()}")

    def counters(self) -> dict[str, float]:
        """The gateway's unlabelled autocore_* samples from /metrics."""
        status, text = self.get("/metrics")
        values = {}
        for line in text.splitlines() if status == 200 else ():
            match = re.match(r"(autocore_[a-z_]+) ([0-9.e+-]+)$", line)
            if match:
                values[match[1]] = float(match[2])
        return values

    def wait_stopped(self) -> int | None:
        """Wait for the exit after SIGTERM (SIGKILL if it hangs); the exit code."""
        proc = self.proc
        if proc is None:
            return None
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        return proc.returncode

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


def make_gateways(count: int, shared: bool, broker: Mosquitto, db_env: dict[str, str],
                  workdir: Path, receive_max: int) -> list[Gateway]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MQTT_", "AUTOCORE_", "DATABASE_"))}
    gateways = []
    for n in range(1, count + 1):
        port = find_free_port()
        env = {**base, **db_env, "MQTT_BROKER": broker.host, "MQTT_PORT": str(broker.port),
               "MQTT_CLIENT_ID": f"gw-{n}", "LOG_FILE": "", "LOG_LEVEL": "INFO",
               "AUTOCORE_RATE_LIMIT": "0", "AUTOCORE_METRICS_PORT": str(port),
               "MAX_CONCURRENT_MESSAGES": str(receive_max)}
        if shared:
            env["AUTOCORE_SHARED_GROUP"] = GROUP
        gateways.append(Gateway(f"gw-{n}", env, workdir / f"gw-{n}.log", port))
    return gateways


def stop_all(gateways: list[Gateway]) -> list[int | None]:
    """Stop every gateway at once: SIGCONT (in case it is paused), SIGTERM, then wait for each."""
    for gateway in gateways:
        gateway.signal(signal.SIGCONT)
        gateway.signal(signal.SIGTERM)
    return [gateway.wait_stopped() for gateway in gateways]


# -- one run ---------------------------------------------------------------------------------------


@dataclass
class Run:
    config: str
    pause: str
    repetition: int
    messages: int
    queued: int = 0
    complete: bool = False
    stored_rows: int = 0
    seq_rows: int = 0
    seq_distinct: int = 0
    seq_doubled: int = 0
    first_row_s: float = 0.0
    total_s: float = 0.0
    drain_per_s: float = 0.0
    per_gateway: dict[str, int] = field(default_factory=dict)
    #: Share of one core used between 10 % and 90 % of the rows: each gateway, "broker", "postgres".
    cpu: dict[str, float] = field(default_factory=dict)
    host_busy_percent: float = 0.0
    poll_ms: float = 0.0
    refused: int = 0
    duplicates_skipped: int = 0
    write_errors: int = 0
    exit_codes: list[int | None] = field(default_factory=list)
    log_lines: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (self.complete and self.stored_rows == self.messages * ROWS_PER_MESSAGE
                and self.seq_rows == self.seq_distinct == self.messages and self.seq_doubled == 0)


def host_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def cpu_ticks(pids: list[int]) -> int:
    """User + system clock ticks of these processes (all their threads); gone ones count 0."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total


def with_children(pid: int) -> list[int]:
    """A process and its direct children (the postmaster and its backends, walwriter...)."""
    try:
        return [pid, *map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]
    except OSError:
        return [pid]


class CpuMeter:
    """CPU of named process groups and of the host, read at each poll of a drain."""

    def __init__(self, groups: dict[str, Callable[[], list[int]]]) -> None:
        self.groups = groups
        self.marks: list[tuple[float, int, int, dict[str, int]]] = []

    def mark(self) -> None:
        busy, total = host_cpu()
        ticks = {name: cpu_ticks(pids()) for name, pids in self.groups.items()}
        self.marks.append((time.monotonic(), busy, total, ticks))

    def shares(self, since: float, until: float) -> tuple[float, dict[str, float]]:
        """(host busy %, {group: % of one core}) between two moments (at least the last two marks)."""
        window = [m for m in self.marks if since <= m[0] <= until]
        if len(window) < 2:
            window = self.marks[-2:]
        first, last = window[0], window[-1]
        seconds = last[0] - first[0]
        host = 100 * (last[1] - first[1]) / max(1, last[2] - first[2])
        return host, {name: 100 * (last[3][name] - first[3][name]) / TICKS_PER_S / seconds
                      for name in self.groups}


def crossing(samples: list[tuple[float, int]], target: float) -> float:
    """When the row count reached ``target``, interpolated between two polls."""
    previous = samples[0]
    for sample in samples:
        if sample[1] >= target:
            if sample[1] == previous[1]:
                return sample[0]
            return previous[0] + (sample[0] - previous[0]) * (target - previous[1]) / (sample[1] - previous[1])
        previous = sample
    raise ValueError(f"count never reached {target}")


def drain(config: str, pause: str, receive_max: int, repetition: int, messages: int, uuids: list[str],
          workdir: Path, cluster: PostgresCluster | None) -> Run:
    """One measured drain of ``messages`` queued messages by the configuration's gateways."""
    database, count = CONFIGS[config]
    run = Run(config, pause, repetition, messages)
    expected = messages * ROWS_PER_MESSAGE
    workdir.mkdir(parents=True)
    broker = Mosquitto(extra_config=["max_queued_messages 0", f"sys_interval {SYS_INTERVAL_S}"])
    gateways: list[Gateway] = []
    counters: dict[str, dict[str, float]] = {}
    if database == "sqlite":
        opened = sqlite_database(workdir, uuids)
    else:
        assert cluster is not None
        opened = postgres_database(cluster, f"scaleout_{repetition}_{config.replace('-', '_')}", uuids)
    try:
        broker.start()
        with opened as (db_env, store):
            gateways = make_gateways(count, database == "postgres", broker, db_env, workdir, receive_max)
            for gateway in gateways:
                gateway.start(workdir)
            for gateway in gateways:  # sessions and (shared) subscriptions exist from here on
                gateway.wait_ready()
            if pause == "sigterm":
                codes = stop_all(gateways)
                if codes != [0] * count:
                    raise RuntimeError(f"first stop: exit codes {codes}")
            else:
                for gateway in gateways:
                    gateway.signal(signal.SIGSTOP)
            before = stored_messages(broker)
            acked = publish_backlog(broker, uuids, messages)
            if acked != messages:
                raise RuntimeError(f"the broker acknowledged {acked} of {messages} messages")
            run.queued = stored_messages(broker) - before
            if run.queued < messages:
                raise RuntimeError(f"the broker stores only {run.queued} new messages for {messages} published "
                                   f"while the gateways were paused: it did not queue them for their sessions")

            groups: dict[str, Callable[[], list[int]]] = {g.name: g.pids for g in gateways}
            groups["broker"] = lambda: [broker.pid] if broker.pid is not None else []
            if cluster is not None and database == "postgres":
                postmaster = int((cluster.datadir / "postmaster.pid").read_text().split()[0])
                groups["postgres"] = lambda: with_children(postmaster)
            meter = CpuMeter(groups)
            meter.mark()
            started = time.monotonic()
            for gateway in gateways:
                if pause == "sigterm":
                    gateway.start(workdir)
                else:
                    gateway.signal(signal.SIGCONT)
            samples: list[tuple[float, int]] = [(started, 0)]
            poll_times = []
            progress = started
            deadline = started + DRAIN_BASE_S + messages / DRAIN_MIN_RATE
            while samples[-1][1] < expected and time.monotonic() < min(deadline, progress + STALL_S):
                time.sleep(POLL_S)
                asked = time.monotonic()
                rows = store.count()
                now = time.monotonic()
                poll_times.append(now - asked)
                if rows != samples[-1][1]:
                    progress = now
                samples.append((now, rows))
                meter.mark()
                if not all(g.alive() for g in gateways):
                    raise RuntimeError("a gateway exited during the drain:\n" +
                                       "\n".join(g.log_tail() for g in gateways if not g.alive()))
            time.sleep(SETTLE_S)
            counters = {g.name: g.counters() for g in gateways}
            run.exit_codes = stop_all(gateways)
            run.stored_rows = store.count()
            run.seq_rows, run.seq_distinct, run.seq_doubled = store.sequence_check()
    finally:
        stop_all(gateways)
        broker.close()
        for gateway in gateways:
            if gateway.log_path.exists():
                run.log_lines.extend(f"{gateway.name}: {line}" for line in
                                     gateway.log_path.read_text(errors="replace").splitlines()
                                     if LOG_LINE.search(line))

    for name, values in counters.items():
        run.per_gateway[name] = int(values.get("autocore_telemetry_messages_total", -1))
        run.refused += int(values.get("autocore_telemetry_refused_total", 0))
        run.duplicates_skipped += int(values.get("autocore_db_duplicates_skipped_total", 0))
        run.write_errors += int(values.get("autocore_db_write_errors_total", 0))
    run.complete = samples[-1][1] >= expected
    reached = min(expected, samples[-1][1])
    if not run.complete:  # a failed run; its rates are measured on what did arrive
        print(f"  {config}: the drain stopped at {samples[-1][1]} of {expected} rows", flush=True)
    if reached >= 10:
        run.first_row_s = next(t for t, rows in samples if rows > 0) - started
        run.total_s = crossing(samples, reached) - started
        low, high = (crossing(samples, f * reached) for f in WINDOW)
        run.drain_per_s = (WINDOW[1] - WINDOW[0]) * reached / ROWS_PER_MESSAGE / (high - low)
        run.poll_ms = 1000 * statistics.mean(poll_times)
        run.host_busy_percent, run.cpu = meter.shares(low, high)
    return run


# -- reporting ---------------------------------------------------------------------------------------


def describe(run: Run) -> str:
    split = " ".join(f"{name}={n}" for name, n in run.per_gateway.items())
    cpu = " ".join(f"{name}={pct:.0f}%" for name, pct in run.cpu.items())
    return (f"[{run.repetition}] {run.config:11s} {'OK' if run.ok else 'MISMATCH':8s} "
            f"drain {run.drain_per_s:6.0f} msg/s  total {run.total_s:5.1f} s  first row {run.first_row_s:4.2f} s  "
            f"queued {run.queued}  rows {run.stored_rows}  seq {run.seq_distinct}/{run.messages} "
            f"(doubled {run.seq_doubled})  split {split}  cpu {cpu}  host {run.host_busy_percent:.0f}%  "
            f"poll {run.poll_ms:.1f} ms  refused {run.refused}  dup-skipped {run.duplicates_skipped}  "
            f"write-errors {run.write_errors}  exit {run.exit_codes}")


def cpu_share(run: Run, prefix: str) -> float:
    """CPU of the process groups whose name starts with ``prefix``, in % of one core."""
    return sum(share for name, share in run.cpu.items() if name.startswith(prefix))


def summary(runs: list[Run], configs: list[str]) -> str:
    medians = {c: statistics.median(r.drain_per_s for r in runs if r.config == c) for c in configs}
    header = ["config", "drain msg/s", "min-max", "total s", "vs sqlite-x1", "vs postgres-x1",
              "CPU % gateways", "broker", "postgres", "host busy %", "lost", "runs OK"]
    table = [header]
    for config in configs:
        mine = [r for r in runs if r.config == config]
        rates = [r.drain_per_s for r in mine]
        ratios = [f"{medians[config] / medians[base]:.2f}x" if medians.get(base) else "-"
                  for base in ("sqlite-x1", "postgres-x1")]
        lost = [r.messages - r.seq_distinct for r in mine]
        table.append([config, f"{medians[config]:,.0f}", f"{min(rates):,.0f}-{max(rates):,.0f}",
                      f"{statistics.median(r.total_s for r in mine):.1f}", *ratios,
                      *(f"{statistics.median(cpu_share(r, group) for r in mine):.0f}"
                        for group in ("gw-", "broker", "postgres")),
                      f"{statistics.median(r.host_busy_percent for r in mine):.0f}",
                      ",".join(str(n) for n in lost), f"{sum(r.ok for r in mine)}/{len(mine)}"])
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in table)


def measure(args: argparse.Namespace, configs: list[str], receive_max: int, uuids: list[str]) -> list[Run]:
    """Every configuration, interleaved (the order rotates), ``args.repeat`` times; the runs in order."""
    runs: list[Run] = []
    with contextlib.ExitStack() as stack:
        if args.keep is None:
            folder = Path(tempfile.mkdtemp(prefix="autocore-scaleout-"))
            stack.callback(shutil.rmtree, folder, ignore_errors=True)
        else:
            folder = args.keep
        cluster = None
        if any(CONFIGS[c][0] == "postgres" for c in configs):
            cluster = stack.enter_context(postgres_clusters())()
            print(f"PostgreSQL {cluster.psql('SHOW server_version').strip()} on port {cluster.port}", flush=True)
        for repetition in range(args.repeat):
            shift = repetition % len(configs)
            for config in configs[shift:] + configs[:shift]:
                run = drain(config, args.pause, receive_max, repetition, args.messages, uuids,
                            folder / f"{repetition}-{config}", cluster)
                runs.append(run)
                print(describe(run), flush=True)
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000, help="QoS 1 messages per drain")
    parser.add_argument("--devices", type=int, default=100, help="simulated devices (registered)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (report medians)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {', '.join(CONFIGS)}")
    parser.add_argument("--pause", choices=PAUSES, default="sigterm",
                        help="how gateways are paused while the backlog is published (module docstring)")
    parser.add_argument("--receive-max", default="100",
                        help="MAX_CONCURRENT_MESSAGES of every gateway (default: the gateway's own); "
                             "auto: as big as the backlog")
    parser.add_argument("--keep", type=Path, default=None, help="keep the gateway logs in this folder")
    args = parser.parse_args(argv)
    configs = [c for c in args.configs.split(",") if c]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration(s): {', '.join(unknown)}")
    if args.keep is not None and args.keep.exists() and any(args.keep.iterdir()):
        parser.error(f"--keep {args.keep} is not empty")
    uuids = [f"bench-{i:04d}" for i in range(args.devices)]
    if args.receive_max == "auto":
        receive_max = min(65535, max(100, -(-args.messages // RING_PER_RECEIVE_MAX) + 64))
    else:
        receive_max = int(args.receive_max)
    began = time.monotonic()
    try:
        runs = measure(args, configs, receive_max, uuids)
    except KeyboardInterrupt:  # everything was stopped on the way out
        print("interrupted", file=sys.stderr)
        return 130
    print()
    print(f"{args.messages:,} QoS 1 messages ({ROWS_PER_MESSAGE} rows each) from {args.devices} devices, "
          f"pause {args.pause}, receive max {receive_max}, {args.repeat} repetitions (medians); drain rate "
          f"between {WINDOW[0]:.0%} and {WINDOW[1]:.0%} of the rows; wall time {time.monotonic() - began:.0f} s")
    print(summary(runs, configs))
    lines = Counter(re.sub(r"^\S+ \S+ ", "", line.split(": ", 1)[1]) for run in runs for line in run.log_lines)
    if lines:
        print("\ngateway WARNING/ERROR lines (timestamps removed), with their count:")
        for line, n in lines.most_common():
            print(f"  {n:4d}  {line}")
    if args.keep is not None:
        print(f"\nlogs kept in {args.keep}")
    return 0 if all(run.ok for run in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
