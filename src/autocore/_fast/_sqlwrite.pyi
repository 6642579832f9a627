"""Types of the compiled telemetry insert; the same API as ``_sqlwrite_py``."""

from typing import Any, Optional

Row = tuple[str, str, str, Optional[str]]
Message = tuple[str, int, list[Row]]

class TelemetryInsert:
    def __init__(self, sql: str) -> None: ...
    def insert(self, dbapi_connection: Any, batch: list[Message]) -> int: ...
