"""1000 two-dimensional BBI particles on Ackley: batched ensemble vs one optimizer per particle.

Runs ``--steps`` steps of the batched ensemble for ``--particles`` particles, and the same number
of steps of ``ecdopt.BBI`` for a sample of ``--sample`` particles one by one (extrapolated to all
of them), then prints the speed-up. Target: ≥ 50×.

Then the same particles with ECDSep's rotation (a direction drawn for every particle at every
step), drawn with ``rng="torch"`` (one reseeded generator per particle and step) and with
``rng="counter"`` (all particles in one vectorised call), and the speed-up of the latter.

    .venv/bin/python benchmarks/ensemble_speed.py
"""

from __future__ import annotations

import argparse
import time

import torch

from ecdopt import BBI
from ecdopt.ensemble import simulate
from ecdopt.landscapes import ackley

KW = dict(
    lr=0.01, extra_energy=2.0, loss_floor=1e-4, bounce_period=20, n_bounces=4, bounce_patience=100
)


def one_by_one(theta0: torch.Tensor, steps: int) -> float:
    """Seconds to run each particle of ``theta0`` alone with the optimizer."""
    t0 = time.perf_counter()
    for start in theta0:
        p = torch.nn.Parameter(start.clone())
        opt = BBI([p], seed=0, **KW)

        def closure(p=p, opt=opt):
            opt.zero_grad()
            loss = ackley(p)
            loss.backward()
            return loss

        for _ in range(steps):
            opt.step(closure)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--particles", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--sample", type=int, default=20, help="particles timed one by one")
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    theta0 = torch.rand(args.particles, 2, generator=gen, dtype=torch.float64) * 8 - 4
    t0 = time.perf_counter()
    simulate(ackley, theta0, args.steps, seed=0, **KW)
    batched = time.perf_counter() - t0
    single = one_by_one(theta0[: args.sample], args.steps) * args.particles / args.sample
    print(
        f"{args.particles} particles x {args.steps} steps, torch threads {torch.get_num_threads()}"
    )
    print(f"batched ensemble: {batched:8.2f} s")
    print(f"one by one (BBI): {single:8.2f} s (extrapolated from {args.sample} particles)")
    print(f"speed-up: {single / batched:.0f}x (target >= 50x)")
    rotation = {"hamiltonian": "separable", "lr": 0.01, "extra_energy": 1.0, "chaos": 0.01,
                "bounce_period": None, "bounce_patience": None, "seed": 0}  # fmt: skip
    seconds = {}
    for rng in ("torch", "counter"):
        t0 = time.perf_counter()
        simulate(ackley, theta0, args.steps, rng=rng, **rotation)
        seconds[rng] = time.perf_counter() - t0
    print(
        f"ECDSep ensemble (rotation every step): rng='torch' {seconds['torch']:.2f} s, "
        f"rng='counter' {seconds['counter']:.2f} s, speed-up "
        f"{seconds['torch'] / seconds['counter']:.1f}x"
    )


if __name__ == "__main__":
    main()
