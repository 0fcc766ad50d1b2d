"""The prepared GPU check keeps working: its quick mode runs the same code paths on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_quick_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "check.json"
    proc = subprocess.run(
        [sys.executable, "scripts/gpu_check.py", str(out), "--device", "cpu", "--quick"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["ok"] is True
    assert set(report["methods"]) == {"dcmh", "contrastive"}
    assert report["finetune"]["trained_parameters"] < report["finetune"]["parameters"]
    assert all(c["passed"] for c in report["checks"].values())
