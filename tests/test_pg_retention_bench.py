"""The PostgreSQL retention benchmark still runs: ``benchmarks/pg_retention.py`` at a tiny size.

Times and WAL volumes are benchmark figures and are never asserted here; this
only proves that both layouts are built, filled, expired and measured, and
that the script's own checks (nothing lost, the partitions' roll-ups equal
Retention's) pass.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.services import _pg_bin

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def test_pg_retention_smoke_run_measures_both_layouts(tmp_path: Path) -> None:
    pytest.importorskip("psycopg", reason="psycopg is not installed (the postgres extra)")
    if _pg_bin("initdb") is None or _pg_bin("pg_ctl") is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    results = tmp_path / "retention.jsonl"
    run = subprocess.run(
        [sys.executable, "benchmarks/pg_retention.py", "--rows", "24000", "--runs", "1", "--baseline", "0.5",
         "--json", str(results)],
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout + run.stderr
    by_layout = {line["layout"]: line for line in map(json.loads, results.read_text().splitlines())}
    assert set(by_layout) == {"A", "B"}
    a, b = by_layout["A"], by_layout["B"]
    assert a["quiet"]["rows"] == b["quiet"]["rows"] == a["rows_per_day"] > 0
    assert a["quiet"]["batches"] >= 1 and a["quiet_sql"]["rows"] == a["rows_per_day"]
    for result in (a, b):
        assert result["quiet"]["wal"] > 0 and result["loaded"]["inserted"] > 0
        assert result["loaded"]["reader_baseline_n"] > 0 and result["loaded"]["inserter_baseline_n"] > 0
    assert b["quiet"]["size_after"] < b["quiet"]["size_before"]  # the day's partition is gone
    assert "| A: row deletes" in run.stdout and "B: daily partitions" in run.stdout
