"""Command line: ``autocore run | demo | check-config | info | status``; the only caller of the event loop runner.

Configuration errors print one line naming the key and exit with code 2, so a
systemd journal shows the cause at a glance, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from autocore import __version__
from autocore.config import KEYS, Settings
from autocore.errors import ConfigError
from autocore.logs import JsonFormatter

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: LOG_FILE is rotated at this size, keeping LOG_BACKUPS older files (LOG_FILE.1 ...):
#: at most 40 MiB of an SD card, whatever a flood of bad input makes the gateway log.
LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 3


def uvloop_disabled() -> bool:
    """Tell whether ``AUTOCORE_NO_UVLOOP`` forces the stdlib loop although uvloop is installed."""
    return os.environ.get("AUTOCORE_NO_UVLOOP", "").strip().lower() in {"1", "true", "yes", "on"}


def run_loop(coro: Coroutine[Any, Any, int]) -> int:
    """Run ``coro`` on uvloop when it is installed and not switched off, else on the stdlib loop."""
    if not uvloop_disabled():
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(coro)
    return asyncio.run(coro)


def setup_logging(settings: Settings) -> None:
    """Log to stderr (the journal) and, when set, to LOG_FILE as well, as text or JSON lines.

    LOG_FILE is rotated by size (LOG_MAX_BYTES, LOG_BACKUPS): the journal has
    its own limits, a plain file would grow until the card is full.
    """
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if settings.log_file:
        try:
            from logging.handlers import RotatingFileHandler
            from pathlib import Path

            Path(settings.log_file).parent.mkdir(parents=True, exist_ok=True)
            handlers.append(RotatingFileHandler(settings.log_file, maxBytes=LOG_MAX_BYTES,
                                                backupCount=LOG_BACKUPS))
        except OSError as exc:
            print(f"autocore: cannot write LOG_FILE {settings.log_file}: {exc}", file=sys.stderr)
    line_format = JsonFormatter() if settings.log_format == "json" else logging.Formatter(LOG_FORMAT)
    for handler in handlers:
        handler.setFormatter(line_format)
    logging.basicConfig(level=settings.log_level_number, handlers=handlers, force=True)


def load_settings(env_file: str | None, **overrides: Any) -> Settings:
    return Settings.from_env(env_file=env_file or ".env", **overrides)


def json_parser_report() -> str:
    """Name the JSON parser behind the envelope validator: compiled-in simdjson or stdlib json."""
    from autocore import _fast

    if _fast.IMPLEMENTATIONS["envelope"] == _fast.CYTHON:
        return "simdjson (compiled into the envelope validator)"
    if _fast.extensions_disabled():
        return "stdlib json (pure envelope validator: AUTOCORE_NO_EXTENSIONS=1)"
    return "stdlib json (pure envelope validator: not compiled in this install)"


def event_loop_report() -> str:
    """Name the event loop ``run_loop`` will use, and why when it is not uvloop."""
    try:
        import uvloop
    except ImportError:
        return "asyncio (uvloop not installed)"
    version = getattr(uvloop, "__version__", "installed")
    if uvloop_disabled():
        return f"asyncio (uvloop {version} installed, off: AUTOCORE_NO_UVLOOP=1)"
    return f"uvloop {version}"


def implementation_report() -> list[tuple[str, str]]:
    """(component, what is in use) rows for ``info`` and the demo."""
    from autocore import _fast

    rows = [(f"hot path: {stem}", build) for stem, build in _fast.IMPLEMENTATIONS.items()]
    rows.append(("json parser", json_parser_report()))
    rows.append(("event loop", event_loop_report()))
    return rows


def cmd_info(_args: argparse.Namespace) -> int:
    print(f"autocore {__version__}")
    print(f"python   {platform.python_implementation()} {platform.python_version()} ({platform.machine()})")
    for name, value in implementation_report():
        print(f"{name:<20} {value}")
    return EXIT_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = load_settings(args.env_file)
    width = max(len(k.env) for k in KEYS)
    for env, shown, help_text in settings.redacted():
        print(f"{env:<{width}}  {shown:<28}  {help_text}")
    print("configuration OK")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    settings = load_settings(args.env_file)
    setup_logging(settings)
    from autocore.gateway import Gateway

    logging.getLogger("autocore").info(
        "autocore %s starting (%s)", __version__,
        ", ".join(f"{k}={v}" for k, v in implementation_report()),
    )
    return run_loop(Gateway(settings).run())


def cmd_status(args: argparse.Namespace) -> int:
    from autocore import overview

    return overview.run(load_settings(args.env_file))


def cmd_db(args: argparse.Namespace) -> int:
    from autocore import maintenance

    return maintenance.run(load_settings(args.env_file), args.action, full=args.full)


def cmd_demo(args: argparse.Namespace) -> int:
    from autocore.demo import run_demo

    return run_demo(duration_s=args.duration, devices=args.devices, env_file=args.env_file,
                    workdir=args.workdir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autocore", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version",
                        version=f"autocore {__version__} (python {platform.python_version()})")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: Any, help_text: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.add_argument("--env-file", default=".env", help="dotenv file (default: ./.env)")
        command.set_defaults(func=func)
        return command

    add("run", cmd_run, "run the gateway (drop-in for the original AutoCore gateway)")
    demo = add("demo", cmd_demo, "simulate ESP32 devices against a gateway on embedded defaults")
    demo.add_argument("--duration", type=float, default=10.0, help="seconds of simulated traffic")
    demo.add_argument("--devices", type=int, default=3, help="simulated telemetry devices")
    demo.add_argument("--workdir", default=None, help="where the demo database goes (default: temp dir)")
    add("check-config", cmd_check_config, "validate the configuration and print it (secrets masked)")
    add("info", cmd_info, "show version, Python, and which builds and accelerators are active")
    add("status", cmd_status, "show the running gateway's counters and readiness (exit 0 when ready)")
    db = add("db", cmd_db, "database maintenance, safe beside a running gateway: "
                           "stats, prune (retention now), vacuum (give freed pages back)")
    db.add_argument("action", choices=("stats", "prune", "vacuum"))
    db.add_argument("--full", action="store_true",
                    help="vacuum: rewrite a database without incremental auto-vacuum (stop the gateway first)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"autocore: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
