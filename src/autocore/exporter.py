"""Expose a running gateway's state over HTTP: ``/metrics``, ``/healthz`` and ``/readyz``.

The server is a minimal HTTP/1.1 handler on the gateway's own event loop
(``asyncio.start_server``), not prometheus-client's WSGI server in a thread:

- the counters it reads (the pipeline's, the registry's cache, the outbox's
  outcomes) belong to the loop thread, so a scrape on that thread sees them
  between two messages, without locks and without a dict changing size under it;
- ``/healthz`` answered by the loop proves the loop turns, where a thread would
  go on answering while the loop is stuck;
- ``/readyz`` awaits a database probe through ``Database.call`` like any other
  loop code, with no server thread to keep alive besides.

Counters stay plain integers where they are counted; nothing is exported until
someone scrapes. A scrape costs the loop one copy of the counters (20 us with the
per-device label caps full, on x86); building and formatting the page (15 ms
then) runs on an executor thread. Requests are limited in size and time and
connections are capped, so a slow client cannot hold the loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import platform
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from sqlalchemy.engine import Connection

from autocore import __version__, _fast
from autocore.metrics import Metrics

if TYPE_CHECKING:
    from autocore.client import MqttClient
    from autocore.gateway import Gateway
    from autocore.outbox import Outbox
    from autocore.registry import Registry
    from autocore.storage import Database
    from autocore.storage.retention import Retention

log = logging.getLogger(__name__)

#: Longest a client may take to send its request head or read the answer.
REQUEST_TIMEOUT_S = 5.0
#: Largest request head accepted (request line and headers).
MAX_REQUEST_HEAD_BYTES = 8192
#: Connections served at once; more are closed unanswered.
MAX_CONNECTIONS = 8
#: Longest wait for the database probe before the database counts as not writable.
DB_PROBE_TIMEOUT_S = 2.0
#: A probe result is reused this long, so a monitor polling /readyz in a loop
#: cannot keep taking the write lock the Config App needs.
DB_PROBE_REUSE_S = 1.0
#: A ring buffer fuller than this share of its capacity makes the gateway not ready.
READY_BUFFER_FRACTION = 0.8
#: Longest wait for open connections when the server stops.
STOP_TIMEOUT_S = 2.0

JSON_TYPE = "application/json"
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           500: "Internal Server Error", 503: "Service Unavailable"}
#: Ring label of each of the database's two telemetry buffers.
RINGS = (("best_effort", "ring"), ("reliable", "reliable_ring"))


# -- metrics ---------------------------------------------------------------------------------


#: Plain counters of Metrics: (attribute, metric name, help).
MESSAGE_COUNTERS = (
    ("received", "autocore_messages_received", "Messages delivered by the broker."),
    ("telemetry_messages", "autocore_telemetry_messages",
     "Telemetry messages queued for the database."),
    ("telemetry_rows", "autocore_telemetry_rows", "Telemetry rows queued for the database."),
    ("telemetry_dropped", "autocore_telemetry_refused",
     "Telemetry messages a full buffer refused (left unacknowledged)."),
    ("errors_published", "autocore_error_reports", "Error reports published on autocore/errors/."),
    ("handler_failures", "autocore_handler_failures", "Message handlers that raised."),
)
#: Labelled counters of Metrics: (attribute, metric name, help, labels).
LABELLED_COUNTERS = (
    ("received_by_kind", "autocore_messages_accepted", "Messages that passed validation, by kind.",
     ["kind"]),
    ("rejected_by_reason", "autocore_messages_rejected", "Messages rejected, by reason code.",
     ["reason"]),
    ("rejected_by_device", "autocore_messages_rejected_by_device",
     "Messages rejected, by reason and device (capped; the rest is '(other)').",
     ["reason", "device"]),
    ("rate_limited", "autocore_messages_rate_limited",
     "QoS 0 messages dropped by the per-device rate limit.", ["device"]),
    ("signals_skipped", "autocore_telemetry_signals_skipped",
     "Signals left out of accepted telemetry (bad value, name, unit or key length), by device.",
     ["device"]),
)
#: Ring buffer statistics: (key of Ring.stats() and metric suffix, help, is a counter).
RING_STATS = (
    ("depth", "Messages waiting in the buffer.", False),
    ("capacity", "Messages the buffer holds.", False),
    ("high_water", "Highest depth seen since start.", False),
    ("pushed", "Messages put into the buffer.", True),
    ("drained", "Messages taken by the database writer.", True),
    ("dropped", "Oldest messages evicted by a full best-effort buffer.", True),
    ("rejected", "Messages a full buffer refused.", True),
)
#: Counters of the database writer: (attribute of Database, metric suffix, help).
DB_COUNTERS = (
    ("rows_written", "rows_written", "Telemetry rows committed."),
    ("batches_written", "batches", "Telemetry batches committed."),
    ("write_errors", "write_errors", "Telemetry batch writes that failed (and were retried)."),
    ("duplicates_skipped", "duplicates_skipped", "Redelivered QoS 1/2 messages already stored."),
    ("rows_unknown_device", "rows_unknown_device",
     "Telemetry rows of devices not in the database."),
    ("job_retries", "job_retries", "Database jobs retried after a locked or failing database."),
    ("messages_rejected", "messages_refused",
     "Telemetry messages the database refused for good (the rest of their batch stored)."),
)


def _family(kind: Callable[..., Metric], name: str, doc: str, labels: list[str],
            values: Mapping[Any, float]) -> Metric:
    """A labelled family from a mapping keyed by one label value or by a tuple of them."""
    family = kind(name, doc, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric(list(key) if isinstance(key, tuple) else [key], value)
    return family


class GatewayCollector(Collector):
    """Turn the gateway's plain counters into Prometheus metric families at scrape time.

    ``snapshot`` copies the values on the loop thread, which owns most of them
    (a few dict copies: microseconds). ``families`` builds the metric families
    from a snapshot on any thread, since with the label caps full that takes
    milliseconds. ``collect`` does both, for readers on the loop thread. Only
    ``metrics`` is required; each other source adds its families when given.
    """

    def __init__(self, metrics: Metrics, db: Database | None = None,
                 client: MqttClient | None = None, registry: Registry | None = None,
                 outbox: Outbox | None = None, uptime: Callable[[], float] | None = None,
                 retention: Retention | None = None) -> None:
        self.metrics = metrics
        self.retention = retention
        self.db = db
        self.client = client
        self.registry = registry
        self.outbox = outbox
        self.uptime = uptime

    def collect(self) -> Iterator[Metric]:
        return self.families(self.snapshot())

    def snapshot(self) -> dict[str, Any]:
        """Copy every exported value; call on the loop thread."""
        m = self.metrics
        snap: dict[str, Any] = {attr: getattr(m, attr) for attr, _, _ in MESSAGE_COUNTERS}
        snap.update({attr: dict(getattr(m, attr)) for attr, _, _, _ in LABELLED_COUNTERS})
        snap["commit_seconds"] = m.db_commit_seconds.snapshot()
        if self.db is not None:
            db = self.db
            snap["rings"] = {label: getattr(db, attr).stats() for label, attr in RINGS}
            snap["db"] = {attr: getattr(db, attr) for attr, _, _ in DB_COUNTERS}
            if db.last_commit_monotonic:
                snap["last_commit_age_s"] = time.monotonic() - db.last_commit_monotonic
        if self.retention is not None:
            snap["retention"] = self.retention.snapshot()
        if self.outbox is not None:
            snap["commands"] = dict(self.outbox.outcomes)
        if self.client is not None:
            client = self.client
            snap["mqtt"] = (int(client.is_connected), client.reconnects, client.disconnected_for(),
                            client.read_pauses)
        if self.registry is not None:
            snap["devices_online"] = self.registry.online_count()
        if self.uptime is not None:
            snap["uptime_s"] = self.uptime()
        return snap

    def families(self, snap: dict[str, Any]) -> Iterator[Metric]:
        """Metric families of one snapshot; any thread."""
        yield from self._build()
        for attr, name, doc in MESSAGE_COUNTERS:
            yield CounterMetricFamily(name, doc, value=snap[attr])
        for attr, name, doc, labels in LABELLED_COUNTERS:
            yield _family(CounterMetricFamily, name, doc, labels, snap[attr])
        buckets, total_s = snap["commit_seconds"]
        yield HistogramMetricFamily(
            "autocore_db_commit_seconds", "Duration of each telemetry batch transaction, s.",
            buckets=[("+Inf" if bound == float("inf") else repr(bound), count)
                     for bound, count in buckets],
            sum_value=total_s)
        if "rings" in snap:
            for key, doc, counter in RING_STATS:
                yield _family(CounterMetricFamily if counter else GaugeMetricFamily,
                              f"autocore_ring_{key}", doc, ["ring"],
                              {label: stats[key] for label, stats in snap["rings"].items()})
            for attr, suffix, doc in DB_COUNTERS:
                yield CounterMetricFamily(f"autocore_db_{suffix}", doc, value=snap["db"][attr])
        if "last_commit_age_s" in snap:
            yield GaugeMetricFamily("autocore_db_last_commit_age_seconds",
                                    "Time since the last telemetry commit, s.",
                                    value=snap["last_commit_age_s"])
        if "retention" in snap:
            yield from _retention_families(snap["retention"])
        if "commands" in snap:
            yield _family(CounterMetricFamily, "autocore_commands",
                          "Commands finished, by final state (acked, failed, timeout, expired).",
                          ["state"], snap["commands"])
        if "mqtt" in snap:
            connected, reconnects, away_s, pauses = snap["mqtt"]
            yield GaugeMetricFamily("autocore_mqtt_connected", "1 while connected to the broker.",
                                    value=connected)
            yield CounterMetricFamily("autocore_mqtt_reconnects", "Successful reconnects.",
                                      value=reconnects)
            yield CounterMetricFamily("autocore_mqtt_disconnected_seconds",
                                      "Time spent without a broker connection, s.", value=away_s)
            yield CounterMetricFamily("autocore_mqtt_read_pauses",
                                      "Times reading from the broker paused for the database to catch up.",
                                      value=pauses)
        if "devices_online" in snap:
            yield GaugeMetricFamily("autocore_devices_online", "Devices currently online.",
                                    value=snap["devices_online"])
        if "uptime_s" in snap:
            yield GaugeMetricFamily("autocore_uptime_seconds", "Time since the gateway started, s.",
                                    value=snap["uptime_s"])

    @staticmethod
    def _build() -> Iterator[Metric]:
        yield InfoMetricFamily("autocore_build", "Gateway version, Python and hot-path build.",
                               value={
                                   "version": __version__,
                                   "python": f"{platform.python_implementation()} "
                                             f"{platform.python_version()}",
                                   "implementation": _fast.IMPLEMENTATION,
                               })
        hot_path = InfoMetricFamily("autocore_hot_path", "Build in use per hot-path module.",
                                    labels=["module"])
        for module, build in _fast.IMPLEMENTATIONS.items():
            hot_path.add_metric([module], {"build": build})
        yield hot_path


def _retention_families(retention: dict[str, Any]) -> Iterator[Metric]:
    """Rows retention removed, database size against its cap and disk, and whether the cap binds."""
    yield _family(CounterMetricFamily, "autocore_retention_rows_removed",
                  "Rows deleted by retention, by table; telemetry_trimmed: raw telemetry deleted inside its "
                  "retention for the size cap or the free-space floor (rolled up first).",
                  ["table"], retention["removed"])
    yield CounterMetricFamily("autocore_retention_rows_rolled_up",
                              "Raw telemetry rows averaged into telemetry_hourly before deletion.",
                              value=retention["rolled_up"])
    yield GaugeMetricFamily("autocore_db_size_limited", "1 while the size cap or the free-space floor "
                            "makes retention delete telemetry inside its retention.",
                            value=int(retention["trimming"] is not None))
    usage = retention["usage"]
    if usage is None:
        return
    for key, doc in (("used", "Bytes of database pages holding data."),
                     ("file", "Bytes of the database file and its WAL."),
                     ("cap", "The database's size cap, bytes (AUTOCORE_DB_MAX_MB)."),
                     ("disk_free", "Free bytes on the database's file system.")):
        if usage[key] is not None:
            yield GaugeMetricFamily(f"autocore_db_{key}_bytes", doc, value=usage[key])


class _Families(Collector):
    """Families already built, as a collector of a one-scrape registry."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


