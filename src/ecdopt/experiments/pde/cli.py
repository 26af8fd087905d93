"""``ecdopt pde``: reference solutions by shooting (Fig. 7) and training runs (§4.4, App. B).

ecdopt pde solutions [--preset paper|small|twin] [--shift C] [--json FILE] [--out DIR] [--smoke]
ecdopt pde train --preset small|twin|paper --optimizer bbi|ecdsep|sgdm|adam --runs N --seed S
                 [--jobs J] [--resample-every K] [--iterations N] [--lr X] [--shift C]
                 [--trace-every K] [--cuda-graph] [--smoke] --json FILE --out DIR
(every option: ``ecdopt pde train --help`` and docs/pde.md)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from ecdopt._errors import CommandError


def _add_shift(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shift",
        type=float,
        default=None,
        metavar="C",
        help="replace the profile's shift c: u = c + sin²(a r²) (default: the preset's)",
    )


def add_parser(subparsers: Any) -> None:
    """Register ``pde`` with its ``solutions`` and ``train`` sub-commands."""
    parser = subparsers.add_parser(
        "pde",
        help="PDE experiment of §4.4 / App. B (nonlinear Poisson on the unit ball)",
        description="Solve Δu + u² = f on the unit ball (App. B, eq. 53) with a ResNet ansatz.",
    )
    sub = parser.add_subparsers(dest="pde_command", metavar="{solutions,train}")
    sub.required = True

    sol = sub.add_parser("solutions", help="reference solutions by the radial shooting method")
    sol.add_argument("--preset", default="paper", help="paper, small or twin (default: paper)")
    sol.add_argument("--json", type=Path, default=None, help="write the solutions as JSON")
    sol.add_argument("--out", type=Path, default=None, help="directory for the Fig. 7 plot")
    sol.add_argument("--smoke", action="store_true", help="coarse scan (tests)")
    _add_shift(sol)
    sol.set_defaults(func=run_solutions)

    tr = sub.add_parser("train", help="train the eq. 56 ansatz on the eq. 19 loss")
    tr.add_argument("--preset", default="small", help="small, twin or paper (default: small)")
    tr.add_argument("--optimizer", default="bbi", help="bbi, ecdsep, sgdm or adam")
    tr.add_argument("--runs", type=int, default=1, help="number of runs (default: 1)")
    tr.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs trained at a time, in worker processes of one thread each (default: 1)",
    )
    tr.add_argument("--seed", type=int, default=0, help="init seed; run i uses seed + i")
    tr.add_argument(
        "--init-seed",
        type=int,
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
        type=int,
        default=None,
        metavar="K",
        help="new points every K iterations (0: never; default: the preset's)",
    )
    tr.add_argument("--iterations", type=int, default=None, help="default: the preset's")
    tr.add_argument("--lr", type=float, default=None, help="override the preset's lr")
    tr.add_argument("--extra-energy", type=float, default=None, help="override δE (bbi, ecdsep)")
    tr.add_argument("--n-bounces", type=int, default=None, help="override N_b (bbi)")
    tr.add_argument("--bounce-period", type=int, default=None, help="override T0 (bbi)")
    tr.add_argument("--bounce-patience", type=int, default=None, help="override T1 (bbi)")
    tr.add_argument(
        "--bounce-direction", choices=("gaussian", "uniform"), default=None, help="(bbi)"
    )
    tr.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: auto)")
    tr.add_argument(
        "--laplacian",
        default="forward",
        help="forward, double_backward or functorch (default: forward)",
    )
    tr.add_argument(
        "--trace-every",
        type=int,
        default=None,
        metavar="K",
        help="record the error to each solution every K iterations (JSON 'trace', a plot)",
    )
    tr.add_argument(
        "--tolerance",
        type=float,
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
    tr.add_argument("--json", type=Path, required=True, help="output JSON file")
    tr.add_argument("--out", type=Path, required=True, help="directory for the plots")
    tr.set_defaults(func=run_train)


def _preset(args: argparse.Namespace):
    from ecdopt.experiments.pde import PRESETS, shifted_preset, smoke_preset

    if args.preset not in PRESETS:
        choices = ", ".join(sorted(PRESETS))
        raise CommandError(f"unknown preset {args.preset!r}; choose from {choices}")
    preset = PRESETS[args.preset]
    if args.shift is not None:
        if not math.isfinite(args.shift):
            raise CommandError("--shift must be a finite number")
        try:
            preset = shifted_preset(preset, args.shift)
        except ValueError as exc:
            raise CommandError(f"--shift: {exc}") from exc
    return smoke_preset(preset) if args.smoke else preset


def _write_json(path: Path | None, doc: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")


def run_solutions(args: argparse.Namespace) -> int:
    """``ecdopt pde solutions``: print, save and plot every radial solution."""
    from ecdopt.experiments.pde import (
        bracket_bound,
        plot_solutions,
        profile_description,
        reference_solutions,
    )

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
    }
    _write_json(args.json, doc)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        path = plot_solutions(
            solutions,
            args.out / f"pde_{preset.name}_solutions.png",
            title=f"radial solutions ({preset.name} preset)",
        )
        print(f"wrote {path}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    """``ecdopt pde train``: several runs, their classification, JSON and plots."""
    import torch

    from ecdopt.experiments.pde import (
        LAPLACIANS,
        OPTIMIZERS,
        plot_losses,
        plot_sections,
        plot_traces,
        train_runs,
    )

    preset = _preset(args)
    if args.optimizer not in OPTIMIZERS:
        choices = ", ".join(OPTIMIZERS)
        raise CommandError(f"unknown optimizer {args.optimizer!r}; choose from {choices}")
    if args.laplacian not in LAPLACIANS:
        choices = ", ".join(LAPLACIANS)
        raise CommandError(f"unknown laplacian {args.laplacian!r}; choose from {choices}")
    if args.runs < 1:
        raise CommandError("--runs must be at least 1")
    if args.jobs < 1:
        raise CommandError("--jobs must be at least 1")
    if args.iterations is not None and args.iterations < 0:
        raise CommandError("--iterations must be non-negative")
    if args.resample_every is not None and args.resample_every < 0:
        raise CommandError("--resample-every must be non-negative (0: never)")
    if args.trace_every is not None and args.trace_every < 1:
        raise CommandError("--trace-every must be at least 1")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise CommandError("--lr must be a positive number")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise CommandError(f"--device {args.device}: CUDA is not available")
    on_cuda = args.device.startswith("cuda") or (
        args.device == "auto" and torch.cuda.is_available()
    )
    if args.cuda_graph and not on_cuda:
        raise CommandError("--cuda-graph needs a CUDA device (--device cuda)")

    overrides = {
        key: getattr(args, key)
        for key in (
            "extra_energy",
            "n_bounces",
            "bounce_period",
            "bounce_patience",
            "bounce_direction",
        )
        if getattr(args, key) is not None
    }
    bounce_keys = set(overrides) - {"extra_energy"}
    if args.optimizer in ("sgdm", "adam") and overrides:
        flag = next(iter(overrides)).replace("_", "-")
        raise CommandError(f"--{flag} applies to bbi/ecdsep only")
    if args.optimizer == "ecdsep" and bounce_keys:
        raise CommandError("bounce options apply to bbi only (ECDSep rotates instead)")
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
        progress=sys.stderr.isatty(),
    )
    results = doc.pop("_results")
    solutions = doc.pop("_solutions")
    _write_json(args.json, doc)
    for i, r in enumerate(results):
        print(
            f"run {i} (seed {r.seed}): nearest solution {r.nearest_solution}, relative L2 "
            f"error {r.relative_l2_error:.4g}, final loss {r.final_loss:.4g}, "
            f"{r.wall_seconds:.1f} s ({1e3 * r.wall_seconds / max(r.iterations, 1):.2f} ms/it)"
        )
    print(f"counts {doc['counts']}  converged (≤ {args.tolerance:g}) {doc['converged_counts']}")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"pde_{preset.name}_{args.optimizer}"
    title = f"{preset.name} preset, {args.optimizer}, {len(results)} run(s)"
    sections = plot_sections(results, solutions, args.out / f"{stem}_sections.png", title)
    losses = plot_losses(results, args.out / f"{stem}_loss.png", title)
    written = [str(args.json), str(sections), str(losses)]
    if args.trace_every:
        written.append(str(plot_traces(results, args.out / f"{stem}_trace.png", title)))
    print(f"wrote {', '.join(written)}")
    return 0
