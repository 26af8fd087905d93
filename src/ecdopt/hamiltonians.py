"""Scalar math of the ECD Hamiltonians, and nothing else.

Every function here is pure and elementwise: its arguments are Python floats (the CPU host
path), 0-dim tensors (the sync-free device path), ``[M]`` tensors (an ensemble of M particles)
or JAX arrays (the optax port), and :mod:`ecdopt._scalar` picks the matching math. The optimizer,
the ensemble and the optax port all take their coefficients from here. Notation follows the
paper: F_eff = F − F0 + ½λ|Θ|² the effective loss, V = g(F_eff) the potential (eq. 1), E the
conserved energy, Π² the squared norm of the momentum, Δt the time step (``lr``), G = ∇F_eff.

Each Hamiltonian H(V, Π²) fixes:

- ``potential(F_eff)``: V = F_eff**η (the transform g of the paper, η = ``loss_power``);
- ``initial_energy(V0, δE)``: E at the first step;
- ``target_momentum_sq(E, V)``: the Π² that makes H(V, Π²) = E (restores the energy);
- ``force_factor(E, V, F_eff)``: k in the kick ``Π ← α·Π − Δt·k·G`` (k = K·dV/dF_eff);
- ``drift_factor(E, V, Π²)``: D in the drift ``Θ ← Θ + Δt·D·Π``.

One symplectic-Euler step is the restoration and kick with the old Θ, then the drift with the
new Π (Algorithm 1 and eqs. 11-12 for Born-Infeld).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ._scalar import Scalar, exp, log, maximum, minimum, power, sqrt, where

__all__ = [
    "HAMILTONIANS",
    "OFF_SHELL_MODES",
    "BornInfeld",
    "Hamiltonian",
    "InverseMass",
    "Scalar",
    "Separable",
    "UnitSpeed",
    "adapted_floor",
    "get_hamiltonian",
    "power_potential",
    "restoration_factor",
]

OFF_SHELL_MODES = ("rescale", "exact")
_NUMBERS = (float, int)


def power_potential(effective: Any, loss_power: Any) -> Any:
    """V = F_eff**η for F_eff > 0; F_eff itself otherwise (V ≤ 0: the particle stops).

    An overflow gives inf (the step is then skipped as non-finite), never an exception.
    """
    if type(loss_power) in _NUMBERS and loss_power == 1.0:
        return effective
    if type(effective) in _NUMBERS:
        return power(effective, loss_power) if effective > 0 else effective
    positive = maximum(effective, 1e-300)  # keeps the unused branch free of 0**negative
    return where(effective > 0, power(positive, loss_power), effective)


def _power_force(effective: Any, loss_power: Any) -> Any:
    """dV/dF_eff = η·F_eff**(η−1) (1 for η = 1)."""
    if type(loss_power) in _NUMBERS and loss_power == 1.0:
        return 1.0
    return loss_power * power(maximum(effective, 1e-300), loss_power - 1.0)


class Hamiltonian(Protocol):
    """What every ECD Hamiltonian provides (see the module docstring)."""

    name: str
    #: D depends on Π² (then Π² after the kick must be known before the drift)
    drift_uses_momentum_sq: bool
    #: the kick is projected orthogonally to Π (unit speed): it needs Π·G
    projects_force: bool

    def potential(self, effective: Any) -> Any:
        """V = g(F_eff)."""
        ...

    def energy(self, potential: Any, momentum_sq: Any) -> Any:
        """H(V, Π²): the energy of a state."""
        ...

    def initial_energy(self, potential: Any, extra_energy: Any) -> Any:
        """E fixed at the first step from V0 and δE."""
        ...

    def target_momentum_sq(self, energy: Any, potential: Any) -> Any:
        """Π²_target(E, V): the Π² on the energy shell H(V, Π²) = E."""
        ...

    def force_factor(self, energy: Any, potential: Any, effective: Any, dim: int) -> Any:
        """k of the kick Π ← α·Π − Δt·k·G (G = ∇F_eff); ``dim`` is the number of parameters."""
        ...

    def drift_factor(self, energy: Any, potential: Any, momentum_sq: Any) -> Any:
        """D(V, E, Π²) of the drift Θ ← Θ + Δt·D·Π."""
        ...

    def drift_bound(self, energy: Any, potential: Any) -> Any:
        """An upper bound of D for any Π² (guards the drift against overflow before the kick)."""
        ...

    def off_shell(self, energy: Any, potential: Any) -> Any:
        """Whether V is above the energy shell's reach (BBI: V > κE), counted per step."""
        ...

    def chaos_scale(self, dim: int) -> float:
        """The factor of the rotation strength ν (unit speed: 1/√d)."""
        ...


