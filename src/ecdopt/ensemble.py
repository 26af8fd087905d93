"""Many independent particles at once: batched ECD (and GDM/Adam baselines) on a landscape.

An ensemble is M particles Θ_m ∈ ℝⁿ, held as one ``[M, n]`` tensor, each with its own energy E,
momentum Π, bounce counters (c0, c1, n_b) and best V. One call of ``potential`` (``[M, n] → [M]``)
and one backward pass give every particle's loss F and gradient ∇F, and each step of the update
(design.md §1, the paper's Algorithm 1 with eqs. 11-14) is a handful of elementwise tensor
operations. Particle m follows exactly the trajectory the single-particle optimizer
(:class:`ecdopt.ECD`) would give it from Θ_m (up to the random bounce directions, which come from
one shared generator).

Per-particle hyperparameters (``lr`` = Δt, ``loss_floor`` = ΔV, ``extra_energy`` = δE,
``loss_power`` = η, ``chaos`` = ν) may be ``[M]`` tensors: one Optuna trial per particle.

:func:`simulate_sgd` and :func:`simulate_adam` are the batched baselines with the semantics of
``torch.optim.SGD`` (momentum, dampening, Nesterov, weight decay) and ``torch.optim.Adam``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ecdopt.chaos import (
    BOUNCE_DIRECTIONS,
    bounce_due,
    counters_after_bounce,
    counters_after_update,
)
from ecdopt.hamiltonians import adapted_floor, get_hamiltonian, restoration_factor

__all__ = [
    "EnsembleResult",
    "simulate",
    "simulate_adam",
    "simulate_sgd",
    "value_and_grad",
]

Potential = Callable[[Tensor], Tensor]
#: ``callback(step, theta, value)`` may return a ``[M]`` bool tensor: particles to freeze there.
Callback = Callable[[int, Tensor, Tensor], Tensor | None]
Scalar = float | Tensor


@dataclass
class EnsembleResult:
    """What an ensemble run returns (all tensors have the particle dimension M first).

    ``steps_to_target[m]`` is the number of updates particle m had made when it first stood at a
    point with F < ``target`` (−1: never, or no target given). ``done[m]`` says whether it was
    frozen (target reached with ``stop_at_target``, or frozen by the callback); ``stopped[m]``
    whether its dynamics halted by itself (ECD: V ≤ ε2). ``history_*`` hold Θ and F every
    ``record_every`` steps (``history_steps`` says which).
    """

    theta: Tensor
    value: Tensor
    best_theta: Tensor
    best_value: Tensor
    steps_to_target: Tensor
    done: Tensor
    stopped: Tensor
    steps: int
    history_theta: Tensor | None = None
    history_value: Tensor | None = None
    history_steps: Tensor | None = None
    energy: Tensor | None = None
    bounces: Tensor | None = None


def value_and_grad(potential: Potential, theta: Tensor) -> tuple[Tensor, Tensor]:
    """F(Θ_m) and ∇F(Θ_m) for every particle, with one backward pass over Σ_m F(Θ_m)."""
    with torch.enable_grad():
        x = theta.detach().requires_grad_(True)
        f = potential(x)
        (g,) = torch.autograd.grad(f.sum(), x)
    return f.detach(), g


def _per_particle(x: Scalar, m: int, like: Tensor) -> Tensor:
    """A hyperparameter as an ``[M]`` tensor of ``like``'s dtype and device."""
    t = torch.as_tensor(x, dtype=like.dtype, device=like.device)
    if t.dim() > 1 or (t.dim() == 1 and t.numel() not in (1, m)):
        raise ValueError(f"a per-particle hyperparameter must be a scalar or have shape [{m}]")
    return t.expand(m).clone() if t.dim() == 0 or t.numel() == 1 else t.clone()


def _norm(x: Tensor) -> Tensor:
    """Row norms |x_m| of an ``[M, n]`` tensor."""
    return torch.linalg.vector_norm(x, dim=-1)


