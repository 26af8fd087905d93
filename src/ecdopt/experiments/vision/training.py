"""Image classification with ECD and baseline optimizers: the MNIST/CIFAR-10 study of §4.5.

One training loop serves every optimizer. It is closure-based (``optimizer.step(closure)``; the
closure zeroes the gradients, computes the cross-entropy, runs backward and returns the loss) so
that BBI and ECDSep receive the loss they need, and SGD/Adam accept it unchanged.

Protocols (``run_experiment``):

- ``runs``: ``runs`` independent runs (seeds ``seed``, ``seed + 1``, …) with fixed
  hyperparameters; mean and median of the final test accuracy, as in the paper's Table 2.
- ``grid``: the paper's MNIST protocol: a grid search (``search_epochs`` epochs per point, the
  final test accuracy ranks the points), then ``runs`` long runs at the best point.
- ``optuna``: the paper's CIFAR protocol (the authors used hyperopt's TPE; here Optuna's TPE):
  ``trials`` short trials, then ``runs`` long runs at the best trial.

Accuracies are fractions in [0, 1] everywhere (the paper's Table 2 shows percentages).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ecdopt.experiments import registry
from ecdopt.experiments.cli_common import ResultsFile, note_saved, write_json
from ecdopt.experiments.vision.data import DATASETS, ImageData, load_data
from ecdopt.experiments.vision.models import build_model

__all__ = [
    "CHECKPOINT_FORMAT",
    "CURVE_KEYS",
    "GRIDS",
    "HYPERPARAMETERS",
    "OPTIMIZERS",
    "PRESETS",
    "ExperimentConfig",
    "ExperimentError",
    "Preset",
    "RunConfig",
    "make_optimizer",
    "resolve_device",
    "resolve_hyperparameters",
    "run_experiment",
    "summarize",
    "train_run",
]

OPTIMIZERS = registry.OPTIMIZERS
PROTOCOLS = ("runs", "grid", "optuna")
CURVE_KEYS = (
    "epoch",
    "train_loss",
    "train_accuracy",
    "test_loss",
    "test_accuracy",
    "epoch_time_s",
)
CHECKPOINT_FORMAT = "ecdopt-vision-checkpoint-1"

# The hyperparameters each optimizer accepts (library names; the paper's symbols in
# :mod:`ecdopt.experiments.registry`).
HYPERPARAMETERS: dict[str, tuple[str, ...]] = registry.ACCEPTS
_INTEGER_HYPERPARAMETERS = frozenset(
    name for name, spec in registry.HYPERPARAMETERS.items() if spec.kind is int
)


class ExperimentError(ValueError):
    """A user error in the experiment settings (bad option, unusable checkpoint)."""


@dataclass(frozen=True)
class Preset:
    """Per-data-set defaults: model, batch size, epochs and each optimizer's hyperparameters."""

    model: str
    batch_size: int
    epochs: int
    search_epochs: int
    hyperparameters: Mapping[str, Mapping[str, float]]


_MNIST_BBI = {
    "lr": 0.2,
    "extra_energy": 1.0,
    "loss_floor": 1e-6,
    "bounce_period": 100,
    "n_bounces": 5,
    "bounce_patience": 1000,
}
_CIFAR_BBI = {
    "lr": 0.0622,
    "extra_energy": 0.0,
    "loss_floor": 0.0,
    "bounce_period": 100,
    "n_bounces": 100,
    "bounce_patience": 200,
}


def _mnist_family_hyperparameters() -> dict[str, dict[str, float]]:
    """The defaults shared by the digits, mnist5k and mnist presets (a fresh copy each)."""
    return {
        "sgdm": {"lr": 0.05, "momentum": 0.9},
        "adam": {"lr": 1e-3},
        "bbi": dict(_MNIST_BBI),
        "ecdsep": {"lr": 0.1, "extra_energy": 0.5},
    }


