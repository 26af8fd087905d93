"""Fair, batched hyperparameter search on synthetic landscapes (§4.1-4.2 protocol).

Every optimizer gets the same budget: ``trials`` Optuna trials (TPE, seeded) of ``steps`` steps
from one fixed start, objective = the lowest loss seen along the run. Trials are evaluated in
batches through the ensemble (Optuna's ask-and-tell): ask ``batch`` trials, run them as
``batch`` particles with per-particle hyperparameters, tell the results.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import optuna
import torch
from torch import Tensor

from ecdopt.ensemble import EnsembleResult, simulate, simulate_adam, simulate_sgd
from ecdopt.experiments.registry import sampler_seed, seed_plus

__all__ = ["Method", "TuningResult", "run_method", "tune"]

Potential = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Method:
    """An optimizer with fixed settings and a search space.

    ``kind``: ``"ecd"`` (:func:`ecdopt.ensemble.simulate`), ``"sgd"`` or ``"adam"``.
    ``space``: name → (low, high, log) for ``trial.suggest_float``.
    """

    name: str
    kind: str
    fixed: dict = field(default_factory=dict)
    space: dict[str, tuple[float, float, bool]] = field(default_factory=dict)


@dataclass
class TuningResult:
    """The best hyperparameters found, their objective and the number of trials run."""

    params: dict[str, float]
    value: float
    trials: int


def run_method(
    method: Method,
    potential: Potential,
    theta0: Tensor,
    steps: int,
    params: dict[str, float | Tensor],
    *,
    seed: int | None = 0,
    **kwargs,
) -> EnsembleResult:
    """Run ``method`` with ``params`` (scalars or ``[M]`` tensors) on the particles ``theta0``."""
    kw = {**method.fixed, **params, **kwargs}
    if method.kind == "ecd":
        return simulate(potential, theta0, steps, seed=seed, **kw)
    if method.kind == "sgd":
        return simulate_sgd(potential, theta0, steps, **kw)
    if method.kind == "adam":
        return simulate_adam(potential, theta0, steps, **kw)
    raise ValueError(f"unknown method kind {method.kind!r}")


def tune(
    method: Method,
    potential: Potential,
    start: Tensor,
    *,
    trials: int,
    steps: int,
    batch: int = 50,
    seed: int = 0,
    on_batch: Callable[[int], None] | None = None,
) -> TuningResult:
    """TPE search (seeded) over ``method.space``, ``trials`` trials in batches of ``batch``.

    Objective: the lowest loss F seen during ``steps`` steps from ``start`` (``[n]``); a
    non-finite run counts as +1e300. ``on_batch(k)`` is called after each batch of k trials.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=sampler_seed(seed))
    study = optuna.create_study(direction="minimize", sampler=sampler)
    done = 0
    while done < trials:
        size = min(batch, trials - done)
        asked = [study.ask() for _ in range(size)]
        params = {
            name: torch.tensor(
                [t.suggest_float(name, lo, hi, log=log) for t in asked], dtype=torch.float64
            )
            for name, (lo, hi, log) in method.space.items()
        }
        theta0 = start.to(torch.float64).expand(size, -1).clone()
        res = run_method(method, potential, theta0, steps, params, seed=seed_plus(seed, done))
        for t, v in zip(asked, res.best_value.tolist(), strict=True):
            study.tell(t, v if math.isfinite(v) else 1e300)
        done += size
        if on_batch is not None:
            on_batch(size)
    best = study.best_trial
    return TuningResult(params=dict(best.params), value=float(best.value), trials=done)
