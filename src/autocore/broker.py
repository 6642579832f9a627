"""Start and stop a private Mosquitto broker on a free loopback port.

The demo uses it when nothing answers on the configured port, and the tests use
it for every broker they need. Each broker gets its own config file and data
directory and is stopped by its own PID, never by name.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

#: How long a fresh broker may take to accept connections.
STARTUP_TIMEOUT_S = 10.0
#: How long a broker may take to exit after SIGTERM before it is killed.
STOP_TIMEOUT_S = 5.0

INSTALL_HINT = "apt-get install -y mosquitto mosquitto-clients"


def find_free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a free TCP port on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_answers(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """Tell whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def mosquitto_binary() -> str | None:
    """Path of the ``mosquitto`` executable (Debian puts it in /usr/sbin)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


@dataclass
class Mosquitto:
    """A private broker process; use as a context manager or call start()/stop().

    ``extra_config`` lines are appended to the generated config (TLS listeners,
    password files, ACLs). With ``persistence=True`` queued QoS 1/2 messages
    survive a restart of the same instance.
    """

    port: int = 0
    host: str = "127.0.0.1"
    persistence: bool = False
    allow_anonymous: bool = True
    extra_config: list[str] = field(default_factory=list)
    workdir: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _own_workdir: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.port:
            self.port = find_free_port(self.host)
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="autocore-mosquitto-"))
            self._own_workdir = True

    @property
    def config_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "mosquitto.log"

    def _write_config(self) -> None:
        assert self.workdir is not None
        lines = [
            f"listener {self.port} {self.host}",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.workdir}/",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "max_queued_messages 100000",
            *self.extra_config,
        ]
        if os.geteuid() == 0:
            # Started as root, Mosquitto would switch to its own user and then fail
            # to read password files or write persistence in our private directory.
            lines.append("user root")
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self) -> Mosquitto:
        """Start the broker and wait until it accepts connections."""
        binary = mosquitto_binary()
        if binary is None:
            raise FileNotFoundError(f"mosquitto is not installed; install it with: {INSTALL_HINT}")
        if self.running:
            return self
        self._write_config()
        log = open(self.log_path, "ab")
        try:
            self.process = subprocess.Popen(
                [binary, "-c", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log.close()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited at start: {self.read_log()[-2000:]}")
            if port_answers(self.host, self.port, 0.2):
                return self
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"mosquitto did not listen on {self.host}:{self.port} in time")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def stop(self, kill: bool = False) -> None:
        """Stop the broker by its PID (SIGTERM, then SIGKILL after a grace period)."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT_S)

    def restart(self) -> Mosquitto:
        """Stop and start on the same port (and the same persistence directory)."""
        self.stop()
        self.process = None
        return self.start()

    def read_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        """Stop the broker and remove its private directory."""
        self.stop()
        if self._own_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
