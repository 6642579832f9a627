"""An acknowledgement owed to one connection is never sent on the next one.

Packet ids belong to a connection. The gateway acknowledges QoS 1 telemetry
once its rows are committed; if the broker restarts without persistence in
between, the new connection reuses the same ids for other messages, and the
old commit's acknowledgements would acknowledge those before they were
stored. The broker's own log shows what it received: on the new connection
the gateway must acknowledge exactly the QoS 1 messages the broker sent it.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections import Counter
from contextlib import closing

from tests.fixtures.services import fixture_bytes, wait_for

TELEMETRY = json.loads(fixture_bytes("telemetry_can.json"))
TOPIC = "autocore/devices/esp32-can-001/telemetry"


def numbered(seq: int) -> bytes:
    return json.dumps({**TELEMETRY, "analog_sensors": {"seq": seq}}).encode()


def stored(db) -> list[int]:  # type: ignore[no-untyped-def]
    with closing(sqlite3.connect(db)) as conn, conn:
        rows = conn.execute("SELECT data_value FROM telemetry_data WHERE data_key='analog_seq'").fetchall()
    return sorted(int(float(value)) for (value,) in rows)


def test_commits_after_a_broker_restart_do_not_acknowledge_the_new_connections_messages(
        env, broker_factory) -> None:  # type: ignore[no-untyped-def]
    env.broker = broker_factory(persistence=False, extra_config=["log_type debug"])
    gateway = env.gateway()
    env.register("esp32-can-001", "esp32_can")
    blocker = sqlite3.connect(env.db, isolation_level=None, check_same_thread=False)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # the commit of the first ten waits for the lock
        device = env.peer()
        for seq in range(10):
            device.publish(TOPIC, numbered(seq), qos=1)
        wait_for(lambda: env.broker.read_log().count("Sending PUBLISH to autocore-gateway (d0, q1") >= 10,
                 what="the first ten delivered to the gateway")
        time.sleep(0.3)  # read by the gateway and queued for the (blocked) commit
        env.broker.stop()
        env.broker.start()  # no persistence: a fresh session, packet ids from 1 again
        mark = len(env.broker.read_log())
        wait_for(lambda: gateway.log.count("reconnected to broker") == 1, timeout_s=20, what="the reconnect")
        device = env.peer()
        for seq in range(10, 20):
            device.publish(TOPIC, numbered(seq), qos=1)
        wait_for(lambda: env.broker.read_log()[mark:].count("Sending PUBLISH to autocore-gateway (d0, q1") >= 10,
                 what="the next ten delivered on the new connection")
        time.sleep(0.3)
        blocker.execute("COMMIT")
    finally:
        blocker.close()
    wait_for(lambda: stored(env.db) == list(range(20)), timeout_s=20, what="all twenty stored")
    time.sleep(1.0)  # acknowledgements leave after the commit
    log = env.broker.read_log()[mark:]
    sent = Counter(re.findall(r"Sending PUBLISH to autocore-gateway \(d\d, q1, r\d, m(\d+),", log))
    acked = Counter(re.findall(r"Received PUBACK from autocore-gateway \(Mid: (\d+),", log))
    assert acked == sent, f"acknowledged {sorted(acked.elements())} for {sorted(sent.elements())}"
    assert "acknowledgement(s) of messages from an earlier connection" in gateway.log
    assert gateway.alive() and "Traceback" not in gateway.log
