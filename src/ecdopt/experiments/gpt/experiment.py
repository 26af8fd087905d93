"""The protocol of ``ecdopt train gpt``: tune every optimizer, then compare them over seeds.

For every bias setting (``none``: the plain transformer; ``qv``: random query and value biases,
…) and every optimizer — a *cell* — the protocol

1. tunes the optimizer's search space (``registry.SEARCH_SPACES["gpt"]``) with ``trials`` Optuna
   trials (TPE, the ``ecdopt tune`` machinery: one study per cell in an SQLite file beside the
   results). A trial is one full-length training run at seed ``seed``, scored by its final
   validation loss;
2. trains ``runs`` models at the best trial's hyperparameters with seeds ``seed + 1``, …,
   ``seed + runs`` (seeds the tuning never saw) and reports their final test loss.

Every optimizer gets the same budget: the same number of trials of the same length, the same
batches and bias draws at a given seed. Results are rewritten after every trial and run;
``resume`` keeps the finished trials (in the study) and runs (in the results file).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecdopt.experiments import registry
from ecdopt.experiments.gpt.data import Corpus, DataError, load_corpus
from ecdopt.experiments.gpt.model import BIAS_KINDS, BiasSpec, GPTConfig
from ecdopt.experiments.gpt.training import (
    DEFAULT_HYPERPARAMETERS,
    OPTIMIZERS,
    PRESETS,
    RunSpec,
    resolve_device,
    summarize,
    train_run,
)

__all__ = [
    "FORMAT",
    "DataError",
    "ExperimentConfig",
    "ExperimentError",
    "cell_hyperparameters",
    "cell_space",
    "check_config",
    "format_table",
    "results_table",
    "run_experiment",
    "settings_of",
    "tuning_objective",
]

FORMAT = "ecdopt-gpt-results-1"
#: the objective of a trial that diverged (Optuna needs a number; the JSON keeps null)
DIVERGED_SCORE = 1e300


class ExperimentError(ValueError):
    """A user error in the experiment's settings (bad combination, unusable results file)."""


@dataclass
class ExperimentConfig:
    """A whole ``ecdopt train gpt`` invocation (None: the preset's value)."""

    optimizers: tuple[str, ...] = OPTIMIZERS
    bias_kinds: tuple[str, ...] = ("none", "qv")
    bias_mean: float = 0.5
    bias_std: float = 0.1
    preset: str = "default"
    steps: int | None = None
    batch_size: int | None = None
    eval_every: int | None = None
    eval_windows: int | None = None
    trials: int | None = None
    runs: int | None = None
    fixed: dict[str, float] = field(default_factory=dict)
    data: str | None = None
    seed: int = 0
    device: str = "auto"
    json_path: Path | None = None
    out_dir: Path | None = None
    resume: bool = False
    on_step: Callable[[int], None] | None = None
    log: Callable[[str], None] = print


def settings_of(cfg: ExperimentConfig) -> dict[str, Any]:
    """The JSON-able settings every result depends on (a resumed run must match them)."""
    preset = PRESETS[cfg.preset]

    def pick(value: Any, default: Any) -> Any:
        return default if value is None else value

    return {
        "preset": cfg.preset,
        "model": preset.model.as_dict(),
        "batch_size": pick(cfg.batch_size, preset.batch_size),
        "steps": pick(cfg.steps, preset.steps),
        "eval_every": pick(cfg.eval_every, preset.eval_every),
        "eval_windows": pick(cfg.eval_windows, preset.eval_windows),
        "trials": pick(cfg.trials, preset.trials),
        "runs": pick(cfg.runs, preset.runs),
        "seed": cfg.seed,
        "data": cfg.data,
        "bias_mean": cfg.bias_mean,
        "bias_std": cfg.bias_std,
        "fixed": dict(sorted(cfg.fixed.items())),
    }


def check_config(cfg: ExperimentConfig) -> None:
    """Raise :class:`ExperimentError` for settings that cannot run."""
    if cfg.preset not in PRESETS:
        raise ExperimentError(f"unknown preset {cfg.preset!r}; choose from {', '.join(PRESETS)}")
    if not cfg.optimizers:
        raise ExperimentError("no optimizer chosen")
    for name in cfg.optimizers:
        if name not in OPTIMIZERS:
            raise ExperimentError(
                f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}"
            )
    for kind in cfg.bias_kinds:
        if kind not in BIAS_KINDS:
            raise ExperimentError(f"unknown bias {kind!r}; choose from {', '.join(BIAS_KINDS)}")
    for key, value in cfg.fixed.items():
        takers = [n for n in cfg.optimizers if key in registry.ACCEPTS[n]]
        if not takers:
            raise ExperimentError(
                f"--{key.replace('_', '-')} applies to none of the chosen optimizers "
                f"({', '.join(cfg.optimizers)})"
            )
        registry.check_hyperparameter(key, value)
    if cfg.resume and cfg.json_path is None:
        raise ExperimentError("--resume needs --json (the results to continue)")


