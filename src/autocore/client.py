"""paho-mqtt driven from the asyncio event loop; transport only, no business logic.

paho's socket callbacks hand the socket to the loop (``add_reader`` /
``add_writer``) and a small task drives ``loop_misc``, so incoming messages are
delivered on the loop thread with no second network thread and no hop. The
blocking ``connect`` runs in an executor. Reconnects use capped exponential
backoff with jitter, and every (re)connect resubscribes and runs ``on_connected``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from autocore._fast import decode_frames, publish_fields
from autocore._fast._frames_py import PAHO
from autocore.config import Settings
from autocore.errors import BrokerError

log = logging.getLogger(__name__)

#: Period of paho's housekeeping (keepalive pings, retries).
MISC_INTERVAL_S = 1.0
#: Reconnect backoff: first wait, cap, and jitter fraction.
RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 30.0
RECONNECT_JITTER = 0.25
#: Longest wait for a CONNACK after the TCP (and TLS) connection is up.
CONNACK_WAIT_S = 5.0
#: Messages paho may hold while the broker is away.
MAX_QUEUED_MESSAGES = 10_000
#: MQTT 5 DISCONNECT reason: another client connected with our client id.
SESSION_TAKEN_OVER = 0x8E
#: Connections dropped within SHORT_SESSION_S of being made, TAKEOVER_HINT_AFTER
#: times in a row (and every TAKEOVER_HINT_EVERY after), look like a client id clash
#: (brokers do not always say "session taken over").
SHORT_SESSION_S = 5.0
TAKEOVER_HINT_AFTER = 3
TAKEOVER_HINT_EVERY = 20

#: Bytes taken from the socket per recv(): one system call serves many packets.
RECV_CHUNK_BYTES = 64 * 1024
#: Socket reads one wake-up may decode before the loop serves its other callbacks.
READS_PER_WAKEUP = 4
#: Room for the packet header, the topic and properties above the payload limit in
#: the Maximum Packet Size announced at CONNECT (topics are at most 256 bytes here).
PACKET_HEADROOM_BYTES = 4096

#: Receives each message: (topic, payload, retained, qos, mid, dup). The topic is
#: the raw bytes when it is not valid UTF-8.
PublishHandler = Callable[[str | bytes, bytes, bool, int, int, bool], None]
#: Receives a batch from ``decode_frames``: topic, payload, header byte, packet id per message.
BatchHandler = Callable[[list[Any]], None]

_PUBLISH = 0x30
_PUBACK = 0x40
_PUBACK_HEADER = bytes((_PUBACK, 2))
_MS_WAIT_FOR_PUBACK = mqtt.MessageState.MQTT_MS_WAIT_FOR_PUBACK
_MS_WAIT_FOR_PUBREC = mqtt.MessageState.MQTT_MS_WAIT_FOR_PUBREC
_MS_WAIT_FOR_PUBCOMP = mqtt.MessageState.MQTT_MS_WAIT_FOR_PUBCOMP
_MS_RESEND_PUBREL = mqtt.MessageState.MQTT_MS_RESEND_PUBREL

#: paho-mqtt releases this module was tested with (pyproject.toml pins the same
#: range): it reads and writes paho internals that other releases lay out
#: differently (``_last_bytes_received`` appeared in 2.2).
PAHO_TESTED = ((2, 2), (2, 3))
#: paho internals the receive buffer, the frame decoder, ``ack_many`` and ``withdraw`` use.
PAHO_INTERNALS = ("_in_packet", "_msgtime_mutex", "_last_bytes_received", "_protocol", "_sock",
                  "_out_messages", "_out_message_mutex", "_inflight_messages", "_out_packet", "_packet_queue")


def paho_version() -> tuple[int, ...]:
    """The installed paho-mqtt version as numbers (``2.2.0`` -> ``(2, 2, 0)``)."""
    parts = []
    for part in paho.mqtt.__version__.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def paho_untested() -> str | None:
    """Why the installed paho-mqtt is not one this module was tested with, or None."""
    version = paho_version()
    low, high = PAHO_TESTED
    if not low <= version[:2] < high:
        return (f"paho-mqtt {paho.mqtt.__version__} is installed; autocore is tested with "
                f"{low[0]}.{low[1]}.x (pyproject.toml pins paho-mqtt>={low[0]}.{low[1]},<{high[0]}.{high[1]})")
    return None


def _no_delay(sock: Any) -> None:
    """Send small packets (acks, commands, status) at once instead of after Nagle's wait.

    paho leaves Nagle's algorithm on; a PUBACK or a relay command could then
    wait for the broker's delayed ACK, up to 40 ms on Linux.
    """
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):  # not a TCP socket (e.g. a Unix socket)
        pass


class _BufferedClient(mqtt.Client):
    """paho with a receive buffer and a batch decoder for PUBLISH frames.

    paho asks the socket for each packet's header byte, length bytes and body
    separately (three or more recv() calls per message) and then spends most
    of its time on what a telemetry message does not need. Here the socket is
    read 64 KiB at a time and ``decode_frames`` (compiled, with a pure twin)
    turns every whole QoS 0/1 PUBLISH of the buffer into a batch for
    ``on_publishes``, in one call. It stops at any other frame, which paho
    reads from the buffer and handles as always (CONNACK, SUBACK, PUBACK,
    PINGRESP, QoS 2 and its handshake, anything malformed), so paho still owns
    every protocol state and error. A frame cut by the end of a read stays in
    the buffer and is completed by the next one.
    """

    _rx = b""
    _rx_pos = 0
    #: True while the buffer holds only the start of a frame: the socket must be read first.
    _rx_need_more = False
    #: The last TLS error met while reading (a rejected client certificate shows only here).
    last_tls_error: str | None = None
    #: PUBLISH frames decoded so far (the poller asks whether a read found any).
    publishes_read = 0
    #: True when the last read stopped at READS_PER_WAKEUP with the socket still holding bytes.
    socket_backlog = False
    #: Receives each batch of PUBLISH messages ``decode_frames`` decoded (set by MqttClient);
    #: None leaves every packet to paho.
    on_publishes: Callable[[list[Any]], None] | None = None
    #: Frames longer than this are left to paho rather than buffered here (set by MqttClient).
    max_frame_bytes = 1 << 28
    #: The build of the frame decoder in use (tests swap in the other one).
    decode_frames = staticmethod(decode_frames)

    def _fill(self) -> bytes:
        """Append the next chunk from the socket to what is left of the buffer; b"" when the broker closed it."""
        try:
            data = super()._sock_recv(RECV_CHUNK_BYTES)  # BlockingIOError when nothing is there
        except ssl.SSLError as exc:
            self.last_tls_error = str(exc)
            raise
        if data:
            tail = self._rx[self._rx_pos:] if self._rx_pos < len(self._rx) else b""
            self._rx, self._rx_pos = (tail + data if tail else data), 0
            self._rx_need_more = False
        return data

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._rx_pos >= len(self._rx) and not self._fill():
            return b""  # the broker closed the connection
        chunk = self._rx[self._rx_pos:self._rx_pos + bufsize]
        self._rx_pos += len(chunk)
        return chunk

    def _packet_read(self) -> mqtt.MQTTErrorCode:
        if self.on_publishes is None or self._in_packet["command"] != 0:
            return super()._packet_read()  # paho's path, or paho is inside a packet it started
        mqtt5 = self._protocol == mqtt.MQTTv5
        fills = 0
        while True:
            messages, self._rx_pos, status = self.decode_frames(self._rx, self._rx_pos, mqtt5,
                                                                self.max_frame_bytes)
            if messages:
                self.publishes_read += len(messages) // 4  # four fields a message
                with self._msgtime_mutex:
                    self._last_bytes_received = mqtt.time_func()  # paho's keepalive clock
                self.on_publishes(messages)
            if status == PAHO:
                return super()._packet_read()  # a whole frame: paho reads it from the buffer
            self._rx_need_more = True
            if fills == READS_PER_WAKEUP:
                self.socket_backlog = True
                return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS  # the socket stays readable: the loop comes back
            fills += 1
            try:
                if not self._fill():
                    return super()._packet_read()  # closed: paho reports it
            except BlockingIOError:
                self.socket_backlog = False
                return mqtt.MQTTErrorCode.MQTT_ERR_AGAIN
            except OSError:
                return super()._packet_read()  # paho's read meets the same error and reports it

    def has_buffered(self) -> bool:
        """True while bytes already read from the socket wait to be parsed (here or in TLS).

        A frame cut short does not count once the socket had nothing more for
        it: it waits for the socket to become readable again.
        """
        if self._rx_pos < len(self._rx) and not self._rx_need_more:
            return True
        pending = getattr(self._sock, "pending", None)
        return bool(pending and pending())

    def _sock_close(self) -> None:
        self._rx, self._rx_pos, self._rx_need_more = b"", 0, False  # never parse a dead connection's bytes
        super()._sock_close()


class MqttClient:
    """One paho client bound to the running event loop.

    ``subscriptions`` are (filter, qos) pairs subscribed on every connect.
    ``on_message`` runs on the loop thread for each message; it must not block.
    QoS 0/1 messages are decoded by ``_BufferedClient`` in batches, which go to
    ``on_publishes`` when given (else to ``on_message`` one by one); paho decodes
    the rest (QoS 2) and hands them to ``on_message``.
    ``on_connected`` runs after every successful (re)connect.
    """

    def __init__(
        self,
        settings: Settings,
        subscriptions: Sequence[tuple[str, int]],
        on_message: PublishHandler,
        client_id: str | None = None,
        on_publishes: BatchHandler | None = None,
    ) -> None:
        self.settings = settings
        self.subscriptions = list(subscriptions)
        self.on_message = on_message
        self.on_connected: Callable[[], None] | None = None
        #: Runs when an established connection is lost (not at close()).
        self.on_disconnected: Callable[[], None] | None = None
        self.connected = asyncio.Event()
        self.subscribed = asyncio.Event()
        self.reconnects = 0
        self.disconnected_seconds = 0.0
        self._disconnected_since: float | None = time.monotonic()
        self._loop = asyncio.get_running_loop()
        self._misc_task: asyncio.Task[None] | None = None
        self._reconnect_task: asyncio.Task[None] | None = None
        self._closing = False
        self._ever_connected = False
        self._pending_subscribe_mids: set[int] = set()
        self._last_refusal: str | None = None
        self._attempt_over = asyncio.Event()  # the current first-connection attempt was refused or closed
        #: True while the gateway stopped reading to let the database catch up (back-pressure).
        self.reading_paused = False
        self.read_pauses = 0
        #: Seconds between timed reads while messages keep coming (0: read at every arrival).
        self.poll_interval_s = settings.read_interval_s
        self._poll_timer: asyncio.TimerHandle | None = None  # set while the socket is read on a timer
        self._last_arrival = float("-inf")  # loop time of the last wake-up that read a message
        self.client_id = client_id or settings.gateway_uuid
        self._connected_at = 0.0
        self._short_sessions = 0  # connections in a row dropped soon after being made
        #: Counts successful connections. Packet ids belong to one connection: after a
        #: broker restart without persistence the same ids name other messages, so an
        #: acknowledgement carries the generation it was received in (see ``ack``).
        self.generation = 0
        #: Acknowledgements dropped because their message came on an earlier connection.
        self.stale_acks = 0

        # A stable client id and a session that outlives the connection let the
        # broker keep QoS 1 messages for us while we are away; manual acks let
        # the gateway acknowledge telemetry only once its rows are committed.
        self.client = _BufferedClient(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        self.client.enable_logger(logging.getLogger(f"{__name__}.paho"))
        self.client.max_queued_messages_set(MAX_QUEUED_MESSAGES)
        if settings.credentials is not None:
            self.client.username_pw_set(*settings.credentials)
        if settings.tls_enabled:
            self.client.tls_set(
                ca_certs=settings.tls_ca_file,
                certfile=settings.tls_cert_file,
                keyfile=settings.tls_key_file,
                cert_reqs=ssl.CERT_REQUIRED,
            )
            self.client.tls_insecure_set(settings.tls_insecure)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        # The frame decoder, ack_many() and withdraw() use paho internals; on a paho
        # release that lacks one, paho's own code does everything (slower, correct).
        self._paho_missing = [name for name in PAHO_INTERNALS if not hasattr(self.client, name)]
        untested = paho_untested()
        if untested or self._paho_missing:
            log.warning("%s%s", untested or f"paho-mqtt {paho.mqtt.__version__}",
                        f"; lacks {', '.join(self._paho_missing)}: using paho's own receive path"
                        if self._paho_missing else "")
        self.client.on_publishes = None if self._paho_missing else (on_publishes or self._each_publish)
        self.client.max_frame_bytes = self.max_packet_bytes
        self.client.on_subscribe = self._on_subscribe
        self.client.on_socket_open = self._on_socket_open
        self.client.on_socket_close = self._on_socket_close
        self.client.on_socket_register_write = self._on_socket_register_write
        self.client.on_socket_unregister_write = self._on_socket_unregister_write

    # -- public API ----------------------------------------------------------

    def will_set(self, topic: str, payload: bytes, qos: int = 1, retain: bool = True) -> None:
        """Register the last will; must be called before :meth:`connect`."""
        self.client.will_set(topic, payload, qos=qos, retain=retain)

    async def connect(self, timeout_s: float) -> None:
        """Connect, retrying with backoff; raise BrokerError once ``timeout_s`` passes (0: never).

        A refused CONNACK (bad credentials) and an untrusted certificate are
        retried like an absent broker, with the cause in one warning line per
        few attempts, so a misconfigured gateway neither crashes nor floods the log.
        """
        self._misc_task = self._loop.create_task(self._misc_loop(), name="autocore-mqtt-misc")
        deadline = time.monotonic() + timeout_s if timeout_s > 0 else None
        delay = RECONNECT_MIN_S
        attempt = 0
        known: str | None = None  # the last definite reason an attempt failed
        while True:
            attempt += 1
            try:
                self._attempt_over.clear()
                self._last_refusal = None
                await self._loop.run_in_executor(None, self._connect_blocking)
                wait_s = CONNACK_WAIT_S if deadline is None else max(0.0, deadline - time.monotonic())
                if await self._attempt_ended(min(wait_s, CONNACK_WAIT_S)):
                    return
                # An attempt cut short by the deadline keeps the cause seen before it.
                known = self._last_refusal or known
                cause = known or "no CONNACK"
            except (OSError, ssl.SSLError) as exc:
                cause = known = str(exc) or type(exc).__name__
            if deadline is not None and time.monotonic() >= deadline:
                raise BrokerError(f"cannot connect to broker {self._where()} within {timeout_s:g} s: {cause}")
            if attempt == 1 or attempt % 10 == 0:
                log.warning("cannot connect to broker %s (attempt %d): %s; retrying", self._where(),
                            attempt, cause)
            wait = delay * (1 + random.uniform(-RECONNECT_JITTER, RECONNECT_JITTER))
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - time.monotonic()))
            await asyncio.sleep(wait)
            delay = min(delay * 2, RECONNECT_MAX_S)

    async def _attempt_ended(self, timeout_s: float) -> bool:
        """Wait for this connection attempt's end: True once connected, False when refused or closed."""
        connected = asyncio.ensure_future(self.connected.wait())
        over = asyncio.ensure_future(self._attempt_over.wait())
        try:
            await asyncio.wait((connected, over), timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            connected.cancel()
            over.cancel()
        return self.connected.is_set()

    def pause_reading(self) -> None:
        """Stop taking messages from the socket: the database is behind.

        Back-pressure instead of a bigger buffer: what the broker sends next
        waits in the kernel's socket buffer and then in our session at the
        broker, which also covers brokers that do not keep to the receive
        maximum (Mosquitto 2.0 sends a resumed session's backlog in bursts).
        """
        if self.reading_paused:
            return
        self.reading_paused = True
        self.read_pauses += 1
        self._stop_polling()
        sock = self.client.socket()
        if sock is not None:
            self._forget_reads(sock)

    def resume_reading(self) -> None:
        """Take messages again; bytes already buffered are parsed at once."""
        if not self.reading_paused:
            return
        self.reading_paused = False
        sock = self.client.socket()
        if sock is not None:
            self._watch(sock, self._loop.add_reader, self._read)
            self._loop.call_soon(self._read)  # buffered bytes never make the socket readable again

    def _forget_reads(self, sock: Any) -> None:
        try:
            self._loop.remove_reader(sock)
        except (ValueError, OSError):  # socket already closed
            pass

    def publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False,
                expiry_s: float | None = None) -> mqtt.MQTTMessageInfo:
        """Queue a publish; paho sends it as soon as the socket is writable.

        With ``expiry_s`` the broker discards the message if it cannot deliver it
        within that many seconds (MQTT 5 Message Expiry Interval): a command
        must not reach a device that comes back after it timed out.
        """
        properties = None
        if expiry_s is not None:
            properties = Properties(PacketTypes.PUBLISH)
            properties.MessageExpiryInterval = max(1, math.ceil(expiry_s))
        return self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)

    def withdraw(self, info: mqtt.MQTTMessageInfo) -> bool:
        """Make sure paho never sends, nor resends after a reconnect, a publish the broker has not taken.

        paho keeps QoS 1/2 publishes until the broker acknowledges them and
        sends them again on every reconnect, however late. Returns True when the
        message was withdrawn; False when the broker already has it (PUBACK,
        PUBREC), when it is gone from paho, or when this paho lacks the internals.
        A packet already being written is left alone (it is on the wire).
        """
        if self._paho_missing:
            return False
        paho = self.client
        with paho._out_message_mutex:
            message = paho._out_messages.get(info.mid)
            if message is None or message.info is not info:
                return False
            if message.state in (_MS_WAIT_FOR_PUBCOMP, _MS_RESEND_PUBREL):
                return False  # the broker took it (PUBREC): only its expiry can stop it now
            if message.state in (_MS_WAIT_FOR_PUBACK, _MS_WAIT_FOR_PUBREC):
                paho._inflight_messages = max(0, paho._inflight_messages - 1)
            del paho._out_messages[info.mid]
        queued = paho._out_packet
        for packet in [p for p in queued if p["mid"] == info.mid and p["command"] & 0xF0 == _PUBLISH
                       and p["pos"] == 0]:
            queued.remove(packet)
        return True

    def ack(self, mid: int, qos: int, generation: int | None = None) -> None:
        """Acknowledge a QoS 1/2 message; until then the broker will redeliver it.

        ``generation`` is the connection the message came on. An acknowledgement
        for an earlier connection is dropped: its packet id may now name another
        message, not stored yet. The broker redelivers the old message in a
        resumed session (stored once, thanks to its idempotency key), and a
        broker that lost the session has nothing to acknowledge.
        """
        if not qos:
            return
        if generation is not None and generation != self.generation:
            self.stale_acks += 1
            if self.stale_acks == 1 or self.stale_acks % 1000 == 0:
                log.info("dropped %d acknowledgement(s) of messages from an earlier connection (packet ids "
                         "are reused)", self.stale_acks)
            return
        if self.client.is_connected():
            self.client.ack(mid, qos)
            self._wake_on_arrival()

    def ack_many(self, tokens: Sequence[tuple[int, int, int]]) -> None:
        """Acknowledge committed messages, ``(mid, qos, generation)`` each, in one write.

        paho queues a packet, and the loop makes a system call, per PUBACK; a
        commit of a few hundred QoS 1 messages sends them as one buffer
        instead. QoS 2 completions, and every ack on a paho without the
        internals this needs, go through :meth:`ack` one by one.
        """
        pubacks = bytearray()
        for mid, qos, generation in tokens:
            if qos == 1 and generation == self.generation and not self._paho_missing:
                pubacks += _PUBACK_HEADER + mid.to_bytes(2, "big")
            else:
                self.ack(mid, qos, generation)
        if pubacks and self.client.is_connected():
            self.client._packet_queue(_PUBACK, bytes(pubacks), 0, 0)
        self._wake_on_arrival()

    def _wake_on_arrival(self) -> None:
        """Leave timed reads: acknowledgements open the broker's window, and what it sends next is read at once.

        The broker holds QoS 1/2 messages past the receive maximum until some
        are acknowledged; a timed read would leave those waiting up to a poll
        interval per window.
        """
        if self._poll_timer is not None:
            self._stop_polling()
            sock = self.client.socket()
            if sock is not None:
                self._watch_reads(sock)

    async def wait_published(self, info: mqtt.MQTTMessageInfo, timeout_s: float) -> bool:
        """Wait (without blocking the loop) until ``info`` is acknowledged."""
        deadline = time.monotonic() + timeout_s
        while not info.is_published():
            if time.monotonic() >= deadline or info.rc != mqtt.MQTT_ERR_SUCCESS:
                return False
            await asyncio.sleep(0.01)
        return True

    async def close(self) -> None:
        """Disconnect cleanly and stop every task and socket watcher."""
        self._closing = True
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
        if self.client.is_connected():
            self.client.disconnect()
            await asyncio.sleep(0)  # let the DISCONNECT packet leave
        if self._misc_task is not None:
            self._misc_task.cancel()
            try:
                await self._misc_task
            except asyncio.CancelledError:
                pass
        sock = self.client.socket()
        if sock is not None:
            self._forget_socket(sock)

    @property
    def is_connected(self) -> bool:
        return self.client.is_connected()

    @property
    def max_packet_bytes(self) -> int:
        """The largest packet the broker may send us: the payload limit plus header room."""
        return self.settings.max_payload_bytes + PACKET_HEADROOM_BYTES

    def disconnected_for(self) -> float:
        """Seconds disconnected in total, including the current outage."""
        current = 0.0 if self._disconnected_since is None else time.monotonic() - self._disconnected_since
        return self.disconnected_seconds + current

    # -- blocking helpers (executor only) -------------------------------------

    def _connect_properties(self) -> Properties:
        props = Properties(PacketTypes.CONNECT)
        props.ReceiveMaximum = self.settings.max_concurrent_messages
        # The broker must not send bigger packets: it drops them instead (MQTT 5
        # Maximum Packet Size), so an oversized publish never reaches our buffers
        # (a packet may otherwise be up to 256 MB, all read before the payload check).
        props.MaximumPacketSize = self.max_packet_bytes
        if self.settings.session_expiry_s:
            props.SessionExpiryInterval = self.settings.session_expiry_s
        return props

    def _connect_blocking(self) -> None:
        self.client.connect(
            self.settings.mqtt_broker,
            self.settings.mqtt_port,
            keepalive=self.settings.mqtt_keepalive_s,
            clean_start=self.settings.session_expiry_s == 0,
            properties=self._connect_properties(),
        )

    def _reconnect_blocking(self) -> None:
        self.client.reconnect()

    def _where(self) -> str:
        return f"{self.settings.mqtt_broker}:{self.settings.mqtt_port}"

    # -- socket callbacks: hand the socket to the loop (may run on the executor) --

    def _threadsafe(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)

    def _on_socket_open(self, client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        _no_delay(sock)
        self._threadsafe(self._watch_reads, sock)

    def _on_socket_close(self, client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        self._threadsafe(self._forget_socket, sock)

    def _on_socket_register_write(self, client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        self._threadsafe(self._watch, sock, self._loop.add_writer, self._write)

    def _on_socket_unregister_write(self, client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        self._threadsafe(self._loop.remove_writer, sock)

    def _watch(self, sock: Any, add: Callable[..., None], callback: Callable[[], None]) -> None:
        """Register a socket callback on the loop, unless the socket closed meanwhile.

        Registration may be scheduled from the connecting executor thread; a
        refused connection can close the socket before the loop gets to it.
        """
        if sock.fileno() == -1 or sock is not self.client.socket():
            return
        try:
            add(sock, callback)
        except RuntimeError:
            self._rewatch(sock, add == self._loop.add_writer)  # bound methods: equal, never identical

    def _rewatch(self, sock: Any, writing: bool) -> None:
        """Register the socket anew after the loop dropped it.

        When epoll reports an error on a socket (the broker reset the
        connection with bytes still unread), uvloop runs the callbacks once,
        closes its poll handle and keeps it under the descriptor: from then on
        the socket is not watched, and every add_reader/add_writer of that
        descriptor raises. Removing both frees the descriptor; watched again,
        the socket is read to its end, and paho sees the connection lost.
        """
        self._forget_socket(sock)
        if not self.reading_paused:
            self._loop.add_reader(sock, self._read)
        if writing or self.client.want_write():
            self._loop.add_writer(sock, self._write)

    def _watch_reads(self, sock: Any) -> None:
        if not self.reading_paused:  # else resume_reading() registers it
            self._watch(sock, self._loop.add_reader, self._read)

    def _forget_socket(self, sock: Any) -> None:
        self._stop_polling()
        try:
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
        except (ValueError, OSError):  # socket already closed
            pass

    def _read(self) -> None:
        """The socket became readable: read it, and poll it if messages keep coming.

        Two wake-ups for messages within one poll interval start timed reads; a
        lone burst (devices reporting on the same second) does not, since its
        timed read would find nothing. Only PUBLISH frames count: a CONNACK,
        SUBACK or PUBACK is an answer the gateway waits for, read as it arrives.
        """
        if self.reading_paused:
            return
        if self._read_buffered() and self.poll_interval_s > 0:
            now = self._loop.time()
            if now - self._last_arrival < self.poll_interval_s:
                self._start_polling()  # a second wake-up this soon: messages keep coming
            self._last_arrival = now

    def _read_buffered(self) -> bool:
        """Read the socket and everything already buffered; True when that held a PUBLISH."""
        # The socket only signals readable for bytes still in the kernel: parse
        # everything already buffered before going back to the loop.
        client = self.client
        before = client.publishes_read
        client.loop_read()
        while client.has_buffered() and client.socket() is not None and not self.reading_paused:
            client.loop_read()
        return client.publishes_read != before

    def _start_polling(self) -> None:
        """Stop waking at every arrival: read the socket every ``poll_interval_s`` instead.

        Under load a wake-up per TCP segment costs more than the messages it
        reads (uvloop callback, recv, the batch's fixed costs). A timer read
        takes everything that arrived meanwhile in one go; like a network
        driver's polling mode, it ends at the first read that finds no message.
        A read that left bytes in the socket keeps the descriptor watched.
        """
        sock = self.client.socket()
        if sock is None or self.client.socket_backlog or self._poll_timer is not None:
            return
        self._forget_reads(sock)
        self._poll_timer = self._loop.call_later(self.poll_interval_s, self._poll, sock)

    def _poll(self, sock: Any) -> None:
        self._poll_timer = None
        if self.reading_paused or sock is not self.client.socket():
            return  # resume_reading() or the next connection watches its socket
        if self._read_buffered() and self.client.socket() is sock and not self.reading_paused \
                and not self.client.socket_backlog:
            self._poll_timer = self._loop.call_later(self.poll_interval_s, self._poll, sock)
        else:
            self._watch_reads(sock)  # quiet, or more waiting than one read takes: wake on arrival

    def _stop_polling(self) -> None:
        if self._poll_timer is not None:
            self._poll_timer.cancel()
            self._poll_timer = None

    def _write(self) -> None:
        self.client.loop_write()

    async def _misc_loop(self) -> None:
        while True:
            await asyncio.sleep(MISC_INTERVAL_S)
            self.client.loop_misc()
            sock = self.client.socket()
            if sock is not None and not self.reading_paused and self._poll_timer is None:
                # A socket the loop stopped watching after an error (see _rewatch) is
                # watched again here, so the connection loss shows within a second.
                self._watch(sock, self._loop.add_reader, self._read)

    # -- protocol callbacks (loop thread) ----------------------------------------

    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any, reason_code: Any,
                    _properties: Any) -> None:
        if reason_code.is_failure:
            self._last_refusal = str(reason_code)
            log.error("broker %s refused the connection: %s", self._where(), reason_code)
            return
        if self._disconnected_since is not None:
            self.disconnected_seconds += time.monotonic() - self._disconnected_since
            self._disconnected_since = None
        if self._ever_connected:
            self.reconnects += 1
            log.info("reconnected to broker %s", self._where())
        else:
            log.info("connected to broker %s", self._where())
        self._ever_connected = True
        self.generation += 1
        self._connected_at = time.monotonic()
        self._last_refusal = None
        self.subscribed.clear()
        if self.subscriptions:
            result, mid = client.subscribe(self.subscriptions)
            if result == mqtt.MQTT_ERR_SUCCESS and mid is not None:
                self._pending_subscribe_mids = {mid}
        else:
            self.subscribed.set()
        self.connected.set()
        if self.on_connected is not None:
            self.on_connected()

    def _on_subscribe(self, _client: mqtt.Client, _userdata: Any, mid: int, reason_codes: Any,
                      _properties: Any) -> None:
        refused = [str(rc) for rc in reason_codes if rc.is_failure]
        if refused:
            log.error("broker refused subscriptions: %s", ", ".join(refused))
        self._pending_subscribe_mids.discard(mid)
        if not self._pending_subscribe_mids:
            self.subscribed.set()

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason_code: Any,
                       _properties: Any) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        self.subscribed.clear()
        # A new connection must be read at least up to its CONNACK; the broker
        # redelivers what was unacknowledged, and a still-full buffer pauses again.
        self.reading_paused = False
        if self._disconnected_since is None:
            self._disconnected_since = time.monotonic()
        if self._closing:
            return
        if not self._ever_connected:  # connect() retries the first connection; tell it why this one ended
            tls_error, self.client.last_tls_error = self.client.last_tls_error, None
            self._last_refusal = self._last_refusal or (
                f"connection closed before CONNACK: {tls_error}" if tls_error else
                f"connection closed before CONNACK ({reason_code})")
            self._attempt_over.set()
            return
        if was_connected:
            log.warning("lost broker %s: %s", self._where(), reason_code)
            if self.on_disconnected is not None:
                self._threadsafe(self.on_disconnected)
            self._short_sessions = self._short_sessions + 1 if (
                time.monotonic() - self._connected_at < SHORT_SESSION_S) else 0
            if getattr(reason_code, "value", None) == SESSION_TAKEN_OVER or \
                    self._short_sessions % TAKEOVER_HINT_EVERY == TAKEOVER_HINT_AFTER:
                log.error("the broker keeps dropping this gateway right after it connects: another client "
                          "(a second gateway?) may use MQTT_CLIENT_ID=%s; every gateway needs its own "
                          "client id", self.client_id)
        self._schedule_reconnect()

    def _each_publish(self, messages: list[Any]) -> None:
        """Hand a decoded batch to ``on_message``, one message at a time."""
        on_message = self.on_message
        for at in range(0, len(messages), 4):
            on_message(*publish_fields(messages, at))

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            topic: str | bytes = message.topic
        except UnicodeDecodeError:  # the pipeline rejects it, naming it
            topic = bytes(message._topic)
        self.on_message(topic, message.payload, bool(message.retain), message.qos, message.mid,
                        bool(message.dup))

    # -- reconnect --------------------------------------------------------------

    def _schedule_reconnect(self) -> None:
        def start() -> None:
            if self._closing or (self._reconnect_task is not None and not self._reconnect_task.done()):
                return
            self._reconnect_task = self._loop.create_task(self._reconnect_loop(),
                                                          name="autocore-mqtt-reconnect")

        self._threadsafe(start)

    async def _reconnect_loop(self) -> None:
        delay = RECONNECT_MIN_S
        attempt = 0
        while not self._closing and not self.client.is_connected():
            attempt += 1
            wait = delay * (1 + random.uniform(-RECONNECT_JITTER, RECONNECT_JITTER))
            await asyncio.sleep(wait)
            try:
                await self._loop.run_in_executor(None, self._reconnect_blocking)
            except (OSError, ssl.SSLError) as exc:
                if attempt == 1 or attempt % 10 == 0:  # do not flood the log
                    log.warning("reconnect to %s failed (attempt %d): %s", self._where(), attempt, exc)
            else:
                # AUTOCORE_CONNECT_TIMEOUT=0 means "keep trying the first connection",
                # not "no time for a CONNACK": wait_for(..., 0) gave up at once, and the
                # next attempt tore down a connection the broker was about to accept.
                wait_s = self.settings.connect_timeout_s or CONNACK_WAIT_S
                try:
                    await asyncio.wait_for(self.connected.wait(), wait_s)
                    return
                except asyncio.TimeoutError:
                    pass
            delay = min(delay * 2, RECONNECT_MAX_S)
