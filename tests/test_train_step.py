"""benchmarks/train_step.py (end-to-end training steps, side by side) runs: smoke sizes."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_step.py"


def test_train_step_smoke(tmp_path):
    out = tmp_path / "train_step.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--models", "digits,resnet18,gpt",
         "--optimizers", "sgdm,adamw,bbi,ecdsep_every8,unit_speed", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(out.read_text())
    gpt = "gpt" if importlib.util.find_spec("ecdopt.experiments.gpt") else "gpt-standin"
    assert set(doc["models"]) == {"digits", "resnet18", gpt}
    assert doc["clock"] == "process"
    for model in doc["models"].values():
        rows = model["optimizers"]
        assert set(rows) == {"sgdm", "adamw", "bbi", "ecdsep_every8", "unit_speed"}
        assert rows["sgdm"]["ratio_to_sgdm"] == 1.0
        for row in rows.values():
            assert row["median_ms"] > 0 and math.isfinite(row["final_loss"])
    assert doc["models"]["resnet18"]["params"] > 10_000_000
    assert len(done.stdout.strip().splitlines()) == 1 + 3 * 5 + 1  # header, rows, "wrote"


def test_train_step_refuses_unknown_names():
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--models", "vgg"], capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "--models: unknown model 'vgg'" in done.stderr


def test_gpu_checks_script_calls_existing_scripts_and_options():
    """benchmarks/gpu_checks.sh (the prepared GPU run) parses, and every benchmark option it
    passes exists (each script's --help lists it), so the run cannot die on a typo."""
    import re

    script = SCRIPT.parent / "gpu_checks.sh"
    assert subprocess.run(["bash", "-n", str(script)], timeout=30).returncode == 0
    text = script.read_text().replace("\\\n", " ")
    calls = re.findall(r"benchmarks/(\w+\.py)([^\n]*)", text)
    assert {name for name, _ in calls} == {
        "step_cost.py", "pde_gpu.py", "vision_gpu.py", "train_step.py"
    }  # fmt: skip
    for name, rest in calls:
        helped = subprocess.run(
            [sys.executable, str(SCRIPT.parent / name), "--help"], capture_output=True,
            text=True, timeout=120,
        )  # fmt: skip
        assert helped.returncode == 0, helped.stderr[-2000:]
        for flag in re.findall(r"(--[a-z][a-z-]*)", rest):
            assert flag in helped.stdout, f"{name} has no {flag}"
    tests = re.search(r"-k cuda\s+(.*?)\n", text).group(1).split()
    assert all((SCRIPT.parents[1] / t).exists() for t in tests)
