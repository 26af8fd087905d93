"""``ecdopt train gpt``: the byte-level transformer experiment (docs/gpt.md).

ecdopt train gpt [--optimizer all|NAME,...] [--attn-bias none,qv] [--attn-bias-mean M]
                 [--attn-bias-std S] [--preset default|gpt2-small] [--smoke] [--data FILE]
                 [--steps N] [--trials N] [--runs N] [--lr X ...] [--json FILE] [--out DIR]
                 [--resume] [--seed S] [--device D] [--threads N] [--progress] [--quiet]
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from ecdopt._errors import CommandError
from ecdopt.experiments import registry
from ecdopt.experiments.cli_common import (
    add_common_options,
    check_outputs,
    float_type,
    hyperparameter_type,
    int_type,
    log_function,
    progress_bar,
    show_progress,
)

__all__ = ["add_parser", "main"]

_OPTIMIZERS = ("bbi", "ecdsep", "unit_speed", "adamw", "sgdm")
_BIAS_KINDS = ("none", "q", "v", "qv")
_PRESETS = ("default", "gpt2-small")
# the hyperparameters the compared optimizers take, as options that fix them (not tuned)
_FIXABLE = tuple(
    name
    for name in registry.HYPERPARAMETERS
    if any(name in registry.ACCEPTS[o] for o in _OPTIMIZERS)
)


def _choices(allowed: tuple[str, ...], everything: str | None = None) -> Any:
    """An argparse type: a comma-separated list of names from ``allowed`` (or ``everything``)."""

    def parse(text: str) -> tuple[str, ...]:
        if everything is not None and text.strip() == everything:
            return allowed
        names = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
        bad = [n for n in names if n not in allowed]
        if bad or not names:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of {', '.join(allowed)}"
                + (f" (or {everything})" if everything else "")
                + f", got {text!r}"
            )
        return names

    parse.__name__ = "list"
    return parse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train gpt`` (the ``train`` command whose first argument is ``gpt``)."""
    p = subparsers.add_parser(
        "train",
        prog="ecdopt train gpt",
        help="image classification with ECD and baselines (paper §4.5); train gpt: a transformer",
        description=(
            "A small decoder-only transformer trained byte-level on the Python standard "
            "library's source (or --data FILE). Each optimizer is tuned with the same Optuna "
            "budget, then trained over several seeds; the held-out losses are compared with "
            "and without random, non-learned attention biases (docs/gpt.md)."
        ),
    )
    p.add_argument("experiment", choices=("gpt",), help=argparse.SUPPRESS)
    p.add_argument(
        "--optimizer",
        type=_choices(_OPTIMIZERS, "all"),
        default=_OPTIMIZERS,
        metavar="NAMES",
        help=f"comma-separated, from {', '.join(_OPTIMIZERS)} (default: all)",
    )
    p.add_argument(
        "--attn-bias",
        type=_choices(_BIAS_KINDS),
        default=("none", "qv"),
        metavar="KINDS",
        help="the bias settings compared, comma-separated: none, q (query), v (value), qv "
        "(default: none,qv)",
    )
    p.add_argument(
        "--attn-bias-mean",
        type=float_type(),
        default=0.5,
        metavar="M",
        help="mean of every bias component (default 0.5)",
    )
    p.add_argument(
        "--attn-bias-std",
        type=float_type(0.0),
        default=0.1,
        metavar="S",
        help="standard deviation of every bias component, drawn per batch (default 0.1)",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--preset", choices=_PRESETS, default="default", help="size (default)")
    size.add_argument("--smoke", action="store_true", help="tiny sizes, seconds (tests)")
    p.add_argument("--data", metavar="FILE", help="train on this text file (default: stdlib)")
    p.add_argument("--steps", type=int_type(1, 10**8), help="training steps of every run")
    p.add_argument("--batch-size", type=int_type(1, 10**6), help="windows per batch")
    p.add_argument(
        "--eval-every", type=int_type(1, 10**8), metavar="K", help="held-out loss every K"
    )
    p.add_argument(
        "--eval-windows", type=int_type(1, 10**6), metavar="N", help="held-out windows per split"
    )
    p.add_argument(
        "--trials", type=int_type(0, 10**5), help="Optuna trials per optimizer and setting"
    )
    p.add_argument("--runs", type=int_type(1, 10**4), help="seeds per optimizer and setting")
    for name in _FIXABLE:
        spec = registry.HYPERPARAMETERS[name]
        p.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=hyperparameter_type(name),
            help=f"fix {spec.help} (not tuned)",
        )
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1")
    p.add_argument(
        "--threads",
        type=int_type(1, 4 * (os.cpu_count() or 1)),
        help="torch CPU threads (default: torch's)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the finished trials and runs of --json (same settings)",
    )
    add_common_options(
        p,
        seed_help="tuning seed; the compared runs use seed + 1, ..., seed + runs",
        out_help="write the curves and tuning plots (PNG) into this folder",
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Run ``ecdopt train gpt``; user errors become ``CommandError``."""
    import torch

    from ecdopt.experiments.gpt.data import DataError
    from ecdopt.experiments.gpt.experiment import (
        ExperimentConfig,
        ExperimentError,
        format_table,
        run_experiment,
        settings_of,
    )

    check_outputs(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    log = log_function(args)
    cfg = ExperimentConfig(
        optimizers=args.optimizer,
        bias_kinds=args.attn_bias,
        bias_mean=args.attn_bias_mean,
        bias_std=args.attn_bias_std,
        preset="smoke" if args.smoke else args.preset,
        steps=args.steps,
        batch_size=args.batch_size,
        eval_every=args.eval_every,
        eval_windows=args.eval_windows,
        trials=args.trials,
        runs=args.runs,
        fixed={k: getattr(args, k) for k in _FIXABLE if getattr(args, k) is not None},
        data=args.data,
        seed=args.seed,
        device=args.device,
        json_path=args.json,
        out_dir=args.out,
        resume=args.resume,
        log=log,
    )
    sizes = settings_of(cfg)
    runs_per_cell = sizes["trials"] + sizes["runs"]
    total = len(cfg.optimizers) * len(cfg.bias_kinds) * runs_per_cell * sizes["steps"]
    with progress_bar(show_progress(args), total, "train gpt") as bar:
        cfg.on_step = bar.update
        try:
            doc = run_experiment(cfg)
        except (DataError, ExperimentError) as exc:
            raise CommandError(str(exc)) from None
    print(format_table(doc))
    if args.out is not None:
        from ecdopt.experiments.gpt.plots import plot_curves, plot_tuning

        written = [plot_curves(doc, args.out / "gpt-curves.png")]
        if any((c.get("tuning") or {}).get("trials") for c in doc["cells"].values()):
            written.append(plot_tuning(doc, args.out / "gpt-tuning.png"))
        log("wrote " + ", ".join(str(p) for p in written))
    if args.json is not None:
        log(f"wrote {args.json}")
    return 0
