"""The nonlinear Poisson problem of the paper's App. B and its radial reference solutions.

Problem (eq. 53) on the unit ball Ω ⊂ R^d::

    Δu + u² = f   in Ω,        u = f0   on ∂Ω,        with the paper's sign Δ = −Σ_i ∂²/∂x_i².

The problem is *manufactured* (App. B): one picks a radial solution ``u(x) = h(|x|²)`` and reads off
``f`` and ``f0``. Writing ``s = r² = |x|²``, the ordinary Laplacian of a radial ``u = h(s)`` is

    Σ_i ∂²u/∂x_i² = 2 d h'(s) + 4 s h''(s),

which is regular at the origin, so (paper sign)

    f(x) = −(2 d h'(s) + 4 s h''(s)) + h(s)²,        f0 = h(1).

For ``h(s) = sin²(20 s)`` and ``d = 2`` this is eq. 55 (``f0 = sin²(20) ≈ 0.833469``) and ``u`` is
eq. 54. The profile ``h`` and the dimension ``d`` are parameters: any smooth profile works, its
derivatives are taken by autograd unless the profile provides them in closed form.

Reference solutions (Fig. 7) come from the radial shooting method: a radial solution solves the
ODE ``u'' + (d−1)/r · u' = u² − f(r)`` with ``u'(0) = 0`` (regular at the origin); integrating from
``u(0) = u0`` and finding the roots of ``u0 ↦ u(1; u0) − f0`` gives every radial solution.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.integrate import solve_ivp
from scipy.optimize import brentq

Tensor = torch.Tensor

__all__ = [
    "RadialProblem",
    "RadialSolution",
    "SinSquaredProfile",
    "blowup_radius",
    "bracket_bound",
    "find_radial_solutions",
    "paper_source_eq55",
    "shoot",
]


# --------------------------------------------------------------------------------------------
# radial profiles
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SinSquaredProfile:
    """``h(s) = c + sin²(a s)`` with ``s = r²``: the paper's eq. 54 for ``a = 20``, ``c = 0``.

    The shift ``c`` moves the problem along a one-parameter family whose two radial solutions
    trade places as the attractor of gradient dynamics (the ``twin`` preset, docs/pde.md).
    """

    a: float = 20.0
    shift: float = 0.0  # c

    def __call__(self, s: Tensor) -> Tensor:
        return self.shift + torch.sin(self.a * s) ** 2

    def derivatives(self, s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Closed-form ``(h, h', h'')``: ``h' = a sin(2as)``, ``h'' = 2a² cos(2as)``."""
        a = self.a
        return (
            self.shift + torch.sin(a * s) ** 2,
            a * torch.sin(2 * a * s),
            2 * a * a * torch.cos(2 * a * s),
        )


def profile_derivatives(profile: Callable[[Tensor], Tensor], s: Tensor) -> tuple[Tensor, ...]:
    """``(h(s), h'(s), h''(s))`` of an elementwise profile, by autograd when not in closed form."""
    closed = getattr(profile, "derivatives", None)
    if closed is not None:
        return closed(s)
    with torch.enable_grad():
        s = s.detach().requires_grad_(True)
        h = profile(s) + 0 * s  # the ``0 * s`` keeps a constant profile differentiable
        (dh,) = torch.autograd.grad(h.sum(), s, create_graph=True)
        if dh.requires_grad:
            (d2h,) = torch.autograd.grad(dh.sum(), s, materialize_grads=True)
        else:  # a profile linear in s
            d2h = torch.zeros_like(s)
    return h.detach(), dh.detach(), d2h


def paper_source_eq55(x: Tensor) -> Tensor:
    """The paper's eq. 55, written out literally (d = 2): f for ``u = sin²(20(x1² + x2²))``."""
    s = (x**2).sum(-1)
    return (
        3 - 4 * (1 + 6400 * s) * torch.cos(40 * s) + torch.cos(80 * s) - 640 * torch.sin(40 * s)
    ) / 8


