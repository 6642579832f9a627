"""Per-message pipeline: topic parser -> rate limit -> validator -> handler, on the loop thread.

Bad input never raises out of here: each reject is counted per device and
reason, logged at most once per device and reason per minute, and reported on
the error topic where the original reported it (throttled, see ``reports``).
Handlers that need the database hand work to the DB thread and return.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import select

from autocore import compression, envelope, topics
from autocore._fast import _names as kinds
from autocore._fast import publish_fields
from autocore.config import Settings
from autocore.envelope import Message, Validator
from autocore.events import write_event
from autocore.metrics import Metrics
from autocore.ratelimit import RateLimiter
from autocore.registry import OFFLINE, ONLINE, Registry
from autocore.reports import ErrorReporter
from autocore.schema import devices, local_now
from autocore.storage import Database, TelemetryItem
from autocore.throttle import Throttle

log = logging.getLogger(__name__)

#: A given (device, reason) is logged at most once per window.
REJECT_LOG_WINDOW_S = 60.0
#: Warning lines about bad input per second over all devices (and burst), so a
#: flood of made-up device uuids cannot flood the log either.
REJECT_LOGS_PER_S = 1.0
REJECT_LOG_BURST = 20
#: Relay commands are published with the original's QoS (firmware subscribes at 1).
RELAY_SET_QOS = 1
#: Handler tasks (a device look-up, a database barrier) in flight at once. QoS 1/2
#: messages hold their acknowledgement until their task ends, so the broker's
#: receive maximum bounds them; QoS 0 ones past this bound are shed and counted
#: (reason ``backlog``): a locked database or a flood of made-up uuids must not
#: turn each message into a task that waits.
MAX_PENDING_TASKS = 512
#: Longest device uuid the ``devices`` table holds (firmware uuids may have 64).
DEVICE_UUID_LENGTH = devices.c.uuid.type.length
#: Kinds whose reject is reported with ERR_002 (a response without id is only counted).
_SILENT_REJECT_KINDS = frozenset({kinds.RESPONSE})

Publish = Callable[[str, bytes, int, bool], Any]
#: ``data_key`` of a relay row -> its channel (the validator builds rows for channels 1-16 only).
_RELAY_CHANNELS = {f"relay_{channel}": channel for channel in range(1, 17)}


class Delivery(NamedTuple):
    """How a message arrived: what the handlers need besides its validated content."""

    topic: str
    payload: bytes
    retained: bool
    qos: int
    mid: int
    dup: bool
    generation: int = 0  # the connection it came on: its acknowledgement is valid only there


def _dedup_key(uuid: str, delivery: Delivery, timestamp: str | None = None) -> str:
    """Idempotency key of a QoS 1/2 message: the same bytes from the same device on the same topic.

    The device's own timestamp (to the second) leads the key: a redelivery
    carries the same one, and keys that grow with time are appended at the
    end of the key index instead of landing on a random page of it, one page
    written per message (measured: 0.6-1.0 KB more written per reading).
    """
    digest = hashlib.blake2b(digest_size=16)
    digest.update(uuid.encode())
    digest.update(b"\0")
    digest.update(delivery.topic.encode())
    digest.update(b"\0")
    digest.update(delivery.payload)
    return f"{timestamp[:19]}|{digest.hexdigest()}" if timestamp else digest.hexdigest()


class Pipeline:
    """Routes each incoming MQTT message to its handler."""

    def __init__(self, settings: Settings, db: Database, registry: Registry, metrics: Metrics,
                 reporter: ErrorReporter, publish: Publish) -> None:
        self.settings = settings
        self.db = db
        self.registry = registry
        self.metrics = metrics
        self.reporter = reporter
        self.publish = publish
        self.gateway_uuid = settings.gateway_uuid
        self.validator = Validator(settings.max_payload_bytes)
        #: Historian compression of telemetry rows; None unless AUTOCORE_COMPRESSION is set.
        self.compressor = compression.from_settings(settings)
        self.limiter = RateLimiter(settings.rate_limit_per_s, settings.rate_burst)
        self._log_throttle = Throttle(REJECT_LOG_WINDOW_S)
        self._log_budget = RateLimiter(REJECT_LOGS_PER_S, REJECT_LOG_BURST)
        self._logs_suppressed = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ack_deferred = False  # the message being handled is acknowledged later
        self.accepting = True
        #: Command outbox to notify of responses and relay states (set by the gateway).
        self.outbox: Any = None
        #: Acknowledges a QoS 1/2 message: ``ack(mid, qos, generation)`` (set by the gateway).
        self.ack: Callable[[int, int, int], None] = lambda mid, qos, generation: None
        #: The current connection's generation (set by the gateway): acknowledgement
        #: tokens carry it, so none is ever sent on a later connection.
        self.generation: Callable[[], int] = lambda: 0
        #: Stops reading from the broker while the database catches up (set by the gateway).
        self.pause_intake: Callable[[], None] | None = None
        self._handlers: dict[str, Callable[[Message, Delivery], bool | None]] = {
            kinds.TELEMETRY: self._on_telemetry,
            kinds.RELAY_TELEMETRY: self._on_relay_state,
            kinds.RELAY_STATE: self._on_relay_state,
            kinds.STATUS: self._on_status,
            kinds.ANNOUNCE: self._on_announce,
            kinds.DISCOVERY: self._on_discovery,
            kinds.RELAY_COMMAND: self._on_relay_command,
            kinds.RESPONSE: self._on_response,
            kinds.MODE: self._on_mode,
        }

    # -- entry point -------------------------------------------------------------

    def handle(self, topic_name: str | bytes, payload: bytes, retained: bool = False,
               qos: int = 0, mid: int = 0, dup: bool = False) -> None:
        """Process one message and acknowledge it (QoS 1/2) unless its rows still await a commit.

        Never raises. Once intake has stopped (shutdown), messages are left
        unacknowledged, so the broker delivers QoS 1/2 ones again next session.
        """
        self.metrics.received += 1
        if not self.accepting:
            return
        self._ack_deferred = False
        generation = self.generation()
        try:
            self._process(topic_name, payload, retained, qos, mid, dup, generation)
        except Exception:  # a bug outside the handlers: counted and logged, never raised into paho
            self._failed("processing", topic_name)
        # Acknowledged here unless a handler handed the acknowledgement on (to a commit
        # or a database barrier); that holds also when the handler raised afterwards,
        # or the message would be acknowledged twice, the second time perhaps
        # acknowledging a newer message that reuses its packet id.
        if qos and not self._ack_deferred:
            self.ack(mid, qos, generation)

    def handle_batch(self, messages: list[Any]) -> None:
        """Handle one socket read's messages, ``[topic, payload, header, packet id] * n``, in order.

        QoS 0 telemetry from a known, online device (nearly all of the traffic)
        takes a short lane: the receive time, the clock and the counters are
        read and written once per batch, and no ``Delivery`` is built. Its
        outcome is ``handle``'s, which takes every other message.
        """
        if not self.accepting or self.compressor is not None:
            for at in range(0, len(messages), 4):
                self._handle_frame(messages, at)
            return
        metrics = self.metrics
        parse_topic = topics.parse_topic
        cached = self.registry.get
        allow = self.limiter.allow
        validate = self.validator.validate
        push = self.db.push_telemetry
        received = local_now()
        now = time.monotonic()
        counted = accepted = stored = rows_stored = 0
        try:
            for at in range(0, len(messages), 4):
                topic_name = messages[at]
                device = None
                if not messages[at + 2] & 0x07 and type(topic_name) is str:  # QoS 0, not retained
                    topic = parse_topic(topic_name)
                    if topic.kind == kinds.TELEMETRY and not topic.reason:
                        device = cached(topic.uuid)
                if device is None or device.status != ONLINE:
                    self._handle_frame(messages, at)
                    continue
                counted += 1
                uuid = topic.uuid
                try:
                    if not allow(uuid):
                        self._limited(uuid, topic_name)
                        continue
                    result = validate(topic, messages[at + 1])
                    if not isinstance(result, Message):
                        self._reject(result.reason, result.uuid, topic_name, result.kind, result.path)
                        continue
                    accepted += 1
                    if not result.version_ok and not self._is_gateway(uuid):
                        self._protocol_mismatch(result, topic_name)
                    if result.skipped:
                        metrics.skipped(uuid, result.skipped)
                    rows = result.rows
                    if rows:
                        if push(TelemetryItem(device.id, uuid, received, rows)):
                            stored += 1
                            rows_stored += len(rows)
                        else:
                            metrics.telemetry_dropped += 1
                    device.last_seen_monotonic = now  # registry.seen() of an online device
                    device.last_seen_dirty = True
                except Exception:
                    self._failed(kinds.TELEMETRY, topic_name)
        finally:
            metrics.received += counted
            metrics.accepted += accepted
            if accepted:
                metrics.received_by_kind[kinds.TELEMETRY] += accepted
            metrics.telemetry_messages += stored
            metrics.telemetry_rows += rows_stored

    def _handle_frame(self, messages: list[Any], at: int) -> None:
        self.handle(*publish_fields(messages, at))

    def _process(self, topic_name: str | bytes, payload: bytes, retained: bool, qos: int, mid: int,
                 dup: bool, generation: int) -> None:
        metrics = self.metrics
        try:
            if isinstance(topic_name, bytes):
                topic_name = topic_name.decode("utf-8")
        except UnicodeDecodeError:
            self._reject("not_utf8_topic", "", repr(topic_name), kinds.INVALID)
            return
        topic = topics.parse_topic(topic_name)
        if topic.reason:
            self._reject(topic.reason, "", topic_name, kinds.INVALID)
            return
        uuid = topic.uuid
        if uuid and not self._admit(uuid, topic_name, qos):
            return
        result = self.validator.validate(topic, payload)
        if not isinstance(result, Message):
            self._reject(result.reason, result.uuid, topic_name, result.kind, result.path)
            return
        if not uuid and result.uuid and not self._admit(result.uuid, topic_name, qos):
            return
        metrics.accepted += 1
        metrics.received_by_kind[result.kind] += 1
        if not result.version_ok and not self._is_gateway(result.uuid):
            self._protocol_mismatch(result, topic_name)
        handler = self._handlers.get(result.kind)
        if handler is None:
            log.debug("topic=%s kind=%s: no action", topic_name, result.kind)
            return
        delivery = Delivery(topic_name, payload, retained, qos, mid, dup, generation)
        try:
            handler(result, delivery)
        except Exception:
            self._failed(result.kind, topic_name)

    def _failed(self, kind: str, topic_name: str) -> None:
        """A handler raised: counted, and logged with its traceback at most once a minute per kind."""
        self.metrics.handler_failures += 1
        if self._may_log("", f"handler_failed:{kind}"):
            log.exception("handler for topic=%s failed%s", topic_name, self._suppressed_note())

    # -- bookkeeping ----------------------------------------------------------------

    def _admit(self, uuid: str, topic_name: str, qos: int) -> bool:
        """Apply the device's token bucket to QoS 0 messages.

        QoS 1/2 messages take tokens too but are never dropped: the broker
        already paces them (receive maximum, acknowledged after commit), and a
        backlog redelivered after an outage must not be thrown away.
        """
        if self.limiter.allow(uuid) or qos:
            return True
        self._limited(uuid, topic_name)
        return False

    def _limited(self, uuid: str, topic_name: str) -> None:
        """A QoS 0 message over its device's rate: counted, reported and dropped."""
        self.metrics.limited(uuid)
        self.reporter.report("ERR_005", "Rate limit exceeded", uuid, topic=topic_name,
                             limit_per_s=self.settings.rate_limit_per_s)
        if self._may_log(uuid, "rate_limited"):
            log.warning("device=%s topic=%s rate limited (%g msg/s)%s", uuid, topic_name,
                        self.settings.rate_limit_per_s, self._suppressed_note())

    def _reject(self, reason: str, uuid: str, topic_name: str, kind: str, path: str = "$") -> None:
        self.metrics.reject(reason, uuid)
        if self._may_log(uuid, reason):
            log.warning("device=%s topic=%s rejected: %s at %s%s", uuid or "-", topic_name, reason, path,
                        self._suppressed_note())
        if kind != kinds.INVALID and kind not in _SILENT_REJECT_KINDS:
            self.reporter.report("ERR_002", f"Invalid payload: {reason}", uuid or None,
                                 topic=topic_name, reason=reason, path=path)

    def _may_log(self, uuid: str, reason: str) -> bool:
        """Once per device and reason per minute, and within the global line budget."""
        if not self._log_throttle.allow((uuid, reason)):
            return False
        if not self._log_budget.allow(""):
            self._logs_suppressed += 1
            return False
        return True

    def _suppressed_note(self) -> str:
        count, self._logs_suppressed = self._logs_suppressed, 0
        return f" ({count} similar lines suppressed)" if count else ""

    def _protocol_mismatch(self, message: Message, topic_name: str) -> None:
        received = message.version if message.version is not None else "unknown"
        self.reporter.report(
            "ERR_008", f"Protocol mismatch: received {received}, expected {envelope.PROTOCOL_VERSION}",
            message.uuid or None, topic=topic_name, received_version=received,
            expected_version=envelope.PROTOCOL_VERSION,
        )

    def _is_gateway(self, uuid: str) -> bool:
        return self.registry.is_gateway(uuid)

    def _defer_ack(self) -> None:
        """The message being handled is acknowledged later, by whoever stores it (see ``handle``)."""
        self._ack_deferred = True

    def _acked_when_stored(self, delivery: Delivery, work: Any = None) -> bool:
        """Acknowledge a QoS 1/2 message only once the database jobs it caused have run.

        A gateway killed in between then gets the message again from its
        session instead of losing an announce, a status change or a command's
        answer. Returns True when the acknowledgement is deferred.
        """
        if not delivery.qos:  # nothing to acknowledge: no barrier to wait for
            if work is not None:
                self._spawn(work)
            return False
        self._defer_ack()

        async def finish() -> None:
            try:
                if work is not None:
                    await work
                await self.db.barrier()
            finally:
                self.ack(delivery.mid, delivery.qos, delivery.generation)

        self._spawn(finish())
        return True

    def _room(self, delivery: Delivery, uuid: str) -> bool:
        """Whether a handler task may start for this message (see MAX_PENDING_TASKS).

        Call it before creating the task's coroutine: a QoS 0 message past the
        bound is counted under ``backlog`` and dropped.
        """
        if delivery.qos or len(self._tasks) < MAX_PENDING_TASKS:
            return True
        self.metrics.reject("backlog", uuid)
        if self._may_log("", "backlog"):
            log.warning("%d handlers wait for the database: QoS 0 messages that need one are dropped%s",
                        len(self._tasks), self._suppressed_note())
        return False

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.metrics.handler_failures += 1
            if self._may_log("", "background_handler_failed"):
                log.error("background handler failed: %r%s", task.exception(), self._suppressed_note())

    async def drain_tasks(self, timeout_s: float) -> None:
        """Wait for handlers still waiting on the database (used at shutdown)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout_s)

    # -- handlers --------------------------------------------------------------------

    def _on_telemetry(self, message: Message, delivery: Delivery) -> bool:
        """Queue the rows; a QoS 1/2 message is acknowledged only after they are committed.

        Rows of a uuid the database was just asked about and does not hold are
        not queued at all: the writer would only look it up again.
        """
        device = self.registry.get(message.uuid)
        rows = message.rows
        deferred = False
        if message.skipped:
            self.metrics.skipped(message.uuid, message.skipped)
        unknown = device is None and self.registry.known_unknown(message.uuid)
        received = local_now()
        if rows and not unknown and self.compressor is not None:
            rows, received = self._compress(device, message.uuid, rows)
        if rows and unknown:
            self.metrics.reject("unknown_device", message.uuid)
        elif rows:
            device_id = device.id if device else None
            if delivery.qos:
                item = TelemetryItem(device_id, message.uuid, received, rows,
                                     (delivery.mid, delivery.qos, delivery.generation),
                                     _dedup_key(message.uuid, delivery, message.timestamp),
                                     delivery.dup)
                stored = self.db.push_reliable(item)
                deferred = True  # acknowledged after commit; never when refused (redelivered next session)
                self._defer_ack()
                if not stored and self._may_log("", "reliable_buffer_full"):
                    log.error("QoS %d telemetry refused by a full buffer: left unacknowledged for the broker "
                              "to deliver again after a reconnect%s", delivery.qos, self._suppressed_note())
                if self.db.reliable_backlog_high() and self.pause_intake is not None:
                    self.pause_intake()
            else:
                item = TelemetryItem(device_id, message.uuid, received, rows)
                stored = self.db.push_telemetry(item)
            if stored:
                self.metrics.telemetry_messages += 1
                self.metrics.telemetry_rows += len(rows)
            else:
                self.metrics.telemetry_dropped += 1
        if device is not None:
            self.registry.seen(device, touch=not delivery.retained)
        elif not unknown and not self.registry.looking_up(message.uuid) and \
                len(self._tasks) < MAX_PENDING_TASKS:  # presence only: never worth a backlog
            self._spawn(self._seen_later(message.uuid, delivery.retained))
        return deferred

    def _compress(self, device: Any, uuid: str, rows: list[Any]) -> tuple[list[Any], datetime]:
        """Rows of this message worth storing (historian compression), and its receive time.

        Rows held from earlier messages that a straight line can no longer skip
        are queued now, with the receive time of the message they came in.
        """
        assert self.compressor is not None
        t = time.time()
        kept, released = compression.filter_rows(self.compressor, uuid, t, rows)
        for held_t, held_rows in released:
            self._store_released(device.id if device else None, uuid, held_t, held_rows)
        return kept, datetime.fromtimestamp(t)

    def _store_released(self, device_id: int | None, uuid: str, t: float, rows: list[Any]) -> None:
        if self.db.push_telemetry(TelemetryItem(device_id, uuid, datetime.fromtimestamp(t), rows)):
            self.metrics.telemetry_rows += len(rows)
        else:
            self.metrics.telemetry_dropped += 1

    def flush_compression(self, now: float | None = None) -> None:
        """Queue what keys silent for a heartbeat hold (``now``: time.time()), or every held row (None)."""
        if self.compressor is None:
            return
        released = self.compressor.flush() if now is None else self.compressor.expire(now)
        for uuid, t, rows in compression.group_released(released):
            device = self.registry.get(uuid)
            self._store_released(device.id if device else None, uuid, t, rows)

    async def _seen_later(self, uuid: str, retained: bool) -> None:
        device = await self.registry.resolve(uuid)
        if device is not None:
            self.registry.seen(device, touch=not retained)

    def _on_relay_state(self, message: Message, delivery: Delivery) -> bool:
        """Store the relay rows; states of a known device confirm its pending relay commands.

        States come from the rows the validator built (channels 1-16, booleans
        only), never from the raw payload, and only a device in the database
        is tracked: made-up uuids and channel maps cannot grow memory.
        """
        deferred = self._on_telemetry(message, delivery)
        if self.outbox is None or delivery.retained or self.registry.get(message.uuid) is None:
            return deferred
        if message.kind == kinds.RELAY_TELEMETRY and (message.data or {}).get("event") != "relay_change":
            return deferred
        states = {_RELAY_CHANNELS[key]: value == "1" for data_type, key, value, _ in message.rows
                  if data_type == "relay" and key in _RELAY_CHANNELS}
        if states:
            self.outbox.on_relay_states(message.uuid, states)
        return deferred

    def _on_status(self, message: Message, delivery: Delivery) -> bool:
        """Presence from a status message; a cached device needs no task (and QoS 0 no barrier)."""
        if self._is_gateway(message.uuid):
            return False
        device = self.registry.get(message.uuid)
        if device is not None:
            self._apply_status(device, message, delivery.retained)
            return self._acked_when_stored(delivery)
        if self.registry.known_unknown(message.uuid):
            self._unknown_status(message.uuid)
            return False
        if not self._room(delivery, message.uuid):
            return False
        return self._acked_when_stored(delivery, self._status(message, delivery.retained))

    async def _status(self, message: Message, retained: bool) -> None:
        device = await self.registry.resolve(message.uuid)
        if device is None and self._is_gateway(message.uuid):  # a peer gateway's status
            return
        if device is None:
            self._unknown_status(message.uuid)
            return
        self._apply_status(device, message, retained)

    def _unknown_status(self, uuid: str) -> None:
        self.metrics.reject("unknown_device", uuid)
        if self._may_log(uuid, "unknown_device"):
            log.warning("device=%s status from a device not in the database; ignored%s", uuid,
                        self._suppressed_note())

    def _apply_status(self, device: Any, message: Message, retained: bool) -> None:
        data = message.data or {}
        if data.get("status") == OFFLINE:
            self.registry.set_status(device, OFFLINE, str(data.get("reason") or "offline"))
        else:
            self.registry.seen(device, touch=not retained)

    def _on_announce(self, message: Message, delivery: Delivery) -> bool:
        if self._is_gateway(message.uuid):
            # This gateway's row (or a peer's) is not a device: an announce must not
            # rewrite its type and firmware, nor put it in the device cache.
            self._refuse("gateway_uuid", message.uuid, delivery.topic, "an announce on a gateway's uuid")
            return False
        if len(message.uuid) > DEVICE_UUID_LENGTH:
            self._refuse("uuid_too_long", message.uuid, delivery.topic,
                         f"devices.uuid holds {DEVICE_UUID_LENGTH} characters")
            return False
        if not self._room(delivery, message.uuid):
            return False
        return self._acked_when_stored(delivery, self.registry.announce(message.uuid, message.data or {}))

    def _refuse(self, reason: str, uuid: str, topic_name: str, what: str) -> None:
        """A valid message that must not take effect: counted per device and reason, logged (throttled)."""
        self.metrics.reject(reason, uuid)
        if self._may_log(uuid, reason):
            log.warning("device=%s topic=%s ignored: %s (%s)%s", uuid or "-", topic_name, what, reason,
                        self._suppressed_note())

    def _on_discovery(self, message: Message, delivery: Delivery) -> None:
        device_uuid = (message.data or {}).get("device_uuid")
        if not isinstance(device_uuid, str) or self.registry.get(device_uuid) is not None:
            return
        if self._may_log(device_uuid, "discovery"):  # bounded: event rows for made-up uuids too
            self.db.post(write_event, "discovery", "gateway", "device_found", message.data)

    def _on_response(self, message: Message, delivery: Delivery) -> bool:
        data = message.data or {}
        if self.outbox is None:
            self.unknown_response(message.uuid, data)
            return False
        self.outbox.on_response(message.uuid, data)  # queues the outcome's database job at once
        return self._acked_when_stored(delivery)

    def unknown_response(self, uuid: str, data: dict[str, Any]) -> None:
        """A response that answers no command: counted and logged (throttled)."""
        self.metrics.reject("unknown_command", uuid)
        if self._may_log(uuid, "unknown_command"):
            log.warning("device=%s response to unknown command %s%s", uuid, data.get("command_id"),
                        self._suppressed_note())

    def _on_mode(self, message: Message, delivery: Delivery) -> None:
        data = message.data or {}
        status = data.get("status", "active")
        if self._may_log(f"mode:{message.sub}", str(status)[:40]):  # not once per message
            log.info("mode=%s status=%s source=%s", message.sub, status, data.get("source", "unknown"))

    # -- relay commands (S8 -> relays/set) ----------------------------------------------

    def _on_relay_command(self, message: Message, delivery: Delivery) -> None:
        if delivery.retained:  # a stale retained command must never switch a relay
            return
        # Acknowledged at once (a redelivery must not toggle a relay twice), so the
        # broker's window does not bound these: past MAX_PENDING_TASKS any QoS is shed.
        if len(self._tasks) >= MAX_PENDING_TASKS:
            self._room(delivery._replace(qos=0), message.uuid)
            return
        self._spawn(self._relay_command(message))

    async def _relay_command(self, message: Message) -> None:
        data = message.data or {}
        targets = await self._relay_targets(message.uuid)
        if not targets:
            self.metrics.reject("unknown_device", message.uuid)
            self.reporter.report("ERR_001", "No relay board for command", message.uuid,
                                 topic=topics.relay_set_topic(message.uuid))
            return
        command = data["command"]
        source = data.get("source") if isinstance(data.get("source"), str) else "gateway"
        channel = data["channel"]
        for target in targets:
            payload = envelope.build(
                self.gateway_uuid, channel=channel, command=command, state=command != "off",
                function_type="toggle" if command == "toggle" else "normal",
                user=data.get("user") if isinstance(data.get("user"), str) else source,
                source=source,
            )
            if isinstance(data.get("momentary"), bool):
                payload["momentary"] = data["momentary"]
            self.publish(topics.relay_set_topic(target), envelope.dumps(payload), RELAY_SET_QOS, False)
            self.db.post(write_event, "relay_command", "gateway", "send", payload, target)

    async def _relay_targets(self, uuid: str) -> list[str]:
        """Topic device id first (D9); ``all`` means every relay board; else the first board."""
        if uuid != "all":
            device = await self.registry.resolve(uuid)
            if device is not None:
                return [uuid]
        boards = await self.db.call(_relay_boards)
        return boards if uuid == "all" else boards[:1]


def _relay_boards(conn: Any) -> list[str]:
    query = (select(devices.c.uuid)
             .where(devices.c.type == "esp32_relay", devices.c.is_active.is_not(False))
             .order_by(devices.c.name))
    return [row.uuid for row in conn.execute(query)]
