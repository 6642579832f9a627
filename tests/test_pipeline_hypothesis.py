"""The whole pipeline, fuzzed into a real database: nothing crashes, every row fits its column.

Hypothesis builds valid-ish messages of every kind a device sends (telemetry,
relay states and events, statuses, announces, responses, relay commands), with
fields at their column's limit and one past it, Unicode whose case mapping
changes its length (``İ`` lowers to two code points, ``ß`` uppers to two, ``ﬃ``
to three), huge channel maps, and control characters. They go through
``Pipeline.handle`` over a real database (``tests.inprocess``): on SQLite,
which stores any length, every stored value is checked against its declared
column size; on PostgreSQL, which refuses what does not fit, no message may be
refused and no handler may fail.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import String

from autocore.schema import devices, event_logs, telemetry_data
from tests.equivalence import ENVELOPE_TOPICS
from tests.fixtures.services import query
from tests.inprocess import World, register

ENVELOPE = {"protocol_version": "2.2.0", "timestamp": "2025-08-12T20:53:17Z"}
KNOWN = "esp32-can-001"
#: Characters whose case mapping changes the length of a string, plus plain ones.
CASE_CHARS = "İßﬃŉǰΐΰﬀẞǅΣσςıKÅaZ_-9 "
UUID_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-_.:ABCDEFXYZ"


def around(limit: int) -> Any:
    """Lengths at a column's limit, one past it, and a few ordinary ones."""
    return st.sampled_from([0, 1, 2, limit - 1, limit, limit + 1, limit + 5])


@st.composite
def text_of(draw: Any, limit: int, alphabet: str = CASE_CHARS, controls: bool = True) -> str:
    """A string around ``limit`` characters, sometimes with case-changing or control characters."""
    size = draw(around(limit))
    chars = alphabet + ("\x00\x01\n\x7f" if controls and draw(st.booleans()) else "")
    return draw(st.text(alphabet=chars, min_size=size, max_size=size))


uuids = st.one_of(st.just(KNOWN), st.just(KNOWN), st.sampled_from(["esp32-relay-001", "autocore-gateway"]),
                  st.integers(1, 64).flatmap(lambda n: st.text(alphabet=UUID_CHARS, min_size=n, max_size=n))
                  .filter(lambda u: u not in (".", "..")))
numbers = st.one_of(st.integers(-(2**63), 2**64), st.floats(allow_nan=False, allow_infinity=False),
                    st.booleans())
