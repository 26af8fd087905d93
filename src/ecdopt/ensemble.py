"""Many independent particles at once: batched ECD (and GDM/Adam baselines) on a landscape.

An ensemble is M particles Θ_m ∈ ℝⁿ, held as one ``[M, n]`` tensor, each with its own energy E,
momentum Π, bounce counters (c0, c1, n_b), best value and random key. One call of ``potential``
(``[M, n] → [M]``) and one backward pass give every particle's loss F and gradient ∇F; the step
(the paper's Algorithm 1, eqs. 11-14, and its family) takes its scalars from the same functions
as the optimizer (:func:`ecdopt._step.decide`, :func:`ecdopt._step.coefficients`) and its random
directions from the same keyed draws, so particle m follows exactly (to rounding) the trajectory
of ``ECD([Θ_m], ..., seed=seeds[m])`` — bounces, rotations and floor adaptation included.

Per-particle hyperparameters (``lr`` = Δt, ``loss_floor`` = ΔV, ``extra_energy`` = δE,
``loss_power`` = η, ``chaos`` = ν) may be ``[M]`` tensors: one Optuna trial per particle.

:func:`simulate_sgd` and :func:`simulate_adam` are the batched baselines with the semantics of
``torch.optim.SGD`` (momentum, dampening, Nesterov, weight decay) and ``torch.optim.Adam``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ecdopt import chaos
from ecdopt._config import ECDConfig, check_number, check_seed
from ecdopt._step import coefficients, decide, update_is_safe
from ecdopt.hamiltonians import get_hamiltonian, projected_rescale

__all__ = [
    "EnsembleResult",
    "particle_seeds",
    "simulate",
    "simulate_adam",
    "simulate_sgd",
    "value_and_grad",
]

Potential = Callable[[Tensor], Tensor]
#: ``callback(step, theta, value)`` may return a ``[M]`` bool tensor: particles to freeze there.
Callback = Callable[[int, Tensor, Tensor], Tensor | None]
Scalar = float | Tensor
STREAM_PARTICLE = 3  # the key of the per-particle seeds derived from ``seed=``


@dataclass
class EnsembleResult:
    """What an ensemble run returns (all tensors have the particle dimension M first).

    ``steps_to_target[m]`` is the number of updates particle m had made when it first stood at a
    point with F < ``target`` (−1: never, or no target given). ``done[m]`` says whether it was
    frozen (target reached with ``stop_at_target``, or frozen by the callback); ``stopped[m]``
    whether its dynamics halted by itself (ECD: V ≤ ε2). ``history_*`` hold Θ and F every
    ``record_every`` steps (``history_steps`` says which). ECD runs also report per particle
    ``energy`` E, ``bounces``, ``skipped`` steps and ``off_shell_steps`` (V > κE, BBI).
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
    skipped: Tensor | None = None
    off_shell_steps: Tensor | None = None


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


def _row_dot(a: Tensor, b: Tensor) -> Tensor:
    """Σ_j a_mj·b_mj for each row m of ``[M, n]`` tensors, as a matrix-vector product: torch's
    ``sum(-1)`` over a short last dimension costs some ten times more (16 µs against 2.6 µs for
    [1000, 2] on this project's CPU), and an ensemble step takes several such sums."""
    return torch.mv(a * b, torch.ones(a.shape[-1], dtype=a.dtype, device=a.device))


def particle_seeds(seed: int, m: int) -> list[int]:
    """The seeds of the M particles of ``simulate(..., seed=seed)``: particle i draws as
    ``ECD(..., seed=particle_seeds(seed, M)[i])`` does (a splitmix64 mix of seed and i)."""
    return [chaos.keyed_seed(seed, i, STREAM_PARTICLE) for i in range(m)]


