"""Operations: /metrics, /healthz, /readyz, ``autocore status``, JSON logs and the deploy files.

The end-to-end tests scrape a real ``autocore run`` process connected to a real
Mosquitto and a SQLite file, and check the numbers move with the traffic; the
collector is also read directly from a Metrics object and an unstarted Database.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import create_engine

from autocore import _fast
from autocore.broker import find_free_port
from autocore.config import KEYS, SECRET_FIELDS
from autocore.exporter import GatewayCollector
from autocore.metrics import Metrics
from autocore.overview import Samples, parse_metrics
from autocore.ringbuffer import Ring
from autocore.storage import Database
from tests.fixtures.services import fixture_bytes, gateway_env, wait_for

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
TELEMETRY_TOPIC = "autocore/devices/esp32-can-001/telemetry"
#: Rows one telemetry_can.json message becomes.
CAN_ROWS = 3
#: Longest wait for one HTTP answer in these tests.
HTTP_TIMEOUT_S = 5.0
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(port: int, path: str, method: str = "GET") -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with NO_PROXY.open(request, timeout=HTTP_TIMEOUT_S) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def scrape(port: int) -> Samples:
    status, body = get(port, "/metrics")
    assert status == 200
    return parse_metrics(body.decode())


def readyz(port: int) -> tuple[int, dict[str, Any]]:
    status, body = get(port, "/readyz")
    return status, json.loads(body)


def value(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0 when there is none)."""
    return sum(v for found, v in samples.get(name, []) if labels.items() <= found.items())


def status_command(env: Any, port: int) -> subprocess.CompletedProcess[str]:
    """``autocore status`` as an operator runs it, with the gateway's own settings."""
    return subprocess.run(
        [sys.executable, "-m", "autocore", "status", "--env-file", os.devnull],
        env=gateway_env(env.broker, env.db, AUTOCORE_METRICS_PORT=str(port)),
        capture_output=True, text=True, timeout=30)


