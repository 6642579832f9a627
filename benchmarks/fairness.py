"""Fairness benchmark: latency of well-behaved devices with and without a flooding neighbour.

The scenario of ``tests/faults/test_fairness.py``, measured instead of
asserted: five devices publish the spec's CAN telemetry at 10 Hz while one more
device offers 20x the per-device rate limit (``AUTOCORE_RATE_LIMIT``, 100 msg/s
by default, so 2,000 msg/s), all at QoS 0. Each run is made twice, side by side,
alone and with the noisy neighbour, and the table shows the medians over
``--repeat`` runs of each. End-to-end latency (publish -> row visible in the
database) is measured exactly as ``benchmarks/e2e.py`` measures it, with its
publishers, commit reader and CPU sampler: each message carries its send time
as the ``bench_sent`` sensor and a reader polls ``max(id)``, so the gateway
carries no instrumentation.

The neighbour costs the well-behaved devices twice on this kind of machine: the
gateway spends time refusing its messages, and its publisher process takes CPU
from the broker and the gateway (2 shared cores). Both are part of the answer.

    python benchmarks/fairness.py                       # 10 s runs, 3 of each, medians
    python benchmarks/fairness.py --duration 5 --repeat 1
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from autocore.broker import Mosquitto, find_free_port
from autocore.overview import fetch, parse_metrics

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.e2e import (  # noqa: E402  (run as a script from the repository root)
    BUILDS,
    DRAIN_S,
    LIVE_BROKER_CONFIG,
    CommitReader,
    ProcessSampler,
    _publisher,
    make_database,
    percentile,
    run_to_end,
    start_gateway,
    stop_run,
)

GOOD_DEVICES = 5
GOOD_HZ = 10.0
#: How many times its rate limit the noisy device offers.
NOISY_FACTOR = 20


@dataclass
class Run:
    scenario: str
    good_sent: int = 0
    good_stored: int = 0
    p50_ms: float = float("nan")
    p95_ms: float = float("nan")
    p99_ms: float = float("nan")
    noisy_sent: int = 0
    noisy_stored: int = 0
    noisy_limited: int = 0
    cpu_percent: float = 0.0


def rate_limited(metrics_port: int, uuid: str) -> int:
    """``autocore_messages_rate_limited_total`` of one device, from the gateway's /metrics."""
    _status, body = fetch(f"http://127.0.0.1:{metrics_port}/metrics")
    samples = parse_metrics(body.decode())
    return int(sum(v for labels, v in samples.get("autocore_messages_rate_limited_total", [])
                   if labels.get("device") == uuid))


def run_once(broker: Mosquitto, build: str, noisy: bool, limit: int, burst: int, duration_s: float) -> Run:
    """One measured run: the well-behaved devices, and the noisy one if asked."""
    uuids = [f"bench-{i:04d}" for i in range(GOOD_DEVICES + 1)]
    good, noisy_uuid = uuids[:GOOD_DEVICES], uuids[GOOD_DEVICES]
    result = Run("with noisy neighbour" if noisy else "alone")
    with tempfile.TemporaryDirectory(prefix="autocore-fairness-") as folder:
        workdir = Path(folder)
        db_path = workdir / "autocore.db"
        make_database(db_path, len(uuids))
        metrics_port = find_free_port()
        gateway = start_gateway(broker, db_path, build, workdir, metrics_port,
                                {"AUTOCORE_RATE_LIMIT": str(limit), "AUTOCORE_RATE_BURST": str(burst)})
        sampler, reader = ProcessSampler(gateway.pid, 1.0), CommitReader(db_path)
        sampler.start()
        reader.start()
        time.sleep(1.0)
        good_count, noisy_count = mp.Value("q", 0), mp.Value("q", 0)
        start_at = time.time() + 1.0
        procs = [mp.Process(target=_publisher,
                            args=(broker.host, broker.port, good, GOOD_HZ, duration_s, start_at, good_count))]
        if noisy:
            noisy_hz = float(NOISY_FACTOR * limit)
            procs.append(mp.Process(target=_publisher, args=(broker.host, broker.port, [noisy_uuid], noisy_hz,
                                                             duration_s, start_at, noisy_count)))
        started = time.monotonic()
        run_to_end(procs, duration_s + 30)
        loaded_until = time.monotonic()
        time.sleep(DRAIN_S)
        result.noisy_limited = rate_limited(metrics_port, noisy_uuid)  # before the gateway stops
        stop_run(gateway, reader, sampler)
        with sqlite3.connect(db_path) as conn:
            rows = conn.execute(
                "SELECT t.id, t.data_value, d.uuid FROM telemetry_data t JOIN devices d ON d.id = t.device_id"
                " WHERE t.data_key = 'analog_bench_sent'").fetchall()
    latencies = []
    for row_id, sent_us, uuid in rows:
        if uuid == noisy_uuid:
            result.noisy_stored += 1
            continue
        result.good_stored += 1
        committed = reader.commit_time(row_id)
        if committed is not None:
            latencies.append((committed - float(sent_us) / 1e6) * 1000)
    result.good_sent, result.noisy_sent = int(good_count.value), int(noisy_count.value)
    result.p50_ms, result.p95_ms, result.p99_ms = (percentile(latencies, q) for q in (0.50, 0.95, 0.99))
    result.cpu_percent = sampler.cpu_percent(started + 1, loaded_until)
    return result


