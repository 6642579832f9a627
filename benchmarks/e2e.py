"""End-to-end load benchmark: publishers -> Mosquitto -> ``autocore run`` -> SQLite, side by side with raw paho.

Everything runs on loopback in bounded loops: a private Mosquitto on a free
port, a fresh SQLite file per run with the installed schema and the simulated
devices registered, the gateway as a subprocess, and publisher processes that
simulate D devices at R Hz with the spec's telemetry payload. Each message
carries its send time (as the ``bench_sent`` analog sensor, in microseconds);
the commit time of each row is read from the database by a reader that polls
``max(id)`` every few milliseconds, so the gateway itself is not instrumented.

    python benchmarks/e2e.py                      # rates 500,1000,5000 msg/s, both builds
    python benchmarks/e2e.py --rates 1000 --duration 20 --repeat 3
    python benchmarks/e2e.py --ceiling            # flood: stored rate vs a raw paho subscriber
    python benchmarks/e2e.py --drain --repeat 5   # drain a queued backlog: gateway vs raw paho, idle machine
    python benchmarks/e2e.py --drain --qos 1 --payload full --repeat 3   # QoS 1 backlog: gateway vs its insert path
    python benchmarks/e2e.py --ramp --repeat 3    # highest zero-loss rate with p99 <= 100 ms, builds side by side
    python benchmarks/e2e.py --soak 30            # 50 devices x 10 Hz for 30 minutes, RSS slope
    python benchmarks/e2e.py --commands 100       # command pick-up latency (row -> published)
    python benchmarks/e2e.py --smoke              # a few seconds, used by CI
    python benchmarks/e2e.py --rates 1000 --builds compiled,compiled-asyncio   # uvloop's share
    python benchmarks/e2e.py --floors --rates 50,500,5000 --repeat 3 --payload full \
        --env AUTOCORE_WRITE_INTERVAL=0.02   # CPU/msg per thread against raw paho and raw sqlite3
    python benchmarks/e2e.py --overload --payload full --env AUTOCORE_WRITE_INTERVAL=0.02   # 2x its ceiling

Results print as a table and as one JSON line each (``--json FILE`` appends them);
``benchmarks/plots.py`` draws latency vs offered rate and a soak's RSS from those lines.
"""

from __future__ import annotations

import argparse
import atexit
import bisect
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from autocore import topics
from autocore.broker import Mosquitto, find_free_port
from autocore.envelope import Message, Validator

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "data" / "fixtures"
#: The spec's 10 Hz CAN telemetry (three signals); ``bench_sent`` adds a fourth row.
#: ``--payload`` replaces it for the run (the publishers take it as an argument).
PAYLOAD_TEMPLATE = json.loads((FIXTURES / "telemetry_can.json").read_text())
#: A sensor board's full v2.2.0 report, as ``benchmarks/wear.py --payload full``: the send time in
#: ``analog_sensors``, 5 ``system_status`` and 6 ``gps`` values, 12 readings (rows) per message.
FULL_PAYLOAD = {
    "protocol_version": "2.2.0",
    "uuid": "esp32-sensor-001",
    "timestamp": "2025-08-12T20:53:17Z",
    "analog_sensors": {},
    "system_status": json.loads((FIXTURES / "telemetry_analog_system.json").read_text())["system_status"],
    "gps": json.loads((FIXTURES / "telemetry_gps.json").read_text())["gps"],
}
PAYLOADS = {"can": PAYLOAD_TEMPLATE, "full": FULL_PAYLOAD}
#: The reader's polling period: the resolution of the commit times.
COMMIT_POLL_S = 0.002
#: Publishers start sending together this long after they are spawned (imports, connects), s.
PUBLISH_DELAY_S = 1.0
#: Seconds of load at the start of a run left out of the latency percentiles (devices coming online).
LATENCY_WARMUP_S = 2.0
#: Seconds a run waits after the publishers stop for the last rows to commit.
DRAIN_S = 3.0
PUBLISHER_PROCESSES = 2
#: The gateway's client id and device uuid (MQTT_CLIENT_ID's default; the benchmark does not set it).
GATEWAY_UUID = "autocore-gateway"
#: Longest a gateway may take from spawn to subscribed (imports, database, connect).
GATEWAY_START_TIMEOUT_S = 30.0
#: The broker for live load. Mosquitto leaves Nagle's algorithm on for its clients by default;
#: against the subscriber's delayed ACKs that held 5 % of deliveries for ~40 ms at 500 msg/s
#: (a raw paho subscriber's p95: 41.7 ms with the default, see benchmarks/README.md).
LIVE_BROKER_CONFIG = ["set_tcp_nodelay true"]
#: Settings given to every gateway the benchmark starts (``--env KEY=VALUE``).
GATEWAY_ENV: dict[str, str] = {}
#: Gateway variants by name; the "-asyncio" ones force the stdlib loop although uvloop is installed.
BUILDS = {
    "compiled": {},
    "pure": {"AUTOCORE_NO_EXTENSIONS": "1"},
    "compiled-asyncio": {"AUTOCORE_NO_UVLOOP": "1"},
    "pure-asyncio": {"AUTOCORE_NO_EXTENSIONS": "1", "AUTOCORE_NO_UVLOOP": "1"},
}


# -- publishers (separate processes) --------------------------------------------------


#: Each device sends in one of this many phases of its period, as free-running ESP32 timers do,
#: instead of all of a publisher's devices at once.
PHASE_SLOTS = 10
#: Seconds between two rounds of housekeeping (keepalive, PINGRESP) over a publisher's clients.
SERVICE_PERIOD_S = 1.0


def _service(clients: list[tuple[str, mqtt.Client, str]]) -> None:
    for _uuid, client, _topic in clients:
        client.loop(timeout=0)


def _publisher(host: str, port: int, uuids: list[str], rate_hz: float, duration_s: float,
               start_at: float, counter: mp.Value,  # type: ignore[valid-type]
               template: dict[str, object] | None = None) -> None:
    """Publish telemetry for ``uuids`` at ``rate_hz`` each (0: as fast as possible), QoS 0, phases spread.

    Messages are ``template`` (default PAYLOAD_TEMPLATE) with the device's uuid,
    a timestamp and the send time as the only analog sensor.

    No network threads: with no loop thread paho writes each PUBLISH to the
    socket inside ``publish()``, so the send time in the payload is the time the
    packet left, not the time it was queued for one of 25 ``loop_start()``
    threads waiting for the GIL.
    """
    clients = []
    for uuid in uuids:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{uuid}")
        client.max_queued_messages_set(0)
        client.connect(host, port, keepalive=60)
        clients.append((uuid, client, f"autocore/devices/{uuid}/telemetry"))
    deadline = time.monotonic() + 10
    while not all(client.is_connected() for _u, client, _t in clients) and time.monotonic() < deadline:
        for _uuid, client, _topic in clients:
            client.loop(timeout=0.01)
    payload = dict(template or PAYLOAD_TEMPLATE)
    time.sleep(max(0.0, start_at - time.time()))
    sent = 0
    tick = 0
    period = 1.0 / rate_hz if rate_hz > 0 else 0.0
    begin = time.monotonic()
    serviced = begin
    slots = [group for group in (clients[i::PHASE_SLOTS] for i in range(PHASE_SLOTS)) if group] if period else [clients]
    slot_s = period / len(slots)
    while time.monotonic() - begin < duration_s:
        for number, slot in enumerate(slots):
            if period:
                time.sleep(max(0.0, begin + tick * period + number * slot_s - time.monotonic()))
            for uuid, client, topic in slot:
                payload["uuid"] = uuid
                now = time.time()
                # The device's clock, as firmware stamps it (same length as the template's).
                payload["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
                payload["analog_sensors"] = {"bench_sent": now * 1e6}
                client.publish(topic, json.dumps(payload, separators=(",", ":")), qos=0)
                sent += 1
        tick += 1
        if time.monotonic() - serviced >= SERVICE_PERIOD_S:
            _service(clients)
            serviced = time.monotonic()
        if period:
            time.sleep(max(0.0, begin + tick * period - time.monotonic()))
    for _uuid, client, _topic in clients:  # what a full socket buffer held back
        while client.want_write() and client.is_connected():
            client.loop(timeout=0.05)
    time.sleep(0.5)
    for _uuid, client, _topic in clients:
        client.disconnect()
    with counter.get_lock():
        counter.value += sent


def publish(host: str, port: int, devices: int, rate_hz: float, duration_s: float,
            start_at: float | None = None) -> int:
    """Run the publisher processes to completion; return how many messages they sent.

    They start sending together at wall time ``start_at`` (default: PUBLISH_DELAY_S from now).
    """
    uuids = [f"bench-{i:04d}" for i in range(devices)]
    counter = mp.Value("q", 0)
    start_at = start_at or time.time() + PUBLISH_DELAY_S
    procs = [mp.Process(target=_publisher,
                        args=(host, port, uuids[i::PUBLISHER_PROCESSES], rate_hz, duration_s, start_at, counter,
                              PAYLOAD_TEMPLATE))
             for i in range(min(PUBLISHER_PROCESSES, devices))]
    run_to_end(procs, duration_s + 30)
    return int(counter.value)


def stop_run(gateway: subprocess.Popen[bytes], *threads: ProcessSampler | CommitReader) -> None:
    """End a measured run: stop and join the measuring threads, then the gateway (SIGTERM)."""
    for thread in threads:
        thread.stop_event.set()
        thread.join()
    gateway.send_signal(signal.SIGTERM)
    gateway.wait(30)


def run_to_end(procs: list[mp.Process], timeout_s: float) -> None:
    """Start the publisher processes and wait for them; one still running after ``timeout_s`` is killed."""
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout_s)
        if proc.is_alive():
            proc.kill()


# -- measuring the gateway -------------------------------------------------------------

#: The gateway's database thread (``autocore.storage.database``), by its name in /proc with NAME_THREADS.
DB_THREAD_NAME = "autocore-db"
#: Give every Python thread of the gateways started from here its name at the OS level, so the
#: database thread can be told apart in /proc/<pid>/task (see THREAD_NAMES_SITE). Set by the modes
#: that split the gateway's CPU by thread; the other modes start the gateway exactly as before.
NAME_THREADS = False
#: A ``sitecustomize`` module put on the gateway's PYTHONPATH with NAME_THREADS. Python 3.11 gives
#: its threads no OS names (all show the process's), so each thread writes its Python name into
#: /proc/self/task/<tid>/comm as it starts: one small file write per thread start, nothing after.
#: It runs before the gateway's code, from a folder that holds only this file.
THREAD_NAMES_SITE = '''"""Benchmark only (benchmarks/e2e.py): each Python thread takes its name at the OS level."""
import threading

_bootstrap_inner = threading.Thread._bootstrap_inner


def _named_bootstrap_inner(self):
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as comm:
            comm.write(self.name[:15])
    except OSError:
        pass
    _bootstrap_inner(self)


threading.Thread._bootstrap_inner = _named_bootstrap_inner
'''
_thread_names_dir: Path | None = None


def thread_names_dir() -> Path:
    """A folder holding only THREAD_NAMES_SITE as ``sitecustomize.py`` (made once, removed at exit)."""
    global _thread_names_dir
    if _thread_names_dir is None:
        _thread_names_dir = Path(tempfile.mkdtemp(prefix="autocore-bench-site-"))
        (_thread_names_dir / "sitecustomize.py").write_text(THREAD_NAMES_SITE)
        atexit.register(shutil.rmtree, _thread_names_dir, True)
    return _thread_names_dir


def _stat_cpu_s(path: str, ticks: int) -> float:
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def _voluntary_switches(path: str) -> float:
    """Times the thread blocked (here: the event loop waiting in epoll) and was woken again."""
    for line in Path(path).read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return float(line.split()[1])
    return 0.0