PRESETS: dict[str, Preset] = {
    # Measured here (docs/vision.md): well under a minute on 2 CPU cores, both ~98 % test
    # accuracy; BBI uses the paper's MNIST settings (its grid winner lr 0.2, δE 1).
    "digits": Preset(
        model="digits_cnn",
        batch_size=32,
        epochs=20,
        search_epochs=3,
        hyperparameters=_mnist_family_hyperparameters(),
    ),
    "mnist5k": Preset(
        model="mnist_cnn",
        batch_size=50,
        epochs=10,
        search_epochs=3,
        hyperparameters=_mnist_family_hyperparameters(),
    ),
    # Paper §4.5: batch 50, 3-epoch grid, then 50-epoch runs. BBI: the authors' grid winner.
    "mnist": Preset(
        model="mnist_cnn",
        batch_size=50,
        epochs=50,
        search_epochs=3,
        hyperparameters=_mnist_family_hyperparameters(),
    ),
    # Paper §4.5: ResNet-18, 3-epoch trials, then 150-epoch runs; batch 128 as in the authors'
    # code. Learning rates: the authors' search winners (their best-parameters-cifar.json).
    "cifar10": Preset(
        model="resnet18",
        batch_size=128,
        epochs=150,
        search_epochs=3,
        hyperparameters={
            "sgdm": {"lr": 0.0163, "momentum": 0.847},
            "adam": {"lr": 1e-3},
            "bbi": dict(_CIFAR_BBI),
            "ecdsep": {"lr": 0.05, "extra_energy": 0.0},
        },
    ),
}

# The paper's MNIST grid and CIFAR search ranges (§4.5), from the registry.
GRIDS: dict[str, dict[str, tuple[float, ...]]] = registry.GRIDS
OPTUNA_SPACES: dict[str, dict[str, tuple[float, float, bool]]] = registry.SEARCH_SPACES["vision"]


# ----------------------------------------------------------------------------------------------
# settings


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto``/None → CUDA when available, else CPU; anything else as given."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ExperimentError(f"bad --device {device!r}: {exc}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ExperimentError(f"--device {device} asked for, but CUDA is not available")
    return resolved


def resolve_hyperparameters(
    dataset: str, optimizer: str, overrides: Mapping[str, float | None] | None = None
) -> dict[str, float]:
    """The preset hyperparameters of ``optimizer`` on ``dataset`` with non-None overrides.

    Raises :class:`ExperimentError` for an override the optimizer does not take.
    """
    if dataset not in PRESETS:
        raise ExperimentError(f"unknown data set {dataset!r}; choose one of {', '.join(DATASETS)}")
    if optimizer not in OPTIMIZERS:
        raise ExperimentError(
            f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}"
        )
    hyper = dict(PRESETS[dataset].hyperparameters[optimizer])
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in HYPERPARAMETERS[optimizer]:
            flag = "--" + key.replace("_", "-")
            raise ExperimentError(
                f"{flag} does not apply to {optimizer} (it takes "
                f"{', '.join('--' + k.replace('_', '-') for k in HYPERPARAMETERS[optimizer])})"
            )
        hyper[key] = value
    return {k: (int(v) if k in _INTEGER_HYPERPARAMETERS else float(v)) for k, v in hyper.items()}


def make_optimizer(
    name: str, params: Any, hyper: Mapping[str, float], seed: int | None = None
) -> torch.optim.Optimizer:
    """Build optimizer ``name`` (bbi, ecdsep, sgdm, adam) from library-named hyperparameters."""
    unknown = set(hyper) - set(HYPERPARAMETERS.get(name, ()))
    if name not in HYPERPARAMETERS or unknown:
        raise ExperimentError(f"cannot build {name} with {sorted(unknown)}")
    return registry.make_optimizer(name, params, hyper, seed=seed)


