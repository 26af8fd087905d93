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

Functions here: :func:`phase_space_density` (eq. 40's integrand), :func:`phase_space_volume`
(eq. 40 by a midpoint rule on a grid, n ≤ 3), :func:`basin_volume_numeric` (eq. 40 over the
ellipse |η_I| < 1, n = 2, polar coordinates), :func:`hessians` (``torch.func.hessian``),
:func:`basin_log_volume` (eq. 47), :func:`basin_shares` / :func:`predicted_ratio` (eq. 10/47),
and the non-relativistic counterpart :func:`newtonian_density` (eq. 41).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "basin_log_volume",
    "basin_radial_integral",
    "basin_shares",
    "basin_volume_numeric",
    "hessians",
    "hyp2f1_basin",
    "in_basin",
    "log_sphere_area",
    "newtonian_density",
    "phase_space_density",
    "phase_space_volume",
    "predicted_ratio",
]

Potential = Callable[[Tensor], Tensor]


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
    return torch.einsum("...i,ij,...j->...", d, hessian.to(theta.dtype), d) < 1.0


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


def basin_volume_numeric(
    potential: Potential,
    center: Tensor,
    hessian: Tensor,
    energy: float,
    *,
    radial: int = 2000,
    angular: int = 360,
) -> float:
    """Eq. 40 integrated over the ellipse |η_I| < 1 of a 2-D basin, with the full V (not eq. 44).

    Θ = c + U diag(1/m) η with H = U diag(m²) Uᵀ; polar η = r(cos φ, sin φ), log-spaced r.
    ``potential`` gives V (already shifted by the floor). Includes Ω_2 = 2π.
    """
    c = torch.as_tensor(center, dtype=torch.float64)
    if c.numel() != 2:
        raise ValueError("basin_volume_numeric is two-dimensional")
    eig, u = torch.linalg.eigh(torch.as_tensor(hessian, dtype=torch.float64))
    m = eig.sqrt()
    s = torch.linspace(math.log(1e-9), 0.0, radial, dtype=torch.float64)
    r = torch.exp(s)
    phi = (torch.arange(angular, dtype=torch.float64) + 0.5) * (2 * math.pi / angular)
    eta = torch.stack([torch.cos(phi), torch.sin(phi)], dim=-1)  # [A, 2]
    pts = c + (r[:, None, None] * eta[None]) / m @ u.T  # [R, A, 2]
    with torch.no_grad():
        dens = phase_space_density(potential(pts.reshape(-1, 2)), energy, 2).reshape(radial, -1)
    radial_f = dens.mean(dim=1) * (2 * math.pi) * r * r  # ∫dφ · r dr = ∫dφ · r² ds
    integral = float(torch.trapezoid(radial_f, s))
    return math.exp(log_sphere_area(2)) * integral / float(m.prod())
