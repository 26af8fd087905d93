"""Slow, literal ECD in the paper's notation: the oracle the fast optimizer is tested against.

:func:`algorithm1` is Algorithm 1 (BBI) written as the paper prints it — a ``while`` loop in which
a bounce spends a whole iteration without moving Θ — generalised by the design table to the other
Hamiltonians (mass 1/V, eqs. 34-36; separable ECDSep with its rotation). It recomputes everything
from scratch every iteration, keeps Θ and Π as lists of tensors (one per parameter, grouped as the
optimizer's param groups), and shares no code with the optimizer except the draw of random
directions, so that both can use the same ξ.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .chaos import STREAM_BOUNCE, STREAM_INITIAL, STREAM_ROTATION, draw_direction, keyed_seed

__all__ = ["ReferenceResult", "algorithm1"]


@dataclass
class ReferenceResult:
    """What :func:`algorithm1` returns."""

    thetas: list[list[Tensor]] = field(default_factory=list)  # Θ after each update
    potentials: list[float] = field(default_factory=list)  # V used by each update
    momentum_sq: list[float] = field(default_factory=list)  # Π² after each update
    energy: float = math.nan
    iterations: int = 0  # loop iterations, bounces included
    bounces: int = 0
    gradient_evaluations: int = 0


def _dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> float:
    return sum(float((x.double() * y.double()).sum()) for x, y in zip(a, b, strict=True))


def algorithm1(
    loss_fn: Callable[[list[Tensor]], Tensor],
    groups: Sequence[dict],
    updates: int,
    *,
    hamiltonian: str = "born_infeld",
    delta_V: float = 0.0,
    delta_E: float = 0.0,
    T0: int | None = None,
    N_b: int = 0,
    T1: int | None = None,
    eta: float = 1.0,
    nu: float = 0.0,
    s: float = 1.0,
    consEn: bool = True,
    eps1: float = 1e-10,
    eps2: float = 1e-40,
    seed: int = 0,
    bounce_direction: str = "gaussian",
) -> ReferenceResult:
    """Run Algorithm 1 until ``updates`` updates of Θ (or V ≤ ε2).

    ``groups``: list of ``{"params": [tensors], "lr": Δt, "weight_decay": λ}``; the tensors are
    cloned, never modified. ``loss_fn(flat list of tensors) -> F``. The potential is
    V = (F + Σ ½λ|Θ|² − ΔV)**η. Fixed bounces: c0 = T0 while n_b < N_b (Algorithm 1 read
    literally would bounce once even with N_b = 0; the library takes N_b = 0 as "no fixed bounce").
    """
    theta = [[p.detach().clone() for p in g["params"]] for g in groups]
    lrs = [float(g["lr"]) for g in groups]
    lams = [float(g.get("weight_decay", 0.0)) for g in groups]
    device = theta[0][0].device
    result = ReferenceResult()

    def xi_for(like: list[Tensor], stream: int, kind: str) -> list[Tensor]:
        """ξ of the update about to happen (index len(thetas)), keyed as the optimizer keys it."""
        gen = torch.Generator(device=device)
        gen.manual_seed(keyed_seed(seed, len(result.thetas), stream))
        return draw_direction(like, gen, kind)

    def potential_and_gradient() -> tuple[float, list[list[Tensor]]]:
        flat = [p.detach().clone().requires_grad_(True) for g in theta for p in g]
        F = loss_fn(flat)
        (grads_flat) = torch.autograd.grad(F, flat)
        F_eff = float(F.detach()) - delta_V
        k = 0
        grads = []
        for gi, g in enumerate(theta):
            row = []
            for p in g:
                F_eff += 0.5 * lams[gi] * float((p.double() ** 2).sum())
                row.append(grads_flat[k] + lams[gi] * p)
                k += 1
            grads.append(row)
        result.gradient_evaluations += 1
        if F_eff <= 0:
            return F_eff, grads
        V = F_eff**eta
        dVdF = eta * F_eff ** (eta - 1.0)
        return V, [[dVdF * x for x in row] for row in grads]

    def target_Pi2(E: float, V: float) -> float:
        if hamiltonian == "born_infeld":
            return E * E / V - V  # π_C² = V(E²/V² − 1)
        if hamiltonian == "inverse_mass":
            return 2.0 * E / V
        return math.exp(E) / V - s

    def K(E: float, V: float) -> float:
        if hamiltonian == "born_infeld":
            return 0.5 * (V / E + E / V)
        if hamiltonian == "inverse_mass":
            return E / V
        return 1.0 / V

    def D(E: float, V: float, Pi2: float) -> float:
        if hamiltonian == "born_infeld":
            return V / E
        if hamiltonian == "inverse_mass":
            return V
        return 2.0 / (s + Pi2)

    # Initialisation
    c0, c1, n_b = 0, 0, 0
    V, gradV = potential_and_gradient()
    if hamiltonian == "separable":
        E = math.log(V) + math.log(s + delta_E)
    else:
        E = V + delta_E
    result.energy = E
    flat_grad = [x for row in gradV for x in row]
    norm = math.sqrt(_dot(flat_grad, flat_grad))
    Pi_norm = math.sqrt(max(target_Pi2(E, V), 0.0))
    if norm > 0:
        Pi = [[-x / norm * Pi_norm for x in row] for row in gradV]
    else:
        xi = xi_for([x for row in gradV for x in row], STREAM_INITIAL, "gaussian")
        xi_norm = math.sqrt(_dot(xi, xi))
        it = iter(xi)
        Pi = [[next(it) / xi_norm * Pi_norm for _ in row] for row in gradV]
    V_min = math.inf

    while V > eps2 and len(result.thetas) < updates:
        result.iterations += 1
        fixed_due = T0 is not None and c0 == T0 and n_b < N_b
        progress_due = T1 is not None and c1 == T1
        if not fixed_due and not progress_due:
            flat_Pi = [x for row in Pi for x in row]
            Pi2 = _dot(flat_Pi, flat_Pi)
            if consEn:
                pi_C2 = target_Pi2(E, V)
                if abs(Pi2 - pi_C2) < eps1 or pi_C2 < 0 or Pi2 == 0:
                    alpha = 1.0
                else:
                    alpha = math.sqrt(pi_C2 / Pi2)
                Pi = [[alpha * x for x in row] for row in Pi]
            Pi = [
                [x - lrs[gi] * K(E, V) * gv for x, gv in zip(row, gradV[gi], strict=True)]
                for gi, row in enumerate(Pi)
            ]
            flat_Pi = [x for row in Pi for x in row]
            Pi2_new = _dot(flat_Pi, flat_Pi)
            theta = [
                [t + lrs[gi] * D(E, V, Pi2_new) * x for t, x in zip(g, Pi[gi], strict=True)]
                for gi, g in enumerate(theta)
            ]
            if nu > 0:  # ECDSep rotation: Π ← |Π| u/|u|, u = Π/|Π| + ν ξ
                xi = xi_for(flat_Pi, STREAM_ROTATION, "gaussian")
                Pi_norm = math.sqrt(Pi2_new)
                u = [x / Pi_norm + nu * z for x, z in zip(flat_Pi, xi, strict=True)]
                u_norm = math.sqrt(_dot(u, u))
                it = iter(u)
                Pi = [[next(it) * Pi_norm / u_norm for _ in row] for row in Pi]
            c0 += 1
            c1 += 1
            if V < V_min:  # new minimum
                V_min = V
                c1 = 0
            result.potentials.append(V)
            result.momentum_sq.append(Pi2_new)
            result.thetas.append([t.clone() for g in theta for t in g])
            V, gradV = potential_and_gradient()
        else:
            flat_Pi = [x for row in Pi for x in row]
            Pi_N = xi_for(flat_Pi, STREAM_BOUNCE, bounce_direction)
            scale = math.sqrt(_dot(flat_Pi, flat_Pi) / _dot(Pi_N, Pi_N))
            it = iter(Pi_N)
            Pi = [[next(it) * scale for _ in row] for row in Pi]
            if fixed_due:
                n_b += 1
                c0 = 0 if n_b < N_b else c0 + 1
            c1 = 0
            result.bounces += 1
    return result