# --------------------------------------------------------------------------------------------
# the problem
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RadialProblem:
    """Eq. 53 on the unit ball of R^``dim`` with the manufactured radial solution ``h(|x|²)``."""

    profile: Callable[[Tensor], Tensor] = field(default_factory=SinSquaredProfile)
    dim: int = 2

    def exact(self, x: Tensor) -> Tensor:
        """The manufactured solution ``u(x) = h(|x|²)`` (eq. 54 for the paper's profile)."""
        return self.profile((x**2).sum(-1))

    def source_of_s(self, s: Tensor) -> Tensor:
        """``f`` as a function of ``s = r²``: ``−(2 d h' + 4 s h'') + h²`` (eq. 55 in general)."""
        h, dh, d2h = profile_derivatives(self.profile, s)
        return -(2 * self.dim * dh + 4 * s * d2h) + h * h

    def source(self, x: Tensor) -> Tensor:
        """``f(x)`` of eq. 53 at points ``x`` of shape ``(..., d)``."""
        return self.source_of_s((x**2).sum(-1))

    @property
    def boundary_value(self) -> float:
        """``f0 = h(1)`` (0.833469 for the paper's problem)."""
        return float(self.profile(torch.tensor(1.0, dtype=torch.float64)))

    def source_radial(self, r: np.ndarray) -> np.ndarray:
        """``f(r)`` on a numpy array of radii (float64), for the shooting ODE."""
        s = torch.as_tensor(np.asarray(r, dtype=np.float64) ** 2)
        return self.source_of_s(s).numpy()

    def max_abs_source(self, n: int = 20001) -> float:
        """``max |f|`` on the ball, sampled on a fine radial grid (enters the shooting bracket)."""
        return float(np.max(np.abs(self.source_radial(np.linspace(0.0, 1.0, n)))))


# --------------------------------------------------------------------------------------------
# the shooting method
# --------------------------------------------------------------------------------------------

_R0 = 1e-6  # start radius: the series u = u0 + c r²/2 is exact to O(r⁴) there


