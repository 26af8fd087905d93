"""Chaos mechanisms of ECD: the bounce schedule of BBI and the rotation of ECDSep.

Bounces (paper §3.3, Algorithm 1) keep |Π| and draw a new direction. Two counters decide when:
c0 counts steps for the fixed schedule (a bounce when c0 = T0, N_b times) and c1 counts steps
without a new minimum of V (a bounce when c1 = T1). The schedule functions work elementwise on
Python ints/bools (one particle, host side) or on integer tensors (an ensemble of particles, or
device-side counters), so the optimizer and the ensemble share one definition.

Rotation (ECDSep): every step Π ← |Π|·u/|u| with u = Π/|Π| + ν·ξ, ξ ~ N(0, I).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, TypeVar

import torch
from torch import Tensor

from ._scalar import where

__all__ = [
    "BOUNCE_DIRECTIONS",
    "STREAM_BOUNCE",
    "STREAM_INITIAL",
    "STREAM_ROTATION",
    "bounce_",
    "bounce_due",
    "counters_after_bounce",
    "counters_after_update",
    "draw_direction",
    "keyed_draw",
    "keyed_rows",
    "keyed_seed",
    "rotate_",
    "rotate_lazy_",
]

BOUNCE_DIRECTIONS = ("gaussian", "uniform")
BounceDirection = Literal["gaussian", "uniform"]

T = TypeVar("T", int, bool, Tensor)

# Random draws are keyed by (seed, step index, stream), so whether a draw happens at one step
# never shifts the numbers of another: the host and the device-side paths, the reference and
# a resumed run all draw the same ξ.
STREAM_BOUNCE = 0
STREAM_ROTATION = 1
STREAM_INITIAL = 2
_MASK64 = (1 << 64) - 1


def keyed_seed(seed: int, step: int, stream: int) -> int:
    """A 63-bit seed for the draw of ``stream`` at ``step`` (a splitmix64 mix of the three)."""
    z = 0x632BE59BD9B4E019 + seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9
    z += stream * 0x94D049BB133111EB
    z &= _MASK64
    for shift, mult in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
        z = ((z ^ (z >> shift)) * mult) & _MASK64
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


def bounce_due(
    c0: T,
    c1: T,
    n_done: T,
    *,
    bounce_period: int | None,
    n_bounces: int,
    bounce_patience: int | None,
) -> tuple[T, T]:
    """Whether a bounce happens now (Algorithm 1's test ``c0 = T0 or c1 = T1``).

    Returns ``(fixed, due)``: ``fixed`` for a bounce of the fixed schedule (c0 = T0 with fewer
    than N_b done), ``due`` for any bounce (fixed, or progress: c1 = T1). ``None`` turns a
    mechanism off. Algorithm 1 read literally performs one fixed bounce even with N_b = 0; here
    N_b = 0 means no fixed bounce (for N_b ≥ 1 the two agree exactly).
    """
    if bounce_period is None:
        fixed = c0 != c0  # False, of c0's kind
    else:
        fixed = (c0 == bounce_period) & (n_done < n_bounces)
    if bounce_patience is None:
        return fixed, fixed
    return fixed, fixed | (c1 == bounce_patience)


def counters_after_bounce(c0: T, c1: T, n_done: T, fixed: T, *, n_bounces: int) -> tuple[T, T, T]:
    """Counters after a bounce (Algorithm 1's else branch).

    A fixed bounce increments n_b and resets c0 while n_b < N_b (after the last one c0 moves past
    T0 and never meets it again); every bounce resets c1. Returns ``(c0, c1, n_done)``.
    """
    n_done = n_done + fixed
    c0 = where(fixed, where(n_done < n_bounces, c0 * 0, c0 + 1), c0)
    return c0, c1 * 0, n_done


def counters_after_update(c0: T, c1: T, new_minimum: T) -> tuple[T, T]:
    """Counters after a normal update: c0 += 1, c1 += 1, and c1 = 0 on a new minimum of V."""
    return c0 + 1, where(new_minimum, c1 * 0, c1 + 1)


def draw_direction(
    like: Sequence[Tensor],
    generator: torch.Generator | dict[torch.device, torch.Generator],
    kind: BounceDirection = "gaussian",
    *,
    out: Sequence[Tensor] | None = None,
) -> list[Tensor]:
    """Draw ξ, one tensor per entry of ``like`` (same shape, dtype and device).

    ``"gaussian"``: ξ ~ N(0, I), isotropic after normalisation (the default). ``"uniform"``:
    ξ ~ U(−½, ½) per component, the authors' cube (not isotropic; kept to reproduce their
    figures). Tensors are drawn in order, so a generator seeded the same way gives the same ξ.
    ``out``: tensors shaped like ``like`` to draw into (the same numbers as fresh ones; saves
    allocating a model-sized ξ at every ECDSep step on the CPU).
    """
    if kind not in BOUNCE_DIRECTIONS:
        raise ValueError(f"bounce_direction must be one of {BOUNCE_DIRECTIONS}, got {kind!r}")
    if out is None:
        out = [torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in like]
    elif len(out) != len(like):
        raise ValueError(f"out has {len(out)} tensors, like has {len(like)}")
    for t, xi in zip(like, out, strict=True):
        gen = generator[t.device] if isinstance(generator, dict) else generator
        if kind == "gaussian":
            xi.normal_(generator=gen)
        else:
            xi.uniform_(generator=gen).sub_(0.5)
    return list(out)


def keyed_draw(
    like: Sequence[Tensor],
    *,
    seed: int,
    step: int,
    stream: int,
    kind: BounceDirection,
    generators: dict[torch.device, torch.Generator],
    out: Sequence[Tensor] | None = None,
) -> list[Tensor]:
    """ξ for ``stream`` at ``step`` of the particle seeded ``seed`` (see :func:`keyed_seed`).

    One generator per device (kept in ``generators``, reseeded here), tensors drawn in order.
    FSDP2 shards (DTensors): every rank draws the full ξ from the same key and keeps its own
    shard, so a sharded run bounces exactly as the unsharded one.
    """
    key = keyed_seed(seed, step, stream)
    used: dict[torch.device, torch.Generator] = {}
    for t in like:
        if t.device not in used:
            gen = generators.get(t.device)
            if gen is None:
                gen = generators[t.device] = torch.Generator(device=t.device)
            used[t.device] = gen.manual_seed(key)
    xi = draw_direction(like, used, kind, out=out)
    if any(type(t) not in (Tensor, torch.nn.Parameter) for t in like):
        from .distributed import is_dtensor, shard_like

        xi = [shard_like(x, t) if is_dtensor(t) else x for x, t in zip(xi, like, strict=True)]
    return xi


def keyed_rows(
    rows: Tensor,
    *,
    seeds: Sequence[int],
    steps: Tensor,
    stream: int,
    kind: BounceDirection,
    like: Tensor,
    generator: torch.Generator,
) -> Tensor:
    """ξ for the particles of an ensemble (``like`` is ``[M, n]``): row m is exactly what
    :func:`keyed_draw` gives the single particle ``seeds[m]`` at step ``steps[m]`` (a flat
    parameter of n numbers). Only the rows where ``rows`` is True are drawn; the others are 0.
    """
    xi = torch.zeros_like(like)
    for m in torch.nonzero(rows).flatten().tolist():
        generator.manual_seed(keyed_seed(seeds[m], int(steps[m]), stream))
        draw_direction([xi[m]], generator, kind, out=[xi[m]])
    return xi


def _norm(tensors: Sequence[Tensor], device: torch.device, host: bool) -> Any:
    """|x| over all ``tensors`` (float64 sums, overflow-free): a float on the host path."""
    from ._kernels import host_sum_of_squares, sum_of_squares

    if host:
        return host_sum_of_squares(tensors, device) ** 0.5
    return sum_of_squares(tensors, device).sqrt()


def bounce_(momenta: Sequence[Tensor], xi: Sequence[Tensor], mask: Tensor | None = None) -> None:
    """A bounce, in place: Π ← |Π|·ξ/|ξ| (norms over all tensors together).

    ``mask`` (a 0-dim bool tensor) keeps Π unchanged where False, without a host sync.
    """
    if not momenta:
        return
    device, host = momenta[0].device, mask is None
    scale = _norm(momenta, device, host) / _norm(xi, device, host)
    for m, x in zip(momenta, xi, strict=True):
        if host:
            m.copy_(x).mul_(scale)
        else:
            new = x * scale.to(x.device, x.dtype)
            m.copy_(torch.where(mask.to(m.device), new, m))


def rotate_(
    momenta: Sequence[Tensor],
    xi: Sequence[Tensor],
    chaos: float,
    mask: Tensor | None = None,
    *,
    momentum_sq: float | None = None,
) -> None:
    """ECDSep rotation, in place: Π ← |Π|·u/|u| with u = Π/|Π| + ν·ξ (ν = ``chaos``).

    Keeps |Π|; leaves Π = 0 unchanged. ``mask`` as in :func:`bounce_`. Computed as
    Π ← |Π|·w/|w| with w = a·Π + b·ξ ∝ u, where a = 1 and b = ν|Π| for ν ≤ 1, a = 1/ν and
    b = |Π| above (so that w cannot overflow): in-place passes over the model (add ξ, |w|²,
    rescale) and no temporaries; ``xi`` is used as scratch. ``momentum_sq``: Π² when the caller
    already summed it exactly on the host (plain CPU tensors), to save that pass.
    """
    from ._kernels import host_sum_of_squares, is_plain_cpu

    if not momenta:
        return
    nu, momenta, device = float(chaos), list(momenta), momenta[0].device
    shrink = 1.0 / nu if nu > 1.0 else 1.0
    host = mask is None and all(is_plain_cpu(t) for t in (*momenta, *xi))
    if host:  # plain CPU tensors: scalars as Python floats, exact host sums
        norm_sq = (
            host_sum_of_squares(momenta, device, plain=True) if momentum_sq is None else momentum_sq
        )
        if not norm_sq > 0:
            return
        if shrink != 1.0:
            torch._foreach_mul_(momenta, shrink)
        torch._foreach_add_(momenta, list(xi), alpha=nu * shrink * norm_sq**0.5)
        new_sq = host_sum_of_squares(momenta, device, plain=True)
        if new_sq > 0:
            torch._foreach_mul_(momenta, (norm_sq / new_sq) ** 0.5)
        return
    norm = _norm(momenta, device, host=False)
    step = (nu * shrink) * norm
    if mask is not None:
        step = torch.where(mask.to(device), step, torch.zeros_like(step))
    if shrink != 1.0:
        factor = shrink
        if mask is not None:
            factor = torch.where(mask.to(device), norm.new_tensor(shrink), norm.new_tensor(1.0))
        torch._foreach_mul_(momenta, factor)
    for m, x in zip(momenta, xi, strict=True):
        m.add_(x.mul_(step.to(x.device, x.dtype)))
    new_norm = _norm(momenta, device, host=False)
    scale = torch.where(new_norm > 0, norm / new_norm, torch.ones_like(norm))
    for m in momenta:
        m.mul_(scale.to(m.device, m.dtype))


def rotate_lazy_(
    momenta: Sequence[Tensor], xi: Sequence[Tensor], chaos: float, momentum_sq: float | None
) -> bool:
    """The in-place half of :func:`rotate_` for a caller that keeps Π = σ·P with a scale σ of
    its own: P ← P + ν|P|·ξ (``momentum_sq`` = |P|², plain CPU tensors). The caller then sets
    σ = |Π|/|P| (the rotation keeps |Π|), which saves the rescaling pass. Returns False, doing
    nothing, when :func:`rotate_` must do it all (ν > 1, P = 0 or |P|² unknown)."""
    nu = float(chaos)
    if momentum_sq is None or nu > 1.0 or not momentum_sq > 0 or not momenta:
        return False
    torch._foreach_add_(list(momenta), list(xi), alpha=nu * momentum_sq**0.5)
    return True
