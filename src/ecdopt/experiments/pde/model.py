"""The residual-network ansatz of eq. 56, three ways to take its Laplacian, and the loss of eq. 19.

Laplacians (all return the *ordinary* Laplacian ``Σ_i ∂²N/∂x_i²``; the paper's operator of eq. 53
is its negative):

* :func:`forward_laplacian` — one forward pass that carries, through every layer, the value ``y``,
  its gradient ``J = ∂y/∂x`` (``d`` rows) and its Laplacian ``L = Σ_i ∂²y/∂x_i²``. For an affine
  map ``z = W y + b``: ``J_z = W J``, ``L_z = W L``; for an elementwise ``a = σ(z)``:
  ``J_a = σ'(z) J_z`` and ``L_a = σ'(z) L_z + σ''(z) Σ_i (J_z)_i²``; a residual sum adds all
  three. This is exact (no approximation) for networks built from affine maps and elementwise
  activations, such as eq. 56, and costs about ``d + 2`` forward passes in three matmuls per
  layer. Parameters' gradients then need one ordinary backward.
* :func:`double_backward_laplacian` — autograd gradient, then one more backward per input
  dimension (``create_graph=True`` so that the loss can be differentiated once more).
* :func:`functorch_laplacian` — ``torch.func``: ``vmap`` over points of the trace of ``hessian``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ecdopt.experiments.pde.problem import RadialProblem

Tensor = torch.Tensor

__all__ = [
    "LAPLACIANS",
    "PDELoss",
    "ResNetAnsatz",
    "double_backward_laplacian",
    "forward_laplacian",
    "functorch_laplacian",
    "sample_ball",
    "sample_sphere",
]


def sample_sphere(n: int, dim: int, generator: torch.Generator | None = None, **kw) -> Tensor:
    """``n`` points uniform on the unit sphere of R^dim (normalised Gaussians)."""
    g = torch.randn(n, dim, generator=generator, **kw)
    return g / g.norm(dim=1, keepdim=True)


def sample_ball(n: int, dim: int, generator: torch.Generator | None = None, **kw) -> Tensor:
    """``n`` points uniform in the unit ball of R^dim (direction × radius ``U^{1/d}``)."""
    direction = sample_sphere(n, dim, generator, **kw)
    radius = torch.rand(n, 1, generator=generator, **kw) ** (1.0 / dim)
    return direction * radius


class ResNetAnsatz(nn.Module):
    """Eq. 56: ``y1 = σ(W0 x + b0)``, ``y_{s+1} = y_s + σ(W_s y_s + b_s)`` (s = 1..D),
    ``N(x) = W_{D+1} y_{D+1} + b_{D+1}``, with σ the logistic sigmoid (paper: D = 3, N = 200)."""

    def __init__(self, dim: int = 2, width: int = 200, depth: int = 3) -> None:
        super().__init__()
        self.dim, self.width, self.depth = dim, width, depth
        self.inp = nn.Linear(dim, width)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.out = nn.Linear(width, 1)

    def forward(self, x: Tensor) -> Tensor:
        """``N(x)`` for points ``x`` of shape ``(n, d)``; returns shape ``(n,)``."""
        y = torch.sigmoid(self.inp(x))
        for layer in self.hidden:
            y = y + torch.sigmoid(layer(y))
        return self.out(y).squeeze(-1)

    def layers(self) -> list[nn.Linear]:
        """The affine maps in order: input, the D residual blocks, output."""
        return [self.inp, *self.hidden, self.out]


# --------------------------------------------------------------------------------------------
# forward Laplacian
# --------------------------------------------------------------------------------------------


def _sigmoid_jet(z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(σ, σ', σ'')`` with ``σ' = σ(1 − σ)`` and ``σ'' = σ'(1 − 2σ)``."""
    s = torch.sigmoid(z)
    ds = s * (1 - s)
    return s, ds, ds * (1 - 2 * s)


