"""The per-parameter work of one ECD step, given the global scalars, and the global sums.

Two implementations of each update with identical keyword-only signatures, like
``torch.optim.SGD``: ``_single_tensor_*`` loops over tensors, ``_multi_tensor_*`` uses
``torch._foreach_*`` ops. Coefficients are Python floats on the host path and 0-dim tensors on
the sync-free path; nothing here reads a device value.

- kick:  Π ← α·Π − k·(∇F + λ·Θ)     with k = Δt·K·dV/dF_eff (per group), λ the weight decay
- drift: Θ ← Θ + d·Π                with d = Δt·D (per group)

Global sums (Π², |∇F|², |Θ|², Π·G) are float64. On the CPU each tensor's sum of squares is taken
in the tensor's own precision (one ``_foreach_powsum`` call for all the tensors of a step: about
twice as fast as a float64 accumulation, and as fast as a BLAS dot) and is recomputed in float64
when that overflows, so a finite tensor always has a finite sum; the per-tensor sums are added
exactly (``math.fsum``). The tensor-valued sums (the sync-free
path, 16-bit and sharded parameters) accumulate in float64 throughout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "STREAM_MIN_NUMEL",
    "dot_sum",
    "ecd_drift_",
    "ecd_kick_",
    "exact_total",
    "fused_drift_",
    "fused_kick_drift_",
    "host_dot_sum",
    "host_kick_drift_",
    "host_sum_of_squares",
    "host_sums_of_squares",
    "is_plain_cpu",
    "sum_of_squares",
]

Coefficient = Tensor | float

_PLAIN = (Tensor, torch.nn.Parameter)
#: tensors this large are kicked, summed and drifted one at a time on the CPU host path, so the
#: sum and the drift read Π from cache (a tensor of this size fits in L2/L3), not from memory
STREAM_MIN_NUMEL = 1 << 18
_WIDE = (torch.float32, torch.float64)


def _by_device(*lists: Sequence[Tensor]) -> list[tuple[torch.device, list[list[Tensor]]]]:
    """Split parallel lists by the device of the first list (one group in the usual case)."""
    first = lists[0]
    if all(t.is_cpu for t in first):  # the common case, cheap to establish
        return [(first[0].device, list(lists))]
    device = first[0].device
    if all(t.device == device for t in first):
        return [(device, [list(ts) for ts in lists])]
    groups: dict[torch.device, list[list[Tensor]]] = {}
    for i, t in enumerate(first):
        rows = groups.setdefault(t.device, [[] for _ in lists])
        for row, ts in zip(rows, lists, strict=True):
            row.append(ts[i])
    return list(groups.items())


def is_plain_cpu(tensor: Tensor) -> bool:
    """A float32/float64 CPU tensor (not a subclass such as a DTensor)."""
    return type(tensor) in _PLAIN and tensor.is_cpu and tensor.dtype in _WIDE


def _is_dtensor(t: Tensor) -> bool:
    """Whether ``t`` is a DTensor (an FSDP2 parameter), without importing torch.distributed
    for plain tensors."""
    if type(t) in _PLAIN:
        return False
    from .distributed import is_dtensor

    return is_dtensor(t)


# --------------------------------------------------------------------------- global sums
def _squares_float64(tensor: Tensor) -> Tensor:
    """Σx² of one tensor accumulated in float64 (the slow, overflow-free way on the CPU)."""
    return torch._foreach_powsum([tensor], 2, dtype=torch.float64)[0]


def _cpu_partial_squares(tensors: Sequence[Tensor]) -> list[float]:
    """Σx² of each float32/float64 CPU tensor in its own precision, as floats in order (one
    ``_foreach_powsum`` call; each tensor's sum does not depend on the others in the call)."""
    return [p.item() for p in torch._foreach_powsum(tensors, 2)] if tensors else []


def host_sum_of_squares(
    tensors: Sequence[Tensor], device: torch.device, *, plain: bool | None = None
) -> float:
    """:func:`sum_of_squares` as a Python float (the CPU host path: reading a CPU value is free).

    ``plain``: the caller already knows whether every tensor satisfies :func:`is_plain_cpu`
    (None: check). A tensor whose own-precision sum overflows is summed again in float64.
    """
    if plain is None:
        plain = all(is_plain_cpu(t) for t in tensors)
    if not plain:
        return sum_of_squares(tensors, device).item()
    parts = _cpu_partial_squares(tensors)
    total = _fsum(parts)
    if math.isfinite(total):
        return total
    for i, part in enumerate(parts):  # an own-precision sum overflowed (or a value is not finite)
        if not math.isfinite(part):
            parts[i] = _squares_float64(tensors[i]).item()
    return _fsum(parts)


def host_sums_of_squares(lists: Sequence[Sequence[Tensor]]) -> list[float]:
    """:func:`host_sum_of_squares` of several lists of plain CPU tensors at once: one call of the
    per-tensor sums for all of them (the step's |∇F|², |Θ_g|² and Π² in one pass over memory,
    without paying a torch call per list), each list's parts added exactly."""
    flat = [t for ts in lists for t in ts]
    parts = _cpu_partial_squares(flat)
    totals, start = [], 0
    for ts in lists:
        totals.append(exact_total(parts[start : start + len(ts)], ts))
        start += len(ts)
    return totals


def exact_total(parts: list[float], tensors: Sequence[Tensor]) -> float:
    """The exact sum of the own-precision Σx² ``parts`` of ``tensors``; a part that overflowed
    is summed again in float64 first."""
    total = _fsum(parts)
    if math.isfinite(total):
        return total
    parts = [
        part if math.isfinite(part) else _squares_float64(t).item()
        for part, t in zip(parts, tensors, strict=True)
    ]
    return _fsum(parts)


def _fsum(parts: list[float]) -> float:
    """The exact sum of non-negative floats (inf when it overflows, nan for a nan)."""
    try:
        return math.fsum(parts)
    except OverflowError:
        return math.inf


def sum_of_squares(tensors: Sequence[Tensor], device: torch.device) -> Tensor:
    """Σ over all tensors of Σx², a float64 0-dim tensor on ``device`` (no host read).

    FSDP2 shards (DTensors) are summed over the mesh (:func:`ecdopt.distributed.sum_of_squares`).
    """
    if not tensors:
        return torch.zeros((), dtype=torch.float64, device=device)
    if any(_is_dtensor(t) for t in tensors):
        from .distributed import sum_of_squares as global_sum_of_squares

        return global_sum_of_squares(tensors, device)
    total = torch.zeros((), dtype=torch.float64, device=device)
    for dev, (ts,) in _by_device(tensors):
        partial = torch.stack(torch._foreach_powsum(ts, 2, dtype=torch.float64)).sum()
        total = total + (partial if dev == device else partial.to(device))
    return total


def host_dot_sum(a: Sequence[Tensor], b: Sequence[Tensor]) -> float:
    """Σ over tensor pairs of a·b, as a float: a dot product per pair in the tensors' own
    precision (float64 where that overflows), added exactly."""
    parts = []
    for x, y in zip(a, b, strict=True):
        part = torch.dot(x.reshape(-1), y.reshape(-1).to(x.dtype)).item()
        if not math.isfinite(part):
            part = torch.dot(x.reshape(-1).double(), y.reshape(-1).double()).item()
        parts.append(part)
    return math.fsum(parts)


def dot_sum(a: Sequence[Tensor], b: Sequence[Tensor], device: torch.device) -> Tensor:
    """Σ over tensor pairs of a·b, a float64 0-dim tensor on ``device`` (no host read)."""
    total = torch.zeros((), dtype=torch.float64, device=device)
    for x, y in zip(a, b, strict=True):
        product = (x * y.to(x.dtype)).sum(dtype=torch.float64)
        total = total + product.to(device)
    return total


# --------------------------------------------------------------------------- kick and drift
def _single_tensor_kick_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    momenta: Sequence[Tensor],
    *,
    rescale: Coefficient,
    kick: Coefficient,
    weight_decay: float,
) -> None:
    for p, g, m in zip(params, grads, momenta, strict=True):
        if isinstance(kick, Tensor):
            neg_k = (-kick).to(m.device)
            m.mul_(rescale.to(m.device) if isinstance(rescale, Tensor) else rescale)
            m.addcmul_(g, neg_k)
            if weight_decay != 0.0:
                m.addcmul_(p, neg_k, value=weight_decay)
        else:
            if rescale != 1.0:
                m.mul_(rescale)
            m.add_(g, alpha=-kick)
            if weight_decay != 0.0:
                m.add_(p, alpha=-kick * weight_decay)


