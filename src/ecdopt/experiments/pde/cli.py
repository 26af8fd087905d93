"""``ecdopt pde``: reference solutions by shooting (Fig. 7) and training runs (§4.4, App. B).

ecdopt pde solutions [--preset paper|small|twin] [--shift C] [--json FILE] [--out DIR] [--smoke]
ecdopt pde train --preset small|twin|paper --optimizer bbi|ecdsep|sgdm|adam --runs N --seed S
                 [--jobs J] [--resample-every K] [--iterations N] [--lr X] [--shift C]
                 [--trace-every K] [--cuda-graph] [--smoke] [--json FILE] [--out DIR]
                 [--progress|--quiet]
(every option: ``ecdopt pde train --help`` and docs/pde.md)

``train`` rewrites ``--json`` after every finished run (``runs_done`` of ``runs_total``,
``complete``); plots go to ``--out`` at the end (none without ``--out``).
"""

from __future__ import annotations

import argparse
from typing import Any

from ecdopt._errors import CommandError
from ecdopt.experiments import registry
from ecdopt.experiments.cli_common import (
    ResultsFile,
    add_output_options,
    add_progress_options,
    add_seed_option,
    check_device,
    check_outputs,
    float_type,
    hyperparameter_type,
    int_type,
    log_function,
    seed_type,
    show_progress,
)

#: |c| beyond this makes the radial ODE too stiff for the shooting scan (wrong or no solutions)
MAX_SHIFT = 100.0
_OVERRIDES = ("extra_energy", "n_bounces", "bounce_period", "bounce_patience", "bounce_direction")


def _add_shift(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shift",
        type=float_type(-MAX_SHIFT, MAX_SHIFT),
        default=None,
        metavar="C",
        help=f"replace the profile's shift c: u = c + sin²(a r²), |c| <= {MAX_SHIFT:g} "
        "(default: the preset's)",
    )


def add_parser(subparsers: Any) -> None:
    """Register ``pde`` with its ``solutions`` and ``train`` sub-commands."""
    from ecdopt.experiments.pde.experiment import PRESETS
    from ecdopt.experiments.pde.model import LAPLACIANS

    parser = subparsers.add_parser(
        "pde",
        help="PDE experiment of §4.4 / App. B (nonlinear Poisson on the unit ball)",
        description="Solve Δu + u² = f on the unit ball (App. B, eq. 53) with a ResNet ansatz.",
    )
    sub = parser.add_subparsers(dest="pde_command", metavar="{solutions,train}")
    sub.required = True
    presets = sorted(PRESETS)

    sol = sub.add_parser("solutions", help="reference solutions by the radial shooting method")
    sol.add_argument("--preset", default="paper", choices=presets, help="(default: paper)")
    add_output_options(sol, json_help="write the solutions here (JSON)")
    sol.add_argument("--smoke", action="store_true", help="coarse scan (tests)")
    _add_shift(sol)
    sol.set_defaults(func=run_solutions)

    tr = sub.add_parser("train", help="train the eq. 56 ansatz on the eq. 19 loss")
    tr.add_argument("--preset", default="small", choices=presets, help="(default: small)")
    tr.add_argument("--optimizer", default="bbi", choices=registry.OPTIMIZERS)
    tr.add_argument("--runs", type=int_type(1, 10**6), default=1, help="number of runs (1)")
    tr.add_argument(
        "--jobs",
        type=int_type(1, 1024),
        default=1,
        help="runs trained at a time, in worker processes of one thread each (default: 1)",
    )
    add_seed_option(tr, help="optimizer seed; run i uses seed + i")
    tr.add_argument(
        "--init-seed",
        type=seed_type,
        default=None,
        help="seed of the shared initialisation and first points (default: --seed)",
    )
    tr.add_argument(
        "--vary-init",
        action="store_true",
        help="a new initialisation per run (default: all runs share one)",
    )
    tr.add_argument(
        "--resample-every",
        type=int_type(0, 10**12),
        default=None,
        metavar="K",
        help="new points every K iterations (0: never; default: the preset's)",
    )
    tr.add_argument(
        "--iterations", type=int_type(0, 10**12), default=None, help="default: the preset's"
    )
    tr.add_argument("--lr", type=hyperparameter_type("lr"), help="override the preset's lr")
    for name in _OVERRIDES[:-1]:
        spec = registry.HYPERPARAMETERS[name]
        tr.add_argument(
            "--" + name.replace("_", "-"),
            type=hyperparameter_type(name),
            default=None,
            help=f"override {spec.help}",
        )
    tr.add_argument(
        "--bounce-direction", choices=("gaussian", "uniform"), default=None, help="(bbi)"
    )
    tr.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (default: auto)")
    tr.add_argument("--laplacian", default="forward", choices=LAPLACIANS, help="(default: forward)")
    tr.add_argument(
        "--trace-every",
        type=int_type(1, 10**12),
        default=None,
        metavar="K",
        help="record the error to each solution every K iterations (JSON 'trace', a plot)",
    )
    tr.add_argument(
        "--tolerance",
        type=float_type(0, low_open=True),
        default=0.05,
        help="relative L2 error below which a run counts as converged",
    )
    tr.add_argument(
        "--cuda-graph",
        action="store_true",
        help="replay one captured CUDA graph per iteration, bounces included (CUDA only)",
    )
    tr.add_argument("--smoke", action="store_true", help="tiny sizes, seconds (tests)")
    _add_shift(tr)
    add_output_options(
        tr,
        json_help="write the runs here (JSON, rewritten after every run)",
        out_help="write the plots (PNG) into this folder (default: no plots)",
    )
    add_progress_options(tr)
    tr.set_defaults(func=run_train)


