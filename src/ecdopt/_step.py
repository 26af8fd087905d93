"""The ECD step as functions: :func:`host_step` and :func:`device_step`.

Both take the same keyword-only arguments (as torch's ``_single_tensor_*``/``_multi_tensor_*``):

- ``host_step``: the scalars of the step are Python floats and the decisions Python bools (the
  CPU path, and the first step on any device: reading a CPU value costs nothing);
- ``device_step``: the scalars are 0-dim tensors on the parameters' device and every decision
  is a mask (the sync-free path, the CUDA default): no value is read on the host, and the
  state's tensors are written in place, so a step captured in a CUDA graph replays.

The scalar math comes from :mod:`ecdopt.hamiltonians` through :func:`decide` and
:func:`coefficients`, which the ensemble calls too; the tensor work from :mod:`ecdopt._kernels`
and :mod:`ecdopt.chaos`. One step, in the paper's notation (Algorithm 1 for Born-Infeld):

1. F_eff = F − F0 + Σ_groups ½λ_g|Θ_g|², V = g(F_eff); skip a NaN/inf loss or gradient.
2. First step: E = E(V0, δE) and Π = −G/|G|·sqrt(Π²_target(E, V0)) (eqs. 13-14).
3. Refuse the step when the update could write a non-finite value into Π or Θ.
4. A bounce, when due (c0 = T0 or c1 = T1): Π ← |Π|·ξ/|ξ|. The update follows in the same
   step (Algorithm 1 spends an iteration on it without moving Θ; the next gradient is the same).
5. Restoration and kick Π ← α·Π − Δt·k·G, drift Θ ← Θ + Δt·D·Π (symplectic Euler).
6. Rotation (ν > 0): Π ← |Π|·u/|u|, u = Π/|Π| + ν·ξ. Counters: c0 += 1, c1 += 1 (0 on a new
   minimum of F_eff + F0). Nothing moves when V ≤ ε2 (``stop_tol``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from . import chaos
from ._config import ECDConfig
from ._kernels import (
    dot_sum,
    ecd_drift_,
    ecd_kick_,
    exact_total,
    fused_drift_,
    fused_kick_drift_,
    host_dot_sum,
    host_kick_drift_,
    host_sum_of_squares,
    host_sums_of_squares,
    sum_of_squares,
)
from ._scalar import isfinite, maximum, sqrt, where
from .hamiltonians import Hamiltonian, adapted_floor, projected_rescale, restoration_factor

__all__ = [
    "COUNTER_KEYS",
    "SCALAR_KEYS",
    "Coefficients",
    "Decision",
    "Group",
    "NonFiniteLossWarning",
    "Particle",
    "coefficients",
    "decide",
    "device_step",
    "fold_scale",
    "fresh_state",
    "host_step",
    "place_state",
    "settle",
    "update_is_safe",
]


class NonFiniteLossWarning(RuntimeWarning):
    """A step was skipped: the loss or a gradient was NaN or infinite, or the update would have
    written a non-finite value into the parameters or the momentum."""


SCALAR_KEYS = (
    "energy",
    "loss_floor",
    "best_objective",
    "potential",
    "momentum_sq",
    "rescale",
    "speed",
)
COUNTER_KEYS = ("c0", "c1", "fixed_bounces_done", "bounces", "steps", "skipped", "off_shell_steps")
#: the lazy representation of Π on the CPU host path (see :func:`host_step`): never saved
LAZY_KEYS = ("momentum_scale", "deferred", "last_drift")
#: σ is folded into the stored momentum (P ← σ·P) before it leaves this range, so that
#: P = Π/σ stays within a factor 8 of Π (the overflow guard keeps a factor 16 of headroom)
SCALE_RANGE = (0.125, 8.0)
#: particles with fewer parameters apply α as a multiply (a pass over a small particle costs
#: nothing, and its rounding is then the ensemble's and the reference's, operation for operation)
SCALE_MIN_NUMEL = 1 << 14

#: ``draw(like, stream, kind, out=None)``: the keyed ξ of this step for ``stream``.
Draw = Callable[..., list[Tensor]]


def fresh_state() -> dict[str, Any]:
    """The particle's state before the first step."""
    return {
        "initialized": False,
        "calls": 0,
        **dict.fromkeys(COUNTER_KEYS, 0),
        **dict.fromkeys(SCALAR_KEYS),
        "momentum_scale": 1.0,
        "deferred": None,
        "last_drift": None,
    }


