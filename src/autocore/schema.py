"""SQLAlchemy Core tables of the shared AutoCore database that the gateway touches.

The Config App owns the shared schema. These definitions mirror the installed
one column for column, so autocore can read and write it, and can create a
table that is missing (a fresh database) without ever altering one that exists.
``gateway_commands`` is autocore's own additive table.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Boolean, Column, DateTime, Float, ForeignKey, Index, Integer, MetaData, String, Table, Text,
    UniqueConstraint, inspect,
)
from sqlalchemy.engine import Connection, Engine

metadata = MetaData()

devices = Table(
    "devices", metadata,
    Column("id", Integer, primary_key=True),
    Column("uuid", String(36), nullable=False, unique=True),
    Column("name", String(100), nullable=False),
    Column("type", String(50), nullable=False),
    Column("mac_address", String(17), unique=True),
    Column("ip_address", String(15)),
    Column("firmware_version", String(20)),
    Column("hardware_version", String(20)),
    Column("status", String(20), nullable=False),
    Column("last_seen", DateTime),
    Column("configuration_json", Text),
    Column("capabilities_json", Text),
    Column("is_active", Boolean),
    Column("created_at", DateTime),
    Column("updated_at", DateTime),
    Index("idx_devices_type", "type"),
    Index("idx_devices_status", "status"),
    Index("idx_devices_uuid", "uuid"),
)

telemetry_data = Table(
    "telemetry_data", metadata,
    Column("id", Integer, primary_key=True),
    Column("timestamp", DateTime, nullable=False),
    Column("device_id", Integer, ForeignKey("devices.id", ondelete="CASCADE"), nullable=False),
    Column("data_type", String(50), nullable=False),
    Column("data_key", String(100), nullable=False),
    Column("data_value", Text, nullable=False),
    Column("unit", String(20)),
    Index("idx_telemetry_type", "data_type"),
    Index("idx_telemetry_key", "data_key"),
    Index("idx_telemetry_timestamp", "timestamp", "device_id"),
)

# user_id references users.id in the shared schema; the gateway never writes it,
# and a fresh gateway-only database has no users table, so no FK is declared.
event_logs = Table(
    "event_logs", metadata,
    Column("id", Integer, primary_key=True),
    Column("timestamp", DateTime, nullable=False),
    Column("event_type", String(50), nullable=False),
    Column("source", String(100), nullable=False),
    Column("target", String(100)),
    Column("action", String(100)),
    Column("payload", Text),
    Column("user_id", Integer),
    Column("ip_address", String(15)),
    Column("status", String(20)),
    Column("error_message", Text),
    Index("idx_events_type", "event_type"),
    Index("idx_events_source", "source"),
    Index("idx_events_timestamp", "timestamp"),
)

relay_boards = Table(
    "relay_boards", metadata,
    Column("id", Integer, primary_key=True),
    Column("device_id", Integer, ForeignKey("devices.id", ondelete="CASCADE"), nullable=False),
    Column("total_channels", Integer, nullable=False),
    Column("board_model", String(50)),
    Column("is_active", Boolean),
    Column("created_at", DateTime),
    Index("idx_relay_boards_device", "device_id"),
)

relay_channels = Table(
    "relay_channels", metadata,
    Column("id", Integer, primary_key=True),
    Column("board_id", Integer, ForeignKey("relay_boards.id", ondelete="CASCADE"), nullable=False),
    Column("channel_number", Integer, nullable=False),
    Column("name", String(100), nullable=False),
    Column("description", Text),
    Column("function_type", String(20)),
    Column("icon", String(50)),
    Column("color", String(7)),
    Column("protection_mode", String(20), nullable=False),
    Column("max_activation_time", Integer),
    Column("allow_in_macro", Boolean),
    Column("is_active", Boolean),
    Column("created_at", DateTime),
    Column("updated_at", DateTime),
    UniqueConstraint("board_id", "channel_number", name="uq_board_channel"),
    Index("idx_relay_channels_board", "board_id"),
)

# autocore's own table: the command outbox the Config App writes into. A row
# needs only device_uuid, command_type and payload; the gateway fills the rest.
gateway_commands = Table(
    "gateway_commands", metadata,
    Column("id", Integer, primary_key=True),
    Column("command_id", String(36), unique=True),  # echoed by the device; set at pick-up if NULL
    Column("device_uuid", String(36), nullable=False),
    Column("topic", String(200)),  # where it was published (filled by the gateway)
    Column("command_type", String(50), nullable=False),  # relay | reset | status | reboot | ota | other
    Column("payload", Text),  # JSON object of parameters
    Column("qos", Integer, default=2),
    Column("status", String(20), nullable=False, default="pending"),
    Column("timeout_s", Integer),  # NULL: MESSAGE_TIMEOUT
    Column("max_age_s", Integer),  # NULL: AUTOCORE_COMMAND_MAX_AGE; older pending rows expire
    Column("attempts", Integer, default=0),
    Column("created_at", DateTime, nullable=False),
    Column("sent_at", DateTime),
    Column("completed_at", DateTime),
    Column("response_payload", Text),
    Column("error_message", Text),
    Column("claimed_by", String(64)),  # MQTT_CLIENT_ID of the gateway that sent it
    Index("idx_gateway_commands_status", "status", "created_at"),
)

#: Columns added to autocore's own tables after their first release: created on
#: an older copy of the table by :func:`ensure_schema` (never on shared tables).
ADDED_COLUMNS = {"gateway_commands": ("claimed_by",)}

#: PostgreSQL advisory lock keys (arbitrary constants, the same in every gateway):
#: schema creation, and the presence/command sweeps one gateway runs at a time.
SCHEMA_LOCK = 0x6175746F01
SWEEP_LOCK = 0x6175746F02

#: PostgreSQL channel notified when a command row becomes pending (LISTEN/NOTIFY).
COMMANDS_CHANNEL = "autocore_commands"
_PG_NOTIFY_FUNCTION = f"""
CREATE OR REPLACE FUNCTION autocore_notify_command() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('{COMMANDS_CHANNEL}', NEW.id::text);
    RETURN NULL;
