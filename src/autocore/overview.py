"""``autocore status``: a short table of the running gateway, read from its /metrics and /readyz.

It asks the endpoints the gateway serves (AUTOCORE_METRICS_HOST/PORT), so it
shows the live process, not a guess. When the gateway does not answer (stopped,
endpoints off, another port) the database still tells how many devices are
online and when telemetry last arrived. Exit code 0 means the gateway answered
and is ready; anything else is 1, so scripts and monitoring can use it as is.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from autocore.config import Settings, redact_url
from autocore.errors import StorageError
from autocore.schema import devices, telemetry_data
from autocore.storage import database_url, open_engine

#: Longest wait for each endpoint's answer.
SCRAPE_TIMEOUT_S = 3.0
#: Reject reasons listed, most frequent first.
TOP_REASONS = 5
#: Listen addresses that mean "every interface": ask loopback instead.
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1"}
#: Loopback requests never go through an http_proxy the environment may set.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

Samples = dict[str, list[tuple[dict[str, str], float]]]


def base_url(settings: Settings) -> str:
    """Where the gateway's endpoints answer, as this machine reaches them."""
    host = _WILDCARDS.get(settings.metrics_host, settings.metrics_host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.metrics_port}"


def fetch(url: str) -> tuple[int, bytes]:
    """GET ``url``; an HTTP error status (503 from /readyz) is an answer, not an exception."""
    try:
        with _OPENER.open(url, timeout=SCRAPE_TIMEOUT_S) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def parse_metrics(text: str) -> Samples:
    """Samples of a Prometheus text page by sample name (``..._total``, ``..._bucket``...)."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def _value(samples: Samples, name: str) -> float:
    """Sum over the labels of ``name``; 0 for a family with no samples yet."""
    return sum(value for _, value in samples.get(name, []))


def _by(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {labels.get(label, ""): value for labels, value in samples.get(name, [])}


def _count(value: float) -> str:
    return f"{value:.0f}"


def _listing(pairs: Iterable[tuple[str, float]]) -> str:
    return ", ".join(f"{name} {value:.0f}" for name, value in pairs) or "none"


def render(samples: Samples, ready: bool, checks: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) rows of the status table."""
    rejected = _by(samples, "autocore_messages_rejected_total", "reason")
    rows = [
        ("devices online", _count(_value(samples, "autocore_devices_online"))),
        ("messages received", _count(_value(samples, "autocore_messages_received_total"))),
        ("messages accepted", _count(_value(samples, "autocore_messages_accepted_total"))),
        ("messages rejected", _count(sum(rejected.values()))),
    ]
    top = sorted(rejected.items(), key=lambda item: (-item[1], item[0]))[:TOP_REASONS]
    rows += [(f"  {reason}", _count(count)) for reason, count in top]
    rows.append(("rate limited", _count(_value(samples, "autocore_messages_rate_limited_total"))))
    depth = _by(samples, "autocore_ring_depth", "ring")
    capacity = _by(samples, "autocore_ring_capacity", "ring")
    rings = [f"{depth[ring]:.0f} / {capacity.get(ring, 0):.0f} {ring.replace('_', ' ')}"
             for ring in sorted(depth)]
    rows.append(("buffer depth", ", ".join(rings) or "-"))
    rows.append(("rows written", f"{_count(_value(samples, 'autocore_db_rows_written_total'))} "
                 f"({_count(_value(samples, 'autocore_db_batches_total'))} batches, "
                 f"{_count(_value(samples, 'autocore_db_write_errors_total'))} write errors)"))
    age = "autocore_db_last_commit_age_seconds"  # absent before the first commit
    last = f"{_value(samples, age):.1f} s ago" if age in samples else "none yet"
    rows.append(("last commit", last))
    outcomes = _by(samples, "autocore_commands_total", "state")
    rows.append(("commands", _listing(sorted(outcomes.items()))))
    away_s = _value(samples, "autocore_mqtt_disconnected_seconds_total")
    rows.append(("reconnects", f"{_count(_value(samples, 'autocore_mqtt_reconnects_total'))} "
                 f"({away_s:.1f} s disconnected)"))
    build = next(iter(samples.get("autocore_build_info", [])), ({}, 0))[0]
    modules = ", ".join(f"{labels.get('module')}={labels.get('build')}"
                        for labels, _ in samples.get("autocore_hot_path_info", []))
    rows.append(("hot path", f"{build.get('implementation', '-')} ({modules})"))
    failing = [f"{name} ({check.get('detail', '')})"
               for name, check in checks.items() if not check.get("ok")]
    verdict = "yes" if ready else "no: " + "; ".join(failing or ["no answer from /readyz"])
    rows.append(("ready", verdict))
    return rows


def from_database(settings: Settings) -> list[tuple[str, str]]:
    """What the shared database tells without the gateway: devices online, newest telemetry row."""
    if not settings.database_url and not Path(settings.database_path).expanduser().exists():
        return [("database", f"{settings.database_path} does not exist")]
    try:
        engine = open_engine(settings)
        try:
            with engine.connect() as conn:
                online = conn.execute(select(func.count()).select_from(devices).where(
                    devices.c.status == "online", devices.c.is_active.is_not(False),
                    devices.c.type != "gateway")).scalar()
                newest = conn.execute(select(func.max(telemetry_data.c.timestamp))).scalar()
        finally:
            engine.dispose()
    except (StorageError, SQLAlchemyError) as exc:
        return [("database", f"unreadable: {exc}".splitlines()[0])]
    if isinstance(newest, datetime):
        last = f"{newest:%Y-%m-%d %H:%M:%S} ({(datetime.now() - newest).total_seconds():.0f} s ago)"
    else:
        last = "none"
    return [("database", redact_url(database_url(settings))), ("devices online", str(online)),
            ("last telemetry row", last)]


def print_table(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(label) for label, _ in rows)
    print(title)
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")


def run(settings: Settings) -> int:
    """Print the status table; 0 when the gateway answered and is ready, else 1."""
    url = base_url(settings)
    if not settings.metrics_port:
        problem = "its endpoints are off (AUTOCORE_METRICS_PORT=0)"
    else:
        try:
            metrics_status, metrics_body = fetch(f"{url}/metrics")
            ready_status, ready_body = fetch(f"{url}/readyz")
        except (OSError, urllib.error.URLError) as exc:
            problem = f"no answer from {url} ({getattr(exc, 'reason', exc)})"
        else:
            if metrics_status == 200:
                try:
                    answer = json.loads(ready_body)
                except ValueError:
                    answer = {}
                ready = ready_status == 200 and bool(answer.get("ready"))
                rows = render(parse_metrics(metrics_body.decode()), ready, answer.get("checks", {}))
                print_table(f"autocore gateway at {url}: {'ready' if ready else 'NOT READY'}", rows)
                return 0 if ready else 1
            problem = f"{url}/metrics answered HTTP {metrics_status}"
    print_table(f"autocore gateway: {problem}; from the database:", from_database(settings))
    return 1
