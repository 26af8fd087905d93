"""Shared Optuna sweeps: many workers, one study in an SQL database (``ecdopt tune``).

A *task* is a synthetic landscape of :mod:`ecdopt.landscapes` (looked up lazily, so any
landscape added there is a task), the ``digits`` training preset of
:mod:`ecdopt.experiments.vision` or the byte-level transformer ``gpt`` of
:mod:`ecdopt.experiments.gpt`. A *trial* runs one optimizer with sampled hyperparameters:

- landscape: ``steps`` steps of the real ``torch.optim`` optimizer on one particle from a fixed
  start (drawn from ``seed`` in the landscape's box, the same for every trial), objective = the
  lowest F − F_min seen (minimized; a non-finite run scores 1e300);
- ``digits``: a short training run (``epochs``, default 1) of the preset CNN, objective = the
  test accuracy (maximized);
- ``gpt``: one training run of the transformer (the default preset, or the settings in
  ``extra``), objective = the final validation loss (minimized). Its optimizers include
  ``unit_speed`` and ``adamw``.

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

import contextlib
import math
import re
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
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
TUNE_OPTIMIZERS = registry.ALL_OPTIMIZERS
TRAINING_TASKS = ("digits", "gpt")

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
    lock_timeout: float = 60.0
    extra: dict[str, Any] = field(default_factory=dict)


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for logs and error messages)."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def list_tasks() -> list[str]:
    """Every task name: the landscapes of :data:`ecdopt.landscapes.LANDSCAPES`, ``digits``
    and ``gpt``."""
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


def _sqlite_file(url: str) -> str | None:
    """The database file of a plain ``sqlite:///PATH`` URL (None for other URLs and memory)."""
    if not url.startswith("sqlite:///") or "?" in url:
        return None
    path = url[len("sqlite:///") :]
    return None if path in ("", ":memory:") else path


