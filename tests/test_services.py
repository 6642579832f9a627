"""The real-service fixtures themselves: a broker answers, brokers stop by PID, PostgreSQL starts."""

from __future__ import annotations

import os

import pytest

from autocore.broker import Mosquitto, port_answers


def test_session_broker_round_trip(peer_factory) -> None:  # type: ignore[no-untyped-def]
    listener = peer_factory()
    listener.subscribe("autocore/test/#")
    talker = peer_factory()
    talker.publish("autocore/test/ping", b"pong", qos=1)
    message = listener.expect(lambda m: m.topic == "autocore/test/ping")
    assert message.payload == b"pong"


def test_private_broker_is_stopped_by_pid(broker_factory) -> None:  # type: ignore[no-untyped-def]
    instance: Mosquitto = broker_factory()
    assert port_answers(instance.host, instance.port)
    pid = instance.pid
    instance.stop()
    assert not instance.running
    assert not port_answers(instance.host, instance.port)
    assert pid is not None
    try:
        os.kill(pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive


@pytest.mark.postgres
def test_postgres_cluster_starts_on_a_free_port(postgres_factory) -> None:  # type: ignore[no-untyped-def]
    cluster = postgres_factory()
    assert cluster.psql("select 40 + 2").strip() == "42"
    assert port_answers("127.0.0.1", cluster.port)
