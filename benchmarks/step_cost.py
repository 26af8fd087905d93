"""Cost of one optimizer ``step()``: ECD optimizers against torch's SGD and Adam, side by side.

Builds parameter sets shaped like (a) ResNet-18 for CIFAR (11.2M params in 62 tensors), (b) a
100k-param MLP in 6 tensors and (c) a 125M-param GPT-2-small-like transformer (CUDA only),
presets their gradients, and times ``step()`` of each optimizer in alternating rounds (so drift
in the machine's speed hits every optimizer alike). Prints a table and writes JSON with the
median step time and its ratio to ``SGD(momentum=0.9, foreach=True)``. On CUDA it also counts
blocking host-device syncs per step (``torch.cuda.set_sync_debug_mode``) and the peak memory a
step allocates beyond the parameters, gradients and optimizer state.

The loss changes every step (a slow decrease, new minima now and then) and BBI runs with
δE = 0.5, so the energy is restored (α ≠ 1) at every step. ``--clock process`` (the CPU default)
times with ``time.process_time``: the CPU time of this process, which other processes' load on
a shared machine does not inflate (with one thread it is the wall time of an idle machine);
``--clock wall`` (the CUDA default, with synchronisation) times with ``time.perf_counter``.

    python benchmarks/step_cost.py [--device cpu|cuda] [--threads 1] [--rounds 7] [--json FILE]
        [--only bbi,ecdsep] [--baseline-src ../ecdopt-before/src] [--clock process|wall]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import warnings
from collections.abc import Callable

import torch

import ecdopt


def resnet18_shapes() -> list[tuple[int, ...]]:
    """Parameter shapes of the CIFAR ResNet-18 (3×3 stem, blocks [2, 2, 2, 2], linear 512→10)."""
    shapes: list[tuple[int, ...]] = [(64, 3, 3, 3), (64,), (64,)]
    in_ch = 64
    for out_ch, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for block in range(2):
            first = block == 0
            shapes += [(out_ch, in_ch if first else out_ch, 3, 3), (out_ch,), (out_ch,)]
            shapes += [(out_ch, out_ch, 3, 3), (out_ch,), (out_ch,)]
            if first and (stride != 1 or in_ch != out_ch):
                shapes += [(out_ch, in_ch, 1, 1), (out_ch,), (out_ch,)]
        in_ch = out_ch
    return [*shapes, (10, 512), (10,)]


def mlp_shapes() -> list[tuple[int, ...]]:
    """A 784-120-48-10 MLP: 100,498 params in 6 tensors."""
    return [(120, 784), (120,), (48, 120), (48,), (10, 48), (10,)]


def transformer_shapes() -> list[tuple[int, ...]]:
    """GPT-2 small (124M params): embeddings, 12 blocks, final layer norm."""
    d, vocab, ctx = 768, 50257, 1024
    shapes: list[tuple[int, ...]] = [(vocab, d), (ctx, d)]
    for _ in range(12):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,)]
        shapes += [(d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
    return [*shapes, (d,), (d,)]


def make_params(shapes, device: torch.device, seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    params = []
    for shape in shapes:
        p = torch.nn.Parameter(torch.randn(shape, generator=gen).mul_(0.05).to(device))
        p.grad = torch.randn(shape, generator=gen).mul_(1e-3).to(device)
        params.append(p)
    return params


def load_baseline(src: str):
    """Another ecdopt source tree (e.g. an older commit checked out with ``git worktree add``),
    imported as the package ``ecdopt_baseline``, so that both are timed in one run."""
    import importlib.util
    import sys
    from pathlib import Path

    root = Path(src) / "ecdopt"
    spec = importlib.util.spec_from_file_location(
        "ecdopt_baseline", root / "__init__.py", submodule_search_locations=[str(root)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["ecdopt_baseline"] = module
    spec.loader.exec_module(module)
    return module


BASELINE = None  # set by --baseline-src


def optimizer_factories(device: torch.device) -> dict[str, Callable]:
    bbi_kwargs = {
        "bounce_period": 100,
        "n_bounces": 5,
        "bounce_patience": 200,
        "seed": 0,
        "extra_energy": 0.5,
    }
    counter = {"rng": "counter", "seed": 0}
    factories: dict[str, Callable] = {
        "sgd_foreach": lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, foreach=True),
        "sgd_fused": lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, fused=True),
        "adam_foreach": lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=True),
        "adam_fused": lambda ps: torch.optim.Adam(ps, lr=1e-3, fused=True),
        "bbi": lambda ps: ecdopt.BBI(ps, lr=1e-3, **bbi_kwargs),
        "bbi_foreach": lambda ps: ecdopt.BBI(ps, lr=1e-3, foreach=True, **bbi_kwargs),
        "bbi_per_tensor": lambda ps: ecdopt.BBI(ps, lr=1e-3, foreach=False, **bbi_kwargs),
        "bbi_fused": lambda ps: ecdopt.BBI(ps, lr=1e-3, fused=True, **bbi_kwargs),
        "bbi_sync_free": lambda ps: ecdopt.BBI(ps, lr=1e-3, sync_free=True, **bbi_kwargs),
        "bbi_counter": lambda ps: ecdopt.BBI(ps, lr=1e-3, **{**bbi_kwargs, **counter}),
        "ecdsep": lambda ps: ecdopt.ECDSep(ps, lr=1e-3, seed=0),
        "ecdsep_every4": lambda ps: ecdopt.ECDSep(ps, lr=1e-3, seed=0, rotation_every=4),
        "ecdsep_every8": lambda ps: ecdopt.ECDSep(ps, lr=1e-3, seed=0, rotation_every=8),
        "ecdsep_fused": lambda ps: ecdopt.ECDSep(ps, lr=1e-3, seed=0, fused=True),
        "ecdsep_counter": lambda ps: ecdopt.ECDSep(ps, lr=1e-3, **counter),
        "unit_speed": lambda ps: ecdopt.UnitSpeedECD(ps, lr=1e-3, seed=0),
    }
    if device.type == "cuda":  # the CUDA-graph-ready step, bounces and rotations included
        factories["bbi_capturable"] = lambda ps: ecdopt.BBI(
            ps, lr=1e-3, capturable=True, **{**bbi_kwargs, **counter}
        )
        factories["ecdsep_capturable"] = lambda ps: ecdopt.ECDSep(
            ps, lr=1e-3, capturable=True, **counter
        )
    if BASELINE is not None:
        factories["bbi@baseline"] = lambda ps: BASELINE.BBI(ps, lr=1e-3, **bbi_kwargs)
        factories["bbi_fused@baseline"] = lambda ps: BASELINE.BBI(
            ps, lr=1e-3, fused=True, **bbi_kwargs
        )
        factories["ecdsep@baseline"] = lambda ps: BASELINE.ECDSep(ps, lr=1e-3, seed=0)
    return factories


def count_syncs(fn: Callable[[], None]) -> int:
    """Blocking host-device syncs during ``fn()`` (CUDA only)."""
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def bench_set(
    name: str,
    shapes,
    device: torch.device,
    rounds: int,
    steps: int,
    only: set[str] | None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict:
    factories = optimizer_factories(device)
    if only:
        factories = {k: v for k, v in factories.items() if k in only or k == "sgd_foreach"}
    runs = {}
    for opt_name, factory in factories.items():
        params = make_params(shapes, device)
        try:
            opt = factory(params)
        except (RuntimeError, ValueError) as exc:  # e.g. fused not supported on this device
            print(f"  {opt_name}: skipped ({exc})")
            continue
        # a slowly decreasing loss, as in training (new minima now and then)
        losses = [torch.tensor(10.0 - 1e-4 * i, device=device) for i in range(steps)]
        counter = {"i": 0}

        def one_step(opt=opt, losses=losses, counter=counter) -> None:
            i = counter["i"] % len(losses)
            counter["i"] += 1
            if isinstance(opt, ecdopt.ECD) or type(opt).__module__.startswith("ecdopt_baseline"):
                opt.step(loss=losses[i])
            else:
                opt.step()

        for _ in range(3):  # warm-up: state allocation, first-step initialisation
            one_step()
        runs[opt_name] = {"step": one_step, "params": params, "opt": opt, "times": []}

    sync = device.type == "cuda"
    for _ in range(rounds):
        for run in runs.values():
            if sync:
                torch.cuda.synchronize()
            t0 = clock()
            for _ in range(steps):
                run["step"]()
            if sync:
                torch.cuda.synchronize()
            run["times"].append((clock() - t0) / steps)

    n_params = sum(int(torch.Size(s).numel()) for s in shapes)
    out = {"params": n_params, "tensors": len(shapes), "optimizers": {}}
    base = statistics.median(runs["sgd_foreach"]["times"])
    for opt_name, run in runs.items():
        median = statistics.median(run["times"])
        row = {"median_ms": median * 1e3, "ratio_to_sgd_foreach": median / base}
        if device.type == "cuda":
            row["blocking_syncs_per_step"] = count_syncs(run["step"])
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            run["step"]()
            torch.cuda.synchronize()
            row["peak_extra_memory_mb"] = (torch.cuda.max_memory_allocated() - before) / 2**20
        out["optimizers"][opt_name] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--steps", type=int, default=16, help="steps per timed round (x20 on the MLP set)"
    )
    parser.add_argument(
        "--clock",
        choices=("process", "wall"),
        default=None,
        help="process: CPU time of this process (default on the CPU); wall: elapsed time "
        "(default on CUDA)",
    )
    parser.add_argument("--sets", default="resnet18,mlp,transformer")
    parser.add_argument("--only", default=None, help="comma-separated optimizer names")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument(
        "--baseline-src",
        default=None,
        help="the src/ folder of another ecdopt checkout: its BBI and ECDSep are timed too "
        "(names ending in @baseline), for a before/after comparison in one run",
    )
    args = parser.parse_args()
    global BASELINE
    if args.baseline_src:
        BASELINE = load_baseline(args.baseline_src)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    clock_name = args.clock or ("wall" if device.type == "cuda" else "process")
    if clock_name == "process" and device.type == "cuda":
        parser.error("--clock process cannot time a CUDA device (use --clock wall)")
    clock = time.process_time if clock_name == "process" else time.perf_counter
    sets = {"resnet18": resnet18_shapes(), "mlp": mlp_shapes(), "transformer": transformer_shapes()}
    results = {
        "device": str(device),
        "machine": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {args.threads} threads",
        "torch": torch.__version__,
        "clock": clock_name,
        "sets": {},
    }
    for name in args.sets.split(","):
        if name == "transformer" and device.type != "cuda":
            continue
        steps = args.steps if name != "mlp" else args.steps * 20
        print(f"{name}: timing {steps} steps x {args.rounds} rounds ...", flush=True)
        only = set(args.only.split(",")) if args.only else None
        results["sets"][name] = bench_set(name, sets[name], device, args.rounds, steps, only, clock)

    header = f"{'set':<12}{'optimizer':<20}{'median ms':>11}{'x SGD-foreach':>15}"
    if device.type == "cuda":
        header += f"{'syncs/step':>12}{'extra MB':>10}"
    print(header)
    for name, res in results["sets"].items():
        for opt_name, row in res["optimizers"].items():
            line = f"{name:<12}{opt_name:<20}{row['median_ms']:>11.3f}"
            line += f"{row['ratio_to_sgd_foreach']:>15.2f}"
            if device.type == "cuda":
                line += f"{row['blocking_syncs_per_step']:>12d}{row['peak_extra_memory_mb']:>10.1f}"
            print(line)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