END
$$ LANGUAGE plpgsql
"""
_PG_NOTIFY_TRIGGER = """
CREATE TRIGGER autocore_command_pending
AFTER INSERT OR UPDATE OF status ON gateway_commands
FOR EACH ROW WHEN (NEW.status = 'pending') EXECUTE PROCEDURE autocore_notify_command()
"""

# autocore's own table: idempotency keys of QoS 1 messages already stored, so a
# broker redelivery after a crash (before the acknowledgement left) is not
# stored twice. Pruned after AUTOCORE_DEDUP_RETENTION.
gateway_message_keys = Table(
    "gateway_message_keys", metadata,
    Column("message_key", String(64), primary_key=True),  # "<device uuid>:<payload digest>"
    Column("received_at", DateTime, nullable=False),
    Index("idx_gateway_message_keys_received", "received_at"),
)

# Hourly roll-ups of raw telemetry, the table of the original maintenance script:
# raw rows past their retention are averaged into it before they are deleted.
telemetry_hourly = Table(
    "telemetry_hourly", metadata,
    Column("id", Integer, primary_key=True),
    Column("device_id", Integer, ForeignKey("devices.id", ondelete="CASCADE"), nullable=False),
    Column("data_type", String(50), nullable=False),
    Column("data_key", String(100), nullable=False),
    Column("hour_timestamp", DateTime, nullable=False),  # naive local start of the hour
    Column("avg_value", Float),
    Column("min_value", Float),
    Column("max_value", Float),
    Column("count", Integer, nullable=False),
    Column("unit", String(20)),
    UniqueConstraint("device_id", "data_type", "data_key", "hour_timestamp",
                     name="uq_telemetry_hourly_series_hour"),
    Index("idx_telemetry_hourly_hour", "hour_timestamp"),
)

#: Tables of the shared schema the gateway reads or writes (it may create them when absent).
SHARED_TABLES = ("devices", "telemetry_data", "event_logs", "relay_boards", "relay_channels")
#: Tables that belong to autocore alone.
OWN_TABLES = ("gateway_commands", "gateway_message_keys")
#: The original maintenance script's roll-up table, created where absent.
ROLLUP_TABLES = ("telemetry_hourly",)


def local_now() -> datetime:
    """Naive local wall-clock time: the convention of every timestamp in the shared DB."""
    return datetime.now()


def missing_tables(bind: Engine | Connection) -> list[str]:
    """Names of the gateway's tables that the database does not have yet."""
    present = set(inspect(bind).get_table_names())
    return [name for name in (*SHARED_TABLES, *OWN_TABLES, *ROLLUP_TABLES) if name not in present]


def ensure_schema(engine: Engine) -> list[str]:
    """Create the gateway's tables that are absent and return their names.

    Existing tables are never altered: the shared schema belongs to the Config
    App's migrations, and an installed system must be accepted unchanged.
    """
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":  # gateways starting together create things once
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})")
        absent = missing_tables(conn)
        if absent:
            metadata.create_all(conn, tables=[metadata.tables[n] for n in absent], checkfirst=True)
        _add_missing_columns(conn)
        if conn.dialect.name == "postgresql":
            _ensure_notify_trigger(conn)
    return absent


def _add_missing_columns(conn: Connection) -> None:
    """Bring an older copy of autocore's own tables up to date (nullable columns only)."""
    for table_name, names in ADDED_COLUMNS.items():
        present = {column["name"] for column in inspect(conn).get_columns(table_name)}
        table = metadata.tables[table_name]
        for name in names:
            if name not in present:
                column = table.c[name]
                kind = column.type.compile(dialect=conn.dialect)
                conn.exec_driver_sql(f"ALTER TABLE {table_name} ADD COLUMN {name} {kind}")


def _ensure_notify_trigger(conn: Connection) -> None:
    """Make PostgreSQL announce new pending commands on COMMANDS_CHANNEL (created once)."""
    if conn.exec_driver_sql("SELECT 1 FROM pg_proc WHERE proname = 'autocore_notify_command'").first() is None:
        conn.exec_driver_sql(_PG_NOTIFY_FUNCTION)
    exists = conn.exec_driver_sql(
        "SELECT 1 FROM pg_trigger WHERE tgname = 'autocore_command_pending' "
        "AND tgrelid = 'gateway_commands'::regclass").first()
    if exists is None:
        conn.exec_driver_sql(_PG_NOTIFY_TRIGGER)
