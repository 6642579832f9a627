"""The v2.2.0 envelope: validation (hot path, in ``autocore._fast``) and payload building.

Payloads the gateway emits put the envelope first, in the original's key order
(``protocol_version, uuid, timestamp, message_type, ...``), serialised compactly
with non-ASCII kept as is.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from autocore._fast import Message, Reject, Validator

PROTOCOL_VERSION = "2.2.0"


def utc_timestamp(moment: datetime | None = None) -> str:
    """ISO-8601 UTC with microseconds and ``Z``, as the original gateway sends."""
    moment = moment or datetime.now(timezone.utc)
    return moment.astimezone(timezone.utc).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def build(uuid: str, message_type: str | None = None, **extra: Any) -> dict[str, Any]:
    """Return an envelope dict: protocol_version, uuid, timestamp, [message_type], extra."""
    payload: dict[str, Any] = {
        "protocol_version": PROTOCOL_VERSION,
        "uuid": uuid,
        "timestamp": utc_timestamp(),
    }
    if message_type is not None:
        payload["message_type"] = message_type
    payload.update(extra)
    return payload


def dumps(payload: dict[str, Any]) -> bytes:
    """Serialise compactly, UTF-8, non-ASCII unescaped (the original's format)."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


__all__ = ["PROTOCOL_VERSION", "Message", "Reject", "Validator", "build", "dumps", "utc_timestamp"]
