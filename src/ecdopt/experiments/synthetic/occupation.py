"""Time-averaged basin occupation: the measurement eqs. 10/40 actually predict (§3.1, §4.3).

For a mixing ECD system the fraction of time a particle spends in a region is the region's share
of the energy shell's volume. Here M independent particles move on a landscape with two minima,
each with the floor V_I > 0 below its minimum (so no particle ever stops), and a callback counts,
at every step after a burn-in, which particles are inside each ellipse |η_I| < r (App. A.3).
Each particle's time average is one independent replicate: the error bars are across particles
(:func:`ecdopt.stats.ratio_of_means_interval`), which accounts for the strong correlation of
successive steps (a particle stays in a basin for hundreds of steps); the naive binomial error
would be far too small. The integrated autocorrelation time of the basin indicator is reported
too.

Dynamics (:data:`DYNAMICS`) are given in physical time t = steps·Δt, so that changing Δt keeps
their bounce schedule: BBI with its progress bounces (T1), constant-rate bounces (one every τ,
N_b unlimited, independent of the state), ECDSep's rotation and unit-speed ECD. Each is compared
with its own predicted measure (:func:`ecdopt.theory.marginal_density`), integrated over the
ellipses with the full potential and with the quadratic approximation of each basin (eq. 44/47).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ecdopt.ensemble import simulate
from ecdopt.landscapes import Landscape, make_gaussian_basins, make_quadratic_basins
from ecdopt.stats import (
    linear_extrapolation,
    mean_interval,
    ratio_of_means_interval,
)
from ecdopt.theory import (
    ellipsoid_integral,
    hessians,
    marginal_density,
    occupation_shares,
    sample_marginal,
)

__all__ = [
    "DYNAMICS",
    "LANDSCAPES",
    "Dynamics",
    "OccupationConfig",
    "OccupationCounter",
    "occupation_protocol",
    "predictions",
    "run_occupation",
]

F64 = torch.float64
Progress = Callable[[int], None]


def _noop(_: int) -> None:
    return None


# --------------------------------------------------------------------------------------------
# dynamics and landscapes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dynamics:
    """An ECD variant with its chaos, in physical time units (t = steps·Δt).

    ``bounce_period`` T0 and ``bounce_patience`` T1 are times (converted to steps at each Δt);
    ``every`` τ: one bounce every τ regardless of the state (the fixed schedule with N_b
    unlimited). ``chaos`` ν is the per-step rotation strength (ECDSep, unit speed).
    ``energy_scale``: the largest V the particle can reach, as a multiple of the start's V
    (the shell's edge; BBI: E; ECDSep: e^E/s).
    """

    name: str
    hamiltonian: str = "born_infeld"
    bounce_period: float | None = None
    n_bounces: int = 1
    bounce_patience: float | None = None
    every: float | None = None
    chaos: float = 0.0
    loss_power: float = 1.0
    kinetic_offset: float = 1.0
    bounce_direction: str = "gaussian"
    description: str = ""

    def options(self, dt: float) -> dict:
        """Keyword arguments of :func:`ecdopt.ensemble.simulate` at time step ``dt``."""

        def steps(t: float | None) -> int | None:
            return None if t is None else max(1, round(t / dt))

        if self.every is not None:
            bounces = dict(bounce_period=steps(self.every), n_bounces=2**40, bounce_patience=None)
        else:
            bounces = dict(
                bounce_period=steps(self.bounce_period),
                n_bounces=self.n_bounces,
                bounce_patience=steps(self.bounce_patience),
            )
        return dict(
            hamiltonian=self.hamiltonian,
            chaos=self.chaos,
            loss_power=self.loss_power,
            kinetic_offset=self.kinetic_offset,
            bounce_direction=self.bounce_direction,
            **bounces,
        )


#: the dynamics of the study (times in units of t = steps·Δt; at Δt = 0.01, T1 = 7.5 is the
#: §4.3 protocol's 750 steps and T0 = 0.2 its 20)
DYNAMICS: dict[str, Dynamics] = {
    d.name: d
    for d in (
        Dynamics(
            "bbi",
            bounce_period=0.2,
            n_bounces=1,
            bounce_patience=7.5,
            description="BBI as in §4.3: one fixed bounce, then progress bounces (T1 = 7.5)",
        ),
        Dynamics(
            "bbi-t1-1",
            bounce_period=0.2,
            n_bounces=1,
            bounce_patience=1.0,
            description="BBI with frequent progress bounces (T1 = 1)",
        ),
        Dynamics(
            "bbi-uniform",
            bounce_period=0.2,
            n_bounces=1,
            bounce_patience=7.5,
            bounce_direction="uniform",
            description="BBI as in §4.3 with the authors' uniform-cube bounce directions",
        ),
        Dynamics(
            "flow",
            description="BI without bounces: from the measure it must stay there (no mixing "
            "needed), a test of the discretized flow alone",
        ),
        Dynamics("every-7.5", every=7.5, description="BI, a bounce every τ = 7.5"),
        Dynamics("every-2.5", every=2.5, description="BI, a bounce every τ = 2.5"),
        Dynamics("every-1", every=1.0, description="BI, a bounce every τ = 1"),
        Dynamics(
            "ecdsep",
            hamiltonian="separable",
            chaos=0.03,
            kinetic_offset=0.1,
            description="ECDSep (s = 0.1, η = 1), rotation ν = 0.03 per step",
        ),
        Dynamics(
            "unit-speed",
            hamiltonian="unit_speed",
            every=2.5,
            description="unit-speed ECD (η = 1), a bounce every τ = 2.5",
        ),
    )
}


@dataclass(frozen=True)
class BasinSetup:
    """A landscape with two minima, the ellipses' Hessians, the start and the plotting box."""

    landscape: Landscape
    hessians: Tensor
    start: tuple[float, ...]
    box: float
    shell_edge: float | None = None  # the largest reachable V (None: V at the start)


def _two_basin(epsilon: float) -> BasinSetup:
    from ecdopt.landscapes import make_two_basin

    land = make_two_basin(epsilon)
    return BasinSetup(land, hessians(land.fn, land.minima), (10.0, -10.0), 16.0)


def _quadratic_two_basin(epsilon: float) -> BasinSetup:
    """Eq. 17's quadratic approximation: the lower of the two basins' quadratics (eq. 44)."""
    ref = _two_basin(epsilon)
    depths = [float(ref.landscape.fn(c[None])[0]) for c in ref.landscape.minima]
    land = make_quadratic_basins(ref.landscape.minima, ref.hessians, depths)
    return BasinSetup(land, ref.hessians, (10.0, -10.0), 16.0)


def _gaussian_ten(epsilon: float) -> BasinSetup:
    """Two basins in 10-D: spectra 0.8 (all) and (3.2, 3.2, 0.8, …): det ratio ≈ 14.3."""
    land = make_gaussian_basins([[0.8] * 10, [3.2, 3.2] + [0.8] * 8])
    start = (0.0,) * 10
    return BasinSetup(land, hessians(land.fn, land.minima), start, 6.0, shell_edge=1.5)


#: landscapes of the study: eq. 17, its quadratic approximation, and a 10-D pair of basins
LANDSCAPES: dict[str, Callable[[float], BasinSetup]] = {
    "two_basin": _two_basin,
    "quadratic_basins": _quadratic_two_basin,
    "gaussian10": _gaussian_ten,
}


# --------------------------------------------------------------------------------------------
# the counter
# --------------------------------------------------------------------------------------------


class OccupationCounter:
    """An ensemble callback counting, per particle and per block of steps, the steps spent
    inside each region (Θ − c_K)ᵀH_K(Θ − c_K) < r_j² (ellipses |η_K| < r_j).

    Steps ``k ≥ burn_in`` count; every ``block`` counted steps form one block. After the run,
    :meth:`fractions` is ``[blocks, M, K, R]``: the fraction of each block's steps inside.
    A partial last block is dropped.
    """

    def __init__(
        self,
        centers: Tensor,
        hessians: Tensor,
        radii: tuple[float, ...],
        *,
        burn_in: int,
        block: int,
        progress: Progress = _noop,
        every: int = 200,
    ) -> None:
        if block < 1 or burn_in < 0:
            raise ValueError(f"need block ≥ 1 and burn_in ≥ 0, got {block} and {burn_in}")
        self.centers, self.hessians = centers, hessians
        self.r2 = torch.tensor(radii, dtype=F64) ** 2
        self.burn_in, self.block = burn_in, block
        self.progress, self.every = progress, every
        self.blocks: list[Tensor] = []
        self._current: Tensor | None = None
        self._filled = 0

    def inside(self, theta: Tensor) -> Tensor:
        """``[M, K, R]`` bool: particle m inside region (K, r_j)."""
        d = theta[:, None, :] - self.centers.to(theta)[None]
        q = ((d.unsqueeze(-2) @ self.hessians.to(theta)).squeeze(-2) * d).sum(dim=-1)
        return q[:, :, None] < self.r2.to(theta)

    def __call__(self, k: int, theta: Tensor, value: Tensor) -> None:
        if k and k % self.every == 0:
            self.progress(self.every)
        if k < self.burn_in:
            return None
        hits = self.inside(theta).to(torch.int32)
        self._current = hits if self._current is None else self._current + hits
        self._filled += 1
        if self._filled == self.block:
            self.blocks.append(self._current)
            self._current, self._filled = None, 0
        return None

    def fractions(self) -> Tensor:
        """``[blocks, M, K, R]`` float64 fractions of each block's steps inside each region."""
        if not self.blocks:
            raise ValueError("no complete block was counted (run longer than burn_in + block)")
        return torch.stack(self.blocks).to(F64) / self.block


# --------------------------------------------------------------------------------------------
# predictions
# --------------------------------------------------------------------------------------------


def _shell_energy(dyn: Dynamics, v_edge: float) -> float:
    """E of a shell whose edge (largest reachable V) is ``v_edge``: BI E = V_edge, separable
    e^E = s·V_edge (then V < e^E/s), unit speed 1 (no edge)."""
    if dyn.hamiltonian == "separable":
        return math.log(dyn.kinetic_offset * v_edge)
    if dyn.hamiltonian == "unit_speed":
        return 1.0
    return v_edge


def _density(setup: BasinSetup, dyn: Dynamics, floor: float, energy: float):
    n = setup.landscape.dim

    def density(points: Tensor) -> Tensor:
        return marginal_density(
            setup.landscape.fn(points) - floor,
            energy,
            n,
            hamiltonian=dyn.hamiltonian,
            loss_power=dyn.loss_power,
            kinetic_offset=dyn.kinetic_offset,
        )

    return density


def predictions(
    setup: BasinSetup,
    dyn: Dynamics,
    floor: float,
    energy: float,
    radii: tuple[float, ...],
    points: int = 2000,
) -> dict:
    """The ratio Vol(I)/Vol(II) over |η| < r for the full potential (eq. 40 and its kin) and
    for each basin's quadratic approximation V_I + ½ηᵀη (eq. 47), and, in 2-D, the predicted
    fraction of time in each ellipse. Keys are the radii as text. ``points``: the resolution
    (grid points per side, radial points; the angular count follows)."""
    land = setup.landscape
    n = land.dim
    density = _density(setup, dyn, floor, energy)
    angular = max(36, points // 5) if n == 2 else max(60, points // 3)
    kw = dict(angular=angular, radial=points)
    out = {}
    for r in radii:
        full = [
            ellipsoid_integral(density, c, h, radius=r, **kw)
            for c, h in zip(land.minima, setup.hessians, strict=True)
        ]
        quad = []
        for i in range(2):
            c, h = land.minima[i], setup.hessians[i]
            depth = float(land.fn(c[None])[0]) - floor

            def quadratic(p: Tensor, c=c, h=h, depth=depth) -> Tensor:
                d = p - c
                v = depth + 0.5 * ((d @ h) * d).sum(dim=-1)
                return marginal_density(
                    v,
                    energy,
                    n,
                    hamiltonian=dyn.hamiltonian,
                    loss_power=dyn.loss_power,
                    kinetic_offset=dyn.kinetic_offset,
                )

            quad.append(ellipsoid_integral(quadratic, c, h, radius=r, **kw))
        entry = {"ratio_full": full[0] / full[1], "ratio_quadratic": quad[0] / quad[1]}
        if n == 2:
            box = 64.0 if dyn.hamiltonian == "unit_speed" else setup.box
            shares = occupation_shares(
                density, land.minima, setup.hessians, [-box] * 2, [box] * 2, radius=r, points=points
            )
            entry["fraction_basin1"], entry["fraction_basin2"] = shares.tolist()
        out[f"{r:g}"] = entry
    return out


# --------------------------------------------------------------------------------------------
# one run
# --------------------------------------------------------------------------------------------


def _first_call_without_gradient(fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """``fn``, except that its first evaluation has a zero gradient (same values).

    The first step then draws Π0 in an isotropic random direction (the optimizer's rule for a
    zero gradient) instead of along −∇V (eq. 14): with positions drawn from the measure, the
    ensemble starts on the predicted distribution in phase space, not only in Θ.
    """
    first = [True]

    def potential(theta: Tensor) -> Tensor:
        if first[0]:
            first[0] = False
            return fn(theta).detach() + 0.0 * theta.sum(dim=-1)
        return fn(theta)

    return potential


def _starts(
    setup: BasinSetup, dyn: Dynamics, cfg: OccupationConfig, floor: float, energy: float
) -> Tensor:
    """``[M, n]`` starting points: the paper's fixed start, or drawn from the measure (2-D)."""
    m, n = cfg.particles, setup.landscape.dim
    start = torch.tensor(setup.start, dtype=F64)
    if cfg.start == "paper" or n != 2:
        return start.expand(m, n).clone()
    gen = torch.Generator().manual_seed(cfg.seed)
    box = 2 * setup.box if dyn.hamiltonian == "unit_speed" else setup.box
    density = _density(setup, dyn, floor, energy)
    return sample_marginal(density, [-box] * 2, [box] * 2, m, points=2000, generator=gen)


def _edge(setup: BasinSetup, cfg: OccupationConfig, floor: float) -> float:
    """The largest reachable V: ``cfg.energy``, else the landscape's, else V at the start."""
    if cfg.energy is not None:
        return cfg.energy
    if setup.shell_edge is not None:
        return setup.shell_edge
    return float(setup.landscape.fn(torch.tensor(setup.start, dtype=F64)[None])[0]) - floor


def _extra_energy(dyn: Dynamics, v0: Tensor, energy: float) -> Tensor:
    """δE per particle that puts every particle on the shell of energy ``energy``."""
    if dyn.hamiltonian == "separable":
        return (math.exp(energy) / v0 - dyn.kinetic_offset).clamp(min=0)
    if dyn.hamiltonian == "unit_speed":
        return torch.zeros_like(v0)
    return (energy - v0).clamp(min=0)


def run_occupation(
    setup: BasinSetup, dyn: Dynamics, dt: float, cfg: OccupationConfig, progress: Progress = _noop
) -> dict:
    """Simulate ``cfg.particles`` particles with ``dyn`` at step ``dt``; the measured fractions,
    ratios (with intervals), the running ratio, and the run's book-keeping."""
    land = setup.landscape
    floor = land.minimum_value - cfg.v_min
    energy = _shell_energy(dyn, _edge(setup, cfg, floor))
    theta0 = _starts(setup, dyn, cfg, floor, energy)
    v0 = land.fn(theta0) - floor
    burn_in, block = round(cfg.burn_in / dt), max(1, round(cfg.block / dt))
    blocks = max(1, round(cfg.time / (block * dt)))
    counter = OccupationCounter(
        land.minima, setup.hessians, cfg.radii, burn_in=burn_in, block=block, progress=progress
    )
    steps = burn_in + blocks * block
    fn = land.fn if cfg.start == "paper" else _first_call_without_gradient(land.fn)
    t0 = time.perf_counter()
    res = simulate(
        fn,
        theta0,
        steps,
        lr=dt,
        loss_floor=floor,
        extra_energy=_extra_energy(dyn, v0, energy),
        seed=cfg.seed,
        callback=counter,
        off_shell=cfg.off_shell,
        **dyn.options(dt),
    )
    seconds = time.perf_counter() - t0
    progress(steps % counter.every)
    occ = counter.fractions()  # [B, M, 2, R]
    out = {
        "dynamics": dyn.name,
        "dt": dt,
        "particles": cfg.particles,
        "steps": steps,
        "burn_in_steps": burn_in,
        "measured_time": blocks * block * dt,
        "energy": energy,
        "seconds": round(seconds, 1),
        "bounces_per_time": float(res.bounces.double().mean()) / (steps * dt)
        if res.bounces is not None
        else None,
        "stopped": int(res.stopped.sum()),
        "regions": {},
    }
    off = getattr(res, "off_shell_steps", None)
    if off is not None:
        out["off_shell_steps"] = int(off.sum())
    for j, r in enumerate(cfg.radii):
        out["regions"][f"{r:g}"] = _summarise(occ[..., j], block * dt, cfg.confidence)
    return out


def _summarise(occ: Tensor, block_time: float, confidence: float) -> dict:
    """Fractions, the ratio and the running ratio from ``[B, M, 2]`` block fractions."""
    per = occ.mean(dim=0)  # [M, 2]: each particle's time average
    f1, f2 = (mean_interval(per[:, i], confidence) for i in range(2))
    summary = {
        "fraction_basin1": f1.as_dict(),
        "fraction_basin2": f2.as_dict(),
        "ratio": ratio_of_means_interval(per[:, 0], per[:, 1], confidence).as_dict()
        if float(per[:, 1].mean()) > 0
        else None,
        "autocorrelation_time": [
            _correlation_time(per[:, i], occ.shape[0] * block_time) for i in range(2)
        ],
    }
    cum = occ.cumsum(dim=0) / torch.arange(1, occ.shape[0] + 1, dtype=F64)[:, None, None]
    running = {"time": [], "ratio": [], "low": [], "high": []}
    for b in range(occ.shape[0]):
        a, c = cum[b, :, 0], cum[b, :, 1]
        if float(c.mean()) <= 0:
            continue
        iv = ratio_of_means_interval(a, c, confidence)
        running["time"].append((b + 1) * block_time)
        running["ratio"].append(iv.value)
        running["low"].append(iv.low)
        running["high"].append(iv.high)
    summary["running"] = running
    return summary


def _correlation_time(per_particle: Tensor, duration: float) -> float | None:
    """Integrated autocorrelation time (time units) of a 0/1 indicator from the spread of the
    particles' time averages: var(mean over T) ≈ 2τ·p(1 − p)/T."""
    p = float(per_particle.mean())
    if p <= 0 or p >= 1 or per_particle.numel() < 2:
        return None
    return duration * float(per_particle.var(unbiased=True)) / (2 * p * (1 - p))


# --------------------------------------------------------------------------------------------
# the study
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OccupationConfig:
    """What ``ecdopt synthetic occupation`` runs (times in units of t = steps·Δt)."""

    dynamics: tuple[str, ...] = ("flow", "bbi", "every-7.5", "every-1")
    dts: tuple[float, ...] = (0.04, 0.02, 0.01)
    landscape: str = "two_basin"
    particles: int = 4000
    time: float = 300.0
    burn_in: float = 20.0
    block: float = 2.0
    v_min: float = 1e-3
    energy: float | None = None
    epsilon: float = 2.75e-6
    start: str = "stationary"
    radii: tuple[float, ...] = (1.0, 0.5)
    confidence: float = 0.95
    seed: int = 0
    prediction_points: int = 2000
    off_shell: str = "exact"  # Algorithm 1 literally (BI never leaves V ≤ E here anyway)

    def validate(self) -> None:
        """``ValueError`` naming the first bad field."""
        unknown = [d for d in self.dynamics if d not in DYNAMICS]
        if unknown or not self.dynamics:
            raise ValueError(f"dynamics: unknown {unknown}; choose from {', '.join(DYNAMICS)}")
        if self.landscape not in LANDSCAPES:
            raise ValueError(f"landscape must be one of {', '.join(LANDSCAPES)}")
        if self.start not in ("stationary", "paper"):
            raise ValueError("start must be 'stationary' or 'paper'")
        for name in ("particles", "time", "block", "v_min"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.particles < 2:
            raise ValueError("particles must be ≥ 2 (the error bars are across particles)")
        if self.burn_in < 0 or not self.dts or any(dt <= 0 for dt in self.dts):
            raise ValueError("burn_in must be ≥ 0 and every Δt > 0")


def _extrapolate(runs: list[dict], radius: str) -> dict | None:
    """The ratio and fractions extrapolated linearly to Δt → 0 (≥ 2 step sizes)."""
    if len({r["dt"] for r in runs}) < 2:
        return None
    out = {}
    for key in ("ratio", "fraction_basin1", "fraction_basin2"):
        pts = [(r["dt"], r["regions"][radius][key]) for r in runs]
        pts = [(dt, iv) for dt, iv in pts if iv is not None and (iv["stderr"] or 0) > 0]
        if len({dt for dt, _ in pts}) < 2:
            continue
        x = [p[0] for p in pts]
        y = [p[1]["value"] for p in pts]
        se = [p[1]["stderr"] for p in pts]
        intercept, slope = linear_extrapolation(x, y, se)
        out[key] = {"at_zero": intercept.as_dict(), "slope": slope.as_dict()}
    return out


def occupation_protocol(
    cfg: OccupationConfig,
    progress: Progress = _noop,
    on_result: Callable[[dict], None] | None = None,
) -> dict:
    """Every dynamics × Δt of ``cfg``; ``on_result(summary)`` after each finished run (for
    incremental writes). Returns the summary: predictions, runs, Δt → 0 extrapolations."""
    cfg.validate()
    setup = LANDSCAPES[cfg.landscape](cfg.epsilon)
    land = setup.landscape
    floor = land.minimum_value - cfg.v_min
    summary: dict = {
        "landscape": cfg.landscape,
        "dim": land.dim,
        "protocol": {
            "particles": cfg.particles,
            "time": cfg.time,
            "burn_in": cfg.burn_in,
            "block": cfg.block,
            "v_min": cfg.v_min,
            "start": cfg.start,
            "shell_edge": _edge(setup, cfg, floor),
            "radii": list(cfg.radii),
            "confidence": cfg.confidence,
            "seed": cfg.seed,
        },
        "dynamics": {},
    }
    for name in cfg.dynamics:
        dyn = DYNAMICS[name]
        energy = _shell_energy(dyn, summary["protocol"]["shell_edge"])
        entry = {
            "description": dyn.description,
            "options": {k: v for k, v in dyn.options(1.0).items() if k != "n_bounces"},
            "predicted": predictions(setup, dyn, floor, energy, cfg.radii, cfg.prediction_points),
            "runs": [],
        }
        summary["dynamics"][name] = entry
        for dt in cfg.dts:
            entry["runs"].append(run_occupation(setup, dyn, dt, cfg, progress))
            entry["extrapolated"] = {
                f"{r:g}": _extrapolate(entry["runs"], f"{r:g}") for r in cfg.radii
            }
            if on_result is not None:
                on_result(summary)
    return summary


def smoke_config(cfg: OccupationConfig) -> OccupationConfig:
    """Seconds-sized version of ``cfg`` (tests)."""
    return replace(
        cfg, particles=16, time=4.0, burn_in=1.0, block=1.0, dts=cfg.dts[:2], prediction_points=300
    )