def listening_sockets(pid: int) -> list[str]:
    """Local addresses of the TCP sockets in LISTEN state that process ``pid`` owns."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.append(fields[1])
    return found


# -- the collector, read directly -------------------------------------------------------------


def collect(collector: GatewayCollector) -> Samples:
    registry = CollectorRegistry()
    registry.register(collector)
    return parse_metrics(generate_latest(registry).decode())


def test_collector_exports_the_pipeline_counters() -> None:
    metrics = Metrics()
    metrics.received = 7
    metrics.accepted = 5
    metrics.received_by_kind.update({"telemetry": 4, "status": 1})
    metrics.reject("bad_json", "esp32-relay-001")
    metrics.reject("bad_json", "esp32-relay-001")
    metrics.reject("payload_too_large", "")
    metrics.limited("esp32-can-001")
    metrics.telemetry_rows = 12
    metrics.db_commit_seconds.observe(0.001)  # on a bound: counted in that bucket
    metrics.db_commit_seconds.observe(0.2)
    samples = collect(GatewayCollector(metrics))

    assert value(samples, "autocore_messages_received_total") == 7
    assert value(samples, "autocore_messages_accepted_total", kind="telemetry") == 4
    assert value(samples, "autocore_messages_accepted_total") == 5
    assert value(samples, "autocore_messages_rejected_total", reason="bad_json") == 2
    assert value(samples, "autocore_messages_rejected_by_device_total",
                 reason="bad_json", device="esp32-relay-001") == 2
    assert value(samples, "autocore_messages_rejected_by_device_total",
                 reason="payload_too_large", device="(other)") == 1
    assert value(samples, "autocore_messages_rate_limited_total", device="esp32-can-001") == 1
    assert value(samples, "autocore_telemetry_rows_total") == 12
    assert value(samples, "autocore_db_commit_seconds_bucket", le="0.001") == 1
    assert value(samples, "autocore_db_commit_seconds_bucket", le="0.1") == 1
    assert value(samples, "autocore_db_commit_seconds_bucket", le="0.25") == 2
    assert value(samples, "autocore_db_commit_seconds_bucket", le="+Inf") == 2
    assert value(samples, "autocore_db_commit_seconds_count") == 2
    assert abs(value(samples, "autocore_db_commit_seconds_sum") - 0.201) < 1e-9
    build = samples["autocore_build_info"][0][0]
    assert build["version"] and build["python"].startswith(("CPython", "PyPy"))
    assert {labels["module"] for labels, _ in samples["autocore_hot_path_info"]} == set(_fast.MODULES)
    # Sources that were not given export nothing rather than made-up zeros.
    assert "autocore_ring_depth" not in samples and "autocore_mqtt_connected" not in samples


def test_collector_exports_both_rings_and_the_writer(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'unused.db'}")
    db = Database(engine, Ring(16, "drop_oldest"), 10, 1.0, Ring(8, "reject"), write_interval_s=0.05)
    for n in range(20):  # 4 more than fit: the oldest are dropped
        db.ring.push(n)
    db.reliable_ring.offer("qos1")
    db.rows_written, db.batches_written = 30, 3
    try:
        samples = collect(GatewayCollector(Metrics(), db))
    finally:
        engine.dispose()
    assert value(samples, "autocore_ring_depth", ring="best_effort") == 16
    assert value(samples, "autocore_ring_capacity", ring="best_effort") == 16
    assert value(samples, "autocore_ring_high_water", ring="best_effort") == 16
    assert value(samples, "autocore_ring_dropped_total", ring="best_effort") == 4
    assert value(samples, "autocore_ring_depth", ring="reliable") == 1
    assert value(samples, "autocore_ring_capacity", ring="reliable") == 8
    assert value(samples, "autocore_db_rows_written_total") == 30
    assert value(samples, "autocore_db_batches_total") == 3
    assert "autocore_db_last_commit_age_seconds" not in samples  # nothing committed yet


# -- a running gateway ---------------------------------------------------------------------------


def test_metrics_and_status_follow_the_traffic(env) -> None:  # type: ignore[no-untyped-def]
    port = find_free_port()
    env.gateway(AUTOCORE_METRICS_PORT=str(port))
    env.register("esp32-can-001", "esp32_can")
    before = scrape(port)
    status, health = get(port, "/healthz")
    assert status == 200 and json.loads(health)["status"] == "ok"
    status, ready = readyz(port)
    assert status == 200 and ready["ready"] is True
    assert set(ready["checks"]) == {"broker", "subscriptions", "database", "buffer", "storage"}

    device = env.peer()
    for _ in range(5):
        device.publish(TELEMETRY_TOPIC, fixture_bytes("telemetry_can.json"), qos=0)
    for _ in range(3):
        device.publish(TELEMETRY_TOPIC, b"{not json")
    written = value(before, "autocore_db_rows_written_total") + 5 * CAN_ROWS
    after = wait_for(lambda: (s := scrape(port)) and value(s, "autocore_db_rows_written_total") >= written
                     and value(s, "autocore_messages_rejected_total", reason="bad_json") >= 3 and s,
                     what="rows and rejects in /metrics")
    assert value(after, "autocore_db_rows_written_total") == written
    assert value(after, "autocore_messages_received_total") >= value(before, "autocore_messages_received_total") + 8
    assert value(after, "autocore_messages_accepted_total", kind="telemetry") == 5
    assert value(after, "autocore_messages_rejected_total", reason="bad_json") == 3
    assert value(after, "autocore_messages_rejected_by_device_total",
                 reason="bad_json", device="esp32-can-001") == 3
    assert value(after, "autocore_db_commit_seconds_count") >= 1
    assert value(after, "autocore_db_last_commit_age_seconds") < 30
    assert value(after, "autocore_mqtt_connected") == 1

    assert get(port, "/nowhere")[0] == 404
    assert get(port, "/metrics", method="POST")[0] == 405
    with socket.create_connection(("127.0.0.1", port), timeout=HTTP_TIMEOUT_S) as raw:
        raw.sendall(b"garbage\r\n\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.1 400")

    result = status_command(env, port)
    assert result.returncode == 0, result.stdout + result.stderr
    for text in ("ready", "devices online", "messages rejected", "bad_json", "rows written",
                 "last commit", "hot path"):
        assert text in result.stdout, text

    # Every metric the dashboard queries is one the gateway exports (with or without samples yet).
    exported = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", get(port, "/metrics")[1].decode(), re.M):
        exported |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"} if kind == "histogram" else {name}
    dashboard = json.loads((DEPLOY / "grafana-autocore.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {name for expr in exprs for name in re.findall(r"\bautocore_[a-z_]+", expr)}
    assert used and used <= exported, used - exported


def test_readiness_follows_the_broker(env) -> None:  # type: ignore[no-untyped-def]
    port = find_free_port()
    env.gateway(AUTOCORE_METRICS_PORT=str(port))
    wait_for(lambda: readyz(port)[0] == 200, what="/readyz to pass")  # "running" is logged before the SUBACK
    env.broker.stop()  # by its PID
    status, body = wait_for(lambda: (r := readyz(port))[0] == 503 and r, what="/readyz to fail")
    assert body["ready"] is False
    assert body["checks"]["broker"]["ok"] is False and body["checks"]["database"]["ok"] is True
    assert get(port, "/healthz")[0] == 200  # alive all the same
    result = status_command(env, port)
    assert result.returncode == 1 and "NOT READY" in result.stdout and "broker" in result.stdout

    env.broker.start()  # same port
    wait_for(lambda: readyz(port)[0] == 200, timeout_s=20, what="/readyz after the broker is back")
    samples = scrape(port)
    assert value(samples, "autocore_mqtt_reconnects_total") >= 1
    assert value(samples, "autocore_mqtt_disconnected_seconds_total") > 0


def test_json_logs_and_a_taken_port_keep_the_gateway_running(env) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        gateway = env.gateway(AUTOCORE_LOG_FORMAT="json", AUTOCORE_METRICS_PORT=str(taken))
        assert listening_sockets(gateway.proc.pid) == []
        assert gateway.stop(signal.SIGTERM) == 0
    lines = gateway.log.splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all(set(r) >= {"time", "level", "logger", "message"} for r in records)
    messages = [r["message"] for r in records]
    assert any("running" in m for m in messages) and any(m == "stopped" for m in messages)
    assert any(r["level"] == "ERROR" and f"cannot serve metrics on 127.0.0.1:{taken}" in r["message"]
               for r in records)


def test_port_zero_serves_nothing_and_status_falls_back_to_the_database(env) -> None:  # type: ignore[no-untyped-def]
    gateway = env.gateway(AUTOCORE_METRICS_PORT="0")
    assert listening_sockets(gateway.proc.pid) == []
    assert "metrics and health endpoints are off" in gateway.log
    result = status_command(env, 0)
    assert result.returncode == 1
    assert "endpoints are off" in result.stdout and "devices online" in result.stdout
    assert "last telemetry row" in result.stdout


# -- deploy files ------------------------------------------------------------------------------


def test_env_example_lists_every_key_with_its_default() -> None:
    text = (DEPLOY / "autocore.env.example").read_text()
    for key in KEYS:
        if key.field in SECRET_FIELDS or key.default is None:
            assert re.search(rf"^# {key.env}=$", text, re.M), key.env
        else:
            assert re.search(rf"^{key.env}={re.escape(key.default)}$", text, re.M), key.env
        assert key.help in text, key.env


def test_systemd_unit_keeps_the_original_shape() -> None:
    unit = (DEPLOY / "autocore.service").read_text().splitlines()
    for line in ("Type=simple", "User=autocore", "EnvironmentFile=/opt/autocore/.env",
                 "WorkingDirectory=/opt/autocore/gateway",
                 "ExecStart=/opt/autocore/gateway/.venv/bin/autocore run", "Restart=always",
                 "RestartSec=10", "TimeoutStopSec=30", "After=network.target mosquitto.service",
                 "Wants=mosquitto.service"):
        assert line in unit, line