@dataclass
class RunConfig:
    """One training run."""

    dataset: str
    optimizer: str
    hyperparameters: dict[str, float]
    epochs: int
    batch_size: int
    seed: int = 0
    model: str | None = None  # None: the data set's preset model
    device: str = "auto"
    checkpoint: str | None = None  # written after every epoch when set
    resume: bool = False
    progress: bool = False
    amp: bool | None = None  # bfloat16 autocast; None: on CUDA
    channels_last: bool | None = None  # None: on CUDA
    label: str = ""

    def signature(self) -> dict[str, Any]:
        """What a checkpoint must match to be resumed (everything but epochs and display)."""
        return {
            "dataset": self.dataset,
            "optimizer": self.optimizer,
            "hyperparameters": dict(self.hyperparameters),
            "batch_size": self.batch_size,
            "seed": self.seed,
            "model": self.model or PRESETS[self.dataset].model,
        }


# ----------------------------------------------------------------------------------------------
# the training loop


def _batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def _autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: ImageData,
    device: torch.device,
    amp: bool = False,
    channels_last: bool = False,
    batch_size: int = 1000,
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` on the test set."""
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    n = len(data.test_y)
    for start in range(0, n, batch_size):
        x = data.transform(data.test_x[start : start + batch_size], None)
        y = data.test_y[start : start + batch_size]
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device, amp):
            logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    return float(loss_sum) / n, int(correct) / n


def _atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` into a temporary file beside ``path``, then rename it over ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch reports a failed write as RuntimeError
        tmp.unlink(missing_ok=True)
        raise ExperimentError(f"cannot write the checkpoint {path}: {exc}") from None
    note_saved(path)


