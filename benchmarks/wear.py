"""Wear benchmark: bytes the gateway causes to be written to storage, per stored reading.

The gateway runs on a Raspberry Pi whose database sits on an SD card, so what
matters is what reaches the card. For each offered load and each gateway
configuration this starts ``autocore run`` on a fresh SQLite file, lets it warm
up under load, then reads, at the start and at the end of a fixed window:

- ``/proc/<gateway>/io``: ``write_bytes`` (and ``cancelled_write_bytes``,
  ``rchar``, ``wchar``, ``syscw``) and CPU time;
- the telemetry rows stored (``max(id)`` of ``telemetry_data``), the database's
  size in pages and the sizes of the main file, ``-wal`` and ``-shm``;
- the pages the next checkpoint still owes (see below);
- the gateway's telemetry commit counter (``autocore_db_batches_total`` on
  ``/metrics``) when it exports one.

A reading is one ``telemetry_data`` row. The table gives, per reading: bytes
written, bytes per day at that load, and growth of the database; plus telemetry
commits per second and gateway CPU per message. Every figure is the median of
``--runs`` runs; configurations (``--configs``, environment variables of the
gateway) run interleaved, so they can be compared side by side in one run.

    python benchmarks/wear.py                                   # 3, 100, 500, 5,000 msg/s; 3 runs each
    python benchmarks/wear.py --qos 1                           # the same, telemetry delivered at QoS 1
    python benchmarks/wear.py --loads 10x10 --configs default AUTOCORE_WRITE_INTERVAL=1
    python benchmarks/wear.py --window 120 --json benchmarks/results/wear.jsonl

What ``write_bytes`` counts, checked on this machine (Linux 6.18, ext4) with a
small experiment (``os.write``/``os.pwrite`` to a file, with and without
``fsync``, then ``sync``): it is charged to the process when it *dirties* a
page of the page cache, one page at a time, not when the page reaches the
disk. 10 MB appended without fsync counted 10,485,760 at once and nothing more
after ``sync``; a later writeback by the kernel's flusher threads adds nothing,
so the counters need no ``sync`` before they are read. The same 4 KiB page
rewritten 1,000 times without fsync counted 4,096 bytes (it stayed dirty),
and 1,000 writes of 100 bytes to one page also 4,096; rewritten 200 times with
an ``fsync`` after each, it counted 200 pages (819,200 bytes). That is also
what the device receives: each clean-to-dirty transition becomes one page
written back. So the counter is read while the gateway runs, at the two ends
of the window, with no ``sync`` and no need to stop the gateway; pages
dirtied before the window and written during it are not counted, which in a
steady state evens out with pages dirtied in the window and written after it.
``cancelled_write_bytes`` (dirty pages dropped by a truncation before they
were written) is subtracted. Not counted at all: the file system's own journal
and metadata writes (ext4's jbd2 thread, e.g. an inode update per ``fsync``
of a growing file), and the card's internal write amplification. On tmpfs
nothing reaches a block device and ``write_bytes`` stays 0, so the benchmark
refuses a memory file system (``--dir`` chooses another folder).

Checkpoints. In WAL mode a commit appends pages to ``-wal``; a checkpoint
copies the newest version of each page back into the main file, every 1,000
WAL pages by default. At 3 msg/s that is every minute or two, so a window
would include a checkpoint or not depending on where it falls. Each end of
the window therefore also reads the WAL index (``-shm``: frames in the WAL,
frames already copied back) and the frame headers of ``-wal`` (which page each
frame holds), and counts the distinct pages the next checkpoint will write.
The bytes per reading are ``write_bytes`` over the window plus the change in
those owed pages: what the window wrote and will cause to be written, however
the checkpoints fall (``written_raw_per_reading`` in the JSON leaves it out).

History. The database already holds ``--prefill`` readings (200,000, about
31 MB, spread over the hour before the run) when the gateway starts, as a
vehicle's database holds days of them. On an empty table the first minutes
write less per commit, because the index entries of all sensors still share a
few leaf pages; at 3 msg/s a 45 s window on an empty table gave 2,993 B per
reading, a 240 s window 4,049 B, and 45 s windows on the filled database
4,874 and 5,314 B.

The load is the e2e benchmark's publisher processes (``benchmarks/e2e.py``),
with each device in one of ten phases of its period. By default every message
is a sensor board's full report: ``analog_sensors`` (the publishers' send time),
``system_status`` (5 values) and ``gps`` (6), 12 readings per message;
``--payload can`` sends the e2e benchmark's CAN telemetry (3 signals + the send
time, 4 readings). Publishers send at QoS 0; with ``--qos 1`` the broker
(``upgrade_outgoing_qos``) delivers every message to the gateway's QoS 1
subscriptions at QoS 1, so the gateway stores an idempotency key per message
and acknowledges it after the commit, under Mosquitto's default window of 20
unacknowledged messages, as with devices that publish at QoS 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import shutil
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from autocore import topics
from autocore.broker import Mosquitto, find_free_port
from autocore.envelope import Message, Validator
from autocore.overview import fetch, parse_metrics

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import e2e  # noqa: E402  (run as a script from the repository root)
from benchmarks.e2e import (  # noqa: E402
    LIVE_BROKER_CONFIG,
    PAYLOADS,
    DRAIN_S,
    PUBLISH_DELAY_S,
    ProcessSampler,
    make_database,
    publish,
    read_warnings,
    report,
    start_gateway,
    stop_run,
)

#: Offered loads as DEVICESxHZ: 3 msg/s (30 devices every 10 s), 100 (10 x 10 Hz), 500 (50 x 10 Hz)
#: and 5,000 (50 x 100 Hz, as e2e offers that rate with its default 50 devices).
LOADS = "30x0.1,10x10,50x10,50x100"
#: Seconds of load before the window opens: devices come online, caches and the WAL fill.
WARMUP_S = 5.0
#: The window opens at least this long after every device has sent once (one period of the load).
#: A device's first message turns it online: a status change and an event row in a commit of
#: their own, six pages at once. At 0.1 Hz a 5 s warm-up left half the devices to come online
#: inside the window: about 230 B per reading of a 45 s window at 3 msg/s, 40-80 B of a 240 s one.
ONLINE_MARGIN_S = 2.0
#: Seconds of the measured window. 4 loads x 3 runs of one configuration take about 12 minutes.
WINDOW_S = 45.0
#: Seconds the publishers go on after the window closes, so the window ends under full load.
TAIL_S = 1.0
#: Readings already in the database when the gateway starts (see the module docstring).
PREFILL_READINGS = 200_000
#: The stored history spans this many seconds before the run, so it sorts before the new rows.
PREFILL_SPAN_S = 3600.0
#: Longest wait after the load for the gateway to store what it and the broker still hold, s.
DRAIN_TIMEOUT_S = 120.0
#: Tries at reading the counters and the database between two commits (same write_bytes before and after).
SNAPSHOT_TRIES = 20
#: File systems on which nothing reaches a block device (write_bytes stays 0).
MEMORY_FS = ("tmpfs", "ramfs")
#: Broker lines for --qos 1: deliver at the subscription's QoS (the gateway subscribes at QoS 1).
QOS1_BROKER_CONFIG = ["upgrade_outgoing_qos true"]
WAL_HEADER_BYTES = 32
WAL_FRAME_HEADER_BYTES = 24
#: The -shm file starts with two copies of the 48-byte WAL index header, then the checkpoint info.
SHM_HEADER_BYTES = 48
SHM_BACKFILL_OFFSET = 96


@dataclass(frozen=True)
class Load:
    devices: int
    rate_hz: float

    @property
    def per_s(self) -> float:
        return self.devices * self.rate_hz

    @property
    def period_s(self) -> float:
        return 1.0 / self.rate_hz

    def warmup_s(self, least_s: float) -> float:
        """Seconds of load before the window: ``least_s``, and long enough for every device to be online."""
        return max(least_s, self.period_s + ONLINE_MARGIN_S)

    @property
    def label(self) -> str:
        return f"{self.per_s:,.0f} msg/s ({self.devices} x {self.rate_hz:g} Hz)"

    @classmethod
    def parse(cls, text: str) -> Load:
        devices, _, hz = text.partition("x")
        return cls(int(devices), float(hz))


@dataclass
class Snapshot:
    """The gateway's counters and the database's state at one instant (between two commits)."""

    at: float
    io: dict[str, int]
    cpu_s: float
    max_id: int
    page_count: int
    page_size: int
    files: dict[str, int]
    owed_pages: int | None
    batches: float | None


@dataclass
class WearResult:
    mode: str
    config: str
    load: str
    devices: int
    rate_hz: float
    qos: int
    payload: str
    fs_type: str
    window_s: float = 0.0
    prefilled: int = 0
    sent: int = 0
    stored_messages: int = 0
    lost: int = 0
    readings: int = 0
    readings_per_message: float = 0.0
    stored_per_s: float = 0.0
    readings_per_s: float = 0.0
    write_bytes: int = 0
    written_per_reading: float | None = None  # None: no reading was committed in the window
    written_raw_per_reading: float | None = None  # None: no reading was committed in the window
    gb_per_day: float = 0.0
    growth_per_reading: float | None = None  # None: no reading was committed in the window
    file_growth_per_reading: float | None = None  # None: no reading was committed in the window
    commits_per_s: float | None = None
    readings_per_commit: float | None = None
    cpu_us_per_message: float = 0.0
    cpu_percent: float = 0.0
    files_end: dict[str, int] = field(default_factory=dict)
    io_delta: dict[str, int] = field(default_factory=dict)
    extra: dict[str, float | None] = field(default_factory=dict)
    log_warnings: list[str] = field(default_factory=list)


# -- reading the gateway and the database ----------------------------------------------


def fs_type(folder: Path) -> str:
    """The file system type of ``folder`` as ``stat -f`` names it (ext2/ext3 for ext4, tmpfs...)."""
    out = subprocess.run(["stat", "-f", "-c", "%T", str(folder)], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def read_io(pid: int) -> dict[str, int]:
    lines = Path(f"/proc/{pid}/io").read_text().splitlines()
    return {key: int(value) for key, value in (line.split(": ") for line in lines)}


def owed_checkpoint_pages(db_path: Path) -> int | None:
    """Distinct pages in the WAL not yet copied back into the main file: the next checkpoint's writes.

    Reads the WAL index header (``-shm``, native byte order: ``mxFrame`` at 16,
    and ``nBackfill`` of the checkpoint info at 96) and the page number of each
    frame not yet backfilled (big-endian, at the start of each frame header in
    ``-wal``). None when the database is not in WAL mode or the index header
    was caught mid-update.
    """
    try:
        shm = Path(f"{db_path}-shm").read_bytes()[:SHM_BACKFILL_OFFSET + 4]
        with open(f"{db_path}-wal", "rb") as wal:
            header = wal.read(WAL_HEADER_BYTES)
            if len(shm) < SHM_BACKFILL_OFFSET + 4 or len(header) < WAL_HEADER_BYTES:
                return None
            if shm[:SHM_HEADER_BYTES] != shm[SHM_HEADER_BYTES:2 * SHM_HEADER_BYTES]:
                return None  # the writer is between its two copies
            (max_frame,) = struct.unpack_from("=I", shm, 16)
            (backfilled,) = struct.unpack_from("=I", shm, SHM_BACKFILL_OFFSET)
            (page_size,) = struct.unpack_from(">I", header, 8)
            salts = header[16:24]
            pages = set()
            for frame in range(backfilled, max_frame):
                wal.seek(WAL_HEADER_BYTES + frame * (WAL_FRAME_HEADER_BYTES + page_size))
                head = wal.read(WAL_FRAME_HEADER_BYTES)
                if len(head) < WAL_FRAME_HEADER_BYTES or head[8:16] != salts:
                    break
                pages.add(head[:4])
            return len(pages)
    except (FileNotFoundError, struct.error):
        return None


def commits(metrics_port: int) -> float | None:
    """The gateway's telemetry commit counter, or None when it exports none."""
    try:
        _status, body = fetch(f"http://127.0.0.1:{metrics_port}/metrics")
    except OSError:
        return None
    samples = parse_metrics(body.decode())
    values = samples.get("autocore_db_batches_total")
    return sum(v for _labels, v in values) if values else None


