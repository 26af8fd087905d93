"""benchmarks/lr_scan.py (the scans behind docs/tuning.md's lr advice) runs: smoke sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "lr_scan.py"


@pytest.mark.parametrize("task", ["digits", "gpt"])
def test_lr_scan_smoke(task, tmp_path):
    pytest.importorskip("transformers")
    out = tmp_path / "scan.json"
    cmd = [sys.executable, str(SCRIPT), task, "--steps", "3", "--seeds", "2"]
    cmd += ["--optimizers", "bbi,sgdm", "--grid", "bbi=0.1", "--grid", "sgdm=0.01,1e9"]
    done = subprocess.run(
        [*cmd, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONWARNINGS="ignore"),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    rows = {(r["optimizer"], r["lr"]): r for r in result["rows"]}
    assert set(rows) == {("bbi", 0.1), ("sgdm", 0.01), ("sgdm", 1e9)}
    assert rows["bbi", 0.1]["diverged"] == 0 and len(rows["bbi", 0.1]["runs"]) == 2
    assert rows["sgdm", 1e9]["diverged"] == 2  # an absurd lr is reported, not crashed on
    assert done.stdout.count("\n") == 3


def test_lr_scan_bad_grid_is_a_usage_error(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "mlp", "--grid", "lamb=0.1", "--json", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "--grid" in done.stderr