def settle(state: dict[str, Any], momenta: list[Tensor], p_sq: float | None = None) -> None:
    """Resolve what the last lazy host step left for later, from |P|² (summed here unless
    given): Π² = σ²|P|² after a kick, or σ = sqrt(Π²/|P|²) after a rotation (which keeps Π²)."""
    deferred = state["deferred"]
    if deferred is None:
        return
    if p_sq is None:
        p_sq = host_sum_of_squares(momenta, momenta[0].device, plain=True)
    scale = state["momentum_scale"]
    if deferred == "momentum_sq":
        state["momentum_sq"] = scale * scale * p_sq
        state["speed"] = state["last_drift"] * math.sqrt(state["momentum_sq"])
    elif p_sq > 0:
        state["momentum_scale"] = math.sqrt(state["momentum_sq"] / p_sq)
    state["deferred"] = None


def fold_scale(state: dict[str, Any], momenta: list[Tensor]) -> None:
    """Make the stored momenta the true Π again (P ← σ·P, σ = 1), after :func:`settle`."""
    settle(state, momenta)
    scale = state["momentum_scale"]
    if scale != 1.0 and momenta:
        torch._foreach_mul_(momenta, scale)
    state["momentum_scale"] = 1.0


def place_state(state: dict[str, Any], device: torch.device | None) -> None:
    """Scalars as 0-dim tensors on ``device`` (the device path), or as Python numbers (None)."""
    for key in (*SCALAR_KEYS, *COUNTER_KEYS):
        value = state[key]
        if value is None:
            continue
        if device is None:
            if isinstance(value, Tensor):
                state[key] = value.item()
        elif not (isinstance(value, Tensor) and value.device == device):
            dtype = torch.float64 if key in SCALAR_KEYS else torch.int64
            state[key] = torch.as_tensor(value, dtype=dtype).to(device)


def _store(state: dict[str, Any], key: str, value: Any) -> None:
    """Set a state value; a tensor already there is written in place (CUDA-graph replay reads
    what the previous replay wrote)."""
    old = state.get(key)
    if isinstance(old, Tensor) and isinstance(value, Tensor) and old is not value:
        if old.shape == value.shape and old.dtype == value.dtype and old.device == value.device:
            old.copy_(value)
            return
    state[key] = value


@dataclass
class Group:
    """The tensors of one param group that take part in a step, and its hyperparameters."""

    lr: float | Tensor
    weight_decay: float
    foreach: bool
    params: list[Tensor]
    grads: list[Tensor]
    momenta: list[Tensor]


@dataclass
class Particle:
    """All param groups of an optimizer: one particle (the library's central choice)."""

    groups: list[Group]
    device: torch.device
    plain_cpu: bool  # every param, grad and Π a float32/float64 CPU tensor
    dim: int  # d, the number of parameters (global sizes for sharded ones)
    limits: tuple[float, float]  # the largest safe |Π| and |ΔΘ| entries
    reshaped: bool = True  # other parameters (or dtypes) than at the previous step
    streamed: bool = False  # plain CPU with a tensor of at least STREAM_MIN_NUMEL elements
    grads: list[Tensor] = field(default_factory=list)  # all groups' (filled when not given)
    momenta: list[Tensor] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.grads:
            self.grads = [g for group in self.groups for g in group.grads]
        if not self.momenta:
            self.momenta = [m for group in self.groups for m in group.momenta]


# ------------------------------------------------------------------ the scalar math (shared)
@dataclass
class Decision:
    """What a step does, from the global sums (floats and bools, or tensors and masks)."""

    objective: Any  # F + ½λ|Θ|² (the loss the particle minimises, before the floor)
    finite: Any  # the loss and every gradient are finite, and so is V
    below_floor: Any  # F_eff ≤ 0 before any floor adaptation
    floor: Any  # F0 after adaptation
    effective: Any  # F_eff
    potential: Any  # V
    moving: Any  # finite and V > ε2
    new_minimum: Any  # F + ½λ|Θ|² below the best so far


def decide(
    *,
    config: ECDConfig,
    hamiltonian: Hamiltonian,
    objective: Any,
    grad_sq: Any,
    floor: Any,
    best: Any,
) -> Decision:
    """The decisions of one step (steps 1-2 above; the paper's adaptive ΔV, §3.3)."""
    finite = isfinite(objective) & isfinite(grad_sq)
    below_floor = (objective - floor <= 0) & finite
    if config.adapt_floor:
        floor = where(below_floor, adapted_floor(objective, floor), floor)
    effective = objective - floor
    potential = hamiltonian.potential(effective)
    finite = finite & isfinite(potential)
    moving = finite & (potential > config.stop_tol)
    return Decision(
        objective, finite, below_floor, floor, effective, potential, moving, objective < best
    )


