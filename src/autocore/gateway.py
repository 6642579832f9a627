"""The gateway process: wires settings, database thread, registry, pipeline and MQTT client.

Start-up order: database (schema check, gateway row, device cache) -> MQTT
connect -> intake. Shutdown order: stop intake -> flush telemetry -> publish
``offline`` and wait for its acknowledgement -> disconnect cleanly.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any

import paho.mqtt.client as mqtt
from sqlalchemy.exc import SQLAlchemyError

from autocore import __version__, envelope, status, topics
from autocore.client import MqttClient
from autocore.config import Settings
from autocore.envelope import utc_timestamp
from autocore.errors import BrokerError, StorageError
from autocore.events import write_event
from autocore.exporter import Exporter, start_exporter
from autocore.metrics import Metrics
from autocore.outbox import Outbox
from autocore.pipeline import Pipeline
from autocore.registry import Registry, mark_gateway_offline, register_gateway
from autocore.reports import ErrorReporter
from autocore.ringbuffer import Ring
from autocore.schema import COMMANDS_CHANNEL, ensure_schema
from autocore.storage import (RELIABLE_CAPACITY, Database, TelemetryBuffer, is_io_error, open_engine, rows_for,
                              short_error)
from autocore.storage.retention import Retention, RetentionSettings

log = logging.getLogger(__name__)

#: Period of the housekeeping tick (last_seen flush, heartbeat due check).
TICK_S = 1.0
#: How often retention looks for expired rows and checks the size cap, s: a row
#: is gone within this (plus the batches before it) of expiring. Each round
#: removes what expired since the last in full batches.
RETENTION_CHECK_S = 30.0
#: Pause between two retention batches, s: telemetry commits run meanwhile.
RETENTION_PAUSE_S = 0.02
#: Longest wait for the broker to acknowledge the offline status at shutdown.
OFFLINE_ACK_TIMEOUT_S = 3.0
#: Buffer losses are summed up in one log line this often, s.
LOSS_REPORT_S = 10.0
#: Shortest time between two broadcast status requests (a flapping link must not
#: make every device answer again and again).
STATUS_REQUEST_MIN_S = 60.0
#: Longest wait for queued telemetry to reach the database at shutdown.
FLUSH_TIMEOUT_S = 10.0
#: Waits before each new attempt when opening the database meets an I/O error at start-up;
#: after the last one the gateway exits with a failure.
OPEN_RETRY_DELAYS_S = (0.2, 0.5, 1.0, 2.0, 4.0)
#: Exit code after the database thread died (EX_SOFTWARE): systemd's
#: Restart=on-failure starts the gateway again.
EXIT_DATABASE_FAILED = 70


class Gateway:
    """One running gateway; ``await run()`` returns the process exit code."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.stop_requested = asyncio.Event()
        self.started_monotonic = time.monotonic()
        self.db: Database | None = None
        self.client: MqttClient | None = None
        self.registry: Registry | None = None
        self.pipeline: Pipeline | None = None
        self.ready = asyncio.Event()
        self.exporter: Exporter | None = None
        self._next_status_request = 0.0
        self._next_loss_report = 0.0
        self._reported_losses = (0, 0)  # (ring evictions, refusals) already logged
        self.exit_code = 0
        self.retention: Retention | None = None
        self._retaining: asyncio.Future[None] | None = None

    def request_stop(self) -> None:
        self.stop_requested.set()

    async def run(self, install_signal_handlers: bool = True) -> int:
        loop = asyncio.get_running_loop()
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop)
        try:
            if not await self._unless_stopped(self._open_database()):
                log.info("stopped while waiting for the database")
                await self._stop_database(farewell=False)
                return 0
        except (StorageError, OSError, SQLAlchemyError) as exc:
            log.error("cannot open the database: %s", short_error(exc))
            await self._stop_database(farewell=False)
            return 1
        try:
            await self._start_mqtt()
        except BrokerError as exc:
            log.error("%s", exc)
            await self._stop_database()
            return 1
        self.ready.set()
        self.exporter = await start_exporter(self)
        log.info("gateway %s running (device timeout %gs, batch %d rows / %gs)",
                 self.settings.gateway_uuid, self.settings.device_timeout_s,
                 self.settings.telemetry_batch_size, self.settings.telemetry_flush_interval_s)
        tick = loop.create_task(self._housekeeping(), name="autocore-housekeeping")
        await self.stop_requested.wait()
        tick.cancel()
        if self._retaining is not None:
            self._retaining.cancel()
        await self._shutdown()
        return self.exit_code

    # -- start-up --------------------------------------------------------------------

    async def _unless_stopped(self, work: Any) -> bool:
        """Run a start-up step; False if SIGTERM/SIGINT came first (the step is cancelled)."""
        step = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self.stop_requested.wait())
        await asyncio.wait((step, stop), return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if step.done():
            step.result()  # raises the step's error
            return True
        step.cancel()
        return False

    async def _open_database(self) -> None:
        """Start the database, trying again a few times after an I/O error.

        An I/O error opening SQLite can be transient (its shared-memory file
        met while another process removes it; a storage device still settling
        after a power cut). Waiting a few seconds costs less than an exit and
        a restart by the service manager. Every other error is final at once.
        """
        for delay in (*OPEN_RETRY_DELAYS_S, None):
            try:
                await self._start_database()
                return
            except SQLAlchemyError as exc:
                if delay is None or not is_io_error(exc):
                    raise
                log.warning("cannot open the database yet: %s; trying again in %gs", short_error(exc), delay)
            await self._stop_database(farewell=False)
            self.db = None
            await asyncio.sleep(delay)

    async def _start_database(self) -> None:
        settings = self.settings
        loop = asyncio.get_running_loop()
        engine = open_engine(settings)
        try:
            created = await loop.run_in_executor(None, ensure_schema, engine)
        except BaseException:
            engine.dispose()
            raise
        if created:
            log.info("created missing tables: %s", ", ".join(created))
        ring = TelemetryBuffer(Ring(settings.ring_capacity, "drop_oldest"), rows_for(settings.buffer_mb))
        # The broker should send at most MAX_CONCURRENT_MESSAGES unacknowledged QoS 1/2
        # messages (receive maximum); Mosquitto 2.0 overshoots with a resumed backlog,
        # so reading pauses at a quarter of this ring (see MqttClient.pause_reading).
        reliable = Ring(max(8 * settings.max_concurrent_messages, RELIABLE_CAPACITY), "reject")
        self.db = Database(engine, ring, settings.telemetry_batch_size,
                           settings.telemetry_flush_interval_s, reliable, settings.write_interval_s,
                           ack_window=settings.max_concurrent_messages)
        self.db.on_failure = lambda exc: loop.call_soon_threadsafe(self._database_failed, exc)
        self.retention = Retention(engine, RetentionSettings.from_settings(settings))
        self.db.start(notify_channel=COMMANDS_CHANNEL)
        await self.db.call(register_gateway, settings.gateway_uuid, __version__)
        self.db.post(write_event, "system", "gateway", "startup", {"timestamp": utc_timestamp()})
        self.registry = Registry(self.db, settings.device_cache_size, settings.device_timeout_s,
                                 settings.gateway_uuid, shared=settings.shared_group is not None)
        await self.registry.load()

    async def _start_mqtt(self) -> None:
        settings = self.settings
        assert self.db is not None and self.registry is not None
        subscriptions = topics.SUBSCRIPTIONS
        if settings.shared_group is not None:
            subscriptions = topics.shared(subscriptions, settings.shared_group)
            log.info("sharing the device traffic with the other gateways of group %r", settings.shared_group)
        reporter = ErrorReporter(settings.gateway_uuid, self._publish)
        self.reporter = reporter
        self.pipeline = Pipeline(settings, self.db, self.registry, self.metrics, reporter, self._publish)
        self.client = MqttClient(settings, subscriptions, self.pipeline.handle,
                                 on_publishes=self.pipeline.handle_batch)
        self.pipeline.ack = self.client.ack
        client = self.client
        self.pipeline.generation = lambda: client.generation
        self.pipeline.pause_intake = self.client.pause_reading
        loop = asyncio.get_running_loop()
        self.db.on_acks = lambda acks: loop.call_soon_threadsafe(self._ack_committed, acks)
        self.db.on_rejected = lambda refused: loop.call_soon_threadsafe(self._count_refused, refused)
        self.client.will_set(topics.status_topic(settings.gateway_uuid),
                             status.last_will(settings.gateway_uuid, utc_timestamp()))
        self.client.on_connected = self._on_connected
        self.meter = status.ResourceMeter()
        # The outbox knows the commands a previous run left in flight before the
        # first message arrives: a persistent session may deliver their answers at once.
        self.outbox = Outbox(self.db, reporter, self._publish, settings.gateway_uuid,
                             settings.message_timeout_s, settings.command_max_age_s,
                             shared=settings.shared_group is not None)
        self.outbox.on_unknown = self.pipeline.unknown_response
        self.outbox.link_up = lambda: client.is_connected
        self.outbox.withdraw = client.withdraw
        self.outbox.feed.link = False  # until the first CONNACK (see _on_connected)
        client.on_disconnected = lambda: self.outbox.link_changed(False)
        self.pipeline.outbox = self.outbox
        self.registry.on_online = self.outbox.device_online
        await self.outbox.resume()
        await self.client.connect(settings.connect_timeout_s)
        self.db.add_poller(self.outbox.feed.poll, settings.command_poll_interval_s)

    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool, expiry_s: float | None = None) -> Any:
        assert self.client is not None
        info = self.client.publish(topic, payload, qos, retain, expiry_s)
        if info.rc == mqtt.MQTT_ERR_SUCCESS and topic.startswith("autocore/errors/"):
            self.metrics.errors_published += 1
        return info

    def _on_connected(self) -> None:
        self.outbox.link_changed(True)
        uuid = self.settings.gateway_uuid
        self._publish(topics.status_topic(uuid),
                      status.online(uuid, self.uptime(), self.metrics.received), status.STATUS_QOS, True)
        self._next_heartbeat = 0.0  # heartbeat right after (re)connect
        assert self.client is not None
        if self.client.reconnects:
            self._ask_for_status()

    def _ask_for_status(self) -> None:
        """After a reconnect, ask every device to report its status (the protocol's broadcast
        ``status`` command; it has no re-announce request): presence missed while we were
        away is refreshed, also under a shared subscription, which gets no retained statuses."""
        now = time.monotonic()
        if now < self._next_status_request:
            return
        self._next_status_request = now + STATUS_REQUEST_MIN_S
        payload = envelope.build(self.settings.gateway_uuid, command="status")
        self._publish(topics.broadcast_command_topic("status"), envelope.dumps(payload), 1, False)
        log.info("asked every device to report its status (%s)", topics.broadcast_command_topic("status"))

    def _ack_committed(self, acks: list[tuple[int, int, int]]) -> None:
        """Rows are committed: now the broker may forget these QoS 1/2 messages.

        Each token is (packet id, QoS, connection generation); the client drops
        those of an earlier connection.
        """
        assert self.client is not None and self.db is not None
        self.client.ack_many(acks)
        if self.client.reading_paused and self.db.reliable_backlog_low():
            self.client.resume_reading()

    def _count_refused(self, refused: list[tuple[str, str]]) -> None:
        """Messages the database refused for good: counted per device and reason, like bad input."""
        for uuid, reason in refused:
            self.metrics.reject(reason, uuid)

    def _database_failed(self, exc: BaseException) -> None:
        """The database thread died: stop with a failure code so the service manager restarts us."""
        log.critical("stopping: the database thread died (%r); exit code %d", exc, EXIT_DATABASE_FAILED)
        self.exit_code = EXIT_DATABASE_FAILED
        self.request_stop()

    def uptime(self) -> float:
        return time.monotonic() - self.started_monotonic

    # -- running ---------------------------------------------------------------------

    async def _housekeeping(self) -> None:
        assert self.registry is not None and self.client is not None and self.db is not None
        self._next_heartbeat = 0.0
        next_retention = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= next_retention:
                next_retention = now + RETENTION_CHECK_S
                if self._retaining is None or self._retaining.done():
                    self._retaining = asyncio.ensure_future(self._retain())
            if now >= self._next_heartbeat:
                self._next_heartbeat = now + self.settings.heartbeat_interval_s
                self.registry.sweep()
                if self.client.is_connected:
                    self._heartbeat()
            else:
                self.registry.flush_last_seen()
            if now >= self._next_loss_report:
                self._next_loss_report = now + LOSS_REPORT_S
                self._report_buffer_losses()
            if self.pipeline is not None:
                self.pipeline.flush_compression(time.time())  # what silent signals still hold
            await asyncio.sleep(min(TICK_S, self.settings.heartbeat_interval_s))

    async def _retain(self) -> None:
        """Remove what expired (and trim for the size cap) batch by batch, telemetry commits in between."""
        assert self.db is not None and self.retention is not None
        self.retention.new_round()
        try:
            while await self.db.call(self.retention.step):
                await asyncio.sleep(RETENTION_PAUSE_S)
        except (SQLAlchemyError, StorageError) as exc:
            log.warning("retention failed (next try in %gs): %s", RETENTION_CHECK_S, short_error(exc))

    def _report_buffer_losses(self) -> None:
        """One warning per LOSS_REPORT_S while full buffers drop or refuse telemetry (never silent)."""
        assert self.db is not None
        dropped = self.db.ring.stats()["dropped"]
        refused = self.metrics.telemetry_dropped
        new_dropped, new_refused = dropped - self._reported_losses[0], refused - self._reported_losses[1]
        self._reported_losses = (dropped, refused)
        if new_dropped:
            log.warning("telemetry buffer full: %d QoS 0 messages dropped (oldest first) in the last %gs; "
                        "the database is not keeping up", new_dropped, LOSS_REPORT_S)
        if new_refused:
            log.warning("telemetry buffer full: %d messages refused in the last %gs (QoS 1/2 ones stay with "
                        "the broker, unacknowledged)", new_refused, LOSS_REPORT_S)

    def _heartbeat(self) -> None:
        assert self.registry is not None
        uuid = self.settings.gateway_uuid
        payload = status.heartbeat(uuid, self.uptime(), self.registry.online_count(), self.meter.read())
        self._publish(topics.status_topic(uuid), payload, status.STATUS_QOS, True)

    # -- shutdown --------------------------------------------------------------------

    async def _shutdown(self) -> None:
        if self.exporter is not None:
            await self.exporter.stop()
        assert self.pipeline is not None and self.client is not None and self.registry is not None
        log.info("stopping: flushing telemetry and publishing offline status")
        # From here on messages are left unacknowledged: the broker keeps QoS 1/2
        # ones in our session and delivers them after the restart.
        self.pipeline.accepting = False
        await self.pipeline.drain_tasks(2.0)
        self.pipeline.flush_compression()  # held readings are stored before the writer stops
        self.registry.flush_last_seen(force=True)
        self.outbox.stop()
        await self.outbox.drain(2.0)
        await self._stop_database()  # commits what was received; acks are queued on the loop
        await asyncio.sleep(0)
        uuid = self.settings.gateway_uuid
        if self.client.is_connected:
            info = self._publish(topics.status_topic(uuid), status.shutdown(uuid), status.STATUS_QOS, True)
            if not await self.client.wait_published(info, OFFLINE_ACK_TIMEOUT_S):
                log.warning("broker did not acknowledge the offline status in time")
        await self.client.close()
        log.info("stopped")

    async def _stop_database(self, farewell: bool = True) -> None:
        """Flush and stop the database thread; ``farewell`` first records the gateway offline."""
        if self.db is None:
            return
        if farewell:
            uuid = self.settings.gateway_uuid
            self.db.post(mark_gateway_offline, uuid)
            self.db.post(write_event, "system", "gateway", "shutdown", {"timestamp": utc_timestamp()})
        loop = asyncio.get_running_loop()
        flushed = await loop.run_in_executor(None, self.db.stop, FLUSH_TIMEOUT_S, not farewell)
        if not flushed:
            log.error("database writer did not finish flushing in %gs", FLUSH_TIMEOUT_S)
        self.db.close()
