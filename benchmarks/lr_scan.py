"""Learning-rate scans behind the tuning advice (docs/tuning.md): BBI and ECDSep against
SGD with momentum (μ = 0.9) and AdamW, at a fixed step budget, several seeds.

Tasks (all offline, CPU, one torch thread):

- ``digits``: the digits CNN of ``ecdopt train digits`` (scikit-learn's 8×8 digits, 1347 train /
  450 test), batch 32, cross-entropy; ranked by test accuracy.
- ``mlp``: teacher-student regression, x ~ N(0, I_10), y = teacher(x) + 0.1 noise (2000 train /
  1000 test), student 10-64-64-1 tanh, batch 32, MSE; ranked by test MSE (noise floor 0.01).
- ``gpt``: a tiny GPT-2 from ``transformers`` (2 layers, width 32, 2 heads, byte-level vocabulary
  of 256, context 65) on the source text of four standard-library modules (``argparse``,
  ``json``, ``textwrap``, ``dataclasses``), batch 16 × 64 predicted tokens; ranked by the mean
  token cross-entropy on 128 blocks of ``email.message``'s source.

Each (optimizer, lr) runs with seeds 0..S-1 (model initialisation, data order, the ECD
generator); a run whose training loss turns NaN/inf is counted as diverged. Optimizers use the
library's defaults except lr (BBI: δE = 0, F0 = 0, one bounce at step 1000; AdamW: weight decay
0.01). Usage::

    python benchmarks/lr_scan.py digits --steps 400 --json scan_digits.json
    python benchmarks/lr_scan.py gpt --steps 300 --optimizers bbi --grid bbi=0.1,0.2 --json g.json
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ecdopt import BBI, ECDSep

GRIDS: dict[str, list[float]] = {
    "sgdm": [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0],
    "adamw": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2],
    "bbi": [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0],
    "ecdsep": [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0],
}
MOMENTUM = 0.9


@dataclass
class Task:
    """A model family, its training batches, loss and evaluation, and the ranking metric."""

    build: Callable[[int], nn.Module]
    batches: Callable[[int], Iterator[Any]]
    loss: Callable[[nn.Module, Any], torch.Tensor]
    evaluate: Callable[[nn.Module], dict[str, float]]
    metric: str
    higher_is_better: bool


def make_optimizer(name: str, params: Any, lr: float, seed: int) -> torch.optim.Optimizer:
    """The optimizer ``name`` with learning rate ``lr`` and otherwise default settings."""
    if name == "sgdm":
        return torch.optim.SGD(params, lr=lr, momentum=MOMENTUM)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr)
    if name == "bbi":
        return BBI(params, lr=lr, seed=seed)
    if name == "ecdsep":
        return ECDSep(params, lr=lr, seed=seed)
    raise ValueError(f"optimizer must be one of {sorted(GRIDS)}, got {name!r}")


def _shuffled_batches(n: int, batch: int, seed: int) -> Iterator[torch.Tensor]:
    """Index batches of an epoch-wise reshuffled range(n), dropping the last partial batch."""
    gen = torch.Generator().manual_seed(seed + 1000)
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - batch + 1, batch):
            yield perm[i : i + batch]


def _seeded(factory: Callable[[], nn.Module]) -> Callable[[int], nn.Module]:
    def build(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return factory()

    return build


def digits_task() -> Task:
    """The digits CNN on scikit-learn's digits (the `ecdopt train digits` data and model)."""
    from ecdopt.experiments.vision.data import load_digits
    from ecdopt.experiments.vision.models import DigitsCNN

    data = load_digits()
    xtr, ytr = data.transform(data.train_x, None), data.train_y
    xte, yte = data.transform(data.test_x, None), data.test_y

    def batches(seed: int) -> Iterator[Any]:
        return ((xtr[i], ytr[i]) for i in _shuffled_batches(len(xtr), 32, seed))

    @torch.no_grad()
    def evaluate(model: nn.Module) -> dict[str, float]:
        logits = model(xte)
        return {
            "test_loss": float(F.cross_entropy(logits, yte)),
            "test_acc": float((logits.argmax(1) == yte).float().mean()),
            "train_loss": float(F.cross_entropy(model(xtr), ytr)),
        }

    return Task(
        _seeded(DigitsCNN),
        batches,
        lambda model, b: F.cross_entropy(model(b[0]), b[1]),
        evaluate,
        "test_acc",
        True,
    )


def mlp_task() -> Task:
    """Teacher-student regression with a 10-64-64-1 tanh student."""
    gen = torch.Generator().manual_seed(12345)
    w1 = torch.randn(10, 32, generator=gen) / 10**0.5
    w2 = torch.randn(32, 1, generator=gen) / 32**0.5
    x = torch.randn(3000, 10, generator=gen)
    y = (torch.tanh(x @ w1) @ w2).squeeze(-1) * 2.0 + 0.1 * torch.randn(3000, generator=gen)
    xtr, ytr, xte, yte = x[:2000], y[:2000], x[2000:], y[2000:]

    def student() -> nn.Module:
        return nn.Sequential(
            nn.Linear(10, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1)
        )

    def batches(seed: int) -> Iterator[Any]:
        return ((xtr[i], ytr[i]) for i in _shuffled_batches(len(xtr), 32, seed))

    @torch.no_grad()
    def evaluate(model: nn.Module) -> dict[str, float]:
        return {
            "test_loss": float(F.mse_loss(model(xte).squeeze(-1), yte)),
            "train_loss": float(F.mse_loss(model(xtr).squeeze(-1), ytr)),
        }

    return Task(
        _seeded(student),
        batches,
        lambda model, b: F.mse_loss(model(b[0]).squeeze(-1), b[1]),
        evaluate,
        "test_loss",
        False,
    )