def _preset(args: argparse.Namespace):
    from ecdopt.experiments.pde.experiment import PRESETS, shifted_preset, smoke_preset

    preset = PRESETS[args.preset]
    if args.shift is not None:
        try:
            preset = shifted_preset(preset, args.shift)
        except ValueError as exc:
            raise CommandError(f"--shift: {exc}") from exc
    return smoke_preset(preset) if args.smoke else preset


def run_solutions(args: argparse.Namespace) -> int:
    """``ecdopt pde solutions``: print, save and plot every radial solution."""
    from ecdopt.experiments.pde.experiment import profile_description, reference_solutions
    from ecdopt.experiments.pde.problem import bracket_bound

    check_outputs(args)
    preset = _preset(args)
    problem = preset.problem
    bound = bracket_bound(problem)
    solutions = reference_solutions(preset)
    print(
        f"preset {preset.name}: d = {problem.dim}, f0 = {problem.boundary_value:.6f}, "
        f"u(0) scanned on [-{bound:.4g}, {bound:.4g}] ({preset.n_grid} points)"
    )
    for k, s in enumerate(solutions):
        print(
            f"  solution {k}: u(0) = {s.u0:+.10f}  u(1) = {s.u1:.10f}  "
            f"min {s.values.min():+.4f}  max {s.values.max():+.4f}"
        )
    doc = {
        "preset": preset.name,
        "profile": profile_description(preset.profile),
        "dim": problem.dim,
        "f0": problem.boundary_value,
        "bracket": [-bound, bound],
        "n_grid": preset.n_grid,
        "solutions": [s.as_dict() for s in solutions],
        "complete": True,
    }
    ResultsFile(args.json, doc).write()
    if args.out is not None:
        from ecdopt.experiments.pde.plots import plot_solutions

        path = plot_solutions(
            solutions,
            args.out / f"pde_{preset.name}_solutions.png",
            title=f"radial solutions ({preset.name} preset)",
        )
        print(f"wrote {path}")
    return 0


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides = {key: getattr(args, key) for key in _OVERRIDES if getattr(args, key) is not None}
    if args.optimizer in ("sgdm", "adam") and overrides:
        flag = next(iter(overrides)).replace("_", "-")
        raise CommandError(f"--{flag} applies to bbi/ecdsep only")
    if args.optimizer == "ecdsep" and set(overrides) - {"extra_energy"}:
        raise CommandError("bounce options apply to bbi only (ECDSep rotates instead)")
    return overrides


def _on_cuda(device: str) -> bool:
    import torch

    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def run_train(args: argparse.Namespace) -> int:
    """``ecdopt pde train``: several runs, their classification, JSON and plots."""
    from ecdopt.experiments.pde.experiment import train_runs

    check_device(args.device)
    if args.cuda_graph and not _on_cuda(args.device):
        raise CommandError("--cuda-graph needs a CUDA device (--device cuda)")
    overrides = _overrides(args)
    check_outputs(args)
    preset = _preset(args)
    log = log_function(args)
    results = ResultsFile(args.json)

    def save(doc: dict[str, Any], r: Any) -> None:
        results.doc = {k: v for k, v in doc.items() if not k.startswith("_")}
        results.update(complete=False)
        log(
            f"run {(r.seed - args.seed) % 2**63 + 1}/{doc['runs_total']} (seed {r.seed}): nearest "
            f"solution "
            f"{r.nearest_solution}, relative L2 error {r.relative_l2_error:.4g}, final loss "
            f"{r.final_loss:.4g}, {r.wall_seconds:.1f} s "
            f"({1e3 * r.wall_seconds / max(r.iterations, 1):.2f} ms/it)"
        )

    doc = train_runs(
        preset,
        args.optimizer,
        overrides=overrides,
        runs=args.runs,
        jobs=args.jobs,
        seed=args.seed,
        vary_init=args.vary_init,
        init_seed=args.init_seed,
        iterations=args.iterations,
        lr=args.lr,
        resample_every=args.resample_every,
        device=args.device,
        laplacian=args.laplacian,
        tolerance=args.tolerance,
        trace_every=args.trace_every,
        cuda_graph=args.cuda_graph,
        progress=show_progress(args),
        on_run=save,
    )
    run_results, solutions = doc.pop("_results"), doc.pop("_solutions")
    results.doc = doc
    results.update(complete=True)
    print(f"counts {doc['counts']}  converged (≤ {args.tolerance:g}) {doc['converged_counts']}")
    written = [] if args.json is None else [str(args.json)]
    if args.out is not None:
        written += _plots(args, preset.name, run_results, solutions)
    if written:
        print(f"wrote {', '.join(written)}")
    return 0


def _plots(args: argparse.Namespace, name: str, runs: list, solutions: list) -> list[str]:
    from ecdopt.experiments.pde.plots import plot_losses, plot_sections, plot_traces

    stem = f"pde_{name}_{args.optimizer}"
    title = f"{name} preset, {args.optimizer}, {len(runs)} run(s)"
    paths = [
        plot_sections(runs, solutions, args.out / f"{stem}_sections.png", title),
        plot_losses(runs, args.out / f"{stem}_loss.png", title),
    ]
    if args.trace_every:
        paths.append(plot_traces(runs, args.out / f"{stem}_trace.png", title))
    return [str(p) for p in paths]
