"""Payloads the gateway emits have the original's fields and key order (spec fixtures)."""

from __future__ import annotations

import json

from autocore import envelope, status
from autocore.reports import ErrorReporter
from tests.fixtures.services import fixture_bytes


def keys(raw: bytes) -> list[str]:
    return list(json.loads(raw))


def test_gateway_status_payloads_match_the_fixtures() -> None:
    online = json.loads(status.heartbeat("autocore-gateway", 3600.4, 3, {"ram_mb": 45.2, "cpu_percent": 1.0}))
    assert list(online) == keys(fixture_bytes("gateway_status_online.json"))
    assert online["uptime"] == 3600 and online["devices_online"] == 3
    lwt = status.last_will("autocore-gateway", "2025-08-12T20:53:17.469672Z")
    assert keys(lwt) == keys(fixture_bytes("gateway_status_lwt.json"))
    assert keys(status.shutdown("autocore-gateway")) == keys(fixture_bytes("gateway_status_shutdown.json"))
    first = json.loads(status.online("autocore-gateway", 1.5, 7))
    assert first["status"] == "online" and first["messages_processed"] == 7


def test_timestamps_are_utc_with_z() -> None:
    stamp = envelope.utc_timestamp()
    assert stamp.endswith("Z") and len(stamp) == len("2025-08-12T20:53:17.469804Z")


def test_error_report_matches_the_fixture_and_is_throttled() -> None:
    sent: list[tuple[str, bytes, int, bool]] = []
    now = [100.0]
    reporter = ErrorReporter("autocore-gateway", lambda *a: sent.append(a), window_s=10, clock=lambda: now[0])
    assert reporter.report("ERR_008", "Protocol mismatch: received 1.0.0, expected 2.2.0", "esp32-relay-001",
                           received_version="1.0.0", expected_version="2.2.0")
    assert not reporter.report("ERR_008", "again", "esp32-relay-001")
    assert reporter.report("ERR_002", "other code", "esp32-relay-001")
    now[0] += 10.5
    assert reporter.report("ERR_008", "after the window", "esp32-relay-001")
    topic, raw, qos, retain = sent[0]
    assert (topic, qos, retain) == ("autocore/errors/esp32-relay-001/protocol_mismatch", 1, False)
    body = json.loads(raw)
    assert list(body) == keys(fixture_bytes("error_gateway_protocol_mismatch.json"))
    assert body["error_type"] == "PROTOCOL_MISMATCH" and body["severity"] == "high"
    assert body["error_count"] == 1 and json.loads(sent[1][1])["error_count"] == 2
    assert reporter.suppressed == 1 and len(sent) == 3
    reporter.report("ERR_002", "no device")
    assert sent[-1][0] == "autocore/errors/autocore-gateway/invalid_payload"