@dataclass
class Coefficients:
    """The factors of one update (before the per-group Δt)."""

    rescale: Any  # α (restoration)
    kick: Any  # k of Π ← α·Π − Δt·k·G
    drift: Any  # D of Θ ← Θ + Δt·D·Π, None when it needs Π² after the kick
    drift_bound: Any  # an upper bound of D
    off_shell: Any  # V beyond the energy shell's reach (counted)


def coefficients(
    *,
    config: ECDConfig,
    hamiltonian: Hamiltonian,
    energy: Any,
    potential: Any,
    effective: Any,
    momentum_sq: Any,
    dim: int,
) -> Coefficients:
    """α, k and D of this step from E, V, F_eff and Π² (Algorithm 1 and its generalisations)."""
    rescale = 1.0
    if config.conserve_energy:
        target = hamiltonian.target_momentum_sq(energy, potential)
        rescale = restoration_factor(momentum_sq, target, config.energy_tol)
    drift = None
    if not hamiltonian.drift_uses_momentum_sq:
        drift = hamiltonian.drift_factor(energy, potential, None)
    return Coefficients(
        rescale=rescale,
        kick=hamiltonian.force_factor(energy, potential, effective, dim),
        drift=drift,
        drift_bound=drift if drift is not None else hamiltonian.drift_bound(energy, potential),
        off_shell=hamiltonian.off_shell(energy, potential),
    )


def update_is_safe(
    *,
    rescale: Any,
    kick: Any,
    drift_bound: Any,
    momentum_sq: Any,
    force_norm: Any,
    lr: Any,
    weight_decay: float,
    limits: tuple[float, float],
) -> Any:
    """Whether restoring, kicking and drifting keep every entry of Π and of the step of Θ below
    ``limits`` (so nothing non-finite can be written). ``force_norm`` bounds |G| = |∇F + λΘ|;
    ``lr`` and ``weight_decay`` are the largest over the groups. A NaN anywhere gives False.
    """
    momentum_limit, step_limit = limits
    kick = abs(kick) * lr
    new_momentum = abs(rescale) * sqrt(momentum_sq) + kick * force_norm
    drift = drift_bound * lr
    safe = (new_momentum <= momentum_limit) & (drift * new_momentum <= step_limit)
    coefficients_ok = (abs(rescale) <= momentum_limit) & (
        kick * (1.0 + weight_decay) <= momentum_limit
    )
    return safe & coefficients_ok & (drift <= step_limit)


# ------------------------------------------------------------------ host step
def _host_sums(
    particle: Particle, loss: Tensor, momenta_too: bool
) -> tuple[float, float, list[float], float | None]:
    """F, |∇F|², |Θ_g|² of the decayed groups and (``momenta_too``: what the last lazy step
    deferred) |P|², as floats: on plain CPU tensors all in one call (one read elsewhere)."""
    decayed = [g.params for g in particle.groups if g.weight_decay != 0.0]
    if particle.plain_cpu:
        lists = [particle.grads, *decayed]
        if momenta_too:
            lists.append(particle.momenta)
        sums = host_sums_of_squares(lists)
        p_sq = sums.pop() if momenta_too else None
        return float(loss), sums[0], sums[1:], p_sq
    sums = [sum_of_squares(ts, particle.device) for ts in (particle.grads, *decayed)]
    loss_value = loss.detach().to(device=particle.device, dtype=torch.float64).reshape(())
    loss_f, grad_sq, *theta_sqs = torch.stack([loss_value, *sums]).tolist()
    return loss_f, grad_sq, theta_sqs, None


def _skip(state: dict[str, Any], reason: str) -> None:
    state["skipped"] += 1
    warnings.warn(
        f"ECD step skipped: {reason}; parameters and optimizer state are unchanged",
        NonFiniteLossWarning,
        stacklevel=4,
    )


