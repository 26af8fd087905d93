"""Shared Optuna sweeps: many workers, one study in an SQL database (``ecdopt tune``).

A *task* is a synthetic landscape of :mod:`ecdopt.landscapes` (looked up lazily, so any
landscape added there is a task) or the ``digits`` training preset of
:mod:`ecdopt.experiments.vision`. A *trial* runs one optimizer with sampled hyperparameters:

- landscape: ``steps`` steps of the real ``torch.optim`` optimizer on one particle from a fixed
  start (drawn from ``seed`` in the landscape's box, the same for every trial), objective = the
  lowest F − F_min seen (minimized; a non-finite run scores 1e300);
- ``digits``: a short training run (``epochs``, default 1) of the preset CNN, objective = the
  test accuracy (maximized).

Storage: any SQLAlchemy URL (default: a local SQLite file). Optuna's RDB storage makes several
workers on the same ``study`` share it: each ``ask`` is a database transaction, so trials are
neither lost nor duplicated. ``trials`` is per worker (``study.optimize(n_trials=...)``): W
workers × N trials add up to W·N finished trials; ``total_trials`` caps the study instead
(Optuna's ``MaxTrialsCallback``). With ``heartbeat`` > 0 every running trial records a heartbeat;
a trial whose worker was killed stops beating and is marked FAIL by the next worker that starts
(or ``grace`` seconds later, at the next trial of a live worker), so the study can be resumed by
simply starting workers again (docs/distributed.md has the cluster recipe).
"""

from __future__ import annotations

import math
import re
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ecdopt.experiments import registry

__all__ = [
    "DEFAULT_STORAGE",
    "SPACES",
    "TUNE_OPTIMIZERS",
    "TuneConfig",
    "TuneError",
    "list_tasks",
    "make_storage",
    "mask_url",
    "open_study",
    "run_worker",
    "study_summary",
]

DEFAULT_STORAGE = "sqlite:///ecdopt-tune.db"
TUNE_OPTIMIZERS = registry.OPTIMIZERS
TRAINING_TASKS = ("digits",)

# (low, high, log) per hyperparameter; ints are marked by an int ``low``.
SPACES: dict[str, dict[str, tuple[float, float, bool]]] = registry.SEARCH_SPACES["landscape"]


class TuneError(ValueError):
    """A user error (unknown task or optimizer, a study created for something else)."""


@dataclass
class TuneConfig:
    """One worker's settings (see :func:`run_worker`)."""

    task: str
    optimizer: str
    study: str
    trials: int = 10
    storage: str = DEFAULT_STORAGE
    sampler: str = "tpe"
    seed: int | None = None
    worker_index: int = 0
    steps: int = 1000
    dim: int = 2
    epochs: int = 1
    total_trials: int | None = None
    heartbeat: float = 10.0
    grace: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for logs and error messages)."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def list_tasks() -> list[str]:
    """Every task name: the landscapes of :data:`ecdopt.landscapes.LANDSCAPES` and ``digits``."""
    from ecdopt import landscapes

    return sorted(landscapes.LANDSCAPES) + list(TRAINING_TASKS)


def _landscape(name: str, dim: int) -> Any:
    from ecdopt import landscapes

    if name not in landscapes.LANDSCAPES:
        raise TuneError(f"unknown task {name!r}; choose one of {', '.join(list_tasks())}")
    try:
        return landscapes.make_landscape(name, dim=dim)
    except TypeError:  # a landscape of fixed dimension (two_basin)
        return landscapes.make_landscape(name)


def make_storage(url: str, heartbeat: float = 10.0, grace: float | None = None) -> Any:
    """An Optuna ``RDBStorage`` for ``url`` with heartbeats (``heartbeat`` ≤ 0: none).

    SQLite gets a 60 s lock timeout so that concurrent workers wait instead of failing;
    ``grace`` (default 2 × heartbeat) is how long a silent trial stays RUNNING.
    """
    import optuna

    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 60}
    kwargs: dict[str, Any] = {}
    if heartbeat > 0:
        kwargs["heartbeat_interval"] = max(1, round(heartbeat))
        kwargs["grace_period"] = max(
            kwargs["heartbeat_interval"] + 1,
            round(grace) if grace is not None else 2 * kwargs["heartbeat_interval"],
        )
    for attempt in range(5):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.9
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
        except Exception as exc:  # bad URL, unreachable server, missing driver
            # two workers creating the schema of a new database at once: the loser retries
            # (an unreachable server also retries, a few seconds in all)
            if _transient(exc) and attempt < 4:
                time.sleep(0.5 * (attempt + 1))
                continue
            message = str(exc).replace(url, mask_url(url))
            raise TuneError(
                f"cannot open storage {mask_url(url)}: {type(exc).__name__}: {message}"
            ) from None
    raise AssertionError("unreachable")