def gpt_task() -> Task:
    """A tiny GPT-2 (transformers) on byte-level standard-library source text."""
    import argparse as m1
    import dataclasses as m4
    import email.message as held_out
    import json as m2
    import textwrap as m3

    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging

    logging.set_verbosity_error()
    length = 65

    def blocks(text: bytes) -> torch.Tensor:
        n = len(text) // length
        return torch.tensor(list(text[: n * length]), dtype=torch.long).view(n, length)

    train = blocks("".join(inspect.getsource(m) for m in (m1, m2, m3, m4)).encode())
    test = blocks(inspect.getsource(held_out).encode())[:128]
    config = GPT2Config(
        vocab_size=256,
        n_positions=length,
        n_embd=32,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )

    def batches(seed: int) -> Iterator[Any]:
        return (train[i] for i in _shuffled_batches(len(train), 16, seed))

    @torch.no_grad()
    def evaluate(model: nn.Module) -> dict[str, float]:
        return {
            "test_loss": float(model(input_ids=test, labels=test).loss),
            "train_loss": float(model(input_ids=train[:256], labels=train[:256]).loss),
        }

    return Task(
        _seeded(lambda: GPT2LMHeadModel(config)),
        batches,
        lambda model, ids: model(input_ids=ids, labels=ids).loss,
        evaluate,
        "test_loss",
        False,
    )


TASKS: dict[str, Callable[[], Task]] = {"digits": digits_task, "mlp": mlp_task, "gpt": gpt_task}


def run_one(task: Task, optimizer: str, lr: float, seed: int, steps: int) -> dict[str, Any]:
    """Train ``steps`` steps; the evaluation, or NaNs and ``diverged`` if the loss blew up."""
    model = task.build(seed)
    opt = make_optimizer(optimizer, model.parameters(), lr, seed)
    batches = task.batches(seed)
    diverged = False
    for _ in range(steps):
        batch = next(batches)
        opt.zero_grad()
        loss = task.loss(model, batch)
        if not math.isfinite(float(loss.detach())):
            diverged = True
            break
        loss.backward()
        opt.step(lambda: loss)  # noqa: B023 (called at once)
    result: dict[str, Any] = task.evaluate(model)
    if diverged or not all(math.isfinite(v) for v in result.values()):
        result = dict.fromkeys(result, math.nan)
        diverged = True
    result["diverged"] = diverged
    return result


def _write_json(path: Path, obj: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def main() -> None:
    """Scan, print one line per (optimizer, lr), write the JSON after each."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task", choices=sorted(TASKS))
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps per run")
    parser.add_argument("--seeds", type=int, default=3, help="runs per lr (seeds 0..S-1)")
    parser.add_argument("--optimizers", default="sgdm,adamw,bbi,ecdsep")
    parser.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2,...")
    parser.add_argument("--json", required=True, type=Path, help="results file")
    args = parser.parse_args()
    if not args.json.parent.is_dir():
        parser.error(f"--json: folder {args.json.parent} does not exist")
    for spec in args.grid:
        name, _, values = spec.partition("=")
        if name not in GRIDS or not values:
            parser.error(f"--grid: expected NAME=V1,V2 with NAME in {sorted(GRIDS)}, got {spec!r}")
        GRIDS[name] = [float(v) for v in values.split(",")]
    torch.set_num_threads(1)
    task = TASKS[args.task]()
    results: dict[str, Any] = {
        "task": args.task,
        "steps": args.steps,
        "seeds": args.seeds,
        "metric": task.metric,
        "torch": torch.__version__,
        "rows": [],
    }
    start = time.time()
    for optimizer in args.optimizers.split(","):
        for lr in GRIDS[optimizer]:
            runs = [run_one(task, optimizer, lr, s, args.steps) for s in range(args.seeds)]
            values = np.array([r[task.metric] for r in runs])
            row = {
                "optimizer": optimizer,
                "lr": lr,
                "mean": float(values.mean()),
                "std": float(values.std()),
                "train_loss_mean": float(np.mean([r["train_loss"] for r in runs])),
                "diverged": sum(r["diverged"] for r in runs),
                "runs": runs,
            }
            results["rows"].append(row)
            _write_json(args.json, results)
            print(
                f"{args.task} {optimizer:7s} lr={lr:<7g} {task.metric}={row['mean']:.4f}"
                f"±{row['std']:.4f} train={row['train_loss_mean']:.4f} "
                f"diverged={row['diverged']}/{args.seeds} t={time.time() - start:.0f}s",
                flush=True,
            )


if __name__ == "__main__":
    main()
