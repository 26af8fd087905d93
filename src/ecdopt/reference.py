"""Slow, literal ECD in the paper's notation: the oracle the fast optimizer is tested against.

:func:`algorithm1` is Algorithm 1 (BBI) written as the paper prints it — a ``while`` loop in which
a bounce spends a whole iteration without moving Θ — generalised to the other Hamiltonians (mass
1/V, eqs. 34-36; separable ECDSep with its rotation; unit-speed ECD). Nothing is rescaled off the
energy shell (it is the ``off_shell="exact"`` dynamics). It recomputes everything from scratch
every iteration, keeps Θ and Π as lists of tensors (one per parameter, grouped as the optimizer's
param groups), and shares no code with the optimizer except the draw of random directions, so
that both can use the same ξ.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .chaos import STREAM_BOUNCE, STREAM_INITIAL, STREAM_ROTATION, draw_direction, keyed_seed

__all__ = ["ReferenceResult", "algorithm1"]

Rows = list[list[Tensor]]  # one list of tensors per param group


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


def _flat(rows: Rows) -> list[Tensor]:
    return [x for row in rows for x in row]


def _like(rows: Rows, flat: Sequence[Tensor]) -> Rows:
    it = iter(flat)
    return [[next(it) for _ in row] for row in rows]


def _target_Pi2(h: str, E: float, V: float, s: float) -> float:
    """π_C², the Π² on the energy shell."""
    if h == "born_infeld":
        return E * E / V - V  # π_C² = V(E²/V² − 1)
    if h == "inverse_mass":
        return 2.0 * E / V
    if h == "separable":
        return math.exp(E) / V - s
    return 1.0  # unit speed


def _K(h: str, E: float, V: float) -> float:
    if h == "born_infeld":
        return 0.5 * (V / E + E / V)
    if h == "inverse_mass":
        return E / V
    return 1.0 / V  # separable


def _D(h: str, E: float, V: float, Pi2: float, s: float) -> float:
    if h == "born_infeld":
        return V / E
    if h == "inverse_mass":
        return V
    return 2.0 / (s + Pi2)  # separable


class _Literal:
    """The state of one literal run: Θ, Π, and the settings of :func:`algorithm1`."""

    def __init__(self, loss_fn, groups, options: dict) -> None:
        self.loss_fn, self.o = loss_fn, options
        self.theta: Rows = [[p.detach().clone() for p in g["params"]] for g in groups]
        self.lrs = [float(g["lr"]) for g in groups]
        self.lams = [float(g.get("weight_decay", 0.0)) for g in groups]
        self.result = ReferenceResult()
        self.Pi: Rows = []

    def xi(self, like: list[Tensor], stream: int, kind: str) -> list[Tensor]:
        """ξ of the update about to happen (index len(thetas)), keyed as the optimizer keys it."""
        gen = torch.Generator(device=like[0].device)
        gen.manual_seed(keyed_seed(self.o["seed"], len(self.result.thetas), stream))
        return draw_direction(like, gen, kind)

    def potential_and_gradient(self) -> tuple[float, Rows]:
        """V = (F + Σ½λ|Θ|² − ΔV)**η and ∇V (unit speed: V = F_eff and G = ∇F_eff)."""
        flat = [p.detach().clone().requires_grad_(True) for p in _flat(self.theta)]
        F = self.loss_fn(flat)
        grads_flat = iter(torch.autograd.grad(F, flat))
        F_eff = float(F.detach()) - self.o["delta_V"]
        grads = []
        for gi, g in enumerate(self.theta):
            F_eff += sum(0.5 * self.lams[gi] * float((p.double() ** 2).sum()) for p in g)
            grads.append([next(grads_flat) + self.lams[gi] * p for p in g])
        self.result.gradient_evaluations += 1
        eta = self.o["eta"]
        if F_eff <= 0 or self.o["hamiltonian"] == "unit_speed":
            return F_eff, grads
        return F_eff**eta, [[eta * F_eff ** (eta - 1.0) * x for x in row] for row in grads]

    def initialize(self, V: float, gradV: Rows) -> float:
        """E (eq. 13) and Π = −∇V/|∇V|·π_C (eq. 14; a zero gradient: a random direction)."""
        o, h = self.o, self.o["hamiltonian"]
        E = {"separable": math.log(V) + math.log(o["s"] + o["delta_E"]), "unit_speed": 1.0}.get(
            h, V + o["delta_E"]
        )
        Pi_norm = math.sqrt(max(_target_Pi2(h, E, V, o["s"]), 0.0))
        norm = math.sqrt(_dot(_flat(gradV), _flat(gradV)))
        if norm > 0:
            self.Pi = [[-x / norm * Pi_norm for x in row] for row in gradV]
        else:
            xi = self.xi(_flat(gradV), STREAM_INITIAL, "gaussian")
            self.Pi = _like(gradV, [x / math.sqrt(_dot(xi, xi)) * Pi_norm for x in xi])
        return E

    def update(self, E: float, V: float, gradV: Rows) -> float:
        """Restoration, kick, drift and rotation (Algorithm 1's if branch); returns Π²."""
        o, h = self.o, self.o["hamiltonian"]
        Pi2 = _dot(_flat(self.Pi), _flat(self.Pi))
        if o["consEn"]:
            pi_C2 = _target_Pi2(h, E, V, o["s"])
            skip = abs(Pi2 - pi_C2) < o["eps1"] or pi_C2 < 0 or Pi2 == 0
            alpha = 1.0 if skip else math.sqrt(pi_C2 / Pi2)
            self.Pi = [[alpha * x for x in row] for row in self.Pi]
        self.Pi = [
            [x - self.lrs[gi] * _K(h, E, V) * gv for x, gv in zip(row, gradV[gi], strict=True)]
            for gi, row in enumerate(self.Pi)
        ]
        Pi2_new = _dot(_flat(self.Pi), _flat(self.Pi))
        D = _D(h, E, V, Pi2_new, o["s"])
        self.theta = [
            [t + self.lrs[gi] * D * x for t, x in zip(g, self.Pi[gi], strict=True)]
            for gi, g in enumerate(self.theta)
        ]
        if o["nu"] > 0:  # ECDSep rotation: Π ← |Π| u/|u|, u = Π/|Π| + ν ξ
            self.rotate(o["nu"], math.sqrt(Pi2_new))
        return Pi2_new

    def rotate(self, nu: float, norm: float) -> None:
        flat = _flat(self.Pi)
        xi = self.xi(flat, STREAM_ROTATION, "gaussian")
        u = [x / norm + nu * z for x, z in zip(flat, xi, strict=True)]
        u_norm = math.sqrt(_dot(u, u))
        self.Pi = _like(self.Pi, [x * norm / u_norm for x in u])

    def unit_speed_update(self, F_eff: float, G: Rows) -> float:
        """Unit-speed ECD literally (h = Δt/√η, ν' = ν/√d): restore p ← p/|p| (unless
        |1 − |p|²| < ε1); kick p ← p − h·ηd/(2(d−1)F_eff)·(G − p (p·G)); drift Θ ← Θ + h·p;
        rotation p ← |p|·w/|w|, w = p/|p| + ν'ξ. Returns |p|² after the kick."""
        o, eta = self.o, self.o["eta"]
        d = sum(t.numel() for t in _flat(self.theta))
        p2 = _dot(_flat(self.Pi), _flat(self.Pi))
        if o["consEn"] and not (abs(1.0 - p2) < o["eps1"] or p2 == 0):
            self.Pi = [[x / math.sqrt(p2) for x in row] for row in self.Pi]
        p_dot_G = _dot(_flat(self.Pi), _flat(G))
        hs = [lr / math.sqrt(eta) for lr in self.lrs]
        self.Pi = [
            [
                x - hs[gi] * eta * d / (2 * (d - 1) * F_eff) * (gx - x * p_dot_G)
                for x, gx in zip(row, G[gi], strict=True)
            ]
            for gi, row in enumerate(self.Pi)
        ]
        self.theta = [
            [t + hs[gi] * x for t, x in zip(g, self.Pi[gi], strict=True)]
            for gi, g in enumerate(self.theta)
        ]
        p2 = _dot(_flat(self.Pi), _flat(self.Pi))
        if o["nu"] > 0:
            self.rotate(o["nu"] / math.sqrt(d), math.sqrt(p2))
        return p2

    def bounce(self) -> None:
        """Π ← |Π|·ξ/|ξ| (Algorithm 1's else branch)."""
        flat = _flat(self.Pi)
        Pi_N = self.xi(flat, STREAM_BOUNCE, self.o["bounce_direction"])
        scale = math.sqrt(_dot(flat, flat) / _dot(Pi_N, Pi_N))
        self.Pi = _like(self.Pi, [x * scale for x in Pi_N])


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
    options = {
        "hamiltonian": hamiltonian,
        "delta_V": delta_V,
        "delta_E": delta_E,
        "eta": eta,
        "nu": nu,
        "s": s,
        "consEn": consEn,
        "eps1": eps1,
        "seed": seed,
        "bounce_direction": bounce_direction,
    }
    run = _Literal(loss_fn, groups, options)
    result = run.result
    V, gradV = run.potential_and_gradient()
    E = result.energy = run.initialize(V, gradV)
    c0, c1, n_b, V_min = 0, 0, 0, math.inf
    while V > eps2 and len(result.thetas) < updates:
        result.iterations += 1
        fixed_due = T0 is not None and c0 == T0 and n_b < N_b
        progress_due = T1 is not None and c1 == T1
        if not fixed_due and not progress_due:
            if hamiltonian == "unit_speed":
                Pi2 = run.unit_speed_update(V, gradV)
            else:
                Pi2 = run.update(E, V, gradV)
            c0, c1 = c0 + 1, c1 + 1
            if V < V_min:  # new minimum
                V_min, c1 = V, 0
            result.potentials.append(V)
            result.momentum_sq.append(Pi2)
            result.thetas.append([t.clone() for t in _flat(run.theta)])
            V, gradV = run.potential_and_gradient()
        else:
            run.bounce()
            if fixed_due:
                n_b += 1
                c0 = 0 if n_b < N_b else c0 + 1
            c1 = 0
            result.bounces += 1
    return result