def _multi_tensor_kick_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    momenta: Sequence[Tensor],
    *,
    rescale: Coefficient,
    kick: Coefficient,
    weight_decay: float,
) -> None:
    for device, (ms, gs, ps) in _by_device(momenta, grads, params):
        if isinstance(kick, Tensor):
            neg_k = (-kick).to(device)
            torch._foreach_mul_(ms, rescale.to(device) if isinstance(rescale, Tensor) else rescale)
            torch._foreach_addcmul_(ms, gs, [neg_k] * len(ms))
            if weight_decay != 0.0:
                torch._foreach_addcmul_(ms, ps, [neg_k * weight_decay] * len(ms))
        else:
            if rescale != 1.0:
                torch._foreach_mul_(ms, rescale)
            torch._foreach_add_(ms, gs, alpha=-kick)
            if weight_decay != 0.0:
                torch._foreach_add_(ms, ps, alpha=-kick * weight_decay)


def _single_tensor_drift_(
    params: Sequence[Tensor], momenta: Sequence[Tensor], *, drift: Coefficient
) -> None:
    for p, m in zip(params, momenta, strict=True):
        if isinstance(drift, Tensor):
            p.addcmul_(m, drift.to(p.device))
        else:
            p.add_(m, alpha=drift)


def _multi_tensor_drift_(
    params: Sequence[Tensor], momenta: Sequence[Tensor], *, drift: Coefficient
) -> None:
    for device, (ps, ms) in _by_device(params, momenta):
        if isinstance(drift, Tensor):
            torch._foreach_addcmul_(ps, ms, [drift.to(device)] * len(ps))
        else:
            torch._foreach_add_(ps, ms, alpha=drift)