def read_cpu(pid: int) -> dict[str, float] | None:
    """CPU seconds (utime + stime) of ``pid`` in all, and of its threads; None once it is gone.

    ``total`` is /proc/<pid>/stat (threads that already ended included);
    ``loop`` the main thread (tid == pid), where the gateway runs its event
    loop; ``db`` the thread named DB_THREAD_NAME (only with NAME_THREADS);
    ``other`` the rest: total - loop - db. ``loop_wakeups`` counts the main
    thread's voluntary context switches, not seconds.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    try:
        cpu = {"total": _stat_cpu_s(f"/proc/{pid}/stat", ticks), "loop": 0.0}
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                seconds = _stat_cpu_s(f"/proc/{pid}/task/{tid}/stat", ticks)
                name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            except OSError:  # the thread ended meanwhile: its time is in total
                continue
            if int(tid) == pid:
                cpu["loop"] = seconds
                cpu["loop_wakeups"] = _voluntary_switches(f"/proc/{pid}/task/{tid}/status")
            elif name == DB_THREAD_NAME:
                cpu["db"] = cpu.get("db", 0.0) + seconds
    except OSError:
        return None
    cpu["other"] = cpu["total"] - cpu["loop"] - cpu.get("db", 0.0)
    return cpu


def cpu_delta(before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, float]:
    """CPU seconds spent between two read_cpu() results, per key both have."""
    if not before or not after:
        return {}
    return {key: after[key] - before[key] for key in after if key in before}


def read_cpu_at(pid: int, wall: float) -> list[dict[str, float] | None]:
    """read_cpu(pid) at wall time ``wall`` from a timer thread: the list holds the result once taken."""
    box: list[dict[str, float] | None] = []
    timer = threading.Timer(max(0.0, wall - time.time()), lambda: box.append(read_cpu(pid)))
    timer.daemon = True
    timer.start()
    return box


def per_message_us(cpu: dict[str, float], messages: int, prefix: str = "") -> dict[str, float]:
    """``cpu`` (seconds, from cpu_delta) as µs per message: {prefix}cpu_us_per_msg, {prefix}loop_us_per_msg..."""
    names = {"total": "cpu", "loop": "loop", "db": "db", "other": "other"}
    return {f"{prefix}{names[key]}_us_per_msg": round(seconds / max(messages, 1) * 1e6, 1)
            for key, seconds in cpu.items() if key in names}


class ProcessSampler(threading.Thread):
    """Samples CPU time and RSS of one PID from /proc every ``period_s``."""

    def __init__(self, pid: int, period_s: float = 1.0, threads: bool = False) -> None:
        super().__init__(daemon=True)
        self.pid, self.period_s, self.threads = pid, period_s, threads
        self.samples: list[tuple[float, float, float]] = []  # (wall, cpu seconds, rss MB)
        #: With ``threads``: (monotonic, read_cpu()) per sample.
        self.thread_samples: list[tuple[float, dict[str, float]]] = []
        self.stop_event = threading.Event()
        self.ticks = os.sysconf("SC_CLK_TCK")
        self.page_mb = os.sysconf("SC_PAGE_SIZE") / 1_048_576

    def read(self) -> tuple[float, float] | None:
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
            statm = Path(f"/proc/{self.pid}/statm").read_text().split()
        except OSError:
            return None
        return (int(stat[11]) + int(stat[12])) / self.ticks, int(statm[1]) * self.page_mb

    def run(self) -> None:
        while not self.stop_event.is_set():
            reading = self.read()
            if reading is not None:
                self.samples.append((time.monotonic(), *reading))
            if self.threads:
                cpu = read_cpu(self.pid)
                if cpu is not None:
                    self.thread_samples.append((time.monotonic(), cpu))
            self.stop_event.wait(self.period_s)

    def loaded_rss(self, started: float, loaded_until: float) -> list[float]:
        """RSS samples taken under load, from 2 s after ``started`` (monotonic) to ``loaded_until``."""
        return [s[2] for s in self.samples if started + 2 <= s[0] <= loaded_until]

    def record(self, result: Result, started: float, loaded_until: float) -> None:
        """Set ``result``'s CPU % (from 1 s after ``started``) and its peak and steady (loaded) RSS."""
        rss = [s[2] for s in self.samples]
        result.cpu_percent = round(self.cpu_percent(started + 1, loaded_until), 2)
        result.rss_peak_mb = round(max(rss, default=0.0), 1)
        result.rss_steady_mb = round(statistics.median(self.loaded_rss(started, loaded_until) or rss or [0.0]), 1)

    def cpu_percent(self, since: float, until: float) -> float:
        window = [s for s in self.samples if since <= s[0] <= until]
        if len(window) < 2:
            return 0.0
        return 100.0 * (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0])


class CommitReader(threading.Thread):
    """Records when each telemetry row id became visible to another connection."""

    def __init__(self, db_path: Path) -> None:
        super().__init__(daemon=True)
        self.db_path = db_path
        self.times: list[float] = []
        self.max_ids: list[int] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        conn = sqlite3.connect(self.db_path, timeout=10)
        last = 0
        while not self.stop_event.is_set():
            top = conn.execute("SELECT max(id) FROM telemetry_data").fetchone()[0] or 0
            if top > last:
                self.times.append(time.time())
                self.max_ids.append(top)
                last = top
            time.sleep(COMMIT_POLL_S)
        conn.close()

    def commit_time(self, row_id: int) -> float | None:
        index = bisect.bisect_left(self.max_ids, row_id)
        return self.times[index] if index < len(self.times) else None


def make_database(path: Path, devices: int) -> None:
    """The installed schema plus the simulated devices, registered as the Config App would."""
    with sqlite3.connect(path) as conn:
        conn.executescript((FIXTURES / "original_schema.sql").read_text())
        now = time.strftime("%Y-%m-%d %H:%M:%S")
        conn.executemany(
            "INSERT INTO devices (uuid, name, type, status, is_active, created_at, updated_at) "
            "VALUES (?, ?, 'sensor_board', 'offline', 1, ?, ?)",
            [(f"bench-{i:04d}", f"Bench {i}", now, now) for i in range(devices)])