def _load_checkpoint(path: Path, cfg: RunConfig) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file: a user error, not a crash
        # torch's own message suggests weights_only=False, which would run code from the
        # file: never repeat it
        raise ExperimentError(
            f"cannot resume from {path}: not a checkpoint that can be read safely "
            f"({type(exc).__name__}); delete it or drop --resume"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ExperimentError(f"{path} is not an ecdopt vision checkpoint ({CHECKPOINT_FORMAT})")
    missing = [k for k in _CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise ExperimentError(
            f"{path} is an incomplete checkpoint (no {', '.join(missing)}); delete it or drop "
            "--resume"
        )
    theirs, ours = ckpt["config"], cfg.signature()
    if not isinstance(theirs, dict):
        raise ExperimentError(f"{path} is a damaged checkpoint (its config is not a mapping)")
    if theirs != ours:
        diff = [f"{k}: {theirs.get(k)!r} vs {ours[k]!r}" for k in ours if theirs.get(k) != ours[k]]
        raise ExperimentError(
            f"{path} was written with other settings ({'; '.join(diff)}); "
            "drop --resume or use the same settings"
        )
    if not isinstance(ckpt["epoch"], int) or ckpt["epoch"] < 0:
        raise ExperimentError(f"{path} is a damaged checkpoint (epoch {ckpt['epoch']!r})")
    if ckpt["epoch"] > cfg.epochs:
        raise ExperimentError(
            f"{path} already holds {ckpt['epoch']} epochs, more than --epochs {cfg.epochs}"
        )
    return ckpt


_CHECKPOINT_KEYS = (
    "epoch",
    "config",
    "model",
    "optimizer",
    "generator",
    "torch_rng",
    "cuda_rng",
    "history",
    "diverged",
)


def _restore(
    ckpt: dict[str, Any],
    path: Path,
    model: nn.Module,
    optimizer: Any,
    generator: torch.Generator,
    device: torch.device,
) -> dict[str, list[float]]:
    """Load a checked checkpoint's states; the curves so far. Damaged parts: ExperimentError."""
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        generator.set_state(ckpt["generator"])
        torch.set_rng_state(ckpt["torch_rng"])
        if device.type == "cuda" and ckpt["cuda_rng"]:
            torch.cuda.set_rng_state(ckpt["cuda_rng"][0], device)
        history = {k: list(ckpt["history"][k]) for k in CURVE_KEYS}
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
        raise ExperimentError(
            f"{path} is a damaged checkpoint ({type(exc).__name__}: {exc}); delete it or drop "
            "--resume"
        ) from None
    if any(len(v) != ckpt["epoch"] for v in history.values()):
        raise ExperimentError(f"{path} is a damaged checkpoint (curves do not match its epoch)")
    return history


def train_run(cfg: RunConfig, data: ImageData | None = None) -> dict[str, Any]:
    """Train one model; returns the run record (curves, final and best test accuracy).

    ``data`` (loaded by :func:`ecdopt.experiments.vision.data.load_data` when None) may live on any
    device; it is moved to the run's device. With ``cfg.checkpoint`` set, the model, optimizer
    state, data-order and augmentation generator, global RNG and curves are saved after every
    epoch; ``cfg.resume`` continues from that file exactly as if never interrupted.
    """
    device = resolve_device(cfg.device)
    amp = device.type == "cuda" if cfg.amp is None else cfg.amp
    channels_last = device.type == "cuda" if cfg.channels_last is None else cfg.channels_last
    if data is None:
        data = load_data(cfg.dataset)
    data = data.to(device)
    model_name = cfg.model or PRESETS[cfg.dataset].model

    torch.manual_seed(cfg.seed)
    model = build_model(model_name, data.num_classes).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg.optimizer, model.parameters(), cfg.hyperparameters, cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)  # data order and augmentation (CPU)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    history: dict[str, list[float]] = {k: [] for k in CURVE_KEYS}
    start_epoch, diverged, resumed_from = 0, False, None
    ckpt_path = Path(cfg.checkpoint) if cfg.checkpoint else None
    if cfg.resume and ckpt_path is not None and ckpt_path.is_file():
        ckpt = _load_checkpoint(ckpt_path, cfg)
        history = _restore(ckpt, ckpt_path, model, optimizer, generator, device)
        start_epoch = resumed_from = int(ckpt["epoch"])
        diverged = bool(ckpt["diverged"])

    for epoch in range(start_epoch, cfg.epochs):
        if diverged:
            break
        tic = time.perf_counter()
        train_loss, train_acc = _train_epoch(
            model, optimizer, data, cfg, generator, epoch, amp=amp, channels_last=channels_last
        )
        test_loss, test_acc = evaluate(model, data, device, amp, channels_last)
        diverged = not (math.isfinite(train_loss) and math.isfinite(test_loss))
        history["epoch"].append(epoch + 1)
        history["train_loss"].append(train_loss)
        history["train_accuracy"].append(train_acc)
        history["test_loss"].append(test_loss)
        history["test_accuracy"].append(test_acc)
        history["epoch_time_s"].append(time.perf_counter() - tic)
        if ckpt_path is not None:
            _save_epoch(ckpt_path, cfg, epoch, model, optimizer, generator, history, diverged)
    accs = history["test_accuracy"]
    return {
        "seed": cfg.seed,
        "label": cfg.label,
        "hyperparameters": dict(cfg.hyperparameters),
        "epochs": len(accs),
        "test_accuracy": accs[-1] if accs else float("nan"),
        "best_test_accuracy": max(accs) if accs else float("nan"),
        "diverged": diverged,
        "resumed_from_epoch": resumed_from,
        "train_time_s": sum(history["epoch_time_s"]),
        "off_shell_steps": registry.off_shell_steps(optimizer),
        "curves": history,
        "model_state": model.state_dict(),
    }


def _train_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data: ImageData,
    cfg: RunConfig,
    generator: torch.Generator,
    epoch: int,
    *,
    amp: bool,
    channels_last: bool,
) -> tuple[float, float]:
    """One pass over the training set in ``generator``'s order; (mean loss, accuracy)."""
    device = data.train_y.device
    model.train()
    n_train = len(data.train_y)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    bar = _progress(cfg, epoch, math.ceil(n_train / cfg.batch_size))
    for step, idx in enumerate(_batches(n_train, cfg.batch_size, generator)):
        idx = idx.to(device)
        x = data.transform(data.train_x[idx], generator)
        y = data.train_y[idx]
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out: dict[str, torch.Tensor] = {}

        def closure(x: torch.Tensor = x, y: torch.Tensor = y, out: dict = out) -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)
            with _autocast(device, amp):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            loss.backward()
            out["loss"], out["logits"] = loss.detach(), logits.detach()
            return loss

        optimizer.step(closure)
        loss_sum += out["loss"] * len(y)
        correct += (out["logits"].argmax(1) == y).sum()
        if bar is not None:
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{float(out['loss']):.4f}")
    if bar is not None:
        bar.close()
    return float(loss_sum) / n_train, int(correct) / n_train


