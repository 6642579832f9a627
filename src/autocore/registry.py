"""Device registry and presence: who exists, who is online, and when each was last seen.

The registry lives on the event-loop thread. Known devices sit in an LRU cache,
so a message from a known device costs no query; a miss asks the database once
(the device may have been registered by the Config App over HTTP) and a miss
there is remembered for a while, so unknown uuids cannot hammer the database.
Status changes are written once per transition (no flapping); ``last_seen`` is
written in batches every few seconds, never once per message. Every clock used
for timeouts is monotonic; the database gets naive local time (D11, D16).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, insert, or_, select, update
from sqlalchemy.engine import Connection

from autocore.events import write_event
from autocore.ratelimit import RateLimiter
from autocore.schema import SWEEP_LOCK, devices, local_now
from autocore.storage import Database
from autocore.throttle import Throttle

log = logging.getLogger(__name__)

ONLINE = "online"
OFFLINE = "offline"
#: ``devices.type`` of gateway rows (this gateway and its peers): never tracked as devices.
GATEWAY_TYPE = "gateway"
#: How often buffered last_seen times are written: a fifth of the device timeout,
#: within these bounds. Each write is a commit of its own that rewrites the devices
#: table's pages; every 5 s it was 70 B of SD-card wear per stored reading at 3 msg/s.
LAST_SEEN_WRITE_MIN_S = 5.0
LAST_SEEN_WRITE_MAX_S = 60.0


def last_seen_write_s(device_timeout_s: float) -> float:
    """Interval of last_seen writes for a device timeout: presence stays well inside it."""
    return min(LAST_SEEN_WRITE_MAX_S, max(LAST_SEEN_WRITE_MIN_S, device_timeout_s / 5))
#: How long a uuid missing from the database is remembered as unknown.
UNKNOWN_TTL_S = 60.0
#: Database lookups of uncached uuids allowed per second (and in a burst): a
#: flood of made-up uuids must not turn into a flood of queries.
LOOKUPS_PER_S = 200.0
LOOKUP_BURST = 200
#: An announce identical to the device's last one within this window, while the
#: device is online, only refreshes its presence: QoS 1 announces are never rate
#: limited, and each one used to cost a device update and an event row.
ANNOUNCE_REPEAT_S = 60.0
#: New device rows an announce may create, per second and in a burst: a vehicle's
#: modules all announce at first boot, while a flood of made-up uuids must not grow
#: the devices table without bound.
NEW_DEVICES_PER_S = 10 / 60
NEW_DEVICE_BURST = 100
#: What upsert_announced returns when the budget refused a new device.
NOT_CREATED = 0
#: Largest announce payload copied into its event row, bytes of JSON; a bigger
#: one is summarised (up to 64 KiB each would otherwise land in event_logs).
ANNOUNCE_EVENT_MAX_BYTES = 2048
#: Largest capabilities list stored in devices.capabilities_json, bytes of JSON.
CAPABILITIES_MAX_BYTES = 4096
_MAC = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")
#: A device's warning (deactivated, mac owned by another) is logged once per window, s.
LOG_WINDOW_S = 60.0
#: Warnings logged by database jobs (one thread).
_DB_THREAD_LOGS = Throttle(LOG_WINDOW_S)
#: ASCII control characters: PostgreSQL refuses NUL in text, and none belongs in a device row.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_IPV4 = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")


@dataclass
class Device:
    """What the gateway knows of one device."""

    id: int
    uuid: str
    type: str
    status: str
    last_seen_monotonic: float  # when its last message arrived (wall time derived when written)
    last_seen_dirty: bool = False  # last_seen not written to the database yet


# -- database jobs (run on the DB thread) --------------------------------------


def _wall_time(monotonic: float) -> datetime:
    """Naive local wall time of a monotonic instant (no clock read per message)."""
    return local_now() - timedelta(seconds=time.monotonic() - monotonic)


def _row_to_device(row: Any, now_mono: float) -> Device:
    return Device(id=row.id, uuid=row.uuid, type=row.type, status=row.status or OFFLINE,
                  last_seen_monotonic=now_mono)


def load_active(conn: Connection, limit: int) -> list[Any]:
    query = select(devices.c.id, devices.c.uuid, devices.c.type, devices.c.status, devices.c.last_seen)
    return list(conn.execute(query.where(devices.c.is_active.is_not(False)).limit(limit)))


def find_active(conn: Connection, uuid: str) -> Any:
    query = select(devices.c.id, devices.c.uuid, devices.c.type, devices.c.status, devices.c.last_seen)
    return conn.execute(query.where(devices.c.uuid == uuid, devices.c.is_active.is_not(False))).first()


def _text(value: Any, limit: int) -> str | None:
    """A device-supplied string fit for a VARCHAR(limit) column: controls removed, cut to size."""
    return _CONTROL.sub("", value)[:limit] or None if isinstance(value, str) and value else None


def _capabilities(value: Any) -> str:
    """The capabilities list as JSON, cut to CAPABILITIES_MAX_BYTES whole entries."""
    kept: list[str] = []
    size = 2
    for item in value if isinstance(value, list) else []:
        entry = json.dumps(item, ensure_ascii=False)
        size += len(entry.encode()) + 2
        if size > CAPABILITIES_MAX_BYTES:
            break
        kept.append(item)
    return json.dumps(kept, ensure_ascii=False)


def _announce_event(data: dict[str, Any]) -> Any:
    """What the announce's event row holds: the payload, or a summary when it is large."""
    text = json.dumps(data, ensure_ascii=False, default=str)
    if len(text.encode()) <= ANNOUNCE_EVENT_MAX_BYTES:
        return data
    return {"truncated": True, "bytes": len(text.encode()),
            "device_type": _text(data.get("device_type"), 50),
            "firmware_version": _text(data.get("firmware_version"), 20)}


