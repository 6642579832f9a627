"""Settings: the original's keys and defaults, .env loading, and one-line rejections."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from autocore.config import KEYS, Settings
from autocore.errors import ConfigError

# Defaults of the original gateway (CONFIG.md), by env key.
ORIGINAL_DEFAULTS = {
    "MQTT_BROKER": "localhost",
    "MQTT_PORT": 1883,
    "MQTT_USERNAME": None,
    "MQTT_PASSWORD": None,
    "MQTT_CLIENT_ID": "autocore-gateway",
    "MQTT_KEEPALIVE": 300,
    "LOG_LEVEL": "INFO",
    "LOG_FILE": "/tmp/autocore-gateway.log",
    "MAX_CONCURRENT_MESSAGES": 100,
    "MESSAGE_TIMEOUT": 30,
    "DEVICE_TIMEOUT": 300,
    "TELEMETRY_BATCH_SIZE": 10,
    "TELEMETRY_FLUSH_INTERVAL": 5,
    "ENABLE_AUTH": True,
    "SECRET_KEY": "autocore-secret-key-change-in-production",
}


def field_of(env: str) -> str:
    return next(k.field for k in KEYS if k.env == env)


def test_every_original_key_keeps_its_default() -> None:
    settings = Settings.from_env({}, env_file=None)
    for env, expected in ORIGINAL_DEFAULTS.items():
        assert getattr(settings, field_of(env)) == expected, env
    assert settings.database_path.endswith("database/autocore.db")
    assert sum(k.original for k in KEYS) == 16


def test_environment_overrides_defaults() -> None:
    settings = Settings.from_env({
        "MQTT_BROKER": "10.0.0.5", "MQTT_PORT": "8883", "DEVICE_TIMEOUT": "60",
        "TELEMETRY_FLUSH_INTERVAL": "0.05", "ENABLE_AUTH": "FALSE", "LOG_LEVEL": "debug",
    }, env_file=None)
    assert settings.mqtt_broker == "10.0.0.5"
    assert settings.mqtt_port == 8883
    assert settings.device_timeout_s == 60
    assert settings.telemetry_flush_interval_s == 0.05
    assert settings.enable_auth is False
    assert settings.log_level == "DEBUG"


def test_dotenv_file_is_read_and_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("MQTT_PORT=1884\nMQTT_BROKER=from-file\nGATEWAY_NAME=ignored\nJWT_ALGORITHM=HS256\n")
    settings = Settings.from_env({"MQTT_BROKER": "from-env"}, env_file=env_file)
    assert settings.mqtt_port == 1884
    assert settings.mqtt_broker == "from-env"


def test_credentials_need_both_values_and_enable_auth() -> None:
    assert Settings.from_env({"MQTT_USERNAME": "autocore"}, env_file=None).credentials is None
    both = {"MQTT_USERNAME": "autocore", "MQTT_PASSWORD": "pw"}
    assert Settings.from_env(both, env_file=None).credentials == ("autocore", "pw")
    assert Settings.from_env({**both, "ENABLE_AUTH": "false"}, env_file=None).credentials is None


@pytest.mark.parametrize(("env", "value", "expected"), [
    ("MQTT_PORT", "abc", "an integer 1-65535"),
    ("MQTT_PORT", "70000", "an integer 1-65535"),
    ("TELEMETRY_BATCH_SIZE", "-5", "an integer 1-100000"),
    ("TELEMETRY_FLUSH_INTERVAL", "nan", "a number >= 0"),
    ("DEVICE_TIMEOUT", "soon", "a number > 0"),
    ("ENABLE_AUTH", "maybe", "true or false"),
    ("LOG_LEVEL", "LOUD", "one of DEBUG"),
    ("MQTT_CLIENT_ID", "bad/id+", "1-64 characters"),
    ("MQTT_TLS_CA_FILE", "/nonexistent/ca.pem", "existing file"),
    ("AUTOCORE_SHARED_GROUP", "fleet/one", "1-64 characters"),
    ("AUTOCORE_SHARED_GROUP", "+", "1-64 characters"),
])
def test_bad_values_name_the_key_and_expected_form(env: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({env: value}, env_file=None)
    assert caught.value.key == env
    assert expected in str(caught.value)


def test_secrets_never_show() -> None:
    settings = Settings.from_env({"MQTT_PASSWORD": "hunter2", "SECRET_KEY": "s3cret"}, env_file=None)
    assert "hunter2" not in repr(settings) and "s3cret" not in repr(settings)
    shown = dict((env, value) for env, value, _ in settings.redacted())
    assert shown["MQTT_PASSWORD"] == "********"
    assert shown["SECRET_KEY"] == "********"


def test_database_url_password_never_shows() -> None:
    settings = Settings.from_env({"DATABASE_URL": "postgresql://autocore:hunter2@db.local/autocore"},
                                 env_file=None)
    shown = dict((env, value) for env, value, _ in settings.redacted())
    assert "hunter2" not in shown["DATABASE_URL"]
    assert shown["DATABASE_URL"].startswith("postgresql://autocore:***@db.local")


def test_postgres_urls_get_psycopg_and_sqlite_is_the_default(tmp_path: Path) -> None:
    from autocore.storage import database_url

    for given in ("postgresql://u@h/db", "postgres://u@h/db", "postgresql+psycopg://u@h/db"):
        assert database_url(Settings.from_env({"DATABASE_URL": given}, env_file=None)) == \
            "postgresql+psycopg://u@h/db"
    default = Settings.from_env({"DATABASE_PATH": str(tmp_path / "a.db")}, env_file=None)
    assert database_url(default) == f"sqlite:///{tmp_path / 'a.db'}"
    assert Settings.from_env({}, env_file=None).shared_group is None
    assert Settings.from_env({"AUTOCORE_SHARED_GROUP": "depot"}, env_file=None).shared_group == "depot"


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None
            ) -> subprocess.CompletedProcess[str]:
    import os

    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("MQTT_", "TELEMETRY_"))}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "autocore", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=60)


@pytest.mark.parametrize("command", ["run", "check-config"])
def test_cli_rejects_bad_config_with_one_line_and_exit_2(command: str, tmp_path: Path) -> None:
    result = run_cli(command, env={"MQTT_PORT": "abc"}, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "MQTT_PORT" in lines[0] and "expected an integer 1-65535" in lines[0]
    assert "Traceback" not in result.stderr


def test_cli_bad_value_from_dotenv_file(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("TELEMETRY_BATCH_SIZE=-1\n")
    result = run_cli("check-config", cwd=tmp_path)
    assert result.returncode == 2
    assert "TELEMETRY_BATCH_SIZE" in result.stderr


def test_check_config_masks_secrets(tmp_path: Path) -> None:
    result = run_cli("check-config", env={"MQTT_PASSWORD": "hunter2", "MQTT_USERNAME": "autocore"},
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout
    assert "MQTT_PASSWORD" in result.stdout and "configuration OK" in result.stdout


def test_version_and_info_report_the_build(tmp_path: Path) -> None:
    from autocore import __version__, _fast

    version = run_cli("--version", cwd=tmp_path)
    assert version.returncode == 0 and __version__ in version.stdout
    info = run_cli("info", cwd=tmp_path)
    assert info.returncode == 0
    for stem, build in _fast.IMPLEMENTATIONS.items():
        assert f"hot path: {stem}" in info.stdout
        assert build in info.stdout
    assert "json parser" in info.stdout and "event loop" in info.stdout