@dataclass(frozen=True)
class _PowerPotential:
    """V = F_eff**η with K·dV/dF_eff as the force (the paper's transform g)."""

    loss_power: Any = 1.0
    projects_force = False

    def potential(self, effective: Any) -> Any:
        return power_potential(effective, self.loss_power)

    def force_factor(self, energy: Any, potential: Any, effective: Any, dim: int) -> Any:
        return self.kick_factor(energy, potential) * _power_force(effective, self.loss_power)

    def off_shell(self, energy: Any, potential: Any) -> Any:
        return potential != potential  # never (False of the input's kind)

    def chaos_scale(self, dim: int) -> float:
        return 1.0

    def kick_factor(self, energy: Any, potential: Any) -> Any:
        raise NotImplementedError


@dataclass(frozen=True)
class BornInfeld(_PowerPotential):
    """Born-Infeld ECD, the Hamiltonian of BBI: H = sqrt(V (V + Π²)) (eq. 4).

    Equations of motion (3) discretized as (11)-(12): K = ½(V/E + E/V), D = V/E;
    E = V0 + δE (eq. 13); Π²_target = E²/V − V (Algorithm 1's π_C²).

    Off the shell (``off_shell``): the continuum particle never has V > E, but the discrete one
    can — a minibatch whose loss jumps (§3.2), or a deterministic run at a large Δt (Zakharov-10
    from (−1,…,−1) overshoots at every Δt ≥ 0.00272, where Algorithm 1 diverges). Algorithm 1
    then skips the restoration (Π²_target < 0) and keeps K ≈ V/2E and D = V/E, which grow with
    V and throw the particle away. ``"exact"`` keeps Algorithm 1 literally. ``"rescale"``
    (the optimizer's default) treats a batch with V > κE (κ = 2) as its potential rescaled to
    κE: K and D take their values at V = κE and the force is scaled by κE/V — continuous at
    V = κE, bounded above it, and Algorithm 1 exactly below it. Steps with V > κE are counted
    in either mode (``diagnostics()["off_shell_steps"]``).
    """

    name: str = "born_infeld"
    off_shell_mode: str = "rescale"
    off_shell_ratio: float = 2.0
    drift_uses_momentum_sq = False

    def dynamical_potential(self, energy: Any, potential: Any) -> Any:
        """The V that K, D and the force use: min(V, κE) with ``"rescale"``, V with ``"exact"``."""
        if self.off_shell_mode == "exact":
            return potential
        return minimum(potential, self.off_shell_ratio * energy)

    def off_shell(self, energy: Any, potential: Any) -> Any:
        return potential > self.off_shell_ratio * energy

    def energy(self, potential: Any, momentum_sq: Any) -> Any:
        return sqrt(potential * (potential + momentum_sq))

    def initial_energy(self, potential: Any, extra_energy: Any) -> Any:
        return potential + extra_energy

    def target_momentum_sq(self, energy: Any, potential: Any) -> Any:
        return energy * energy / potential - potential

    def kick_factor(self, energy: Any, potential: Any) -> Any:
        """K(V, E) = ½(V/E + E/V) (eq. 11)."""
        return 0.5 * (potential / energy + energy / potential)

    def force_factor(self, energy: Any, potential: Any, effective: Any, dim: int) -> Any:
        if self.off_shell_mode == "exact":
            return self.kick_factor(energy, potential) * _power_force(effective, self.loss_power)
        cap = self.off_shell_ratio * energy
        clipped = minimum(potential, cap)
        force = self.kick_factor(energy, clipped) * _power_force(effective, self.loss_power)
        # the force of the rescaled potential: ∇(κE/V · V) = (κE/V)·∇V beyond the shell
        return where(potential > cap, force * (clipped / potential), force)

    def drift_factor(self, energy: Any, potential: Any, momentum_sq: Any) -> Any:
        return self.dynamical_potential(energy, potential) / energy

    def drift_bound(self, energy: Any, potential: Any) -> Any:
        return self.drift_factor(energy, potential, None)


