"""Synthetic test landscapes, batched: every function maps ``[..., n] → [...]``.

The leading dimensions are independent particles (an ensemble), the last one the coordinates Θ.
All functions are plain torch, differentiable, and work in any floating dtype (use float64 for
the paper's tiny floors, e.g. ΔV = 1e-22 on Zakharov).

The paper's benchmarks (§4.1-4.3):

- :func:`ackley` — eq. 15, highly non-convex (global minimum 0 at Θ = 0);
- :func:`zakharov` — eq. 16, a shallow valley (global minimum 0 at Θ = 0), any n;
- :func:`two_basin` — eq. 17, two global minima at (almost) c1 = (−2, −2) and c2 = (2, 2) with
  basins of different shapes; ε is solved by :func:`two_basin_epsilon` so that both minima are at
  exactly the same height.

Beyond the paper, for testing its measure: :func:`gaussian_basins` (eq. 17 in any dimension, two
Gaussian wells with given Hessian spectra; :func:`make_gaussian_basins` makes them equally deep)
and :func:`quadratic_basins` (the quadratic approximation of each basin, eq. 44, as a landscape:
the lower of two quadratics).

Further classics: :func:`rosenbrock`, :func:`rastrigin`, :func:`styblinski_tang` and
:func:`quadratic` (a quadratic with a given Hessian spectrum). :class:`Landscape` bundles a
function with its known minima; the ``make_*`` factories build them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = [
    "LANDSCAPES",
    "TWO_BASIN_C1",
    "TWO_BASIN_C2",
    "Landscape",
    "ackley",
    "gaussian_basins",
    "make_ackley",
    "make_gaussian_basins",
    "make_landscape",
    "make_quadratic",
    "make_quadratic_basins",
    "make_rastrigin",
    "make_rosenbrock",
    "make_styblinski_tang",
    "make_two_basin",
    "make_zakharov",
    "quadratic",
    "quadratic_basins",
    "rastrigin",
    "rosenbrock",
    "styblinski_tang",
    "two_basin",
    "two_basin_epsilon",
    "two_basin_minima",
    "zakharov",
]

TWO_BASIN_C1 = (-2.0, -2.0)
TWO_BASIN_C2 = (2.0, 2.0)


# --------------------------------------------------------------------------------------------
# pure functions
# --------------------------------------------------------------------------------------------


def ackley(theta: Tensor, *, a: float = 20.0, b: float = 0.2, c: float = 2 * math.pi) -> Tensor:
    """Ackley function, eq. 15 (n-dimensional form; the paper's is n = 2).

    F(Θ) = −a·exp(−b·sqrt(mean θ_i²)) − exp(mean cos(c θ_i)) + a + e, minimum F(0) = 0.
    Eq. 15 has b = 0.2; the authors' notebook used b = 0.02 (a much flatter outer funnel).
    """
    mean_sq = (theta * theta).mean(dim=-1)
    # sqrt has an infinite derivative at 0: keep the gradient finite (0) exactly at the minimum
    safe = torch.where(mean_sq > 0, mean_sq, torch.ones_like(mean_sq))
    radius = torch.where(mean_sq > 0, torch.sqrt(safe), torch.zeros_like(mean_sq))
    return -a * torch.exp(-b * radius) - torch.exp(torch.cos(c * theta).mean(dim=-1)) + a + math.e


def zakharov(theta: Tensor) -> Tensor:
    """Zakharov function, eq. 16: Σθ_i² + (½Σ iθ_i)² + (½Σ iθ_i)⁴, minimum F(0) = 0."""
    n = theta.shape[-1]
    idx = torch.arange(1, n + 1, dtype=theta.dtype, device=theta.device)
    s = 0.5 * (theta * idx).sum(dim=-1)
    s2 = s * s
    return (theta * theta).sum(dim=-1) + s2 + s2 * s2


def two_basin(
    theta: Tensor,
    *,
    epsilon: float = 2.75e-6,
    c1: Sequence[float] = TWO_BASIN_C1,
    c2: Sequence[float] = TWO_BASIN_C2,
) -> Tensor:
    """The two-basin function, eq. 17 (2-D).

    F(Θ) = −exp(−0.4|Θ−c1|²) − (1−ε)·exp(−0.8|Θ−c2|²) + 1e-3·|Θ−c1|²|Θ−c2|² + 1.
    Basin I (around c1) is wider than basin II (around c2): their Hessians are about 0.864·I
    and 1.664·I. ``epsilon`` = ε; :func:`two_basin_epsilon` gives the value that makes the two
    minima exactly equally deep (≈ 2.76e-6; the authors used 2.75e-6).
    """
    c1t = torch.as_tensor(c1, dtype=theta.dtype, device=theta.device)
    c2t = torch.as_tensor(c2, dtype=theta.dtype, device=theta.device)
    d1 = ((theta - c1t) ** 2).sum(dim=-1)
    d2 = ((theta - c2t) ** 2).sum(dim=-1)
    return -torch.exp(-0.4 * d1) - (1.0 - epsilon) * torch.exp(-0.8 * d2) + 1e-3 * d1 * d2 + 1.0


def rosenbrock(theta: Tensor) -> Tensor:
    """Rosenbrock: Σ 100(θ_{i+1} − θ_i²)² + (1 − θ_i)², minimum 0 at (1, …, 1)."""
    x, y = theta[..., :-1], theta[..., 1:]
    return (100.0 * (y - x * x) ** 2 + (1.0 - x) ** 2).sum(dim=-1)


def rastrigin(theta: Tensor, *, a: float = 10.0) -> Tensor:
    """Rastrigin: a·n + Σ(θ_i² − a·cos 2πθ_i), minimum 0 at Θ = 0."""
    n = theta.shape[-1]
    return a * n + (theta * theta - a * torch.cos(2 * math.pi * theta)).sum(dim=-1)


def styblinski_tang(theta: Tensor) -> Tensor:
    """Styblinski-Tang: ½Σ(θ_i⁴ − 16θ_i² + 5θ_i), minimum ≈ −39.166·n at θ_i ≈ −2.9035."""
    t2 = theta * theta
    return 0.5 * (t2 * t2 - 16.0 * t2 + 5.0 * theta).sum(dim=-1)


def quadratic(theta: Tensor, hessian: Tensor, center: Tensor | None = None) -> Tensor:
    """A quadratic ½(Θ − c)ᵀ H (Θ − c) (eq. 44 with V_I = 0), minimum 0 at c."""
    h = hessian.to(theta.dtype)
    d = theta if center is None else theta - center.to(theta.dtype)
    return 0.5 * ((d @ h) * d).sum(dim=-1)


def gaussian_basins(
    theta: Tensor,
    centers: Tensor,
    precisions: Tensor,
    weights: Sequence[float] = (1.0, 1.0),
    confinement: float = 1e-3,
) -> Tensor:
    """Eq. 17 in n dimensions with any two Gaussian wells:

    F(Θ) = 1 − Σ_I w_I·exp(−½(Θ − c_I)ᵀA_I(Θ − c_I)) + λ·|Θ − c_1|²|Θ − c_2|².

    ``centers`` ``[2, n]``, ``precisions`` ``[2, n, n]`` (A_I, positive definite), ``weights``
    w_I, ``confinement`` λ. With n = 2, A = 0.8·I and 1.6·I, w = (1, 1 − ε) and λ = 1e-3 it is
    eq. 17. The Hessian at minimum I is about A_I + 2λ|c_1 − c_2|²·I.
    """
    c = centers.to(theta)
    a = precisions.to(theta)
    d1, d2 = theta - c[0], theta - c[1]
    q1 = 0.5 * ((d1 @ a[0]) * d1).sum(dim=-1)
    q2 = 0.5 * ((d2 @ a[1]) * d2).sum(dim=-1)
    wells = weights[0] * torch.exp(-q1) + weights[1] * torch.exp(-q2)
    return 1.0 - wells + confinement * (d1 * d1).sum(-1) * (d2 * d2).sum(-1)


def quadratic_basins(
    theta: Tensor, centers: Tensor, hessians: Tensor, depths: Sequence[float] | Tensor
) -> Tensor:
    """The lower of K quadratics, F(Θ) = min_I [V_I + ½(Θ − c_I)ᵀH_I(Θ − c_I)] (eq. 44 exact).

    ``centers`` ``[K, n]``, ``hessians`` ``[K, n, n]``, ``depths`` V_I. Inside the ellipse
    |η_I| < r of a basin that does not reach the other basin's region, eq. 47 is exact.
    """
    d = theta[..., None, :] - centers.to(theta)
    q = 0.5 * ((d.unsqueeze(-2) @ hessians.to(theta)).squeeze(-2) * d).sum(dim=-1)
    return (q + torch.as_tensor(depths, dtype=theta.dtype, device=theta.device)).min(dim=-1).values


# --------------------------------------------------------------------------------------------
# the two-basin ε and minima
# --------------------------------------------------------------------------------------------


def _newton_minimum(fn: Callable[[Tensor], Tensor], start: Sequence[float], iters: int = 50):
    """Minimise a smooth function from ``start`` by Newton's method in float64."""
    x = torch.tensor(start, dtype=torch.float64)
    for _ in range(iters):
        with torch.enable_grad():
            xg = x.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(fn(xg), xg, create_graph=True)
            h = torch.stack([torch.autograd.grad(gi, xg, retain_graph=True)[0] for gi in g])
        step = torch.linalg.solve(h.detach(), g.detach())
        x = x - step
        if float(step.abs().max()) < 1e-15:
            break
    return x, float(fn(x))


def two_basin_minima(epsilon: float = 2.75e-6) -> tuple[Tensor, Tensor]:
    """The two minima of eq. 17 for this ε: ``(points [2, 2], values [2])``, float64.

    They sit a hair away from c1, c2 (the other basin's Gaussian tail pulls them).
    """
    points, values = _two_basin_minima(float(epsilon))
    return points.clone(), values.clone()


@functools.lru_cache(maxsize=16)
def _two_basin_minima(epsilon: float) -> tuple[Tensor, Tensor]:
    points, values = [], []
    for c in (TWO_BASIN_C1, TWO_BASIN_C2):
        x, v = _newton_minimum(lambda t: two_basin(t, epsilon=epsilon), c)
        points.append(x)
        values.append(v)
    return torch.stack(points), torch.tensor(values, dtype=torch.float64)


@functools.lru_cache(maxsize=4)
def two_basin_epsilon(tol: float = 1e-17) -> float:
    """ε of eq. 17 for which both minima have exactly the same height (secant iteration).

    The depth difference is F_min,I − F_min,II ≈ e^{−12.8} − e^{−25.6} − ε·(…) at first order,
    so ε ≈ 2.76e-6.
    """

    def gap(eps: float) -> float:
        _, values = two_basin_minima(eps)
        return float(values[0] - values[1])

    e0, e1 = 0.0, 3e-6
    g0, g1 = gap(e0), gap(e1)
    for _ in range(20):
        if g1 == g0:
            break
        e0, e1 = e1, e1 - g1 * (e1 - e0) / (g1 - g0)
        g0, g1 = g1, gap(e1)
        if abs(g1) < tol:
            break
    return e1


# --------------------------------------------------------------------------------------------
# Landscape objects
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Landscape:
    """A test function with its known global minima.

    ``fn`` maps ``[..., n] → [...]``; ``minima`` is ``[K, n]`` (float64), ``minimum_value`` the
    common value F there; ``bounds`` a box (lo, hi) for random starts and plots.
    """

    name: str
    fn: Callable[[Tensor], Tensor]
    dim: int
    minima: Tensor
    minimum_value: float
    bounds: tuple[float, float]
    params: dict = field(default_factory=dict)

    def __call__(self, theta: Tensor) -> Tensor:
        return self.fn(theta)


def make_ackley(dim: int = 2, *, b: float = 0.2) -> Landscape:
    """Ackley (eq. 15) as a :class:`Landscape`; ``b`` is the first exponential's constant."""
    return Landscape(
        "ackley",
        lambda t: ackley(t, b=b),
        dim,
        torch.zeros(1, dim, dtype=torch.float64),
        0.0,
        (-4.0, 4.0),
        {"b": b},
    )


def make_zakharov(dim: int = 10) -> Landscape:
    """Zakharov (eq. 16) in ``dim`` dimensions."""
    return Landscape(
        "zakharov", zakharov, dim, torch.zeros(1, dim, dtype=torch.float64), 0.0, (-5.0, 10.0)
    )


def make_two_basin(epsilon: float | None = None) -> Landscape:
    """The two-basin function (eq. 17); ``epsilon=None`` solves ε for equal heights."""
    eps = two_basin_epsilon() if epsilon is None else float(epsilon)
    points, values = two_basin_minima(eps)
    return Landscape(
        "two_basin",
        lambda t: two_basin(t, epsilon=eps),
        2,
        points,
        float(values.min()),
        (-5.0, 5.0),
        {"epsilon": eps, "minimum_values": values.tolist()},
    )


def make_rosenbrock(dim: int = 2) -> Landscape:
    """Rosenbrock's valley."""
    return Landscape(
        "rosenbrock", rosenbrock, dim, torch.ones(1, dim, dtype=torch.float64), 0.0, (-2.0, 2.0)
    )


def make_rastrigin(dim: int = 2) -> Landscape:
    """Rastrigin's egg crate."""
    return Landscape(
        "rastrigin", rastrigin, dim, torch.zeros(1, dim, dtype=torch.float64), 0.0, (-5.12, 5.12)
    )


def _styblinski_tang_root() -> float:
    """The global minimiser of ½(x⁴ − 16x² + 5x): the lowest root of 2x³ − 16x + 2.5 = 0."""
    x = -2.9
    for _ in range(60):
        x -= (2 * x**3 - 16 * x + 2.5) / (6 * x**2 - 16)
    return x


def make_styblinski_tang(dim: int = 2) -> Landscape:
    """Styblinski-Tang; minimum at θ_i = x* (≈ −2.903534), value n·½(x*⁴ − 16x*² + 5x*)."""
    x = _styblinski_tang_root()
    value = dim * 0.5 * (x**4 - 16 * x**2 + 5 * x)
    return Landscape(
        "styblinski_tang",
        styblinski_tang,
        dim,
        torch.full((1, dim), x, dtype=torch.float64),
        value,
        (-5.0, 5.0),
    )


def make_quadratic(
    eigenvalues: Sequence[float],
    *,
    center: Sequence[float] | None = None,
    rotation: Tensor | None = None,
) -> Landscape:
    """A quadratic with Hessian spectrum ``eigenvalues`` (the m_i² of eq. 44).

    H = Q diag(λ) Qᵀ with Q = ``rotation`` (orthogonal; identity by default).
    """
    lam = torch.as_tensor(eigenvalues, dtype=torch.float64)
    dim = lam.numel()
    q = torch.eye(dim, dtype=torch.float64) if rotation is None else rotation.double()
    hess = q @ torch.diag(lam) @ q.T
    c = torch.zeros(dim, dtype=torch.float64) if center is None else torch.tensor(center).double()
    return Landscape(
        "quadratic",
        lambda t: quadratic(t, hess.to(t.device), c.to(t.device)),
        dim,
        c[None],
        0.0,
        (-3.0, 3.0),
        {"hessian": hess},
    )


def _equal_depth_weight(
    centers: Tensor, precisions: Tensor, confinement: float, tol: float = 1e-16
) -> tuple[float, Tensor, Tensor]:
    """w_2 (w_1 = 1) for which both minima of :func:`gaussian_basins` are equally deep (secant),
    with the minima and their values."""

    def minima(w2: float) -> tuple[Tensor, Tensor]:
        fn = lambda t: gaussian_basins(t, centers, precisions, (1.0, w2), confinement)  # noqa: E731
        found = [_newton_minimum(fn, c.tolist()) for c in centers]
        return torch.stack([x for x, _ in found]), torch.tensor([v for _, v in found]).double()

    w0, w1 = 1.0, 1.0 - 1e-5
    g0 = float(torch.diff(minima(w0)[1])[0])
    points, values = minima(w1)
    for _ in range(30):
        g1 = float(torch.diff(values)[0])
        if abs(g1) < tol or g1 == g0:
            break
        w0, w1, g0 = w1, w1 - g1 * (w1 - w0) / (g1 - g0), g1
        points, values = minima(w1)
    return w1, points, values


def make_gaussian_basins(
    spectra: Sequence[Sequence[float]],
    *,
    separation: float = 2.0,
    confinement: float = 1e-3,
) -> Landscape:
    """Two Gaussian wells (:func:`gaussian_basins`) with diagonal precisions A_I =
    diag(``spectra[I]``), at c_{1,2} = ∓``separation``·(1, 1, 0, …, 0), made equally deep by
    the weight of the second (w_2 = 1 − ε, solved). ``spectra`` ``[[0.8]*2, [1.6]*2]`` is
    eq. 17 with its ε solved. ``params`` holds centers, precisions, weights and confinement.
    """
    a = torch.stack([torch.diag(torch.as_tensor(s, dtype=torch.float64)) for s in spectra])
    if a.shape[0] != 2 or a.shape[1] < 2:
        raise ValueError("spectra must be two lists of the same length n ≥ 2")
    n = a.shape[1]
    c = torch.zeros(2, n, dtype=torch.float64)
    c[0, :2], c[1, :2] = -separation, separation
    w2, points, values = _equal_depth_weight(c, a, confinement)
    weights = (1.0, w2)
    return Landscape(
        "gaussian_basins",
        lambda t: gaussian_basins(t, c.to(t.device), a.to(t.device), weights, confinement),
        n,
        points,
        float(values.min()),
        (-5.0, 5.0),
        {"centers": c, "precisions": a, "weights": weights, "confinement": confinement},
    )


def make_quadratic_basins(
    centers: Tensor, hessians: Tensor, depths: Sequence[float] | Tensor | None = None
) -> Landscape:
    """:func:`quadratic_basins` as a :class:`Landscape` (depths 0 by default)."""
    c = torch.as_tensor(centers, dtype=torch.float64)
    h = torch.as_tensor(hessians, dtype=torch.float64)
    v = (
        torch.zeros(c.shape[0], dtype=torch.float64)
        if depths is None
        else torch.as_tensor(depths, dtype=torch.float64)
    )
    return Landscape(
        "quadratic_basins",
        lambda t: quadratic_basins(t, c.to(t.device), h.to(t.device), v.to(t.device)),
        c.shape[1],
        c.clone(),
        float(v.min()),
        (-5.0, 5.0),
        {"centers": c, "hessians": h, "depths": v.tolist()},
    )


LANDSCAPES: dict[str, Callable[..., Landscape]] = {
    "ackley": make_ackley,
    "zakharov": make_zakharov,
    "two_basin": make_two_basin,
    "rosenbrock": make_rosenbrock,
    "rastrigin": make_rastrigin,
    "styblinski_tang": make_styblinski_tang,
}


def make_landscape(name: str, **kwargs) -> Landscape:
    """Build a landscape by name (a key of :data:`LANDSCAPES`)."""
    if name not in LANDSCAPES:
        raise ValueError(f"unknown landscape {name!r}; choose from {sorted(LANDSCAPES)}")
    return LANDSCAPES[name](**kwargs)