class _ECDStepper:
    """One ECD step for all particles (design.md §1): state held as ``[M]``/``[M, n]`` tensors."""

    def __init__(self, m: int, like: Tensor, generator: torch.Generator, **o) -> None:
        if o["bounce_direction"] not in BOUNCE_DIRECTIONS:
            kind = o["bounce_direction"]
            raise ValueError(f"bounce_direction must be one of {BOUNCE_DIRECTIONS}, got {kind!r}")
        self.h = get_hamiltonian(o["hamiltonian"], kinetic_offset=o["kinetic_offset"])
        self.lr = _per_particle(o["lr"], m, like)[:, None]
        self.floor = _per_particle(o["loss_floor"], m, like)
        self.extra = _per_particle(o["extra_energy"], m, like)
        power = o["loss_power"]
        self.power = (
            None if isinstance(power, int | float) and power == 1 else _per_particle(power, m, like)
        )
        chaos = o["chaos"]
        self.chaos = (
            None
            if isinstance(chaos, int | float) and chaos == 0
            else _per_particle(chaos, m, like)[:, None]
        )
        self.wd = float(o["weight_decay"])
        self.o = o
        self.gen = generator
        self.bounces_on = o["bounce_period"] is not None or o["bounce_patience"] is not None
        ints = dict(dtype=torch.int64, device=like.device)
        self.c0 = torch.zeros(m, **ints)
        self.c1 = torch.zeros(m, **ints)
        self.n_done = torch.zeros(m, **ints)
        self.n_total = torch.zeros(m, **ints)
        self.best_v = torch.full((m,), math.inf, dtype=like.dtype, device=like.device)
        self.stopped = torch.zeros(m, dtype=torch.bool, device=like.device)
        self.energy: Tensor | None = None
        self.pi: Tensor | None = None

    def _draw(self, shape: torch.Size, like: Tensor, kind: str) -> Tensor:
        if kind == "uniform":
            return torch.rand(shape, generator=self.gen, dtype=like.dtype, device=like.device) - 0.5
        return torch.randn(shape, generator=self.gen, dtype=like.dtype, device=like.device)

    def _objective(self, theta: Tensor, value: Tensor) -> Tensor:
        """F + ½λ|Θ|² (the loss the particle minimises, before the floor)."""
        if self.wd:
            return value + 0.5 * self.wd * (theta * theta).sum(dim=-1)
        return value

    def potential(self, theta: Tensor, value: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
        """V = F_eff**η and ∇V (design.md §1 steps 1-2)."""
        f_eff = value - self.floor
        g_eff = grad
        if self.wd:
            f_eff = f_eff + 0.5 * self.wd * (theta * theta).sum(dim=-1)
            g_eff = grad + self.wd * theta
        if self.power is None:
            return f_eff, g_eff
        # V = F_eff**η above the floor; below it V = F_eff ≤ 0 (the particle has stopped)
        positive = f_eff.clamp(min=torch.finfo(f_eff.dtype).tiny)
        v = torch.where(f_eff > 0, positive.pow(self.power), f_eff)
        return v, (self.power * positive.pow(self.power - 1))[:, None] * g_eff

    def step(self, theta: Tensor, value: Tensor, grad: Tensor, active: Tensor) -> Tensor:
        o, h = self.o, self.h
        finite = torch.isfinite(value) & torch.isfinite(grad).all(dim=-1)
        v, gv = self.potential(theta, value, grad)
        if o["adapt_floor"]:  # the paper's adaptive ΔV: lower F0 where V ≤ 0 (see the optimizer)
            below = (v <= 0) & finite & active
            objective = self._objective(theta, value)
            self.floor = torch.where(below, adapted_floor(objective, self.floor), self.floor)
            v, gv = self.potential(theta, value, grad)
            if self.energy is not None:  # restart at E = E(V', δE), direction kept
                self.energy = torch.where(below, h.initial_energy(v, self.extra), self.energy)
        if self.pi is None:  # first step: E (eq. 13) and Π0 along −∇V (eq. 14)
            self.energy = h.initial_energy(v, self.extra)
            gnorm = _norm(gv)[:, None]
            rand = self._draw(gv.shape, gv, "gaussian")  # a zero gradient: random direction
            rand = rand / _norm(rand)[:, None]
            direction = torch.where(gnorm > 0, -gv / torch.where(gnorm > 0, gnorm, 1.0), rand)
            speed = h.target_momentum_sq(self.energy, v).clamp(min=0).sqrt()
            self.pi = direction * speed[:, None]
        # ε2: nothing moves once V ≤ stop_tol; a NaN/inf loss or gradient skips the step
        moving = active & finite & (v > o["stop_tol"])
        self.stopped = self.stopped | (active & finite & ~moving)
        pi, e = self.pi, self.energy
        mv = moving[:, None]

        if self.bounces_on:  # Algorithm 1's bounce, done in the same step as the update
            fixed, due = bounce_due(
                self.c0,
                self.c1,
                self.n_done,
                bounce_period=o["bounce_period"],
                n_bounces=o["n_bounces"],
                bounce_patience=o["bounce_patience"],
            )
            due = due & moving
            xi = self._draw(pi.shape, pi, o["bounce_direction"])
            bounced = xi * (_norm(pi) / _norm(xi))[:, None]
            pi = torch.where(due[:, None], bounced, pi)
            c0, c1, nd = counters_after_bounce(
                self.c0, self.c1, self.n_done, fixed & due, n_bounces=o["n_bounces"]
            )
            self.c0 = torch.where(due, c0, self.c0)
            self.c1 = torch.where(due, c1, self.c1)
            self.n_done = torch.where(due, nd, self.n_done)
            self.n_total = self.n_total + due

        if o["conserve_energy"]:  # restoration α (Algorithm 1)
            alpha = restoration_factor(
                (pi * pi).sum(dim=-1), h.target_momentum_sq(e, v), o["energy_tol"]
            )
            pi = pi * alpha[:, None]
        vd = h.dynamical_potential(e, v)  # V clipped to κE far off the shell (BBI)
        pi = pi - self.lr * (h.kick_factor(e, vd) * (vd / v))[:, None] * gv  # kick, eq. 11
        drift = h.drift_factor(e, vd, (pi * pi).sum(dim=-1) if h.drift_uses_momentum_sq else None)
        new_theta = theta + self.lr * drift[:, None] * pi  # drift, eq. 12
        if self.chaos is not None:  # ECDSep rotation: Π ← |Π|·u/|u|, u = Π/|Π| + νξ
            pn = _norm(pi)[:, None]
            u = pi / torch.where(pn > 0, pn, 1.0) + self.chaos * self._draw(
                pi.shape, pi, "gaussian"
            )
            pi = torch.where(pn > 0, u * (pn / _norm(u)[:, None]), pi)

        new_min = v < self.best_v
        self.best_v = torch.where(moving & new_min, v, self.best_v)
        c0, c1 = counters_after_update(self.c0, self.c1, new_min)
        self.c0 = torch.where(moving, c0, self.c0)
        self.c1 = torch.where(moving, c1, self.c1)
        self.pi = torch.where(mv, pi, self.pi)
        return torch.where(mv, new_theta, theta)


class _SGDStepper:
    """``torch.optim.SGD`` per particle: buf ← μ·buf + (1−τ)·g (buf = g at first), Θ ← Θ − η·buf."""

    def __init__(self, m: int, like: Tensor, *, lr, momentum, dampening, nesterov, weight_decay):
        self.lr = _per_particle(lr, m, like)[:, None]
        self.mu = _per_particle(momentum, m, like)[:, None]
        self.dampening = float(dampening)
        self.nesterov = bool(nesterov)
        self.wd = float(weight_decay)
        self.buf: Tensor | None = None
        self.stopped = torch.zeros(m, dtype=torch.bool, device=like.device)

    def step(self, theta: Tensor, value: Tensor, grad: Tensor, active: Tensor) -> Tensor:
        g = grad + self.wd * theta if self.wd else grad
        if self.buf is None:
            buf = g.clone()
        else:
            buf = self.mu * self.buf + (1.0 - self.dampening) * g
        d = g + self.mu * buf if self.nesterov else buf
        d = torch.where(self.mu != 0, d, g)
        act = active[:, None]
        self.buf = buf if self.buf is None else torch.where(act, buf, self.buf)
        return torch.where(act, theta - self.lr * d, theta)


class _AdamStepper:
    """``torch.optim.Adam`` (no AMSGrad) per particle, with its own step count."""

    def __init__(self, m: int, like: Tensor, *, lr, betas, eps, weight_decay):
        self.lr = _per_particle(lr, m, like)
        self.b1, self.b2 = (float(b) for b in betas)
        self.eps = float(eps)
        self.wd = float(weight_decay)
        self.m1 = torch.zeros_like(like)
        self.m2 = torch.zeros_like(like)
        self.t = torch.zeros(m, dtype=like.dtype, device=like.device)
        self.stopped = torch.zeros(m, dtype=torch.bool, device=like.device)

    def step(self, theta: Tensor, value: Tensor, grad: Tensor, active: Tensor) -> Tensor:
        g = grad + self.wd * theta if self.wd else grad
        act = active[:, None]
        t = self.t + active
        m1 = self.m1 + (1 - self.b1) * (g - self.m1)
        m2 = self.b2 * self.m2 + (1 - self.b2) * g * g
        bc1 = 1 - self.b1**t
        bc2 = 1 - self.b2**t
        denom = m2.sqrt() / bc2.sqrt()[:, None] + self.eps
        new = theta - (self.lr / bc1)[:, None] * m1 / denom
        self.t = t
        self.m1 = torch.where(act, m1, self.m1)
        self.m2 = torch.where(act, m2, self.m2)
        return torch.where(act, new, theta)


def _drive(
    potential: Potential,
    theta0: Tensor,
    steps: int,
    stepper,
    *,
    target: float | None,
    stop_at_target: bool,
    record_every: int | None,
    callback: Callback | None,
    check_every: int = 50,
) -> EnsembleResult:
    """The loop shared by every method: evaluate, book-keep, record, step."""
    theta = theta0.detach().clone()
    m = theta.shape[0]
    best_value = torch.full((m,), math.inf, dtype=theta.dtype, device=theta.device)
    best_theta = theta.clone()
    steps_to = torch.full((m,), -1, dtype=torch.int64, device=theta.device)
    done = torch.zeros(m, dtype=torch.bool, device=theta.device)
    hist_t, hist_v, hist_k = [], [], []
    k = 0
    while True:
        if k < steps:
            value, grad = value_and_grad(potential, theta)
        else:
            with torch.no_grad():
                value, grad = potential(theta).detach(), None
        better = value < best_value
        best_value = torch.where(better, value, best_value)
        best_theta = torch.where(better[:, None], theta, best_theta)
        if target is not None:
            steps_to = torch.where((value < target) & (steps_to < 0), k, steps_to)
            if stop_at_target:
                done = done | (steps_to >= 0)
        if callback is not None:
            frozen = callback(k, theta, value)
            if frozen is not None:
                done = done | frozen
        if record_every and k % record_every == 0:
            hist_t.append(theta.clone())
            hist_v.append(value.clone())
            hist_k.append(k)
        if grad is None:
            break
        if k % check_every == 0 and bool((done | stepper.stopped).all()):
            break
        theta = stepper.step(theta, value, grad, ~done)
        k += 1
    return EnsembleResult(
        theta=theta,
        value=value,
        best_theta=best_theta,
        best_value=best_value,
        steps_to_target=steps_to,
        done=done,
        stopped=stepper.stopped.clone(),
        steps=k,
        history_theta=torch.stack(hist_t) if hist_t else None,
        history_value=torch.stack(hist_v) if hist_v else None,
        history_steps=torch.tensor(hist_k) if hist_k else None,
        energy=getattr(stepper, "energy", None),
        bounces=getattr(stepper, "n_total", None),
    )


def _check(theta0: Tensor, steps: int) -> None:
    if theta0.dim() != 2:
        raise ValueError(f"theta0 must be [M, n], got shape {tuple(theta0.shape)}")
    if steps < 0:
        raise ValueError(f"steps must be ≥ 0, got {steps}")


def simulate(
    potential: Potential,
    theta0: Tensor,
    steps: int,
    *,
    hamiltonian: str = "born_infeld",
    lr: Scalar,
    loss_floor: Scalar = 0.0,
    extra_energy: Scalar = 0.0,
    bounce_period: int | None = 1000,
    n_bounces: int = 1,
    bounce_patience: int | None = 3000,
    conserve_energy: bool = True,
    energy_tol: float = 1e-10,
    stop_tol: float = 1e-40,
    loss_power: Scalar = 1.0,
    chaos: Scalar = 0.0,
    kinetic_offset: float = 1.0,
    weight_decay: float = 0.0,
    adapt_floor: bool = False,
    bounce_direction: str = "gaussian",
    seed: int | None = None,
    generator: torch.Generator | None = None,
    target: float | None = None,
    stop_at_target: bool = False,
    record_every: int | None = None,
    callback: Callback | None = None,
) -> EnsembleResult:
    """Run ECD on M independent particles for ``steps`` steps (design.md §1, Algorithm 1).

    ``theta0`` is ``[M, n]``; ``potential`` maps ``[M, n] → [M]`` (F, before the floor ΔV).
    Arguments are the optimizer's: ``lr`` = Δt, ``loss_floor`` = ΔV (F0), ``extra_energy`` = δE,
    ``bounce_period`` = T0, ``n_bounces`` = N_b, ``bounce_patience`` = T1 (None turns that
    bounce mechanism off; defaults as :class:`ecdopt.ECD`: T0 = 1000, N_b = 1, T1 = 3000),
    ``loss_power`` = η (V = F_eff**η), ``chaos`` = ν (ECDSep rotation), ``kinetic_offset`` = s,
    ``energy_tol`` = ε1, ``stop_tol`` = ε2, ``adapt_floor`` (lower F0 where a particle
    overshoots it, as the optimizer does). ``lr``, ``loss_floor``, ``extra_energy``,
    ``loss_power`` and ``chaos`` may be ``[M]`` tensors.

    ``target``: record the first step with F < target (and with ``stop_at_target`` freeze the
    particle there). ``callback(step, theta, value)`` runs at every evaluated point and may
    return a bool ``[M]`` mask of particles to freeze. The loop ends early once every particle
    is frozen or stopped (V ≤ ε2).
    """
    _check(theta0, steps)
    if generator is None:
        generator = torch.Generator(device=theta0.device)
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
    stepper = _ECDStepper(
        theta0.shape[0],
        theta0,
        generator,
        hamiltonian=hamiltonian,
        lr=lr,
        loss_floor=loss_floor,
        extra_energy=extra_energy,
        bounce_period=bounce_period,
        n_bounces=n_bounces,
        bounce_patience=bounce_patience,
        conserve_energy=conserve_energy,
        energy_tol=energy_tol,
        stop_tol=stop_tol,
        loss_power=loss_power,
        chaos=chaos,
        kinetic_offset=kinetic_offset,
        weight_decay=weight_decay,
        adapt_floor=adapt_floor,
        bounce_direction=bounce_direction,
    )
    return _drive(
        potential,
        theta0,
        steps,
        stepper,
        target=target,
        stop_at_target=stop_at_target,
        record_every=record_every,
        callback=callback,
    )


def simulate_sgd(
    potential: Potential,
    theta0: Tensor,
    steps: int,
    *,
    lr: Scalar,
    momentum: Scalar = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    target: float | None = None,
    stop_at_target: bool = False,
    record_every: int | None = None,
    callback: Callback | None = None,
) -> EnsembleResult:
    """Gradient descent with momentum (GDM) on M particles, as ``torch.optim.SGD`` does it.

    ``lr`` and ``momentum`` (μ) may be ``[M]`` tensors. Same result type as :func:`simulate`.
    """
    _check(theta0, steps)
    stepper = _SGDStepper(
        theta0.shape[0],
        theta0,
        lr=lr,
        momentum=momentum,
        dampening=dampening,
        nesterov=nesterov,
        weight_decay=weight_decay,
    )
    return _drive(
        potential,
        theta0,
        steps,
        stepper,
        target=target,
        stop_at_target=stop_at_target,
        record_every=record_every,
        callback=callback,
    )


def simulate_adam(
    potential: Potential,
    theta0: Tensor,
    steps: int,
    *,
    lr: Scalar,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    target: float | None = None,
    stop_at_target: bool = False,
    record_every: int | None = None,
    callback: Callback | None = None,
) -> EnsembleResult:
    """Adam on M particles, as ``torch.optim.Adam`` does it; ``lr`` may be an ``[M]`` tensor."""
    _check(theta0, steps)
    stepper = _AdamStepper(
        theta0.shape[0], theta0, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay
    )
    return _drive(
        potential,
        theta0,
        steps,
        stepper,
        target=target,
        stop_at_target=stop_at_target,
        record_every=record_every,
        callback=callback,
    )
