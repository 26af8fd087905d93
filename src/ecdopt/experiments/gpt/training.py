"""One training run of the byte-level transformer, its held-out evaluation, and the presets.

A run (:func:`train_run`) is fixed by its :class:`RunSpec`: the seed fixes the initial weights
(``torch.manual_seed``), the order of the training windows, the attention-bias draws and the ECD
optimizers' own draws, each from its own stream, so two optimizers at one seed see the same
batches and the same biases. Every step calls ``optimizer.step(closure)``: the closure zeroes
the gradients, computes the batch's mean cross-entropy F (nats per byte), runs backward and
returns F — the loss ECD needs for its potential V = F − F0 (``loss_floor``). A non-finite
training loss ends the run as diverged; nothing non-finite is written into the results (the
JSON holds ``null``).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import statistics
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from ecdopt import NonFiniteLossWarning
from ecdopt.experiments import registry
from ecdopt.experiments.gpt.data import Corpus, eval_windows, sample_batch
from ecdopt.experiments.gpt.model import GPT, BiasSpec, GPTConfig, draw_biases, mean_biases

__all__ = [
    "DEFAULT_HYPERPARAMETERS",
    "OPTIMIZERS",
    "PRESETS",
    "Preset",
    "RunSpec",
    "evaluate",
    "resolve_device",
    "stream_seed",
    "summarize",
    "train_run",
]

#: the optimizers compared (registry names): the three ECD members and the two baselines
OPTIMIZERS: tuple[str, ...] = ("bbi", "ecdsep", "unit_speed", "adamw", "sgdm")
_ECD = ("bbi", "ecdsep", "unit_speed")

#: hyperparameters used when nothing is tuned (``--trials 0``): the default protocol's tuned
#: winners without attention biases (docs/gpt.md), rounded; unit speed's η = 100 (never searched)
#: is the authors' GPT-2 value; the optimizer's own defaults fill in the rest
DEFAULT_HYPERPARAMETERS: dict[str, dict[str, float]] = {
    "bbi": {"lr": 0.24, "loss_floor": 1.06},
    "ecdsep": {"lr": 0.24, "loss_floor": 1.06},
    "unit_speed": {"lr": 0.81, "loss_power": 100.0, "loss_floor": 1.85},
    "adamw": {"lr": 1.2e-3, "weight_decay": 0.13},
    "sgdm": {"lr": 0.081, "momentum": 0.85},
}


@dataclass(frozen=True)
class Preset:
    """A size of the experiment: the model, the batches, the steps and the protocol's counts."""

    model: GPTConfig
    batch_size: int
    steps: int
    eval_every: int
    eval_windows: int
    trials: int
    runs: int


PRESETS: dict[str, Preset] = {
    # 2 CPU cores: 0.2M parameters, 400 steps of 32 windows of 64 bytes (timings: docs/gpt.md)
    "default": Preset(
        model=GPTConfig(context=64, n_layer=4, n_head=4, n_embd=64),
        batch_size=32,
        steps=400,
        eval_every=50,
        eval_windows=128,
        trials=8,
        runs=3,
    ),
    # seconds: for tests
    "smoke": Preset(
        model=GPTConfig(context=16, n_layer=1, n_head=2, n_embd=16),
        batch_size=4,
        steps=6,
        eval_every=3,
        eval_windows=4,
        trials=2,
        runs=2,
    ),
    # a GPU: GPT-2 small's body (12 layers, 12 heads, width 768) on bytes, context 512
    "gpt2-small": Preset(
        model=GPTConfig(context=512, n_layer=12, n_head=12, n_embd=768),
        batch_size=16,
        steps=5000,
        eval_every=250,
        eval_windows=256,
        trials=12,
        runs=3,
    ),
}


@dataclass(frozen=True)
class RunSpec:
    """Everything one training run depends on."""

    optimizer: str
    hyperparameters: Mapping[str, float]
    model: GPTConfig
    bias: BiasSpec
    batch_size: int
    steps: int
    eval_every: int
    eval_windows: int
    seed: int = 0
    device: str = "cpu"
    label: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["hyperparameters"] = dict(self.hyperparameters)
        return out


