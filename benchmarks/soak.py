"""Long float64 soak of an ECD optimizer: energy error, finiteness and descent over many steps.

Runs ``--steps`` steps (default 1e6) of BBI (or ECDSep) on a float64 problem with bounces and
records, every step, from the public ``diagnostics()``:

- the *discrete energy error* before restoration, |H(V_{t+1}, Π²_t) − E| / E: how far one
  symplectic-Euler step moves the particle off its energy shell (what the restoration removes);
- the *energy after restoration*, |H(V_{t+1}, α²·Π²_t) − E| / E, which must stay at rounding
  level (the invariant the optimizer promises; skipped steps, where |Π² − Π²_target| < ε1 and
  α = 1, are excluded);
- whether every parameter, Π, E, V stayed finite;
- the loss at log-spaced milestones (does the particle keep descending?).

Not a unit test: it takes minutes. Example (the figures in docs/reliability.md)::

    nohup .venv/bin/python benchmarks/soak.py --steps 1000000 --json soak.json > soak.log &

Problems: ``rosenbrock`` (an n-dimensional Rosenbrock valley from ``(-1.2, 1, ...)``) or
``regression`` (a small tanh MLP fitting a smooth target: several param tensors).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ecdopt import BBI, ECDSep
from ecdopt.hamiltonians import get_hamiltonian

F64 = torch.float64


def make_problem(name: str, dim: int, seed: int) -> tuple[list[torch.Tensor], Callable[[], Any]]:
    """(parameters, loss function) of the soak problem, in float64."""
    gen = torch.Generator().manual_seed(seed)
    if name == "rosenbrock":
        start = torch.ones(dim, dtype=F64)
        start[0::2] = -1.2
        theta = nn.Parameter(start)

        def loss_fn() -> torch.Tensor:
            x, y = theta[:-1], theta[1:]
            return (100.0 * (y - x * x) ** 2 + (1.0 - x) ** 2).sum()

        return [theta], loss_fn
    if name == "regression":
        x = torch.rand(64, 2, generator=gen, dtype=F64) * 4 - 2
        y = torch.sin(x[:, :1]) * torch.cos(x[:, 1:])
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(2, dim), nn.Tanh(), nn.Linear(dim, 1)).to(F64)

        def loss_fn() -> torch.Tensor:
            return ((model(x) - y) ** 2).mean()

        return list(model.parameters()), loss_fn
    raise ValueError(f"unknown problem {name!r}")


def soak(
    *,
    problem: str = "rosenbrock",
    steps: int = 1_000_000,
    dim: int = 4,
    optimizer: str = "bbi",
    lr: float = 1e-3,
    extra_energy: float = 0.0,
    bounce_period: int = 1000,
    n_bounces: int = 100,
    bounce_patience: int = 3000,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the soak; returns the figures (see the module docstring)."""
    torch.set_num_threads(1)
    params, loss_fn = make_problem(problem, dim, seed)
    if optimizer == "bbi":
        opt = BBI(
            params,
            lr=lr,
            extra_energy=extra_energy,
            bounce_period=bounce_period,
            n_bounces=n_bounces,
            bounce_patience=bounce_patience,
            seed=seed,
        )
        ham = get_hamiltonian("born_infeld")
    elif optimizer == "ecdsep":
        opt = ECDSep(params, lr=lr, extra_energy=extra_energy, chaos=1e-3, seed=seed)
        ham = get_hamiltonian("separable")
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}")

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=False)
        loss = loss_fn()
        loss.backward()
        return loss

    milestones = sorted({round(10**k) for k in [i / 4 for i in range(0, 29)]} | {steps})
    milestones = [m for m in milestones if m <= steps]
    curve: list[tuple[int, float, float]] = []
    max_err = max_restored = 0.0
    sum_err = 0.0
    n_err = 0
    finite = True
    best = math.inf
    prev_pi2: float | None = None
    first_loss = math.nan
    tic = time.perf_counter()
    next_report = tic + 30.0
    for t in range(1, steps + 1):
        loss = float(opt.step(closure).detach())
        if t == 1:
            first_loss = loss
        best = min(best, loss)
        d = opt.diagnostics()
        energy, potential = d["energy"], d["potential"]
        if prev_pi2 is not None and potential > 0:
            err = abs(float(ham.energy(potential, prev_pi2)) - energy) / energy
            max_err = max(max_err, err)
            sum_err += err
            n_err += 1
            if d["rescale"] != 1.0:
                restored = float(ham.energy(potential, d["rescale"] ** 2 * prev_pi2))
                max_restored = max(max_restored, abs(restored - energy) / energy)
        prev_pi2 = d["momentum_sq"]
        if t in milestones:
            values = [energy, potential, prev_pi2, *(float(p.detach().abs().max()) for p in params)]
            momenta = [opt.state[p]["momentum"] for p in params]
            values += [float(m.abs().max()) for m in momenta]
            finite = finite and all(math.isfinite(v) for v in values)
            curve.append((t, loss, best))
        if progress and time.perf_counter() > next_report:
            rate = t / (time.perf_counter() - tic)
            print(
                f"step {t}/{steps} loss {loss:.3e} best {best:.3e} "
                f"max energy err {max_err:.2e} ({rate:.0f} steps/s)",
                file=sys.stderr,
                flush=True,
            )
            next_report = time.perf_counter() + 30.0
    diag = opt.diagnostics()
    return {
        "problem": problem,
        "dim": dim,
        "optimizer": optimizer,
        "steps": steps,
        "lr": lr,
        "extra_energy": extra_energy,
        "bounce_period": bounce_period,
        "n_bounces": n_bounces,
        "bounce_patience": bounce_patience,
        "seed": seed,
        "first_loss": first_loss,
        "final_loss": float(loss_fn().detach()),
        "best_loss": best,
        "bounces": diag["bounces"],
        "skipped": diag["skipped"],
        "all_finite": finite,
        "max_rel_energy_error_per_step": max_err,
        "mean_rel_energy_error_per_step": sum_err / max(n_err, 1),
        "max_rel_energy_error_after_restoration": max_restored,
        "wall_s": time.perf_counter() - tic,
        "curve": curve,
    }


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; prints a summary and optionally writes JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--problem", default="rosenbrock", choices=("rosenbrock", "regression"))
    p.add_argument("--steps", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=4)
    p.add_argument("--optimizer", default="bbi", choices=("bbi", "ecdsep"))
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--extra-energy", type=float, default=0.0)
    p.add_argument("--bounce-period", type=int, default=1000)
    p.add_argument("--n-bounces", type=int, default=100)
    p.add_argument("--bounce-patience", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    out = soak(
        problem=a.problem,
        steps=a.steps,
        dim=a.dim,
        optimizer=a.optimizer,
        lr=a.lr,
        extra_energy=a.extra_energy,
        bounce_period=a.bounce_period,
        n_bounces=a.n_bounces,
        bounce_patience=a.bounce_patience,
        seed=a.seed,
        progress=not a.quiet,
    )
    for key, value in out.items():
        if key != "curve":
            print(f"{key}: {value}")
    print("step, loss, best loss:")
    for t, loss, best in out["curve"]:
        print(f"  {t:>9d}  {loss:.6e}  {best:.6e}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0 if out["all_finite"] else 1


if __name__ == "__main__":
    sys.exit(main())
