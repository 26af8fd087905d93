"""Phase-space volumes of Born-Infeld ECD and the basin shares they predict (§3.1, App. A.3).

For a mixing system the chance of finding the particle in a region of phase space is the region's
share of the energy shell's volume. For Born-Infeld, H = sqrt(V(V + Π²)) (eq. 4), the volume is

    Vol(M) = ∫ dⁿπ dⁿθ δ(H − E)                                                 (eq. 9 / 38)
           = Ω_n ∫ dⁿθ (E/V)·(E²/V − V)^{(n−2)/2},   Ω_n = 2π^{n/2}/Γ(n/2)     (eq. 40)

over the region 0 < V < E. Near a minimum, V ≈ V_I + ½Σ m_Ii²(θ_i − θ_Ii)² (eq. 44); with
η_I = m_I·(θ − θ_I) (eq. 45) and V ≪ E, the basin |η_I| < 1 holds

    Vol(M_I) = Ω_n² E^{n−1}/Π_i m_Ii · V_I^{−n/2}/n · ₂F₁(n/2, n/2; n/2+1; −1/(2V_I))   (eq. 47)

which grows like log(1/V_I) as V_I → 0 (eq. 10): the shares of equally deep minima are then
∝ 1/Π_i m_Ii = det(H_I)^{−1/2}.

Other ECD Hamiltonians have their own measures (:func:`marginal_density`): the separable
Hamiltonian of ECDSep, H = log V + log(s + Π²) with V = F_eff^η, gives (e^E/V)(e^E/V − s)^{(n−2)/2}
(∝ F_eff^{−ηn/2} when s ≪ e^E/V), and unit-speed ECD the measure ∝ F_eff^{−ηn/2}.

Functions here: :func:`phase_space_density` (eq. 40's integrand), :func:`marginal_density` (the
same for every Hamiltonian), :func:`phase_space_volume` (eq. 40 by a midpoint rule on a grid,
n ≤ 3), :func:`ellipsoid_integral` and :func:`basin_volume_numeric` (eq. 40 over the ellipsoid
|η_I| < r with the full V, any n), :func:`occupation_shares` (the predicted fraction of time in
each ellipse, n = 2), :func:`sample_marginal` (positions drawn from the measure, n = 2),
:func:`hessians` (``torch.func.hessian``), :func:`basin_log_volume` (eq. 47),
:func:`basin_shares` / :func:`predicted_ratio` (eq. 10/47), and the non-relativistic
counterpart :func:`newtonian_density` (eq. 41).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "MEASURE_HAMILTONIANS",
    "basin_log_volume",
    "basin_radial_integral",
    "basin_shares",
    "basin_volume_numeric",
    "ellipsoid_integral",
    "hessians",
    "hyp2f1_basin",
    "in_basin",
    "log_sphere_area",
    "marginal_density",
    "newtonian_density",
    "occupation_shares",
    "phase_space_density",
    "phase_space_volume",
    "predicted_ratio",
    "sample_marginal",
]

Potential = Callable[[Tensor], Tensor]
Density = Callable[[Tensor], Tensor]

#: the Hamiltonians :func:`marginal_density` knows
MEASURE_HAMILTONIANS = ("born_infeld", "separable", "unit_speed", "inverse_mass")


def log_sphere_area(n: int) -> float:
    """log Ω_n, Ω_n = 2π^{n/2}/Γ(n/2): the area of the unit sphere S^{n−1} (eq. 39)."""
    return math.log(2.0) + 0.5 * n * math.log(math.pi) - math.lgamma(0.5 * n)


def phase_space_density(potential: Tensor, energy: float, n: int) -> Tensor:
    """Eq. 40's integrand without Ω_n: (E/V)(E²/V − V)^{(n−2)/2} where 0 < V < E, else 0."""
    v = potential
    inside = (v > 0) & (v < energy)
    safe = torch.where(inside, v, torch.ones_like(v) * energy * 0.5)
    dens = (energy / safe) * (energy * energy / safe - safe) ** (0.5 * (n - 2))
    return torch.where(inside, dens, torch.zeros_like(dens))