def file_sizes(db_path: Path) -> dict[str, int]:
    sizes = {}
    for name, suffix in (("db", ""), ("wal", "-wal"), ("shm", "-shm")):
        try:
            sizes[name] = os.path.getsize(f"{db_path}{suffix}")
        except OSError:
            sizes[name] = 0
    return sizes


def snapshot(pid: int, db_path: Path, metrics_port: int, sampler: ProcessSampler) -> Snapshot:
    """Read everything between two commits: retried until ``write_bytes`` is the same before and after."""
    conn = sqlite3.connect(db_path, timeout=10)
    try:
        for _ in range(SNAPSHOT_TRIES):
            io = read_io(pid)
            at = time.monotonic()
            max_id = conn.execute("SELECT max(id) FROM telemetry_data").fetchone()[0] or 0
            page_count = conn.execute("PRAGMA page_count").fetchone()[0]
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            owed = owed_checkpoint_pages(db_path)
            files = file_sizes(db_path)
            if read_io(pid)["write_bytes"] == io["write_bytes"] and owed is not None:
                break
    finally:
        conn.close()
    reading = sampler.read()
    return Snapshot(at, io, reading[0] if reading else 0.0, max_id, page_count, page_size, files, owed,
                    commits(metrics_port))


# -- one run ---------------------------------------------------------------------------


