"""The benchmark harnesses still run: a few seconds of ``benchmarks/e2e.py --smoke``,
one short repetition of ``--floors`` and a small ``--drain --qos 1``.

Speed targets live in benchmarks/ and are never asserted here (shared, noisy
machines); this only proves the harnesses work end to end and lose nothing at
a gentle rate.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def e2e(tmp_path: Path, *args: str, timeout_s: float = 120) -> tuple[str, list[dict[str, Any]]]:
    """Run ``benchmarks/e2e.py`` with ``args``; require exit 0; return its output and JSON lines."""
    results = tmp_path / "results.jsonl"
    run = subprocess.run([sys.executable, "benchmarks/e2e.py", *args, "--json", str(results)],
                         cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout, [json.loads(line) for line in results.read_text().splitlines()]


def test_e2e_smoke_run_stores_everything(tmp_path: Path) -> None:
    _, (result,) = e2e(tmp_path, "--smoke")
    assert result["mode"] == "smoke" and result["sent"] > 0
    assert result["stored"] == result["sent"] and result["lost"] == 0
    assert result["log_warnings"] == []


def test_e2e_floors_run_splits_the_gateway_by_thread(tmp_path: Path) -> None:
    """One short repetition of ``--floors``: every consumer measured, the database thread found by name."""
    stdout, lines = e2e(tmp_path, "--floors", "--rates", "500", "--repeat", "1", "--duration", "2", "--idle", "0",
                        "--payload", "full", "--env", "AUTOCORE_WRITE_INTERVAL=0.2")
    runs = {line["build"]: line for line in lines if line["mode"] == "floors"}
    assert set(runs) == {"compiled", "paho-3.1.1", "paho-5", "sqlite3"}
    gateway = runs["compiled"]
    assert gateway["sent"] > 0 and gateway["stored"] == gateway["sent"]
    assert gateway["log_warnings"] == []
    assert {"loop_us_per_msg", "db_us_per_msg", "ratio_to_floor", "loop_ratio_to_paho"} <= set(gateway["extra"])
    assert runs["paho-3.1.1"]["stored"] == runs["paho-5"]["stored"] == runs["paho-3.1.1"]["sent"]
    assert runs["sqlite3"]["extra"]["rows_per_message"] == 12  # the full payload's readings
    (summary,) = [line for line in lines if line["mode"] == "floors-summary"]
    assert summary["extra"]["threads_split"] == 1
    assert "| 500 |" in stdout


def test_e2e_qos1_drain_matches_the_insert_path_row_for_row(tmp_path: Path) -> None:
    """``--drain --qos 1``: the gateway and its insert path alone store the same backlog, nothing twice."""
    _, results = e2e(tmp_path, "--drain", "--qos", "1", "--messages", "2000", "--repeat", "1", "--builds", "compiled",
                     "--payload", "full", "--env", "AUTOCORE_WRITE_INTERVAL=0.02", timeout_s=180)
    lines = {line["build"]: line for line in results}
    assert set(lines) == {"insert-path", "insert-path-window", "compiled"}
    for line in lines.values():
        assert line["sent"] == 2000 and line["stored"] == 2000 and line["lost"] == 0
        assert line["extra"]["duplicates"] == 0 and line["stored_per_s"] > 0
    assert lines["compiled"]["extra"]["ratio_to_insert_path"] > 0
    assert lines["compiled"]["log_warnings"] == []