@dataclass(frozen=True)
class InverseMass(_PowerPotential):
    """Non-relativistic particle of mass 1/V: H = ½ V Π² (the paper's eqs. 34-36).

    Π̇ = −½Π²∇V = −(E/V)∇V on the shell, Θ̇ = VΠ: K = E/V, D = V; Π²_target = 2E/V.
    E = V0 + δE, as for Born-Infeld.
    """

    name: str = "inverse_mass"
    drift_uses_momentum_sq = False

    def energy(self, potential: Any, momentum_sq: Any) -> Any:
        return 0.5 * potential * momentum_sq

    def initial_energy(self, potential: Any, extra_energy: Any) -> Any:
        return potential + extra_energy

    def target_momentum_sq(self, energy: Any, potential: Any) -> Any:
        return 2.0 * energy / potential

    def kick_factor(self, energy: Any, potential: Any) -> Any:
        return energy / potential

    def drift_factor(self, energy: Any, potential: Any, momentum_sq: Any) -> Any:
        return potential

    def drift_bound(self, energy: Any, potential: Any) -> Any:
        return potential


@dataclass(frozen=True)
class Separable(_PowerPotential):
    """Separable ECD (ECDSep), log form: H = log V + log(s + Π²).

    From De Luca, Gatti & Silverstein (2023). Π̇ = −∇V/V, Θ̇ = 2Π/(s + Π²): K = 1/V,
    D = 2/(s + Π²) ≤ 2/s; E = log V0 + log(s + δE); Π²_target = e^E/V − s. The offset s
    (``kinetic_offset``) regularises the kinetic term.
    """

    kinetic_offset: float = 1.0
    name: str = "separable"
    drift_uses_momentum_sq = True

    def energy(self, potential: Any, momentum_sq: Any) -> Any:
        return log(potential) + log(self.kinetic_offset + momentum_sq)

    def initial_energy(self, potential: Any, extra_energy: Any) -> Any:
        return log(potential) + log(self.kinetic_offset + extra_energy)

    def target_momentum_sq(self, energy: Any, potential: Any) -> Any:
        return exp(energy) / potential - self.kinetic_offset

    def kick_factor(self, energy: Any, potential: Any) -> Any:
        return 1.0 / potential

    def drift_factor(self, energy: Any, potential: Any, momentum_sq: Any) -> Any:
        return 2.0 / (self.kinetic_offset + momentum_sq)

    def drift_bound(self, energy: Any, potential: Any) -> Any:
        return 2.0 / self.kinetic_offset


@dataclass(frozen=True)
class UnitSpeed:
    """Unit-speed ECD: every parameter moves at speed 1, Θ̇ = p, |p| = 1, and

        ṗ = −(η d / (2(d − 1))) · (G − p (p·G)) / F_eff,

    the force projected orthogonally to the velocity; its invariant measure on parameter space
    is ∝ F_eff^(−ηd/2) (d parameters, η = ``loss_power``). Discretized as the authors do, with
    h = Δt/√η: restore p ← p/|p|; kick p ← p − h·ηd/(2(d−1)F_eff)·(G − p (p·G)); drift
    Θ ← Θ + h·p; rotation strength ν/√d. Here V = F_eff (η enters the force, not the
    potential), the "energy" is the speed (E = 1, Π²_target = 1), K·dV/dF = √η·d/(2(d−1)F_eff)
    and D = 1/√η. The projection ``p (p·G)`` is applied by the caller through
    :func:`projected_rescale` (it needs the global Π·G).
    """

    loss_power: Any = 1.0
    name: str = "unit_speed"
    drift_uses_momentum_sq = False
    projects_force = True

    def potential(self, effective: Any) -> Any:
        return effective

    def energy(self, potential: Any, momentum_sq: Any) -> Any:
        return sqrt(momentum_sq)

    def initial_energy(self, potential: Any, extra_energy: Any) -> Any:
        return 1.0 + 0.0 * potential  # shaped like V (a batch of particles)

    def target_momentum_sq(self, energy: Any, potential: Any) -> Any:
        return energy * energy

    def force_factor(self, energy: Any, potential: Any, effective: Any, dim: int) -> Any:
        return sqrt(self.loss_power) * dim / (2.0 * (dim - 1) * effective)

    def drift_factor(self, energy: Any, potential: Any, momentum_sq: Any) -> Any:
        return 1.0 / sqrt(self.loss_power) + 0.0 * potential

    def drift_bound(self, energy: Any, potential: Any) -> Any:
        return self.drift_factor(energy, potential, None)

    def off_shell(self, energy: Any, potential: Any) -> Any:
        return potential != potential

    def chaos_scale(self, dim: int) -> float:
        return dim**-0.5