def newtonian_density(potential: Tensor, energy: float, n: int) -> Tensor:
    """Eq. 41's integrand (frictionless non-relativistic momentum, H = ½Π² + V): (E − V)^{(n−2)/2}.

    Up to the constant, where V < E; zero elsewhere. Not dominated by small V, unlike eq. 40.
    """
    inside = potential < energy
    gap = torch.where(inside, energy - potential, torch.ones_like(potential))
    return torch.where(inside, gap ** (0.5 * (n - 2)), torch.zeros_like(potential))


def marginal_density(
    effective: Tensor,
    energy: float,
    n: int,
    *,
    hamiltonian: str = "born_infeld",
    loss_power: float = 1.0,
    kinetic_offset: float = 1.0,
) -> Tensor:
    """The density in parameter space of the microcanonical measure ∫dⁿΠ δ(H − E), over Ω_n.

    ``effective`` is F_eff = F − F0 (> 0 where the particle can be); V = F_eff^η with η =
    ``loss_power``. Writing p = |Π| on the shell, the density is p^{n−1}/|∂H/∂p|:

    - ``born_infeld`` (eq. 40): (E/V)(E²/V − V)^{(n−2)/2} where V < E;
    - ``separable`` (ECDSep, H = log V + log(s + Π²), s = ``kinetic_offset``):
      ½(e^E/V)(e^E/V − s)^{(n−2)/2} where V < e^E/s;
    - ``inverse_mass`` (H = ½VΠ²): (2E/V)^{(n−2)/2}/V;
    - ``unit_speed`` (|Θ̇| = 1, no energy): F_eff^{−ηn/2}, the measure its force is built for.

    Zero where F_eff ≤ 0 or the shell is empty.
    """
    if hamiltonian not in MEASURE_HAMILTONIANS:
        raise ValueError(f"hamiltonian must be one of {MEASURE_HAMILTONIANS}, got {hamiltonian!r}")
    f = effective
    positive = f > 0
    safe_f = torch.where(positive, f, torch.ones_like(f))
    if hamiltonian == "unit_speed":
        return torch.where(positive, safe_f ** (-0.5 * loss_power * n), torch.zeros_like(f))
    v = safe_f**loss_power
    if hamiltonian == "born_infeld":
        return torch.where(positive, phase_space_density(v, energy, n), torch.zeros_like(f))
    if hamiltonian == "separable":
        scale = math.exp(energy) / v  # p² + s
        inside = positive & (scale > kinetic_offset)
        p_sq = torch.where(inside, scale - kinetic_offset, torch.ones_like(f))
        dens = 0.5 * scale * p_sq ** (0.5 * (n - 2))
        return torch.where(inside, dens, torch.zeros_like(f))
    dens = (2.0 * energy / v) ** (0.5 * (n - 2)) / v  # inverse_mass
    return torch.where(positive, dens, torch.zeros_like(f))