def host_step(
    *,
    particle: Particle,
    state: dict[str, Any],
    config: ECDConfig,
    hamiltonian: Hamiltonian,
    loss: Tensor,
    draw: Draw,
    fused: bool,
    call: int = 0,
    counters_hint: tuple[int, int, int] | None = None,
    lazy: bool = False,
) -> None:
    """One step with Python-float scalars (see the module docstring).

    ``lazy`` (plain CPU tensors, eager kernels): when D does not need Π², Π² after the kick is
    not summed at once but with the next step's |∇F|² (``state["deferred"]``: the same numbers,
    one pass and one call fewer); and for a particle of at least :data:`SCALE_MIN_NUMEL`
    parameters whose kick is not projected, the stored momentum is P with Π = σ·P
    (``state["momentum_scale"]``), so that the restoration Π ← α·Π costs no pass over memory
    (σ ← α·σ; the kick adds −(Δt·k/σ)·G to P, the drift adds (Δt·D·σ)·P to Θ). The caller
    settles or folds σ into the momenta (:func:`settle`, :func:`fold_scale`) before anything
    else reads them.
    """
    lazy = lazy and particle.plain_cpu and not fused
    deferred = state["deferred"] is not None
    loss_f, grad_sq, theta_sqs, p_sq = _host_sums(particle, loss, deferred and lazy)
    if deferred:
        settle(state, particle.momenta, p_sq)
    floor = state["loss_floor"] if state["loss_floor"] is not None else config.loss_floor
    best = state["best_objective"] if state["best_objective"] is not None else math.inf
    objective = _objective(particle, loss_f, theta_sqs)
    d = decide(
        config=config,
        hamiltonian=hamiltonian,
        objective=objective,
        grad_sq=grad_sq,
        floor=floor,
        best=best,
    )
    if not d.finite:
        return _skip(state, "the loss or a gradient is NaN or infinite")
    if d.below_floor and not state["initialized"] and not config.adapt_floor:
        raise ValueError(
            f"the loss ({loss_f:.6g}) is at or below loss_floor ({floor:.6g}) at the first step, "
            "so V = F - F0 <= 0: pass a loss_floor below the loss, or adapt_floor=True to lower "
            "it automatically"
        )
    if not d.moving:  # V <= ε2: the dynamics has reached the floor, nothing moves
        state["loss_floor"], state["potential"] = d.floor, d.potential
        return None
    first = not state["initialized"]
    energy = state["energy"]
    if first or (config.adapt_floor and d.below_floor):  # E(V0, δE); a moved floor restarts E
        energy = hamiltonian.initial_energy(d.potential, config.extra_energy)
    target = hamiltonian.target_momentum_sq(energy, d.potential)
    momentum_sq = max(target, 0.0) if first else state["momentum_sq"]
    c = _coefficients(config, hamiltonian, particle, energy, d, momentum_sq)
    safe = _is_safe(particle, hamiltonian, c, grad_sq, theta_sqs, momentum_sq)
    if not (safe and math.isfinite(energy)):
        return _skip(state, "the update would write a non-finite value (it overflows)")
    state["loss_floor"], state["potential"] = d.floor, d.potential
    if first:  # Π0, then α from the Π² it really has
        _initialize(particle, state, energy, target, draw)
        c = _coefficients(config, hamiltonian, particle, energy, d, state["momentum_sq"])
    rotate = config.has_rotation and chaos.rotation_due(call, config.rotation_every)
    _host_update(particle, state, config, hamiltonian, energy, d, c, draw, fused, lazy, rotate)
    return None


def _objective(particle: Particle, loss: Any, theta_sqs: list[Any]) -> Any:
    """F + Σ_groups ½λ_g|Θ_g|² (the loss the particle minimises, before the floor)."""
    decayed = [g for g in particle.groups if g.weight_decay != 0.0]
    objective = loss
    for group, theta_sq in zip(decayed, theta_sqs, strict=True):
        objective = objective + 0.5 * group.weight_decay * theta_sq
    return objective


def _coefficients(
    config: ECDConfig,
    hamiltonian: Hamiltonian,
    particle: Particle,
    energy: Any,
    d: Decision,
    momentum_sq: Any,
) -> Coefficients:
    return coefficients(
        config=config,
        hamiltonian=hamiltonian,
        energy=energy,
        potential=d.potential,
        effective=d.effective,
        momentum_sq=momentum_sq,
        dim=particle.dim,
    )


def _is_safe(
    particle: Particle,
    hamiltonian: Hamiltonian,
    c: Coefficients,
    grad_sq: Any,
    theta_sqs: list[Any],
    momentum_sq: Any,
) -> Any:
    """:func:`update_is_safe` for this particle: |G| ≤ |∇F| + Σ λ_g|Θ_g|, the largest Δt and
    λ over the groups, and (unit speed) the largest factor the projection can give Π."""
    decayed = [g for g in particle.groups if g.weight_decay != 0.0]
    force_norm = sqrt(grad_sq)
    for group, theta_sq in zip(decayed, theta_sqs, strict=True):
        force_norm = force_norm + group.weight_decay * sqrt(theta_sq)
    lr = _largest([g.lr for g in particle.groups], particle.device)
    rescale = c.rescale
    if hamiltonian.projects_force:  # |Π·G| ≤ |Π||G|
        rescale = projected_rescale(c.rescale, lr * c.kick, sqrt(momentum_sq) * force_norm)
    return update_is_safe(
        rescale=rescale,
        kick=c.kick,
        drift_bound=c.drift_bound,
        momentum_sq=momentum_sq,
        force_norm=force_norm,
        lr=lr,
        weight_decay=max(g.weight_decay for g in particle.groups),
        limits=particle.limits,
    )