def projected_rescale(rescale: Any, kick: Any, momentum_dot_force: Any) -> Any:
    """The factor of Π in the projected kick (unit speed).

    With p = α·Π restored and c = Δt·k, the kick p ← p − c·(G − p (p·G)) is
    Π ← α(1 + c·α·(Π·G))·Π − c·G: the same kernel as every other kick, with this rescale.
    """
    return rescale * (1.0 + kick * rescale * momentum_dot_force)


HAMILTONIANS: dict[str, type] = {
    "born_infeld": BornInfeld,
    "inverse_mass": InverseMass,
    "separable": Separable,
    "unit_speed": UnitSpeed,
}


def get_hamiltonian(
    name: str,
    *,
    kinetic_offset: float = 1.0,
    loss_power: Any = 1.0,
    off_shell: str = "rescale",
) -> Hamiltonian:
    """The Hamiltonian called ``name`` (a key of :data:`HAMILTONIANS`) with its parameters."""
    if name not in HAMILTONIANS:
        allowed = ", ".join(repr(k) for k in HAMILTONIANS)
        raise ValueError(f"hamiltonian must be one of {allowed}, got {name!r}")
    if name == "separable":
        return Separable(loss_power=loss_power, kinetic_offset=kinetic_offset)
    if name == "born_infeld":
        return BornInfeld(loss_power=loss_power, off_shell_mode=off_shell)
    return HAMILTONIANS[name](loss_power=loss_power)


def restoration_factor(momentum_sq: Any, target_momentum_sq: Any, energy_tol: float) -> Any:
    """α of Algorithm 1: the rescaling Π ← α·Π that restores the energy.

    α = sqrt(Π²_target / Π²), except α = 1 when |Π² − Π²_target| < ε1 (``energy_tol``), when
    Π²_target < 0 (the state is off the energy shell, e.g. V > E for Born-Infeld) or when Π² = 0
    (no direction to rescale). Never NaN for finite inputs.
    """
    skip = (
        (abs(momentum_sq - target_momentum_sq) < energy_tol)
        | (target_momentum_sq < 0)
        | (momentum_sq <= 0)
    )
    if isinstance(skip, bool):
        return 1.0 if skip else sqrt(target_momentum_sq / momentum_sq)
    ratio = where(skip, 1.0, target_momentum_sq / where(skip, 1.0, momentum_sq))
    return where(skip, 1.0, sqrt(ratio))


def adapted_floor(objective: Scalar, floor: Scalar) -> Scalar:
    """The paper's adaptive ΔV (§3.3): a lowered floor F0' once V = F − F0 ≤ 0.

    The discrete dynamics overshoots a floor that is above the true minimum by a small amount
    o = F0 − F ≥ 0. The floor is reflected below the current loss, F0' = F − max(o, τ) with
    τ = 1e-12·max(1, |F|), so the particle goes on with V = max(o, τ) > 0 (and restarts at
    E = E(V', δE)). Near a minimum the overshoot shrinks with the gradient, so the floor settles
    just above the minimum.
    """
    tiny = 1e-12 * maximum(abs(objective), 1.0)
    return objective - maximum(floor - objective, tiny)