class _ECDStepper:
    """ECD for M particles through the optimizer's own scalar functions (:func:`decide`,
    :func:`coefficients`, :func:`update_is_safe`) and keyed draws: particle i is
    ``ECD(..., seed=seeds[i])`` on a single flat parameter of n numbers."""

    def __init__(
        self, like: Tensor, config: ECDConfig, lr: Scalar, weight_decay: float, seeds: list[int]
    ) -> None:
        m = like.shape[0]
        self.cfg, self.seeds, self.wd = config, seeds, weight_decay
        per = {
            k: _per_particle(getattr(config, k), m, like)
            for k in ("loss_floor", "extra_energy", "loss_power", "chaos")
        }
        power = config.loss_power
        self.h = get_hamiltonian(
            config.hamiltonian,
            kinetic_offset=config.kinetic_offset,
            off_shell=config.off_shell,
            loss_power=per["loss_power"] if isinstance(power, Tensor) else power,
        )
        self.lr, self.floor, self.extra = (
            _per_particle(lr, m, like),
            per["loss_floor"],
            per["extra_energy"],
        )
        self.chaos = per["chaos"] * self.h.chaos_scale(like.shape[1])
        if config.rotation_every > 1:  # ν·sqrt(k) every k-th step, as the optimizer
            self.chaos = self.chaos * math.sqrt(config.rotation_every)
        self.gen = torch.Generator(device=like.device)
        floats = dict(dtype=like.dtype, device=like.device)
        ints = dict(dtype=torch.int64, device=like.device)
        self.pi = torch.zeros_like(like)
        self.energy = torch.full((m,), math.nan, **floats)
        self.momentum_sq = torch.zeros(m, **floats)
        self.best = torch.full((m,), math.inf, **floats)
        self.initialized = torch.zeros(m, dtype=torch.bool, device=like.device)
        self.stopped = torch.zeros(m, dtype=torch.bool, device=like.device)
        for name in ("c0", "c1", "n_done", "n_total", "calls", "skipped", "off_shell"):
            setattr(self, name, torch.zeros(m, **ints))

    def _draw(self, rows: Tensor, stream: int, kind: str, calls: Tensor) -> Tensor:
        return chaos.keyed_rows(
            rows,
            seeds=self.seeds,
            steps=calls,
            stream=stream,
            kind=kind,
            like=self.pi,
            generator=self.gen,
            rng=self.cfg.rng,
        )

    def _initial_momentum(self, first: Tensor, force: Tensor, target: Tensor) -> Tensor:
        """Π0 = −G/|G|·sqrt(Π²_target) (eq. 14); a zero gradient: a keyed random direction."""
        direction = -force
        zero = first & ~(_norm(force) > 0)
        if bool(zero.any()):
            xi = self._draw(zero, chaos.STREAM_INITIAL, "gaussian", torch.zeros_like(self.calls))
            direction = torch.where(zero[:, None], xi, direction)
        norm = _norm(direction)
        scale = target.clamp(min=0).sqrt() / torch.where(norm > 0, norm, 1.0)
        return direction * scale[:, None]

    def step(self, theta: Tensor, value: Tensor, grad: Tensor, active: Tensor) -> Tensor:
        cfg, h = self.cfg, self.h
        calls = self.calls.clone()
        self.calls += active
        theta_sq = _row_dot(theta, theta) if self.wd else None
        objective = value + 0.5 * self.wd * theta_sq if theta_sq is not None else value
        d = decide(
            config=cfg,
            hamiltonian=h,
            objective=objective,
            grad_sq=_row_dot(grad, grad),
            floor=self.floor,
            best=self.best,
        )
        first = active & d.moving & ~self.initialized
        if not cfg.adapt_floor and bool((first & d.below_floor).any()):
            raise ValueError(
                "a particle starts at or below loss_floor (V = F - F0 <= 0): pass a "
                "loss_floor below the loss, or adapt_floor=True"
            )
        restart = first | (d.below_floor & self.initialized) if cfg.adapt_floor else first
        energy = torch.where(restart, h.initial_energy(d.potential, self.extra), self.energy)
        force_norm = _norm(grad) if theta_sq is None else _norm(grad) + self.wd * theta_sq.sqrt()
        pi, momentum_sq = self.pi, self.momentum_sq
        if bool(first.any()):  # Π0 along −∇F for the particles that start now
            initial = self._initial_momentum(
                first, grad + self.wd * theta, h.target_momentum_sq(energy, d.potential)
            )
            pi = torch.where(first[:, None], initial, pi)
            momentum_sq = torch.where(first, _row_dot(pi, pi), momentum_sq)
        c = coefficients(
            config=cfg,
            hamiltonian=h,
            energy=energy,
            potential=d.potential,
            effective=d.effective,
            momentum_sq=momentum_sq,
            dim=theta.shape[1],
        )
        safe = update_is_safe(
            rescale=c.rescale,
            kick=c.kick,
            drift_bound=c.drift_bound,
            momentum_sq=momentum_sq,
            force_norm=force_norm,
            lr=self.lr,
            weight_decay=self.wd,
            limits=_limits(theta),
        )
        if h.projects_force:
            safe = safe & update_is_safe(
                rescale=projected_rescale(
                    c.rescale, self.lr * c.kick, momentum_sq.sqrt() * force_norm
                ),
                kick=c.kick,
                drift_bound=c.drift_bound,
                momentum_sq=momentum_sq,
                force_norm=force_norm,
                lr=self.lr,
                weight_decay=self.wd,
                limits=_limits(theta),
            )
        moving = active & d.moving & safe
        self.skipped += active & (~d.finite | (d.moving & ~safe))
        self.stopped = self.stopped | (active & d.finite & ~d.moving)
        keep = active & d.finite & (safe | ~d.moving)
        self.floor = torch.where(keep, d.floor, self.floor)
        new_theta = self._update(theta, pi, grad, energy, d, c, moving, calls)
        self.initialized = self.initialized | (first & moving)
        return new_theta

    def _bounce(self, pi: Tensor, moving: Tensor, calls: Tensor) -> Tensor:
        """Algorithm 1's bounce, in the same step as the update: Π ← |Π|·ξ/|ξ| where due."""
        cfg = self.cfg
        fixed, due = chaos.bounce_due(
            self.c0,
            self.c1,
            self.n_done,
            bounce_period=cfg.bounce_period,
            n_bounces=cfg.n_bounces,
            bounce_patience=cfg.bounce_patience,
        )
        due = due & moving
        if not bool(due.any()):
            return pi
        xi = self._draw(due, chaos.STREAM_BOUNCE, cfg.bounce_direction, calls)
        bounced = xi * (_norm(pi) / torch.where(due, _norm(xi), 1.0))[:, None]
        after = chaos.counters_after_bounce(
            self.c0, self.c1, self.n_done, fixed, n_bounces=cfg.n_bounces
        )
        self.c0, self.c1, self.n_done = (
            torch.where(due, a, b)
            for a, b in zip(after, (self.c0, self.c1, self.n_done), strict=True)
        )
        self.n_total = self.n_total + due
        return torch.where(due[:, None], bounced, pi)

    def _update(
        self,
        theta: Tensor,
        pi: Tensor,
        grad: Tensor,
        energy: Tensor,
        d,
        c,
        moving: Tensor,
        calls: Tensor,
    ) -> Tensor:
        """Bounce, kick, drift, rotation and bookkeeping (rows where ``moving``)."""
        h, mv = self.h, moving[:, None]
        if self.cfg.has_bounces:
            pi = self._bounce(pi, moving, calls)
        rescale = torch.where(moving, c.rescale, 1.0)
        kick = self.lr * torch.where(moving, c.kick, 0.0)
        if h.projects_force:  # unit speed: the kick orthogonal to Π
            dot = _row_dot(pi, grad) + self.wd * _row_dot(pi, theta)
            rescale = projected_rescale(rescale, kick, dot)
        new_pi = pi * rescale[:, None] - kick[:, None] * grad
        if self.wd:
            new_pi = new_pi - (kick * self.wd)[:, None] * theta
        momentum_sq = _row_dot(new_pi, new_pi)
        drift = c.drift if c.drift is not None else h.drift_factor(energy, d.potential, momentum_sq)
        new_theta = theta + (self.lr * torch.where(moving, drift, 0.0))[:, None] * new_pi
        if self.cfg.has_rotation:
            new_pi = self._rotate(new_pi, momentum_sq, moving, calls)
        c0, c1 = chaos.counters_after_update(self.c0, self.c1, d.new_minimum)
        self.c0, self.c1 = torch.where(moving, c0, self.c0), torch.where(moving, c1, self.c1)
        self.best = torch.where(moving, torch.minimum(self.best, d.objective), self.best)
        self.off_shell = self.off_shell + (moving & c.off_shell)
        self.energy = torch.where(moving, energy, self.energy)
        self.momentum_sq = torch.where(moving, momentum_sq, self.momentum_sq)
        self.pi = torch.where(mv, new_pi, self.pi)
        return torch.where(mv, new_theta, theta)

    def _rotate(self, pi: Tensor, momentum_sq: Tensor, moving: Tensor, calls: Tensor) -> Tensor:
        """ECDSep's rotation where due: Π ← |Π|·w/|w|, w = Π + ν|Π|ξ (= |Π|·u, u = Π/|Π| + νξ)."""
        rows = moving & (self.chaos > 0) & chaos.rotation_due(calls, self.cfg.rotation_every)
        if not bool(rows.any()):
            return pi
        xi = self._draw(rows, chaos.STREAM_ROTATION, "gaussian", calls)
        w = pi + (self.chaos * momentum_sq.sqrt())[:, None] * xi
        w_sq = _row_dot(w, w)
        rotated = w * (momentum_sq / torch.where(w_sq > 0, w_sq, 1.0)).sqrt()[:, None]
        return torch.where((rows & (w_sq > 0))[:, None], rotated, pi)