def spawn_gateway(broker: Mosquitto, db_path: Path, build: str, workdir: Path,
                  metrics_port: int = 0, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``autocore run`` without waiting for it; its log is appended to, so a restart keeps the first run's.

    The metrics endpoint stays off (``metrics_port`` 0) unless a caller reads it,
    and the rate limit is off (a throughput benchmark) unless ``extra_env`` sets it.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MQTT_", "AUTOCORE_", "DATABASE_"))}
    env.update(BUILDS[build])
    env.update({"MQTT_BROKER": broker.host, "MQTT_PORT": str(broker.port), "DATABASE_PATH": str(db_path),
                "LOG_FILE": "", "LOG_LEVEL": "WARNING", "AUTOCORE_RATE_LIMIT": "0",
                "AUTOCORE_METRICS_PORT": str(metrics_port)})
    env.update(GATEWAY_ENV)
    env.update(extra_env or {})
    if NAME_THREADS:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(thread_names_dir()), env.get("PYTHONPATH"))))
    log = open(workdir / f"gateway-{build}.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "autocore", "run", "--env-file", "/dev/null"], env=env,
                            stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    log.close()
    return proc


def start_gateway(broker: Mosquitto, db_path: Path, build: str, workdir: Path, metrics_port: int = 0,
                  extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``autocore run`` and return once its subscriptions are in place at the broker.

    Its own device row is no sign of that: the gateway writes it 'online' as
    soon as its database is ready, before it connects (a drain that trusted it
    sent SIGTERM before the first connect, so no session existed to queue the
    backlog). The gateway subscribes first and then publishes its online
    status, and the broker handles one connection's packets in order, so a
    live (not retained) online status proves the subscriptions exist.
    """
    online, subscribed = threading.Event(), threading.Event()
    watch = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-watch-{os.getpid()}")
    watch.on_subscribe = lambda *_a: subscribed.set()
    watch.on_message = lambda _c, _u, message: (
        online.set() if not message.retain and b'"online"' in message.payload else None)
    watch.connect(broker.host, broker.port)
    watch.loop_start()
    try:
        watch.subscribe(topics.status_topic(GATEWAY_UUID), 1)
        if not subscribed.wait(10):
            raise RuntimeError("no SUBACK for the gateway's status topic")
        proc = spawn_gateway(broker, db_path, build, workdir, metrics_port, extra_env)
        deadline = time.monotonic() + GATEWAY_START_TIMEOUT_S
        while not online.wait(0.1):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"gateway did not start: "
                                   f"{(workdir / f'gateway-{build}.log').read_text()[-2000:]}")
    finally:
        watch.disconnect()
        watch.loop_stop()
    return proc


@dataclass
class Result:
    mode: str
    build: str
    devices: int
    rate_hz: float
    duration_s: float
    offered_per_s: float = 0.0
    sent: int = 0
    stored: int = 0
    lost: int = 0
    stored_per_s: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    cpu_percent: float = 0.0
    rss_peak_mb: float = 0.0
    rss_steady_mb: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)
    #: (seconds since load start, RSS MB) per sample; filled by the soak only, for plots.py.
    rss_series: list[tuple[float, float]] = field(default_factory=list)
    #: WARNING/ERROR lines of the gateway's log (it runs at LOG_LEVEL=WARNING), first few only.
    log_warnings: list[str] = field(default_factory=list)


#: Soak samples before this (s after load start) are warm-up: caches and pools still fill, RSS still climbs.
SOAK_WARMUP_S = 120.0
#: Gateway log lines kept per run; a flood of one warning should not bloat the JSON line.
MAX_LOG_LINES = 20


def read_warnings(log_path: Path) -> list[str]:
    """WARNING/ERROR/CRITICAL lines of a gateway log, so a run that looked fine but logged trouble is visible."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    hits = [line for line in lines if any(level in line for level in ("WARNING", "ERROR", "CRITICAL", "Traceback"))]
    return hits[:MAX_LOG_LINES] + ([f"... {len(hits) - MAX_LOG_LINES} more"] if len(hits) > MAX_LOG_LINES else [])


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def rows_per_message(template: dict[str, object] | None = None) -> int:
    """Rows the gateway stores per message of ``template`` (default PAYLOAD_TEMPLATE), by its own validator."""
    return len(message_rows(template or PAYLOAD_TEMPLATE, "bench-0000", time.time() * 1e6))


def message_rows(template: dict[str, object], uuid: str, sent_us: float) -> list[tuple[str, str, str, str | None]]:
    """The rows of one message as the publishers send it (``sent_us`` its send time), as the gateway makes them."""
    topic = topics.telemetry_topic(uuid)
    message = Validator().validate(topics.parse_topic(topic), message_body(template, uuid, sent_us))
    if not isinstance(message, Message):
        raise RuntimeError(f"the gateway would refuse the benchmark's payload: {message}")
    return list(message.rows)


def message_body(template: dict[str, object], uuid: str, sent_us: float) -> bytes:
    """One message's payload exactly as ``_publisher`` builds it."""
    payload = dict(template)
    payload["uuid"] = uuid
    payload["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(sent_us / 1e6))
    payload["analog_sensors"] = {"bench_sent": sent_us}
    return json.dumps(payload, separators=(",", ":")).encode()


def wait_for_rows(reader: CommitReader, rows: int, timeout_s: float) -> None:
    """Return once the reader saw row id ``rows`` committed (telemetry ids count from 1), or after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not (reader.max_ids and reader.max_ids[-1] >= rows):
        time.sleep(COMMIT_POLL_S)


def run_gateway(broker: Mosquitto, build: str, devices: int, rate_hz: float, duration_s: float,
                mode: str = "rate", sample_period_s: float = 1.0, idle_s: float = 0.0) -> Result:
    """One measured run of the gateway under the given load.

    Besides latency, loss, CPU % and RSS: CPU per stored message (µs, in
    ``extra``), from the start of the load to the commit of its last row (or
    DRAIN_S after the publishers stopped), per thread when NAME_THREADS is set.
    With ``idle_s`` the gateway's CPU is first read over that many seconds
    without traffic (``idle_cpu_percent``).
    """
    with tempfile.TemporaryDirectory(prefix="autocore-bench-") as folder:
        workdir = Path(folder)
        db_path = workdir / "autocore.db"
        make_database(db_path, devices)
        gateway = start_gateway(broker, db_path, build, workdir)
        sampler = ProcessSampler(gateway.pid, sample_period_s)
        reader = CommitReader(db_path)
        sampler.start()
        reader.start()
        time.sleep(1.0)
        idle: dict[str, float] = {}
        if idle_s:
            before = read_cpu(gateway.pid)
            idle_from = time.monotonic()
            time.sleep(idle_s)
            idle = {key: 100 * seconds / (time.monotonic() - idle_from)
                    for key, seconds in cpu_delta(before, read_cpu(gateway.pid)).items() if key != "loop_wakeups"}
        started = time.monotonic()
        load_start = time.time() + PUBLISH_DELAY_S
        cpu_start = read_cpu_at(gateway.pid, load_start)
        sent = publish(broker.host, broker.port, devices, rate_hz, duration_s, load_start)
        loaded_until = time.monotonic()
        wait_for_rows(reader, sent * rows_per_message(), DRAIN_S)
        cpu_end = read_cpu(gateway.pid)
        time.sleep(max(0.0, loaded_until + DRAIN_S - time.monotonic()))
        stop_run(gateway, reader, sampler)
        with sqlite3.connect(db_path) as conn:
            rows = conn.execute("SELECT id, data_value FROM telemetry_data WHERE data_key='analog_bench_sent'"
                                ).fetchall()
        # Steady-state latency: the first LATENCY_WARMUP_S of load are left out when the run is long
        # enough, and reported apart (p99_incl_warmup_ms). In the first second, while the 50 devices
        # come online, p99 was 147 ms against <= 53 ms in every later second (compiled, 250 msg/s),
        # and that second alone decided the run's p99 and so the ramp.
        warmup_end = load_start + (LATENCY_WARMUP_S if duration_s > 2 * LATENCY_WARMUP_S else 0.0)
        latencies, steady = [], []
        for row_id, sent_us in rows:
            committed = reader.commit_time(row_id)
            if committed is not None:
                latency_ms = (committed - float(sent_us) / 1e6) * 1000
                latencies.append(latency_ms)
                if float(sent_us) / 1e6 >= warmup_end:
                    steady.append(latency_ms)
        result = Result(mode, build, devices, rate_hz, duration_s)
        result.sent, result.stored = sent, len(rows)
        result.lost = max(0, sent - len(rows))
        result.offered_per_s = sent / duration_s
        result.stored_per_s = len(rows) / duration_s
        result.p50_ms, result.p95_ms, result.p99_ms = (round(percentile(steady, q), 2)
                                                       for q in (0.50, 0.95, 0.99))
        result.extra["p99_incl_warmup_ms"] = round(percentile(latencies, 0.99), 2)
        result.extra["latency_warmup_s"] = round(warmup_end - load_start, 1)
        sampler.record(result, started, loaded_until)
        spent = cpu_delta(cpu_start[0] if cpu_start else None, cpu_end)
        result.extra.update(per_message_us(spent, len(rows)))
        if spent.get("loop_wakeups"):
            result.extra["msgs_per_loop_wakeup"] = round(len(rows) / spent["loop_wakeups"], 2)
        if idle:
            result.extra["idle_cpu_percent"] = round(idle["total"], 3)
            result.extra.update({f"idle_{key}_cpu_percent": round(value, 3)
                                 for key, value in idle.items() if key != "total"})
        result.log_warnings = read_warnings(workdir / f"gateway-{build}.log")
        loaded = sampler.loaded_rss(started, loaded_until)
        if mode == "soak" and len(loaded) > 2:
            times = [s[0] - started for s in sampler.samples if started + 2 <= s[0] <= loaded_until]
            slope = statistics.linear_regression(times, loaded).slope * 60
            result.extra["rss_slope_mb_per_min"] = round(slope, 4)
            settled = [(t, rss) for t, rss in zip(times, loaded) if t >= SOAK_WARMUP_S]
            if len(settled) > 2:
                result.extra["rss_slope_after_warmup_mb_per_min"] = round(
                    statistics.linear_regression(*zip(*settled)).slope * 60, 4)
            # Start/end as medians of a minute each, so one sample caught mid-GC does not decide them.
            result.extra["rss_start_mb"] = round(statistics.median(
                rss for t, rss in zip(times, loaded) if t <= 62), 1)
            result.extra["rss_end_mb"] = round(statistics.median(
                rss for t, rss in zip(times, loaded) if t >= times[-1] - 60), 1)
            result.rss_series = [(round(s[0] - started, 1), round(s[2], 2)) for s in sampler.samples]
        return result


def _subscribe_until_stopped(host: str, port: int, client_id: str, protocol: int,
                             on_message: Callable[..., None], ready: mp.Event, stop: mp.Event) -> None:  # type: ignore[valid-type]
    """A plain paho subscriber to all telemetry (QoS 1, as the gateway): ``ready`` once subscribed, until ``stop``."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
    client.on_message = on_message
    client.on_connect = lambda c, *a: c.subscribe(TELEMETRY_FILTER, 1)
    client.on_subscribe = lambda *a: ready.set()
    client.connect(host, port)
    client.loop_start()
    stop.wait()
    client.loop_stop()


def _raw_subscriber(host: str, port: int, ready: mp.Event, stop: mp.Event, count: mp.Value,  # type: ignore[valid-type]
                    out: mp.Queue, steady_from: float) -> None:  # type: ignore[type-arg]
    """Count messages and note each one's publish->receive latency: the floor under the gateway's.

    The send time is cut out of the payload with a byte search, not a JSON parse,
    so the subscriber's CPU stays that of paho's receive path.
    """
    received = 0
    latencies: list[float] = []
    marker = b'"bench_sent":'

    def on_message(_client: object, _userdata: object, message: mqtt.MQTTMessage) -> None:
        nonlocal received
        received += 1
        payload = message.payload
        at = payload.find(marker)
        if at >= 0:
            sent_s = float(payload[at + len(marker):payload.index(b"}", at)]) / 1e6
            if sent_s >= steady_from:
                latencies.append((time.time() - sent_s) * 1000)

    _subscribe_until_stopped(host, port, "bench-raw", mqtt.MQTTv5, on_message, ready, stop)
    count.value = received
    out.put([round(percentile(latencies, q), 2) for q in (0.50, 0.95, 0.99)])


def run_raw(broker: Mosquitto, devices: int, rate_hz: float, duration_s: float, mode: str = "ceiling") -> Result:
    """A minimal paho MQTT 5 subscriber that only counts, under the same publishers as the gateway.

    With ``rate_hz`` 0 it is the flood ceiling; at a set rate its CPU % and
    publish->receive latency are what paho and the broker cost before the
    gateway does anything (the "raw-paho" build of the rates sweep).
    """
    spawn = mp.get_context("spawn")  # a fresh interpreter: its RSS is not a copy of this process
    ready, stop, count, out = spawn.Event(), spawn.Event(), spawn.Value("q", 0), spawn.Queue()
    load_start = time.time() + PUBLISH_DELAY_S
    steady_from = load_start + (LATENCY_WARMUP_S if duration_s > 2 * LATENCY_WARMUP_S else 0.0)
    proc = spawn.Process(target=_raw_subscriber, args=(broker.host, broker.port, ready, stop, count, out, steady_from))
    proc.start()
    ready.wait(10)
    assert proc.pid is not None
    sampler = ProcessSampler(proc.pid)
    sampler.start()
    time.sleep(1.0)
    started = time.monotonic()
    sent = publish(broker.host, broker.port, devices, rate_hz, duration_s, load_start)
    loaded_until = time.monotonic()
    time.sleep(DRAIN_S)
    sampler.stop_event.set()
    sampler.join()
    stop.set()
    percentiles = out.get(timeout=30)
    proc.join(10)
    result = Result(mode, "raw-paho", devices, rate_hz, duration_s, sent=sent, stored=int(count.value))
    result.offered_per_s = sent / duration_s
    result.stored_per_s = count.value / duration_s
    result.lost = max(0, sent - int(count.value))
    result.p50_ms, result.p95_ms, result.p99_ms = percentiles
    sampler.record(result, started, loaded_until)
    return result


# -- drain ceiling: a backlog queued by the broker while the consumer is away ---------
#
# The flood ceiling (--ceiling) measures the consumer while the publishers compete
# with it for the two cores, so its offered rate, and with it the ratio, moves
# 2x between runs. Here the publishers finish first: the broker queues N QoS 0
# messages for the consumer's persistent session, and only then is the consumer
# started and timed while it drains the queue, with no publisher competing for the cores.

#: Messages queued per drain run: the gateway's default ring capacity (AUTOCORE_RING_CAPACITY), so a
#: receive that runs ahead of the database cannot overflow the ring and the runs measure speed, not loss.
DRAIN_MESSAGES = 20_000
#: The rate is taken between these fractions of the messages, so connecting and start-up are not counted.
DRAIN_WINDOW = (0.10, 0.90)
#: Period of the consumer's CPU/RSS samples during a drain, s.
DRAIN_SAMPLE_S = 0.1
#: A drain is over once nothing new arrived (or was committed) for this long.
DRAIN_IDLE_S = 2.0
#: A consumer that received nothing this long after it started will not: its session had nothing queued.
DRAIN_NOTHING_S = 30.0
#: Below this CPU % (over DRAIN_IDLE_S) a gateway that commits nothing is done, not busy.
DRAIN_IDLE_CPU_PERCENT = 10.0
#: Longest a drain may take in total, however slow the consumer.
DRAIN_TIMEOUT_S = 300.0
#: Queue QoS 0 messages for offline persistent sessions, without a limit, and update $SYS every second.
#: Appended after Mosquitto's defaults, so this ``max_queued_messages`` overrides the helper's 100,000.
DRAIN_BROKER_CONFIG = ["queue_qos0_messages true", "max_queued_messages 0", "sys_interval 1"]
#: Broker statistic that counts messages held in its store (queued ones included, and retained ones).
STORE_COUNT_TOPIC = "$SYS/broker/store/messages/count"
TELEMETRY_FILTER = "autocore/devices/+/telemetry"
RAW_CLIENT_ID = "bench-raw-drain"
#: Session expiry of the raw subscriber, s: the gateway's default (AUTOCORE_SESSION_EXPIRY).
RAW_SESSION_EXPIRY_S = 3600


def _backlog_publisher(host: str, port: int, uuids: list[str], count: int, done: mp.Value,  # type: ignore[valid-type]
                       qos: int = 0, template: dict[str, object] | None = None, index: int = 0) -> None:
    """Publish ``count`` messages at ``qos`` round-robin over ``uuids``, then one QoS 1 marker as a barrier.

    QoS 0 has no acknowledgement; the broker handles one connection's packets
    in order, so the marker's PUBACK means every message before it was routed
    (queued, for an offline session). The marker's topic matches no consumer.
    Each message's send time is a whole microsecond that is ``index`` modulo
    PUBLISHER_PROCESSES and grows in each process, so it identifies the message:
    two processes' clocks read within the resolution of a double at 1.8e15 µs
    (0.25 µs) gave 31 equal values in 5,000 messages.
    """
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-backlog-{os.getpid()}")
    client.max_queued_messages_set(0)
    client.max_inflight_messages_set(0)  # QoS 1: no window of our own, the broker acknowledges as it routes
    client.connect(host, port, keepalive=60)
    client.loop_start()
    template = template or PAYLOAD_TEMPLATE
    topics = [(uuid, f"autocore/devices/{uuid}/telemetry") for uuid in uuids]
    sent_us = index - PUBLISHER_PROCESSES
    for n in range(count):
        uuid, topic = topics[n % len(topics)]
        now_us = int(time.time() * 1e6) // PUBLISHER_PROCESSES * PUBLISHER_PROCESSES + index
        sent_us = max(sent_us + PUBLISHER_PROCESSES, now_us)
        client.publish(topic, message_body(template, uuid, float(sent_us)), qos=qos)
    marker = client.publish(f"bench/marker/{os.getpid()}", b"done", qos=1)
    marker.wait_for_publish(60)
    client.disconnect()
    client.loop_stop()
    if marker.is_published():
        with done.get_lock():
            done.value += count


def publish_backlog(host: str, port: int, devices: int, total: int, qos: int = 0) -> int:
    """Publish ``total`` messages from the publisher processes; return how many the broker confirmed routing."""
    uuids = [f"bench-{i:04d}" for i in range(devices)]
    done = mp.Value("q", 0)
    shares = [total // PUBLISHER_PROCESSES + (i < total % PUBLISHER_PROCESSES) for i in range(PUBLISHER_PROCESSES)]
    procs = [mp.Process(target=_backlog_publisher, args=(host, port, uuids[i::PUBLISHER_PROCESSES], shares[i], done,
                                                         qos, PAYLOAD_TEMPLATE, i))
             for i in range(PUBLISHER_PROCESSES)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
        if proc.is_alive():
            proc.kill()
    return int(done.value)


def broker_store_count(broker: Mosquitto, at_least: int = 0, timeout_s: float = 5.0) -> int:
    """The broker's stored-message count from $SYS: the first value >= ``at_least``, else the last by the timeout.

    The first value is the retained (possibly stale) one; Mosquitto publishes a
    new one each ``sys_interval`` while it changes, hence the wait.
    """
    values: list[int] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-sys-{os.getpid()}")
    client.on_message = lambda _c, _u, message: values.append(int(float(message.payload)))
    client.connect(broker.host, broker.port)
    client.subscribe(STORE_COUNT_TOPIC, 0)
    client.loop_start()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not (values and values[-1] >= at_least > 0):
        time.sleep(0.05)
    client.disconnect()
    client.loop_stop()
    return values[-1] if values else -1


def prime_raw_session(broker: Mosquitto) -> None:
    """Create the raw subscriber's persistent session (MQTT 5, session expiry, QoS 0 subscription) and leave."""
    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=RAW_CLIENT_ID, protocol=mqtt.MQTTv5)
    client.on_subscribe = lambda *_a: subscribed.set()
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = RAW_SESSION_EXPIRY_S
    client.connect(broker.host, broker.port, clean_start=True, properties=props)
    client.loop_start()
    client.subscribe(TELEMETRY_FILTER, 0)
    if not subscribed.wait(10):
        raise RuntimeError("raw subscriber: no SUBACK")
    client.disconnect()
    client.loop_stop()


def _raw_drainer(host: str, port: int, expected: int, out: mp.Queue) -> None:  # type: ignore[type-arg]
    """Resume the raw session, count the queued messages as they arrive, and report their arrival times.

    Only a timestamp per message: the least a subscriber can do with paho.
    """
    times: list[float] = []
    finished = threading.Event()

    def on_message(*_args: object) -> None:
        times.append(time.time())
        if len(times) >= expected:
            finished.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=RAW_CLIENT_ID, protocol=mqtt.MQTTv5)
    client.on_message = on_message
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = RAW_SESSION_EXPIRY_S
    client.connect(host, port, clean_start=False, properties=props)
    client.loop_start()
    started = time.monotonic()
    seen = -1
    while time.monotonic() - started < DRAIN_TIMEOUT_S and not finished.wait(DRAIN_IDLE_S):
        if len(times) == seen and (seen > 0 or time.monotonic() - started > DRAIN_NOTHING_S):
            break  # stalled, or nothing was queued for us: report what arrived
        seen = len(times)
    client.disconnect()
    client.loop_stop()
    out.put(times)


class ConnectWatcher(threading.Thread):
    """Records when a TCP connection to ``port`` became ESTABLISHED, from /proc/net/tcp.

    The start of a drain, seen from outside: the broker sends the queued
    messages right after the CONNACK, so this is when draining can begin,
    after the consumer's own start-up (imports, database). Each drain has a
    private broker and its publishers are gone, so the only client is the consumer.
    """

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port_hex = f":{port:04X}"
        self.connected_at: float | None = None
        self.stop_event = threading.Event()

    def run(self) -> None:
        while self.connected_at is None and not self.stop_event.is_set():
            for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[2].endswith(self.port_hex) and fields[3] == "01":  # remote port, ESTABLISHED
                    self.connected_at = time.time()
                    break
            time.sleep(COMMIT_POLL_S)


#: Gateway counters read once after a drain: where messages went when rows are missing.
DRAIN_METRICS = ("autocore_messages_received", "autocore_telemetry_messages", "autocore_telemetry_refused",
                 "autocore_ring_dropped", "autocore_ring_high_water", "autocore_mqtt_reconnects",
                 "autocore_handler_failures", "autocore_mqtt_read_pauses")


def scrape_metrics(port: int) -> dict[str, float]:
    """DRAIN_METRICS from the gateway's /metrics (summed over labels); empty if it does not answer.

    Read once, after the drain, so the endpoint costs the loop nothing while it is measured.
    """
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return {}
    values: dict[str, float] = {}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        for wanted in DRAIN_METRICS:
            if name in (wanted, f"{wanted}_total"):
                values[wanted] = values.get(wanted, 0.0) + float(line.rsplit(" ", 1)[1])
    return values


def drain_result(build: str, devices: int, count: int, queued: int, times: list[float],
                 connected_at: float | None, sampler: ProcessSampler) -> Result:
    """A drain's Result: ``stored_per_s`` is messages / (last stored - connected), ``duration_s`` that span.

    Also ``window_per_s``: the rate between DRAIN_WINDOW's fractions of the
    messages. For the raw subscriber both measure the same thing. For the
    gateway ``times`` are commit times, and a two-stage pipeline makes the
    window misleading: when the loop thread receives far ahead of the database
    thread (it may hold the GIL for seconds), 10 % of the rows are committed
    only after all messages were received and the window sees the database
    alone. Connect-to-last-row counts both stages, whatever their overlap.
    CPU is the consumer's over the connect-to-last span (the sampler's clock is
    monotonic, ``times`` are wall clock: shifted by their current difference).
    """
    result = Result("drain", build, devices, 0.0, 0.0, sent=count, stored=len(times))
    result.lost = max(0, count - len(times))
    result.extra["broker_store_delta"] = queued
    result.rss_peak_mb = round(max((s[2] for s in sampler.samples), default=0.0), 1)
    if len(times) < 10 or connected_at is None:
        return result
    lo, hi = (int(f * (len(times) - 1)) for f in DRAIN_WINDOW)
    span = times[-1] - connected_at
    result.duration_s = round(span, 3)
    result.stored_per_s = round(len(times) / span, 1)
    result.extra["window_per_s"] = round((hi - lo) / (times[hi] - times[lo]), 1)
    result.extra["first_after_connect_s"] = round(times[0] - connected_at, 3)
    shift = time.monotonic() - time.time()
    window = [s for s in sampler.samples if connected_at + shift <= s[0] <= times[-1] + shift]
    if len(window) >= 2:
        cpu_s = window[-1][1] - window[0][1]
        wall_s = window[-1][0] - window[0][0]
        result.cpu_percent = round(100 * cpu_s / wall_s, 1)
        result.extra["cpu_us_per_msg"] = round(cpu_s / wall_s / result.stored_per_s * 1e6, 1)
    threads = [s for s in sampler.thread_samples if connected_at + shift <= s[0] <= times[-1] + shift]
    if len(threads) >= 2:
        wall_s = threads[-1][0] - threads[0][0]
        for key, value in per_message_us(cpu_delta(threads[0][1], threads[-1][1]), 1).items():
            if key != "cpu_us_per_msg":
                result.extra[key] = round(value / wall_s / result.stored_per_s, 1)
    return result


def sampled_answer(proc: Any, out: Any, timeout_s: float, join_s: float) -> tuple[Any, ProcessSampler]:
    """Sample a started process's CPU and RSS until it puts its one answer on ``out``, then let it end."""
    assert proc.pid is not None
    sampler = ProcessSampler(proc.pid, DRAIN_SAMPLE_S)
    sampler.start()
    answer = out.get(timeout=timeout_s)
    sampler.stop_event.set()
    sampler.join()
    proc.join(join_s)
    return answer, sampler


def run_drain_raw(devices: int, count: int) -> Result:
    """Drain ceiling of a minimal paho MQTT 5 subscriber, on a private broker of its own."""
    with Mosquitto(extra_config=DRAIN_BROKER_CONFIG) as broker:
        prime_raw_session(broker)
        before = broker_store_count(broker, timeout_s=1.5)
        published = publish_backlog(broker.host, broker.port, devices, count)
        queued = broker_store_count(broker, before + published) - before
        out: mp.Queue = mp.Queue()  # type: ignore[type-arg]
        watcher = ConnectWatcher(broker.port)
        watcher.start()
        proc = mp.Process(target=_raw_drainer, args=(broker.host, broker.port, published, out))
        proc.start()
        times, sampler = sampled_answer(proc, out, DRAIN_TIMEOUT_S + 30, join_s=10)
        watcher.stop_event.set()
    return drain_result("raw-paho", devices, published, queued, times, watcher.connected_at, sampler)


def run_drain_gateway(build: str, devices: int, count: int, qos: int = 0) -> Result:
    """Drain ceiling of the gateway: its session is made by a first run, then it drains the backlog into SQLite.

    The first ``autocore run`` subscribes under the gateway's persistent session
    (AUTOCORE_SESSION_EXPIRY, 3600 s by default) and is stopped with SIGTERM;
    the session outlives it. The rate is that of commits, read as in the other modes.
    The backlog is published at ``qos``; the gateway subscribes at QoS 1, so a
    QoS 1 backlog reaches it at QoS 1 (acknowledged after each commit, within
    its receive maximum). ``duplicates`` counts messages stored more than once.
    """
    with Mosquitto(extra_config=DRAIN_BROKER_CONFIG) as broker, \
            tempfile.TemporaryDirectory(prefix="autocore-bench-") as folder:
        workdir = Path(folder)
        db_path = workdir / "autocore.db"
        make_database(db_path, devices)
        first = start_gateway(broker, db_path, build, workdir)
        first.send_signal(signal.SIGTERM)
        first.wait(30)
        before = broker_store_count(broker, timeout_s=1.5)
        published = publish_backlog(broker.host, broker.port, devices, count, qos)
        queued = broker_store_count(broker, before + published) - before
        reader = CommitReader(db_path)
        reader.start()
        watcher = ConnectWatcher(broker.port)
        watcher.start()
        spawned = time.time()
        metrics_port = find_free_port()
        gateway = spawn_gateway(broker, db_path, build, workdir, metrics_port)
        sampler = ProcessSampler(gateway.pid, DRAIN_SAMPLE_S, threads=NAME_THREADS)
        sampler.start()
        # Done when every row is in, or when nothing was committed for DRAIN_IDLE_S while the
        # gateway was idle too: a busy gateway may hold back commits for seconds (pure build,
        # loop thread saturated), and stopping it then would turn its backlog into "loss".
        last_row = published * rows_per_message()
        started = time.monotonic()
        deadline = started + DRAIN_TIMEOUT_S
        ended = "timeout"
        while time.monotonic() < deadline:
            time.sleep(0.1)
            if gateway.poll() is not None:
                ended = "gateway exited"
                break
            if reader.max_ids and reader.max_ids[-1] >= last_row:
                ended = "complete"
                break
            now = time.monotonic()
            quiet = (time.time() - reader.times[-1] > DRAIN_IDLE_S if reader.times
                     else now - started > DRAIN_NOTHING_S)
            if quiet and sampler.cpu_percent(now - DRAIN_IDLE_S, now) < DRAIN_IDLE_CPU_PERCENT:
                ended = "idle"
                break
        counters = scrape_metrics(metrics_port)
        stop_run(gateway, sampler, reader)
        with sqlite3.connect(db_path) as conn:
            ids = [row[0] for row in conn.execute(
                "SELECT id FROM telemetry_data WHERE data_key='analog_bench_sent' ORDER BY id")]
            distinct = conn.execute("SELECT count(DISTINCT data_value) FROM telemetry_data"
                                    " WHERE data_key='analog_bench_sent'").fetchone()[0]
        times = [t for t in (reader.commit_time(row_id) for row_id in ids) if t is not None]
        watcher.stop_event.set()
        result = drain_result(build, devices, published, queued, times, watcher.connected_at, sampler)
        result.extra["qos"] = qos
        result.extra["duplicates"] = len(ids) - distinct
        result.lost = max(result.lost, published - distinct)
        if watcher.connected_at is not None:
            result.extra["connect_after_spawn_s"] = round(watcher.connected_at - spawned, 2)
        result.extra.update(counters)
        result.extra["ended_" + ended.replace(" ", "_")] = 1
        result.log_warnings = read_warnings(workdir / f"gateway-{build}.log")
        return result


def drain_summary(results: list[Result], configs: list[str]) -> str:
    """Medians per configuration and the gateway/raw ratios: median of the per-repetition ratios, and of medians."""
    def median_of(runs: list[Result], key: str) -> float:
        return statistics.median(r.extra.get(key, 0.0) for r in runs)

    raw = [r for r in results if r.build == "raw-paho"]
    raw_rate = statistics.median(r.stored_per_s for r in raw)
    raw_window = median_of(raw, "window_per_s")
    rows = [("config", "runs", "msg/s median", "min", "max", "ratio (median)", "ratio of medians",
             "10-90% msg/s", "10-90% ratio of medians", "CPU us/msg", "lost (max)")]
    for config in configs:
        runs = [r for r in results if r.build == config]
        rates = [r.stored_per_s for r in runs]
        ratios = [r.extra["ratio_to_raw"] for r in runs if "ratio_to_raw" in r.extra]
        window = median_of(runs, "window_per_s")
        rows.append((config, str(len(runs)), f"{statistics.median(rates):.0f}", f"{min(rates):.0f}",
                     f"{max(rates):.0f}", f"{statistics.median(ratios):.3f}" if ratios else "-",
                     f"{statistics.median(rates) / raw_rate:.3f}", f"{window:.0f}",
                     f"{window / max(raw_window, 1e-9):.3f}", f"{median_of(runs, 'cpu_us_per_msg'):.0f}",
                     str(max(r.lost for r in runs))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows)


def run_commands(broker: Mosquitto, build: str, count: int, spacing_s: float = 0.1) -> Result:
    """Insert command rows one by one, as the Config App does, against a relay board that confirms.

    Reports pick-up latency (row created -> marked sent, i.e. published) and
    round trip (created -> acknowledged by the board's relay state).
    """
    with tempfile.TemporaryDirectory(prefix="autocore-bench-") as folder:
        workdir = Path(folder)
        db_path = workdir / "autocore.db"
        make_database(db_path, 1)
        with sqlite3.connect(db_path) as conn:
            conn.execute("UPDATE devices SET type='esp32_relay'")
        gateway = start_gateway(broker, db_path, build, workdir)
        board = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-board")
        channels = {str(ch): False for ch in range(1, 17)}

        def on_set(client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
            body = json.loads(message.payload)
            channels[str(body["channel"])] = body["command"] == "on"
            client.publish("autocore/devices/bench-0000/relays/state", json.dumps(
                {"protocol_version": "2.2.0", "uuid": "bench-0000", "channels": channels}), qos=1)

        board.on_message = on_set
        board.connect(broker.host, broker.port)
        board.subscribe("autocore/devices/bench-0000/relays/set", 1)
        board.loop_start()
        board.publish("autocore/devices/bench-0000/status",
                      json.dumps({"protocol_version": "2.2.0", "uuid": "bench-0000", "status": "online"}), qos=1)
        time.sleep(1.0)
        with sqlite3.connect(db_path) as conn:
            for n in range(count):
                conn.execute("INSERT INTO gateway_commands (device_uuid, command_type, payload, created_at, status)"
                             " VALUES ('bench-0000', 'relay', ?, ?, 'pending')",
                             (json.dumps({"channel": n % 16 + 1, "command": "on" if n % 2 else "off"}),
                              time.strftime("%Y-%m-%d %H:%M:%S.") + f"{int(time.time() % 1 * 1e6):06d}"))
                conn.commit()
                time.sleep(spacing_s)
        time.sleep(DRAIN_S)
        board.loop_stop()
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(30)
        with sqlite3.connect(db_path) as conn:
            rows = conn.execute("SELECT created_at, sent_at, completed_at, status FROM gateway_commands").fetchall()
    parse = datetime.fromisoformat
    pickup = [(parse(s) - parse(c)).total_seconds() * 1000 for c, s, _d, _st in rows if s]
    round_trip = [(parse(d) - parse(c)).total_seconds() * 1000 for c, _s, d, st in rows if d and st == "acked"]
    result = Result("commands", build, 1, 1 / spacing_s, count * spacing_s, sent=count, stored=len(round_trip))
    result.lost = count - len(round_trip)
    result.p50_ms, result.p95_ms, result.p99_ms = (round(percentile(pickup, q), 2) for q in (0.5, 0.95, 0.99))
    result.extra = {"round_trip_p50_ms": round(percentile(round_trip, 0.5), 2),
                    "round_trip_p95_ms": round(percentile(round_trip, 0.95), 2)}
    return result


# -- ramp: the highest offered rate with zero loss and p99 within the limit -----------

#: First offered total of the ramp, msg/s; each step multiplies it by RAMP_FACTOR up to RAMP_MAX_PER_S.
RAMP_FROM_PER_S = 250.0
RAMP_FACTOR = 1.5
RAMP_MAX_PER_S = 20_000.0
#: Bisection steps between a build's last clean and first failing total (geometric midpoints).
RAMP_BISECT_STEPS = 2
#: The issue's bound for "clean": p99 publish -> committed, ms.
RAMP_P99_LIMIT_MS = 100.0


def is_clean(result: Result, p99_limit_ms: float) -> bool:
    return result.lost == 0 and result.p99_ms <= p99_limit_ms


def ramp_step(broker: Mosquitto, totals: dict[str, float], devices: int, duration_s: float, repeat: int,
              p99_limit_ms: float, json_file: Path | None) -> dict[str, Result]:
    """Run each build at its offered total, interleaved (A, B, A, B, ...); return each build's median run.

    The median is by p99. A step is clean for a build when most of its runs
    are (zero loss, p99 within the limit), so one run disturbed by another job
    on the shared cores neither passes nor fails a rate on its own.
    """
    runs: dict[str, list[Result]] = {build: [] for build in totals}
    for _ in range(repeat):
        for build, total in totals.items():
            result = run_gateway(broker, build, devices, total / devices, duration_s, mode="ramp")
            result.extra["target_per_s"] = round(total, 1)
            report(result, json_file)
            runs[build].append(result)
    medians = {}
    for build, build_runs in runs.items():
        median = sorted(build_runs, key=lambda r: r.p99_ms)[len(build_runs) // 2]
        clean = sum(is_clean(r, p99_limit_ms) for r in build_runs)
        median.extra["clean_runs"] = clean
        median.extra["step_clean"] = int(2 * clean > len(build_runs))
        medians[build] = median
    return medians


def ramp(broker: Mosquitto, builds: list[str], devices: int, duration_s: float, repeat: int,
         start_per_s: float, p99_limit_ms: float, json_file: Path | None) -> list[Result]:
    """Raise the offered total step by step with all builds side by side, then bisect each build's limit.

    A build leaves the ramp at its first unclean step; the bisection then
    narrows the gap between its last clean and that failing total. Returns the
    median run of every step, and prints and reports (mode ``ramp-limit``)
    each build's highest clean total.
    """
    steps: list[Result] = []
    clean: dict[str, float | None] = {build: None for build in builds}
    failed: dict[str, float] = {}
    total = start_per_s
    while total <= RAMP_MAX_PER_S and len(failed) < len(builds):
        medians = ramp_step(broker, {b: total for b in builds if b not in failed}, devices, duration_s, repeat,
                            p99_limit_ms, json_file)
        for build, median in medians.items():
            steps.append(median)
            if median.extra["step_clean"]:
                clean[build] = total
            else:
                failed[build] = total
        total *= RAMP_FACTOR
    for _ in range(RAMP_BISECT_STEPS):
        targets = {b: (clean[b] * failed[b]) ** 0.5 for b in failed if clean[b] is not None}
        if not targets:
            break
        for build, median in ramp_step(broker, targets, devices, duration_s, repeat, p99_limit_ms,
                                       json_file).items():
            steps.append(median)
            if median.extra["step_clean"]:
                clean[build] = targets[build]
            else:
                failed[build] = targets[build]
    for build in builds:
        best = [r for r in steps if r.build == build and r.extra["step_clean"]]
        limit = max(best, key=lambda r: r.extra["target_per_s"], default=None)
        summary = Result("ramp-limit", build, devices, 0.0, duration_s)
        if limit is None:
            print(f"{build}: no clean rate at or above {start_per_s:.0f} msg/s")
        else:
            summary = Result("ramp-limit", build, devices, limit.rate_hz, duration_s,
                             offered_per_s=limit.offered_per_s, stored_per_s=limit.stored_per_s,
                             p50_ms=limit.p50_ms, p95_ms=limit.p95_ms, p99_ms=limit.p99_ms,
                             cpu_percent=limit.cpu_percent, extra={"target_per_s": limit.extra["target_per_s"]})
            note = f", first unclean at {failed[build]:.0f} msg/s" if build in failed else ""
            print(f"{build}: highest clean rate {limit.offered_per_s:.0f} msg/s offered (target "
                  f"{limit.extra['target_per_s']:.0f}; median p99 {limit.p99_ms:.1f} ms){note}")
        if build in failed:
            summary.extra["first_unclean_per_s"] = round(failed[build], 1)
        report(summary, json_file)
    return sorted(steps, key=lambda r: (r.extra["target_per_s"], builds.index(r.build)))


# -- QoS 1 backlog: the gateway against its own insert path ------------------------------
#
# The gateway drains a QoS 1 backlog (run_drain_gateway with qos=1); the insert
# path alone is the gateway's own storage (autocore.storage's Database, its
# commit policy and TelemetryWriter, built from the same settings as
# gateway.py builds them) fed the same rows as QoS 1 items in a process of its
# own, with no MQTT: what the gateway could store if receiving cost nothing.

#: "insert-path" takes the messages as fast as its QoS 1 ring accepts them, pausing at the ring's
#: high-water mark until the low one as the gateway pauses reading; "insert-path-window" holds at
#: most the gateway's receive maximum (MAX_CONCURRENT_MESSAGES) unacknowledged, as the broker does.
INSERT_PATHS = ("insert-path", "insert-path-window")


def _dedup_key(uuid: str, topic: str, body: bytes, timestamp: str | None) -> str:
    """The idempotency key the installed gateway gives a QoS 1 message (a copy if its helper moved)."""
    try:
        from autocore.pipeline import _dedup_key as gateway_key

        return str(gateway_key(uuid, SimpleNamespace(topic=topic, payload=body), timestamp))
    except (ImportError, AttributeError, TypeError):
        digest = hashlib.blake2b(digest_size=16)
        for part in (uuid.encode(), b"\0", topic.encode(), b"\0", body):
            digest.update(part)
        return f"{timestamp[:19]}|{digest.hexdigest()}" if timestamp else digest.hexdigest()


def _insert_path(db_path: str, environ: dict[str, str], devices: int, count: int,
                 template: dict[str, object], windowed: bool, out: mp.Queue) -> None:  # type: ignore[type-arg]
    """Store ``count`` QoS 1 messages through the gateway's Database alone; put the timings on ``out``.

    The items (validated rows, ack token, idempotency key) are made before the
    clock starts. The clock runs from the first push to the last acknowledgement
    (the commit holding the last message returned).
    """
    exec(THREAD_NAMES_SITE, {})  # name this process's threads, as the gateway's are named
    from autocore.config import Settings
    from autocore.ringbuffer import Ring
    from autocore.schema import ensure_schema
    from autocore.storage import RELIABLE_CAPACITY, Database, TelemetryItem, open_engine

    settings = Settings.from_env({**environ, "DATABASE_PATH": db_path}, env_file=None)
    engine = open_engine(settings)
    ensure_schema(engine)
    with engine.connect() as conn:
        ids = dict(conn.exec_driver_sql("SELECT uuid, id FROM devices").fetchall())
    validator = Validator()
    items = []
    for n in range(count):
        uuid = f"bench-{n % devices:04d}"
        topic = topics.telemetry_topic(uuid)
        body = message_body(template, uuid, time.time() * 1e6)
        message = validator.validate(topics.parse_topic(topic), body)
        items.append(TelemetryItem(ids[uuid], uuid, datetime.now(), list(message.rows), (n + 1, 1, 0),
                                   _dedup_key(uuid, topic, body, message.timestamp)))
    ring = Ring(settings.ring_capacity, "drop_oldest")
    reliable = Ring(max(8 * settings.max_concurrent_messages, RELIABLE_CAPACITY), "reject")
    db = Database(engine, ring, settings.telemetry_batch_size, settings.telemetry_flush_interval_s, reliable,
                  settings.write_interval_s, ack_window=settings.max_concurrent_messages)
    window = threading.Semaphore(settings.max_concurrent_messages) if windowed else None
    finished = threading.Event()
    acked = [0, 0.0]  # acknowledgements, wall time of the last

    def on_acks(tokens: list[object]) -> None:
        acked[0] += len(tokens)
        acked[1] = time.time()
        if window is not None:
            window.release(len(tokens))
        if acked[0] >= count:
            finished.set()

    db.on_acks = on_acks
    db.start()
    time.sleep(0.5)
    cpu_start, started = read_cpu(os.getpid()), time.time()
    for item in items:
        if window is not None:
            window.acquire()
        elif db.reliable_backlog_high():
            while not db.reliable_backlog_low():
                time.sleep(0.001)
        while not db.push_reliable(item):
            time.sleep(0.001)
    finished.wait(DRAIN_TIMEOUT_S)
    cpu = cpu_delta(cpu_start, read_cpu(os.getpid()))
    db.stop()
    db.close()
    with sqlite3.connect(db_path) as conn:
        stored, distinct = conn.execute("SELECT count(*), count(DISTINCT data_value) FROM telemetry_data"
                                        " WHERE data_key='analog_bench_sent'").fetchone()
    out.put({"acked": acked[0], "span_s": acked[1] - started, "cpu": cpu, "stored": stored, "distinct": distinct,
             "batches": db.batches_written})


def run_insert_path(config: str, devices: int, count: int) -> Result:
    """One insert-path run (``config`` of INSERT_PATHS) on a fresh database made as for the gateway."""
    spawn = mp.get_context("spawn")
    out = spawn.Queue()
    with tempfile.TemporaryDirectory(prefix="autocore-bench-") as folder:
        db_path = Path(folder) / "autocore.db"
        make_database(db_path, devices)
        proc = spawn.Process(target=_insert_path, args=(str(db_path), dict(GATEWAY_ENV), devices, count,
                                                        PAYLOAD_TEMPLATE, config == "insert-path-window", out))
        proc.start()
        found, sampler = sampled_answer(proc, out, DRAIN_TIMEOUT_S + 120, join_s=30)
    result = Result("drain", config, devices, 0.0, round(found["span_s"], 3), sent=count, stored=found["distinct"])
    result.lost = count - found["distinct"]
    result.stored_per_s = round(found["acked"] / found["span_s"], 1) if found["span_s"] > 0 else 0.0
    result.rss_peak_mb = round(max((s[2] for s in sampler.samples), default=0.0), 1)
    result.cpu_percent = round(100 * found["cpu"].get("total", 0.0) / max(found["span_s"], 1e-9), 1)
    result.extra.update(per_message_us(found["cpu"], found["acked"]))
    result.extra.update({"qos": 1, "duplicates": found["stored"] - found["distinct"],
                         "messages_per_commit": round(count / max(found["batches"], 1), 1)})
    return result


def drain_qos1(builds: list[str], devices: int, count: int, repeat: int,
               json_file: Path | None) -> list[Result]:
    """Rounds of: the gateway draining a QoS 1 backlog, and the insert path alone on as many messages.

    Configurations rotate from round to round; each gateway run gets its ratio
    to each insert path of the same round (``ratio_to_insert_path``,
    ``ratio_to_insert_path_window``). A run is clean when nothing was lost or
    stored twice.
    """
    configs = [*INSERT_PATHS, *builds]
    results: list[Result] = []
    for rep in range(repeat):
        shift = rep % len(configs)
        round_results: dict[str, Result] = {}
        for config in configs[shift:] + configs[:shift]:
            if config in INSERT_PATHS:
                result = run_insert_path(config, devices, count)
            else:
                result = run_drain_gateway(config, devices, count, qos=1)
            result.extra["repetition"] = rep + 1
            result.extra["clean"] = int(result.lost == 0 and result.extra.get("duplicates", 0) == 0)
            round_results[config] = result
            print(f"round {rep + 1} {config}: {result.stored_per_s:,.0f} msg/s, {result.stored}/{result.sent} stored, "
                  f"{result.extra.get('duplicates', 0)} twice, {result.extra.get('cpu_us_per_msg', 0)} µs/msg"
                  f"{''.join(f', {k[6:]}' for k in result.extra if k.startswith('ended_'))}", flush=True)
        for config in configs:
            result = round_results[config]
            if config not in INSERT_PATHS:
                for path in INSERT_PATHS:
                    result.extra[f"ratio_to_{path.replace('-', '_')}"] = round(
                        result.stored_per_s / max(round_results[path].stored_per_s, 1e-9), 3)
            report(result, json_file)
            results.append(result)
    return results


def drain_qos1_markdown(results: list[Result], configs: list[str]) -> str:
    """Per configuration: median and highest clean rate, ratios to the insert paths (median of rounds)."""
    header = ("consumer", "runs", "clean", "msg/s median", "highest clean msg/s", "min–max",
              "÷ insert path (median of rounds)", "÷ insert path, windowed", "CPU µs/msg", "loop µs/msg",
              "db µs/msg", "RSS peak MB", "lost / twice (max)")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for config in configs:
        runs = [r for r in results if r.build == config]
        if not runs:
            continue
        rates = [r.stored_per_s for r in runs]
        clean = [r.stored_per_s for r in runs if r.extra.get("clean")]

        def median(key: str, found: list[Result] = runs) -> str:
            values = [r.extra[key] for r in found if key in r.extra]
            return f"{statistics.median(values):,.3g}" if values else "–"

        lines.append("| " + " | ".join((
            config, str(len(runs)), str(len(clean)), f"{statistics.median(rates):,.0f}",
            f"{max(clean):,.0f}" if clean else "–", f"{min(rates):,.0f}–{max(rates):,.0f}",
            median("ratio_to_insert_path"), median("ratio_to_insert_path_window"),
            median("cpu_us_per_msg"), median("loop_us_per_msg"), median("db_us_per_msg"),
            f"{max(r.rss_peak_mb for r in runs):.1f}",
            f"{max(r.lost for r in runs)} / {max(r.extra.get('duplicates', 0) for r in runs)}")) + " |")
    return "\n".join(lines)


# -- overload: offered twice what the gateway can store -------------------------------
#
# The gateway's stored ceiling is its rate draining a QoS 1 backlog (drain_qos1,
# median of the rounds): what it stores with the cores to itself. A flood from
# live publishers is no measure of it: they take the cores, so the gateway
# stored 4,800-5,500 msg/s under a 42,000-58,000 msg/s flood (QoS 1 and 0) but
# 8,100 msg/s with 11,000 msg/s offered. Offered twice the drain ceiling, the
# gateway is offered more than twice what it stores under that load.

#: Seconds of each overload run.
OVERLOAD_S = 20.0
#: The overload runs offer this many times the measured ceiling.
OVERLOAD_FACTOR = 2.0
#: For the QoS 1 overload the broker delivers the publishers' QoS 0 messages at the gateway's
#: subscription QoS (1) and queues what the gateway has not taken yet, without limit.
QOS1_LIVE_BROKER_CONFIG = [*LIVE_BROKER_CONFIG, "upgrade_outgoing_qos true", "max_queued_messages 0"]
#: Longest wait after a QoS 1 overload for the broker's backlog to be stored, and longest stall in it.
OVERLOAD_DRAIN_TIMEOUT_S = 300.0
OVERLOAD_STALL_S = 15.0


def stored_messages(db_path: Path) -> int:
    with sqlite3.connect(db_path, timeout=10) as conn:
        return conn.execute("SELECT count(*) FROM telemetry_data WHERE data_key='analog_bench_sent'").fetchone()[0]


def run_overload(broker: Mosquitto, build: str, devices: int, total: float, duration_s: float, qos: int) -> Result:
    """Offer ``total`` msg/s (0: as fast as the publishers go) for ``duration_s``; then, at QoS 1, wait for the rest.

    Reports whether the gateway stayed up (``alive_after_load``, ``alive_at_end``)
    and its exit status after SIGTERM (``exit_code``), its peak RSS over the
    whole run (load and drain), what it stored during the load
    (``stored_during_load``) and in the end, and its counters.
    """
    with tempfile.TemporaryDirectory(prefix="autocore-bench-") as folder:
        workdir = Path(folder)
        db_path = workdir / "autocore.db"
        make_database(db_path, devices)
        metrics_port = find_free_port()
        gateway = start_gateway(broker, db_path, build, workdir, metrics_port)
        sampler = ProcessSampler(gateway.pid, 0.5)
        sampler.start()
        time.sleep(1.0)
        started = time.monotonic()
        load_start = time.time() + PUBLISH_DELAY_S
        cpu_start = read_cpu_at(gateway.pid, load_start)
        at_load_end: list[int] = []  # stored when the publishers' clock ran out (they flush after it)
        timer = threading.Timer(load_start + duration_s - time.time(),
                                lambda: at_load_end.append(stored_messages(db_path)))
        timer.daemon = True
        timer.start()
        sent = publish(broker.host, broker.port, devices, total / devices, duration_s, load_start)
        loaded_until = time.monotonic()
        alive_after_load = gateway.poll() is None
        timer.join()
        during_load = at_load_end[0] if at_load_end else stored_messages(db_path)
        drain_s = 0.0
        if qos:
            stored, progress = during_load, time.monotonic()
            while stored < sent and time.monotonic() - loaded_until < OVERLOAD_DRAIN_TIMEOUT_S \
                    and time.monotonic() - progress < OVERLOAD_STALL_S and gateway.poll() is None:
                time.sleep(0.5)
                now = stored_messages(db_path)
                if now > stored:
                    stored, progress = now, time.monotonic()
            drain_s = time.monotonic() - loaded_until
        else:
            time.sleep(DRAIN_S)
        cpu_end = read_cpu(gateway.pid)
        alive_at_end = gateway.poll() is None
        counters = scrape_metrics(metrics_port) if alive_at_end else {}
        sampler.stop_event.set()
        sampler.join()
        gateway.send_signal(signal.SIGTERM)
        try:
            exit_code = gateway.wait(60)
        except subprocess.TimeoutExpired:
            gateway.kill()
            exit_code = gateway.wait()
        stored = stored_messages(db_path)
        result = Result(f"overload-qos{qos}", build, devices, total / devices, duration_s, sent=sent, stored=stored)
        result.lost = max(0, sent - stored)
        result.offered_per_s = round(sent / duration_s, 1)
        result.stored_per_s = round(during_load / duration_s, 1)
        sampler.record(result, started, loaded_until)
        result.extra.update(per_message_us(cpu_delta(cpu_start[0] if cpu_start else None, cpu_end), stored))
        result.extra.update({"qos": qos, "target_per_s": round(total, 1), "stored_during_load": during_load,
                             "alive_after_load": int(alive_after_load), "alive_at_end": int(alive_at_end),
                             "exit_code": exit_code, "drain_after_load_s": round(drain_s, 1), **counters})
        result.log_warnings = read_warnings(workdir / f"gateway-{build}.log")
        return result


def overload(build: str, devices: int, ceiling_per_s: float, factor: float, duration_s: float,
             json_file: Path | None, target_per_s: float = 0.0) -> list[Result]:
    """``factor`` times ``ceiling_per_s`` (or ``target_per_s`` if set) offered at QoS 0, then at QoS 1."""
    target = target_per_s or factor * ceiling_per_s
    print(f"ceiling {ceiling_per_s:,.0f} msg/s (QoS 1 backlog drain); offering {target:,.0f} msg/s "
          f"for {duration_s:g} s at QoS 0, then at QoS 1", flush=True)
    results = []
    for qos, config in ((0, LIVE_BROKER_CONFIG), (1, QOS1_LIVE_BROKER_CONFIG)):
        with Mosquitto(extra_config=config) as broker:
            result = run_overload(broker, build, devices, target, duration_s, qos=qos)
        result.extra["ceiling_per_s"] = round(ceiling_per_s, 1)
        result.extra["offered_to_ceiling"] = round(result.offered_per_s / max(ceiling_per_s, 1e-9), 2)
        result.extra["offered_to_stored"] = round(result.offered_per_s / max(result.stored_per_s, 1e-9), 2)
        report(result, json_file)
        print(f"overload QoS {qos}: {result.offered_per_s:,.0f} msg/s offered, {result.stored_per_s:,.0f} stored "
              f"during the load, {result.stored:,}/{result.sent:,} in the end; peak RSS {result.rss_peak_mb} MB; "
              f"alive {bool(result.extra['alive_after_load'])}, exit status {result.extra['exit_code']}", flush=True)
        results.append(result)
    return results


def overload_markdown(results: list[Result]) -> str:
    header = ("run", "offered msg/s", "× ceiling", "stored during load msg/s", "offered ÷ stored", "sent",
              "stored in the end", "lost", "peak RSS MB", "alive after load", "exit status", "drain after load s",
              "ring dropped", "read pauses")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        lines.append("| " + " | ".join((
            r.mode, f"{r.offered_per_s:,.0f}", f"{r.extra.get('offered_to_ceiling', 1.0):.2f}",
            f"{r.stored_per_s:,.0f}", f"{r.extra.get('offered_to_stored', 0):.2f}", f"{r.sent:,}", f"{r.stored:,}",
            f"{r.lost:,}", f"{r.rss_peak_mb:.1f}",
            "yes" if r.extra.get("alive_after_load", 1) else "**no**", str(r.extra.get("exit_code", "–")),
            f"{r.extra.get('drain_after_load_s', 0):.1f}", f"{r.extra.get('autocore_ring_dropped', 0):,.0f}",
            f"{r.extra.get('autocore_mqtt_read_pauses', 0):,.0f}")) + " |")
    return "\n".join(lines)


# -- floors: the gateway's CPU per message against raw paho and raw sqlite3 ------------
#
# Per rate and repetition, in rotating order under the same publishers: the gateway
# (CPU split by thread), a paho subscriber that only counts over MQTT 3.1.1 and one
# over MQTT 5, and stdlib sqlite3 inserting the rows of as many messages with
# executemany, FLOOR_MESSAGES_PER_COMMIT per transaction, into the same schema
# with the gateway's connection settings. The floors are what receiving the
# messages and storing their rows cost at the least; the ratios are taken per
# repetition, so a busy spell on the shared cores moves both sides of each.

#: The configurations of a floors repetition, rotated from one repetition to the next.
FLOORS_CONFIGS = ("gateway", "paho-3.1.1", "paho-5", "sqlite3")
#: A floors run lasts at least long enough for this many messages (20 s at 50 msg/s), so that
#: the CPU clock's 10 ms ticks stay small against the CPU measured.
FLOORS_MIN_MESSAGES = 1000
#: Seconds without traffic over which each floors gateway run first reads its idle CPU.
FLOORS_IDLE_S = 10.0
#: Messages per transaction of the raw sqlite3 floor.
FLOOR_MESSAGES_PER_COMMIT = 100
#: Seconds a counting subscriber is given after the publishers stop, before its CPU is read.
SUBSCRIBER_SETTLE_S = 0.5
PAHO_PROTOCOLS = {"paho-3.1.1": mqtt.MQTTv311, "paho-5": mqtt.MQTTv5}
TELEMETRY_INSERT = ("INSERT INTO telemetry_data (timestamp, device_id, data_type, data_key, data_value, unit)"
                    " VALUES (?, ?, ?, ?, ?, ?)")


def _counting_subscriber(host: str, port: int, protocol: int, ready: mp.Event, stop: mp.Event,  # type: ignore[valid-type]
                         count: mp.Value) -> None:  # type: ignore[valid-type]
    """Subscribe to all telemetry (QoS 1, as the gateway) and count deliveries: nothing else."""
    received = 0

    def on_message(*_args: object) -> None:
        nonlocal received
        received += 1

    _subscribe_until_stopped(host, port, f"bench-count-{os.getpid()}", protocol, on_message, ready, stop)
    count.value = received


def run_counting(broker: Mosquitto, config: str, devices: int, rate_hz: float, duration_s: float) -> Result:
    """A paho subscriber that only counts (``config`` paho-3.1.1 or paho-5), under the same publishers.

    Its CPU per message is taken from the start of the load to SUBSCRIBER_SETTLE_S
    after the publishers stopped, over the messages it received.
    """
    spawn = mp.get_context("spawn")  # a fresh interpreter: its RSS is not a copy of this process
    ready, stop, count = spawn.Event(), spawn.Event(), spawn.Value("q", 0)
    proc = spawn.Process(target=_counting_subscriber,
                         args=(broker.host, broker.port, PAHO_PROTOCOLS[config], ready, stop, count))
    proc.start()
    if not ready.wait(30):
        proc.kill()
        raise RuntimeError(f"{config} subscriber: no SUBACK")
    assert proc.pid is not None
    sampler = ProcessSampler(proc.pid)
    sampler.start()
    time.sleep(1.0)
    started = time.monotonic()
    load_start = time.time() + PUBLISH_DELAY_S
    cpu_start = read_cpu_at(proc.pid, load_start)
    sent = publish(broker.host, broker.port, devices, rate_hz, duration_s, load_start)
    loaded_until = time.monotonic()
    time.sleep(SUBSCRIBER_SETTLE_S)
    cpu_end = read_cpu(proc.pid)
    sampler.stop_event.set()
    sampler.join()
    stop.set()
    proc.join(10)
    received = int(count.value)
    result = Result("floors", config, devices, rate_hz, duration_s, sent=sent, stored=received)
    result.offered_per_s = sent / duration_s
    result.stored_per_s = received / duration_s
    result.lost = max(0, sent - received)
    sampler.record(result, started, loaded_until)
    delta = cpu_delta(cpu_start[0] if cpu_start else None, cpu_end)
    result.extra["cpu_us_per_msg"] = round(delta.get("total", 0.0) / max(received, 1) * 1e6, 1)
    return result


def run_sqlite_floor(devices: int, messages: int) -> Result:
    """Stdlib sqlite3 alone: the rows of ``messages`` messages, FLOOR_MESSAGES_PER_COMMIT per transaction.

    The rows are what the gateway's validator makes of the publishers' messages
    (one timestamp text per message, as the gateway stores it), built before the
    clock starts; the database is made as for the gateway (installed schema and
    its indexes, devices registered) on the same file system, and the connection
    gets the gateway's settings (``autocore.storage.policy.configure_sqlite``: WAL,
    ``synchronous=FULL``). CPU is the inserting thread's (``time.thread_time``:
    user + system) over the executemany and commit calls.
    """
    from autocore.storage.policy import configure_sqlite

    uuids = [f"bench-{i:04d}" for i in range(devices)]
    with tempfile.TemporaryDirectory(prefix="autocore-bench-") as folder:
        db_path = Path(folder) / "autocore.db"
        make_database(db_path, devices)
        conn = sqlite3.connect(db_path)
        configure_sqlite(conn)
        ids = dict(conn.execute("SELECT uuid, id FROM devices").fetchall())
        batches: list[list[tuple[object, ...]]] = []
        sent_us = time.time() * 1e6
        for first in range(0, messages, FLOOR_MESSAGES_PER_COMMIT):
            batch: list[tuple[object, ...]] = []
            for n in range(first, min(messages, first + FLOOR_MESSAGES_PER_COMMIT)):
                uuid = uuids[n % devices]
                stamp = datetime.now().isoformat(" ", "microseconds")
                batch.extend((stamp, ids[uuid], *row) for row in message_rows(PAYLOAD_TEMPLATE, uuid, sent_us + n))
            batches.append(batch)
        cpu_from, wall_from = time.thread_time(), time.perf_counter()
        for batch in batches:
            conn.executemany(TELEMETRY_INSERT, batch)
            conn.commit()
        cpu_s, wall_s = time.thread_time() - cpu_from, time.perf_counter() - wall_from
        stored = conn.execute("SELECT count(*) FROM telemetry_data").fetchone()[0]
        conn.close()
    rows = sum(len(batch) for batch in batches)
    result = Result("floors", "sqlite3", devices, 0.0, round(wall_s, 3), sent=messages,
                    stored=messages if stored == rows else 0)
    result.lost = messages - result.stored
    result.stored_per_s = round(messages / wall_s, 1)
    result.cpu_percent = round(100 * cpu_s / wall_s, 1)
    result.extra.update({"cpu_us_per_msg": round(cpu_s / max(messages, 1) * 1e6, 1),
                         "rows_per_message": rows / max(messages, 1),
                         "messages_per_commit": FLOOR_MESSAGES_PER_COMMIT})
    return result


def floors_ratios(runs: dict[str, Result]) -> dict[str, float]:
    """One repetition's ratios: gateway ÷ (paho + sqlite3) and loop thread ÷ paho, for both MQTT versions."""
    gateway, sqlite = runs["gateway"].extra, runs["sqlite3"].extra
    ratios = {}
    for config, suffix in (("paho-3.1.1", ""), ("paho-5", "_v5")):
        paho = runs[config].extra["cpu_us_per_msg"]
        ratios[f"ratio_to_floor{suffix}"] = round(
            gateway["cpu_us_per_msg"] / max(paho + sqlite["cpu_us_per_msg"], 1e-9), 3)
        ratios[f"loop_ratio_to_paho{suffix}"] = round(gateway.get("loop_us_per_msg", 0.0) / max(paho, 1e-9), 3)
    return ratios


#: (column, Result attribute or extra key, digits) of the floors table, per rate: medians of the repetitions.
FLOORS_TABLE = (
    ("gateway µs/msg", "cpu_us_per_msg", 1), ("event loop µs/msg", "loop_us_per_msg", 1),
    ("db thread µs/msg", "db_us_per_msg", 1), ("other threads µs/msg", "other_us_per_msg", 1),
    ("paho 3.1.1 µs/msg", "paho311_us_per_msg", 1), ("paho 5 µs/msg", "paho5_us_per_msg", 1),
    ("sqlite3 µs/msg", "sqlite_us_per_msg", 1), ("gateway ÷ (paho 3.1.1 + sqlite3)", "ratio_to_floor", 2),
    ("loop ÷ paho 3.1.1", "loop_ratio_to_paho", 2), ("messages per loop wake-up", "msgs_per_loop_wakeup", 1),
    ("stored %", "stored_percent", 2),
    ("p99 ms", "p99_ms", 1), ("RSS peak MB", "rss_peak_mb", 1), ("RSS steady MB", "rss_steady_mb", 1),
    ("idle CPU %", "idle_cpu_percent", 2),
)


def floors_summary(total: float, rounds: list[dict[str, Result]]) -> Result:
    """Medians over the repetitions of one rate (ratios: median of the per-repetition ratios)."""
    gateways = [runs["gateway"] for runs in rounds]
    first = gateways[0]
    summary = Result("floors-summary", first.build, first.devices, first.rate_hz, first.duration_s)
    values: dict[str, list[float]] = {}

    def add(key: str, value: float | None) -> None:
        if value is not None:
            values.setdefault(key, []).append(value)

    for runs in rounds:
        gateway = runs["gateway"]
        for key in ("cpu_us_per_msg", "loop_us_per_msg", "db_us_per_msg", "other_us_per_msg", "idle_cpu_percent",
                    "msgs_per_loop_wakeup", "ratio_to_floor", "loop_ratio_to_paho", "ratio_to_floor_v5", "loop_ratio_to_paho_v5"):
            add(key, gateway.extra.get(key))
        add("paho311_us_per_msg", runs["paho-3.1.1"].extra["cpu_us_per_msg"])
        add("paho5_us_per_msg", runs["paho-5"].extra["cpu_us_per_msg"])
        add("sqlite_us_per_msg", runs["sqlite3"].extra["cpu_us_per_msg"])
        add("stored_percent", 100 * gateway.stored / max(gateway.sent, 1))
        for name in ("offered_per_s", "stored_per_s", "p50_ms", "p95_ms", "p99_ms", "cpu_percent", "rss_peak_mb",
                     "rss_steady_mb"):
            add(name, getattr(gateway, name))
    medians = {key: round(statistics.median(found), 3) for key, found in values.items()}
    for name in ("offered_per_s", "stored_per_s", "p50_ms", "p95_ms", "p99_ms", "cpu_percent", "rss_peak_mb",
                 "rss_steady_mb"):
        setattr(summary, name, medians.pop(name, 0.0))
    summary.sent = sum(g.sent for g in gateways)
    summary.stored = sum(g.stored for g in gateways)
    summary.lost = sum(g.lost for g in gateways)
    summary.extra = {"target_per_s": total, "repetitions": len(rounds), **medians,
                     "rss_peak_mb_max": max(g.rss_peak_mb for g in gateways),
                     "p99_ms_max": max(g.p99_ms for g in gateways),
                     "threads_split": int(all("db_us_per_msg" in g.extra for g in gateways))}
    summary.log_warnings = sorted({line for g in gateways for line in g.log_warnings})[:MAX_LOG_LINES]
    return summary


def floors_markdown(summaries: list[Result]) -> str:
    header = ["offered msg/s", *(column for column, _key, _digits in FLOORS_TABLE)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for summary in summaries:
        cells = [f"{summary.extra['target_per_s']:,.0f}"]
        for _column, key, digits in FLOORS_TABLE:
            value = getattr(summary, key) if hasattr(summary, key) else summary.extra.get(key)
            cells.append("–" if value is None else f"{value:,.{digits}f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def floors(broker: Mosquitto, build: str, rates: list[float], devices: int, duration_s: float, repeat: int,
           idle_s: float, json_file: Path | None) -> list[Result]:
    """The floors comparison at each offered total; returns one summary per rate (every run is reported too)."""
    summaries = []
    for total in rates:
        run_s = max(duration_s, FLOORS_MIN_MESSAGES / total)
        rate_hz = total / devices
        rounds: list[dict[str, Result]] = []
        for rep in range(repeat):
            shift = rep % len(FLOORS_CONFIGS)
            runs: dict[str, Result] = {}
            for config in FLOORS_CONFIGS[shift:] + FLOORS_CONFIGS[:shift]:  # rotate: no fixed position
                if config == "gateway":
                    run = run_gateway(broker, build, devices, rate_hz, run_s, mode="floors", idle_s=idle_s)
                elif config == "sqlite3":
                    run = run_sqlite_floor(devices, round(total * run_s))
                else:
                    run = run_counting(broker, config, devices, rate_hz, run_s)
                run.extra.update({"target_per_s": total, "repetition": rep + 1})
                runs[config] = run
            runs["gateway"].extra.update(floors_ratios(runs))
            for config in FLOORS_CONFIGS:
                report(runs[config], json_file)
            gateway = runs["gateway"]
            print(f"{total:.0f} msg/s, repetition {rep + 1}: gateway {gateway.extra.get('cpu_us_per_msg')} µs/msg "
                  f"(loop {gateway.extra.get('loop_us_per_msg')}, db {gateway.extra.get('db_us_per_msg', '-')}), "
                  f"paho 3.1.1 {runs['paho-3.1.1'].extra['cpu_us_per_msg']}, paho 5 "
                  f"{runs['paho-5'].extra['cpu_us_per_msg']}, sqlite3 {runs['sqlite3'].extra['cpu_us_per_msg']}; "
                  f"ratio {gateway.extra['ratio_to_floor']}, loop ÷ paho {gateway.extra['loop_ratio_to_paho']}; "
                  f"stored {gateway.stored}/{gateway.sent}, p99 {gateway.p99_ms} ms", flush=True)
            rounds.append(runs)
        summary = floors_summary(total, rounds)
        report(summary, json_file)
        summaries.append(summary)
    return summaries


# -- reporting -------------------------------------------------------------------------


COLUMNS = ("mode", "build", "offered_per_s", "stored_per_s", "lost", "p50_ms", "p95_ms", "p99_ms",
           "cpu_percent", "rss_steady_mb", "rss_peak_mb")


def report(result: Result, json_file: Path | None) -> None:
    """Print ``result`` as a JSON line (and append it to ``json_file``), with the machine's load average.

    The cores are shared with other jobs, so the 1-minute load average is the
    first thing to check when one run stands out.
    """
    result.extra.setdefault("loadavg_1m", round(os.getloadavg()[0], 2))
    line = json.dumps(asdict(result))
    print(line, flush=True)
    if json_file is not None:
        with open(json_file, "a") as out:
            out.write(line + "\n")


def table(results: list[Result]) -> str:
    rows = [COLUMNS] + [tuple(f"{getattr(r, c):.1f}" if isinstance(getattr(r, c), float) else str(getattr(r, c))
                              for c in COLUMNS) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--rates", default="500,1000,5000", help="offered totals, msg/s")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per run")
    parser.add_argument("--repeat", type=int, default=1, help="runs per point (report medians)")
    parser.add_argument("--builds", default="compiled,pure",
                        help=f"of {', '.join(BUILDS)}; the rates sweep also takes raw-paho (a subscriber that only counts)")
    parser.add_argument("--ceiling", action="store_true", help="flood; compare with raw paho")
    parser.add_argument("--drain", action="store_true",
                        help="time draining a backlog queued while the consumer was away; compare with raw paho")
    parser.add_argument("--messages", type=int, default=DRAIN_MESSAGES, help="backlog size for --drain")
    parser.add_argument("--qos", type=int, choices=(0, 1), default=0,
                        help="--drain: QoS of the backlog; 1 compares the gateway with its own insert path alone")
    parser.add_argument("--overload", action="store_true",
                        help="offer --overload-factor times the stored ceiling at QoS 0 and 1, then drain a QoS 1 "
                             "backlog against the insert path (--repeat rounds)")
    parser.add_argument("--overload-factor", type=float, default=OVERLOAD_FACTOR)
    parser.add_argument("--overload-target", type=float, default=0.0,
                        help="msg/s offered by --overload instead of the factor times the measured ceiling")
    parser.add_argument("--overload-duration", type=float, default=OVERLOAD_S, help="seconds of each overload run")
    parser.add_argument("--ramp", action="store_true", help="find the highest clean rate")
    parser.add_argument("--ramp-from", type=float, default=RAMP_FROM_PER_S, help="first offered total of --ramp")
    parser.add_argument("--p99-limit", type=float, default=RAMP_P99_LIMIT_MS, help="--ramp's p99 bound, ms")
    parser.add_argument("--soak", type=float, default=0.0, help="minutes at 50 devices x 10 Hz")
    parser.add_argument("--commands", type=int, default=0, help="command rows to time (pick-up latency)")
    parser.add_argument("--floors", action="store_true",
                        help="CPU per message by thread at each rate, against raw paho (3.1.1, 5) and raw sqlite3")
    parser.add_argument("--idle", type=float, default=FLOORS_IDLE_S,
                        help="--floors: seconds of idle CPU read before each gateway run's load (0: none)")
    parser.add_argument("--payload", choices=sorted(PAYLOADS), default="can",
                        help="can: the spec's CAN telemetry, 4 rows a message; full: a sensor board's full report, 12")
    parser.add_argument("--smoke", action="store_true", help="a few seconds; exits 1 if nothing is stored")
    parser.add_argument("--json", type=Path, default=None, help="append JSON lines to this file")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting for every gateway started (e.g. AUTOCORE_WRITE_INTERVAL=0.02)")
    args = parser.parse_args(argv)
    global PAYLOAD_TEMPLATE, NAME_THREADS
    PAYLOAD_TEMPLATE = PAYLOADS[args.payload]
    for pair in args.env:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            parser.error(f"--env takes KEY=VALUE, not {pair!r}")
        GATEWAY_ENV[key] = value
    builds = [b for b in args.builds.split(",") if b]
    results: list[Result] = []

    if args.overload:
        NAME_THREADS = True
        drains = drain_qos1(builds[:1], args.devices, args.messages, args.repeat, args.json)
        ceiling = statistics.median(r.stored_per_s for r in drains if r.build == builds[0])
        results = overload(builds[0], args.devices, ceiling, args.overload_factor, args.overload_duration, args.json,
                           args.overload_target)
        print()
        print(f"{builds[0]} gateway, {args.payload} payload ({rows_per_message()} rows a message), "
              f"{args.devices} devices; settings: "
              f"{' '.join(f'{k}={v}' for k, v in GATEWAY_ENV.items()) or 'defaults'}")
        print()
        print(overload_markdown(results))
        print()
        print(drain_qos1_markdown(drains, [*INSERT_PATHS, *builds[:1]]))
        return 0

    if args.drain and args.qos:
        NAME_THREADS = True
        drains = drain_qos1(builds, args.devices, args.messages, args.repeat, args.json)
        print()
        print(drain_qos1_markdown(drains, [*INSERT_PATHS, *builds]))
        return 0

    if args.drain:  # each drain brings its own broker (queue_qos0_messages, no queue limit)
        configs = ["raw-paho", *builds]
        for rep in range(args.repeat):
            order = configs[rep % len(configs):] + configs[:rep % len(configs)]  # rotate: no fixed position
            round_results = {}
            for config in order:
                if config == "raw-paho":
                    result = run_drain_raw(args.devices, args.messages)
                else:
                    result = run_drain_gateway(config, args.devices, args.messages)
                round_results[config] = result
                if result.extra["broker_store_delta"] < result.sent:
                    print(f"WARNING: the broker's store grew by {result.extra['broker_store_delta']} for "
                          f"{result.sent} messages: the backlog was not (all) queued for {config}", flush=True)
                print(f"rep {rep + 1} {config}: {result.stored_per_s:.0f} msg/s connect->last, "
                      f"{result.extra.get('window_per_s', 0):.0f} msg/s 10-90 %, {result.stored}/{result.sent} "
                      f"drained, broker store +{result.extra['broker_store_delta']}"
                      f"{''.join(f', {k[6:]}' for k in result.extra if k.startswith('ended_'))}", flush=True)
            raw = round_results["raw-paho"]
            for config in order:
                result = round_results[config]
                if config != "raw-paho":
                    result.extra["ratio_to_raw"] = round(result.stored_per_s / max(raw.stored_per_s, 1e-9), 3)
                    result.extra["window_ratio_to_raw"] = round(
                        result.extra.get("window_per_s", 0.0) / max(raw.extra.get("window_per_s", 0.0), 1e-9), 3)
                report(result, args.json)
                results.append(result)
        print()
        print(table(results))
        print()
        print(drain_summary(results, configs))
        return 0

    with Mosquitto(extra_config=LIVE_BROKER_CONFIG) as broker:
        if args.smoke:
            result = run_gateway(broker, builds[0], 10, 20.0, 2.0, mode="smoke")
            report(result, args.json)
            print(table([result]))
            return 0 if result.stored > 0 and result.lost == 0 else 1
        if args.commands:
            for build in builds:
                result = run_commands(broker, build, args.commands)
                report(result, args.json)
                results.append(result)
        elif args.soak:
            for build in builds:
                result = run_gateway(broker, build, 50, 10.0, args.soak * 60, mode="soak", sample_period_s=5.0)
                report(result, args.json)
                results.append(result)
        elif args.ceiling:
            for _ in range(args.repeat):
                raw = run_raw(broker, args.devices, 0, args.duration)
                report(raw, args.json)
                results.append(raw)
                for build in builds:
                    result = run_gateway(broker, build, args.devices, 0, args.duration, mode="ceiling")
                    result.extra["ratio_to_raw"] = round(result.stored_per_s / max(raw.stored_per_s, 1e-9), 3)
                    report(result, args.json)
                    results.append(result)
        elif args.ramp:
            results = ramp(broker, builds, args.devices, args.duration, args.repeat, args.ramp_from,
                           args.p99_limit, args.json)
        elif args.floors:
            NAME_THREADS = True
            summaries = floors(broker, builds[0], [float(r) for r in args.rates.split(",") if r], args.devices,
                               args.duration, args.repeat, args.idle, args.json)
            print()
            print(f"{builds[0]} gateway, {args.payload} payload ({rows_per_message()} rows a message), "
                  f"{args.devices} devices, medians of {args.repeat}; settings: "
                  f"{' '.join(f'{k}={v}' for k, v in GATEWAY_ENV.items()) or 'defaults'}")
            print()
            print(floors_markdown(summaries))
            if not all(s.extra["threads_split"] for s in summaries):
                print("\nno thread named autocore-db was found: 'other threads' holds the database thread")
            return 0
        else:
            for total in (float(r) for r in args.rates.split(",")):
                runs: dict[str, list[Result]] = {build: [] for build in builds}
                for _ in range(args.repeat):  # builds interleaved, so a busy spell hits both alike
                    for build in builds:
                        if build == "raw-paho":
                            run = run_raw(broker, args.devices, total / args.devices, args.duration, mode="rate")
                        else:
                            run = run_gateway(broker, build, args.devices, total / args.devices, args.duration)
                        run.extra["target_per_s"] = total
                        report(run, args.json)
                        runs[build].append(run)
                for build_runs in runs.values():
                    results.append(min(build_runs, key=lambda r: abs(r.p95_ms - statistics.median(
                        x.p95_ms for x in build_runs))))
    print()
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
