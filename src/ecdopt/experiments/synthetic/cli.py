"""``ecdopt synthetic ackley|zakharov|basins|occupation``: the paper's synthetic experiments
(§4.1-4.3) and the time-averaged basin occupation that eqs. 10/40 predict.

Defaults are the paper's protocols; ``--smoke`` shrinks every number so a run takes seconds.
Results go to ``--json FILE`` (rewritten after each optimizer or bounce direction; the field
``complete`` says whether the run finished) and to stdout at the end; plots (PNG) to
``--out DIR``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from dataclasses import replace

from ecdopt._errors import CommandError
from ecdopt.experiments.cli_common import (
    ResultsFile,
    add_common_options,
    check_outputs,
    float_type,
    int_type,
    progress_bar,
    show_progress,
    strict_json,
)
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

__all__ = [
    "add_parser",
    "one_thread",
    "run_ackley",
    "run_basins",
    "run_occupation",
    "run_zakharov",
]

#: particles held in memory at once (a bigger run would exhaust memory, not finish)
MAX_PARTICLES = 10**6
#: numbers held by one recorded trajectory (steps × dimension)
MAX_RECORDED = 10**8


def _methods(text: str | None, known: dict) -> tuple[str, ...] | None:
    if text is None:
        return None
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise CommandError(f"--methods: unknown {bad or text!r}; choose from {sorted(known)}")
    return names


def _at_most(what: str, count: int, limit: int) -> None:
    if count > limit:
        raise CommandError(f"{what} = {count:,} is over the limit of {limit:,} (memory)")


def _overrides(args: argparse.Namespace, names: tuple[str, ...]) -> dict:
    return {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}


def _log(args: argparse.Namespace, experiment: str, done: list) -> None:
    if not args.quiet:
        print(f"{experiment}: {done[-1]} done", file=sys.stderr, flush=True)


def run_ackley(args: argparse.Namespace, results: ResultsFile) -> tuple[dict, dict]:
    """§4.1 with the options of ``args``; returns (summary, extras for the plots)."""
    direction = args.bounce_direction if args.bounce_direction != "both" else "uniform"
    cfg = AckleyConfig(
        b=args.ackley_b, seed=args.seed, bounce_direction=direction, off_shell=args.off_shell
    )
    if args.smoke:
        cfg = replace(cfg, trials=8, tune_steps=50, batch=4, starts=4, repeats=2, steps=300)
    methods = _methods(args.methods, ackley_methods())
    names = ("starts", "repeats", "trials", "steps", "tune_steps", "batch")
    cfg = replace(cfg, **_overrides(args, names), **({"methods": methods} if methods else {}))
    _at_most("--starts × --repeats", cfg.starts * cfg.repeats, MAX_PARTICLES)
    _at_most("--batch", cfg.batch, MAX_PARTICLES)
    _at_most("--steps (recorded for the plots)", cfg.steps * 2, MAX_RECORDED)

    def partial(summary: dict) -> None:
        results.update(**summary, complete=False)
        _log(args, "ackley", summary["methods_done"])

    total = len(cfg.methods) * (cfg.trials * cfg.tune_steps + cfg.steps)
    with progress_bar(show_progress(args), total, "ackley") as bar:
        return ackley_protocol(cfg, bar.update, args.out is not None, on_result=partial)


def run_zakharov(args: argparse.Namespace, results: ResultsFile) -> tuple[dict, dict]:
    """§4.2 with the options of ``args``."""
    cfg = ZakharovConfig(seed=args.seed, dim=args.dim, off_shell=args.off_shell)
    if args.smoke:
        cfg = replace(cfg, trials=8, tune_steps=100, batch=4, steps=400)
    methods = _methods(args.methods, zakharov_methods())
    names = ("trials", "steps", "tune_steps", "batch")
    cfg = replace(cfg, **_overrides(args, names), **({"methods": methods} if methods else {}))
    _at_most("--batch × --dim", cfg.batch * cfg.dim, MAX_PARTICLES * 10)
    _at_most("--steps × --dim (the recorded run)", cfg.steps * cfg.dim, MAX_RECORDED)

    def partial(summary: dict) -> None:
        results.update(**summary, complete=False)
        _log(args, "zakharov", summary["methods_done"])

    total = len(cfg.methods) * (cfg.trials * cfg.tune_steps + cfg.steps)
    with progress_bar(show_progress(args), total, "zakharov") as bar:
        return zakharov_protocol(cfg, bar.update, on_result=partial)


def run_basins(args: argparse.Namespace, results: ResultsFile) -> tuple[dict, dict]:
    """§4.3 with the options of ``args``."""
    cfg = BasinsConfig(seed=args.seed, off_shell=args.off_shell)
    if args.smoke:
        cfg = replace(cfg, runs=40, steps=3000, trajectories=3)
    cfg = replace(cfg, **_overrides(args, ("runs", "steps", "n_bounces")))
    _at_most("--runs", cfg.runs, MAX_PARTICLES)
    if args.out is None:
        cfg = replace(cfg, trajectories=0)
    dirs = ("uniform", "gaussian") if args.bounce_direction == "both" else (args.bounce_direction,)

    def partial(summary: dict) -> None:
        results.update(**summary, complete=False)
        _log(args, "basins", summary["directions_done"])

    with progress_bar(show_progress(args), len(dirs) * cfg.steps, "basins") as bar:
        return basins_protocol(cfg, dirs, bar.update, on_result=partial)


def _list(text: str | None, kind, option: str) -> tuple | None:
    if text is None:
        return None
    try:
        items = tuple(kind(x.strip()) for x in text.split(",") if x.strip())
    except ValueError:
        raise CommandError(f"{option}: expected a comma-separated list, got {text!r}") from None
    if not items:
        raise CommandError(f"{option}: empty list")
    return items


def _occupation_config(args: argparse.Namespace):
    from ecdopt.experiments.synthetic.occupation import DYNAMICS, OccupationConfig, smoke_config

    cfg = OccupationConfig(seed=args.seed, off_shell=args.off_shell)
    dynamics = _list(args.dynamics, str, "--dynamics")
    if dynamics is not None:
        bad = [d for d in dynamics if d not in DYNAMICS]
        if bad:
            raise CommandError(f"--dynamics: unknown {bad}; choose from {', '.join(DYNAMICS)}")
        cfg = replace(cfg, dynamics=dynamics)
    dts = _list(args.dt, float, "--dt")
    if dts is not None:
        if any(not dt > 0 for dt in dts):
            raise CommandError(f"--dt: every step must be > 0, got {args.dt}")
        cfg = replace(cfg, dts=dts)
    if args.smoke:
        cfg = smoke_config(cfg)
    names = ("particles", "time", "burn_in", "landscape", "start", "v_min", "energy")
    cfg = replace(cfg, **_overrides(args, names))
    try:
        cfg.validate()
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    _at_most("--particles", cfg.particles, MAX_PARTICLES)
    return cfg


def run_occupation(args: argparse.Namespace, results: ResultsFile) -> tuple[dict, dict]:
    """The time-averaged basin occupation study with the options of ``args``."""
    from ecdopt.experiments.synthetic.occupation import occupation_protocol

    cfg = _occupation_config(args)

    def partial(summary: dict) -> None:
        results.update(**summary, complete=False)
        if not args.quiet:
            name, entry = list(summary["dynamics"].items())[-1]
            print(f"occupation: {name} Δt = {entry['runs'][-1]['dt']:g} done", file=sys.stderr)

    total = sum(round((cfg.burn_in + cfg.time) / dt) for dt in cfg.dts) * len(cfg.dynamics)
    with progress_bar(show_progress(args), total, "occupation") as bar:
        return occupation_protocol(cfg, bar.update, on_result=partial), {}


_RUNNERS = {
    "ackley": run_ackley,
    "zakharov": run_zakharov,
    "basins": run_basins,
    "occupation": run_occupation,
}


def _plot(experiment: str, summary: dict, extras: dict, out) -> list[str]:
    from ecdopt.experiments.synthetic import plots

    if experiment == "occupation":
        return [str(p) for p in plots.plot_occupation(summary, out)]
    plot = {"ackley": plots.plot_ackley, "zakharov": plots.plot_zakharov}.get(
        experiment, plots.plot_basins
    )
    return [str(p) for p in plot(summary, extras, out)]


@contextlib.contextmanager
def one_thread():
    """torch on one intra-op thread inside the block (restored after). The ensembles here are
    many small tensors: a second thread gains nothing, and on a busy machine each parallel op
    then waits for a core (measured: a 1000 × 2 quadratic form took 6 ms instead of 0.03)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _main(args: argparse.Namespace) -> int:
    check_outputs(args)
    results = ResultsFile(args.json, {"experiment": args.experiment, "complete": False})
    t0 = time.perf_counter()
    with one_thread():
        summary, extras = _RUNNERS[args.experiment](args, results)
    if args.out is not None:
        summary["plots"] = _plot(args.experiment, summary, extras, args.out)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    results.doc = {"experiment": args.experiment, **summary, "complete": True}
    results.write()
    print(json.dumps(strict_json(results.doc), indent=2))
    return 0


