"""``ecdopt synthetic ackley|zakharov|basins``: the paper's synthetic experiments (§4.1-4.3).

Defaults are the paper's protocols; ``--smoke`` shrinks every number so a run takes seconds.
Results go to ``--json FILE`` (and stdout), plots (PNG) to ``--out DIR``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from ecdopt._errors import CommandError
from ecdopt.experiments.synthetic.protocols import (
    AckleyConfig,
    BasinsConfig,
    ZakharovConfig,
    ackley_methods,
    ackley_protocol,
    basins_protocol,
    zakharov_methods,
    zakharov_protocol,
)

__all__ = ["add_parser", "run_ackley", "run_basins", "run_zakharov"]


def _bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", disable=not enabled, leave=False)


def _methods(text: str | None, known: dict) -> tuple[str, ...] | None:
    if text is None:
        return None
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise CommandError(f"--methods: unknown {bad or text!r}; choose from {sorted(known)}")
    return names


def _positive(args: argparse.Namespace, *names: str) -> None:
    for n in names:
        v = getattr(args, n, None)
        if v is not None and v <= 0:
            raise CommandError(f"--{n.replace('_', '-')} must be positive, got {v}")


def run_ackley(args: argparse.Namespace) -> dict:
    """§4.1 with the options of ``args``; returns the summary dict."""
    _positive(args, "starts", "repeats", "trials", "steps", "tune_steps", "batch")
    direction = args.bounce_direction if args.bounce_direction != "both" else "uniform"
    cfg = AckleyConfig(b=args.ackley_b, seed=args.seed, bounce_direction=direction)
    if args.smoke:
        cfg = replace(cfg, trials=8, tune_steps=50, batch=4, starts=4, repeats=2, steps=300)
    over = {
        k: getattr(args, a)
        for k, a in [
            ("starts", "starts"),
            ("repeats", "repeats"),
            ("trials", "trials"),
            ("steps", "steps"),
            ("tune_steps", "tune_steps"),
            ("batch", "batch"),
        ]
        if getattr(args, a) is not None
    }
    methods = _methods(args.methods, ackley_methods())
    cfg = replace(cfg, **over, **({"methods": methods} if methods else {}))
    total = len(cfg.methods) * (cfg.trials * cfg.tune_steps + cfg.steps)
    with _bar(total, "ackley", args.progress) as bar:
        summary, extras = ackley_protocol(cfg, bar.update, record_curves=args.out is not None)
    if args.out is not None:
        from ecdopt.experiments.synthetic.plots import plot_ackley

        summary["plots"] = [str(p) for p in plot_ackley(summary, extras, Path(args.out))]
    return summary


def run_zakharov(args: argparse.Namespace) -> dict:
    """§4.2 with the options of ``args``."""
    _positive(args, "trials", "steps", "tune_steps", "batch", "dim")
    cfg = ZakharovConfig(seed=args.seed, dim=args.dim)
    if args.smoke:
        cfg = replace(cfg, trials=8, tune_steps=100, batch=4, steps=400)
    over = {
        k: getattr(args, k)
        for k in ("trials", "steps", "tune_steps", "batch")
        if getattr(args, k) is not None
    }
    methods = _methods(args.methods, zakharov_methods())
    cfg = replace(cfg, **over, **({"methods": methods} if methods else {}))
    total = len(cfg.methods) * (cfg.trials * cfg.tune_steps + cfg.steps)
    with _bar(total, "zakharov", args.progress) as bar:
        summary, extras = zakharov_protocol(cfg, bar.update)
    if args.out is not None:
        from ecdopt.experiments.synthetic.plots import plot_zakharov

        summary["plots"] = [str(p) for p in plot_zakharov(summary, extras, Path(args.out))]
    return summary


def run_basins(args: argparse.Namespace) -> dict:
    """§4.3 with the options of ``args``."""
    _positive(args, "runs", "steps")
    if args.n_bounces is not None and args.n_bounces < 0:
        raise CommandError("--n-bounces must be ≥ 0")
    cfg = BasinsConfig(seed=args.seed)
    if args.smoke:
        cfg = replace(
            cfg,
            runs=40,
            steps=3000,
            trajectories=3,
            occupation_runs=10,
            occupation_steps=500,
            occupation_burn_in=100,
        )
    over = {
        k: getattr(args, k)
        for k in ("runs", "steps", "n_bounces", "occupation_steps", "occupation_runs")
        if getattr(args, k, None) is not None
    }
    cfg = replace(cfg, **over)
    if args.out is None:
        cfg = replace(cfg, trajectories=0)
    dirs = ("uniform", "gaussian") if args.bounce_direction == "both" else (args.bounce_direction,)
    occ = (cfg.occupation_steps + cfg.occupation_burn_in) if cfg.occupation_steps > 0 else 0
    with _bar(len(dirs) * (cfg.steps + occ), "basins", args.progress) as bar:
        summary, extras = basins_protocol(cfg, dirs, bar.update)
    if args.out is not None:
        from ecdopt.experiments.synthetic.plots import plot_basins

        summary["plots"] = [str(p) for p in plot_basins(summary, extras, Path(args.out))]
    return summary


_RUNNERS = {"ackley": run_ackley, "zakharov": run_zakharov, "basins": run_basins}


def _main(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    summary = _RUNNERS[args.experiment](args)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(summary, indent=2)
    if args.json is not None:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    print(text)
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``synthetic`` sub-command."""
    p = subparsers.add_parser(
        "synthetic",
        help="the paper's synthetic experiments (§4.1-4.3)",
        description=(
            "Reproduce §4.1 (ackley: BBI vs tuned GDM/Adam/ECDSep from random starts), §4.2 "
            "(zakharov: 10-D shallow valley) and §4.3 (basins: two-basin first-passage ratio vs "
            "the phase-space prediction). Defaults are the paper's protocols."
        ),
    )
    p.add_argument("experiment", choices=sorted(_RUNNERS))
    p.add_argument("--json", metavar="FILE", help="write the JSON summary here")
    p.add_argument("--out", metavar="DIR", help="write PNG plots here")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (seconds), for tests")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm bar")
    g = p.add_argument_group("ackley / zakharov")
    g.add_argument("--trials", type=int, help="Optuna trials per optimizer (500)")
    g.add_argument("--tune-steps", type=int, help="steps per trial (ackley 200, zakharov 2500)")
    g.add_argument("--batch", type=int, help="trials evaluated together as particles (50)")
    g.add_argument("--steps", type=int, help="steps of the final runs (3e4 / 1e4; basins 25000)")
    g.add_argument("--starts", type=int, help="ackley: random starts in [-4, 4]² (100)")
    g.add_argument("--repeats", type=int, help="ackley: runs per start (5)")
    g.add_argument("--ackley-b", type=float, default=0.2, help="eq. 15's 0.2 (notebook: 0.02)")
    g.add_argument("--dim", type=int, default=10, help="zakharov dimension (10)")
    g.add_argument("--methods", help="comma-separated subset of the optimizers")
    g = p.add_argument_group("basins")
    g.add_argument("--runs", type=int, help="independent runs (4000)")
    g.add_argument("--n-bounces", type=int, help="N_b, fixed bounces (1)")
    g.add_argument(
        "--bounce-direction",
        choices=("gaussian", "uniform", "both"),
        default="both",
        help="bounce directions; basins: 'both' (default) runs uniform (the authors') then "
        "gaussian; ackley: BBI's directions (default: uniform, the authors' protocol)",
    )
    g.add_argument("--occupation-steps", type=int, help="time-average steps (20000; 0: skip)")
    g.add_argument("--occupation-runs", type=int, help="particles for the time average (200)")
    p.set_defaults(func=_main)
    return p
