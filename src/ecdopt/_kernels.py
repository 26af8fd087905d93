"""The per-parameter work of one ECD step, given the global scalars.

Two implementations with identical keyword-only signatures, like ``torch.optim.SGD``:
``_single_tensor_*`` loops over tensors, ``_multi_tensor_*`` uses ``torch._foreach_*`` ops.
Scalars (α, kick and drift coefficients) are 0-dim tensors on the parameters' device, so no
value ever travels to the host here.

- kick:  Π ← α·Π − k·(∇F + λ·Θ)     with k = Δt·K·dV/dF_eff (per group), λ the weight decay
- drift: Θ ← Θ + d·Π                with d = Δt·D (per group)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype

__all__ = ["ecd_drift_", "ecd_kick_", "sum_of_squares"]


def _single_tensor_kick_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    momenta: Sequence[Tensor],
    *,
    rescale: Tensor,
    kick: Tensor,
    weight_decay: float,
) -> None:
    for p, g, m in zip(params, grads, momenta, strict=True):
        r = rescale.to(m.device)
        k = kick.to(m.device)
        m.mul_(r).addcmul_(g, k, value=-1.0)
        if weight_decay != 0.0:
            m.addcmul_(p, k, value=-weight_decay)


def _multi_tensor_kick_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    momenta: Sequence[Tensor],
    *,
    rescale: Tensor,
    kick: Tensor,
    weight_decay: float,
) -> None:
    grouped = _group_tensors_by_device_and_dtype([list(momenta), list(grads), list(params)])
    for (device, _), ((ms, gs, ps), _) in grouped.items():
        r = rescale.to(device)
        neg_k = (-kick).to(device)
        torch._foreach_mul_(ms, r)
        torch._foreach_addcmul_(ms, gs, [neg_k] * len(ms))
        if weight_decay != 0.0:
            torch._foreach_addcmul_(ms, ps, [neg_k * weight_decay] * len(ms))


def _single_tensor_drift_(
    params: Sequence[Tensor], momenta: Sequence[Tensor], *, drift: Tensor
) -> None:
    for p, m in zip(params, momenta, strict=True):
        p.addcmul_(m, drift.to(p.device))


def _multi_tensor_drift_(
    params: Sequence[Tensor], momenta: Sequence[Tensor], *, drift: Tensor
) -> None:
    grouped = _group_tensors_by_device_and_dtype([list(params), list(momenta)])
    for (device, _), ((ps, ms), _) in grouped.items():
        d = drift.to(device)
        torch._foreach_addcmul_(ps, ms, [d] * len(ps))


def ecd_kick_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    momenta: Sequence[Tensor],
    *,
    rescale: Tensor,
    kick: Tensor,
    weight_decay: float,
    foreach: bool,
) -> None:
    """Energy restoration and kick, in place: Π ← α·Π − k·(∇F + λ·Θ) (eq. 11, Algorithm 1)."""
    fn = _multi_tensor_kick_ if foreach else _single_tensor_kick_
    fn(params, grads, momenta, rescale=rescale, kick=kick, weight_decay=weight_decay)


def ecd_drift_(
    params: Sequence[Tensor], momenta: Sequence[Tensor], *, drift: Tensor, foreach: bool
) -> None:
    """Drift, in place: Θ ← Θ + d·Π (eq. 12, with the momentum after the kick)."""
    fn = _multi_tensor_drift_ if foreach else _single_tensor_drift_
    fn(params, momenta, drift=drift)


def sum_of_squares(tensors: Sequence[Tensor], device: torch.device) -> Tensor:
    """Σ over all tensors of Σ x², as a float64 0-dim tensor on ``device`` (no host sync)."""
    if not tensors:
        return torch.zeros((), dtype=torch.float64, device=device)
    total = torch.zeros((), dtype=torch.float64, device=device)
    grouped = _group_tensors_by_device_and_dtype([list(tensors)])
    for (dev, dtype), ((ts,), _) in grouped.items():
        wide = torch.float64 if dtype == torch.float64 else torch.float32
        norms = torch._foreach_norm(ts, 2, dtype=wide) if dtype != wide else torch._foreach_norm(ts)
        partial = torch.stack(norms).double().square().sum()
        total = total + (partial if dev == device else partial.to(device))
    return total
