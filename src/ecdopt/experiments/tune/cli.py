"""``ecdopt tune``: a worker of a shared Optuna sweep (see :mod:`ecdopt.experiments.tune.study`).

ecdopt tune TASK --optimizer NAME --trials N --storage URL --study NAME
            [--sampler tpe|random] [--seed S] [--show] [--json FILE] [--steps K] [--dim D]
            [--epochs E] [--total-trials M] [--worker-index I] [--heartbeat SECONDS]
            [--grace SECONDS] [--lock-timeout SECONDS] [--quiet]

Start the same command several times (on one machine with SQLite, on many with PostgreSQL):
every worker adds its N trials to the one study. ``--show`` prints the best parameters;
``--json FILE`` writes the study's summary (every trial, the best one) as JSON.
Environment: ``ECDOPT_TUNE_STORAGE`` (default storage URL), ``ECDOPT_THREADS`` (torch threads,
default 1), ``SLURM_PROCID`` (default worker index).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ecdopt._errors import CommandError
from ecdopt.experiments import registry
from ecdopt.experiments.cli_common import (
    ResultsFile,
    add_output_options,
    add_progress_options,
    add_seed_option,
    check_outputs,
    float_type,
    int_type,
    log_function,
    note_saved,
)

_WORKER_INDEX = int_type(0, 10**6)
_THREADS = int_type(1, 4 * (os.cpu_count() or 1))


def add_parser(subparsers: Any) -> None:
    """Register the ``tune`` sub-command."""
    from ecdopt.experiments.tune.study import DEFAULT_STORAGE

    p = subparsers.add_parser(
        "tune",
        help="a worker of a shared Optuna hyperparameter sweep (SQLite/PostgreSQL storage)",
        description=(
            "Run N Optuna trials of OPTIMIZER on TASK in a study shared through an SQL "
            "database. TASK: a landscape of ecdopt.landscapes (ackley, zakharov, rosenbrock, "
            "rastrigin, ...), digits (a short training run of the digits CNN per trial) or gpt "
            "(a training run of the byte-level transformer's default preset per trial; "
            "its optimizers include unit_speed and adamw)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("task", help="landscape name, 'digits' or 'gpt'")
    p.add_argument("--optimizer", required=True, choices=registry.ALL_OPTIMIZERS)
    p.add_argument(
        "--trials", type=int_type(0, 10**7), default=10, help="trials run by THIS worker"
    )
    p.add_argument(
        "--storage",
        default=None,
        help=f"SQLAlchemy URL; default {DEFAULT_STORAGE} (or $ECDOPT_TUNE_STORAGE)",
    )
    p.add_argument("--study", required=True, help="study name (shared by all workers)")
    p.add_argument("--sampler", default="tpe", choices=("tpe", "random"))
    add_seed_option(
        p,
        default=None,
        help="problem seed (start point, optimizer seed) and sampler seed base; None: random",
    )
    p.add_argument(
        "--worker-index",
        type=_WORKER_INDEX,
        default=None,
        help="distinct per worker so seeded samplers differ (default: $SLURM_PROCID or 0)",
    )
    p.add_argument("--show", action="store_true", help="print the best parameters at the end")
    add_output_options(p, json_help="write the study's summary here (JSON)")
    add_progress_options(p)
    p.add_argument(
        "--steps", type=int_type(1, 10**8), default=1000, help="landscape tasks: steps per trial"
    )
    p.add_argument("--dim", type=int_type(1, 10**5), default=2, help="landscape tasks: dimension")
    p.add_argument("--epochs", type=int_type(1, 10**4), default=1, help="digits: epochs per trial")
    p.add_argument(
        "--total-trials",
        type=int_type(1, 10**8),
        default=None,
        help="stop every worker once the study has this many finished trials",
    )
    p.add_argument(
        "--heartbeat",
        type=float_type(0, 86_400),
        default=10.0,
        help="seconds between heartbeats of a running trial (0: off)",
    )
    p.add_argument(
        "--grace",
        type=float_type(0, 10**6, low_open=True),
        default=None,
        help="seconds without heartbeat before a trial is marked failed (default: 2×heartbeat)",
    )
    p.add_argument(
        "--lock-timeout",
        type=float_type(0, 86_400, low_open=True),
        default=60.0,
        help="SQLite: seconds to wait for another worker's lock before giving up",
    )
    p.set_defaults(func=run)


def _environment_int(name: str, parse: Any, default: str) -> int:
    text = os.environ.get(name, "") or default
    try:
        return parse(text)
    except argparse.ArgumentTypeError as exc:
        raise CommandError(f"${name}: {exc}") from None


def run(args: argparse.Namespace) -> int:
    """Run one worker from parsed arguments; user errors become ``CommandError``."""
    from ecdopt.experiments.tune.study import (
        DEFAULT_STORAGE,
        TuneConfig,
        TuneError,
        mask_url,
        open_study,
        run_worker,
        study_summary,
    )

    check_outputs(args)
    storage = args.storage or os.environ.get("ECDOPT_TUNE_STORAGE") or DEFAULT_STORAGE
    worker_index = args.worker_index
    if worker_index is None:
        worker_index = _environment_int("SLURM_PROCID", _WORKER_INDEX, "0")
    threads = _environment_int("ECDOPT_THREADS", _THREADS, "1")
    cfg = TuneConfig(
        task=args.task,
        optimizer=args.optimizer,
        study=args.study,
        trials=args.trials,
        storage=storage,
        sampler=args.sampler,
        seed=args.seed,
        worker_index=worker_index,
        steps=args.steps,
        dim=args.dim,
        epochs=args.epochs,
        total_trials=args.total_trials,
        heartbeat=args.heartbeat,
        grace=args.grace,
        lock_timeout=args.lock_timeout,
    )
    log = log_function(args)
    try:
        import torch

        torch.set_num_threads(threads)
        log(f"study {cfg.study!r} in {mask_url(storage)}: {cfg.trials} trials of {cfg.optimizer}")
        note_saved(f"study {cfg.study!r} in {mask_url(storage)}")
        if cfg.trials == 0 and (args.show or args.json is not None):
            study = open_study(cfg, None)
        else:
            study = run_worker(cfg, log)
        if args.show or args.json is not None:
            summary = study_summary(study)
            ResultsFile(args.json, summary).write()
            if args.show:
                _print_summary(summary)
    except TuneError as exc:
        raise CommandError(str(exc)) from None
    return 0


def _print_summary(summary: dict[str, Any]) -> None:
    counts = ", ".join(f"{n} {state}" for state, n in sorted(summary["trials"].items()))
    print(f"study {summary['study']} ({summary['direction']}): {counts or 'no trials'}")
    best = summary["best"]
    if best is None:
        print("no completed trial yet", file=sys.stderr)
        return
    print(f"best trial {best['number']}: value {best['value']:.6g}")
    for name, value in best["params"].items():
        print(f"  {name} = {value}")
