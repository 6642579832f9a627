"""A broker that resets the connection right after sending a frame is noticed at once.

When a peer resets a TCP connection, epoll reports an error on the socket.
uvloop then runs the socket's callbacks once, closes its poll handle and
keeps it under the descriptor, so the socket is watched no more and every
later add_reader/add_writer of it raises. The client reads a frame that came
with the reset, stops at a whole frame, and so never met the end of the
stream in that one call: it kept a dead connection, deaf, until the keepalive
(300 s) ran out. Seen as a gateway that never reconnected after its broker was
killed.

A broker cannot be made to send a frame and reset at a chosen instant, so a
scripted peer plays that part here: it answers CONNECT with a CONNACK, then
sends a PINGRESP and resets, both from the event loop's thread, so both are
on the socket before the loop polls it again.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path

from autocore.cli import run_loop
from autocore.client import MqttClient
from autocore.config import Settings

CONNACK_V5 = b"\x20\x03\x00\x00\x00"  # session not present, success, no properties
PINGRESP = b"\xd0\x00"
#: The reconnect must come well before the keepalive (300 s) would notice the dead connection.
RECONNECT_WITHIN_S = 8.0


def test_a_reset_after_a_frame_is_seen_and_the_client_reconnects(tmp_path: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    settings = Settings.from_env({"MQTT_BROKER": "127.0.0.1", "MQTT_PORT": str(listener.getsockname()[1]),
                                  "DATABASE_PATH": str(tmp_path / "unused.db")}, env_file=None)

    async def scenario() -> int:
        loop = asyncio.get_running_loop()
        client = MqttClient(settings, [], lambda *message: None)
        accepting = asyncio.ensure_future(loop.sock_accept(listener))
        connecting = asyncio.ensure_future(client.connect(10))
        peer, _ = await accepting
        assert (await loop.sock_recv(peer, 4096))[:1] == b"\x10"  # CONNECT
        peer.sendall(CONNACK_V5)
        await connecting
        accepting = asyncio.ensure_future(loop.sock_accept(listener))
        peer.sendall(PINGRESP)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()  # a reset, on the wire right behind the PINGRESP
        try:
            second, _ = await asyncio.wait_for(accepting, RECONNECT_WITHIN_S)
            second.close()
            return client.reconnects
        finally:
            await client.close()

    try:
        assert run_loop(scenario()) >= 0
    finally:
        listener.close()
