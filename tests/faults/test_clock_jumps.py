"""Wall-clock jumps (a Pi has no real-time clock) neither fire old commands nor flap presence.

After a power cut fake-hwclock restores an older time, then NTP jumps it
forward. The gateway runs under libfaketime with its offset read from a file
(``FAKETIME_TIMESTAMP_FILE``), so a test moves the gateway's wall clock while
it runs; the monotonic clock is left alone (``FAKETIME_DONT_FAKE_MONOTONIC``),
as a real clock change leaves it.

libfaketime 0.9.10 (Debian 12) mishandles ``clock_nanosleep(CLOCK_MONOTONIC,
TIMER_ABSTIME)`` with that setting (wolfcw/libfaketime#426): Python's
``time.sleep`` fails with EINVAL or oversleeps by the offset. The gateway
sleeps that way only when a database job is retried, which these tests never
cause; everything else (uvloop, threading waits) is unaffected.
"""

from __future__ import annotations

import glob
import json
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.fixtures.services import query, wait_for
from tests.test_commands import boards, go_online, insert_command, wait_status  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow

LIBFAKETIME = next(iter(sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))), None)


@pytest.fixture
def clock(tmp_path: Path):  # type: ignore[no-untyped-def]
    """The faked clock's offset file and the environment that makes a gateway read it."""
    if LIBFAKETIME is None:
        pytest.skip("libfaketime is not installed: apt-get install -y faketime")

    class Clock:
        path = tmp_path / "clock-offset"

        def set(self, offset_s: int) -> None:
            self.path.write_text(f"{offset_s:+d}\n")
            time.sleep(1.5)  # FAKETIME_CACHE_DURATION=1: every gateway has read it after this

        @property
        def env(self) -> dict[str, str]:
            return {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME_TIMESTAMP_FILE": str(self.path),
                    "FAKETIME_CACHE_DURATION": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}

    made = Clock()
    made.path.write_text("+0\n")
    return made


def test_a_held_command_does_not_fire_after_the_clock_goes_back(env, boards, clock) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    gateway = env.gateway(**clock.env)
    env.register("esp32-relay-001")
    board = boards(env.broker, "esp32-relay-001")
    row_id = insert_command(env.db, "esp32-relay-001", "relay", {"channel": 1, "command": "on"}, max_age_s=4)
    wait_for(lambda: "offline: held" in gateway.log, what="the command held for the offline board")
    clock.set(-7200)  # fake-hwclock: two hours back
    time.sleep(4.0)  # the command's maximum age passes (by any steady clock)
    go_online(env, "esp32-relay-001")
    row = wait_status(env.db, row_id, "expired")
    time.sleep(2.0)
    assert board.commands == [], "a command past its maximum age reached the board"
    assert row["sent_at"] is None
    assert gateway.alive()


def test_a_command_left_sent_times_out_after_a_restart_with_the_clock_back(env, boards, clock) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    first = env.gateway(MESSAGE_TIMEOUT="2")
    env.register("esp32-relay-001")
    board = boards(env.broker, "esp32-relay-001", answer=False)
    go_online(env, "esp32-relay-001")
    row_id = insert_command(env.db, "esp32-relay-001", "relay", {"channel": 2, "command": "on"})
    wait_for(lambda: board.commands, what="the command at the board")
    first.stop(signal.SIGKILL)
    clock.path.write_text("-7200\n")  # the restart comes up with an old time
    second = env.gateway(MESSAGE_TIMEOUT="2", **clock.env)
    row = wait_status(env.db, row_id, "timeout", timeout_s=20)
    assert row["attempts"] == 1 and len(board.commands) == 1
    assert second.alive()


class Chatter:
    """Devices that keep talking (QoS 0 telemetry every 0.3 s) until told to stop; bounded in time."""

    def __init__(self, peer, uuids: list[str], limit_s: float = 60.0) -> None:  # type: ignore[no-untyped-def]
        self.peer, self.talking = peer, set(uuids)
        self._stop = threading.Event()
        self._limit = time.monotonic() + limit_s
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self._limit:
            for uuid in sorted(self.talking):
                body = {"protocol_version": "2.2.0", "uuid": uuid, "analog_sensors": {"v": 1}}
                self.peer.client.publish(f"autocore/devices/{uuid}/telemetry", json.dumps(body), qos=0)
            time.sleep(0.3)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def offline_events(db) -> list[str]:  # type: ignore[no-untyped-def]
    return [r["source"] for r in query(db, "SELECT source FROM event_logs WHERE event_type='device' "
                                           "AND action='offline'")]


def test_shared_presence_does_not_flap_when_one_gateways_clock_jumps(env, clock) -> None:  # type: ignore[no-untyped-def]
    """Two gateways share the traffic and the database; one's wall clock jumps, forward then back.

    Each writes the last_seen of the devices it hears with its own clock, and
    each sweeps: comparing another host's last_seen with this host's clock
    timed out talking devices (offline, then online again at the next write).
    """
    shared = {"AUTOCORE_SHARED_GROUP": "grp", "DEVICE_TIMEOUT": "3"}
    steady = env.gateway(MQTT_CLIENT_ID="gateway-a", **shared)
    jumpy = env.gateway(MQTT_CLIENT_ID="gateway-b", **shared, **clock.env)
    uuids = [f"esp32-can-00{n}" for n in range(1, 4)]
    for uuid in uuids:
        env.register(uuid, "esp32_can")
    chatter = Chatter(env.peer(), uuids)
    try:
        wait_for(lambda: all(r["status"] == "online" for r in query(env.db, "SELECT status FROM devices WHERE "
                                                                         "type='esp32_can'")),
                 what="every device online")
        clock.set(+7200)  # NTP jumps forward
        time.sleep(10.0)  # more than the device timeout plus the last_seen write interval
        assert offline_events(env.db) == [], "talking devices timed out after a jump forward"
        clock.set(-7200)  # and back
        time.sleep(10.0)
        assert offline_events(env.db) == [], "talking devices timed out after a jump back"
        chatter.talking.discard(uuids[0])  # a device that really goes silent still times out
        wait_for(lambda: offline_events(env.db) == [uuids[0]], timeout_s=30, what="the silent device offline")
        time.sleep(2.0)
        assert offline_events(env.db) == [uuids[0]]
    finally:
        chatter.close()
    assert steady.alive() and jumpy.alive()
    assert "database thread died" not in steady.log + jumpy.log
