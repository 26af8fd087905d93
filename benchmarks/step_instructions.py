"""Instructions per optimizer ``step()`` on the MLP parameter set, counted by valgrind (callgrind):
a deterministic measure of a step's overhead that other processes' load cannot distort.

For each optimizer the script runs itself under ``valgrind --tool=callgrind`` twice, with W + N
and W + 2N steps after the same warm-up, and reports (count₂ − count₁) / N: the instructions of
one step, start-up and warm-up cancelled. The MLP set (100k parameters, 6 tensors) is where a
step is overhead-bound, so instructions track time there; on the ResNet-18 set a step is
memory-bound and instructions say little (use ``step_cost.py``'s timings). Steps as in
``step_cost.py``: a loss that changes every step, BBI with δE = 0.5 and bounces configured.

    python benchmarks/step_instructions.py [--steps 200] [--only sgd_foreach,bbi,ecdsep]
        [--baseline-src ../ecdopt-before/src]        # needs valgrind; a few minutes
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
NAMES = ("sgd_foreach", "bbi", "ecdsep", "ecdsep_every8", "unit_speed")


def drive(name: str, steps: int, baseline: str | None) -> None:
    """Run ``steps`` steps of optimizer ``name`` (inside valgrind)."""
    import torch

    sys.path.insert(0, str(HERE))
    import step_cost

    torch.set_num_threads(1)
    if baseline:
        step_cost.BASELINE = step_cost.load_baseline(baseline)
    factory = step_cost.optimizer_factories(torch.device("cpu"))[name]
    params = step_cost.make_params(step_cost.mlp_shapes(), torch.device("cpu"))
    opt = factory(params)
    takes_loss = not isinstance(opt, torch.optim.SGD | torch.optim.Adam)
    losses = [torch.tensor(10.0 - 1e-4 * i) for i in range(steps + 10)]
    for i in range(10 + steps):
        opt.step(loss=losses[i]) if takes_loss else opt.step()


def count(name: str, steps: int, baseline: str | None) -> int:
    """Instructions of a whole run of ``steps`` steps (plus start-up and 10 warm-up steps)."""
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable]
    cmd += [__file__, "--drive", name, "--steps", str(steps)]
    if baseline:
        cmd += ["--baseline-src", baseline]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    found = re.search(r"Collected\s*:\s*(\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"callgrind run of {name} failed:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="N: the extra steps counted")
    parser.add_argument("--only", default=",".join(NAMES))
    parser.add_argument("--baseline-src", default=None, help="also count ...@baseline rows")
    parser.add_argument("--drive", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.drive:
        drive(args.drive, args.steps, args.baseline_src)
        return 0
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not installed")
    names = args.only.split(",")
    if args.baseline_src:
        names += [f"{n}@baseline" for n in ("bbi", "ecdsep") if n in names]
    per_step = {}
    for name in names:
        low, high = (count(name, n, args.baseline_src) for n in (args.steps, 2 * args.steps))
        per_step[name] = (high - low) / args.steps
        print(f"{name:<20}{per_step[name]:>12.0f} instructions/step", flush=True)
    base = per_step.get("sgd_foreach")
    if base:
        for name, value in per_step.items():
            print(f"{name:<20}{value / base:>12.2f} x SGD-foreach")
    if args.json is not None:
        args.json.write_text(json.dumps({"steps": args.steps, "per_step": per_step}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