def cell_space(optimizer: str, fixed: Mapping[str, float]) -> dict[str, tuple[float, float, bool]]:
    """The search space of ``optimizer`` without the hyperparameters fixed by options."""
    space = registry.SEARCH_SPACES["gpt"][optimizer]
    return {k: v for k, v in space.items() if k not in fixed}


def cell_hyperparameters(
    optimizer: str, fixed: Mapping[str, float], sampled: Mapping[str, float] | None = None
) -> dict[str, float]:
    """The defaults of ``optimizer``, then the fixed options it takes, then ``sampled``."""
    hyper = dict(DEFAULT_HYPERPARAMETERS[optimizer])
    hyper.update({k: v for k, v in fixed.items() if k in registry.ACCEPTS[optimizer]})
    hyper.update(sampled or {})
    return {k: registry.check_hyperparameter(k, v) for k, v in hyper.items()}


def _run_spec(
    settings: Mapping[str, Any],
    optimizer: str,
    bias_kind: str,
    hyper: Mapping[str, float],
    seed: int,
    device: str,
    label: str,
) -> RunSpec:
    return RunSpec(
        optimizer=optimizer,
        hyperparameters=dict(hyper),
        model=GPTConfig(**settings["model"]),
        bias=BiasSpec(bias_kind, settings["bias_mean"], settings["bias_std"]),
        batch_size=settings["batch_size"],
        steps=settings["steps"],
        eval_every=settings["eval_every"],
        eval_windows=settings["eval_windows"],
        seed=seed,
        device=device,
        label=label,
    )


def tuning_objective(
    optimizer: str,
    seed: int,
    extra: Mapping[str, Any],
    corpus: Corpus | None = None,
    on_step: Callable[[int], None] | None = None,
) -> Callable[[Any], float]:
    """The Optuna objective of one cell: a full training run at ``seed`` with sampled
    hyperparameters, scored by the final validation loss (minimized). ``extra``: ``settings``
    (:func:`settings_of`, default: the default preset's), ``bias`` (default ``"none"``) and
    ``device``. The run's record is kept as the trial's user attribute ``"run"``."""
    from ecdopt.experiments.tune.study import _suggest

    settings = dict(extra.get("settings") or settings_of(ExperimentConfig()))
    bias_kind = extra.get("bias", "none")
    device = extra.get("device", "auto")
    corpus = corpus if corpus is not None else load_corpus(settings["data"])
    space = cell_space(optimizer, settings["fixed"])

    def objective(trial: Any) -> float:
        hyper = cell_hyperparameters(optimizer, settings["fixed"], _suggest(trial, space))
        label = f"{optimizer}/{bias_kind} trial {trial.number}"
        spec = _run_spec(settings, optimizer, bias_kind, hyper, seed, device, label)
        record = train_run(spec, corpus, on_step)
        trial.set_user_attr("run", record)  # plain JSON: no non-finite value in a record
        loss = record["val_loss"]
        return DIVERGED_SCORE if loss is None else float(loss)

    return objective


# --------------------------------------------------------------------------------------------
# the protocol
# --------------------------------------------------------------------------------------------


def _cell_key(optimizer: str, bias_kind: str) -> str:
    return f"{optimizer}/{bias_kind}"


def _tuning_database(cfg: ExperimentConfig) -> tuple[Path, tempfile.TemporaryDirectory | None]:
    """Where the Optuna studies live: beside ``--json``, else in ``--out``, else a temporary
    folder (removed at the end)."""
    if cfg.json_path is not None:
        return cfg.json_path.with_name(cfg.json_path.stem + "-tuning.db"), None
    if cfg.out_dir is not None:
        return cfg.out_dir / "gpt-tuning.db", None
    tmp = tempfile.TemporaryDirectory(prefix="ecdopt-gpt-")
    return Path(tmp.name) / "tuning.db", tmp