def host_kick_drift_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    momenta: Sequence[Tensor],
    *,
    rescale: float,
    kick: float,
    weight_decay: float,
    drift: float | None,
    foreach: bool,
) -> list[float]:
    """Kick, and drift when ``drift`` is given, of plain CPU tensors with Python-float factors;
    returns Σx² of each momentum after the kick (own precision, in order; see
    :func:`exact_total`). Tensors of at least :data:`STREAM_MIN_NUMEL` elements go one at a
    time — kick, sum, drift — so that the sum and the drift find Π in cache: one pass over
    memory fewer than kicking all, then summing all. The others go through the (multi-)tensor
    kernels together."""
    squares = [0.0] * len(momenta)
    small = [i for i, m in enumerate(momenta) if m.numel() < STREAM_MIN_NUMEL]
    factors = {"rescale": rescale, "kick": kick, "weight_decay": weight_decay}
    if small:
        ps, gs, ms = ([ts[i] for i in small] for ts in (params, grads, momenta))
        ecd_kick_(ps, gs, ms, **factors, foreach=foreach)
        for i, part in zip(small, _cpu_partial_squares(ms), strict=True):
            squares[i] = part
        if drift is not None:
            ecd_drift_(ps, ms, drift=drift, foreach=foreach)
    if len(small) < len(momenta):
        small_set = set(small)
        for i, (p, g, m) in enumerate(zip(params, grads, momenta, strict=True)):
            if i in small_set:
                continue
            _single_tensor_kick_([p], [g], [m], **factors)
            squares[i] = _cpu_partial_squares([m])[0]
            if drift is not None:
                p.add_(m, alpha=drift)
    return squares


def ecd_kick_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    momenta: Sequence[Tensor],
    *,
    rescale: Coefficient,
    kick: Coefficient,
    weight_decay: float,
    foreach: bool,
) -> None:
    """Energy restoration and kick, in place: Π ← α·Π − k·(∇F + λ·Θ) (eq. 11, Algorithm 1)."""
    fn = _multi_tensor_kick_ if foreach else _single_tensor_kick_
    fn(params, grads, momenta, rescale=rescale, kick=kick, weight_decay=weight_decay)


def ecd_drift_(
    params: Sequence[Tensor], momenta: Sequence[Tensor], *, drift: Coefficient, foreach: bool
) -> None:
    """Drift, in place: Θ ← Θ + d·Π (eq. 12, with the momentum after the kick)."""
    fn = _multi_tensor_drift_ if foreach else _single_tensor_drift_
    fn(params, momenta, drift=drift)


# --------------------------------------------------------------------------- fused (compiled)
def _fused_kick_drift_impl(
    params: list[Tensor],
    grads: list[Tensor],
    momenta: list[Tensor],
    rescale: Tensor,
    kick: Tensor,
    drift: Tensor | None,
    weight_decay: float,
) -> Tensor:
    """Kick (and drift, when D does not depend on Π²) of every tensor in one pass, returning Π².

    Written for ``torch.compile``: each tensor becomes one fused loop that reads Π, ∇F and Θ once,
    writes Π and Θ once, and accumulates Π² (in float64) on the way — SGD's memory traffic.
    """
    total = torch.zeros((), dtype=torch.float64, device=rescale.device)
    for p, g, m in zip(params, grads, momenta, strict=True):
        force = g if weight_decay == 0.0 else g + weight_decay * p
        m_new = m * rescale - force * kick
        m.copy_(m_new)
        if drift is not None:
            p.copy_(p + m_new * drift)
        total = total + m_new.square().sum(dtype=torch.float64)
    return total


def _fused_drift_impl(params: list[Tensor], momenta: list[Tensor], drift: Tensor) -> None:
    for p, m in zip(params, momenta, strict=True):
        p.copy_(p + m * drift)


_COMPILED: dict[str, object] = {}


def _compiled(name: str):
    fn = _COMPILED.get(name)
    if fn is None:
        impl = {"kick_drift": _fused_kick_drift_impl, "drift": _fused_drift_impl}[name]
        fn = _COMPILED[name] = torch.compile(impl, fullgraph=True, dynamic=False)
    return fn


def fused_kick_drift_(
    params: list[Tensor],
    grads: list[Tensor],
    momenta: list[Tensor],
    *,
    rescale: Tensor,
    kick: Tensor,
    drift: Tensor | None,
    weight_decay: float,
) -> Tensor:
    """The compiled kick (+ drift when ``drift`` is given); returns Σ Π² of these tensors."""
    return _compiled("kick_drift")(params, grads, momenta, rescale, kick, drift, weight_decay)


def fused_drift_(params: list[Tensor], momenta: list[Tensor], *, drift: Tensor) -> None:
    """The compiled drift Θ ← Θ + d·Π (for Hamiltonians whose D needs Π² after the kick)."""
    _compiled("drift")(params, momenta, drift)