values = st.one_of(numbers, numbers, st.none(), st.text(max_size=3))
names = st.one_of(text_of(64), text_of(96 // 2, "İ"), st.sampled_from(["RPM", "ß" * 40, "ﬃ" * 30, "İ" * 48, "İ" * 49]))


def signals() -> Any:
    signal = st.fixed_dictionaries({"value": values}, optional={"unit": text_of(20), "can_id": st.just("0x200")})
    return st.dictionaries(names, signal, max_size=8)


def channel_maps() -> Any:
    keys = st.one_of(st.integers(0, 20).map(str), st.sampled_from(["01", "²", "٣", "all", "16 ", ""]),
                     st.integers(17, 100_000).map(str))
    small = st.dictionaries(keys, st.one_of(st.booleans(), st.integers(0, 1)), max_size=30)
    huge = st.integers(100, 3000).map(lambda n: {str(ch): ch % 2 == 0 for ch in range(n)})
    return st.one_of(small, small, huge)


@st.composite
def messages(draw: Any) -> tuple[str, bytes, int]:
    uuid = draw(uuids)
    body: dict[str, Any] = {**ENVELOPE, "uuid": uuid}
    kind = draw(st.sampled_from(["telemetry", "telemetry", "state", "event", "status", "announce",
                                 "response", "command"]))
    if kind == "telemetry":
        topic = f"autocore/devices/{uuid}/telemetry"
        body["can_data"] = {"signals": draw(signals())}
        body["analog_sensors"] = draw(st.dictionaries(names, values, max_size=6))
        body["system_status"] = draw(st.dictionaries(st.sampled_from(["cpu_temperature", "uptime", "x"]), values))
    elif kind == "state":
        topic = f"autocore/devices/{uuid}/relays/state"
        body["channels"] = draw(channel_maps())
    elif kind == "event":
        topic = "autocore/telemetry/relays/data"
        body.update(event=draw(st.sampled_from(["relay_change", "safety_shutoff", "x" * 60])),
                    channel=draw(st.integers(-1, 18)), state=draw(st.booleans()))
    elif kind == "status":
        topic = f"autocore/devices/{uuid}/status"
        body.update(status=draw(st.sampled_from(["online", "offline", "ONLINE", "x" * 25])),
                    reason=draw(text_of(100)))
    elif kind == "announce":
        topic = f"autocore/devices/{uuid}/announce"
        body.update(device_type=draw(text_of(50)), firmware_version=draw(text_of(20)),
                    capabilities=draw(st.lists(text_of(30), max_size=5)),
                    hardware_version=draw(text_of(20)),
                    mac_address=draw(st.sampled_from(["AA:BB:CC:DD:EE:FF", "aa:bb:cc:dd:ee:f", "x" * 18])),
                    ip_address=draw(st.sampled_from(["192.168.1.10", "999.999.999.999", "1" * 16])))
    elif kind == "response":
        topic = f"autocore/devices/{uuid}/response"
        body.update(command_id=draw(text_of(36, UUID_CHARS)), success=draw(st.booleans()),
                    error_message=draw(text_of(100)))
    else:
        topic = f"autocore/devices/{uuid}/relays/command"
        body.update(channel=draw(st.one_of(st.integers(1, 16), st.just("all"))),
                    command=draw(st.sampled_from(["on", "off", "toggle"])), source=draw(text_of(100)))
    return topic, json.dumps(body, ensure_ascii=draw(st.booleans())).encode(), draw(st.sampled_from([0, 1]))


def fuzz(world: World, loop: asyncio.AbstractEventLoop, examples: int) -> None:
    mids = iter(range(1, 1_000_000))

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(batch=st.lists(messages(), min_size=1, max_size=12))
    def run(batch: list[tuple[str, bytes, int]]) -> None:
        async def feed() -> None:  # on the loop, as the client delivers them
            for topic, payload, qos in batch:
                world.pipeline.handle(topic, payload, False, qos, next(mids) if qos else 0)
            await world.settle()

        loop.run_until_complete(feed())

    run()


def check_columns(db_path: Path) -> None:
    """Every stored value fits its declared column size and holds no NUL (SQLite checks neither)."""
    too_long = []
    for table, column, limit in column_limits():
        [row] = query(db_path, f"SELECT max(length({column})) AS n FROM {table}")
        if row["n"] is not None and row["n"] > limit:
            too_long.append((table, column, row["n"], limit))
        nul = query(db_path, f"SELECT count(*) AS n FROM {table} WHERE instr({column}, char(0)) > 0")
        assert nul[0]["n"] == 0, f"NUL stored in {table}.{column} (PostgreSQL refuses it)"
    assert too_long == [], too_long


def column_limits() -> list[tuple[str, str, int]]:
    """(table, column, declared length) of every sized text column the gateway writes."""
    return [(table.name, column.name, column.type.length) for table in (telemetry_data, devices, event_logs)
            for column in table.columns if isinstance(column.type, String) and column.type.length]


def test_fuzzed_messages_into_sqlite_fit_every_column(installed_db: Path) -> None:
    register(str(installed_db), KNOWN, "esp32_can")
    register(str(installed_db), "esp32-relay-001", "esp32_relay", status="online")
    loop = asyncio.new_event_loop()
    world = loop.run_until_complete(World.start(str(installed_db), outbox=True))
    try:
        fuzz(world, loop, examples=60)
    finally:
        loop.run_until_complete(world.close())
        loop.close()
    check_columns(installed_db)
    assert world.metrics.handler_failures == 0
    assert world.db.alive
    assert query(installed_db, "SELECT count(*) AS n FROM telemetry_data")[0]["n"] > 0
    gateway = query(installed_db, "SELECT type FROM devices WHERE uuid='autocore-gateway'")
    assert [r["type"] for r in gateway] == ["gateway"]


FUZZ_SEEDS = Path(__file__).parent / "fuzz" / "corpus" / "envelope"


def test_the_fuzz_seeds_go_through_the_pipeline_into_sqlite(installed_db: Path) -> None:
    """The hostile corpus (limits, case mappings, huge channel maps) through the whole pipeline."""
    register(str(installed_db), "esp32-sensor-001", "esp32_can")
    register(str(installed_db), "esp32-relay-001", "esp32_relay", status="online")

    async def feed() -> World:
        world = await World.start(str(installed_db), outbox=True)
        try:
            for mid, seed in enumerate(sorted(FUZZ_SEEDS.iterdir()), start=1):
                data = seed.read_bytes()
                world.pipeline.handle(ENVELOPE_TOPICS[data[0] % len(ENVELOPE_TOPICS)], data[1:], False, 1, mid)
            await world.settle()
            return world
        finally:
            await world.close()

    world = asyncio.run(feed())
    assert world.metrics.handler_failures == 0
    check_columns(installed_db)
    keys = {r["data_key"] for r in query(installed_db, "SELECT data_key FROM telemetry_data")}
    assert "can_" + "\u0130".lower() * 48 in keys and "can_" + "n" * 64 in keys  # at the limit: stored
    assert {"relay_16", "relay_1"} <= keys and "relay_17" not in keys


@pytest.mark.postgres
def test_fuzzed_messages_into_postgres_are_never_refused(postgres_db, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    postgres_db.register(KNOWN, "esp32_can")
    postgres_db.register("esp32-relay-001", "esp32_relay")
    loop = asyncio.new_event_loop()
    with caplog.at_level(logging.WARNING):
        world = loop.run_until_complete(World.start(database_url=postgres_db.url, outbox=True))
        try:
            fuzz(world, loop, examples=40)
        finally:
            loop.run_until_complete(world.close())
            loop.close()
    refused = {reason: n for reason, n in world.metrics.rejected_by_reason.items() if reason.startswith("db_")}
    assert refused == {}, refused
    assert world.metrics.handler_failures == 0
    failed_jobs = [r.getMessage() for r in caplog.records if "database job" in r.getMessage()]
    assert failed_jobs == []
    assert postgres_db.rows("SELECT count(*) AS n FROM telemetry_data")[0]["n"] > 0
