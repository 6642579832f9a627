"""``autocore demo``: the gateway's main job on embedded defaults, with simulated ESP32s.

Uses a SQLite file in a temporary (or given) directory, a broker on the
configured port or, when none answers there, a private Mosquitto on a free
loopback port. Simulated devices announce, report status and stream telemetry
at 10 Hz; one goes silent (offline transition) and one sends garbage (reject);
a relay command row is queued as the Config App would, and a simulated relay
board switches and confirms it. It ends with a table of what the gateway stored.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import create_engine, func, insert, select

from autocore import broker, envelope, topics
from autocore.cli import implementation_report, load_settings, run_loop
from autocore.gateway import Gateway
from autocore.schema import devices, event_logs, gateway_commands, telemetry_data

#: Telemetry period of every simulated device (10 Hz, as CAN readers send).
TELEMETRY_PERIOD_S = 0.1
#: The display stops talking after this long, to show an offline transition.
SILENT_AFTER_S = 1.0
DEMO_DEVICE_TIMEOUT_S = 3.0
#: The demo commits every second so rows can be watched arriving; the gateway's default
#: (AUTOCORE_WRITE_INTERVAL=60) spares an SD card instead.
DEMO_WRITE_INTERVAL_S = 1.0


class SimulatedDevice:
    """One ESP32 on its own paho connection (with a last will, as the firmware has)."""

    def __init__(self, uuid: str, device_type: str, host: str, port: int) -> None:
        self.uuid = uuid
        self.device_type = device_type
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"demo-{uuid}")
        will = envelope.build(uuid, status="offline", reason="unexpected_disconnect")
        self.client.will_set(topics.status_topic(uuid), envelope.dumps(will), qos=1, retain=True)
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        self.sent = 0

    def publish(self, topic: str, payload: dict[str, Any] | bytes, qos: int = 0, retain: bool = False) -> None:
        body = payload if isinstance(payload, bytes) else envelope.dumps(payload)
        self.client.publish(topic, body, qos=qos, retain=retain)
        self.sent += 1

    def announce(self) -> None:
        self.publish(topics.announce_topic(self.uuid), envelope.build(
            self.uuid, device_type=self.device_type, firmware_version="2.2.0",
            capabilities=["telemetry"], ip_address="192.168.4.20"), qos=1)
        self.publish(topics.status_topic(self.uuid), envelope.build(
            self.uuid, status="online", firmware_version="2.2.0", uptime=1), qos=1, retain=True)

    def telemetry(self, tick: int) -> None:
        if self.device_type == "esp32_can":
            body = {"can_data": {"signals": {
                "RPM": {"value": 800 + (tick * 37) % 5000, "unit": "rpm"},
                "TPS": {"value": round((tick * 3.7) % 100, 1), "unit": "%"},
                "ECT": {"value": 80 + tick % 15, "unit": "°C"},
            }}}
        else:
            body = {"analog_sensors": {"fuel_level": round(70 - tick * 0.01, 2)},
                    "system_status": {"cpu_temperature": 41.5, "wifi_signal": -60},
                    "gps": {"latitude": -23.55, "longitude": -46.63, "speed": tick % 90}}
        self.publish(topics.telemetry_topic(self.uuid), envelope.build(self.uuid, **body))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class SimulatedRelayBoard(SimulatedDevice):
    """A relay board: applies ``relays/set`` and answers with ``relays/state``, as the firmware does."""

    def __init__(self, uuid: str, host: str, port: int) -> None:
        super().__init__(uuid, "esp32_relay", host, port)
        self.channels = {str(ch): False for ch in range(1, 17)}
        self.client.on_message = self._on_set
        self.client.subscribe(f"autocore/devices/{uuid}/relays/set", qos=1)

    def _on_set(self, client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        body = json.loads(message.payload)
        channel, action = str(body.get("channel")), body.get("command")
        if channel in self.channels and action in ("on", "off", "toggle"):
            self.channels[channel] = not self.channels[channel] if action == "toggle" else action == "on"
        self.report_state()

    def report_state(self) -> None:
        self.publish(f"autocore/devices/{self.uuid}/relays/state",
                     envelope.build(self.uuid, board_id=1, channels=self.channels), qos=1)


def _queue_relay_command(db_path: Path, uuid: str) -> None:
    """Write a command row the way the Config App does when a user presses "relay 3 on"."""
    engine = create_engine(f"sqlite:///{db_path}")
    with engine.begin() as conn:
        conn.execute(insert(gateway_commands).values(
            device_uuid=uuid, command_type="relay", created_at=datetime.now(), status="pending",
            payload=json.dumps({"channel": 3, "command": "on", "source": "demo"})))
    engine.dispose()


def _simulate(host: str, port: int, count: int, duration_s: float, stop: threading.Event,
              progress: dict[str, Any], db_path: Path) -> None:
    streamers = [SimulatedDevice(f"esp32-can-{i + 1:03d}" if i % 2 == 0 else f"esp32-sensor-{i + 1:03d}",
                                 "esp32_can" if i % 2 == 0 else "sensor_board", host, port)
                 for i in range(count)]
    display = SimulatedDevice("esp32-display-001", "esp32_display", host, port)
    board = SimulatedRelayBoard("esp32-relay-001", host, port)
    everyone = [*streamers, display, board]
    try:
        for device in everyone:
            device.announce()
        time.sleep(0.3)  # let the announces register before telemetry flows
        display.publish(topics.status_topic(display.uuid), b'{"protocol_version":"2.2.0","uuid":',
                        qos=1)  # truncated JSON: rejected with ERR_002
        _queue_relay_command(db_path, board.uuid)
        started = time.monotonic()
        tick = 0
        while not stop.is_set():
            elapsed = time.monotonic() - started
            if elapsed >= duration_s:
                break
            for device in streamers:
                device.telemetry(tick)
            if tick % 10 == 0:  # the board reports its channels once a second
                board.report_state()
            if elapsed < SILENT_AFTER_S:
                display.publish(topics.telemetry_topic(display.uuid),
                                envelope.build(display.uuid, system_status={"uptime": tick}))
            tick += 1
            progress["elapsed"] = elapsed
            progress["sent"] = sum(d.sent for d in everyone)
            time.sleep(max(0.0, started + tick * TELEMETRY_PERIOD_S - time.monotonic()))
    finally:
        for device in everyone:
            device.close()


def _progress_bar(progress: dict[str, Any], duration_s: float, stored: int) -> None:
    width = 30
    done = min(1.0, progress.get("elapsed", 0.0) / duration_s)
    bar = "#" * int(width * done) + "." * (width - int(width * done))
    sys.stderr.write(f"\r[{bar}] {progress.get('elapsed', 0.0):4.1f}/{duration_s:g} s  "
                     f"sent {progress.get('sent', 0):5d}  stored rows {stored:6d}")
    sys.stderr.flush()


async def _demo(gateway: Gateway, host: str, port: int, devices_count: int, duration_s: float,
                db_path: Path) -> int:
    runner = asyncio.ensure_future(gateway.run(install_signal_handlers=False))
    ready = asyncio.ensure_future(gateway.ready.wait())
    await asyncio.wait([runner, ready], return_when=asyncio.FIRST_COMPLETED)
    if runner.done():
        ready.cancel()
        return runner.result()
    stop = threading.Event()
    progress: dict[str, Any] = {}
    sim = threading.Thread(target=_simulate, daemon=True,
                           args=(host, port, devices_count, duration_s, stop, progress, db_path))
    sim.start()
    try:
        while sim.is_alive():
            await asyncio.sleep(0.2)
            _progress_bar(progress, duration_s, gateway.db.rows_written if gateway.db else 0)
        # Give the silent display time to time out, then stop.
        deadline = time.monotonic() + DEMO_DEVICE_TIMEOUT_S + 1.5
        while time.monotonic() < deadline and gateway.registry and any(
                d.uuid == "esp32-display-001" and d.status == "online" for d in gateway.registry.devices()):
            await asyncio.sleep(0.2)
            _progress_bar(progress, duration_s, gateway.db.rows_written if gateway.db else 0)
    finally:
        stop.set()
        sys.stderr.write("\n")
        gateway.request_stop()
    return await runner


def _report(db_path: Path, gateway: Gateway) -> None:
    engine = create_engine(f"sqlite:///{db_path}")
    with engine.connect() as conn:
        print("\nDevices")
        print(f"  {'uuid':<20} {'type':<14} {'status':<8} last_seen")
        for row in conn.execute(select(devices.c.uuid, devices.c.type, devices.c.status,
                                       devices.c.last_seen).order_by(devices.c.id)):
            print(f"  {row.uuid:<20} {row.type:<14} {row.status:<8} {row.last_seen}")
        print("\nTelemetry rows")
        query = (select(devices.c.uuid, telemetry_data.c.data_type, func.count())
                 .join(devices, devices.c.id == telemetry_data.c.device_id)
                 .group_by(devices.c.uuid, telemetry_data.c.data_type).order_by(devices.c.uuid))
        for uuid, data_type, count in conn.execute(query):
            print(f"  {uuid:<20} {data_type:<14} {count:6d}")
        latest = conn.execute(select(telemetry_data.c.data_key, telemetry_data.c.data_value,
                                     telemetry_data.c.unit).order_by(telemetry_data.c.id.desc())
                              .limit(3)).all()
        print("  latest: " + ", ".join(f"{k}={v}{' ' + u if u else ''}" for k, v, u in latest))
        print("\nCommands")
        for row in conn.execute(select(gateway_commands).order_by(gateway_commands.c.id)):
            took = (row.completed_at - row.created_at).total_seconds() * 1000 if row.completed_at else 0
            print(f"  #{row.id} {row.command_type} {row.payload} -> {row.device_uuid}: {row.status} "
                  f"(created {row.created_at:%H:%M:%S.%f}, sent {row.sent_at:%H:%M:%S.%f}, "
                  f"done in {took:.0f} ms via {row.topic})")
        print("\nEvents")
        query = (select(event_logs.c.event_type, event_logs.c.action, func.count())
                 .group_by(event_logs.c.event_type, event_logs.c.action))
        for event_type, action, count in conn.execute(query):
            print(f"  {event_type:<10} {action:<14} {count:4d}")
    engine.dispose()
    snapshot = gateway.metrics.snapshot()
    print("\nGateway")
    print(f"  messages received {snapshot['received']}, accepted {snapshot['accepted']}, "
          f"rejected {snapshot['rejected']} {json.dumps(snapshot['rejected_by_reason'])}")
    print(f"  error reports published {snapshot['errors_published']}")
    print("  " + ", ".join(f"{k}: {v}" for k, v in implementation_report()))
    if gateway.retention is not None and gateway.retention.usage is not None and gateway.db is not None:
        from autocore.maintenance import project

        usage = gateway.retention.usage
        per_day = gateway.db.rows_written / max(gateway.uptime(), 1e-3) * 86400
        projection = project(usage, max(gateway.db.rows_written, 1), per_day, gateway.retention.settings)
        print("\nStorage (autocore db stats shows the same for any database)")
        print(f"  {usage.used / 2**20:,.1f} MB in use; at this demo's rate, {projection.describe()}")
    print(f"\nDatabase file: {db_path}")


def run_demo(duration_s: float = 10.0, devices: int = 3, env_file: str | None = None,
             workdir: str | None = None) -> int:
    """Run the demo; returns the process exit code."""
    folder = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="autocore-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    db_path = folder / "autocore.db"
    settings = load_settings(env_file)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with ExitStack() as stack:
        host, port = settings.mqtt_broker, settings.mqtt_port
        if broker.port_answers(host, port):
            print(f"Using the broker that answers on {host}:{port}")
        else:
            try:
                private = stack.enter_context(broker.Mosquitto())
            except FileNotFoundError as exc:
                print(f"autocore demo: {exc}", file=sys.stderr)
                return 1
            host, port = private.host, private.port
            print(f"No broker on {settings.mqtt_broker}:{settings.mqtt_port}; "
                  f"started a private Mosquitto on {host}:{port} (pid {private.pid})")
        settings = load_settings(
            env_file, mqtt_broker=host, mqtt_port=port, database_path=str(db_path),
            database_url=None, create_database=True, device_timeout_s=DEMO_DEVICE_TIMEOUT_S,
            heartbeat_interval_s=0.5, telemetry_flush_interval_s=0.5, write_interval_s=DEMO_WRITE_INTERVAL_S,
            log_file="", metrics_port=0,
            gateway_uuid="autocore-gateway",
        )
        print(f"Simulating {devices} telemetry devices and a display for {duration_s:g} s "
              f"(database {db_path})")
        gateway = Gateway(settings)
        code = run_loop(_demo(gateway, host, port, devices, duration_s, db_path))
        if code == 0:
            _report(db_path, gateway)
        return code