def _save_epoch(
    path: Path,
    cfg: RunConfig,
    epoch: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    history: dict[str, list[float]],
    diverged: bool,
) -> None:
    """The checkpoint after ``epoch``: everything :func:`train_run` needs to resume exactly."""
    device = next(model.parameters()).device
    _atomic_save(
        {
            "format": CHECKPOINT_FORMAT,
            "epoch": epoch + 1,
            "config": cfg.signature(),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": [torch.cuda.get_rng_state(device)] if device.type == "cuda" else [],
            "history": history,
            "diverged": diverged,
        },
        path,
    )


def _progress(cfg: RunConfig, epoch: int, total: int) -> Any:
    if not cfg.progress:
        return None
    from tqdm.auto import tqdm

    desc = f"{cfg.label + ' ' if cfg.label else ''}epoch {epoch + 1}/{cfg.epochs}"
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


# ----------------------------------------------------------------------------------------------
# protocols


@dataclass
class ExperimentConfig:
    """A whole ``ecdopt train`` invocation.

    Files: the results go to ``json_path`` (rewritten after every long run; ``complete`` says
    whether all are done); checkpoints (``<stem>-run<r>.pt``), the search record
    (``<stem>-search.json``, rewritten after every search point) and plots go to ``out_dir``
    (default: the JSON file's folder; neither given: nothing is written and ``resume`` has
    nothing to continue from).
    """

    dataset: str
    optimizer: str
    json_path: str | None = None
    data_dir: str | None = None
    protocol: str = "runs"
    epochs: int | None = None  # None: preset
    batch_size: int | None = None  # None: preset
    seed: int = 0
    runs: int = 1
    overrides: dict[str, float | None] = field(default_factory=dict)
    trials: int = 50  # optuna
    search_epochs: int | None = None  # None: preset (3, as in the paper)
    grid: dict[str, tuple[float, ...]] | None = None  # None: the paper's grid (GRIDS)
    device: str = "auto"
    out_dir: str | None = None  # None: the JSON file's folder
    resume: bool = False
    progress: bool = False
    plots: bool = True
    log: Callable[[str], None] | None = print


def summarize(values: Sequence[float | None]) -> dict[str, float]:
    """Mean, median, standard deviation, min and max (Table 2 reports mean and median); a
    missing or non-finite value (a diverged run) makes every statistic NaN."""
    vals = [math.nan if v is None else float(v) for v in values]
    if not vals:
        return {"n": 0}
    return {
        "n": len(vals),
        "mean": statistics.fmean(vals),
        "median": statistics.median(vals),
        "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
        "min": min(vals),
        "max": max(vals),
    }


@dataclass
class _Search:
    """A search in progress: its JSON record (rewritten after every point) and its inputs."""

    cfg: ExperimentConfig
    base: dict[str, float]
    data: ImageData
    epochs: int
    batch_size: int
    log: Callable[[str], None]
    record: dict[str, Any]
    path: Path | None

    def add(self, trial: dict[str, Any]) -> None:
        """Record one finished point and save the record."""
        self.record["trials"].append(trial)
        self.save()

    def save(self) -> None:
        if self.path is not None:
            write_json(self.path, self.record, option="search record")

    def evaluate(self, sampled: Mapping[str, float], label: str) -> dict[str, Any]:
        """Train one search point; its trial record (``sampled``: the searched values)."""
        hyper = resolve_hyperparameters(
            self.cfg.dataset, self.cfg.optimizer, {**self.base, **sampled}
        )
        run = train_run(
            _run_config(self.cfg, hyper, self.epochs, self.batch_size, self.cfg.seed, label),
            self.data,
        )
        self.log(f"{label} {_fmt(hyper, sampled)}: test accuracy {run['test_accuracy']:.4f}")
        return {
            "sampled": dict(sampled),
            "hyperparameters": run["hyperparameters"],
            "test_accuracy": run["test_accuracy"],
            "diverged": run["diverged"],
            "off_shell_steps": run["off_shell_steps"],
        }


