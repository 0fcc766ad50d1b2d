"""The demo command and the benchmark script run end to end (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cmrops.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_demo_runs_and_reports_exact_results(capsys):
    assert main(["demo", "--n", "30000", "--bits", "128"]) == 0
    out = capsys.readouterr().out
    assert "exact against numpy brute force on 20 queries: yes" in out
    assert "identical results: yes" in out


def test_demo_rejects_bad_bits(capsys):
    assert main(["demo", "--bits", "100"]) == 2
    assert "--bits" in capsys.readouterr().err


def test_core_benchmark_quick_mode_agrees_with_faiss(tmp_path):
    out = tmp_path / "core.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benches" / "bench_core.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert {r["bench"] for r in rows} == {"paths", "kNN", "radius", "all pairs", "memory"}
    assert all(r["same"] for r in rows)
