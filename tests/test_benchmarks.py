"""The benchmark harnesses still run: a few seconds of ``benchmarks/e2e.py --smoke``.

Speed targets live in benchmarks/ and are never asserted here (shared, noisy
machines); this only proves the harness works end to end and loses nothing at
a gentle rate.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_e2e_smoke_run_stores_everything(tmp_path: Path) -> None:
    results = tmp_path / "smoke.jsonl"
    run = subprocess.run([sys.executable, "benchmarks/e2e.py", "--smoke", "--json", str(results)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    (line,) = results.read_text().splitlines()
    result = json.loads(line)
    assert result["mode"] == "smoke" and result["sent"] > 0
    assert result["stored"] == result["sent"] and result["lost"] == 0
    assert result["log_warnings"] == []