def _previous_results(cfg: ExperimentConfig, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The cells of the results file being resumed ({} when there is none)."""
    if not cfg.resume or cfg.json_path is None or not cfg.json_path.is_file():
        return {}
    try:
        doc = json.loads(cfg.json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExperimentError(f"--resume: cannot read {cfg.json_path}: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ExperimentError(f"--resume: {cfg.json_path} is not an {FORMAT} file")
    theirs = doc.get("settings", {})
    ours = json.loads(json.dumps(settings))
    if theirs != ours:
        diff = "; ".join(
            f"{k}: {theirs.get(k)!r} vs {ours[k]!r}" for k in ours if theirs.get(k) != ours[k]
        )
        raise ExperimentError(
            f"--resume: {cfg.json_path} was written with other settings ({diff}); "
            "drop --resume or use the same settings"
        )
    return dict(doc.get("cells", {}))


def _trial_record(trial: Any) -> dict[str, Any]:
    run = dict(trial.user_attrs.get("run", {}))
    return {
        "number": trial.number,
        "params": dict(trial.params),
        "hyperparameters": run.get("hyperparameters"),
        "val_loss": run.get("val_loss"),
        "test_loss": run.get("test_loss"),
        "diverged": run.get("diverged"),
        "off_shell_steps": run.get("off_shell_steps"),
        "train_time_s": run.get("train_time_s"),
        "curves": run.get("curves"),
    }


def _tune_cell(
    cfg: ExperimentConfig,
    settings: Mapping[str, Any],
    optimizer: str,
    bias_kind: str,
    corpus: Corpus,
    storage: str,
    on_trial: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """Run the cell's study up to ``settings["trials"]`` complete trials; its summary."""
    import optuna

    from ecdopt.experiments.tune.study import TuneConfig, open_study, run_worker

    space = cell_space(optimizer, settings["fixed"])
    tune = TuneConfig(
        task="gpt",
        optimizer=optimizer,
        study=f"gpt-{optimizer}-{bias_kind}",
        storage=storage,
        seed=settings["seed"],
        extra={
            "settings": dict(settings),
            "bias": bias_kind,
            "device": cfg.device,
            "corpus": corpus,
            "on_step": cfg.on_step,
        },
    )
    study = open_study(tune, "minimize")
    complete = optuna.trial.TrialState.COMPLETE
    tune.trials = max(0, settings["trials"] - len(study.get_trials(states=(complete,))))

    def report(study: Any, trial: Any) -> None:
        if trial.state == complete:
            on_trial(_trial_record(trial))

    if tune.trials:
        run_worker(tune, log=lambda _line: None, callbacks=[report])
    trials = [_trial_record(t) for t in study.get_trials(states=(complete,))]
    best = min(trials, key=lambda t: t["val_loss"] if t["val_loss"] is not None else math.inf)
    return {
        "space": {k: {"low": lo, "high": hi, "log": lg} for k, (lo, hi, lg) in space.items()},
        "trials": trials,
        "best_trial": best["number"],
        "best_val_loss": best["val_loss"],
        "best_params": best["params"],
    }


def _aggregate_curves(runs: list[Mapping[str, Any]]) -> dict[str, list]:
    """Mean and standard deviation over the runs at each evaluation step (finite values)."""
    steps = max((r["curves"]["step"] for r in runs), key=len, default=[])
    out: dict[str, list] = {"step": list(steps)}
    for name in ("train_loss", "val_loss", "test_loss"):
        stats = [
            summarize([r["curves"][name][i] if i < len(r["curves"][name]) else None for r in runs])
            for i in range(len(steps))
        ]
        out[f"{name}_mean"] = [s.get("mean") for s in stats]
        out[f"{name}_std"] = [s.get("std") for s in stats]
    return out


def _run_cell(
    cfg: ExperimentConfig,
    settings: Mapping[str, Any],
    optimizer: str,
    bias_kind: str,
    corpus: Corpus,
    storage: str,
    previous: Mapping[str, Any],
    save: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """Tune (when there are trials and a space) and run the seeds of one cell."""
    key = _cell_key(optimizer, bias_kind)
    cell: dict[str, Any] = {"optimizer": optimizer, "bias": bias_kind, "tuning": None}
    trials_done: list[dict[str, Any]] = []

    def on_trial(record: dict[str, Any]) -> None:
        trials_done.append(record)
        cell["tuning"] = {"trials": list(trials_done), "complete": False}
        save(cell)
        loss = record["val_loss"]
        cfg.log(
            f"{key} trial {len(trials_done)}/{settings['trials']}: validation loss "
            f"{'diverged' if loss is None else f'{loss:.4f}'} "
            f"({_fmt(record['params'])}) in {record['train_time_s']:.1f} s"
        )

    hyper = cell_hyperparameters(optimizer, settings["fixed"])
    if settings["trials"] > 0 and cell_space(optimizer, settings["fixed"]):
        cell["tuning"] = _tune_cell(cfg, settings, optimizer, bias_kind, corpus, storage, on_trial)
        hyper = cell_hyperparameters(optimizer, settings["fixed"], cell["tuning"]["best_params"])
        cfg.log(f"{key}: best of {len(cell['tuning']['trials'])} trials: {_fmt(hyper)}")
    cell["hyperparameters"] = hyper
    kept = {
        r["seed"]: r
        for r in previous.get("runs", [])
        if r.get("hyperparameters") == json.loads(json.dumps(hyper))
    }
    cell["runs"] = []
    for r in range(settings["runs"]):
        seed = registry.seed_plus(settings["seed"], 1 + r)
        run = kept.get(seed)
        if run is None:
            label = f"{key} run {r + 1}/{settings['runs']}"
            spec = _run_spec(settings, optimizer, bias_kind, hyper, seed, cfg.device, label)
            run = train_run(spec, corpus, cfg.on_step)
            loss = run["test_loss"]
            cfg.log(
                f"{label} (seed {seed}): test loss "
                f"{'diverged' if loss is None else f'{loss:.4f}'} in {run['train_time_s']:.1f} s"
            )
        elif cfg.on_step is not None:
            cfg.on_step(settings["steps"])
        cell["runs"].append(run)
        cell["summary"] = {
            name: summarize([x[name] for x in cell["runs"]]) for name in ("test_loss", "val_loss")
        }
        cell["curves"] = _aggregate_curves(cell["runs"])
        save(cell)
    return cell


def _fmt(hyper: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in hyper.items())


def results_table(doc: Mapping[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """``table[optimizer][bias]``: the test-loss summary of each finished cell."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for cell in doc.get("cells", {}).values():
        if "summary" in cell:
            table.setdefault(cell["optimizer"], {})[cell["bias"]] = cell["summary"]["test_loss"]
    return table


def format_table(doc: Mapping[str, Any]) -> str:
    """The held-out-loss table as text (mean ± std over the seeds)."""
    kinds = doc["bias_kinds"]
    lines = [
        f"test loss (nats per byte) after {doc['settings']['steps']} steps, mean ± std over "
        f"{doc['settings']['runs']} seeds; attention biases: "
        + ", ".join(f"{k} = {_BIAS_WORDS[k]}" for k in kinds),
        f"{'optimizer':<12}" + "".join(f"{k:>20}" for k in kinds),
    ]
    table = results_table(doc)
    for name in doc["optimizers"]:
        row = f"{name:<12}"
        for kind in kinds:
            s = table.get(name, {}).get(kind)
            if s is None:
                text = "-"
            elif "mean" not in s:
                text = f"diverged ({s['diverged']})"
            else:
                text = f"{s['mean']:.4f} ± {s['std']:.4f}"
                if s["diverged"]:
                    text += f" ({s['diverged']} div.)"
            row += f"{text:>20}"
        lines.append(row)
    return "\n".join(lines)


_BIAS_WORDS = {"none": "none", "q": "query", "v": "value", "qv": "query + value"}


def run_experiment(cfg: ExperimentConfig) -> dict[str, Any]:
    """Run the protocol (module docstring); writes ``cfg.json_path`` after every trial and run
    (``complete`` false until the end); returns the results document."""
    import time

    import torch

    from ecdopt.experiments.cli_common import ResultsFile, note_saved

    check_config(cfg)
    settings = settings_of(cfg)
    try:
        device = resolve_device(cfg.device)
    except ValueError as exc:
        raise ExperimentError(str(exc)) from None
    previous = _previous_results(cfg, settings)
    corpus = load_corpus(cfg.data)
    corpus.check_context(settings["model"]["context"])
    database, tmp = _tuning_database(cfg)
    if not cfg.resume and database.exists():
        os.unlink(database)  # a fresh study: this command's own file
    tic = time.perf_counter()
    results = ResultsFile(
        cfg.json_path,
        {
            "format": FORMAT,
            "command": "ecdopt train gpt",
            "complete": False,
            "settings": settings,
            "optimizers": list(cfg.optimizers),
            "bias_kinds": list(cfg.bias_kinds),
            "data": corpus.description,
            "device": str(device),
            "torch_version": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "tuning_database": None if tmp is not None else str(database),
            "cells": {},
        },
    )
    cfg.log(
        f"corpus {corpus.source}: {len(corpus.train)} train / {len(corpus.val)} validation / "
        f"{len(corpus.test)} test bytes; device {device}"
    )
    try:
        for optimizer in cfg.optimizers:
            for bias_kind in cfg.bias_kinds:
                key = _cell_key(optimizer, bias_kind)

                def save(cell: dict[str, Any], key: str = key) -> None:
                    results.doc["cells"][key] = cell
                    results.update(wall_time_s=time.perf_counter() - tic)
                    if tmp is None:
                        note_saved(database)

                _run_cell(
                    cfg,
                    settings,
                    optimizer,
                    bias_kind,
                    corpus,
                    f"sqlite:///{database}",
                    previous.get(key, {}),
                    save,
                )
    finally:
        if tmp is not None:
            tmp.cleanup()
    results.update(
        complete=True, table=results_table(results.doc), wall_time_s=time.perf_counter() - tic
    )
    return results.doc
