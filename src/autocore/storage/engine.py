"""Opening the shared database: which URL, which driver, and how a connection is set up.

SQLite connections get the durability settings of :mod:`autocore.storage.policy`
as they open; PostgreSQL is reached through psycopg 3 only, the driver the
telemetry writer's ``COPY`` is built on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine

from autocore.config import Settings
from autocore.errors import StorageError
from autocore.storage.policy import configure_sqlite

#: Primary SQLite result code of "attempt to write a readonly database".
_SQLITE_READONLY = 8
#: Primary SQLite result code of "disk I/O error" (SQLITE_IOERR_* extends it).
_SQLITE_IOERR = 10


def database_url(settings: Settings) -> str:
    """The SQLAlchemy URL to open: DATABASE_URL, else the SQLite file DATABASE_PATH.

    A PostgreSQL URL without a driver (``postgresql://``, ``postgres://``) gets
    psycopg 3, the driver autocore's PostgreSQL writer is built on.
    """
    url = settings.database_url
    if not url:
        return f"sqlite:///{Path(settings.database_path).expanduser().resolve()}"
    for bare in ("postgresql://", "postgres://"):
        if url.startswith(bare):
            return "postgresql+psycopg://" + url[len(bare):]
    return url


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def open_engine(settings: Settings) -> Engine:
    """Open the shared database; SQLite gets WAL, durable commits and a busy timeout for the Config App."""
    url = database_url(settings)
    if url.startswith("sqlite"):
        path = Path(settings.database_path).expanduser()
        if not settings.database_url and not path.exists():
            if not settings.create_database:
                raise StorageError(
                    f"database file {path} does not exist "
                    "(set DATABASE_PATH, or AUTOCORE_CREATE_DATABASE=true to create it)"
                )
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", lambda dbapi_connection, _record: configure_sqlite(dbapi_connection))
        event.listen(engine, "handle_error", _drop_read_only_connections)
        return engine
    if url.startswith("postgresql+") and not url.startswith("postgresql+psycopg"):
        raise StorageError("autocore talks to PostgreSQL through psycopg 3: "
                           "use a postgresql:// or postgresql+psycopg:// DATABASE_URL")
    try:
        return create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=4)
    except ModuleNotFoundError as exc:
        raise StorageError(f"{exc.name} is not installed: pip install 'autocore[postgres]'") from None


def _drop_read_only_connections(context: Any) -> None:
    """A SQLite connection opened while the file was unwritable stays read-only for good.

    Treating "attempt to write a readonly database" as a lost connection makes
    the pool open a fresh one on the next retry, so writes resume once the
    file's permissions are fixed, without a restart.
    """
    if is_read_only(context.original_exception):
        context.is_disconnect = True


def _sqlite_error_is(exc: BaseException, primary_code: int, message: str) -> bool:
    """Whether a sqlite3 error (or SQLAlchemy's wrapper of one) has this primary result code."""
    driver_error = getattr(exc, "orig", None) or exc
    code = getattr(driver_error, "sqlite_errorcode", None)  # Python 3.11+; the message before that
    return (code & 0xFF) == primary_code if code is not None else message in str(driver_error)


def is_read_only(exc: BaseException) -> bool:
    """Whether a sqlite3 error is "attempt to write a readonly database"."""
    return _sqlite_error_is(exc, _SQLITE_READONLY, "readonly database")


def is_io_error(exc: BaseException) -> bool:
    """Whether SQLite failed on an I/O step ("disk I/O error", any SQLITE_IOERR_* code)."""
    return _sqlite_error_is(exc, _SQLITE_IOERR, "disk I/O error")


def short_error(exc: BaseException) -> str:
    """The first line of a database error, without the SQL and parameters SQLAlchemy appends."""
    driver_error = getattr(exc, "orig", None) or exc
    text = str(driver_error)
    line = text.splitlines()[0] if text else type(exc).__name__
    name = getattr(driver_error, "sqlite_errorname", None)  # the extended code names the failed step
    return f"{line} ({name})" if name and name not in line else line
