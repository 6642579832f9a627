"""The container files: the image's settings, its health check against a real gateway, compose.yaml.

These read the Containerfile and compose.yaml at the root of the source tree, so
they skip in a copy of the tests (the wheel builds test from one). Building the
image and running the gateway inside it is ``./run.sh image-test`` (root,
podman, a few minutes), not part of this suite.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from autocore.broker import find_free_port
from autocore.config import KEYS, Settings
from tests.fixtures.services import wait_for

ROOT = Path(__file__).resolve().parent.parent
CONTAINERFILE = ROOT / "Containerfile"
COMPOSE = ROOT / "compose.yaml"
#: Longest a health check command may take (the Containerfile gives it 5 s).
HEALTH_TIMEOUT_S = 10.0

pytestmark = pytest.mark.skipif(
    not (CONTAINERFILE.is_file() and COMPOSE.is_file()),
    reason="Containerfile and compose.yaml are not next to the tests (a copy of the tests)",
)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Containerfile: continuations joined, comments dropped."""
    logical: list[str] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in logical]


def runtime_stage() -> list[tuple[str, str]]:
    """The instructions of the last stage, the one the image is made of."""
    found = instructions(CONTAINERFILE.read_text())
    last_from = max(i for i, (name, _) in enumerate(found) if name == "FROM")
    return found[last_from:]


def image_environment() -> dict[str, str]:
    env: dict[str, str] = {}
    for name, args in runtime_stage():
        if name == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def one(name: str) -> str:
    values = [args for found, args in runtime_stage() if found == name]
    assert len(values) == 1, f"{name} appears {len(values)} times in the runtime stage"
    return values[0]


def test_the_image_environment_is_a_valid_configuration() -> None:
    env = image_environment()
    assert set(env) - {"PATH"} <= {key.env for key in KEYS}
    settings = Settings.from_env(environ=env, env_file=None)
    assert settings.database_path == "/data/autocore.db"
    assert settings.create_database  # an empty /data volume on the first start
    assert settings.log_file == ""  # stderr only: the container's log
    assert settings.metrics_host == "0.0.0.0"  # reachable through a published port
    assert one("EXPOSE").split() == [f"{settings.metrics_port}"]
    assert json.loads(one("VOLUME")) == ["/data"]


def test_the_image_runs_unprivileged_and_stops_on_sigterm() -> None:
    user = one("USER").split(":")[0]
    assert user.isdigit() and int(user) != 0  # numeric: runAsNonRoot can verify it
    assert one("STOPSIGNAL") == "SIGTERM"
    # Exec form: the gateway is PID 1 and receives the signal itself, not a shell.
    assert json.loads(one("ENTRYPOINT"))[0].endswith("/autocore")
    assert json.loads(one("CMD")) == ["run"]


def health_command() -> list[str]:
    """The HEALTHCHECK's exec-form command, run with this interpreter."""
    args = one("HEALTHCHECK")
    command = json.loads(args[args.index("CMD [") + len("CMD "):])
    return [sys.executable if part == "python3" else part for part in command]


def test_the_health_check_follows_readyz(env) -> None:  # type: ignore[no-untyped-def]
    """Exit 0 while /readyz answers 200, non-zero on 503 and when nothing answers."""
    port = find_free_port()
    gateway = env.gateway(AUTOCORE_METRICS_PORT=str(port))
    check_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AUTOCORE_")},
        # The image's own value: the check must ask loopback instead.
        "AUTOCORE_METRICS_HOST": "0.0.0.0",
        "AUTOCORE_METRICS_PORT": str(port),
        # A proxy from the environment must not see loopback requests.
        "http_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
    }

    def check() -> int:
        return subprocess.run(health_command(), env=check_env, capture_output=True,
                              timeout=HEALTH_TIMEOUT_S).returncode

    wait_for(lambda: check() == 0, what="the health check to pass")
    env.broker.stop()  # /readyz: 503, broker check failing
    wait_for(lambda: check() != 0, what="the health check to fail without the broker")
    assert gateway.stop() == 0
    assert check() != 0


# -- compose.yaml ----------------------------------------------------------------------------------

GATEWAY_KEY = re.compile(r"^\s+((?:MQTT|AUTOCORE|DATABASE|LOG|TELEMETRY|DEVICE|MESSAGE)_[A-Z0-9_]+):\s*(\S.*)$")


def compose_settings() -> list[tuple[str, str]]:
    """(key, value) of every gateway setting written in compose.yaml, in order."""
    return [(m[1], m[2]) for line in COMPOSE.read_text().splitlines() if (m := GATEWAY_KEY.match(line))]


def test_compose_sets_only_configuration_keys() -> None:
    known = {key.env for key in KEYS}
    unknown = {key for key, _ in compose_settings()} - known
    assert not unknown, f"compose.yaml sets keys the gateway does not read: {sorted(unknown)}"


def test_compose_replicas_share_a_group_under_their_own_client_ids() -> None:
    settings = compose_settings()
    client_ids = [value for key, value in settings if key == "MQTT_CLIENT_ID"]
    groups = {value for key, value in settings if key == "AUTOCORE_SHARED_GROUP"}
    assert len(client_ids) == len(set(client_ids)) == 3  # the SQLite gateway and two replicas
    assert len(groups) == 1


COMPOSE_TOOL = shutil.which("docker-compose")


@pytest.mark.skipif(COMPOSE_TOOL is None,
                    reason="docker-compose is not installed (apt-get install docker-compose)")
@pytest.mark.parametrize("profile", [None, "postgres"], ids=["default", "postgres"])
def test_compose_file_validates(profile: str | None) -> None:
    """docker-compose checks the file against the compose specification's schema, offline."""
    command = [str(COMPOSE_TOOL), "-f", str(COMPOSE)]
    if profile:
        command += ["--profile", profile]
    result = subprocess.run(command + ["config", "-q"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
