"""AUTOCORE_CONNECT_TIMEOUT=0 ("keep trying the first connection forever") and reconnects.

``asyncio.wait_for(event.wait(), 0)`` raises at once even when the event is
set, and the reconnect loop waited for each CONNACK that long: a broker slow
to answer (busy, or just restarted) saw every attempt torn down and replaced
by the next one. A broker that accepts the connection but is stopped for a
few seconds decides it: after it resumes, the gateway must hold one session.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.fixtures.services import wait_for

pytestmark = pytest.mark.slow


def gateway_sessions(log: str) -> int:
    """Sessions the broker opened for the gateway's client id."""
    return sum(1 for line in log.splitlines()
               if "New client connected from" in line and " as autocore-gateway " in line)


@pytest.mark.parametrize("timeout", ["0", "10"])
def test_a_broker_slow_to_answer_after_a_restart_gets_one_session(env, broker_factory, timeout: str) -> None:  # type: ignore[no-untyped-def]
    env.broker = broker_factory(extra_config=["log_type all"])
    gateway = env.gateway(AUTOCORE_CONNECT_TIMEOUT=timeout)
    assert env.broker.pid is not None
    os.kill(env.broker.pid, signal.SIGKILL)
    env.broker.process.wait(10)  # type: ignore[union-attr]
    env.broker.start()
    os.kill(env.broker.pid, signal.SIGSTOP)  # listening (the kernel accepts), but no CONNACK for a while
    try:
        mark = len(env.broker.read_log())
        time.sleep(3.0)
    finally:
        os.kill(env.broker.pid, signal.SIGCONT)
    wait_for(lambda: "reconnected to broker" in gateway.log, timeout_s=30, what="the reconnect")
    time.sleep(2.0)  # anything still queued from torn-down attempts arrives meanwhile
    log = env.broker.read_log()[mark:]
    assert gateway_sessions(log) == 1, log
    assert "already connected, closing old connection" not in log
    assert gateway.log.count("reconnected to broker") == 1
    assert gateway.alive()
