"""While messages keep coming, the client reads the socket on a timer; a quiet socket is watched again.

Under load a wake-up per TCP segment costs more than the few messages it
reads. Once two wake-ups read messages within ``poll_interval_s`` of each
other, the client stops watching the socket and reads it every
``poll_interval_s`` instead, until a read finds no message; a lone message is
read as it arrives, with no added wait. These tests follow which path
delivered each batch (a wake-up on arrival, or a timed read), so they do not
depend on how fast the machine is: the poll interval is set far above any
scheduling delay.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autocore.cli import run_loop
from autocore.client import MqttClient
from autocore.config import Settings
from tests.fixtures.services import Peer

#: Long enough that a burst published right after the first message is always read by one poll.
POLL_S = 1.0
#: A correctness deadline (the keepalive would take 300 s), not a speed target.
NOTICED_WITHIN_S = 10.0


def _settings(broker: Any, tmp_path: Path) -> Settings:
    return Settings.from_env({"MQTT_BROKER": broker.host, "MQTT_PORT": str(broker.port),
                              "DATABASE_PATH": str(tmp_path / "unused.db")}, env_file=None)


def _tracing(client: MqttClient, paths: list[str]) -> Callable[[list[Any]], None]:
    """Records, per message of a decoded batch, whether a wake-up or a timed read delivered it."""
    path = {"now": "wake-up"}
    read, poll = client._read, client._poll

    def traced_read() -> None:
        path["now"] = "wake-up"
        read()

    def traced_poll(sock: Any) -> None:
        path["now"] = "timed"
        poll(sock)

    client._read = traced_read  # type: ignore[method-assign]
    client._poll = traced_poll  # type: ignore[method-assign]
    return lambda batch: paths.extend(path["now"] for _ in batch[::4])


def _client(broker: Any, tmp_path: Path, topic: str, qos: int, client_id: str,
            on_message: Callable[..., None] = lambda *message: None) -> MqttClient:
    """A client subscribed to ``topic`` on connect, with the test's long poll interval."""
    client = MqttClient(_settings(broker, tmp_path), [(topic, qos)], on_message, client_id=client_id)
    client.poll_interval_s = POLL_S
    return client


async def _connected(client: MqttClient) -> None:
    """Connect, wait for the SUBACK, and for the socket to be watched on arrival."""
    await client.connect(10)
    await asyncio.wait_for(client.subscribed.wait(), 10)
    await _quiet(client)


async def _quiet(client: MqttClient) -> None:
    """Wait until no timed read is pending: the next message is read as it arrives."""
    for _ in range(int(10 * POLL_S / 0.05)):
        if client._poll_timer is None:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed reads never ended on a quiet connection")


def test_a_burst_is_read_on_the_timer_and_a_lone_message_at_once(broker, peer_factory,  # type: ignore[no-untyped-def]
                                                                 tmp_path: Path) -> None:
    publisher: Peer = peer_factory()
    topic = "autocore/test/poll"

    async def scenario() -> tuple[list[str], list[bytes], tuple[bool, bool]]:
        payloads: list[bytes] = []
        paths: list[str] = []
        arrived = asyncio.Event()
        client = _client(broker, tmp_path, topic, 0, "poll-test")
        trace = _tracing(client, paths)

        def on_publishes(batch: list[Any]) -> None:
            trace(batch)
            payloads.extend(batch[1::4])  # a flat list: topic, payload, header byte, packet id
            arrived.set()

        client.client.on_publishes = on_publishes
        await _connected(client)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, publisher.publish, topic, b"0", 0)
            await asyncio.wait_for(arrived.wait(), 10)
            lone = client._poll_timer is None
            arrived.clear()
            await loop.run_in_executor(None, publisher.publish, topic, b"1", 0)
            await asyncio.wait_for(arrived.wait(), 10)
            polling = client._poll_timer is not None
            await loop.run_in_executor(None, lambda: [publisher.publish(topic, b"%d" % n, 0) for n in range(2, 10)])
            await asyncio.sleep(3 * POLL_S)  # the burst's poll, then one that finds nothing
            await loop.run_in_executor(None, publisher.publish, topic, b"10", 0)
            while len(payloads) < 11:
                arrived.clear()
                await asyncio.wait_for(arrived.wait(), 10)
        finally:
            await client.close()
        return paths, payloads, (lone, polling)

    paths, payloads, (lone, polling) = run_loop(scenario())  # type: ignore[arg-type]
    assert payloads == [b"%d" % n for n in range(11)]
    assert lone, "a lone message started timed reads"
    assert polling, "a second wake-up within the poll interval did not start timed reads"
    assert paths == ["wake-up"] * 2 + ["timed"] * 8 + ["wake-up"], paths


def test_a_broker_lost_while_the_client_polls_is_noticed(broker_factory, peer_factory,  # type: ignore[no-untyped-def]
                                                         tmp_path: Path) -> None:
    """The socket is not watched between timed reads: the next one must find the connection closed."""
    private = broker_factory()
    publisher: Peer = peer_factory(target=private)
    topic = "autocore/test/poll"

    async def scenario() -> bool:
        lost = threading.Event()
        arrived = asyncio.Event()
        client = _client(private, tmp_path, topic, 0, "poll-test", lambda *message: arrived.set())
        client.on_disconnected = lost.set
        await _connected(client)
        loop = asyncio.get_running_loop()
        try:
            for n in range(2):  # two wake-ups within the poll interval start timed reads
                arrived.clear()
                await loop.run_in_executor(None, publisher.publish, topic, b"%d" % n, 0)
                await asyncio.wait_for(arrived.wait(), 10)
            assert client._poll_timer is not None
            private.stop()
            return await loop.run_in_executor(None, lost.wait, NOTICED_WITHIN_S)
        finally:
            await client.close()

    assert run_loop(scenario())  # type: ignore[arg-type]


def test_an_acknowledgement_ends_the_timed_reads(broker, peer_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Acks open the broker's window for QoS 1: what it sends next is read on arrival, not a poll later."""
    publisher: Peer = peer_factory()
    topic = "autocore/test/poll-acks"

    async def scenario() -> tuple[list[str], list[bytes]]:
        payloads: list[bytes] = []
        paths: list[str] = []
        arrived = asyncio.Event()
        client = _client(broker, tmp_path, topic, 1, "poll-ack-test")
        trace = _tracing(client, paths)

        def on_publishes(batch: list[Any]) -> None:
            trace(batch)
            payloads.extend(batch[1::4])
            # Acknowledged after the read, as the gateway does once the rows are committed.
            asyncio.get_running_loop().call_soon(
                lambda: (client.ack_many([(mid, 1, client.generation) for mid in batch[3::4]]), arrived.set()))

        client.client.on_publishes = on_publishes
        await _connected(client)
        loop = asyncio.get_running_loop()
        try:
            for n in range(3):
                arrived.clear()
                await loop.run_in_executor(None, publisher.publish, topic, b"%d" % n, 1)
                await asyncio.wait_for(arrived.wait(), 10)
                assert client._poll_timer is None, "acknowledged, yet still reading on a timer"
        finally:
            await client.close()
        return paths, payloads

    paths, payloads = run_loop(scenario())  # type: ignore[arg-type]
    assert payloads == [b"0", b"1", b"2"]
    assert paths == ["wake-up"] * 3, paths