def sample_marginal(
    density: Density,
    lo: Sequence[float],
    hi: Sequence[float],
    count: int,
    *,
    points: int = 2000,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``count`` positions ``[count, 2]`` drawn from a 2-D density over the box [lo, hi].

    The box is cut into ``points``² cells; a cell is drawn with probability ∝ density at its
    midpoint × area, then a point uniformly inside it. ``density`` maps ``[N, 2]`` → ``[N]``
    (≥ 0). The cells should be small next to the scale on which the density changes.
    """
    lo_t = torch.as_tensor(lo, dtype=torch.float64)
    hi_t = torch.as_tensor(hi, dtype=torch.float64)
    if lo_t.numel() != 2 or hi_t.numel() != 2:
        raise ValueError("sample_marginal is two-dimensional: lo and hi need 2 numbers")
    mesh, _ = _grid(lo_t, hi_t, points)
    with torch.no_grad():
        weight = density(mesh).clamp(min=0)
    if not bool(weight.sum() > 0):
        raise ValueError("the density is zero everywhere on the grid")
    idx = torch.multinomial(weight / weight.sum(), count, replacement=True, generator=generator)
    cell = (hi_t - lo_t) / points
    jitter = torch.rand(count, 2, generator=generator, dtype=torch.float64) - 0.5
    return mesh[idx] + jitter * cell


def _grid(lo: Tensor, hi: Tensor, points: int) -> tuple[Tensor, float]:
    """Midpoints of a regular grid over the box [lo, hi] (float64) and the cell volume."""
    n = lo.numel()
    axes = [
        lo[i] + (torch.arange(points, dtype=torch.float64) + 0.5) * (hi[i] - lo[i]) / points
        for i in range(n)
    ]
    mesh = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, n)
    cell = float(torch.prod((hi - lo) / points))
    return mesh, cell


def phase_space_volume(
    potential: Potential,
    energy: float,
    lo: Tensor | list[float],
    hi: Tensor | list[float],
    *,
    points: int = 1000,
    region: Callable[[Tensor], Tensor] | None = None,
    chunk: int = 1 << 20,
) -> float:
    """Eq. 40 by the midpoint rule on a ``points``ⁿ grid over the box [lo, hi] (n ≤ 3).

    ``potential`` gives V (already shifted by the floor) for ``[N, n]`` points; ``region``
    (optional) a bool mask restricting the integral. Includes the factor Ω_n.
    """
    lo_t = torch.as_tensor(lo, dtype=torch.float64)
    hi_t = torch.as_tensor(hi, dtype=torch.float64)
    n = lo_t.numel()
    if n > 3:
        raise ValueError("grid integration is for low dimension (n ≤ 3)")
    mesh, cell = _grid(lo_t, hi_t, points)
    total = 0.0
    for start in range(0, mesh.shape[0], chunk):
        pts = mesh[start : start + chunk]
        with torch.no_grad():
            dens = phase_space_density(potential(pts), energy, n)
            if region is not None:
                dens = torch.where(region(pts), dens, torch.zeros_like(dens))
        total += float(dens.sum())
    return math.exp(log_sphere_area(n)) * total * cell


def hessians(potential: Potential, minima: Tensor) -> Tensor:
    """H_I = ∂²V at each minimum (``[K, n] → [K, n, n]``), with ``torch.func.hessian``."""
    pts = torch.as_tensor(minima, dtype=torch.float64)

    def scalar(x: Tensor) -> Tensor:
        return potential(x[None])[0]

    return torch.stack([torch.func.hessian(scalar)(p) for p in pts])


def in_basin(theta: Tensor, center: Tensor, hessian: Tensor) -> Tensor:
    """Whether |η_I| < 1 with η_I = sqrt(eig H_I)·(Θ − c_I) (App. A.3): (Θ−c)ᵀH(Θ−c) < 1."""
    d = theta - center.to(theta.dtype)
    # two-operand products: a three-operand einsum re-plans its contraction on every call
    return ((d @ hessian.to(theta.dtype)) * d).sum(dim=-1) < 1.0


def basin_radial_integral(n: int, v_min: float, points: int = 20001) -> float:
    """∫₀¹ dη η^{n−1}(V_I + ½η²)^{−n/2} (the last factor of eq. 46), for V_I > 0.

    Trapezoid rule in log η, which resolves the peak at η ~ sqrt(V_I) for any V_I.
    """
    if v_min <= 0:
        raise ValueError("the basin integral needs V_I > 0 (it diverges like log(1/V_I))")
    s_lo = math.log(math.sqrt(v_min)) - 40.0 / n
    s = np.linspace(s_lo, 0.0, points)
    eta = np.exp(s)
    f = eta**n * (v_min + 0.5 * eta * eta) ** (-0.5 * n)
    return float(np.trapezoid(f, s))


def hyp2f1_basin(n: int, z: float) -> float:
    """₂F₁(n/2, n/2; n/2 + 1; −z) for z > 0, as it appears in eq. 47 (z = 1/(2V_I))."""
    v = 1.0 / (2.0 * z)
    return n * v ** (0.5 * n) * basin_radial_integral(n, v)


def basin_log_volume(hessian: Tensor, energy: float, v_min: float) -> float:
    """log Vol(M_I) of eq. 47 for a basin with Hessian H_I (m_Ii² = eig H_I) and depth V_I > 0."""
    eig = torch.linalg.eigvalsh(torch.as_tensor(hessian, dtype=torch.float64))
    if bool((eig <= 0).any()):
        raise ValueError("the Hessian at a minimum must be positive definite")
    n = eig.numel()
    log_prod_m = 0.5 * float(torch.log(eig).sum())
    return (
        2 * log_sphere_area(n)
        + (n - 1) * math.log(energy)
        - log_prod_m
        + math.log(basin_radial_integral(n, v_min))
    )


def basin_shares(
    potential: Potential,
    minima: Tensor,
    *,
    energy: float = 1.0,
    v_min: float | Tensor | None = None,
) -> Tensor:
    """Predicted share of each basin for a mixing BI system (eq. 10, or eq. 47 with V_I > 0).

    ``v_min`` = V_I at each minimum (scalar or ``[K]``); None or ≤ 0 takes the V_I → 0 limit of
    eq. 10, where the common log(1/V_I) cancels and shares ∝ 1/Π_i m_Ii = det(H_I)^{−1/2}.
    """
    hs = hessians(potential, minima)
    k = hs.shape[0]
    if v_min is None or bool((torch.as_tensor(v_min) <= 0).any()):
        logs = torch.tensor([-0.5 * float(torch.logdet(h)) for h in hs], dtype=torch.float64)
    else:
        vm = torch.as_tensor(v_min, dtype=torch.float64).expand(k)
        logs = torch.tensor(
            [basin_log_volume(h, energy, float(v)) for h, v in zip(hs, vm, strict=True)],
            dtype=torch.float64,
        )
    return torch.softmax(logs, dim=0)


def predicted_ratio(
    potential: Potential,
    minima: Tensor,
    *,
    energy: float = 1.0,
    v_min: float | None = None,
) -> float:
    """Vol(M_1)/Vol(M_2) (eq. 18): the ratio of the first two basins' shares."""
    shares = basin_shares(potential, minima, energy=energy, v_min=v_min)
    return float(shares[0] / shares[1])


def _directions(n: int, count: int, seed: int) -> Tensor:
    """Unit vectors for an angular average: the circle's midpoints for n = 2, else ``count``
    Gaussian directions (seeded) with their antipodes."""
    if n == 2:
        phi = (torch.arange(count, dtype=torch.float64) + 0.5) * (2 * math.pi / count)
        return torch.stack([torch.cos(phi), torch.sin(phi)], dim=-1)
    gen = torch.Generator().manual_seed(seed)
    xi = torch.randn((count + 1) // 2, n, generator=gen, dtype=torch.float64)
    xi = xi / torch.linalg.vector_norm(xi, dim=-1, keepdim=True)
    return torch.cat([xi, -xi])


def ellipsoid_integral(
    density: Density,
    center: Tensor,
    hessian: Tensor,
    *,
    radius: float = 1.0,
    radial: int = 2000,
    angular: int = 360,
    seed: int = 0,
    chunk: int = 1 << 20,
) -> float:
    """∫ density(Θ) dⁿΘ over the ellipsoid (Θ − c)ᵀH(Θ − c) < r², i.e. |η| < r (eq. 45).

    Θ = c + U diag(1/m) η with H = U diag(m²) Uᵀ and η = ρ·ω: the radius ρ on a log grid
    (trapezoid rule, resolving the peak at ρ ~ sqrt(V_I) of eq. 40), the direction ω averaged
    over the circle's midpoints (n = 2) or ``angular`` random directions with their antipodes
    (n > 2, seeded). ``density`` maps ``[N, n]`` → ``[N]``.
    """
    c = torch.as_tensor(center, dtype=torch.float64)
    n = c.numel()
    eig, u = torch.linalg.eigh(torch.as_tensor(hessian, dtype=torch.float64))
    if bool((eig <= 0).any()):
        raise ValueError("the Hessian must be positive definite")
    m = eig.sqrt()
    s = torch.linspace(math.log(1e-9), 0.0, radial, dtype=torch.float64) + math.log(radius)
    r = torch.exp(s)
    omega = _directions(n, angular, seed)
    mean = torch.empty(radial, dtype=torch.float64)
    per = max(1, chunk // omega.shape[0])
    with torch.no_grad():
        for i in range(0, radial, per):
            eta = r[i : i + per, None, None] * omega[None]
            pts = c + (eta / m) @ u.T
            mean[i : i + per] = density(pts.reshape(-1, n)).reshape(eta.shape[:2]).mean(dim=1)
    integral = float(torch.trapezoid(r**n * mean, s))  # ∫ρ^{n−1}dρ = ∫ρⁿ d log ρ
    return math.exp(log_sphere_area(n)) * integral / float(m.prod())


def basin_volume_numeric(
    potential: Potential,
    center: Tensor,
    hessian: Tensor,
    energy: float,
    *,
    radius: float = 1.0,
    radial: int = 2000,
    angular: int = 360,
) -> float:
    """Eq. 40 integrated over the ellipsoid |η_I| < r of a basin, with the full V (not eq. 44).

    ``potential`` gives V (already shifted by the floor) for ``[N, n]`` points. Includes the
    momentum sphere's Ω_n. Any n (see :func:`ellipsoid_integral`).
    """
    n = torch.as_tensor(center).numel()

    def density(pts: Tensor) -> Tensor:
        return phase_space_density(potential(pts), energy, n)

    inner = ellipsoid_integral(
        density, center, hessian, radius=radius, radial=radial, angular=angular
    )
    return math.exp(log_sphere_area(n)) * inner


def occupation_shares(
    density: Density,
    centers: Tensor,
    hessians: Tensor,
    lo: Sequence[float],
    hi: Sequence[float],
    *,
    radius: float = 1.0,
    points: int = 2000,
) -> Tensor:
    """The predicted fraction of time in each ellipse |η_I| < r for a mixing system (n = 2).

    The ellipses by :func:`ellipsoid_integral`, the rest of the box [lo, hi] by a midpoint rule
    on a ``points``² grid; the box must hold every point where ``density`` > 0. Returns ``[K]``.
    """
    c = torch.as_tensor(centers, dtype=torch.float64)
    h = torch.as_tensor(hessians, dtype=torch.float64)
    if c.shape[-1] != 2:
        raise ValueError("occupation_shares is two-dimensional")
    inside = torch.tensor(
        [ellipsoid_integral(density, c[i], h[i], radius=radius) for i in range(c.shape[0])],
        dtype=torch.float64,
    )
    f64 = dict(dtype=torch.float64)
    mesh, cell = _grid(torch.as_tensor(lo, **f64), torch.as_tensor(hi, **f64), points)
    with torch.no_grad():
        outside = torch.ones(mesh.shape[0], dtype=torch.bool)
        for i in range(c.shape[0]):
            outside &= ~in_basin(mesh, c[i], h[i] / radius**2)
        rest = float(torch.where(outside, density(mesh), torch.zeros(())).sum()) * cell
    return inside / (float(inside.sum()) + rest)