def _initial_direction(particle: Particle, draw: Draw) -> tuple[list[Tensor], float]:
    """−G/|G| (G = ∇F + λΘ, the direction of −∇V) or, for a zero gradient, a random direction;
    returns the unnormalised direction and its norm."""
    directions = []
    largest_decay = max(1.0, *(g.weight_decay for g in particle.groups))
    for group in particle.groups:
        for p, g, m in zip(group.params, group.grads, group.momenta, strict=True):
            d = g.to(m.dtype) / largest_decay  # scaled so that λ·Θ cannot overflow
            if group.weight_decay != 0.0:
                d = d + (group.weight_decay / largest_decay) * p.to(d.dtype)
            directions.append(-d)
    norm_sq = host_sum_of_squares(directions, particle.device)
    if not norm_sq > 0:
        directions = draw(directions, chaos.STREAM_INITIAL, "gaussian", step=0)
        norm_sq = host_sum_of_squares(directions, particle.device)
    return directions, math.sqrt(norm_sq)


def _initialize(
    particle: Particle, state: dict[str, Any], energy: float, target: float, draw: Draw
) -> None:
    """E and Π0 = −∇V/|∇V|·sqrt(Π²_target(E, V0)) (eqs. 13-14)."""
    directions, norm = _initial_direction(particle, draw)
    scale = math.sqrt(max(target, 0.0)) / norm
    for m, d in zip(particle.momenta, directions, strict=True):
        m.copy_(d).mul_(scale)
    state["energy"] = energy
    state["momentum_sq"] = host_sum_of_squares(particle.momenta, particle.device)
    state["initialized"] = True


def _host_update(
    particle: Particle,
    state: dict[str, Any],
    config: ECDConfig,
    hamiltonian: Hamiltonian,
    energy: float,
    d: Decision,
    c: Coefficients,
    draw: Draw,
    fused: bool,
    lazy: bool,
    rotate: bool,
) -> None:
    """Bounce, kick, drift, rotation (when ``rotate``) and bookkeeping of a moving host step."""
    momenta = particle.momenta
    fixed, due = chaos.bounce_due(
        state["c0"],
        state["c1"],
        state["fixed_bounces_done"],
        bounce_period=config.bounce_period,
        n_bounces=config.n_bounces,
        bounce_patience=config.bounce_patience,
    )
    c0, c1, done = state["c0"], state["c1"], state["fixed_bounces_done"]
    if due:  # Π = σ·P: a bounce of P (|P| kept) is a bounce of Π
        chaos.bounce_(momenta, draw(momenta, chaos.STREAM_BOUNCE, config.bounce_direction))
        c0, c1, done = chaos.counters_after_bounce(c0, c1, done, fixed, n_bounces=config.n_bounces)
        state["bounces"] += 1
    scale = 1.0
    scaled = lazy and particle.dim >= SCALE_MIN_NUMEL
    sigma = state["momentum_scale"] if scaled else 1.0
    rescales = _group_rescales(particle, hamiltonian, c, host=True, scale=sigma)
    if scaled and all(r == rescales[0] for r in rescales):
        # the restoration (and projection) goes into σ; folded into P if σ would leave its range
        scale = sigma * rescales[0]
        if not SCALE_RANGE[0] <= scale <= SCALE_RANGE[1]:
            torch._foreach_mul_(momenta, scale)
            scale = 1.0
        rescales = [1.0] * len(rescales)
    elif sigma != 1.0:  # groups with their own factors (unit speed, per-group Δt): fold σ
        torch._foreach_mul_(momenta, sigma)
    defer = lazy and not rotate and c.drift is not None and not particle.streamed
    momentum_sq, drift, p_sq = _kick_and_drift(
        particle, hamiltonian, energy, d.potential, rescales, c, fused=fused, mask=None,
        scale=scale, defer=defer,
    )  # fmt: skip
    deferred = "momentum_sq" if defer else None
    if rotate:  # on the CPU, ξ goes into a buffer kept between steps
        xi = draw(momenta, chaos.STREAM_ROTATION, "gaussian", reuse=particle.plain_cpu)
        strength = _rotation_strength(config, hamiltonian, particle.dim)
        known = p_sq if particle.plain_cpu and not fused else None
        if scaled and chaos.rotate_lazy_(momenta, xi, strength, known):
            deferred = "scale"  # |Π| is kept; σ = |Π|/|P| once |P| is summed
        else:
            chaos.rotate_(momenta, xi, strength, momentum_sq=known)
    state["c0"], state["c1"] = chaos.counters_after_update(c0, c1, d.new_minimum)
    state["fixed_bounces_done"] = done
    best = state["best_objective"] if state["best_objective"] is not None else math.inf
    state["best_objective"] = min(best, d.objective)
    state["steps"] += 1
    state["off_shell_steps"] += int(bool(c.off_shell))
    state["energy"], state["momentum_sq"], state["rescale"] = energy, momentum_sq, c.rescale
    state["momentum_scale"], state["deferred"], state["last_drift"] = scale, deferred, drift
    state["speed"] = None if defer else drift * math.sqrt(momentum_sq)