def _start(problem: RadialProblem, u0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Regular start at ``r0``: ``u''(0) = (u0² − f(0)) / d`` from ``d·u''(0) = u0² − f(0)``."""
    f0 = float(problem.source_radial(np.array([0.0]))[0])
    c = (u0 * u0 - f0) / problem.dim
    return u0 + 0.5 * c * _R0**2, c * _R0


def _rhs(problem: RadialProblem, cap: float) -> Callable[[float, np.ndarray], np.ndarray]:
    """Vectorised radial ODE ``u'' = −(d−1)/r u' + u² − f(r)`` for ``y = [u..., u'...]``.

    A component with ``u > cap`` and ``u' > 0`` is frozen: then ``(r^{d−1} u')' = r^{d−1}(u² − f)
    > 0`` (``cap² > max|f|``), so ``u`` keeps growing and ``u(1) > cap``: its sign is settled and
    its finite-radius blow-up must not drive the shared step size.
    """
    d = problem.dim

    def rhs(r: float, y: np.ndarray) -> np.ndarray:
        n = y.shape[0] // 2
        u, v = y[:n], y[n:]
        f = problem.source_radial(np.array([r]))[0]
        du = v.copy()
        dv = -(d - 1) / r * v + u * u - f
        frozen = (u > cap) & (v > 0)
        du[frozen] = 0.0
        dv[frozen] = 0.0
        return np.concatenate([du, dv])

    return rhs


def _cap(problem: RadialProblem) -> float:
    return 10.0 * max(1.0, abs(problem.boundary_value), math.sqrt(problem.max_abs_source()))


def shoot_many(problem: RadialProblem, u0: np.ndarray, *, n_steps: int = 8000) -> np.ndarray:
    """``u(1; u0) − f0`` for many ``u0`` at once, ``+inf`` where the solution blows up.

    This is the *scan* of the shooting method: a fixed-step classical RK4 in ``r``, vectorised
    over ``u0`` (one evaluation of ``f`` per stage for all of them), with blown-up components
    frozen (see :func:`_rhs`). Only the signs are used; :func:`shoot` (scipy ``solve_ivp``,
    adaptive DOP853) refines each bracketed root.
    """
    u0 = np.asarray(u0, dtype=np.float64)
    cap = _cap(problem)
    rhs = _rhs_fixed(problem, cap)
    h = (1.0 - _R0) / n_steps
    r_nodes = _R0 + h * np.arange(2 * n_steps + 1) / 2  # nodes and midpoints
    f_nodes = problem.source_radial(r_nodes)
    u, v = _start(problem, u0)
    for k in range(n_steps):
        r, f0, fm, f1 = r_nodes[2 * k], f_nodes[2 * k], f_nodes[2 * k + 1], f_nodes[2 * k + 2]
        k1u, k1v = rhs(r, u, v, f0)
        k2u, k2v = rhs(r + h / 2, u + h / 2 * k1u, v + h / 2 * k1v, fm)
        k3u, k3v = rhs(r + h / 2, u + h / 2 * k2u, v + h / 2 * k2v, fm)
        k4u, k4v = rhs(r + h, u + h * k3u, v + h * k3v, f1)
        u = u + h / 6 * (k1u + 2 * k2u + 2 * k3u + k4u)
        v = v + h / 6 * (k1v + 2 * k2v + 2 * k3v + k4v)
    return np.where(u > cap, np.inf, u - problem.boundary_value)


def _rhs_fixed(problem: RadialProblem, cap: float):
    d = problem.dim

    def rhs(r: float, u: np.ndarray, v: np.ndarray, f: float) -> tuple[np.ndarray, np.ndarray]:
        frozen = (u > cap) & (v > 0)
        du = np.where(frozen, 0.0, v)
        dv = np.where(frozen, 0.0, -(d - 1) / r * v + np.minimum(u, cap) ** 2 - f)
        return du, dv

    return rhs


def shoot(
    problem: RadialProblem, u0: float, *, rtol: float = 1e-11, atol: float = 1e-12
) -> tuple[float, object]:
    """Integrate the radial ODE from ``u(0) = u0``, ``u'(0) = 0``; return ``(u(1), dense)``.

    ``dense(r)`` is the solution ``[u(r), u'(r)]`` (scipy ``OdeSolution``); ``u(1) = +inf`` when
    the solution blows up before ``r = 1``.
    """
    cap = _cap(problem)
    ua, va = _start(problem, np.array([u0]))

    def blow(r: float, y: np.ndarray) -> float:
        return cap - y[0]

    blow.terminal = True  # type: ignore[attr-defined]
    sol = solve_ivp(
        _rhs(problem, math.inf),
        (_R0, 1.0),
        np.concatenate([ua, va]),
        method="DOP853",
        rtol=rtol,
        atol=atol,
        dense_output=True,
        events=blow,
    )
    u1 = float(sol.y[0, -1])
    if sol.status == 1 or not math.isfinite(u1) or u1 > cap:  # blew up before r = 1
        return math.inf, sol.sol
    return u1, sol.sol


def blowup_radius(sign: float, dim: int, *, cap: float = 1e8) -> float:
    """Radius ρ* at which ``v'' + (d−1)/ρ v' = v²``, ``v(0) = sign``, ``v'(0) = 0`` blows up."""
    problem = RadialProblem(profile=SinSquaredProfile(0.0), dim=dim)  # h ≡ 0, so f ≡ 0

    def blow(r: float, y: np.ndarray) -> float:
        return cap - y[0]

    blow.terminal = True  # type: ignore[attr-defined]
    ua, va = np.array([sign]), np.array([0.0])
    sol = solve_ivp(
        _rhs(problem, math.inf),
        (_R0, 1e3),
        np.concatenate([ua, va]),
        method="DOP853",
        rtol=1e-10,
        atol=1e-12,
        events=blow,
    )
    return float(sol.t_events[0][0]) if sol.status == 1 else math.inf


def bracket_bound(problem: RadialProblem) -> float:
    """A bound ``U`` such that every radial solution has ``|u(0)| < U``.

    Scaling argument: with ``u = λ v`` and ``r = ρ/√λ`` the ODE becomes
    ``v'' + (d−1)/ρ v' = v² − f/λ²``. Once ``λ² ≫ max|f|`` the source is negligible and the
    solution with ``v(0) = ±1`` blows up at ``ρ* ≈ blowup_radius(±1)``, i.e. at ``r = ρ*/√λ``,
    before ``r = 1`` when ``λ > ρ*²``. So ``|u0| > max(ρ*², √max|f|)`` (times a safety factor of
    4) cannot satisfy ``u(1) = f0``; :func:`find_radial_solutions` checks the ends numerically.
    """
    rho = max(blowup_radius(1.0, problem.dim), blowup_radius(-1.0, problem.dim))
    return 4.0 * max(rho * rho, math.sqrt(problem.max_abs_source()), abs(problem.boundary_value))


@dataclass(frozen=True)
class RadialSolution:
    """One radial solution found by shooting: ``u(0) = u0`` and its profile."""

    u0: float
    u1: float  # u(1), equals f0 up to the root tolerance
    radii: np.ndarray  # a grid on [0, 1]
    values: np.ndarray  # u on that grid

    def __call__(self, r: np.ndarray) -> np.ndarray:
        """``u(r)`` by interpolation on the dense grid (error ≪ training errors)."""
        return np.interp(np.asarray(r), self.radii, self.values)

    def as_dict(self) -> dict[str, float]:
        """The JSON form: ``u0``, ``u1`` and the profile's ``min`` and ``max``."""
        return {
            "u0": self.u0,
            "u1": self.u1,
            "min": float(self.values.min()),
            "max": float(self.values.max()),
        }


def find_radial_solutions(
    problem: RadialProblem,
    *,
    bound: float | None = None,
    n_grid: int = 4001,
    n_points: int = 8001,
    xtol: float = 1e-12,
    root_tol: float = 1e-10,
) -> list[RadialSolution]:
    """Every radial solution of eq. 53 with ``|u(0)| < bound``: the manufactured one first (the
    root nearest ``h(0)``), then the others by increasing ``u0``.

    Scan ``u0`` on a uniform grid of ``n_grid`` points in ``[−bound, bound]`` (default bound:
    :func:`bracket_bound`), bracket the sign changes of ``u(1; u0) − f0`` (a blow-up counts as
    ``+inf``, the limit of a continuous branch), then refine each with ``brentq``. An exact grid
    zero is kept as is. Roots closer together than the grid step could be missed: raise ``n_grid``.
    """
    if bound is None:
        bound = bracket_bound(problem)
    grid = np.linspace(-bound, bound, n_grid)
    values = shoot_many(problem, grid)
    if np.isfinite(values[0]) or np.isfinite(values[-1]):
        raise RuntimeError(f"bracket ±{bound:g} too small: the ends do not blow up")

    def miss(u0: float) -> float:
        u1, _ = shoot(problem, u0)
        return min(u1 - problem.boundary_value, 1e300)

    roots: list[float] = []
    for i in range(n_grid - 1):
        if np.sign(values[i]) == np.sign(values[i + 1]) and values[i] != 0.0:
            continue
        # a sign change of the scan: re-evaluate the ends with the accurate solver
        lo, hi = float(grid[i]), float(grid[i + 1])
        m_lo, m_hi = miss(lo), miss(hi)
        if abs(m_lo) <= root_tol:
            root = lo
        elif abs(m_hi) <= root_tol:
            root = hi
        elif np.sign(m_lo) != np.sign(m_hi):
            root = float(brentq(miss, lo, hi, xtol=xtol))
        else:  # the fixed-step scan misjudged a sign: no root here
            continue
        if not roots or abs(root - roots[-1]) > 1e3 * xtol:
            roots.append(root)
    h0 = float(problem.profile(torch.tensor(0.0, dtype=torch.float64)))
    if roots:
        manufactured = min(roots, key=lambda r: abs(r - h0))
        roots.sort(key=lambda u0: (u0 != manufactured, u0))
    radii = np.linspace(0.0, 1.0, n_points)
    out = []
    for u0 in roots:
        u1, dense = shoot(problem, u0)
        inner = np.clip(radii, _R0, 1.0)
        vals = dense(inner)[0]  # type: ignore[operator]
        vals[0] = u0
        out.append(RadialSolution(u0=u0, u1=float(u1), radii=radii, values=vals))
    return out