# -- readiness -------------------------------------------------------------------------------


def database_probe(conn: Connection) -> None:
    """Prove the database takes writes (DB-thread job) without writing anything.

    On SQLite ``BEGIN IMMEDIATE`` takes the write lock, so it fails on a
    read-only file or when another writer holds the lock past the busy timeout;
    elsewhere a round trip shows the connection and the database thread work.
    """
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.exec_driver_sql("SELECT 1")


def _check(ok: bool, detail: str) -> dict[str, Any]:
    return {"ok": ok, "detail": detail}


def _storage_check(retention: Retention) -> dict[str, Any]:
    """Size against the cap; a binding cap is reported, but storing goes on (oldest rows make room)."""
    usage = retention.usage
    if usage is None:
        return _check(True, "not measured yet")
    cap = f"{usage.used / 2**20:,.0f} MB used of a {usage.cap / 2**20:,.0f} MB cap" if usage.cap else \
        f"{usage.used / 2**20:,.0f} MB used, no cap"
    if usage.disk_free is not None:
        cap += f", {usage.disk_free / 2**20:,.0f} MB free on its file system"
    if retention.trimming is not None:
        return _check(True, f"{cap}; size limit reached ({retention.trimming}): the oldest raw telemetry "
                            "is rolled up and deleted inside its retention")
    return _check(True, cap)