#: Announce fields stored in the device row: an announce repeating them changes nothing.
_STORED_FIELDS = ("device_type", "firmware_version", "capabilities", "ip_address", "mac_address",
                  "hardware_revision", "hardware_version")


def _announce_digest(data: dict[str, Any]) -> bytes:
    stored = [data.get(name) for name in _STORED_FIELDS]
    return hashlib.blake2b(json.dumps(stored, default=str).encode(), digest_size=16).digest()


def upsert_announced(conn: Connection, uuid: str, data: dict[str, Any], create: bool = True) -> int | None:
    """Create or update the device row of an announce; None if the row is soft-deleted.

    With ``create`` False an announce of a uuid not in the table creates nothing
    and returns NOT_CREATED (the new-device budget is spent).
    """
    now = local_now()
    device_type = (_text(data["device_type"].strip().lower(), 50) or "").strip() or "unknown"
    fields: dict[str, Any] = {
        "type": device_type,
        "firmware_version": _text(data.get("firmware_version"), 20),
        "capabilities_json": _capabilities(data.get("capabilities", [])),
        "status": ONLINE,
        "last_seen": now,
        "updated_at": now,
    }
    ip = data.get("ip_address")
    if isinstance(ip, str) and _IPV4.match(ip):
        fields["ip_address"] = ip
    hardware = _text(data.get("hardware_revision") or data.get("hardware_version"), 20)
    if hardware:
        fields["hardware_version"] = hardware
    mac = data.get("mac_address")
    if isinstance(mac, str) and _MAC.match(mac):
        owner = conn.execute(select(devices.c.uuid).where(devices.c.mac_address == mac.upper())).scalar()
        if owner is None or owner == uuid:
            fields["mac_address"] = mac.upper()
        elif _DB_THREAD_LOGS.allow((uuid, "mac_owned")):
            log.warning("device=%s announces mac %s owned by %s; mac not stored", uuid, mac, owner)
    existing = conn.execute(
        select(devices.c.id, devices.c.is_active).where(devices.c.uuid == uuid)
    ).first()
    if existing is not None:
        if existing.is_active is False or existing.is_active == 0:
            return None
        conn.execute(update(devices).where(devices.c.id == existing.id).values(**fields))
        device_id = int(existing.id)
    elif not create:
        return NOT_CREATED
    else:
        result = conn.execute(insert(devices).values(
            uuid=uuid, name=f"Device {device_type}"[:100], created_at=now, is_active=True,
            configuration_json="{}", **fields,
        ))
        device_id = int(result.inserted_primary_key[0])
    write_event(conn, "device", uuid, "announce", payload=_announce_event(data))
    return device_id