def _rotation_strength(config: ECDConfig, hamiltonian: Hamiltonian, dim: int) -> float:
    """ν of one rotation: ``chaos`` times the Hamiltonian's factor, times sqrt(k) when it
    rotates every k-th step (the same diffusion of the direction to first order)."""
    strength = config.chaos * hamiltonian.chaos_scale(dim)
    return strength * math.sqrt(config.rotation_every) if config.rotation_every > 1 else strength


def _group_rescales(
    particle: Particle,
    hamiltonian: Hamiltonian,
    c: Coefficients,
    *,
    host: bool,
    scale: float = 1.0,
) -> list[Any]:
    """α per group: the restoration factor, times the projection of the kick (unit speed).
    ``scale``: σ of the lazy host path (the momenta hold Π/σ)."""
    if not hamiltonian.projects_force:
        return [c.rescale] * len(particle.groups)

    def dot(a: list[Tensor], b: list[Tensor]) -> Any:
        return host_dot_sum(a, b) if host else dot_sum(a, b, particle.device)

    momentum_dot_force = sum(dot(g.momenta, g.grads) for g in particle.groups)  # Π·G
    for g in particle.groups:
        if g.weight_decay != 0.0:  # + λ·(Π·Θ), G = ∇F + λΘ
            momentum_dot_force = momentum_dot_force + g.weight_decay * dot(g.momenta, g.params)
    if scale != 1.0:
        momentum_dot_force = scale * momentum_dot_force
    return [
        projected_rescale(c.rescale, g.lr * c.kick, momentum_dot_force) for g in particle.groups
    ]


def _kick_and_drift(
    particle: Particle,
    hamiltonian: Hamiltonian,
    energy: Any,
    potential: Any,
    rescales: list[Any],
    c: Coefficients,
    *,
    fused: bool,
    mask: Tensor | None,
    scale: float = 1.0,
    defer: bool = False,
) -> tuple[Any, Any]:
    """Kick and drift of every group; returns (Π² after the kick, D, |P|² on the host). ``mask``
    (device path): where False, the coefficients are those of "no change". ``scale``: σ of the
    lazy host path (the momenta hold P = Π/σ); ``defer``: leave Π² (None) to the next step."""
    host = mask is None
    drift = c.drift
    if fused:
        momentum_sq, drift = _fused_kick_and_drift(
            particle, hamiltonian, energy, potential, rescales, c, mask
        )
        return momentum_sq, drift, None
    if host and particle.streamed:
        return _streamed_kick_and_drift(
            particle, hamiltonian, energy, potential, rescales, c, scale
        )
    for group, rescale in zip(particle.groups, rescales, strict=True):
        ecd_kick_(
            group.params,
            group.grads,
            group.momenta,
            rescale=rescale,
            kick=_kick_step(group.lr, c.kick, scale),
            weight_decay=group.weight_decay,
            foreach=group.foreach,
        )
    p_sq = None
    if defer:
        momentum_sq = None
    elif host:
        p_sq = host_sum_of_squares(particle.momenta, particle.device, plain=particle.plain_cpu)
        momentum_sq = _true_momentum_sq(p_sq, scale)
    else:
        momentum_sq = sum_of_squares(particle.momenta, particle.device)
    if drift is None:
        drift = hamiltonian.drift_factor(energy, potential, momentum_sq)
        if not host:
            drift = torch.where(mask, drift, 0.0)
    for group in particle.groups:
        step = _drift_step(group.lr, drift, scale)
        ecd_drift_(group.params, group.momenta, drift=step, foreach=group.foreach)
    return momentum_sq, drift, p_sq