def _search_grid(search: _Search) -> None:
    space = {k: tuple(v) for k, v in search.record["space"].items()}
    points = list(itertools.product(*space.values()))
    done = {t["point"] for t in search.record["trials"]}
    if done:
        search.log(f"grid: {len(done)} of {len(points)} points done before, continuing")
    for i, values in enumerate(points):
        if i in done:
            continue
        trial = search.evaluate(
            dict(zip(space, values, strict=True)), f"grid {i + 1}/{len(points)}"
        )
        search.add({"point": i, **trial})


def _search_optuna(search: _Search) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # trials are reported by us
    cfg = search.cfg
    space = OPTUNA_SPACES[cfg.optimizer]
    distributions = {
        k: optuna.distributions.FloatDistribution(lo, hi, log=log_scale)
        for k, (lo, hi, log_scale) in space.items()
    }
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=registry.sampler_seed(cfg.seed)),
    )
    for old in search.record["trials"]:  # the finished trials of an interrupted search
        study.add_trial(
            optuna.trial.create_trial(
                params=old["sampled"], distributions=distributions, value=_objective(old)
            )
        )
    if search.record["trials"]:
        search.log(f"optuna: {len(search.record['trials'])} of {cfg.trials} trials done before")

    def objective(trial: optuna.Trial) -> float:
        sampled = {
            k: trial.suggest_float(k, lo, hi, log=log_scale)
            for k, (lo, hi, log_scale) in space.items()
        }
        record = search.evaluate(sampled, f"trial {trial.number + 1}/{cfg.trials}")
        search.add({"number": trial.number, **record})
        return _objective(record)

    study.optimize(objective, n_trials=cfg.trials - len(search.record["trials"]))


def _objective(trial: Mapping[str, Any]) -> float:
    acc = trial["test_accuracy"]
    return acc if acc is not None and math.isfinite(acc) else 0.0


def _fmt(hyper: Mapping[str, float], keys: Any) -> str:
    return " ".join(f"{k}={hyper[k]:.4g}" for k in keys)


def _run_config(
    cfg: ExperimentConfig,
    hyper: dict[str, float],
    epochs: int,
    batch_size: int,
    seed: int,
    label: str,
    checkpoint: str | None = None,
) -> RunConfig:
    return RunConfig(
        dataset=cfg.dataset,
        optimizer=cfg.optimizer,
        hyperparameters=hyper,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        device=cfg.device,
        checkpoint=checkpoint,
        resume=cfg.resume,
        progress=cfg.progress,
        label=label,
    )


def _best_trial(search: Mapping[str, Any]) -> dict[str, float]:
    scored = [
        t
        for t in search["trials"]
        if t["test_accuracy"] is not None and math.isfinite(t["test_accuracy"])
    ]
    if not scored:
        raise ExperimentError("every search point diverged; narrow the search")
    return dict(max(scored, key=lambda t: t["test_accuracy"])["hyperparameters"])


def _search_request(
    cfg: ExperimentConfig, fixed: dict[str, float], epochs: int, batch_size: int
) -> dict[str, Any]:
    """What a saved search must match to be continued by ``resume``."""
    return {
        "kind": cfg.protocol,
        "dataset": cfg.dataset,
        "optimizer": cfg.optimizer,
        "epochs": epochs,
        "batch_size": batch_size,
        "seed": cfg.seed,
        "fixed": fixed,
        "grid": {k: list(v) for k, v in (cfg.grid or GRIDS[cfg.optimizer]).items()}
        if cfg.protocol == "grid"
        else None,
        "trials": cfg.trials if cfg.protocol == "optuna" else None,
    }