def set_status(conn: Connection, device_id: int, uuid: str, status: str,
               seen_at: datetime | None, reason: str | None) -> bool:
    """Write a status transition and its event, unless the row already has that status.

    Conditional, so that gateways sharing the database (or a retry) record each
    transition once.
    """
    values: dict[str, Any] = {"status": status, "updated_at": local_now()}
    if seen_at is not None:
        values["last_seen"] = seen_at
    changed = conn.execute(update(devices).where(
        devices.c.id == device_id, or_(devices.c.status.is_(None), devices.c.status != status)).values(**values))
    if changed.rowcount != 1:
        if seen_at is not None:
            conn.execute(update(devices).where(devices.c.id == device_id).values(last_seen=seen_at))
        return False
    payload = {"reason": reason} if reason else None
    write_event(conn, "device", uuid, status, payload=payload)
    return True


def write_last_seen_shared(conn: Connection, rows: list[tuple[int, datetime]]) -> list[str]:
    """``last_seen`` of devices heard here, and the online transitions they imply (shared mode).

    Another gateway may have timed a device out while its messages reached this
    one, so every device heard is set online where it is not, and an event is
    written for each row that changed. Returns the uuids that came online.
    """
    write_last_seen(conn, rows)
    now = local_now()
    came_online = conn.execute(
        update(devices).where(devices.c.id.in_([device_id for device_id, _ in rows]),
                              or_(devices.c.status.is_(None), devices.c.status != ONLINE),
                              devices.c.type != GATEWAY_TYPE)
        .values(status=ONLINE, updated_at=now).returning(devices.c.uuid)).scalars().all()
    for uuid in came_online:
        write_event(conn, "device", uuid, ONLINE, payload={"reason": "seen"})
    return list(came_online)


#: Devices whose ``last_seen`` the shared-mode sweep remembers (the rest start over).
SWEEP_MEMORY = 100_000


class LastSeenWatch:
    """When this gateway last saw each device's ``last_seen`` change, by its own monotonic clock.

    Owned by the database thread (only sweeps touch it). Gateways sharing a
    database do not share a clock: a Pi starts after a power cut with an old
    time until NTP jumps it forward, and comparing another host's ``last_seen``
    with this host's wall clock then times out devices that are talking, or
    keeps silent ones online for hours. A value nobody rewrote for the device
    timeout, measured here, means silence whatever the clocks say.
    """

    def __init__(self) -> None:
        self.values: OrderedDict[str, tuple[Any, float]] = OrderedDict()

    def unchanged_for(self, uuid: str, last_seen: Any, now: float) -> float:
        """Seconds ``last_seen`` has kept this value (0 when it just changed or is new)."""
        known = self.values.get(uuid)
        if known is None or known[0] != last_seen:
            self.values[uuid] = (last_seen, now)
            self.values.move_to_end(uuid)
            while len(self.values) > SWEEP_MEMORY:
                self.values.popitem(last=False)
            return 0.0
        return now - known[1]


