"""Gateway settings: the original gateway's env/.env keys plus autocore's own, validated once.

Every key of the original keeps its name and default, and takes effect. New keys
are optional and default to the original's wire behaviour. Values come from the
process environment, then from a ``.env`` file in the working directory (the
environment wins). Unknown keys are ignored, because installed systems share one
``.env`` between the gateway and the Config App.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

from autocore.errors import ConfigError

#: Setting attributes whose values never appear in logs or ``check-config``.
SECRET_FIELDS = frozenset({"mqtt_password", "secret_key"})

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_UUID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _integer(lo: int, hi: int | None = None) -> tuple[Callable[[str], int], str]:
    expected = f"an integer {lo}-{hi}" if hi is not None else f"an integer >= {lo}"

    def parse(text: str) -> int:
        value = int(text.strip())
        if value < lo or (hi is not None and value > hi):
            raise ValueError
        return value

    return parse, expected


def _number(lo: float, lo_inclusive: bool = False) -> tuple[Callable[[str], float], str]:
    expected = f"a number {'>=' if lo_inclusive else '>'} {lo:g}"

    def parse(text: str) -> float:
        value = float(text.strip())
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError
        if value < lo or (value == lo and not lo_inclusive):
            raise ValueError
        return value

    return parse, expected


def _boolean() -> tuple[Callable[[str], bool], str]:
    def parse(text: str) -> bool:
        word = text.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise ValueError

    return parse, "true or false"


def _text(nonempty: bool = True) -> tuple[Callable[[str], str], str]:
    def parse(text: str) -> str:
        if nonempty and not text.strip():
            raise ValueError
        return text.strip() if nonempty else text

    return parse, "a non-empty string" if nonempty else "a string"


def _optional_text() -> tuple[Callable[[str], str | None], str]:
    def parse(text: str) -> str | None:
        return text or None

    return parse, "a string"


def _device_id() -> tuple[Callable[[str], str], str]:
    def parse(text: str) -> str:
        value = text.strip()
        if not 1 <= len(value) <= 64 or not _UUID_CHARS.issuperset(value) or value in (".", ".."):
            raise ValueError
        return value

    return parse, "1-64 characters of [A-Za-z0-9_.:-]"


def _optional_device_id() -> tuple[Callable[[str], str | None], str]:
    parse_id, expected = _device_id()

    def parse(text: str) -> str | None:
        return parse_id(text) if text.strip() else None

    return parse, f"empty, or {expected}"


def _log_level() -> tuple[Callable[[str], str], str]:
    def parse(text: str) -> str:
        value = text.strip().upper()
        if value not in _LOG_LEVELS:
            raise ValueError
        return value

    return parse, "one of " + ", ".join(_LOG_LEVELS)


def _choice(*options: str) -> tuple[Callable[[str], str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in options:
            raise ValueError
        return value

    return parse, "one of " + ", ".join(options)


def _size_mb() -> tuple[Callable[[str], float | None], str]:
    number, _ = _number(0)

    def parse(text: str) -> float | None:
        return None if text.strip().lower() == "auto" else number(text)

    return parse, "a number of MB > 0, or auto"


def _deviations() -> tuple[Callable[[str], tuple[tuple[str, float], ...]], str]:
    def parse(text: str) -> tuple[tuple[str, float], ...]:
        from autocore.compression import parse_deviations

        return parse_deviations(text)

    return parse, "name=number pairs separated by commas (numbers >= 0), e.g. can_rpm=25,analog_temp=0.2"


def _optional_file() -> tuple[Callable[[str], str | None], str]:
    def parse(text: str) -> str | None:
        value = text.strip()
        if value and not Path(value).is_file():
            raise ValueError
        return value or None

    return parse, "the path of an existing file"


@dataclass(frozen=True)
class Key:
    """One environment key: where it goes, how it is parsed, what it defaults to."""

    env: str
    field: str
    default: str | None
    parser: tuple[Callable[[str], Any], str]
    help: str
    original: bool = False  # read by the original gateway


KEYS: tuple[Key, ...] = (
    # -- keys of the original gateway (same names, same defaults) --
    Key("MQTT_BROKER", "mqtt_broker", "localhost", _text(), "broker host", True),
    Key("MQTT_PORT", "mqtt_port", "1883", _integer(1, 65535), "broker port", True),
    Key("MQTT_USERNAME", "mqtt_username", None, _optional_text(), "broker user (with password)", True),
    Key("MQTT_PASSWORD", "mqtt_password", None, _optional_text(), "broker password", True),
    Key("MQTT_CLIENT_ID", "gateway_uuid", "autocore-gateway", _device_id(),
        "gateway uuid: status/error topics and MQTT client id", True),
    Key("MQTT_KEEPALIVE", "mqtt_keepalive_s", "300", _integer(5, 65535), "MQTT keepalive, s", True),
    Key("DATABASE_PATH", "database_path", "../database/autocore.db", _text(),
        "SQLite file shared with the Config App", True),
    Key("LOG_LEVEL", "log_level", "INFO", _log_level(), "log level", True),
    Key("LOG_FILE", "log_file", "/tmp/autocore-gateway.log", _text(nonempty=False),
        "log file besides stderr (empty: none)", True),
    Key("MAX_CONCURRENT_MESSAGES", "max_concurrent_messages", "100", _integer(1, 65535),
        "unacknowledged QoS 1/2 messages the broker may send at once", True),
    Key("MESSAGE_TIMEOUT", "message_timeout_s", "30", _number(0), "command response timeout, s", True),
    Key("DEVICE_TIMEOUT", "device_timeout_s", "300", _number(0), "silence before a device is offline, s", True),
    Key("TELEMETRY_BATCH_SIZE", "telemetry_batch_size", "10", _integer(1, 100_000),
        "pending telemetry rows that trigger a database write", True),
    Key("TELEMETRY_FLUSH_INTERVAL", "telemetry_flush_interval_s", "5", _number(0, lo_inclusive=True),
        "longest a telemetry row waits before it is written, s", True),
    Key("ENABLE_AUTH", "enable_auth", "true", _boolean(),
        "send MQTT_USERNAME/MQTT_PASSWORD when both are set", True),
    Key("SECRET_KEY", "secret_key", "autocore-secret-key-change-in-production", _text(nonempty=False),
        "read for compatibility; unused by the gateway", True),
    # -- autocore's own keys (optional; defaults keep the original's behaviour on the wire) --
    Key("DATABASE_URL", "database_url", None, _optional_text(),
        "SQLAlchemy URL; overrides DATABASE_PATH (e.g. PostgreSQL)"),
    Key("AUTOCORE_CREATE_DATABASE", "create_database", "false", _boolean(),
        "create the SQLite file when it is missing instead of exiting"),
    Key("AUTOCORE_MAX_PAYLOAD", "max_payload_bytes", "65536", _integer(64, 16 * 1024 * 1024),
        "largest accepted payload, bytes"),
    Key("AUTOCORE_RATE_LIMIT", "rate_limit_per_s", "100", _number(0, lo_inclusive=True),
        "messages per second accepted from one device (0: no limit)"),
    Key("AUTOCORE_RATE_BURST", "rate_burst", "100", _integer(1), "burst allowance per device, messages"),
    Key("AUTOCORE_HEARTBEAT_INTERVAL", "heartbeat_interval_s", "30", _number(0),
        "gateway heartbeat and offline sweep period, s"),
    Key("AUTOCORE_WRITE_INTERVAL", "write_interval_s", "60", _number(0, lo_inclusive=True),
        "shortest time between two telemetry commits, s: the latency/SD-card wear knob "
        "(QoS 1/2 backlogs commit sooner)"),
    Key("AUTOCORE_RING_CAPACITY", "ring_capacity", "20000", _integer(16, 10_000_000),
        "telemetry messages buffered for the database writer"),
    Key("AUTOCORE_BUFFER_MB", "buffer_mb", "4", _number(0),
        "memory for QoS 0 telemetry waiting for the database writer, MB (about 200 bytes a "
        "reading); past it, or past AUTOCORE_RING_CAPACITY, the oldest messages are dropped and counted"),
    Key("AUTOCORE_CONNECT_TIMEOUT", "connect_timeout_s", "10", _number(0, lo_inclusive=True),
        "keep trying the first connection this long before exiting 1, s (0: forever)"),
    Key("AUTOCORE_DEVICE_CACHE_SIZE", "device_cache_size", "4096", _integer(1),
        "devices kept in the in-memory LRU cache"),
    Key("AUTOCORE_COMMAND_MAX_AGE", "command_max_age_s", "60", _number(0),
        "a pending command older than this expires instead of being sent, s"),
    Key("AUTOCORE_COMMAND_POLL_INTERVAL", "command_poll_interval_s", "0.02", _number(0),
        "shortest time between two checks for new commands, s"),
    Key("AUTOCORE_READ_INTERVAL", "read_interval_s", "0.02", _number(0, lo_inclusive=True),
        "while messages keep coming, read the broker's socket this often instead of at every "
        "arrival, s: fewer wake-ups, at most this much more latency (0: at every arrival)"),
    Key("AUTOCORE_SESSION_EXPIRY", "session_expiry_s", "3600", _integer(0, 4294967295),
        "how long the broker keeps the gateway's session (and queues QoS 1 messages) while it is away, s"),
    Key("AUTOCORE_DEDUP_RETENTION", "dedup_retention_s", "86400", _number(0),
        "how long idempotency keys of stored QoS 1 messages are kept, s"),
    Key("AUTOCORE_TELEMETRY_RETENTION", "telemetry_retention_s", "604800", _number(0, lo_inclusive=True),
        "raw telemetry older than this is rolled up into telemetry_hourly and deleted, s (0: forever)"),
    Key("AUTOCORE_ROLLUP_RETENTION", "rollup_retention_s", "31536000", _number(0, lo_inclusive=True),
        "hourly roll-ups older than this are deleted, s (0: forever)"),
    Key("AUTOCORE_EVENT_RETENTION", "event_retention_s", "2592000", _number(0, lo_inclusive=True),
        "event_logs rows older than this are deleted, but error, warning, security and critical ones, s (0: forever)"),
    Key("AUTOCORE_COMMAND_RETENTION", "command_retention_s", "2592000", _number(0, lo_inclusive=True),
        "finished gateway_commands rows older than this are deleted, s (0: forever)"),
    Key("AUTOCORE_DB_MAX_MB", "db_max_mb", "auto", _size_mb(),
        "largest the database may grow, MB (auto: a quarter of its file system)"),
    Key("AUTOCORE_DISK_MIN_FREE_MB", "disk_min_free_mb", "256", _number(0, lo_inclusive=True),
        "free space always left on the database's file system, MB"),
    Key("AUTOCORE_COMPRESSION", "compression", "off", _choice("off", "deadband", "swinging_door"),
        "historian compression of telemetry rows: off, deadband or swinging_door"),
    Key("AUTOCORE_COMPRESSION_DEVIATION", "compression_deviation", "0", _number(0, lo_inclusive=True),
        "how far a dropped reading may be from the stored ones, in the signal's unit"),
    Key("AUTOCORE_COMPRESSION_DEVIATIONS", "compression_deviations", "", _deviations(),
        "deviation per data key, over the default (can_rpm=25,analog_temp=0.2)"),
    Key("AUTOCORE_COMPRESSION_HEARTBEAT", "compression_heartbeat_s", "60", _number(0),
        "longest a reporting signal goes without a stored row, s"),
    Key("AUTOCORE_COMPRESSION_MAX_KEYS", "compression_max_keys", "4096", _integer(1, 10_000_000),
        "signals compressed at most; readings of further ones are all stored"),
    Key("MQTT_TLS_CA_FILE", "tls_ca_file", None, _optional_file(), "CA bundle: enables TLS"),
    Key("MQTT_TLS_CERT_FILE", "tls_cert_file", None, _optional_file(), "client certificate (PEM)"),
    Key("MQTT_TLS_KEY_FILE", "tls_key_file", None, _optional_file(), "client private key (PEM)"),
    Key("MQTT_TLS_INSECURE", "tls_insecure", "false", _boolean(),
        "skip the broker host name check (testing only)"),
    Key("AUTOCORE_METRICS_PORT", "metrics_port", "9108", _integer(0, 65535),
        "port of the /metrics, /healthz and /readyz endpoints (0: off)"),
    Key("AUTOCORE_METRICS_HOST", "metrics_host", "127.0.0.1", _text(),
        "address those endpoints listen on (loopback: only this machine)"),
    Key("AUTOCORE_SHARED_GROUP", "shared_group", None, _optional_device_id(),
        "share name: subscribe via $share/<name>/... so several gateways split the traffic"),
    Key("AUTOCORE_LOG_FORMAT", "log_format", "text", _choice("text", "json"),
        "log line format: text, or json (one JSON object per line)"),
)


@dataclass(frozen=True)
class Settings:
    """Validated gateway settings; build with :meth:`from_env`."""

    mqtt_broker: str
    mqtt_port: int
    mqtt_username: str | None
    mqtt_password: str | None
    gateway_uuid: str
    mqtt_keepalive_s: int
    database_path: str
    log_level: str
    log_file: str
    max_concurrent_messages: int
    message_timeout_s: float
    device_timeout_s: float
    telemetry_batch_size: int
    telemetry_flush_interval_s: float
    enable_auth: bool
    secret_key: str
    database_url: str | None
    create_database: bool
    max_payload_bytes: int
    rate_limit_per_s: float
    rate_burst: int
    heartbeat_interval_s: float
    write_interval_s: float
    ring_capacity: int
    buffer_mb: float
    connect_timeout_s: float
    device_cache_size: int
    command_max_age_s: float
    command_poll_interval_s: float
    read_interval_s: float
    session_expiry_s: int
    dedup_retention_s: float
    telemetry_retention_s: float
    rollup_retention_s: float
    event_retention_s: float
    command_retention_s: float
    db_max_mb: float | None  # None: a quarter of the database's file system
    disk_min_free_mb: float
    compression: str
    compression_deviation: float
    compression_deviations: tuple[tuple[str, float], ...]
    compression_heartbeat_s: float
    compression_max_keys: int
    tls_ca_file: str | None
    tls_cert_file: str | None
    tls_key_file: str | None
    tls_insecure: bool
    metrics_port: int
    metrics_host: str
    shared_group: str | None
    log_format: str

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        env_file: str | os.PathLike[str] | None = ".env",
        **overrides: Any,
    ) -> Settings:
        """Read every key from ``environ`` (default ``os.environ``) over ``env_file``.

        Raises ConfigError naming the first bad key and the form it expects.
        ``overrides`` replace parsed values by field name (tests, the demo).
        """
        values = dict(read_env_file(env_file)) if env_file else {}
        values.update(os.environ if environ is None else environ)
        parsed: dict[str, Any] = {}
        for key in KEYS:
            raw = values.get(key.env)
            if raw is None:
                raw = key.default
            if raw is None:
                parsed[key.field] = None
                continue
            parse, expected = key.parser
            try:
                parsed[key.field] = parse(raw)
            except ValueError:
                raise ConfigError(key.env, raw, expected) from None
        parsed.update(overrides)
        settings = cls(**parsed)
        settings._check_consistency()
        return settings

    def _check_consistency(self) -> None:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigError("MQTT_TLS_KEY_FILE", self.tls_key_file or "",
                              "set together with MQTT_TLS_CERT_FILE")
        if self.database_url is not None and "://" not in self.database_url:
            raise ConfigError("DATABASE_URL", self.database_url,
                              "a SQLAlchemy URL such as postgresql+psycopg://user@host/db")

    @property
    def tls_enabled(self) -> bool:
        return self.tls_ca_file is not None

    @property
    def credentials(self) -> tuple[str, str] | None:
        """Username and password to send, or None (both must be set, as in the original)."""
        if self.enable_auth and self.mqtt_username and self.mqtt_password:
            return self.mqtt_username, self.mqtt_password
        return None

    @property
    def log_level_number(self) -> int:
        return logging.getLevelName(self.log_level)  # type: ignore[no-any-return]

    def redacted(self) -> list[tuple[str, str, str]]:
        """Return (env key, shown value, help) rows with secrets masked."""
        rows = []
        for key in KEYS:
            value = getattr(self, key.field)
            if key.field in SECRET_FIELDS and value:
                shown = "********"
            elif key.field == "database_url" and value:
                shown = redact_url(value)
            elif value is None:
                shown = "(unset)"
            elif key.field == "compression_deviations":
                shown = ",".join(f"{name}={deviation:g}" for name, deviation in value)
            else:
                shown = str(value).lower() if isinstance(value, bool) else str(value)
            rows.append((key.env, shown, key.help))
        return rows

    def __repr__(self) -> str:
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            parts.append(f"{f.name}={'***' if f.name in SECRET_FIELDS and value else repr(value)}")
        return f"Settings({', '.join(parts)})"


def redact_url(url: str) -> str:
    """A database URL with its password masked, for logs and ``check-config``."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "(unparsable URL)"


def read_env_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read KEY=VALUE lines of a dotenv file; a missing file is an empty mapping."""
    file = Path(path)
    if not file.is_file():
        return {}
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(file).items() if v is not None}