def message_rows(template: dict[str, object], uuid: str) -> list[tuple[str, str, str, str | None]]:
    """The rows the gateway stores for one message of ``template`` from ``uuid`` (its own validator)."""
    payload = {**template, "uuid": uuid, "analog_sensors": {"bench_sent": time.time() * 1e6}}
    topic = topics.telemetry_topic(uuid)
    message = Validator().validate(topics.parse_topic(topic), json.dumps(payload).encode())
    if not isinstance(message, Message):
        raise RuntimeError(f"the gateway would refuse the benchmark's payload: {message}")
    return list(message.rows)


def prefill(db_path: Path, template: dict[str, object], readings: int) -> None:
    """Store ``readings`` telemetry rows of the benchmark's devices, spread over the last hour, and sync.

    The rows are what the gateway would have stored for the same messages. The
    file is fsynced so that none of its pages is still dirty when the gateway
    starts: a page dirtied here would not be charged to the gateway if it wrote
    it again before the kernel flushed it.
    """
    with sqlite3.connect(db_path) as conn:
        devices = [row[0] for row in conn.execute(
            "SELECT id FROM devices WHERE uuid LIKE 'bench-%' ORDER BY id")]
        rows = message_rows(template, "bench-0000")
        messages = max(1, readings // len(rows))
        start = datetime.now() - timedelta(seconds=PREFILL_SPAN_S)
        step = timedelta(seconds=PREFILL_SPAN_S / messages)
        conn.executemany(
            "INSERT INTO telemetry_data (timestamp, device_id, data_type, data_key, data_value, unit)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            ((stamp, devices[n % len(devices)], *row)
             for n in range(messages)
             for stamp in [(start + n * step).isoformat(" ", "microseconds")]
             for row in rows))
    with open(db_path, "rb+") as db_file:
        os.fsync(db_file.fileno())