def median_run(runs: list[Run]) -> Run:
    """Field by field medians (counts too) of repeated runs of one scenario."""
    merged = Run(runs[0].scenario)
    for name in ("good_sent", "good_stored", "noisy_sent", "noisy_stored", "noisy_limited"):
        setattr(merged, name, int(statistics.median(getattr(r, name) for r in runs)))
    for name in ("p50_ms", "p95_ms", "p99_ms", "cpu_percent"):
        setattr(merged, name, statistics.median(getattr(r, name) for r in runs))
    return merged


def table(rows: list[Run], limit: int) -> str:
    header = ("scenario", "good sent", "good stored", "good lost", "p50 ms", "p95 ms", "p99 ms",
              f"noisy offered ({NOISY_FACTOR}x{limit}/s)", "noisy stored", "noisy limited", "gateway CPU %")
    lines = [header]
    for r in rows:
        lost = max(0, r.good_sent - r.good_stored)
        lines.append((r.scenario, str(r.good_sent), str(r.good_stored), str(lost), f"{r.p50_ms:.1f}", f"{r.p95_ms:.1f}", f"{r.p99_ms:.1f}", str(r.noisy_sent),
                      str(r.noisy_stored), str(r.noisy_limited), f"{r.cpu_percent:.1f}"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(" | ".join(cell.ljust(w) for cell, w in zip(line, widths)) for line in lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=100, help="AUTOCORE_RATE_LIMIT, msg/s per device")
    parser.add_argument("--burst", type=int, default=100, help="AUTOCORE_RATE_BURST, messages")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each scenario (medians reported)")
    parser.add_argument("--build", default="compiled", choices=sorted(BUILDS))
    args = parser.parse_args(argv)
    runs: dict[bool, list[Run]] = {False: [], True: []}
    with Mosquitto(extra_config=LIVE_BROKER_CONFIG) as broker:
        for n in range(args.repeat):
            for noisy in (False, True):  # side by side, alternating, so drift hits both alike
                run = run_once(broker, args.build, noisy, args.limit, args.burst, args.duration)
                runs[noisy].append(run)
                print(f"run {n + 1}/{args.repeat} {run.scenario}: good p50 {run.p50_ms:.1f} ms, "
                      f"p95 {run.p95_ms:.1f} ms, stored {run.good_stored}/{run.good_sent}; noisy stored "
                      f"{run.noisy_stored}, limited {run.noisy_limited} of {run.noisy_sent}", flush=True)
    print()
    print(f"{GOOD_DEVICES} devices at {GOOD_HZ:g} Hz, build {args.build}, limit {args.limit}/s "
          f"burst {args.burst}, {args.duration:g} s per run, medians of {args.repeat} runs")
    print(table([median_run(runs[False]), median_run(runs[True])], args.limit))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