def _streamed_kick_and_drift(
    particle: Particle,
    hamiltonian: Hamiltonian,
    energy: float,
    potential: float,
    rescales: list[float],
    c: Coefficients,
    scale: float,
) -> tuple[float, float, float]:
    """:func:`_kick_and_drift` of a plain CPU particle with large tensors: each large tensor is
    kicked, summed and (when D is known before the kick) drifted while it is in cache."""
    drift, parts = c.drift, []
    for group, rescale in zip(particle.groups, rescales, strict=True):
        parts += host_kick_drift_(
            group.params,
            group.grads,
            group.momenta,
            rescale=rescale,
            kick=_kick_step(group.lr, c.kick, scale),
            weight_decay=group.weight_decay,
            drift=None if drift is None else _drift_step(group.lr, drift, scale),
            foreach=group.foreach,
        )
    p_sq = exact_total(parts, particle.momenta)
    momentum_sq = _true_momentum_sq(p_sq, scale)
    if drift is None:
        drift = hamiltonian.drift_factor(energy, potential, momentum_sq)
        for group in particle.groups:
            step = _drift_step(group.lr, drift, scale)
            ecd_drift_(group.params, group.momenta, drift=step, foreach=group.foreach)
    return momentum_sq, drift, p_sq


def _kick_step(lr: float, kick: float, scale: float) -> float:
    """Δt·k/σ, the factor of G in the kick of P = Π/σ (σ = 1 off the lazy path)."""
    return lr * kick if scale == 1.0 else lr * kick / scale


def _true_momentum_sq(p_sq: float, scale: float) -> float:
    """Π² = σ²·|P|² from the sum over the stored momenta P."""
    return p_sq if scale == 1.0 else scale * scale * p_sq


def _drift_step(lr: float, drift: float, scale: float) -> float:
    """Δt·D·σ, the factor of P in the drift (σ = 1 off the lazy path)."""
    return lr * drift if scale == 1.0 else lr * drift * scale


def _fused_kick_and_drift(
    particle: Particle,
    hamiltonian: Hamiltonian,
    energy: Any,
    potential: Any,
    rescales: list[Any],
    c: Coefficients,
    mask: Tensor | None,
) -> tuple[Any, Any]:
    """The ``fused=True`` kick and drift (one compiled pass per group when D is known before
    the kick)."""
    device = particle.device
    if any(p.device != device for g in particle.groups for p in g.params):
        raise ValueError("fused=True needs every parameter on one device")

    def tensor(x: Any) -> Tensor:
        return torch.as_tensor(x, dtype=torch.float64, device=device)

    drift = c.drift
    momentum_sq = torch.zeros((), dtype=torch.float64, device=device)
    for group, rescale in zip(particle.groups, rescales, strict=True):
        momentum_sq = momentum_sq + fused_kick_drift_(
            group.params,
            group.grads,
            group.momenta,
            rescale=tensor(rescale),
            kick=tensor(group.lr * c.kick),
            drift=None if drift is None else tensor(group.lr * drift),
            weight_decay=float(group.weight_decay),
        )
    if mask is None:
        momentum_sq = momentum_sq.item()
    if drift is None:
        drift = hamiltonian.drift_factor(energy, potential, momentum_sq)
        if mask is not None:
            drift = torch.where(mask, drift, 0.0)
        for group in particle.groups:
            fused_drift_(group.params, group.momenta, drift=tensor(group.lr * drift))
    return momentum_sq, drift


