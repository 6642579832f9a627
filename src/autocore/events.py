"""Rows of the shared ``event_logs`` table, written the way the Config App reads them."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import insert
from sqlalchemy.engine import Connection

from autocore.schema import event_logs, local_now


def write_event(conn: Connection, event_type: str, source: str, action: str,
                payload: Any = None, target: str | None = None,
                status: str = "success", error_message: str | None = None) -> None:
    """Insert one event row (DB thread); timestamp is naive local time."""
    conn.execute(insert(event_logs).values(
        timestamp=local_now(),
        event_type=event_type,
        source=source,
        target=target,
        action=action,
        payload=None if payload is None else json.dumps(payload, ensure_ascii=False, default=str),
        status=status,
        error_message=error_message,
    ))