# -- HTTP ------------------------------------------------------------------------------------


class Exporter:
    """The HTTP server of one gateway; ``start`` returns False when it could not listen."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.host = gateway.settings.metrics_host
        self.port = gateway.settings.metrics_port
        self.collector = GatewayCollector(gateway.metrics, gateway.db, gateway.client,
                                          gateway.registry, gateway.outbox, gateway.uptime,
                                          gateway.retention)
        self.process = ProcessCollector(registry=None)
        self._server: asyncio.AbstractServer | None = None
        self._connections = 0
        self._probe: asyncio.Future[Any] | None = None
        self._probe_result: tuple[float, dict[str, Any]] | None = None  # (monotonic time, check)
        self._routes: dict[str, Callable[[], Awaitable[tuple[int, str, bytes]]]] = {
            "/metrics": self._metrics, "/healthz": self._healthz, "/readyz": self._readyz,
        }

    async def start(self) -> bool:
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port,
                                                      limit=MAX_REQUEST_HEAD_BYTES)
        except OSError as exc:
            log.error("cannot serve metrics on %s:%d (%s); the gateway runs on without them",
                      self.host, self.port, exc)
            return False
        # The histogram is fed only while someone can read it.
        assert self.gateway.db is not None
        self.gateway.db.on_batch_seconds = self.gateway.metrics.db_commit_seconds.observe
        log.info("metrics and health on http://%s:%d (/metrics, /healthz, /readyz)",
                 self.host, self.port)
        return True

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        try:
            await asyncio.wait_for(self._server.wait_closed(), STOP_TIMEOUT_S)
        except asyncio.TimeoutError:
            pass
        if self.gateway.db is not None:
            self.gateway.db.on_batch_seconds = None
        self._server = None

    # -- endpoints: each returns (status, content type, body) --------------------------

    async def _metrics(self) -> tuple[int, str, bytes]:
        snap = self.collector.snapshot()  # on the loop, which owns the counters
        body = await asyncio.get_running_loop().run_in_executor(None, self._render, snap)
        return 200, CONTENT_TYPE_LATEST, body

    def _render(self, snap: dict[str, Any]) -> bytes:
        """Format a snapshot off the loop: 15 ms on x86 with the label caps full, more on a Pi."""
        page = CollectorRegistry()
        page.register(_Families(list(self.collector.families(snap))))
        page.register(self.process)
        return generate_latest(page)

    async def _healthz(self) -> tuple[int, str, bytes]:
        """Alive = the loop answers and the database thread runs (a gateway storing nothing is not)."""
        body: dict[str, Any] = {"status": "ok", "version": __version__,
                                "uptime_s": round(self.gateway.uptime(), 3)}
        db = self.gateway.db
        if db is not None and not db.alive:
            body.update(status="failing", database_thread=f"dead: {db.failure!r}")
            return 503, JSON_TYPE, json.dumps(body).encode()
        return 200, JSON_TYPE, json.dumps(body).encode()

    async def _readyz(self) -> tuple[int, str, bytes]:
        ready, checks = await self.readiness()
        body = {"ready": ready, "checks": checks}
        return (200 if ready else 503), JSON_TYPE, json.dumps(body).encode()

    async def readiness(self) -> tuple[bool, dict[str, dict[str, Any]]]:
        """Ready = broker connected, subscriptions acknowledged, database writable, room in buffers.

        Room means each ring below READY_BUFFER_FRACTION of its capacity: past
        it the database is not keeping up and the best-effort ring soon drops.
        """
        gateway = self.gateway
        assert gateway.client is not None and gateway.db is not None
        client, db = gateway.client, gateway.db
        where = f"{gateway.settings.mqtt_broker}:{gateway.settings.mqtt_port}"
        connected = client.is_connected and client.connected.is_set()
        subscribed = client.subscribed.is_set()
        checks = {
            "broker": _check(connected, f"{'' if connected else 'not '}connected to {where}"),
            "subscriptions": _check(subscribed, f"{len(client.subscriptions)} filters acknowledged"
                                    if subscribed else "waiting for the broker's SUBACK"),
            "database": await self._database_check(),
        }
        fills = []
        full = False
        for label, attr in RINGS:
            stats = getattr(db, attr).stats()
            fills.append(f"{label} {stats['depth']}/{stats['capacity']}")
            full = full or stats["depth"] >= READY_BUFFER_FRACTION * stats["capacity"] \
                or stats.get("rows", 0) >= READY_BUFFER_FRACTION * stats.get("max_rows", float("inf"))
        limit = f"limit {READY_BUFFER_FRACTION:.0%}"
        checks["buffer"] = _check(not full, f"{', '.join(fills)} ({limit})")
        if gateway.retention is not None:
            checks["storage"] = _storage_check(gateway.retention)
        return all(check["ok"] for check in checks.values()), checks

    async def _database_check(self) -> dict[str, Any]:
        """The write probe's verdict; one probe in flight at most, one per DB_PROBE_REUSE_S."""
        db = self.gateway.db
        if db is not None and not db.alive:
            return _check(False, f"the database thread died: {db.failure!r}")
        last = self._probe_result
        if last is not None and time.monotonic() - last[0] < DB_PROBE_REUSE_S:
            return last[1]
        check = await self._run_probe()
        self._probe_result = (time.monotonic(), check)
        return check

    async def _run_probe(self) -> dict[str, Any]:
        assert self.gateway.db is not None
        if self._probe is None or self._probe.done():
            self._probe = self.gateway.db.call(database_probe)
        started = time.monotonic()
        try:
            await asyncio.wait_for(asyncio.shield(self._probe), DB_PROBE_TIMEOUT_S)
        except asyncio.TimeoutError:
            return _check(False, f"no answer from the database thread in {DB_PROBE_TIMEOUT_S:g} s")
        except Exception as exc:  # whatever the driver raised: not writable
            return _check(False, f"write probe failed: {exc}")
        return _check(True, f"write probe took {(time.monotonic() - started) * 1000:.1f} ms")

    # -- connection handling -----------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._connections >= MAX_CONNECTIONS:
            writer.close()
            return
        self._connections += 1
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
            method, status, content_type, body = await self._answer(head)
            lines = [f"HTTP/1.1 {status} {REASONS[status]}", f"Content-Type: {content_type}",
                     f"Content-Length: {len(body)}", "Cache-Control: no-store", "Connection: close"]
            if status == 405:
                lines.append("Allow: GET, HEAD")
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            if method != "HEAD":
                writer.write(body)
            await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT_S)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            pass  # the client went away or was too slow: nothing to answer
        finally:
            self._connections -= 1
            writer.close()

    async def _answer(self, head: bytes) -> tuple[str, int, str, bytes]:
        """Route one request head to (method, status, content type, body)."""
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return "", 400, JSON_TYPE, b'{"error": "bad request"}'
        method, path = parts[0], parts[1].split("?", 1)[0]
        endpoint = self._routes.get(path)
        if endpoint is None:
            body = {"error": "not found", "endpoints": list(self._routes)}
            return method, 404, JSON_TYPE, json.dumps(body).encode()
        if method not in ("GET", "HEAD"):
            return method, 405, JSON_TYPE, b'{"error": "method not allowed"}'
        try:
            status, content_type, payload = await endpoint()
        except Exception:  # a bug in a collector must not take the server down
            log.exception("%s failed", path)
            return method, 500, JSON_TYPE, b'{"error": "internal error"}'
        return method, status, content_type, payload


async def start_exporter(gateway: Gateway) -> Exporter | None:
    """Serve the gateway's endpoints unless AUTOCORE_METRICS_PORT is 0 or the port is taken."""
    if not gateway.settings.metrics_port:
        log.info("metrics and health endpoints are off (AUTOCORE_METRICS_PORT=0)")
        return None
    exporter = Exporter(gateway)
    return exporter if await exporter.start() else None