def _limits(like: Tensor) -> tuple[float, float]:
    limit = torch.finfo(like.dtype).max / 16
    return limit, limit


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
        skipped=getattr(stepper, "skipped", None),
        off_shell_steps=getattr(stepper, "off_shell", None),
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
    rotation_every: int = 1,
    kinetic_offset: float = 1.0,
    weight_decay: float = 0.0,
    adapt_floor: bool = False,
    bounce_direction: str = "gaussian",
    off_shell: str = "rescale",
    rng: str = "torch",
    seed: int | None = None,
    seeds: Sequence[int] | None = None,
    target: float | None = None,
    stop_at_target: bool = False,
    record_every: int | None = None,
    callback: Callback | None = None,
) -> EnsembleResult:
    """Run ECD on M independent particles for ``steps`` steps (the paper's Algorithm 1 and its
    family), each exactly as the optimizer would move it.

    ``theta0`` is ``[M, n]``; ``potential`` maps ``[M, n] → [M]`` (F, before the floor ΔV).
    Arguments are the optimizer's (:class:`ecdopt.ECD`, validated the same way): ``lr`` = Δt,
    ``loss_floor`` = ΔV (F0), ``extra_energy`` = δE, ``bounce_period`` = T0, ``n_bounces`` =
    N_b, ``bounce_patience`` = T1 (None turns that bounce mechanism off), ``loss_power`` = η,
    ``chaos`` = ν, ``rotation_every`` = k, ``kinetic_offset`` = s, ``energy_tol`` = ε1,
    ``stop_tol`` = ε2, ``adapt_floor``, ``bounce_direction``, ``off_shell``, ``rng``. ``lr``,
    ``loss_floor``, ``extra_energy``, ``loss_power`` and ``chaos`` may be ``[M]`` tensors (one
    Optuna trial per particle).

    Randomness: particle i follows exactly (to rounding) the trajectory of
    ``ECD([θ_i], ..., seed=seeds[i])`` with the same options — bounces, rotations and floor
    adaptation included. ``rng="counter"`` draws the directions of all particles in one
    vectorised call (much faster for rotations, which draw every step) instead of reseeding a
    generator per particle. ``seed=s`` is shorthand for ``seeds=particle_seeds(s, M)``; with
    neither, ``s`` is drawn from torch's default generator.

    ``target``: record the first step with F < target (and with ``stop_at_target`` freeze the
    particle there). ``callback(step, theta, value)`` runs at every evaluated point and may
    return a bool ``[M]`` mask of particles to freeze. The loop ends early once every particle
    is frozen or stopped (V ≤ ε2).
    """
    _check(theta0, steps)
    m = theta0.shape[0]
    config = ECDConfig.from_arguments(locals(), per_particle=True)
    check_number("lr", lr, positive=True, meaning="the time step Δt", tensor_ok=True)
    wd = check_number("weight_decay", weight_decay, minimum=0.0, meaning="λ")
    stepper = _ECDStepper(theta0, config, lr, wd, _seeds(seed, seeds, m))
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


def _seeds(seed: int | None, seeds: Sequence[int] | None, m: int) -> list[int]:
    """The M particle seeds from ``seeds=`` or ``seed=`` (see :func:`simulate`)."""
    if seeds is not None:
        if seed is not None:
            raise ValueError("pass seed= or seeds=, not both")
        seeds = [check_seed(s) for s in seeds]
        if len(seeds) != m or None in seeds:
            raise ValueError(f"seeds must be {m} ints (one per particle), got {len(seeds)}")
        return seeds
    seed = check_seed(seed)
    if seed is None:
        seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
    return particle_seeds(seed, m)


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