@contextlib.contextmanager
def payload_template(template: dict[str, object]) -> Iterator[None]:
    """Have e2e's publisher processes send ``template``: they read e2e.PAYLOAD_TEMPLATE once forked."""
    if mp.get_start_method() != "fork":
        raise RuntimeError("the publishers take their payload from the parent: needs the 'fork' start method")
    saved = e2e.PAYLOAD_TEMPLATE
    e2e.PAYLOAD_TEMPLATE = template
    try:
        yield
    finally:
        e2e.PAYLOAD_TEMPLATE = saved


def stored_messages(db_path: Path, base_id: int) -> int:
    with sqlite3.connect(db_path, timeout=10) as conn:
        return conn.execute("SELECT count(*) FROM telemetry_data WHERE data_key = 'analog_bench_sent'"
                            " AND id > ?", (base_id,)).fetchone()[0]


def drain(db_path: Path, base_id: int, sent: int) -> None:
    """Wait until every message sent is stored, or none was for DRAIN_S (bounded by DRAIN_TIMEOUT_S).

    At QoS 1 a gateway that falls behind leaves messages queued at the broker;
    they are stored after the load stops, not lost.
    """
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    stored, progress = -1, time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - progress < DRAIN_S:
        now = stored_messages(db_path, base_id)
        if now >= sent:
            return
        if now > stored:
            stored, progress = now, time.monotonic()
        time.sleep(0.2)


def parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"not KEY=VALUE: {pair!r}")
        env[key] = value
    return env


def config_env(config: str) -> dict[str, str]:
    """``default`` or KEY=VALUE pairs separated by spaces or commas."""
    return {} if config == "default" else parse_env(config.replace(",", " ").split())


def run_once(load: Load, config: str, env: dict[str, str], qos: int, payload: str, build: str,
             warmup_s: float, window_s: float, prefilled: int, folder: Path, fs: str,
             keep: bool) -> WearResult:
    """Start a broker and the gateway on a fresh database, load it, and measure one window."""
    result = WearResult("wear", config, load.label, load.devices, load.rate_hz, qos, payload, fs, window_s,
                        prefilled)
    result.extra["warmup_s"] = warmup_s
    workdir = Path(tempfile.mkdtemp(prefix="autocore-wear-", dir=folder))
    db_path = workdir / "autocore.db"
    make_database(db_path, load.devices)
    if prefilled:
        prefill(db_path, PAYLOADS[payload], prefilled)
    with sqlite3.connect(db_path) as conn:
        base_id = conn.execute("SELECT coalesce(max(id), 0) FROM telemetry_data").fetchone()[0]
    marks: dict[str, Snapshot] = {}
    try:
        with Mosquitto(extra_config=LIVE_BROKER_CONFIG + (QOS1_BROKER_CONFIG if qos else [])) as broker:
            metrics_port = find_free_port()
            gateway = start_gateway(broker, db_path, build, workdir, metrics_port, env)
            sampler = ProcessSampler(gateway.pid)
            load_start = time.time() + PUBLISH_DELAY_S

            def measure() -> None:
                time.sleep(max(0.0, load_start + warmup_s - time.time()))
                marks["start"] = snapshot(gateway.pid, db_path, metrics_port, sampler)
                time.sleep(max(0.0, marks["start"].at + window_s - time.monotonic()))
                marks["end"] = snapshot(gateway.pid, db_path, metrics_port, sampler)

            measurer = threading.Thread(target=measure, daemon=True)
            measurer.start()
            try:
                with payload_template(PAYLOADS[payload]):
                    result.sent = publish(broker.host, broker.port, load.devices, load.rate_hz,
                                          warmup_s + window_s + TAIL_S, load_start)
                measurer.join(window_s + 60)
                drain(db_path, base_id, result.sent)
            finally:
                try:
                    stop_run(gateway)  # SIGTERM: the gateway commits what it holds, then exits
                except subprocess.TimeoutExpired:
                    gateway.kill()
                    gateway.wait()
        if "end" not in marks:
            raise RuntimeError("the window was not measured (the gateway exited or a read failed)")
        start, end = marks["start"], marks["end"]
        result.stored_messages = stored_messages(db_path, base_id)
        with sqlite3.connect(db_path) as conn:
            readings, messages = conn.execute(
                "SELECT count(*), coalesce(sum(data_key = 'analog_bench_sent'), 0) FROM telemetry_data"
                " WHERE id > ? AND id <= ?", (start.max_id, end.max_id)).fetchone()
        result.log_warnings = read_warnings(workdir / f"gateway-{build}.log")
    finally:
        if keep:
            print(f"kept {workdir}", flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    summarise(result, start, end, readings, messages)
    return result


def summarise(result: WearResult, start: Snapshot, end: Snapshot, readings: int, messages: int) -> None:
    """Per reading and per second figures of one window."""
    elapsed = end.at - start.at
    io = {key: end.io[key] - start.io[key] for key in end.io}
    corrected = start.owed_pages is not None and end.owed_pages is not None
    owed = ((end.owed_pages or 0) - (start.owed_pages or 0)) * end.page_size if corrected else 0
    written = io["write_bytes"] - io.get("cancelled_write_bytes", 0) + owed

    def per_reading(value: float) -> float | None:
        """None when the window held no commit: bytes over zero readings mean nothing."""
        return round(value / readings, 1) if readings else None

    result.window_s = round(elapsed, 2)
    result.lost = max(0, result.sent - result.stored_messages)
    result.readings = readings
    result.readings_per_message = round(readings / max(messages, 1), 2)
    result.stored_per_s = round(messages / elapsed, 1)
    result.readings_per_s = round(readings / elapsed, 1)
    result.write_bytes = written
    result.written_per_reading = per_reading(written)
    result.written_raw_per_reading = per_reading(io["write_bytes"] - io.get("cancelled_write_bytes", 0))
    result.gb_per_day = round(written / elapsed * 86400 / 1e9, 2)
    result.growth_per_reading = per_reading((end.page_count - start.page_count) * end.page_size)
    grown = (end.files["db"] + end.files["wal"]) - (start.files["db"] + start.files["wal"])
    result.file_growth_per_reading = per_reading(grown)
    if start.batches is not None and end.batches is not None:
        batches = end.batches - start.batches
        result.commits_per_s = round(batches / elapsed, 3)
        result.readings_per_commit = round(readings / batches, 1) if batches else None
    result.cpu_us_per_message = round((end.cpu_s - start.cpu_s) / max(messages, 1) * 1e6, 1)
    result.cpu_percent = round(100 * (end.cpu_s - start.cpu_s) / elapsed, 1)
    result.files_end = end.files
    result.io_delta = io
    result.extra.update({
        "checkpoint_owed_counted": int(corrected),
        "owed_checkpoint_bytes_start": (start.owed_pages or 0) * start.page_size,
        "owed_checkpoint_bytes_end": (end.owed_pages or 0) * end.page_size,
        "wchar_per_reading": per_reading(io["wchar"]),
        "write_syscalls_per_s": round(io["syscw"] / elapsed, 1),
    })


# -- reporting -------------------------------------------------------------------------


MEDIAN_FIELDS = ("stored_per_s", "readings_per_s", "written_per_reading", "written_raw_per_reading",
                 "gb_per_day", "growth_per_reading", "file_growth_per_reading", "commits_per_s",
                 "readings_per_commit", "cpu_us_per_message", "cpu_percent", "readings_per_message")


def median_result(runs: list[WearResult]) -> WearResult:
    """Field by field medians of repeated runs of one load and configuration; counts are sums."""
    merged = WearResult("wear-median", runs[0].config, runs[0].load, runs[0].devices, runs[0].rate_hz,
                        runs[0].qos, runs[0].payload, runs[0].fs_type, runs[0].window_s, runs[0].prefilled)
    for name in MEDIAN_FIELDS:
        values = [getattr(r, name) for r in runs if getattr(r, name) is not None]
        setattr(merged, name, round(statistics.median(values), 2) if values else None)
    merged.sent = sum(r.sent for r in runs)
    merged.stored_messages = sum(r.stored_messages for r in runs)
    merged.lost = sum(r.lost for r in runs)
    merged.readings = sum(r.readings for r in runs)
    merged.write_bytes = sum(r.write_bytes for r in runs)
    merged.files_end = {key: int(statistics.median(r.files_end.get(key, 0) for r in runs))
                        for key in runs[0].files_end}
    written = [r.written_per_reading for r in runs if r.written_per_reading is not None]
    merged.extra = {"runs": len(runs), "written_per_reading_min": min(written, default=None),
                    "written_per_reading_max": max(written, default=None)}
    return merged


def _number(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def markdown(results: list[WearResult]) -> str:
    header = ("load", "config", "QoS", "stored msg/s", "readings/s", "written B/reading", "min–max",
              "per day", "growth B/reading", "commits/s", "readings/commit", "CPU µs/msg", "WAL file",
              "lost")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        per_day = f"{r.gb_per_day:,.1f} GB" if r.gb_per_day >= 1 else f"{r.gb_per_day * 1000:,.0f} MB"
        lines.append("| " + " | ".join((
            r.load, r.config, str(r.qos), _number(r.stored_per_s), _number(r.readings_per_s),
            f"**{_number(r.written_per_reading)}**",
            f"{_number(r.extra.get('written_per_reading_min'))}–"
            f"{_number(r.extra.get('written_per_reading_max'))}",
            per_day, _number(r.growth_per_reading), _number(r.commits_per_s, 1),
            _number(r.readings_per_commit, 1), _number(r.cpu_us_per_message),
            f"{r.files_end.get('wal', 0) / 1e6:.1f} MB", str(r.lost))) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", default=LOADS, help="offered loads, DEVICESxHZ, comma-separated")
    parser.add_argument("--configs", nargs="+", default=["default"],
                        help="gateway configurations run side by side: 'default' or KEY=VALUE pairs each")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment of the gateway in every configuration (repeatable)")
    parser.add_argument("--qos", type=int, choices=(0, 1), default=0, help="QoS of the telemetry deliveries")
    parser.add_argument("--payload", choices=sorted(PAYLOADS), default="full",
                        help="full: 12 readings per message; can: e2e's CAN telemetry, 4")
    parser.add_argument("--build", choices=sorted(e2e.BUILDS), default="compiled")
    parser.add_argument("--runs", type=int, default=3, help="runs per load and configuration (medians)")
    parser.add_argument("--warmup", type=float, default=WARMUP_S, help="seconds of load before the window (at least one period of the load + 2)")
    parser.add_argument("--window", type=float, default=WINDOW_S, help="seconds measured per run")
    parser.add_argument("--prefill", type=int, default=PREFILL_READINGS,
                        help="readings stored before the gateway starts (0: an empty table)")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the databases go: a disk file system, not tmpfs")
    parser.add_argument("--any-fs", action="store_true",
                        help="run on a memory file system too (write_bytes is then 0; for smoke tests)")
    parser.add_argument("--keep", action="store_true", help="keep each run's folder (database, gateway log)")
    parser.add_argument("--json", type=Path, default=None, help="append JSON lines to this file")
    args = parser.parse_args(argv)
    loads = [Load.parse(text) for text in args.loads.split(",") if text]
    common = parse_env(args.env)
    configs = {config: {**common, **config_env(config)} for config in args.configs}
    args.dir.mkdir(parents=True, exist_ok=True)
    fs = fs_type(args.dir)
    if fs in MEMORY_FS and not args.any_fs:
        print(f"{args.dir} is on {fs}: nothing reaches a block device there. "
              "Choose a disk folder with --dir.",
              file=sys.stderr)
        return 2
    if mp.get_start_method(allow_none=True) is None:
        mp.set_start_method("fork")
    print(f"databases in {args.dir} ({fs}); {len(loads)} loads x {len(configs)} configurations x "
          f"{args.runs} runs of {args.window:g} s", flush=True)
    medians = []
    for load in loads:
        runs: dict[str, list[WearResult]] = {config: [] for config in configs}
        for _ in range(args.runs):  # configurations interleaved, so a busy spell hits all alike
            for config, env in configs.items():
                result = run_once(load, config, env, args.qos, args.payload, args.build,
                                  load.warmup_s(args.warmup), args.window, args.prefill, args.dir, fs,
                                  args.keep)
                report(result, args.json)  # type: ignore[arg-type]  (any dataclass with ``extra``)
                if not result.readings:
                    print(f"no reading was committed in the {args.window:g} s window: at this load the "
                          "gateway commits once per write interval (AUTOCORE_WRITE_INTERVAL, 60 s by "
                          "default), so widen --window past it", flush=True)
                runs[config].append(result)
        for config_runs in runs.values():
            median = median_result(config_runs)
            report(median, args.json)  # type: ignore[arg-type]
            medians.append(median)
    print()
    print(markdown(medians))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
