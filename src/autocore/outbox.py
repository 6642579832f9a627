"""Command outbox: Config App row -> device -> outcome, every step recorded in ``gateway_commands``.

Lifecycle of a row: ``pending`` -> ``sent`` -> ``acked`` | ``failed`` | ``timeout``;
a pending row whose device stays offline past its maximum age becomes
``expired`` and is never published; a row that cannot be delivered at all
(unknown device, bad channel, malformed parameters) becomes ``failed`` with the
reason and nothing is published.

Delivery is at most once: a row is claimed by marking it ``sent`` in the
database *before* it is published, so a gateway killed in between leaves a
``sent`` row that times out instead of switching a relay twice, and gateways
sharing one database never send the same row twice. Relay commands are
confirmed by the board's ``relays/state`` or relay events (the firmware has no
response topic); other commands by a ``response`` carrying the ``command_id``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid as uuidlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import String, and_, func, not_, or_, select, type_coerce, update
from sqlalchemy.engine import Connection

from autocore import envelope, topics
from autocore.registry import GATEWAY_TYPE, ONLINE
from autocore.reports import ErrorReporter
from autocore.schema import SWEEP_LOCK, devices, gateway_commands, local_now
from autocore.storage import Database

log = logging.getLogger(__name__)

PENDING, SENT, ACKED, FAILED, TIMEOUT, EXPIRED = "pending", "sent", "acked", "failed", "timeout", "expired"
RELAY = "relay"
#: Command types the firmware listens for on ``autocore/devices/{uuid}/commands/{cmd}``.
DEVICE_COMMANDS = frozenset({"reset", "status", "reboot", "ota"})
RELAY_ACTIONS = frozenset({"on", "off", "toggle"})
MAX_CHANNEL = 16
#: Relay boards whose last states are remembered for toggle confirmations.
MAX_TRACKED_BOARDS = 1024
#: Publish attempts for one command when paho refuses it (queue full, not connected...).
MAX_PUBLISH_ATTEMPTS = 3
PUBLISH_RETRY_S = 0.5
DEFAULT_QOS = 2
#: Shared mode: answers looked up in the database at once; past this (a flood of
#: made-up answers) an answer no command of ours matches is counted as unknown.
MAX_PENDING_LOOKUPS = 512

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
    deadline: float = 0.0  # loop time of its timeout
    info: Any = field(default=None, repr=False)  # what publish() returned, to withdraw it at the timeout


# -- database side (DB thread) ------------------------------------------------------------

#: Most pending rows claimed (or failed) per poll.
CLAIM_LIMIT = 200
#: Most pending rows of offline devices looked at per poll (for expiry).
HELD_LIMIT = 1000
#: Pending rows are re-examined this often even without news (expiry, missed changes), s.
RECHECK_S = 1.0
#: A ``sent`` row is timed out by whichever gateway sweeps this long after its own
#: timeout: its sender normally resolves it first; this catches a sender that died.
ORPHAN_GRACE_S = 5.0
#: How far in the future a row's ``created_at`` may lie before the row is expired as
#: of unknown age (clocks of two hosts differ a little; a Pi without a real-time
#: clock starts after a power cut with an old time until NTP jumps it forward).
CLOCK_SKEW_S = 60.0
#: Rows whose first sighting is remembered (monotonic), for ages immune to clock jumps.
SIGHTINGS_LIMIT = 10_000


class Sightings:
    """When this gateway first saw each row, by its monotonic clock (DB thread only).

    A row's age is the larger of its wall-clock age and the time since it was
    first seen here: a clock jumping back cannot make a held command young
    again and fire it hours late.
    """

    def __init__(self) -> None:
        self._first: OrderedDict[int, float] = OrderedDict()

    def age_s(self, row_id: int, wall_age_s: float, now: float) -> float:
        first = self._first.setdefault(row_id, now)
        if len(self._first) > SIGHTINGS_LIMIT:
            self._first.popitem(last=False)
        return max(wall_age_s, now - first)

    def keep_only(self, row_ids: set[int]) -> None:
        for row_id in [r for r in self._first if r not in row_ids]:
            del self._first[row_id]


@dataclass(frozen=True)
class Claimed:
    """A command this gateway marked ``sent`` and must now publish (DB thread -> event loop)."""

    command: Command
    topic: str
    body: bytes


@dataclass(frozen=True)
class Outcome:
    """A command the DB thread resolved by itself: failed, expired, or timed out as an orphan."""

    id: int
    command_id: str | None
    device_uuid: str
    command_type: str
    status: str
    error: str


def _params(row: Any) -> dict[str, Any] | None:
    try:
        params = json.loads(row.payload) if row.payload else {}
    except (TypeError, ValueError):
        return None
    return params if isinstance(params, dict) else None


#: Longest device uuid used in a command topic, and characters no topic level may hold.
MAX_TOPIC_UUID = 64
_TOPIC_UNSAFE = frozenset("/+#\x00")

# The Config App writes these rows, and SQLite stores whatever it is given: a row
# whose columns hold the wrong types is failed with a reason, never allowed to
# raise inside a claim (which would stop every command behind it).


def _text_of(value: Any) -> str:
    return value.strip().lower() if isinstance(value, str) else ""


def _seconds(value: Any, default: float) -> float | None:
    """A column of seconds as a finite number >= 0 (``default`` when NULL); None when malformed."""
    if value is None:
        return default
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _moment(value: Any) -> datetime | None:
    """A timestamp column as naive local time; None when it is not a timestamp.

    On SQLite the column is read as stored (text): a malformed value must fail
    its row, not the query that read every pending row. A value with a UTC
    offset is turned into naive local time, the database's convention.
    """
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is not None:
        value = value.astimezone().replace(tzinfo=None)
    return value


def _topic_safe(uuid: Any) -> bool:
    """Whether a device uuid can name a topic level (the Config App may register anything)."""
    return isinstance(uuid, str) and 0 < len(uuid) <= MAX_TOPIC_UUID and not _TOPIC_UNSAFE.intersection(uuid)


def _commands_table() -> list[Any]:
    """The columns of ``gateway_commands``, timestamps read as stored (parsed by ``_moment``)."""
    return [type_coerce(col, String).label(col.name) if col.name in ("created_at", "sent_at") else col
            for col in gateway_commands.columns]


def _problem(row: Any, params: dict[str, Any] | None) -> str | None:
    """Why a pending row can never be delivered, or None."""
    if params is None:
        return "payload is not a JSON object"
    command_type = _text_of(row.command_type)
    if not command_type:
        return "missing command_type"
    for column in ("timeout_s", "max_age_s"):
        if _seconds(getattr(row, column), 0.0) is None:
            return f"bad {column} {getattr(row, column)!r}: expected a number of seconds"
    if row.created_at is not None and _moment(row.created_at) is None:
        return f"bad created_at {row.created_at!r}: expected a timestamp"
    if row.command_id is not None and not isinstance(row.command_id, str):
        return f"bad command_id {row.command_id!r}: expected text"
    if not _topic_safe(row.device_uuid):
        return f"device uuid {row.device_uuid!r} cannot name a topic"
    if command_type == RELAY:
        problem = _relay_params(params)
        if problem:
            return problem
    if row.device_id is None or row.device_active is False or row.device_active == 0 \
            or row.device_type == GATEWAY_TYPE:
        return f"unknown device {row.device_uuid!r}"
    return None


class CommandFeed:
    """Claims pending commands on the DB thread; every gateway sharing the database runs one.

    A row is claimed by marking it ``sent`` (with this gateway in ``claimed_by``)
    in the same transaction that selected it, *before* it is published: at most
    once, also when several gateways poll together (PostgreSQL skips rows
    another gateway has locked; on SQLite each update is conditional on the row
    still being ``pending``). Rows for offline devices stay ``pending`` until the
    device returns or they outlive their maximum age. Cheap when idle: a max-id
    probe, and a full look only when a row arrived, a device came online, or
    ``RECHECK_S`` passed.
    """

    def __init__(self, gateway_uuid: str, default_timeout_s: float, default_max_age_s: float,
                 deliver: Callable[[list[Claimed], list[Outcome]], None]) -> None:
        self.gateway_uuid = gateway_uuid
        self.default_timeout_s = default_timeout_s
        self.default_max_age_s = default_max_age_s
        self.deliver = deliver
        self.max_id = 0
        self._recheck = True
        self._next_recheck = 0.0
        self._held: set[int] = set()
        self._pending_seen = Sightings()
        self._sent_seen = Sightings()
        self._waiting = False  # rows held, or sent and unresolved: time alone can change them
        #: False while the broker is away: rows stay ``pending`` (they may still expire)
        #: rather than be claimed and handed to a client that cannot send them.
        self.link = True

    def recheck(self) -> None:
        """Look at every pending row on the next poll (a device came online)."""
        self._recheck = True

    def poll(self, conn: Connection) -> float | None:
        """Claim what can be claimed; return RECHECK_S while rows wait for time to pass."""
        top = conn.exec_driver_sql("SELECT max(id) FROM gateway_commands").scalar() or 0
        now = time.monotonic()
        if top > self.max_id or self._recheck or now >= self._next_recheck:
            self._recheck, self._next_recheck = False, now + RECHECK_S
            claimed, outcomes = self.claim(conn)
            # The claim is committed: its rows say ``sent`` whatever happens next,
            # so they are handed over even if the orphan sweep fails.
            try:
                outcomes += self._orphans(conn)
            finally:
                self.max_id = max(self.max_id, top)
                if claimed or outcomes:
                    self.deliver(claimed, outcomes)
        return RECHECK_S if self._waiting else None

    def claim(self, conn: Connection) -> tuple[list[Claimed], list[Outcome]]:
        """Decide every pending row: claim and mark ``sent``, fail, expire, or leave it held.

        Rows for offline devices are read by a query of their own, so however
        many wait for their devices, a new row for an online one is never
        crowded out of the batch.
        """
        c, d = gateway_commands.c, devices.c
        waits = and_(d.id.is_not(None), d.is_active.is_not(False), d.type != GATEWAY_TYPE,
                     or_(d.status.is_(None), d.status != ONLINE))
        base = (
            select(*_commands_table(), d.id.label("device_id"), d.status.label("device_status"),
                   d.is_active.label("device_active"), d.type.label("device_type"))
            .select_from(gateway_commands.outerjoin(devices, d.uuid == c.device_uuid))
            .where(c.status == PENDING).order_by(c.id)
        )
        queries = [base.where(not_(waits)).limit(CLAIM_LIMIT), base.where(waits).limit(HELD_LIMIT)]
        postgres = conn.dialect.name == "postgresql"
        if postgres:  # rows another gateway is claiming right now are skipped, not waited for
            queries = [query.with_for_update(of=gateway_commands, skip_locked=True) for query in queries]
        rows = [row for query in queries for row in conn.execute(query).all()]
        if not rows:
            conn.rollback()
            self._held.clear()
            return [], []
        if not postgres:  # SQLite: the writes below start a fresh transaction (no stale snapshot)
            conn.rollback()
        claimed: list[Claimed] = []
        outcomes: list[Outcome] = []
        held: set[int] = set()
        now = local_now()
        now_mono = time.monotonic()
        self._pending_seen.keep_only({row.id for row in rows})
        for row in rows:
            params = _params(row)
            problem = _problem(row, params)
            max_age = _seconds(row.max_age_s, self.default_max_age_s) or 0.0
            created_at = _moment(row.created_at)
            wall_age_s = (now - created_at).total_seconds() if created_at is not None else 0.0
            future = wall_age_s < -CLOCK_SKEW_S
            expired = future or self._pending_seen.age_s(row.id, wall_age_s, now_mono) > max_age
            online = row.device_status == ONLINE
            if problem is not None:
                status, error = FAILED, problem
            elif expired:
                status = EXPIRED
                error = ("created_at is in the future: its age is unknown (the clock changed?)" if future else
                         "older than its maximum age" if online else
                         "device offline past the command's maximum age")
            elif not online or not self.link:
                if row.id not in self._held:
                    log.info("command=%s device=%s %s: held", row.command_id or row.id, row.device_uuid,
                             "offline" if not online else "broker unreachable")
                held.add(row.id)
                continue
            else:
                sent = self._mark_sent(conn, row, params or {}, now)
                if sent is not None:
                    claimed.append(sent)
                continue
            if _finish_row(conn, row.id, (PENDING,), status, error):
                outcomes.append(Outcome(row.id, _text_or_none(row.command_id), str(row.device_uuid),
                                        _text_of(row.command_type), status, error))
        conn.commit()
        self._held = held
        return claimed, outcomes

    def _mark_sent(self, conn: Connection, row: Any, params: dict[str, Any], now: datetime) -> Claimed | None:
        command = _command(row, params, self.default_timeout_s, self.default_max_age_s, now)
        command.status, command.sent_at = SENT, now
        topic, payload = build_message(command, self.gateway_uuid)
        result = conn.execute(update(gateway_commands).where(
            gateway_commands.c.id == row.id, gateway_commands.c.status == PENDING).values(
            status=SENT, command_id=command.command_id, topic=topic, sent_at=now,
            claimed_by=self.gateway_uuid, attempts=func.coalesce(gateway_commands.c.attempts, 0) + 1))
        if result.rowcount != 1:  # another gateway was faster (SQLite)
            return None
        return Claimed(command, topic, envelope.dumps(payload))

    def _orphans(self, conn: Connection) -> list[Outcome]:
        """Time out ``sent`` rows whose sender is gone (one gateway sweeps at a time)."""
        if conn.dialect.name == "postgresql":
            if not conn.exec_driver_sql(f"SELECT pg_try_advisory_xact_lock({SWEEP_LOCK})").scalar():
                conn.rollback()
                self._waiting = True  # another gateway sweeps; look again soon all the same
                return []
        c = gateway_commands.c
        sent_col = type_coerce(c.sent_at, String).label("sent_at")
        rows = conn.execute(select(c.id, c.command_id, c.device_uuid, c.command_type, c.timeout_s, sent_col)
                            .where(c.status == SENT)).all()
        self._waiting = bool(rows or self._held)
        now = local_now()
        now_mono = time.monotonic()
        self._sent_seen.keep_only({row.id for row in rows})
        overdue = []
        for row in rows:
            timeout_s = self._timeout_of(row)
            sent_at = _moment(row.sent_at)
            wall_age_s = (now - sent_at).total_seconds() if sent_at is not None else float("inf")
            if self._sent_seen.age_s(row.id, wall_age_s, now_mono) > timeout_s + ORPHAN_GRACE_S:
                overdue.append((row, timeout_s))
        if not overdue or conn.dialect.name != "postgresql":
            conn.rollback()  # SQLite: the updates start a fresh transaction
        outcomes = []
        for row, timeout_s in overdue:
            error = f"no confirmation within {timeout_s:g}s (sender gone)"
            if _finish_row(conn, row.id, (SENT,), TIMEOUT, error):
                outcomes.append(Outcome(row.id, _text_or_none(row.command_id), str(row.device_uuid),
                                        _text_of(row.command_type), TIMEOUT, error))
        conn.commit()
        return outcomes


    def _timeout_of(self, row: Any) -> float:
        return _seconds(row.timeout_s, self.default_timeout_s) or self.default_timeout_s


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _command(row: Any, params: dict[str, Any], default_timeout_s: float, default_max_age_s: float,
             now: datetime) -> Command:
    """The command a row describes; columns already checked by ``_problem`` (or defaulted)."""
    return Command(
        id=row.id, command_id=_text_or_none(row.command_id) or str(uuidlib.uuid4()),
        device_uuid=str(row.device_uuid), command_type=_text_of(row.command_type), params=params,
        qos=row.qos if row.qos in (0, 1, 2) and not isinstance(row.qos, bool) else DEFAULT_QOS,
        timeout_s=_seconds(row.timeout_s, default_timeout_s) or default_timeout_s,
        max_age_s=_seconds(row.max_age_s, default_max_age_s) or 0.0,
        created_at=_moment(row.created_at) or now,
    )


def _finish_row(conn: Connection, row_id: int, only_from: tuple[str, ...], status: str, error: str | None,
                response: dict[str, Any] | None = None) -> bool:
    """Record an outcome unless the row already has one; True when this call recorded it."""
    values: dict[str, Any] = {"status": status, "completed_at": local_now(), "error_message": error}
    if response is not None:
        values["response_payload"] = json.dumps(response, ensure_ascii=False)
    result = conn.execute(update(gateway_commands).where(
        gateway_commands.c.id == row_id, gateway_commands.c.status.in_(only_from)).values(**values))
    return bool(result.rowcount == 1)


def mark_done(conn: Connection, row_id: int, status: str, error: str | None,
              response: dict[str, Any] | None) -> bool:
    """Resolve a ``sent`` command; False when it was resolved already (elsewhere, or as an orphan)."""
    return _finish_row(conn, row_id, (SENT,), status, error, response)


def load_sent(conn: Connection, gateway_uuid: str) -> list[Any]:
    """Rows this gateway left ``sent`` before a restart (tracked to their timeout, never re-sent)."""
    c = gateway_commands.c
    return conn.execute(select(*_commands_table()).where(
        c.status == SENT, or_(c.claimed_by == gateway_uuid, c.claimed_by.is_(None))).order_by(c.id)).all()


def resolve_response(conn: Connection, device_uuid: str, command_id: str, status: str, error: str | None,
                     response: dict[str, Any]) -> Outcome | None:
    """A response that reached this gateway for a command another gateway sent (shared subscriptions)."""
    c = gateway_commands.c
    row = conn.execute(select(c.id, c.command_type).where(
        c.command_id == command_id, c.device_uuid == device_uuid, c.status == SENT)).first()
    if row is None or not _finish_row(conn, row.id, (SENT,), status, error, response):
        return None
    return Outcome(row.id, command_id, device_uuid, _text_of(row.command_type), status, error or "")


def confirm_relays(conn: Connection, device_uuid: str, states: dict[int, bool],
                   gateway_uuid: str) -> list[Outcome]:
    """Relay states that reached this gateway confirm relay commands other gateways sent.

    Another gateway's previous relay states are unknown here, so a toggle is
    confirmed by the first state report of its channels.
    """
    c = gateway_commands.c
    rows = conn.execute(select(c.id, c.command_id, c.payload).where(
        c.device_uuid == device_uuid, c.status == SENT, c.command_type == RELAY,
        or_(c.claimed_by.is_(None), c.claimed_by != gateway_uuid))).all()
    outcomes = []
    for row in rows:
        params = _params(row) or {}
        channels = list(states) if params.get("channel") == "all" else [params.get("channel")]
        if not channels or any(ch not in states for ch in channels):
            continue
        action = params.get("command")
        if action != "toggle" and not all(states[ch] == (action == "on") for ch in channels):
            continue
        response = {"channels": {str(ch): states[ch] for ch in channels}}
        if _finish_row(conn, row.id, (SENT,), ACKED, None, response):
            outcomes.append(Outcome(row.id, row.command_id, device_uuid, RELAY, ACKED, ""))
    return outcomes


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
    """Publishes what the feed claims and tracks each command to its outcome.

    With ``shared`` (several gateways behind one shared subscription) a device's
    answer may reach another gateway than the sender: answers and relay states
    this gateway cannot match are then resolved in the database, and every
    outcome is recorded only if no other gateway recorded one first.
    """

    def __init__(self, db: Database, reporter: ErrorReporter, publish: Publish, gateway_uuid: str,
                 default_timeout_s: float, default_max_age_s: float, shared: bool = False) -> None:
        self.db = db
        self.reporter = reporter
        self.publish = publish
        self.gateway_uuid = gateway_uuid
        self.shared = shared
        self._loop = asyncio.get_running_loop()
        self._outstanding: dict[str, Command] = {}  # command_id -> sent, awaiting confirmation
        # Last known relay states, device -> {channel: state}, for toggle confirmations;
        # least recently updated boards are forgotten past MAX_TRACKED_BOARDS.
        self._relay_states: OrderedDict[str, dict[int, bool]] = OrderedDict()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.outcomes: dict[str, int] = {}
        #: Called with (device uuid, response) for a response no command of ours matches.
        self.on_unknown: Callable[[str, dict[str, Any]], None] | None = None
        #: Whether the broker connection is up, and how to take back a publish the
        #: client still holds (set by the gateway; see ``link_changed``).
        self.link_up: Callable[[], bool] = lambda: True
        self.withdraw: Callable[[Any], bool] = lambda info: False
        #: Claimed while the broker was away: published when it is back, unless timed out first.
        self._unpublished: dict[str, Claimed] = {}
        self.feed = CommandFeed(gateway_uuid, default_timeout_s, default_max_age_s, self._from_db_thread)

    # -- intake ---------------------------------------------------------------------------

    async def resume(self) -> None:
        """Track rows this gateway left ``sent`` to their timeout; they are never re-sent."""
        for row in await self.db.call(load_sent, self.gateway_uuid):
            command = _command(row, _params(row) or {}, self.feed.default_timeout_s,
                               self.feed.default_max_age_s, local_now())
            command.status, command.sent_at = SENT, _moment(row.sent_at)
            sent_at = command.sent_at or command.created_at
            remaining = command.timeout_s - (local_now() - sent_at).total_seconds()
            # A clock set back since (a reboot without a real-time clock) must not
            # stretch the wait past the timeout itself.
            self._track(command, min(command.timeout_s, max(0.0, remaining)))

    def _from_db_thread(self, claimed: list[Claimed], outcomes: list[Outcome]) -> None:
        self._loop.call_soon_threadsafe(self._accept, claimed, outcomes)

    def _accept(self, claimed: list[Claimed], outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            self._count(outcome)
        for item in claimed:
            self._track(item.command, item.command.timeout_s)
            self._spawn(self._publish(item))

    def link_changed(self, up: bool) -> None:
        """The broker connection came up or went down.

        While it is down nothing is claimed; what was claimed just before waits
        here, never in the client's queue, and is published on the way back up
        only if its timeout has not passed.
        """
        self.feed.link = up
        if not up:
            return
        waiting, self._unpublished = self._unpublished, {}
        for item in waiting.values():
            if self._outstanding.get(item.command.command_id) is item.command:
                self._spawn(self._publish(item))
        self.feed.recheck()
        self.db.request_poll()

    def device_online(self, uuid: str) -> None:
        """A device came back: its held commands are looked at on the next poll."""
        self.feed.recheck()
        self.db.request_poll()

    def _track(self, command: Command, timeout_s: float) -> None:
        self._outstanding[command.command_id] = command
        command.deadline = self._loop.time() + timeout_s
        command.timer = self._loop.call_later(timeout_s, self._timed_out, command)

    async def _publish(self, item: Claimed) -> None:
        """Publish a claimed command while its timeout has not passed, with that much time to live.

        The broker discards it once the remaining time is over (Message Expiry
        Interval), and the timeout takes it back from the client if the broker
        never took it: a command never reaches a device after its row says so.
        """
        command = item.command
        for attempt in range(1, MAX_PUBLISH_ATTEMPTS + 1):
            if self._outstanding.get(command.command_id) is not command:
                return  # resolved meanwhile (timed out, or answered)
            if not self.link_up():
                self._unpublished[command.command_id] = item
                log.info("command=%s device=%s waits for the broker", command.command_id, command.device_uuid)
                return
            remaining_s = command.deadline - self._loop.time()
            if remaining_s <= 0:
                return  # its timer is due: nothing was published
            info = self.publish(item.topic, item.body, command.qos, False, remaining_s)
            if info.rc in (0, 4):  # sent, or held by the client over a reconnect (withdrawn at the timeout)
                command.info = info
                log.info("command=%s device=%s sent on %s", command.command_id, command.device_uuid, item.topic)
                return
            await asyncio.sleep(PUBLISH_RETRY_S * attempt)
        self._finish(command, FAILED, f"could not publish after {MAX_PUBLISH_ATTEMPTS} attempts")

    # -- correlation --------------------------------------------------------------------------

    def on_response(self, device_uuid: str, data: dict[str, Any]) -> None:
        """A ``response`` from a device: resolve the command it answers."""
        command_id = str(data.get("command_id"))
        failed = data.get("success") is False
        error = (str(data.get("error_message") or "device reported failure")) if failed else None
        command = self._outstanding.get(command_id)
        if command is not None and command.device_uuid == device_uuid:
            self._finish(command, FAILED if failed else ACKED, error, data)
        elif self.shared and isinstance(data.get("command_id"), str) and len(self._tasks) < MAX_PENDING_LOOKUPS:
            resolved = self.db.call(resolve_response, device_uuid, command_id, FAILED if failed else ACKED,
                                    error, data)
            self._spawn(self._resolved_elsewhere(device_uuid, data, resolved))
        elif self.on_unknown is not None:
            self.on_unknown(device_uuid, data)

    async def _resolved_elsewhere(self, device_uuid: str, data: dict[str, Any],
                                  resolved: asyncio.Future[Outcome | None]) -> None:
        outcome = await resolved
        if outcome is not None:
            self._count(outcome)
        elif self.on_unknown is not None:
            self.on_unknown(device_uuid, data)

    def on_relay_states(self, device_uuid: str, states: dict[int, bool]) -> None:
        """Relay states seen on ``relays/state`` or a relay event confirm pending relay commands."""
        for command in [c for c in self._outstanding.values()
                        if c.device_uuid == device_uuid and c.command_type == RELAY]:
            channel, action = command.params["channel"], command.params["command"]
            channels = list(states) if channel == "all" else [channel]
            if not channels or any(ch not in states for ch in channels):
                continue
            if action == "toggle":
                known = self._relay_states.get(device_uuid, {})
                before = [known.get(ch) for ch in channels]
                confirmed = all(prev is None or states[ch] != prev for ch, prev in zip(channels, before))
            else:
                confirmed = all(states[ch] == (action == "on") for ch in channels)
            if confirmed:
                self._finish(command, ACKED, None, {"channels": {str(ch): states[ch] for ch in channels}})
        self._relay_states.setdefault(device_uuid, {}).update(states)
        self._relay_states.move_to_end(device_uuid)
        while len(self._relay_states) > MAX_TRACKED_BOARDS:
            self._relay_states.popitem(last=False)
        if self.shared:
            self._spawn(self._confirmed_elsewhere(
                self.db.call(confirm_relays, device_uuid, states, self.gateway_uuid)))

    async def _confirmed_elsewhere(self, confirmed: asyncio.Future[list[Outcome]]) -> None:
        for outcome in await confirmed:
            self._count(outcome)

    def _timed_out(self, command: Command) -> None:
        if self._outstanding.get(command.command_id) is command:
            self._finish(command, TIMEOUT, f"no confirmation within {command.timeout_s:g}s")

    def _finish(self, command: Command, status: str, error: str | None,
                response: dict[str, Any] | None = None) -> None:
        self._outstanding.pop(command.command_id, None)
        self._unpublished.pop(command.command_id, None)
        if command.timer is not None:
            command.timer.cancel()
        if status == TIMEOUT and command.info is not None and self.withdraw(command.info):
            log.info("command=%s device=%s timed out before the broker took it: withdrawn",
                     command.command_id, command.device_uuid)
        command.status = status
        # Queued now, so that a barrier queued after this call finds it done.
        recorded = self.db.call(mark_done, command.id, status, error, response)
        self._spawn(self._record(command, status, error, recorded))

    async def _record(self, command: Command, status: str, error: str | None,
                      recorded: asyncio.Future[bool]) -> None:
        if not await recorded:
            log.debug("command=%s already resolved elsewhere", command.command_id)
            return
        self._count(Outcome(command.id, command.command_id, command.device_uuid, command.command_type,
                            status, error or ""))

    def _count(self, outcome: Outcome) -> None:
        """Log, count and (for timeouts) report an outcome this gateway recorded."""
        self.outcomes[outcome.status] = self.outcomes.get(outcome.status, 0) + 1
        level = logging.INFO if outcome.status == ACKED else logging.WARNING
        log.log(level, "command=%s device=%s %s%s", outcome.command_id or outcome.id, outcome.device_uuid,
                outcome.status, f": {outcome.error}" if outcome.error else "")
        if outcome.status == TIMEOUT:
            self.reporter.report("ERR_003", f"Command {outcome.command_id} timed out", outcome.device_uuid,
                                 command_id=outcome.command_id, command_type=outcome.command_type)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout_s: float) -> None:
        """Let outcomes being recorded reach the database (shutdown)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout_s)

    def stop(self) -> None:
        """Cancel timers; ``sent`` rows stay for the next run (or another gateway) to resolve."""
        for command in self._outstanding.values():
            if command.timer is not None:
                command.timer.cancel()