def _sigmoid_of_jet(z: Tensor, jz: Tensor, lz: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Push a jet ``(z, ∂z, Σ∂²z)`` through σ: ``(σ, σ' ∂z, σ' Σ∂²z + σ'' Σ(∂z)²)``."""
    s, ds, d2s = _sigmoid_jet(z)
    return s, ds.unsqueeze(1) * jz, ds * lz + d2s * (jz * jz).sum(1)


def _affine_of_jet(
    layer: nn.Linear, y: Tensor, jy: Tensor, ly: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """``z = W y + b`` on a jet: ``(W y + b, W ∂y, W Ly)``.

    Three matmuls rather than one on a stacked ``[y; ∂y; Ly]``: the stacking copy and the
    backward of slicing the result (a zero-filled full-size gradient per slice) cost more on both
    CPU and GPU than the larger matmul saves.
    """
    w = layer.weight.T
    return torch.addmm(layer.bias, y, w), jy @ w, ly @ w


def forward_laplacian(model: ResNetAnsatz, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(N(x), Σ_i ∂²N/∂x_i²)`` of the eq. 56 network in one forward pass (module docstring).

    The first layer's Jacobian is ``W0`` for every point and its Laplacian is zero, so the first
    layer costs a single matmul.
    """
    w0 = model.inp.weight  # (width, d)
    z = x @ w0.T + model.inp.bias
    jz = w0.T.unsqueeze(0)  # (1, d, width): the same for every point
    s, ds, d2s = _sigmoid_jet(z)
    y = s
    jy = ds.unsqueeze(1) * jz
    ly = d2s * (jz * jz).sum(1)
    for layer in model.hidden:
        a, ja, la = _sigmoid_of_jet(*_affine_of_jet(layer, y, jy, ly))
        y, jy, ly = y + a, jy + ja, ly + la
    w, b = model.out.weight.squeeze(0), model.out.bias  # (width,), (1,)
    return y @ w + b, ly @ w


# --------------------------------------------------------------------------------------------
# the two autograd references
# --------------------------------------------------------------------------------------------


def double_backward_laplacian(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(N(x), ΔN(x))`` by autograd: gradient, then one more backward per input dimension.

    Exact for networks whose outputs do not mix points (no batch norm). The graph is kept
    (``create_graph=True``) so that a loss built on it can be backpropagated to the parameters.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        u = model(x)
        (grad,) = torch.autograd.grad(u.sum(), x, create_graph=True)
        lap = torch.zeros_like(u)
        for i in range(x.shape[1]):
            (g2,) = torch.autograd.grad(grad[:, i].sum(), x, create_graph=True)
            lap = lap + g2[:, i]
    return u, lap


def functorch_laplacian(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(N(x), ΔN(x))`` with ``torch.func``: ``vmap`` over points of ``trace(hessian)``."""
    from torch.func import functional_call, hessian, vmap

    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())

    def single(p: dict[str, Tensor], xi: Tensor) -> Tensor:
        return functional_call(model, (p, buffers), (xi.unsqueeze(0),)).squeeze(0)

    hess = vmap(hessian(single, argnums=1), in_dims=(None, 0))(params, x)
    return model(x), hess.diagonal(dim1=-2, dim2=-1).sum(-1)


LAPLACIANS: dict[str, Callable[[nn.Module, Tensor], tuple[Tensor, Tensor]]] = {
    "forward": forward_laplacian,  # type: ignore[dict-item]
    "double_backward": double_backward_laplacian,
    "functorch": functorch_laplacian,
}


# --------------------------------------------------------------------------------------------
# the loss of eq. 19
# --------------------------------------------------------------------------------------------


def parameter_square_sum(model: nn.Module) -> Tensor:
    """``Θ²``: the sum of squares of every parameter.

    A plain sum of per-tensor reductions: ``torch._foreach_norm`` is one kernel forward but its
    backward (norm, then stack) costs more than the whole sum."""
    return sum((p * p).sum() for p in model.parameters())  # type: ignore[return-value]


class PDELoss:
    """Eq. 19 for eq. 53: ``mean_D r² + γ mean_∂D (N − f0)² + c Θ²`` with ``r = −ΔN + N² − f``.

    Means, not sums, over the sampled points, so that γ and the regularisation keep their meaning
    when the numbers of points change (paper: γ = 1e5, c = 2e-4, 1e4 interior and 1e3 boundary
    points). ``f`` at the interior points is computed once per set of points and cached.
    """

    def __init__(
        self,
        problem: RadialProblem,
        *,
        gamma: float = 1e5,
        reg: float = 2e-4,
        laplacian: str = "forward",
    ) -> None:
        if laplacian not in LAPLACIANS:
            raise ValueError(f"laplacian must be one of {sorted(LAPLACIANS)}, got {laplacian!r}")
        self.problem, self.gamma, self.reg = problem, gamma, reg
        self.laplacian = LAPLACIANS[laplacian]
        self.f0 = problem.boundary_value

    def source(self, x: Tensor) -> Tensor:
        """``f`` at interior points (computed in float64, cast to ``x``'s dtype)."""
        return self.problem.source(x.double()).to(x.dtype)

    def residual(self, model: nn.Module, x: Tensor, f: Tensor) -> Tensor:
        """PDE residual of eq. 53 with the paper's sign: ``−Σ∂²N + N² − f``."""
        u, lap = self.laplacian(model, x)
        return -lap + u * u - f

    def __call__(self, model: nn.Module, x_int: Tensor, f_int: Tensor, x_bnd: Tensor) -> Tensor:
        """The loss of eq. 19 (a 0-dim tensor)."""
        r = self.residual(model, x_int, f_int)
        b = model(x_bnd) - self.f0
        loss = r.square().mean() + self.gamma * b.square().mean()
        if self.reg:
            loss = loss + self.reg * parameter_square_sum(model)
        return loss