_COUNT = int_type(1, 10**9)
_SIZE = int_type(1, 10**7)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``synthetic`` sub-command."""
    p = subparsers.add_parser(
        "synthetic",
        help="the paper's synthetic experiments (§4.1-4.3)",
        description=(
            "Reproduce §4.1 (ackley: BBI vs tuned GDM/Adam/ECDSep from random starts), §4.2 "
            "(zakharov: 10-D shallow valley) and §4.3 (basins: two-basin first-passage ratio vs "
            "the phase-space prediction), and measure what eqs. 10/40 predict (occupation: the "
            "time-averaged share of each basin, with error bars). Defaults are the paper's "
            "protocols."
        ),
    )
    p.add_argument("experiment", choices=sorted(_RUNNERS))
    add_common_options(
        p,
        json_help="write the JSON summary here (rewritten after each optimizer / direction)",
        seed_help="seed of the starts, the searches and the runs",
    )
    p.add_argument("--smoke", action="store_true", help="tiny sizes (seconds), for tests")
    g = p.add_argument_group("ackley / zakharov")
    g.add_argument("--trials", type=_COUNT, help="Optuna trials per optimizer (500)")
    g.add_argument("--tune-steps", type=_COUNT, help="steps per trial (ackley 200, zakharov 2500)")
    g.add_argument("--batch", type=_SIZE, help="trials evaluated together as particles (50)")
    g.add_argument("--steps", type=_COUNT, help="steps of the final runs (3e4 / 1e4; basins 25000)")
    g.add_argument("--starts", type=_SIZE, help="ackley: random starts in [-4, 4]² (100)")
    g.add_argument("--repeats", type=_SIZE, help="ackley: runs per start (5)")
    g.add_argument(
        "--ackley-b",
        type=float_type(0, low_open=True),
        default=0.2,
        help="eq. 15's b > 0 (paper 0.2, the authors' notebook 0.02)",
    )
    g.add_argument("--dim", type=int_type(1, 10**5), default=10, help="zakharov dimension (10)")
    g.add_argument("--methods", help="comma-separated subset of the optimizers")
    g.add_argument(
        "--off-shell",
        choices=("exact", "rescale"),
        default="exact",
        help="BBI steps with V > 2E: 'exact' (Algorithm 1, the default, so a figure labelled BBI "
        "is Algorithm 1's) or 'rescale' (the optimizer's guard); either way counted in the "
        "JSON's off_shell_steps",
    )
    g = p.add_argument_group("basins")
    g.add_argument("--runs", type=_SIZE, help="independent runs (4000)")
    g.add_argument("--n-bounces", type=int_type(0, 10**9), help="N_b, fixed bounces (1)")
    g.add_argument(
        "--bounce-direction",
        choices=("gaussian", "uniform", "both"),
        default="both",
        help="bounce directions; basins: 'both' (default) runs uniform (the authors') then "
        "gaussian; ackley: BBI's directions (default: uniform, the authors' protocol)",
    )
    g = p.add_argument_group(
        "occupation (times in units of t = steps·Δt; defaults: the study in docs/synthetic.md)"
    )
    g.add_argument(
        "--dynamics",
        help="comma-separated: bbi, bbi-t1-1, bbi-uniform, flow, every-7.5, every-2.5, "
        "every-1, ecdsep, unit-speed (default: flow,bbi,every-7.5,every-1)",
    )
    g.add_argument("--dt", help="comma-separated time steps Δt (0.04,0.02,0.01)")
    g.add_argument("--particles", type=_SIZE, help="independent particles per run (4000)")
    g.add_argument(
        "--time",
        type=float_type(0, low_open=True),
        help="measured time per particle after the burn-in (300)",
    )
    g.add_argument("--burn-in", type=float_type(0), help="time before counting starts (20)")
    g.add_argument(
        "--landscape", choices=("two_basin", "quadratic_basins", "gaussian10"), help="(two_basin)"
    )
    g.add_argument(
        "--start", choices=("stationary", "paper"), help="drawn from the measure, or (10, -10)"
    )
    g.add_argument(
        "--v-min", type=float_type(0, low_open=True), help="V_I, the floor below the minima (1e-3)"
    )
    g.add_argument(
        "--energy",
        type=float_type(0, low_open=True),
        help="the largest reachable V (default: V at the start)",
    )
    p.set_defaults(func=_main)
    return p