def sweep_offline(conn: Connection, timeout_s: float,
                  watch: LastSeenWatch | None = None) -> tuple[list[str], dict[str, str]]:
    """Time out silent devices from the database's ``last_seen`` (shared mode).

    Every gateway writes the ``last_seen`` of the devices it hears, so the
    database is the one place that knows who went silent: a device is timed
    out once its ``last_seen`` has not changed for the timeout (plus the write
    interval) by this gateway's monotonic clock, never by comparing wall
    clocks of different hosts (see :class:`LastSeenWatch`). On PostgreSQL one
    gateway sweeps at a time (advisory lock); the update is conditional anyway.
    Returns the uuids that went offline and every device's current status.
    """
    watch = watch if watch is not None else LastSeenWatch()
    now = time.monotonic()
    rows = conn.execute(select(devices.c.uuid, devices.c.status, devices.c.last_seen)
                        .where(devices.c.type != GATEWAY_TYPE)).all()
    statuses = {row.uuid: row.status or OFFLINE for row in rows}
    quiet_s = timeout_s + last_seen_write_s(timeout_s)
    silent = [row for row in rows
              if watch.unchanged_for(row.uuid, row.last_seen, now) > quiet_s and row.status == ONLINE]
    went_offline: list[str] = []
    if silent and (conn.dialect.name != "postgresql" or conn.exec_driver_sql(
            f"SELECT pg_try_advisory_xact_lock({SWEEP_LOCK})").scalar()):
        for row in silent:
            same = devices.c.last_seen.is_(None) if row.last_seen is None else devices.c.last_seen == row.last_seen
            if conn.execute(update(devices).where(devices.c.uuid == row.uuid, devices.c.status == ONLINE, same)
                            .values(status=OFFLINE, updated_at=local_now())).rowcount == 1:
                went_offline.append(row.uuid)
                statuses[row.uuid] = OFFLINE
                write_event(conn, "device", row.uuid, OFFLINE, payload={"reason": "timeout"})
    return went_offline, statuses


def write_last_seen(conn: Connection, rows: list[tuple[int, datetime]]) -> None:
    statement = update(devices).where(devices.c.id == bindparam("b_id")).values(
        last_seen=bindparam("b_seen"))
    conn.execute(statement, [{"b_id": device_id, "b_seen": seen} for device_id, seen in rows])


def register_gateway(conn: Connection, uuid: str, version: str) -> int:
    """Create or refresh the gateway's own device row, online."""
    now = local_now()
    existing = conn.execute(select(devices.c.id).where(devices.c.uuid == uuid)).scalar()
    if existing is not None:
        conn.execute(update(devices).where(devices.c.id == existing).values(
            status=ONLINE, last_seen=now, updated_at=now, firmware_version=version[:20]))
        return int(existing)
    result = conn.execute(insert(devices).values(
        uuid=uuid, name="AutoCore Gateway", type=GATEWAY_TYPE, firmware_version=version[:20],
        ip_address="127.0.0.1", status=ONLINE, last_seen=now, configuration_json="{}",
        capabilities_json="[]", is_active=True, created_at=now, updated_at=now,
    ))
    return int(result.inserted_primary_key[0])


def mark_gateway_offline(conn: Connection, uuid: str) -> None:
    now = local_now()
    conn.execute(update(devices).where(devices.c.uuid == uuid).values(
        status=OFFLINE, last_seen=now, updated_at=now))


# -- the registry (event-loop thread) ------------------------------------------