def _transient(exc: BaseException) -> bool:
    """A database error that a retry may cure (schema creation race, lock)."""
    try:
        from sqlalchemy import exc as sa_exc
    except ImportError:  # pragma: no cover - optuna depends on SQLAlchemy
        return False
    return isinstance(exc, sa_exc.OperationalError | sa_exc.IntegrityError)


def _suggest(trial: Any, space: Mapping[str, tuple[float, float, bool]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, (lo, hi, log) in space.items():
        if isinstance(lo, int) and isinstance(hi, int):
            out[name] = trial.suggest_int(name, lo, hi, log=log)
        else:
            out[name] = trial.suggest_float(name, lo, hi, log=log)
    return out


def _build_optimizer(name: str, params: Any, hyper: Mapping[str, float], **fixed: Any) -> Any:
    if name not in TUNE_OPTIMIZERS:
        raise TuneError(f"unknown optimizer {name!r}; choose one of {', '.join(TUNE_OPTIMIZERS)}")
    seed = fixed.pop("seed", None)
    return registry.make_optimizer(name, params, {**hyper, **fixed}, seed=seed)


def landscape_objective(cfg: TuneConfig) -> tuple[str, Callable[[Any], float]]:
    """("minimize", objective) for a landscape task: lowest F − F_min over ``cfg.steps``."""
    import torch

    land = _landscape(cfg.task, cfg.dim)
    problem_seed = 0 if cfg.seed is None else cfg.seed
    gen = torch.Generator().manual_seed(problem_seed)
    lo, hi = land.bounds
    start = lo + (hi - lo) * torch.rand(land.dim, generator=gen, dtype=torch.float64)
    f_min = float(land.minimum_value)
    space = SPACES[cfg.optimizer]

    def objective(trial: Any) -> float:
        hyper = _suggest(trial, space)
        theta = torch.nn.Parameter(start.clone())
        fixed: dict[str, Any] = {}
        if cfg.optimizer in ("bbi", "ecdsep"):
            # the known minimum as the floor (paper §4.1), lowered if ever overshot
            fixed = {"loss_floor": f_min, "adapt_floor": True, "seed": problem_seed}
        opt = _build_optimizer(cfg.optimizer, [theta], hyper, **fixed)
        best = math.inf

        def closure() -> torch.Tensor:
            opt.zero_grad(set_to_none=False)
            loss = land(theta)
            loss.backward()
            return loss

        for _ in range(cfg.steps):
            with warnings.catch_warnings():  # a diverging trial is scored, not reported
                warnings.simplefilter("ignore", RuntimeWarning)
                loss = float(opt.step(closure).detach())
            if not math.isfinite(loss):
                return 1e300
            best = min(best, loss - f_min)
        return best if math.isfinite(best) else 1e300

    return "minimize", objective


def digits_objective(cfg: TuneConfig) -> tuple[str, Callable[[Any], float]]:
    """("maximize", objective) for ``digits``: test accuracy after ``cfg.epochs`` epochs."""
    from ecdopt.experiments import vision
    from ecdopt.experiments.vision.data import load_data

    data = load_data("digits")
    preset = vision.PRESETS["digits"]
    opt_name = cfg.optimizer
    space = vision.OPTUNA_SPACES[opt_name]  # the paper's §4.5 ranges; the rest from the preset
    run_seed = 0 if cfg.seed is None else cfg.seed

    def objective(trial: Any) -> float:
        sampled = _suggest(trial, space)
        hyper = vision.resolve_hyperparameters("digits", opt_name, sampled)
        run = vision.train_run(
            vision.RunConfig(
                dataset="digits",
                optimizer=opt_name,
                hyperparameters=hyper,
                epochs=cfg.epochs,
                batch_size=preset.batch_size,
                seed=run_seed,
                device="cpu",
            ),
            data,
        )
        acc = float(run["test_accuracy"])
        return acc if math.isfinite(acc) else 0.0

    return "maximize", objective


def make_objective(cfg: TuneConfig) -> tuple[str, Callable[[Any], float]]:
    """(direction, objective) for ``cfg.task``."""
    if cfg.optimizer not in TUNE_OPTIMIZERS:
        raise TuneError(
            f"unknown optimizer {cfg.optimizer!r}; choose one of {', '.join(TUNE_OPTIMIZERS)}"
        )
    if cfg.task == "digits":
        return digits_objective(cfg)
    return landscape_objective(cfg)


def _sampler(cfg: TuneConfig) -> Any:
    import optuna

    seed = None if cfg.seed is None else cfg.seed * 1_000_003 + cfg.worker_index
    if cfg.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise TuneError(f"unknown sampler {cfg.sampler!r}; choose tpe or random")


def _signature(cfg: TuneConfig) -> dict[str, Any]:
    """What every worker of one study must agree on (stored as study user attributes)."""
    sig: dict[str, Any] = {"task": cfg.task, "optimizer": cfg.optimizer, "seed": cfg.seed}
    if cfg.task == "digits":
        sig["epochs"] = cfg.epochs
    else:
        sig.update(steps=cfg.steps, dim=cfg.dim)
    return sig


def open_study(cfg: TuneConfig, direction: str | None = None) -> Any:
    """Create the study or join it (``load_if_exists``); refuse one made for another task."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = make_storage(cfg.storage, cfg.heartbeat, cfg.grace)
    if direction is None:  # --show only: the study must exist
        try:
            return optuna.load_study(study_name=cfg.study, storage=storage)
        except KeyError:
            raise TuneError(f"no study {cfg.study!r} in {mask_url(cfg.storage)}") from None
    study = optuna.create_study(
        study_name=cfg.study,
        storage=storage,
        sampler=_sampler(cfg),
        direction=direction,
        load_if_exists=True,
    )
    sig = _signature(cfg)
    stored = study.user_attrs.get("ecdopt")
    if stored is None:
        study.set_user_attr("ecdopt", sig)
    elif stored != sig:
        diff = "; ".join(
            f"{k}: {stored.get(k)!r} vs {sig.get(k)!r}" for k in sig if stored.get(k) != sig.get(k)
        )
        raise TuneError(f"study {cfg.study!r} was created with other settings ({diff})")
    if study.direction.name.lower() != direction:
        raise TuneError(f"study {cfg.study!r} is a {study.direction.name.lower()} study")
    return study


def run_worker(cfg: TuneConfig, log: Callable[[str], None] = print) -> Any:
    """Join (or create) the study and run ``cfg.trials`` trials in it; returns the study.

    Stale trials of killed workers are marked FAIL first (needs ``heartbeat`` > 0).
    """
    import optuna

    if cfg.trials < 0:
        raise TuneError("--trials must be >= 0")
    direction, objective = make_objective(cfg)
    study = open_study(cfg, direction)
    if cfg.heartbeat > 0:
        with warnings.catch_warnings():  # "experimental" since Optuna 2.9, still the API
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    callbacks: list[Any] = []
    if cfg.total_trials is not None:
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        callbacks.append(optuna.study.MaxTrialsCallback(cfg.total_trials, states=states))

    def report(study: Any, trial: Any) -> None:
        log(
            f"trial {trial.number} {trial.state.name.lower()} value {trial.value} "
            f"params {trial.params}"
        )

    callbacks.append(report)
    tic = time.perf_counter()
    if cfg.trials:
        if cfg.total_trials is not None and _finished(study) >= cfg.total_trials:
            log(f"study {cfg.study!r} already has {cfg.total_trials} finished trials")
        else:
            study.optimize(objective, n_trials=cfg.trials, callbacks=callbacks)
    log(f"worker {cfg.worker_index} done in {time.perf_counter() - tic:.1f} s")
    return study


def _finished(study: Any) -> int:
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def study_summary(study: Any) -> dict[str, Any]:
    """Counts of trials by state and the best trial (None when none completed)."""
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    best = None
    if counts.get("complete"):
        bt = study.best_trial
        best = {"number": bt.number, "value": bt.value, "params": dict(bt.params)}
    return {
        "study": study.study_name,
        "direction": study.direction.name.lower(),
        "settings": study.user_attrs.get("ecdopt"),
        "trials": counts,
        "best": best,
    }