def _check_sqlite(path: str, lock_timeout: float, log: Callable[[str], None]) -> None:
    """Clear errors before Optuna's: a read-only file or folder, or a lock held too long."""
    import os
    import sqlite3

    folder = os.path.dirname(os.path.abspath(path))
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise TuneError(f"the database {path} is read-only (workers must write their trials)")
    if not os.path.isdir(folder):
        raise TuneError(f"the database folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise TuneError(f"the database folder {folder} is read-only (SQLite writes a journal)")
    if not os.path.exists(path):
        return

    def try_write(timeout: float) -> str | None:
        try:
            with sqlite3.connect(path, timeout=timeout) as con:
                con.execute("BEGIN IMMEDIATE")
                con.execute("ROLLBACK")
        except sqlite3.OperationalError as exc:
            return str(exc)
        return None

    error = try_write(0.5)
    if error is not None and "locked" in error:
        log(f"the database {path} is locked by another process; waiting up to {lock_timeout:g} s")
        error = try_write(lock_timeout)
    if error is not None:
        if "locked" in error:
            raise TuneError(
                f"the database {path} stayed locked for {lock_timeout:g} s (another process "
                "holds a write transaction); try again later or raise --lock-timeout"
            )
        if "readonly" in error.replace("-", "").replace(" ", ""):
            raise TuneError(f"the database {path} is read-only ({error})")
        raise TuneError(f"cannot write to the database {path}: {error}")


def make_storage(
    url: str,
    heartbeat: float = 10.0,
    grace: float | None = None,
    lock_timeout: float = 60.0,
    log: Callable[[str], None] | None = None,
) -> Any:
    """An Optuna ``RDBStorage`` for ``url`` with heartbeats (``heartbeat`` ≤ 0: none).

    SQLite waits up to ``lock_timeout`` seconds for another worker's lock (saying so when it
    has to wait); a read-only SQLite file or folder is refused at once. ``grace`` (default 2 ×
    heartbeat) is how long a silent trial stays RUNNING.
    """
    import optuna

    engine_kwargs: dict[str, Any] = {}
    sqlite_file = _sqlite_file(url)
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": lock_timeout}
    if sqlite_file is not None:
        _check_sqlite(sqlite_file, lock_timeout, log or (lambda _line: None))
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
            raise TuneError(f"cannot open storage {mask_url(url)}: {_reason(exc, url)}") from None
    raise AssertionError("unreachable")


def _reason(exc: BaseException, url: str) -> str:
    """The root cause of a storage error in one line, with the URL's password masked."""
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    orig = getattr(root, "orig", None)  # SQLAlchemy wraps the driver's error
    text = str(orig if orig is not None else root).strip().splitlines()
    message = text[0] if text else type(root).__name__
    return f"{type(orig or root).__name__}: {message}".replace(url, mask_url(url))


def _transient(exc: BaseException) -> bool:
    """A database error that a retry may cure (the schema creation race), not a lock that has
    already been waited for."""
    try:
        from sqlalchemy import exc as sa_exc
    except ImportError:  # pragma: no cover - optuna depends on SQLAlchemy
        return False
    if "locked" in str(exc) or "readonly" in str(exc).replace(" ", ""):
        return False
    return isinstance(exc, sa_exc.OperationalError | sa_exc.IntegrityError)


@contextlib.contextmanager
def storage_errors(url: str) -> Iterator[None]:
    """Turn the database's refusals during a sweep into a one-line :class:`TuneError`."""
    import optuna

    try:
        yield
    except optuna.exceptions.StorageInternalError as exc:
        raise TuneError(
            f"the database {mask_url(url)} refused a write: {_reason(exc, url)}"
        ) from None
    except Exception as exc:
        if type(exc).__module__.startswith("sqlalchemy"):
            raise TuneError(f"database error in {mask_url(url)}: {_reason(exc, url)}") from None
        raise


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
        trial.set_user_attr("worker", cfg.worker_index)
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
                break
            best = min(best, loss - f_min)
        trial.set_user_attr("off_shell_steps", registry.off_shell_steps(opt))
        return best if math.isfinite(best) and math.isfinite(loss) else 1e300

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
        trial.set_user_attr("worker", cfg.worker_index)
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
        trial.set_user_attr("off_shell_steps", run["off_shell_steps"])
        acc = float(run["test_accuracy"])
        return acc if math.isfinite(acc) else 0.0

    return "maximize", objective


def gpt_objective(cfg: TuneConfig) -> tuple[str, Callable[[Any], float]]:
    """("minimize", objective) for ``gpt``: the final validation loss of one training run.

    ``cfg.extra`` may hold ``settings``, ``bias`` and ``device`` (the first two are part of the
    study's signature) and, in-process only, the loaded ``corpus`` and an ``on_step`` counter."""
    from ecdopt.experiments.gpt.experiment import tuning_objective

    extra = cfg.extra
    seed = 0 if cfg.seed is None else cfg.seed
    corpus, on_step = extra.get("corpus"), extra.get("on_step")
    return "minimize", tuning_objective(cfg.optimizer, seed, extra, corpus, on_step)


def make_objective(cfg: TuneConfig) -> tuple[str, Callable[[Any], float]]:
    """(direction, objective) for ``cfg.task``."""
    if cfg.optimizer not in TUNE_OPTIMIZERS:
        raise TuneError(
            f"unknown optimizer {cfg.optimizer!r}; choose one of {', '.join(TUNE_OPTIMIZERS)}"
        )
    if cfg.task == "gpt":
        return gpt_objective(cfg)
    if cfg.optimizer not in registry.OPTIMIZERS:
        raise TuneError(
            f"optimizer {cfg.optimizer!r} is tuned on the gpt task only; for {cfg.task} choose "
            f"one of {', '.join(registry.OPTIMIZERS)}"
        )
    if cfg.task == "digits":
        return digits_objective(cfg)
    return landscape_objective(cfg)


def _sampler(cfg: TuneConfig, joined_at: int = 0) -> Any:
    """The worker's sampler. Seeded: from ``seed``, ``worker_index`` and the number of trials
    the study held when this worker joined (``joined_at``), so that a worker restarted with the
    same command draws new points instead of repeating the ones it drew before."""
    import optuna

    seed = None
    if cfg.seed is not None:
        seed = cfg.seed * 1_000_003 + cfg.worker_index
        if joined_at:
            seed = hash_seed(seed, joined_at)
        seed = registry.sampler_seed(seed)
    if cfg.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise TuneError(f"unknown sampler {cfg.sampler!r}; choose tpe or random")


def hash_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (different inputs give unrelated seeds)."""
    import hashlib

    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def _signature(cfg: TuneConfig) -> dict[str, Any]:
    """What every worker of one study must agree on (stored as study user attributes)."""
    sig: dict[str, Any] = {"task": cfg.task, "optimizer": cfg.optimizer, "seed": cfg.seed}
    if cfg.task == "digits":
        sig["epochs"] = cfg.epochs
    elif cfg.task == "gpt":
        from ecdopt.experiments.gpt.experiment import ExperimentConfig, settings_of

        sig["settings"] = cfg.extra.get("settings") or settings_of(ExperimentConfig())
        sig["bias"] = cfg.extra.get("bias", "none")
    else:
        sig.update(steps=cfg.steps, dim=cfg.dim)
    return sig


def open_study(
    cfg: TuneConfig, direction: str | None = None, log: Callable[[str], None] | None = None
) -> Any:
    """Create the study or join it (``load_if_exists``); refuse one made for another task."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # trials are reported by us
    storage = make_storage(cfg.storage, cfg.heartbeat, cfg.grace, cfg.lock_timeout, log)
    with storage_errors(cfg.storage):
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
        joined_at = len(study.get_trials(deepcopy=False))
        study.sampler = _sampler(cfg, joined_at)
        sig = _signature(cfg)
        stored = study.user_attrs.get("ecdopt")
        if stored is None:
            study.set_user_attr("ecdopt", sig)
    if stored is not None and stored != sig:
        diff = "; ".join(
            f"{k}: {stored.get(k)!r} vs {sig.get(k)!r}" for k in sig if stored.get(k) != sig.get(k)
        )
        raise TuneError(f"study {cfg.study!r} was created with other settings ({diff})")
    if study.direction.name.lower() != direction:
        raise TuneError(f"study {cfg.study!r} is a {study.direction.name.lower()} study")
    return study


def run_worker(
    cfg: TuneConfig,
    log: Callable[[str], None] = print,
    callbacks: Sequence[Callable[[Any, Any], None]] = (),
) -> Any:
    """Join (or create) the study and run ``cfg.trials`` trials in it; returns the study.

    Stale trials of killed workers are marked FAIL first (needs ``heartbeat`` > 0).
    ``callbacks``: more Optuna callbacks ``(study, trial)``, called after each trial.
    """
    import optuna

    if cfg.trials < 0:
        raise TuneError("--trials must be >= 0")
    direction, objective = make_objective(cfg)
    study = open_study(cfg, direction, log)
    with storage_errors(cfg.storage):
        if cfg.heartbeat > 0:
            with warnings.catch_warnings():  # "experimental" since Optuna 2.9, still the API
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
        extra_callbacks, callbacks = list(callbacks), []
        if cfg.total_trials is not None:
            states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
            callbacks.append(optuna.study.MaxTrialsCallback(cfg.total_trials, states=states))

        def report(study: Any, trial: Any) -> None:
            log(
                f"trial {trial.number} {trial.state.name.lower()} value {trial.value} "
                f"params {trial.params}"
            )

        callbacks.append(report)
        callbacks.extend(extra_callbacks)
        tic = time.perf_counter()
        if cfg.trials:
            finished = _finished(study)
            if cfg.total_trials is not None and finished >= cfg.total_trials:
                log(
                    f"study {cfg.study!r} already has {finished} finished trials "
                    f"(--total-trials {cfg.total_trials})"
                )
            else:
                study.optimize(objective, n_trials=cfg.trials, callbacks=callbacks)
    log(f"worker {cfg.worker_index} done in {time.perf_counter() - tic:.1f} s")
    return study


def _finished(study: Any) -> int:
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def study_summary(study: Any) -> dict[str, Any]:
    """Counts of trials by state, the best trial (None when none completed) and every trial
    (number, state, value, parameters, ``off_shell_steps``)."""
    counts: dict[str, int] = {}
    records = []
    for t in study.get_trials(deepcopy=False):
        state = t.state.name.lower()
        counts[state] = counts.get(state, 0) + 1
        records.append(
            {
                "number": t.number,
                "state": state,
                "value": t.value,
                "params": dict(t.params),
                "worker": t.user_attrs.get("worker"),
                "off_shell_steps": t.user_attrs.get("off_shell_steps"),
            }
        )
    best = None
    if counts.get("complete"):
        bt = study.best_trial
        best = {
            "number": bt.number,
            "value": bt.value,
            "params": dict(bt.params),
            "off_shell_steps": bt.user_attrs.get("off_shell_steps"),
        }
    return {
        "study": study.study_name,
        "direction": study.direction.name.lower(),
        "settings": study.user_attrs.get("ecdopt"),
        "trials": counts,
        "best": best,
        "trial_records": records,
    }
