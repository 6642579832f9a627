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
    python benchmarks/e2e.py --ramp               # highest zero-loss rate with p99 <= 100 ms
    python benchmarks/e2e.py --soak 30            # 50 devices x 10 Hz for 30 minutes, RSS slope
    python benchmarks/e2e.py --commands 100       # command pick-up latency (row -> published)
    python benchmarks/e2e.py --smoke              # a few seconds, used by CI
    python benchmarks/e2e.py --rates 1000 --builds compiled,compiled-asyncio   # uvloop's share

Results print as a table and as one JSON line each (``--json FILE`` appends them).
"""

from __future__ import annotations

import argparse
import bisect
import json
import multiprocessing as mp
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from autocore.broker import Mosquitto

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "data" / "fixtures"
#: The spec's 10 Hz CAN telemetry (three signals); ``bench_sent`` adds a fourth row.
PAYLOAD_TEMPLATE = json.loads((FIXTURES / "telemetry_can.json").read_text())
#: The reader's polling period: the resolution of the commit times.
COMMIT_POLL_S = 0.002
#: Seconds a run waits after the publishers stop for the last rows to commit.
DRAIN_S = 3.0
PUBLISHER_PROCESSES = 2
#: Gateway variants by name; the "-asyncio" ones force the stdlib loop although uvloop is installed.
BUILDS = {
    "compiled": {},
    "pure": {"AUTOCORE_NO_EXTENSIONS": "1"},
    "compiled-asyncio": {"AUTOCORE_NO_UVLOOP": "1"},
    "pure-asyncio": {"AUTOCORE_NO_EXTENSIONS": "1", "AUTOCORE_NO_UVLOOP": "1"},
}


# -- publishers (separate processes) --------------------------------------------------


def _publisher(host: str, port: int, uuids: list[str], rate_hz: float, duration_s: float,
               start_at: float, counter: mp.Value) -> None:  # type: ignore[valid-type]
    """Publish telemetry for ``uuids`` at ``rate_hz`` each (0: as fast as possible), QoS 0."""
    clients = []
    for uuid in uuids:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{uuid}")
        client.max_queued_messages_set(0)
        client.connect(host, port, keepalive=60)
        client.loop_start()
        clients.append((uuid, client, f"autocore/devices/{uuid}/telemetry"))
    payload = dict(PAYLOAD_TEMPLATE)
    time.sleep(max(0.0, start_at - time.time()))
    sent = 0
    tick = 0
    period = 1.0 / rate_hz if rate_hz > 0 else 0.0
    begin = time.monotonic()
    while time.monotonic() - begin < duration_s:
        for uuid, client, topic in clients:
            payload["uuid"] = uuid
            payload["analog_sensors"] = {"bench_sent": time.time() * 1e6}
            client.publish(topic, json.dumps(payload, separators=(",", ":")), qos=0)
            sent += 1
        tick += 1
        if period:
            time.sleep(max(0.0, begin + tick * period - time.monotonic()))
    time.sleep(0.5)
    for _uuid, client, _topic in clients:
        client.disconnect()
        client.loop_stop()
    with counter.get_lock():
        counter.value += sent


def publish(host: str, port: int, devices: int, rate_hz: float, duration_s: float) -> int:
    """Run the publisher processes to completion; return how many messages they sent."""
    uuids = [f"bench-{i:04d}" for i in range(devices)]
    counter = mp.Value("q", 0)
    start_at = time.time() + 1.0
    procs = [mp.Process(target=_publisher,
                        args=(host, port, uuids[i::PUBLISHER_PROCESSES], rate_hz, duration_s, start_at, counter))
             for i in range(min(PUBLISHER_PROCESSES, devices))]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(duration_s + 30)
        if proc.is_alive():
            proc.kill()
    return int(counter.value)


# -- measuring the gateway -------------------------------------------------------------


class ProcessSampler(threading.Thread):
    """Samples CPU time and RSS of one PID from /proc every ``period_s``."""

    def __init__(self, pid: int, period_s: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.pid, self.period_s = pid, period_s
        self.samples: list[tuple[float, float, float]] = []  # (wall, cpu seconds, rss MB)
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
            self.stop_event.wait(self.period_s)

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


def start_gateway(broker: Mosquitto, db_path: Path, build: str, workdir: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MQTT_", "AUTOCORE_", "DATABASE_"))}
    env.update(BUILDS[build])
    env.update({"MQTT_BROKER": broker.host, "MQTT_PORT": str(broker.port), "DATABASE_PATH": str(db_path),
                "LOG_FILE": "", "LOG_LEVEL": "WARNING", "AUTOCORE_RATE_LIMIT": "0",
                "AUTOCORE_METRICS_PORT": "0"})
    log = open(workdir / f"gateway-{build}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "autocore", "run", "--env-file", "/dev/null"], env=env,
                            stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    log.close()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # ready once its retained online status is in the DB
        with sqlite3.connect(db_path) as conn:
            if conn.execute("SELECT 1 FROM devices WHERE uuid='autocore-gateway' AND status='online'").fetchone():
                return proc
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"gateway did not start: {(workdir / f'gateway-{build}.log').read_text()[-2000:]}")


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


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run_gateway(broker: Mosquitto, build: str, devices: int, rate_hz: float, duration_s: float,
                mode: str = "rate", sample_period_s: float = 1.0) -> Result:
    """One measured run of the gateway under the given load."""
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
        started = time.monotonic()
        sent = publish(broker.host, broker.port, devices, rate_hz, duration_s)
        loaded_until = time.monotonic()
        time.sleep(DRAIN_S)
        reader.stop_event.set()
        reader.join()
        sampler.stop_event.set()
        sampler.join()
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(30)
        with sqlite3.connect(db_path) as conn:
            rows = conn.execute("SELECT id, data_value FROM telemetry_data WHERE data_key='analog_bench_sent'"
                                ).fetchall()
        latencies = []
        for row_id, sent_us in rows:
            committed = reader.commit_time(row_id)
            if committed is not None:
                latencies.append((committed - float(sent_us) / 1e6) * 1000)
        rss = [s[2] for s in sampler.samples]
        loaded = [s[2] for s in sampler.samples if started + 2 <= s[0] <= loaded_until]
        result = Result(mode, build, devices, rate_hz, duration_s)
        result.sent, result.stored = sent, len(rows)
        result.lost = max(0, sent - len(rows))
        result.offered_per_s = sent / duration_s
        result.stored_per_s = len(rows) / duration_s
        result.p50_ms, result.p95_ms, result.p99_ms = (round(percentile(latencies, q), 2)
                                                       for q in (0.50, 0.95, 0.99))
        result.cpu_percent = round(sampler.cpu_percent(started + 1, loaded_until), 2)
        result.rss_peak_mb = round(max(rss, default=0.0), 1)
        result.rss_steady_mb = round(statistics.median(loaded or rss or [0.0]), 1)
        if mode == "soak" and len(loaded) > 2:
            times = [s[0] - started for s in sampler.samples if started + 2 <= s[0] <= loaded_until]
            slope = statistics.linear_regression(times, loaded).slope * 60
            result.extra["rss_slope_mb_per_min"] = round(slope, 3)
        return result


def _raw_subscriber(host: str, port: int, ready: mp.Event, stop: mp.Event, count: mp.Value) -> None:  # type: ignore[valid-type]
    received = 0

    def on_message(*_args: object) -> None:
        nonlocal received
        received += 1

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-raw")
    client.on_message = on_message
    client.on_connect = lambda c, *a: c.subscribe("autocore/devices/+/telemetry", 1)
    client.on_subscribe = lambda *a: ready.set()
    client.connect(host, port)
    client.loop_start()
    stop.wait()
    client.loop_stop()
    count.value = received


def run_raw(broker: Mosquitto, devices: int, rate_hz: float, duration_s: float) -> Result:
    """The ceiling: a minimal paho subscriber that only counts, under the same publishers."""
    ready, stop, count = mp.Event(), mp.Event(), mp.Value("q", 0)
    proc = mp.Process(target=_raw_subscriber, args=(broker.host, broker.port, ready, stop, count))
    proc.start()
    ready.wait(10)
    sent = publish(broker.host, broker.port, devices, rate_hz, duration_s)
    time.sleep(DRAIN_S)
    stop.set()
    proc.join(10)
    result = Result("ceiling", "raw-paho", devices, rate_hz, duration_s, sent=sent, stored=int(count.value))
    result.offered_per_s = sent / duration_s
    result.stored_per_s = count.value / duration_s
    result.lost = max(0, sent - int(count.value))
    return result


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


# -- reporting -------------------------------------------------------------------------


COLUMNS = ("mode", "build", "offered_per_s", "stored_per_s", "lost", "p50_ms", "p95_ms", "p99_ms",
           "cpu_percent", "rss_steady_mb", "rss_peak_mb")


def report(result: Result, json_file: Path | None) -> None:
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
    parser.add_argument("--builds", default="compiled,pure")
    parser.add_argument("--ceiling", action="store_true", help="flood; compare with raw paho")
    parser.add_argument("--ramp", action="store_true", help="find the highest clean rate")
    parser.add_argument("--soak", type=float, default=0.0, help="minutes at 50 devices x 10 Hz")
    parser.add_argument("--commands", type=int, default=0, help="command rows to time (pick-up latency)")
    parser.add_argument("--smoke", action="store_true", help="a few seconds; exits 1 if nothing is stored")
    parser.add_argument("--json", type=Path, default=None, help="append JSON lines to this file")
    args = parser.parse_args(argv)
    builds = [b for b in args.builds.split(",") if b]
    results: list[Result] = []

    with Mosquitto() as broker:
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
            for build in builds:
                rate_hz, best = 10.0, None
                while rate_hz <= 400:
                    result = run_gateway(broker, build, args.devices, rate_hz, args.duration, mode="ramp")
                    report(result, args.json)
                    results.append(result)
                    if result.lost or result.p99_ms > 100:
                        break
                    best = result
                    rate_hz *= 1.5
                if best is not None:
                    print(f"{build}: highest clean rate {best.offered_per_s:.0f} msg/s "
                          f"(p99 {best.p99_ms:.1f} ms)")
        else:
            for total in (float(r) for r in args.rates.split(",")):
                for build in builds:
                    runs = [run_gateway(broker, build, args.devices, total / args.devices, args.duration)
                            for _ in range(args.repeat)]
                    for run in runs:
                        report(run, args.json)
                    results.append(min(runs, key=lambda r: abs(r.p95_ms - statistics.median(
                        x.p95_ms for x in runs))))
    print()
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
