"""Command outbox: Config App row -> device -> outcome, every step recorded in ``gateway_commands``.

Lifecycle of a row: ``pending`` -> ``sent`` -> ``acked`` | ``failed`` | ``timeout``;
a pending row whose device stays offline past its maximum age becomes
``expired`` and is never published; a row that cannot be delivered at all
(unknown device, bad channel, malformed parameters) becomes ``failed`` with the
reason and nothing is published.

Delivery is at most once: a row is marked ``sent`` in the database *before* it
is published, so a gateway killed in between leaves a ``sent`` row that times
out after a restart instead of switching a relay twice. Relay commands are
confirmed by the board's ``relays/state`` or relay events (the firmware has no
response topic); other commands by a ``response`` carrying the ``command_id``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.engine import Connection

from autocore import envelope, topics
from autocore.registry import OFFLINE, Registry
from autocore.reports import ErrorReporter
from autocore.schema import gateway_commands, local_now
from autocore.storage import Database

log = logging.getLogger(__name__)

PENDING, SENT, ACKED, FAILED, TIMEOUT, EXPIRED = "pending", "sent", "acked", "failed", "timeout", "expired"
RELAY = "relay"
#: Command types the firmware listens for on ``autocore/devices/{uuid}/commands/{cmd}``.
DEVICE_COMMANDS = frozenset({"reset", "status", "reboot", "ota"})
RELAY_ACTIONS = frozenset({"on", "off", "toggle"})
MAX_CHANNEL = 16
#: Publish attempts for one command when paho refuses it (queue full, not connected...).
MAX_PUBLISH_ATTEMPTS = 3
PUBLISH_RETRY_S = 0.5
DEFAULT_QOS = 2

Publish = Callable[[str, bytes, int, bool], Any]


@dataclass
class Command:
    """A command the outbox is working on (mirrors one ``gateway_commands`` row)."""

    id: int
    command_id: str
    device_uuid: str
    command_type: str
    params: dict[str, Any]
    qos: int
    timeout_s: float
    max_age_s: float
    created_at: datetime
    status: str = PENDING
    sent_at: datetime | None = None
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)


# -- database side (DB thread) ------------------------------------------------------------


class CommandFeed:
    """Cheap change check on the DB thread: a max-id probe, then only the new rows."""

    def __init__(self, deliver: Callable[[list[Any]], None]) -> None:
        self.deliver = deliver
        self.max_id = 0

    def poll(self, conn: Connection) -> None:
        top = conn.exec_driver_sql("SELECT max(id) FROM gateway_commands").scalar() or 0
        if top <= self.max_id:
            return
        rows = conn.execute(
            select(gateway_commands)
            .where(gateway_commands.c.id > self.max_id, gateway_commands.c.status == PENDING)
            .order_by(gateway_commands.c.id)
        ).all()
        self.max_id = top
        if rows:
            self.deliver(rows)


def load_unfinished(conn: Connection) -> list[Any]:
    """Rows a previous run left ``pending`` or ``sent`` (restart safety)."""
    return conn.execute(
        select(gateway_commands).where(gateway_commands.c.status.in_((PENDING, SENT)))
        .order_by(gateway_commands.c.id)
    ).all()


def mark_sent(conn: Connection, row_id: int, command_id: str, topic: str, sent_at: datetime) -> None:
    conn.execute(update(gateway_commands).where(gateway_commands.c.id == row_id).values(
        status=SENT, command_id=command_id, topic=topic, sent_at=sent_at,
        attempts=func.coalesce(gateway_commands.c.attempts, 0) + 1))


def mark_done(conn: Connection, row_id: int, status: str, error: str | None,
              response: dict[str, Any] | None, command_id: str | None) -> None:
    values: dict[str, Any] = {"status": status, "completed_at": local_now(), "error_message": error}
    if response is not None:
        values["response_payload"] = json.dumps(response, ensure_ascii=False)
    if command_id is not None:
        values["command_id"] = command_id
    conn.execute(update(gateway_commands).where(
        gateway_commands.c.id == row_id, gateway_commands.c.status.in_((PENDING, SENT))).values(**values))


# -- building what goes on the wire ----------------------------------------------------------


def _relay_params(params: dict[str, Any]) -> str | None:
    """Why a relay command is malformed, or None."""
    channel = params.get("channel")
    if channel != "all" and (type(channel) is not int or not 1 <= channel <= MAX_CHANNEL):
        return f"bad channel {channel!r}: expected 1-{MAX_CHANNEL} or 'all'"
    if params.get("command") not in RELAY_ACTIONS:
        return f"bad command {params.get('command')!r}: expected on, off or toggle"
    return None


def build_message(command: Command, gateway_uuid: str) -> tuple[str, dict[str, Any]]:
    """Topic and payload of a command, in the shapes the firmware accepts."""
    params = command.params
    if command.command_type == RELAY:
        action = params["command"]
        source = params.get("source") if isinstance(params.get("source"), str) else "gateway"
        payload = envelope.build(
            gateway_uuid, channel=params["channel"], command=action, state=action != "off",
            function_type="toggle" if action == "toggle" else "normal",
            user=params.get("user") if isinstance(params.get("user"), str) else source,
            source=source, command_id=command.command_id,
        )
        if isinstance(params.get("momentary"), bool):
            payload["momentary"] = params["momentary"]
        return topics.relay_set_topic(command.device_uuid), payload
    if command.command_type in DEVICE_COMMANDS:
        extra = {k: params[k] for k in ("delay", "type", "data") if k in params}
        payload = envelope.build(gateway_uuid, command=command.command_type,
                                 command_id=command.command_id, **extra)
        return topics.device_command_topic(command.device_uuid, command.command_type), payload
    payload = envelope.build(gateway_uuid, command_id=command.command_id,
                             command_type=command.command_type, parameters=params,
                             timeout=command.timeout_s)
    return topics.command_topic(command.device_uuid), payload


# -- the outbox (event-loop thread) -------------------------------------------------------------


class Outbox:
    """Tracks every command from pick-up to outcome."""

    def __init__(self, db: Database, registry: Registry, reporter: ErrorReporter, publish: Publish,
                 gateway_uuid: str, default_timeout_s: float, default_max_age_s: float) -> None:
        self.db = db
        self.registry = registry
        self.reporter = reporter
        self.publish = publish
        self.gateway_uuid = gateway_uuid
        self.default_timeout_s = default_timeout_s
        self.default_max_age_s = default_max_age_s
        self._loop = asyncio.get_running_loop()
        self._known: set[int] = set()
        self._outstanding: dict[str, Command] = {}  # command_id -> sent, awaiting confirmation
        self._waiting: dict[str, list[Command]] = {}  # device uuid -> commands held while offline
        self._relay_states: dict[tuple[str, int], bool] = {}  # last known (device, channel) state
        self.outcomes: dict[str, int] = {}
        self.feed = CommandFeed(self._from_db_thread)

    # -- intake ---------------------------------------------------------------------------

    async def resume(self) -> None:
        """Pick up what a previous run left: ``sent`` rows are tracked to their timeout, never re-sent."""
        rows = await self.db.call(load_unfinished)
        for row in rows:
            self.feed.max_id = max(self.feed.max_id, row.id)
        for row in rows:
            self._accept(row)

    def _from_db_thread(self, rows: list[Any]) -> None:
        self._loop.call_soon_threadsafe(self._accept_many, rows)

    def _accept_many(self, rows: list[Any]) -> None:
        for row in rows:
            self._accept(row)

    def _accept(self, row: Any) -> None:
        if row.id in self._known:
            return
        self._known.add(row.id)
        try:
            params = json.loads(row.payload) if row.payload else {}
        except (TypeError, ValueError):
            params = None
        command = Command(
            id=row.id, command_id=row.command_id or str(uuidlib.uuid4()), device_uuid=row.device_uuid,
            command_type=(row.command_type or "").strip().lower(), params=params or {},
            qos=row.qos if row.qos in (0, 1, 2) else DEFAULT_QOS,
            timeout_s=float(row.timeout_s or self.default_timeout_s),
            max_age_s=float(row.max_age_s if row.max_age_s is not None else self.default_max_age_s),
            created_at=row.created_at or local_now(), status=row.status, sent_at=row.sent_at,
        )
        if command.status == SENT:
            self._track_after_restart(command)
            return
        if not isinstance(params, dict):
            self._finish(command, FAILED, "payload is not a JSON object")
            return
        asyncio.ensure_future(self._dispatch(command))

    def _track_after_restart(self, command: Command) -> None:
        sent_at = command.sent_at or command.created_at
        remaining = command.timeout_s - (local_now() - sent_at).total_seconds()
        self._outstanding[command.command_id] = command
        command.timer = self._loop.call_later(max(0.0, remaining), self._timed_out, command)

    async def _dispatch(self, command: Command) -> None:
        problem = None
        if command.command_type == RELAY:
            problem = _relay_params(command.params)
        elif not command.command_type:
            problem = "missing command_type"
        if problem is None:
            device = await self.registry.resolve(command.device_uuid)
            if device is None:
                problem = f"unknown device {command.device_uuid!r}"
            elif device.status == OFFLINE:
                if self._expired(command):
                    self._finish(command, EXPIRED, "device offline past the command's maximum age")
                else:
                    self._waiting.setdefault(command.device_uuid, []).append(command)
                    log.info("command=%s device=%s offline: held", command.command_id, command.device_uuid)
                return
        if problem is not None:
            self._finish(command, FAILED, problem)
            return
        await self._send(command)

    def _expired(self, command: Command) -> bool:
        return local_now() - command.created_at > timedelta(seconds=command.max_age_s)

    def device_online(self, uuid: str) -> None:
        """A device came back: deliver what it missed, unless it is too old by now."""
        for command in self._waiting.pop(uuid, []):
            if self._expired(command):
                self._finish(command, EXPIRED, "device offline past the command's maximum age")
            else:
                asyncio.ensure_future(self._send(command))

    async def _send(self, command: Command) -> None:
        if self._expired(command):
            self._finish(command, EXPIRED, "older than its maximum age")
            return
        topic, payload = build_message(command, self.gateway_uuid)
        command.sent_at = local_now()
        await self.db.call(mark_sent, command.id, command.command_id, topic, command.sent_at)
        command.status = SENT
        self._outstanding[command.command_id] = command
        command.timer = self._loop.call_later(command.timeout_s, self._timed_out, command)
        body = envelope.dumps(payload)
        for attempt in range(1, MAX_PUBLISH_ATTEMPTS + 1):
            info = self.publish(topic, body, command.qos, False)
            if info.rc in (0, 4):  # success, or queued by paho until the broker is back
                log.info("command=%s device=%s sent on %s", command.command_id, command.device_uuid, topic)
                return
            await asyncio.sleep(PUBLISH_RETRY_S * attempt)
        self._finish(command, FAILED, f"could not publish after {MAX_PUBLISH_ATTEMPTS} attempts")

    # -- correlation --------------------------------------------------------------------------

    def on_response(self, device_uuid: str, data: dict[str, Any]) -> bool:
        """A ``response`` from a device; True when it answered one of our commands."""
        command = self._outstanding.get(str(data.get("command_id")))
        if command is None or command.device_uuid != device_uuid:
            return False
        if data.get("success") is False:
            error = data.get("error_message")
            self._finish(command, FAILED, str(error) if error else "device reported failure", data)
        else:
            self._finish(command, ACKED, None, data)
        return True

    def on_relay_states(self, device_uuid: str, states: dict[int, bool]) -> None:
        """Relay states seen on ``relays/state`` or a relay event confirm pending relay commands."""
        for command in [c for c in self._outstanding.values()
                        if c.device_uuid == device_uuid and c.command_type == RELAY]:
            channel, action = command.params["channel"], command.params["command"]
            channels = list(states) if channel == "all" else [channel]
            if not channels or any(ch not in states for ch in channels):
                continue
            if action == "toggle":
                before = [self._relay_states.get((device_uuid, ch)) for ch in channels]
                confirmed = all(prev is None or states[ch] != prev for ch, prev in zip(channels, before))
            else:
                confirmed = all(states[ch] == (action == "on") for ch in channels)
            if confirmed:
                self._finish(command, ACKED, None, {"channels": {str(ch): states[ch] for ch in channels}})
        for channel, state in states.items():
            self._relay_states[(device_uuid, channel)] = state

    def _timed_out(self, command: Command) -> None:
        if self._outstanding.get(command.command_id) is not command:
            return
        self._finish(command, TIMEOUT, f"no confirmation within {command.timeout_s:g}s")
        self.reporter.report("ERR_003", f"Command {command.command_id} timed out", command.device_uuid,
                             command_id=command.command_id, command_type=command.command_type)

    def _finish(self, command: Command, status: str, error: str | None,
                response: dict[str, Any] | None = None) -> None:
        self._outstanding.pop(command.command_id, None)
        if command.timer is not None:
            command.timer.cancel()
        command.status = status
        self.outcomes[status] = self.outcomes.get(status, 0) + 1
        level = logging.INFO if status == ACKED else logging.WARNING
        log.log(level, "command=%s device=%s %s%s", command.command_id, command.device_uuid, status,
                f": {error}" if error else "")
        self.db.post(mark_done, command.id, status, error, response, command.command_id)

    def stop(self) -> None:
        """Cancel timers; rows stay ``sent``/``pending`` for the next run to resolve."""
        for command in self._outstanding.values():
            if command.timer is not None:
                command.timer.cancel()
