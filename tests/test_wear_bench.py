"""The wear benchmark still runs: one short window of ``benchmarks/wear.py`` at a gentle load.

Bytes written per reading are a benchmark figure and are never asserted here;
this only proves that the harness measures a window, reads the gateway's I/O
counters and the database, and reports every field.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("qos", [0, 1])
def test_wear_smoke_run_measures_a_window(tmp_path: Path, qos: int) -> None:
    results = tmp_path / "wear.jsonl"
    run = subprocess.run(
        [sys.executable, "benchmarks/wear.py", "--loads", "5x5", "--runs", "1", "--warmup", "1",
         "--window", "3", "--qos", str(qos), "--dir", str(tmp_path), "--any-fs", "--json", str(results),
         # commits within a 3 s window (the default interval, 60 s, would hold them all past it)
         "--env", "AUTOCORE_WRITE_INTERVAL=0.2"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    single, median = (json.loads(line) for line in results.read_text().splitlines())
    assert single["mode"] == "wear" and median["mode"] == "wear-median"
    assert single["qos"] == qos and single["sent"] > 0
    assert single["lost"] == 0 and single["stored_messages"] == single["sent"]
    assert single["readings"] > 0 and single["readings_per_message"] == 12
    assert single["commits_per_s"] is not None and single["files_end"]["db"] > 0
    if single["fs_type"] not in ("tmpfs", "ramfs"):  # nothing reaches a block device on those
        assert single["write_bytes"] > 0 and single["written_per_reading"] > 0
    assert single["log_warnings"] == []
    assert "written B/reading" in run.stdout


def test_a_window_without_a_commit_says_so_instead_of_a_figure(tmp_path: Path) -> None:
    """At the default 60 s interval a 3 s window holds no commit: no bytes per reading to report."""
    results = tmp_path / "wear.jsonl"
    run = subprocess.run(
        [sys.executable, "benchmarks/wear.py", "--loads", "5x5", "--runs", "1", "--warmup", "1",
         "--window", "3", "--dir", str(tmp_path), "--any-fs", "--json", str(results)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    single, median = (json.loads(line) for line in results.read_text().splitlines())
    assert single["readings"] == 0 and single["written_per_reading"] is None
    assert median["written_per_reading"] is None
    assert "no reading was committed in the 3 s window" in run.stdout
