"""Each QoS 1 message is acknowledged exactly once, and only once what it caused is stored.

A handler that raised after handing its message's acknowledgement on to the
database (its rows queued for a commit) used to have the message acknowledged
at once as well, then again after the commit: the second PUBACK could
acknowledge a newer message that reused the packet id before its rows were
stored. Handler failures are logged with a traceback at most once a minute,
and the log file is rotated by size.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.fixtures.services import query
from tests.inprocess import World, envelope, register

STATE_TOPIC = "autocore/devices/esp32-relay-001/relays/state"


class BrokenOutbox:
    """An outbox whose relay-state hook raises: a handler failing after its rows were queued."""

    def on_relay_states(self, uuid: str, states: dict[int, bool]) -> None:
        raise RuntimeError("outbox bug")


def _relay_states(world: World, count: int) -> None:
    for n in range(count):
        payload = envelope("esp32-relay-001", channels={"1": n % 2 == 0, "2": True})
        world.pipeline.handle(STATE_TOPIC, payload, False, 1, n + 1, False)


def test_a_handler_that_raises_after_queueing_its_rows_acks_once_after_the_commit(
        installed_db: Path, caplog: pytest.LogCaptureFixture) -> None:
    register(str(installed_db), "esp32-relay-001")

    async def scenario() -> tuple[list, int, int]:
        world = await World.start(str(installed_db))
        try:
            world.pipeline.outbox = BrokenOutbox()
            _relay_states(world, 30)
            acked_at_once = [token for source, token in world.acks if source == "pipeline"]
            await world.settle()
            return list(world.acks), len(acked_at_once), world.metrics.handler_failures
        finally:
            await world.close()

    with caplog.at_level(logging.ERROR, logger="autocore.pipeline"):
        acks, acked_at_once, failures = asyncio.run(scenario())
    assert failures == 30
    assert acked_at_once == 0, "acknowledged before its rows were committed"
    per_mid = Counter(token[0] for _source, token in acks)
    assert per_mid == Counter(range(1, 31)), "each message acknowledged exactly once"
    assert {source for source, _ in acks} == {"commit"}
    rows = query(installed_db, "SELECT count(*) AS n FROM telemetry_data WHERE data_key='relay_2'")
    assert rows[0]["n"] == 30
    # 30 failures, one traceback: a flood of failing messages does not flood the log.
    tracebacks = [r for r in caplog.records if r.name == "autocore.pipeline" and r.exc_info]
    assert len(tracebacks) == 1 and "RuntimeError: outbox bug" in caplog.text


def test_a_message_whose_handler_raises_before_deferring_is_acked_once_at_once(installed_db: Path) -> None:
    register(str(installed_db), "esp32-relay-001")

    async def scenario() -> list:
        world = await World.start(str(installed_db))
        try:
            def broken(message, delivery):  # type: ignore[no-untyped-def]
                raise RuntimeError("before anything was queued")

            world.pipeline._handlers["mode"] = broken
            for mid in range(1, 11):
                world.pipeline.handle("autocore/modes/maintenance", envelope("esp32-relay-001"), False, 1, mid)
            await world.settle()
            return list(world.acks)
        finally:
            await world.close()

    acks = asyncio.run(scenario())
    assert Counter(token[0] for _source, token in acks) == Counter(range(1, 11))
    assert {source for source, _ in acks} == {"pipeline"}


ROTATE = """
import logging, sys
from autocore import cli
from autocore.config import Settings
cli.LOG_MAX_BYTES = 4096
settings = Settings.from_env(environ={"LOG_FILE": sys.argv[1]}, env_file=None)
cli.setup_logging(settings)
log = logging.getLogger("autocore.test")
for n in range(2000):
    log.warning("line %05d %s", n, "x" * 60)
"""


def test_the_log_file_is_rotated_by_size(tmp_path: Path) -> None:
    """LOG_FILE (default /tmp/autocore-gateway.log) is the gateway's own file: it must not fill the card."""
    log_file = tmp_path / "logs" / "autocore.log"
    done = subprocess.run([sys.executable, "-c", ROTATE, str(log_file)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    files = sorted(p.name for p in log_file.parent.iterdir())
    assert files == ["autocore.log", "autocore.log.1", "autocore.log.2", "autocore.log.3"]
    assert all((log_file.parent / name).stat().st_size <= 4096 for name in files)
    assert "line 01999" in log_file.read_text()  # the newest lines are in LOG_FILE itself