def _run_search(
    cfg: ExperimentConfig,
    data: ImageData,
    epochs: int,
    batch_size: int,
    path: Path | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The grid or Optuna search, continued from ``path`` with ``cfg.resume``."""
    searched = (
        set(cfg.grid or GRIDS[cfg.optimizer])
        if cfg.protocol == "grid"
        else set(OPTUNA_SPACES[cfg.optimizer])
    )
    clash = sorted(k for k, v in cfg.overrides.items() if v is not None and k in searched)
    if clash:
        raise ExperimentError(
            f"{', '.join('--' + k.replace('_', '-') for k in clash)} is searched by "
            f"--protocol {cfg.protocol}; leave it out"
        )
    fixed = {k: v for k, v in cfg.overrides.items() if v is not None}
    request = _search_request(cfg, fixed, epochs, batch_size)
    record = _saved_search(path, request) if cfg.resume and path is not None else None
    if record is None:
        if cfg.protocol == "grid":
            space: Any = {k: list(v) for k, v in (cfg.grid or GRIDS[cfg.optimizer]).items()}
            for key in space:
                if key not in HYPERPARAMETERS[cfg.optimizer]:
                    raise ExperimentError(f"--grid {key} does not apply to {cfg.optimizer}")
        else:
            space = {
                k: {"low": lo, "high": hi, "log": lg}
                for k, (lo, hi, lg) in OPTUNA_SPACES[cfg.optimizer].items()
            }
        record = {
            "kind": cfg.protocol,
            "space": space,
            "trials": [],
            "epochs": epochs,
            "dataset": cfg.dataset,
            "optimizer": cfg.optimizer,
            "request": request,
            "complete": False,
        }
    elif record.get("complete"):
        log(f"reusing the search results in {path}")
    search = _Search(cfg, fixed, data, epochs, batch_size, log, record, path)
    if not record.get("complete"):
        (_search_grid if cfg.protocol == "grid" else _search_optuna)(search)
        record["complete"] = True
        search.save()
    return record


def _saved_search(path: Path, request: Mapping[str, Any]) -> dict | None:
    """The search record at ``path`` if it was made with exactly ``request``, else None."""
    if not path.is_file():
        return None
    try:
        search = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    same = isinstance(search, dict) and search.get("request") == json.loads(json.dumps(request))
    if not same or not isinstance(search.get("trials"), list):
        return None
    return search


def _settings(cfg: ExperimentConfig) -> tuple[Preset, dict[str, float], int, int, int]:
    """(preset, hyperparameters, epochs, batch size, search epochs) after checking ``cfg``."""
    if cfg.protocol not in PROTOCOLS:
        raise ExperimentError(f"unknown protocol {cfg.protocol!r}; choose {', '.join(PROTOCOLS)}")
    if cfg.runs < 1:
        raise ExperimentError("--runs must be at least 1")
    if cfg.protocol == "optuna" and cfg.trials < 1:
        raise ExperimentError("--trials must be at least 1")
    hyper = resolve_hyperparameters(cfg.dataset, cfg.optimizer, cfg.overrides)
    preset = PRESETS[cfg.dataset]  # the name was checked just above
    epochs = cfg.epochs if cfg.epochs is not None else preset.epochs
    batch_size = cfg.batch_size if cfg.batch_size is not None else preset.batch_size
    search_epochs = cfg.search_epochs if cfg.search_epochs is not None else preset.search_epochs
    if epochs < 1 or batch_size < 1 or search_epochs < 1:
        raise ExperimentError("--epochs, --batch-size and --search-epochs must be positive")
    return preset, hyper, epochs, batch_size, search_epochs


def run_experiment(cfg: ExperimentConfig) -> dict[str, Any]:
    """Run a protocol, write the JSON (and PNG curves), return the result dictionary."""
    log = cfg.log or (lambda _msg: None)
    preset, hyper, epochs, batch_size, search_epochs = _settings(cfg)
    json_path = Path(cfg.json_path) if cfg.json_path else None
    out_dir = Path(cfg.out_dir) if cfg.out_dir else (json_path.parent if json_path else None)
    stem = json_path.stem if json_path else f"{cfg.dataset}-{cfg.optimizer}"
    if cfg.resume and out_dir is None:
        raise ExperimentError("--resume needs --json FILE or --out DIR (where the last run saved)")
    device = resolve_device(cfg.device)
    tic = time.perf_counter()
    data = load_data(cfg.dataset, cfg.data_dir).to(device)
    log(
        f"{cfg.dataset}: {len(data.train_y)} train / {len(data.test_y)} test images from "
        f"{data.source}; model {preset.model}; device {device}"
    )
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    search = None
    if cfg.protocol != "runs":
        search_file = out_dir / f"{stem}-search.json" if out_dir is not None else None
        search = _run_search(cfg, data, search_epochs, batch_size, search_file, log)
        hyper = resolve_hyperparameters(cfg.dataset, cfg.optimizer, _best_trial(search))
        search["best"] = hyper
        log(f"best of the search: {_fmt(hyper, hyper)}")

    results = ResultsFile(json_path)
    runs: list[dict[str, Any]] = []
    for r in range(cfg.runs):
        ckpt = str(out_dir / f"{stem}-run{r}.pt") if out_dir is not None else None
        label = f"run {r + 1}/{cfg.runs}" if cfg.runs > 1 else ""
        run = train_run(
            _run_config(
                cfg, hyper, epochs, batch_size, registry.seed_plus(cfg.seed, r), label, ckpt
            ),
            data,
        )
        run.pop("model_state")
        runs.append(run)
        log(
            f"run {r + 1}/{cfg.runs} seed {run['seed']}: test accuracy {run['test_accuracy']:.4f} "
            f"(best {run['best_test_accuracy']:.4f}) in {run['train_time_s']:.1f} s"
            + (" [diverged]" if run["diverged"] else "")
        )
        results.doc = _result_document(cfg, preset, data, device, hyper, epochs, batch_size)
        results.doc.update(
            _runs_summary(runs), search=search, wall_time_s=time.perf_counter() - tic
        )
        results.update(complete=r == cfg.runs - 1)
    result = results.doc
    if cfg.plots and out_dir is not None:
        from ecdopt.experiments.vision.plots import plot_curves, plot_search

        plot_curves(result, out_dir / f"{stem}-curves.png")
        if search is not None:
            plot_search(search, out_dir / f"{stem}-search.png")
    final = result["summary"]["final_test_accuracy"]
    log(
        f"{cfg.optimizer} on {cfg.dataset}: final test accuracy mean {final['mean']:.4f} "
        f"median {final['median']:.4f} over {cfg.runs} run(s)"
        + (f"; wrote {json_path}" if json_path else "")
    )
    return result


def _runs_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    final = summarize([r["test_accuracy"] for r in runs])
    best = summarize([r["best_test_accuracy"] for r in runs])
    return {
        "runs_done": len(runs),
        "test_accuracy": final["mean"],
        "test_accuracy_median": final["median"],
        "best_test_accuracy": best["mean"],
        "summary": {"final_test_accuracy": final, "best_test_accuracy": best},
        "curves": runs[0]["curves"],
        "runs": list(runs),
    }


def _result_document(
    cfg: ExperimentConfig,
    preset: Preset,
    data: ImageData,
    device: torch.device,
    hyper: dict[str, float],
    epochs: int,
    batch_size: int,
) -> dict[str, Any]:
    return {
        "dataset": cfg.dataset,
        "data_source": data.source,
        "model": preset.model,
        "optimizer": cfg.optimizer,
        "protocol": cfg.protocol,
        "hyperparameters": hyper,
        "epochs": epochs,
        "batch_size": batch_size,
        "seed": cfg.seed,
        "n_runs": cfg.runs,
        "device": str(device),
        "bf16_autocast": device.type == "cuda",
        "channels_last": device.type == "cuda",
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "accuracy_unit": "fraction",
    }