# ------------------------------------------------------------------ device step
def _device_sums(particle: Particle, loss: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
    """F, |∇F|² and |Θ_g|² of the decayed groups, as float64 0-dim tensors (no host read)."""
    decayed = [g.params for g in particle.groups if g.weight_decay != 0.0]
    loss_value = loss.detach().to(device=particle.device, dtype=torch.float64).reshape(())
    sums = [sum_of_squares(ts, particle.device) for ts in (particle.grads, *decayed)]
    return loss_value, sums[0], sums[1:]


def device_step(
    *,
    particle: Particle,
    state: dict[str, Any],
    config: ECDConfig,
    hamiltonian: Hamiltonian,
    loss: Tensor,
    draw: Draw,
    fused: bool,
    call: int | Tensor = 0,
    counters_hint: tuple[int, int, int] | None = None,
) -> None:
    """One step with every decision a device mask (see the module docstring). Runs after a
    first :func:`host_step` (which initialises E and Π) and reads no device value. ``call``:
    the index of this call of ``step()`` (a device tensor under ``capturable``)."""
    loss_value, grad_sq, theta_sqs = _device_sums(particle, loss)
    objective = _objective(particle, loss_value, theta_sqs)
    d = decide(
        config=config,
        hamiltonian=hamiltonian,
        objective=objective,
        grad_sq=grad_sq,
        floor=state["loss_floor"],
        best=state["best_objective"],
    )
    energy = state["energy"]
    if config.adapt_floor:  # a moved floor restarts E = E(V', δE)
        restart = hamiltonian.initial_energy(d.potential, config.extra_energy)
        energy = where(d.below_floor, restart, energy)
    c = _coefficients(config, hamiltonian, particle, energy, d, state["momentum_sq"])
    safe = _is_safe(particle, hamiltonian, c, grad_sq, theta_sqs, state["momentum_sq"])
    safe = safe & isfinite(energy)
    refused = d.moving & ~safe
    moving = d.moving & safe
    not_finite = ~d.finite
    for g in particle.grads:  # a non-finite gradient must not reach Π or Θ (the step is masked)
        g.masked_fill_(not_finite.to(g.device), 0.0)
    _store(state, "skipped", state["skipped"] + (not_finite | refused))
    keep = d.finite & ~refused
    _store(state, "loss_floor", where(keep, d.floor, state["loss_floor"]))
    _store(state, "potential", where(keep, d.potential, state["potential"]))
    _device_update(
        particle, state, config, hamiltonian, energy, d, c, moving, draw, fused, counters_hint, call
    )


def _largest(values: Sequence[Any], device: torch.device) -> Any:
    if all(type(v) is float for v in values):
        return max(values)
    return torch.stack(
        [torch.as_tensor(v, dtype=torch.float64, device=device) for v in values]
    ).max()


def _device_update(
    particle: Particle,
    state: dict[str, Any],
    config: ECDConfig,
    hamiltonian: Hamiltonian,
    energy: Tensor,
    d: Decision,
    c: Coefficients,
    moving: Tensor,
    draw: Draw,
    fused: bool,
    counters_hint: tuple[int, int, int] | None,
    call: int | Tensor,
) -> None:
    """Bounce, kick, drift, rotation and bookkeeping, all masked by ``moving``."""
    momenta = particle.momenta
    c0, c1, done = state["c0"], state["c1"], state["fixed_bounces_done"]
    schedule = {
        "bounce_period": config.bounce_period,
        "n_bounces": config.n_bounces,
        "bounce_patience": config.bounce_patience,
    }
    if config.has_bounces:
        fixed, due = chaos.bounce_due(c0, c1, done, **schedule)
        due = due & moving
        # the host knows the counters (sent ahead by the last step): no draw unless a bounce is due
        if counters_hint is None or chaos.bounce_due(*counters_hint, **schedule)[1]:
            chaos.bounce_(
                momenta, draw(momenta, chaos.STREAM_BOUNCE, config.bounce_direction), mask=due
            )
        after = chaos.counters_after_bounce(c0, c1, done, fixed, n_bounces=config.n_bounces)
        c0, c1, done = (torch.where(due, a, b) for a, b in zip(after, (c0, c1, done), strict=True))
        _store(state, "bounces", state["bounces"] + due)
    c = Coefficients(
        rescale=torch.where(moving, c.rescale, 1.0),
        kick=torch.where(moving, c.kick, 0.0),
        drift=None if c.drift is None else torch.where(moving, c.drift, 0.0),
        drift_bound=c.drift_bound,
        off_shell=c.off_shell,
    )
    rescales = _group_rescales(particle, hamiltonian, c, host=False)
    momentum_sq, drift, _ = _kick_and_drift(
        particle, hamiltonian, energy, d.potential, rescales, c, fused=fused, mask=moving
    )
    rotate = chaos.rotation_due(call, config.rotation_every) if config.has_rotation else False
    if isinstance(rotate, Tensor) or rotate:  # a device call counter gives a mask
        xi = draw(momenta, chaos.STREAM_ROTATION, "gaussian")
        strength = _rotation_strength(config, hamiltonian, particle.dim)
        chaos.rotate_(momenta, xi, strength, mask=moving & rotate)
    c0_next, c1_next = chaos.counters_after_update(c0, c1, d.new_minimum)
    _store(state, "c0", torch.where(moving, c0_next, c0))
    _store(state, "c1", torch.where(moving, c1_next, c1))
    _store(state, "fixed_bounces_done", done)
    best = state["best_objective"]
    _store(state, "best_objective", torch.where(moving, torch.minimum(best, d.objective), best))
    _store(state, "steps", state["steps"] + moving)
    _store(state, "off_shell_steps", state["off_shell_steps"] + (moving & c.off_shell))
    _store(state, "energy", torch.where(moving, energy, state["energy"]))
    _store(state, "momentum_sq", torch.where(moving, momentum_sq, state["momentum_sq"]))
    _store(state, "rescale", c.rescale)
    _store(state, "speed", drift * maximum(momentum_sq, 0.0).sqrt())
