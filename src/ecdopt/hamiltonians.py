"""Scalar math of the ECD Hamiltonians (design.md §1 table), and nothing else.

Every function here is pure and elementwise: its arguments are tensors (0-dim for the optimizer,
``[M]`` for an ensemble of M particles) or Python floats, and it returns a tensor of the broadcast
shape. Notation follows the paper: V is the potential (eq. 1), E the conserved energy, Π² the
squared norm of the momentum and s the separable Hamiltonian's kinetic offset.

Each Hamiltonian H(V, Π²) fixes four things:

- ``initial_energy(V0, δE)``: E at the first step;
- ``target_momentum_sq(E, V)``: the Π² that makes H(V, Π²) = E (used to restore the energy);
- ``kick_factor(E, V)``: K in ``Π ← Π − Δt·K·∇V``;
- ``drift_factor(E, V, Π²)``: D in ``Θ ← Θ + Δt·D·Π``.

Together, one symplectic-Euler step is ``Π ← α·Π − Δt·K·∇V`` then ``Θ ← Θ + Δt·D·Π``
(Algorithm 1 and eqs. 11-12 for Born-Infeld).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

TensorLike = Tensor | float
Scalar = Tensor | float  # a float on the host, or a tensor (0-dim or a batch of particles)


def sqrt(x: Scalar) -> Scalar:
    """√x for a float (math) or a tensor (torch)."""
    return torch.sqrt(x) if isinstance(x, Tensor) else math.sqrt(x)


def log(x: Scalar) -> Scalar:
    """log x for a float (math) or a tensor (torch)."""
    return torch.log(x) if isinstance(x, Tensor) else math.log(x)


def exp(x: Scalar) -> Scalar:
    """e**x for a float (math) or a tensor (torch)."""
    return torch.exp(x) if isinstance(x, Tensor) else math.exp(x)


def select(condition: bool | Tensor, if_true: Scalar, if_false: Scalar) -> Scalar:
    """``if_true if condition else if_false``; elementwise (``torch.where``) for tensors."""
    if isinstance(condition, Tensor):
        return torch.where(condition, if_true, if_false)
    return if_true if condition else if_false


__all__ = [
    "HAMILTONIANS",
    "BornInfeld",
    "Hamiltonian",
    "InverseMass",
    "Separable",
    "adapted_floor",
    "exp",
    "get_hamiltonian",
    "log",
    "restoration_factor",
    "select",
    "sqrt",
]


class Hamiltonian(Protocol):
    """What every ECD Hamiltonian provides (see the module docstring)."""

    name: str

    def energy(self, potential: Tensor, momentum_sq: Tensor) -> Tensor:
        """H(V, Π²): the energy of a state."""
        ...

    def initial_energy(self, potential: Tensor, extra_energy: TensorLike) -> Tensor:
        """E fixed at the first step from V0 and δE."""
        ...

    def target_momentum_sq(self, energy: Tensor, potential: Tensor) -> Tensor:
        """Π²_target(E, V): the Π² on the energy shell H(V, Π²) = E."""
        ...

    def kick_factor(self, energy: Tensor, potential: Tensor) -> Tensor:
        """K(V, E): the factor of −Δt·∇V in the momentum update."""
        ...

    def drift_factor(self, energy: Tensor, potential: Tensor, momentum_sq: Tensor) -> Tensor:
        """D(V, E, Π²): the factor of Δt·Π in the position update."""
        ...

    @property
    def drift_uses_momentum_sq(self) -> bool:
        """Whether D depends on Π² (then Π² after the kick must be known before the drift)."""
        ...

    def dynamical_potential(self, energy: Scalar, potential: Scalar) -> Scalar:
        """The V the kick and drift use: V itself, except far off the energy shell (BBI)."""
        ...


@dataclass(frozen=True)
class BornInfeld:
    """Born-Infeld ECD, the Hamiltonian of BBI: H = sqrt(V (V + Π²)) (eq. 4).

    Equations of motion (3) discretized as (11)-(12): K = ½(V/E + E/V), D = V/E;
    E = V0 + δE (eq. 13); Π²_target = E²/V − V (Algorithm 1's π_C²).

    Off the shell: the continuum particle never has V > E, but a minibatch can (§3.2). Algorithm
    1 then skips the restoration (Π²_target < 0) and keeps K ≈ V/2E and D = V/E, which grow
    with V: a batch far above E throws the particle away (×10 jumps already blow up). Beyond
    ``off_shell_ratio``·E (κ = 2) the step therefore treats the batch as the potential rescaled
    to κE — K and D take their values at V = κE and ∇V is scaled by κE/V — continuous at
    V = κE and bounded above it. Up to 2E (all that deterministic dynamics ever sees) this is
    Algorithm 1 exactly.
    """

    name: str = "born_infeld"
    off_shell_ratio: float = 2.0

    def dynamical_potential(self, energy: Scalar, potential: Scalar) -> Scalar:
        """min(V, κE): the potential K, D and the force use (see the class docstring)."""
        cap = self.off_shell_ratio * energy
        if isinstance(potential, Tensor) or isinstance(cap, Tensor):
            return torch.minimum(torch.as_tensor(potential), torch.as_tensor(cap))
        return min(potential, cap)

    def energy(self, potential: Tensor, momentum_sq: Tensor) -> Tensor:
        return sqrt(potential * (potential + momentum_sq))

    def initial_energy(self, potential: Tensor, extra_energy: TensorLike) -> Tensor:
        return potential + extra_energy

    def target_momentum_sq(self, energy: Tensor, potential: Tensor) -> Tensor:
        return energy * energy / potential - potential

    def kick_factor(self, energy: Tensor, potential: Tensor) -> Tensor:
        return 0.5 * (potential / energy + energy / potential)

    def drift_factor(self, energy: Tensor, potential: Tensor, momentum_sq: Tensor) -> Tensor:
        return potential / energy

    @property
    def drift_uses_momentum_sq(self) -> bool:
        return False


@dataclass(frozen=True)
class _OnShell:
    """Hamiltonians whose kick and drift stay bounded for any V: no off-shell clipping."""

    def dynamical_potential(self, energy: Scalar, potential: Scalar) -> Scalar:
        return potential


@dataclass(frozen=True)
class InverseMass(_OnShell):
    """Non-relativistic particle of mass 1/V: H = ½ V Π² (the paper's eqs. 34-36).

    Π̇ = −½Π²∇V = −(E/V)∇V on the shell, Θ̇ = VΠ: K = E/V, D = V; Π²_target = 2E/V.
    E = V0 + δE, as for Born-Infeld.
    """

    name: str = "inverse_mass"

    def energy(self, potential: Tensor, momentum_sq: Tensor) -> Tensor:
        return 0.5 * potential * momentum_sq

    def initial_energy(self, potential: Tensor, extra_energy: TensorLike) -> Tensor:
        return potential + extra_energy

    def target_momentum_sq(self, energy: Tensor, potential: Tensor) -> Tensor:
        return 2.0 * energy / potential

    def kick_factor(self, energy: Tensor, potential: Tensor) -> Tensor:
        return energy / potential

    def drift_factor(self, energy: Tensor, potential: Tensor, momentum_sq: Tensor) -> Tensor:
        return potential

    @property
    def drift_uses_momentum_sq(self) -> bool:
        return False


@dataclass(frozen=True)
class Separable(_OnShell):
    """Separable ECD (ECDSep), log form: H = log V + log(s + Π²).

    From De Luca, Gatti & Silverstein (2023). Π̇ = −∇V/V, Θ̇ = 2Π/(s + Π²): K = 1/V,
    D = 2/(s + Π²); E = log V0 + log(s + δE); Π²_target = e^E/V − s. The offset s
    (``kinetic_offset``) regularises the kinetic term.
    """

    kinetic_offset: float = 1.0
    name: str = "separable"

    def energy(self, potential: Tensor, momentum_sq: Tensor) -> Tensor:
        return log(potential) + log(self.kinetic_offset + momentum_sq)

    def initial_energy(self, potential: Tensor, extra_energy: TensorLike) -> Tensor:
        return log(potential) + log(self.kinetic_offset + extra_energy)

    def target_momentum_sq(self, energy: Tensor, potential: Tensor) -> Tensor:
        return exp(energy) / potential - self.kinetic_offset

    def kick_factor(self, energy: Tensor, potential: Tensor) -> Tensor:
        return 1.0 / potential

    def drift_factor(self, energy: Tensor, potential: Tensor, momentum_sq: Tensor) -> Tensor:
        return 2.0 / (self.kinetic_offset + momentum_sq)

    @property
    def drift_uses_momentum_sq(self) -> bool:
        return True


HAMILTONIANS: dict[str, type] = {
    "born_infeld": BornInfeld,
    "inverse_mass": InverseMass,
    "separable": Separable,
}


def get_hamiltonian(name: str, *, kinetic_offset: float = 1.0) -> Hamiltonian:
    """Return the Hamiltonian called ``name`` (a key of :data:`HAMILTONIANS`)."""
    if name not in HAMILTONIANS:
        allowed = ", ".join(repr(k) for k in HAMILTONIANS)
        raise ValueError(f"hamiltonian must be one of {allowed}, got {name!r}")
    if name == "separable":
        return Separable(kinetic_offset=kinetic_offset)
    return HAMILTONIANS[name]()


def restoration_factor(
    momentum_sq: Scalar, target_momentum_sq: Scalar, energy_tol: float
) -> Scalar:
    """α of Algorithm 1: the rescaling Π ← α·Π that restores the energy.

    α = sqrt(Π²_target / Π²), except α = 1 when |Π² − Π²_target| < ε1 (``energy_tol``), when
    Π²_target < 0 (the state is off the energy shell, e.g. V > E for Born-Infeld) or when Π² = 0
    (no direction to rescale). Never NaN for finite inputs. Floats in, float out; tensors in,
    tensor out (elementwise).
    """
    skip = (
        (abs(momentum_sq - target_momentum_sq) < energy_tol)
        | (target_momentum_sq < 0)
        | (momentum_sq <= 0)
    )
    if not isinstance(skip, Tensor):
        return 1.0 if skip else math.sqrt(target_momentum_sq / momentum_sq)
    like = target_momentum_sq if isinstance(target_momentum_sq, Tensor) else momentum_sq
    one = torch.ones_like(skip, dtype=like.dtype)
    safe_ratio = torch.where(skip, one, target_momentum_sq / momentum_sq)
    return torch.where(skip, one, torch.sqrt(safe_ratio))


def adapted_floor(objective: Scalar, floor: Scalar) -> Scalar:
    """The paper's adaptive ΔV (§3.3): a lowered floor F0' once V = F − F0 ≤ 0.

    The discrete dynamics overshoots a floor that is above the true minimum by a small amount
    o = F0 − F ≥ 0. The floor is reflected below the current loss, F0' = F − max(o, τ) with
    τ = 1e-12·max(1, |F|), so the particle goes on with V = max(o, τ) > 0 (and restarts at
    E = E(V', δE)). Near a minimum the overshoot shrinks with the gradient, so the floor settles
    just above the minimum.
    """
    overshoot = floor - objective
    if isinstance(overshoot, Tensor):
        tiny = 1e-12 * torch.clamp(objective.abs(), min=1.0)
        return objective - torch.maximum(overshoot, tiny)
    return objective - max(overshoot, 1e-12 * max(abs(objective), 1.0))