def resolve_device(device: str | None) -> torch.device:
    """``auto``/None: CUDA when available, else CPU; otherwise torch's device (ValueError)."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"--device {device!r}: {exc}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available")
    return resolved


def stream_seed(seed: int, stream: str) -> int:
    """A 63-bit seed for the random stream ``stream`` of run ``seed`` (independent streams)."""
    digest = hashlib.blake2b(f"{seed}/{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16)


@torch.no_grad()
def evaluate(
    model: GPT, windows: torch.Tensor, bias: BiasSpec, device: torch.device, chunk: int = 64
) -> float:
    """Mean cross-entropy (nats per byte) of ``model`` on ``windows``, with the biases' mean."""
    was_training = model.training
    model.eval()
    biases = mean_biases(bias, model.config, device)
    total, count = 0.0, 0
    for start in range(0, len(windows), chunk):
        batch = windows[start : start + chunk].to(device)
        with _autocast(device):
            loss = model.loss(batch, biases)
        total += float(loss) * len(batch)
        count += len(batch)
    model.train(was_training)
    return total / count


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def train_run(
    spec: RunSpec, corpus: Corpus, on_step: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """Train one model; returns the run's record: final validation and test losses (nats per
    byte, None when diverged), curves every ``eval_every`` steps, time, ECD diagnostics."""
    device = resolve_device(spec.device)
    corpus.check_context(spec.model.context)
    torch.manual_seed(spec.seed)
    model = GPT(spec.model).to(device)
    optimizer = registry.make_optimizer(
        spec.optimizer, model.parameters(), dict(spec.hyperparameters), seed=spec.seed
    )
    data_gen = torch.Generator().manual_seed(stream_seed(spec.seed, "data"))
    bias_gen = torch.Generator().manual_seed(stream_seed(spec.seed, "attention-bias"))
    held_out = {
        name: eval_windows(getattr(corpus, name), spec.eval_windows, spec.model.context)
        for name in ("val", "test")
    }
    curves: dict[str, list] = {"step": [], "train_loss": [], "val_loss": [], "test_loss": []}
    recent: list[float] = []
    diverged, done = False, 0
    tic = time.perf_counter()

    def record(step: int) -> None:
        curves["step"].append(step)
        curves["train_loss"].append(statistics.fmean(recent) if recent else None)
        for name, windows in held_out.items():
            curves[f"{name}_loss"].append(_finite(evaluate(model, windows, spec.bias, device)))
        recent.clear()

    record(0)
    model.train()
    for step in range(1, spec.steps + 1):
        batch = sample_batch(corpus.train, spec.batch_size, spec.model.context, data_gen)
        batch = batch.to(device)
        biases = draw_biases(spec.bias, spec.model, bias_gen, device)

        def closure(batch: torch.Tensor = batch, biases: Any = biases) -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)
            with _autocast(device):
                loss = model.loss(batch, biases)
            loss.backward()
            return loss

        with warnings.catch_warnings():  # a non-finite loss ends the run as "diverged"
            warnings.simplefilter("ignore", NonFiniteLossWarning)
            loss = float(torch.as_tensor(optimizer.step(closure)).detach())
        if on_step is not None:
            on_step(1)
        if not math.isfinite(loss):
            diverged = True
            break
        recent.append(loss)
        done = step
        if step % spec.eval_every == 0 or step == spec.steps:
            record(step)
    train_time = time.perf_counter() - tic
    if diverged and on_step is not None:
        on_step(spec.steps - done - 1)
    diagnostics = optimizer.diagnostics() if hasattr(optimizer, "diagnostics") else {}
    return {
        "label": spec.label,
        "seed": spec.seed,
        "hyperparameters": dict(spec.hyperparameters),
        "steps": done,
        "diverged": diverged,
        "val_loss": None if diverged else curves["val_loss"][-1],
        "test_loss": None if diverged else curves["test_loss"][-1],
        "curves": curves,
        "off_shell_steps": registry.off_shell_steps(optimizer),
        "skipped_steps": None if not diagnostics else int(diagnostics.get("skipped", 0)),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_time_s": train_time,
        "seconds_per_step": train_time / max(done, 1),
    }


def summarize(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, standard deviation (n − 1), min and max of the finite values; ``diverged`` counts
    the None/non-finite ones (a diverged run has no loss)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    out: dict[str, Any] = {"n": len(finite), "diverged": len(values) - len(finite)}
    if finite:
        out.update(
            mean=statistics.fmean(finite),
            std=statistics.stdev(finite) if len(finite) > 1 else 0.0,
            min=min(finite),
            max=max(finite),
        )
    return out


def with_overrides(preset: Preset, **changes: Any) -> Preset:
    """``preset`` with the non-None ``changes``."""
    return replace(preset, **{k: v for k, v in changes.items() if v is not None})
