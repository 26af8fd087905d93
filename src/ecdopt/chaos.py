"""Chaos mechanisms of ECD: the bounce schedule of BBI and the rotation of ECDSep.

Bounces (paper §3.3, Algorithm 1) keep |Π| and draw a new direction. Two counters decide when:
c0 counts steps for the fixed schedule (a bounce when c0 = T0, N_b times) and c1 counts steps
without a new minimum of V (a bounce when c1 = T1). The schedule functions work elementwise on
Python ints/bools (one particle, host side) or on integer tensors (an ensemble of particles, or
device-side counters), so the optimizer and the ensemble share one definition.

Rotation (ECDSep): every step Π ← |Π|·u/|u| with u = Π/|Π| + ν·ξ, ξ ~ N(0, I).

Random directions ξ are keyed by (seed, step, stream) and come from one of two generators
(``rng``): ``"torch"`` reseeds a ``torch.Generator`` with the key (:func:`keyed_draw`; the
default, the draws of every earlier release), and ``"counter"`` hashes (key, index) in tensor
ops (:func:`counter_draw`): the same integers on every device, a key that may be a device
tensor (so a CUDA graph draws new numbers at every replay), and the rows of an ensemble drawn
in one vectorised call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, TypeVar

import torch
from torch import Tensor

from ._scalar import where

__all__ = [
    "BOUNCE_DIRECTIONS",
    "RNGS",
    "STREAM_BOUNCE",
    "STREAM_INITIAL",
    "STREAM_ROTATION",
    "bounce_",
    "bounce_due",
    "counter_bits",
    "counter_draw",
    "counter_key",
    "counters_after_bounce",
    "counters_after_update",
    "draw_direction",
    "keyed_draw",
    "keyed_rows",
    "keyed_seed",
    "rotate_",
    "rotate_lazy_",
    "rotation_due",
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
RNGS = ("torch", "counter")
_MASK64 = (1 << 64) - 1
_KEY_OFFSET = 0x632BE59BD9B4E019
_GOLDEN = 0x9E3779B97F4A7C15  # splitmix64's Weyl increment
_MIX = ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB))  # (shift, multiplier) rounds


def keyed_seed(seed: int, step: int, stream: int) -> int:
    """A 63-bit seed for the draw of ``stream`` at ``step`` (a splitmix64 mix of the three)."""
    z = _KEY_OFFSET + seed * _GOLDEN + step * _MIX[0][1]
    z += stream * _MIX[1][1]
    z &= _MASK64
    for shift, mult in _MIX:
        z = ((z ^ (z >> shift)) * mult) & _MASK64
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


def _signed(value: int) -> int:
    """A 64-bit pattern as the int64 that holds it (torch integers are signed)."""
    value &= _MASK64
    return value - (1 << 64) if value >> 63 else value


def _mix_tensor(z: Tensor) -> Tensor:
    """splitmix64's finaliser on int64 tensors: multiplications wrap modulo 2**64 and the right
    shifts are made logical by masking (torch shifts int64 arithmetically)."""
    for shift, mult in _MIX:
        z = (z ^ ((z >> shift) & ((1 << (64 - shift)) - 1))) * _signed(mult)
    return z ^ ((z >> 31) & ((1 << 33) - 1))


def counter_key(seed: Any, step: Any, stream: int) -> Any:
    """:func:`keyed_seed` where ``seed`` and ``step`` may be int64 tensors (a device step counter
    inside a CUDA graph, or one seed and step per particle of an ensemble): bit for bit the same
    63-bit key, as a tensor (ints give the int of :func:`keyed_seed`)."""
    if not isinstance(seed, Tensor) and not isinstance(step, Tensor):
        return keyed_seed(seed, step, stream)
    base = _signed(_KEY_OFFSET + stream * _MIX[1][1])
    seed_part = seed * _signed(_GOLDEN) if isinstance(seed, Tensor) else _signed(seed * _GOLDEN)
    step_part = (
        step * _signed(_MIX[0][1]) if isinstance(step, Tensor) else _signed(step * _MIX[0][1])
    )
    z = _mix_tensor(seed_part + step_part + base)
    return z & ((1 << 63) - 1)


def counter_bits(key: Any, index: Tensor) -> Tensor:
    """64 random bits (an int64 tensor) for each ``index`` under ``key``: splitmix64's output
    for position ``index`` of the stream seeded ``key``, mix(key + (index + 1)·γ). Counter-based:
    any index can be drawn alone, in any order, on any device, with the same result."""
    if isinstance(key, Tensor):
        return _mix_tensor((index + 1) * _signed(_GOLDEN) + key)
    return _mix_tensor((index + 1) * _signed(_GOLDEN) + _signed(key))


def _counter_values(bits: Tensor, kind: str) -> Tensor:
    """float64 values from 64 random bits each: N(0, 1) by Box-Muller (the top 32 bits give
    the radius, the low 32 the angle; one normal per word) or U(−½, ½) from the top 53 bits."""
    if kind == "uniform":
        return ((bits >> 11) & ((1 << 53) - 1)).to(torch.float64) * 2.0**-53 - 0.5
    high = ((bits >> 32) & 0xFFFFFFFF).to(torch.float64).add_(0.5).mul_(2.0**-32)
    low = (bits & 0xFFFFFFFF).to(torch.float64).mul_(2.0**-32 * 2.0 * math.pi)
    return high.log_().mul_(-2.0).sqrt_().mul_(low.cos_())


def _chunk(device: torch.device) -> int:
    """Elements drawn per batch of tensor ops: small on the CPU (the temporaries stay in
    cache), large elsewhere (fewer kernels, e.g. inside a CUDA graph)."""
    return 1 << 16 if device.type == "cpu" else 1 << 24


def _runs_by_device(tensors: Sequence[Tensor]) -> list[list[Tensor]]:
    """``tensors`` cut into runs of consecutive tensors on one device."""
    runs: list[list[Tensor]] = []
    for t in tensors:
        if runs and runs[-1][0].device == t.device:
            runs[-1].append(t)
        else:
            runs.append([t])
    return runs


def _pieces(run: list[Tensor]) -> list[tuple[Tensor, int]]:
    """(a flat buffer for each tensor — its own storage when contiguous —, its start in the run)."""
    pieces, start = [], 0
    for xi in run:
        flat = (
            xi.view(-1)
            if xi.is_contiguous()
            else torch.empty(xi.numel(), dtype=xi.dtype, device=xi.device)
        )
        pieces.append((flat, start))
        start += xi.numel()
    return pieces


def _scatter(values: Tensor, pieces: list[tuple[Tensor, int]], start: int, stop: int) -> None:
    """Copy ``values`` (the run's elements ``start:stop``) into the pieces they belong to."""
    for flat, first in pieces:
        lo, hi = max(start, first), min(stop, first + flat.numel())
        if lo < hi:
            flat[lo - first : hi - first] = values[lo - start : hi - start]


def counter_draw(
    like: Sequence[Tensor],
    *,
    key: Any,
    kind: BounceDirection,
    out: Sequence[Tensor] | None = None,
) -> list[Tensor]:
    """ξ like ``like`` from the counter generator under ``key`` (an int, or an int64 tensor on
    the tensors' device): element i of the flattened tensors, taken in order, is
    :func:`counter_bits` (key, i) turned into N(0, 1) or U(−½, ½). The integers are the same on
    every device; the floats are computed in float64 and rounded to each tensor's dtype (so CPU
    and GPU agree to that rounding). No generator state: a key tensor updated in place gives
    new draws at every replay of a captured CUDA graph.
    """
    out = _draw_targets(like, kind, out)
    offset = 0
    for run in _runs_by_device(out):  # consecutive tensors on one device: drawn together
        size = sum(xi.numel() for xi in run)
        device = run[0].device
        k = key.to(device) if isinstance(key, Tensor) else key
        pieces = _pieces(run)
        step = _chunk(device)
        for start in range(0, size, step):
            stop = min(start + step, size)
            index = torch.arange(offset + start, offset + stop, device=device)
            _scatter(_counter_values(counter_bits(k, index), kind), pieces, start, stop)
        for xi, (values, _) in zip(run, pieces, strict=True):
            if values.data_ptr() != xi.data_ptr() or not xi.is_contiguous():
                xi.copy_(values.view(xi.shape))
        offset += size
    if any(type(t) not in (Tensor, torch.nn.Parameter) for t in like):
        from .distributed import is_dtensor, shard_like

        out = [shard_like(x, t) if is_dtensor(t) else x for x, t in zip(out, like, strict=True)]
    return list(out)


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


def rotation_due(call: T, every: int) -> T:
    """Whether the ``call``-th step (from 0) rotates Π when it rotates every ``every`` steps:
    the steps ``every − 1``, ``2·every − 1``, ... (every step for 1)."""
    if every == 1:
        return call == call  # True, of call's kind
    return (call + 1) % every == 0


def _draw_targets(
    like: Sequence[Tensor], kind: str, out: Sequence[Tensor] | None
) -> Sequence[Tensor]:
    """The tensors a draw writes into: ``out`` (checked) or new ones shaped like ``like``."""
    if kind not in BOUNCE_DIRECTIONS:
        raise ValueError(f"bounce_direction must be one of {BOUNCE_DIRECTIONS}, got {kind!r}")
    if out is None:
        return [torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in like]
    if len(out) != len(like):
        raise ValueError(f"out has {len(out)} tensors, like has {len(like)}")
    return out


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
    out = _draw_targets(like, kind, out)
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
    rng: str = "torch",
) -> Tensor:
    """ξ for the particles of an ensemble (``like`` is ``[M, n]``): row m is exactly what
    :func:`keyed_draw` (``rng="torch"``: one reseeded generator per row) or :func:`counter_draw`
    (``rng="counter"``: all rows in one vectorised call) gives the single particle ``seeds[m]``
    at step ``steps[m]`` (a flat parameter of n numbers). Only the rows where ``rows`` is True
    are drawn; the others are 0.
    """
    if rng == "counter":
        seed_tensor = torch.tensor(
            [_signed(s) for s in seeds], dtype=torch.int64, device=like.device
        )
        keys = counter_key(seed_tensor, steps.to(torch.int64), stream)[:, None]
        index = torch.arange(like.shape[1], device=like.device)[None, :]
        xi = _counter_values(counter_bits(keys, index), kind).to(like.dtype)
        return torch.where(rows[:, None], xi, torch.zeros((), dtype=like.dtype, device=like.device))
    xi = torch.zeros_like(like)
    due = torch.nonzero(rows).flatten()
    for m, step in zip(due.tolist(), steps[due].tolist(), strict=True):
        generator.manual_seed(keyed_seed(seeds[m], int(step), stream))
        row = xi[m]
        draw_direction([row], generator, kind, out=[row])
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
