"""Benchmark the three Laplacians of the PDE loss (App. B, eqs. 19, 53, 56).

Methods: ``forward`` (forward Laplacian: value, input gradient and Laplacian pushed through each
layer in one pass), ``double_backward`` (autograd gradient, then one backward per input
dimension) and ``functorch`` (``torch.func``: ``vmap`` of ``hessian``). For each size it times

* ``lap``: value and Laplacian with the graph kept for the parameters (what the loss needs);
* ``iter``: the full eq. 19 loss plus ``backward()`` to the parameters (an iteration minus the
  optimizer step);

and checks in float64 that each method agrees with ``forward`` (``max|ΔL|``). Prints a Markdown
table and a JSON document (also written to ``--json``)::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/pde_laplacian.py --threads 2
    .venv/bin/python benchmarks/pde_laplacian.py --quick      # seconds: a syntax/logic check
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from ecdopt.experiments.pde import (
    LAPLACIANS,
    PRESETS,
    PDELoss,
    ResNetAnsatz,
    sample_ball,
    sample_sphere,
)

SIZES = {
    # name: (dim, width, depth, n_interior, n_boundary)
    "small": (2, 32, 2, 1000, 200),
    "paper": (2, 200, 3, 10_000, 1000),
    "quick": (2, 8, 1, 64, 16),
}


def _time(fn, repeats: int, device: torch.device) -> tuple[float, float]:
    """(median, min) wall time of ``fn()`` in milliseconds (after one warm-up call).

    On a shared machine the minimum is the better estimate of the uncontended cost."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(1e3 * (time.perf_counter() - t))
    return statistics.median(times), min(times)


def bench_size(
    name: str, repeats: int, device: torch.device, dtype: torch.dtype, methods: list[str]
) -> list[dict]:
    """Time every method at one size; returns one row per method."""
    dim, width, depth, n_int, n_bnd = SIZES[name]
    problem = PRESETS["paper" if name == "paper" else "small"].problem
    torch.manual_seed(0)
    model = ResNetAnsatz(dim, width, depth).to(device=device, dtype=dtype)
    gen = torch.Generator().manual_seed(0)
    x_int = sample_ball(n_int, dim, gen, dtype=torch.float64)
    f_int = problem.source(x_int).to(device=device, dtype=dtype)
    x_int = x_int.to(device=device, dtype=dtype)
    x_bnd = sample_sphere(n_bnd, dim, gen, dtype=dtype).to(device)

    # correctness in float64 on a few points
    model64 = ResNetAnsatz(dim, width, depth).double()
    model64.load_state_dict({k: v.double().cpu() for k, v in model.state_dict().items()})
    x64 = x_int[:64].double().cpu()
    _, ref = LAPLACIANS["forward"](model64, x64)

    rows = []
    for method in methods:
        lap_fn = LAPLACIANS[method]
        loss_fn = PDELoss(problem, laplacian=method)
        _, lap64 = lap_fn(model64, x64)

        def lap_only(lap_fn=lap_fn) -> None:
            with torch.enable_grad():
                lap_fn(model, x_int)

        def iteration(loss_fn=loss_fn) -> None:
            model.zero_grad(set_to_none=True)
            loss_fn(model, x_int, f_int, x_bnd).backward()

        rows.append(
            {
                "size": name,
                "method": method,
                "points": n_int,
                "width": width,
                "depth": depth,
                **dict(
                    zip(("lap_ms", "lap_min_ms"), _time(lap_only, repeats, device), strict=True)
                ),
                **dict(
                    zip(("iter_ms", "iter_min_ms"), _time(iteration, repeats, device), strict=True)
                ),
                "max_abs_diff_f64": float((lap64 - ref).detach().abs().max()),
            }
        )
    base = next(r["iter_ms"] for r in rows if r["method"] == rows[0]["method"])
    for r in rows:
        r["iter_vs_first"] = r["iter_ms"] / base
    base_min = rows[0]["iter_min_ms"]
    for r in rows:
        r["iter_min_vs_first"] = r["iter_min_ms"] / base_min
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="small,paper", help="comma list of small,paper,quick")
    parser.add_argument("--methods", default="forward,double_backward,functorch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--quick", action="store_true", help="tiny size, 2 repeats (a check)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = ["quick"] if args.quick else args.sizes.split(",")
    repeats = 2 if args.quick else args.repeats
    methods = args.methods.split(",")
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    rows = [r for s in sizes for r in bench_size(s, repeats, device, dtype, methods)]

    print(
        f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} thread(s), "
        f"{args.dtype}, {repeats} repeats: median (min) ms"
    )
    print(
        "| size | points | width×depth | method | Laplacian ms | loss+backward ms "
        "| × first (min) | max abs diff (f64) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['size']} | {r['points']} | {r['width']}×{r['depth']} | {r['method']} "
            f"| {r['lap_ms']:.2f} ({r['lap_min_ms']:.2f}) "
            f"| {r['iter_ms']:.2f} ({r['iter_min_ms']:.2f}) | {r['iter_min_vs_first']:.2f} "
            f"| {r['max_abs_diff_f64']:.1e} |"
        )
    doc = {
        "torch": torch.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "dtype": args.dtype,
        "repeats": repeats,
        "rows": rows,
    }
    print(json.dumps(doc))
    if args.json is not None:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