class Registry:
    """LRU cache of known devices plus presence tracking."""

    def __init__(self, db: Database, cache_size: int, device_timeout_s: float,
                 gateway_uuid: str, shared: bool = False) -> None:
        self.db = db
        self.gateway_uuid = gateway_uuid
        #: Several gateways split the traffic: presence is decided in the database.
        self.shared = shared
        self.cache_size = cache_size
        self.device_timeout_s = device_timeout_s
        self._cache: OrderedDict[str, Device] = OrderedDict()
        self._unknown: OrderedDict[str, float] = OrderedDict()
        self._lookups: dict[str, asyncio.Future[Device | None]] = {}
        self._peers: set[str] = set()  # uuids of other gateways' rows
        self._last_seen_flushed = time.monotonic()
        self._lookup_budget = RateLimiter(LOOKUPS_PER_S, LOOKUP_BURST)
        self._new_devices = RateLimiter(NEW_DEVICES_PER_S, NEW_DEVICE_BURST)
        self.devices_refused = 0  # announces that would have created a device past the budget
        self.lookups_done = 0
        self.lookups_refused = 0
        #: uuid -> (digest of its last announce, monotonic time), bounded like the cache.
        self._announced: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self.announces_coalesced = 0
        self._log_throttle = Throttle(LOG_WINDOW_S)
        self._last_seen_watch = LastSeenWatch()  # used by shared-mode sweeps, on the database thread
        #: Called with a device uuid whenever that device goes online.
        self.on_online: Callable[[str], None] | None = None

    async def load(self) -> None:
        """Fill the cache with active devices so known devices never cost a query."""
        now = time.monotonic()
        for row in await self.db.call(load_active, self.cache_size):
            if row.type == GATEWAY_TYPE:
                self._peers.add(row.uuid)
            elif not self.is_gateway(row.uuid):
                self._remember(_row_to_device(row, now))

    def is_gateway(self, uuid: str) -> bool:
        """Gateways are not tracked as devices: this one, peers named ``gateway-*`` (D17), and
        every uuid the database lists as a gateway (the other members of a shared group)."""
        return uuid == self.gateway_uuid or uuid.startswith("gateway-") or uuid in self._peers

    def _remember(self, device: Device) -> Device:
        self._cache[device.uuid] = device
        self._cache.move_to_end(device.uuid)
        self._unknown.pop(device.uuid, None)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return device

    def get(self, uuid: str) -> Device | None:
        device = self._cache.get(uuid)
        if device is not None:
            self._cache.move_to_end(uuid)
        return device

    def __len__(self) -> int:
        return len(self._cache)

    def known_unknown(self, uuid: str) -> bool:
        """True when ``uuid`` was recently looked up and not found."""
        expiry = self._unknown.get(uuid)
        if expiry is None:
            return False
        if expiry < time.monotonic():
            del self._unknown[uuid]
            return False
        return True

    def looking_up(self, uuid: str) -> bool:
        """True while a database look-up of ``uuid`` is under way."""
        return uuid in self._lookups

    async def resolve(self, uuid: str) -> Device | None:
        """Cached device, else one (shared) database lookup; None when unknown."""
        device = self.get(uuid)
        if device is not None or self.known_unknown(uuid):
            return device
        pending = self._lookups.get(uuid)
        if pending is None:
            if not self._lookup_budget.allow("lookups"):
                self.lookups_refused += 1  # not remembered: a real device is found once the flood ends
                return None
            pending = asyncio.ensure_future(self._lookup(uuid))
            self._lookups[uuid] = pending
        return await asyncio.shield(pending)

    async def _lookup(self, uuid: str) -> Device | None:
        try:
            row = await self.db.call(find_active, uuid)
        finally:
            self._lookups.pop(uuid, None)
        self.lookups_done += 1
        if row is not None and row.type == GATEWAY_TYPE:
            self._peers.add(uuid)
        if row is None or self.is_gateway(uuid):
            self._unknown[uuid] = time.monotonic() + UNKNOWN_TTL_S
            while len(self._unknown) > self.cache_size:
                self._unknown.popitem(last=False)
            return None
        return self._remember(_row_to_device(row, time.monotonic()))

    async def announce(self, uuid: str, data: dict[str, Any]) -> Device | None:
        """Upsert an announced device and mark it online.

        A repeat of the device's last announce within ANNOUNCE_REPEAT_S, while it
        is online, only refreshes its presence (no database write).
        """
        digest = _announce_digest(data)
        now_mono = time.monotonic()
        device = self.get(uuid)
        last = self._announced.get(uuid)
        if device is not None and device.status == ONLINE and last is not None and last[0] == digest \
                and now_mono - last[1] < ANNOUNCE_REPEAT_S:
            self.announces_coalesced += 1
            self.seen(device)
            return device
        create = device is not None or self._new_devices.allow("")
        device_id = await self.db.call(upsert_announced, uuid, data, create)
        if device_id == NOT_CREATED:
            self.devices_refused += 1
            if self._log_throttle.allow(("", "new_device_budget")):
                log.warning("device=%s announced, but more new devices announced than %d at once and %g a "
                            "minute: not created (%d refused so far)", uuid, NEW_DEVICE_BURST,
                            NEW_DEVICES_PER_S * 60, self.devices_refused)
            return None
        if device_id is None:
            if self._log_throttle.allow((uuid, "deactivated")):
                log.warning("device=%s announced but is deactivated in the database; ignored", uuid)
            return None
        device = self.get(uuid)
        now_mono = time.monotonic()
        was_online = device is not None and device.status == ONLINE
        if device is None:
            device = self._remember(Device(device_id, uuid, data["device_type"].strip().lower(),
                                           ONLINE, now_mono))
        else:
            if not was_online:
                log.info("device=%s online (announce)", uuid)
            device.id, device.status = device_id, ONLINE
            device.last_seen_monotonic = now_mono
            device.last_seen_dirty = False
        self.db.post_plain(self.db.remember_device, uuid, device_id)
        self._announced[uuid] = (digest, now_mono)
        self._announced.move_to_end(uuid)
        while len(self._announced) > self.cache_size:
            self._announced.popitem(last=False)
        if not was_online and self.on_online is not None:
            self.on_online(uuid)
        return device

    def seen(self, device: Device, touch: bool = True) -> None:
        """A message from ``device`` arrived: refresh presence, go online if it was not."""
        if touch:
            device.last_seen_monotonic = time.monotonic()  # wall time is derived when written
            device.last_seen_dirty = True
        if device.status != ONLINE:
            self.set_status(device, ONLINE, None)

    def set_status(self, device: Device, status: str, reason: str | None) -> None:
        """Record a status transition once, in memory and in the database.

        With several gateways this one's memory may be stale (another gateway
        saw the device come back), so the database's conditional update decides.
        """
        if device.status == status and not self.shared:
            return
        if device.status != status:
            log.info("device=%s %s%s", device.uuid, status, f" ({reason})" if reason else "")
        device.status = status
        seen_at = _wall_time(device.last_seen_monotonic) if status == ONLINE else None
        device.last_seen_dirty = False if status == ONLINE else device.last_seen_dirty
        self.db.post(set_status, device.id, device.uuid, status, seen_at, reason)
        if status == ONLINE and self.on_online is not None:
            self.on_online(device.uuid)

    def sweep(self) -> int:
        """Mark devices silent for longer than DEVICE_TIMEOUT offline; return how many."""
        if self.shared:
            self.flush_last_seen(force=True)
            self._spawn_sweep()
            return 0
        now = time.monotonic()
        changed = 0
        for device in list(self._cache.values()):
            if device.status == ONLINE and now - device.last_seen_monotonic > self.device_timeout_s:
                self.set_status(device, OFFLINE, "timeout")
                changed += 1
        self.flush_last_seen(force=True)
        return changed

    def flush_last_seen(self, force: bool = False) -> int:
        """Write buffered last_seen times in one statement, at most every few seconds."""
        now = time.monotonic()
        if not force and now - self._last_seen_flushed < last_seen_write_s(self.device_timeout_s):
            return 0
        self._last_seen_flushed = now
        rows = []
        for device in self._cache.values():
            if device.last_seen_dirty:
                rows.append((device.id, _wall_time(device.last_seen_monotonic)))
                device.last_seen_dirty = False
        rows.sort()  # one lock order for every gateway sharing the database (no deadlocks)
        if rows and self.shared:
            future = self.db.call(write_last_seen_shared, rows)
            future.add_done_callback(self._came_online)
        elif rows:
            self.db.post(write_last_seen, rows)
        return len(rows)

    # -- shared mode: the database decides presence ------------------------------------

    def _came_online(self, future: asyncio.Future[list[str]]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        for uuid in future.result():
            device = self.get(uuid)
            if device is not None and device.status != ONLINE:
                log.info("device=%s online (seen)", uuid)
                device.status = ONLINE
            if self.on_online is not None:
                self.on_online(uuid)

    def _spawn_sweep(self) -> None:
        future = self.db.call(sweep_offline, self.device_timeout_s, self._last_seen_watch)
        future.add_done_callback(self._swept)

    def _swept(self, future: asyncio.Future[tuple[list[str], dict[str, str]]]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        went_offline, statuses = future.result()
        for uuid in went_offline:
            log.info("device=%s offline (timeout)", uuid)
        for uuid, status in statuses.items():
            device = self._cache.get(uuid)
            if device is not None:
                device.status = status

    def online_count(self) -> int:
        return sum(1 for d in self._cache.values() if d.status == ONLINE)

    def devices(self) -> list[Device]:
        return list(self._cache.values())
