"""The demo: the README's first command runs the gateway's main job end to end."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

from autocore.broker import find_free_port


def test_demo_starts_its_own_broker_and_shows_what_was_stored(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MQTT_", "DATABASE_"))}
    env["MQTT_PORT"] = str(find_free_port())  # nothing listens there: the demo starts Mosquitto
    result = subprocess.run(
        [sys.executable, "-m", "autocore", "demo", "--duration", "2", "--devices", "2",
         "--workdir", str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "started a private Mosquitto" in out
    for heading in ("Devices", "Telemetry rows", "Commands", "Events", "Gateway"):
        assert heading in out
    assert '"bad_json": 1' in out
    with closing(sqlite3.connect(tmp_path / "autocore.db")) as conn, conn:
        statuses = dict(conn.execute("SELECT uuid, status FROM devices"))
        rows = conn.execute("SELECT count(*) FROM telemetry_data").fetchone()[0]
        command = conn.execute("SELECT status, topic FROM gateway_commands").fetchone()
    assert statuses["esp32-display-001"] == "offline"  # went silent: offline transition
    assert statuses["esp32-can-001"] == "online"
    assert rows > 50
    assert command == ("acked", "autocore/devices/esp32-relay-001/relays/set")
