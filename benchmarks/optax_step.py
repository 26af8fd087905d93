"""Cost of one jitted ``ecdopt.optax`` step against ``optax.sgd(momentum=0.9)``, side by side.

The parameter sets of ``step_cost.py`` (a CIFAR ResNet-18: 11.2M params in 62 arrays; a 100k
MLP in 6 arrays), float32, with preset gradients. Each transformation's step is
``tx.update`` + ``optax.apply_updates`` under ``jax.jit`` with the params and state donated (the
usual training-step shape); steps are timed in alternating rounds (so drift in the machine's
speed hits every transformation alike) and the medians are compared with SGD's.

    python benchmarks/optax_step.py [--rounds 9] [--steps 10] [--sets resnet18,mlp] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from step_cost import mlp_shapes, resnet18_shapes

import ecdopt.optax as ecd_optax

BBI_OPTIONS = {"bounce_period": 100, "n_bounces": 5, "bounce_patience": 200}  # as step_cost.py


def transformations() -> dict[str, optax.GradientTransformationExtraArgs]:
    return {
        "sgd_momentum": optax.sgd(1e-3, momentum=0.9),
        "bbi": ecd_optax.bbi(1e-3, **BBI_OPTIONS),
        "bbi_no_bounces": ecd_optax.bbi(1e-3, bounce_period=None, bounce_patience=None),
        "ecdsep": ecd_optax.ecdsep(1e-3),
        "unit_speed": ecd_optax.unit_speed(1e-3),
    }


def make_set(shapes: list[tuple[int, ...]], seed: int = 0) -> tuple[list, list]:
    rng = np.random.default_rng(seed)
    params = [jnp.asarray(rng.standard_normal(s, dtype=np.float32) * 0.05) for s in shapes]
    grads = [jnp.asarray(rng.standard_normal(s, dtype=np.float32) * 1e-3) for s in shapes]
    return params, grads


def stepper(tx: optax.GradientTransformation) -> Callable:
    def step(params, state, grads, value):
        updates, state = tx.update(grads, state, params, value=value)
        return optax.apply_updates(params, updates), state

    return jax.jit(step, donate_argnums=(0, 1))


def bench_set(shapes, rounds: int, steps: int) -> dict:
    _, grads = make_set(shapes)
    # a slowly decreasing loss, as in training (new minima now and then)
    values = [jnp.float32(10.0 - 1e-4 * i) for i in range(steps)]
    runs = {}
    for name, tx in transformations().items():
        params, _ = make_set(shapes)
        run = {"step": stepper(tx), "params": params, "state": tx.init(params), "times": []}
        for i in range(3):  # compile, first-step initialisation
            run["params"], run["state"] = run["step"](run["params"], run["state"], grads, values[i])
        jax.block_until_ready(run["params"])
        runs[name] = run
    for _ in range(rounds):
        for run in runs.values():
            t0 = time.perf_counter()
            for i in range(steps):
                run["params"], run["state"] = run["step"](
                    run["params"], run["state"], grads, values[i]
                )
            jax.block_until_ready((run["params"], run["state"]))
            run["times"].append((time.perf_counter() - t0) / steps)
    base = statistics.median(runs["sgd_momentum"]["times"])
    out = {"params": sum(int(np.prod(s)) for s in shapes), "arrays": len(shapes), "steps": {}}
    for name, run in runs.items():
        median = statistics.median(run["times"])
        out["steps"][name] = {"median_ms": median * 1e3, "ratio_to_sgd_momentum": median / base}
        if name != "sgd_momentum":
            out["steps"][name]["skipped"] = int(ecd_optax.diagnostics(run["state"])["skipped"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed round")
    parser.add_argument("--sets", default="resnet18,mlp")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    sets = {"resnet18": resnet18_shapes(), "mlp": mlp_shapes()}
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "jax": jax.__version__,
        "optax": optax.__version__,
        "backend": jax.default_backend(),
        "sets": {},
    }
    for name in args.sets.split(","):
        steps = args.steps if name != "mlp" else args.steps * 20
        print(f"{name}: timing {steps} steps x {args.rounds} rounds ...", flush=True)
        results["sets"][name] = bench_set(sets[name], args.rounds, steps)
    print(f"{'set':<12}{'transformation':<18}{'median ms':>11}{'x SGD(momentum)':>17}")
    for name, res in results["sets"].items():
        for tx_name, row in res["steps"].items():
            line = f"{name:<12}{tx_name:<18}{row['median_ms']:>11.3f}"
            print(line + f"{row['ratio_to_sgd_momentum']:>17.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
