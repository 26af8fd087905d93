"""The one set of scalar helpers of the ECD math: Python floats, torch tensors, other arrays.

The coefficients of a step (E, V, α, K, D, ...) are Python floats on the CPU host path, 0-dim
tensors on the sync-free device path, ``[M]`` tensors in an ensemble of M particles and JAX
arrays in the optax port. The functions here dispatch on the type of their first array argument
(a torch tensor → ``torch``; a NumPy or JAX array → that library's namespace; plain numbers →
:mod:`math`), so one formula serves every path. For floats they never raise: an overflow gives
``inf`` and an undefined value ``nan``, as tensors do.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "Scalar",
    "exp",
    "isfinite",
    "log",
    "maximum",
    "minimum",
    "namespace",
    "power",
    "sqrt",
    "where",
]

Scalar = float | Tensor  # a float on the host, or a tensor (0-dim, or a batch of particles)


_NUMBERS = (float, int, bool)


def namespace(*values: Any) -> ModuleType | None:
    """The array library of the first array among ``values`` (None when all are numbers)."""
    for value in values:
        if type(value) in _NUMBERS:  # the host path's case, first and cheap
            continue
        if isinstance(value, Tensor):
            return torch
        if isinstance(value, bool | int | float) or value is None:
            continue
        root = type(value).__module__.partition(".")[0]
        if root in ("jax", "jaxlib"):
            import jax.numpy as jnp

            return jnp
        if root == "numpy":
            import numpy

            return numpy
        raise TypeError(f"not a number or an array: {type(value).__name__}")
    return None


def sqrt(x: Any) -> Any:
    """√x (nan for x < 0)."""
    if type(x) is float:
        return math.sqrt(x) if x >= 0 else math.nan
    xp = namespace(x)
    if xp is not None:
        return xp.sqrt(x)
    return math.sqrt(x) if x >= 0 else math.nan


def log(x: Any) -> Any:
    """log x (−inf at 0, nan below)."""
    xp = namespace(x)
    if xp is not None:
        return xp.log(x)
    if x > 0:
        return math.log(x)
    return -math.inf if x == 0 else math.nan


def exp(x: Any) -> Any:
    """e**x (inf on overflow)."""
    xp = namespace(x)
    if xp is not None:
        return xp.exp(x)
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def power(x: Any, y: float) -> Any:
    """x**y for x ≥ 0 (inf on overflow)."""
    if namespace(x) is not None:
        return x**y
    try:
        return float(x) ** y
    except OverflowError:
        return math.inf
    except ZeroDivisionError:  # 0.0 ** negative
        return math.inf


def isfinite(x: Any) -> Any:
    """Whether x is finite (elementwise for arrays)."""
    if type(x) is float:
        return math.isfinite(x)
    xp = namespace(x)
    return xp.isfinite(x) if xp is not None else math.isfinite(x)


def where(condition: Any, if_true: Any, if_false: Any) -> Any:
    """``if_true if condition else if_false``; elementwise for array conditions."""
    if type(condition) is bool and type(if_true) in _NUMBERS and type(if_false) in _NUMBERS:
        return if_true if condition else if_false
    xp = namespace(condition, if_true, if_false)
    if xp is None:
        return if_true if condition else if_false
    if xp is torch:
        like = next(v for v in (if_true, if_false, condition) if isinstance(v, Tensor))
        condition = _on(condition, torch.bool if not isinstance(condition, Tensor) else None, like)
        return torch.where(condition, *_tensors_like(if_true, if_false, like))
    return xp.where(condition, if_true, if_false)


def _dtype(value: Any, like: Tensor) -> torch.dtype:
    if isinstance(value, Tensor):
        return value.dtype
    if isinstance(value, bool):
        return torch.bool
    if isinstance(value, int):
        return torch.int64 if like.dtype in (torch.bool, torch.int64) else like.dtype
    return like.dtype if like.dtype.is_floating_point else torch.float64


def minimum(a: Any, b: Any) -> Any:
    """The smaller of a and b (elementwise for arrays)."""
    if type(a) is float and type(b) is float:
        return a if (a <= b or a != a) else b  # NaN propagates, as in torch
    xp = namespace(a, b)
    if xp is None:
        return min(a, b)
    if xp is torch:
        return torch.minimum(*_tensors(a, b))
    return xp.minimum(a, b)


def maximum(a: Any, b: Any) -> Any:
    """The larger of a and b (elementwise for arrays)."""
    if type(a) is float and type(b) is float:
        return a if (a >= b or a != a) else b  # NaN propagates, as in torch
    xp = namespace(a, b)
    if xp is None:
        return max(a, b)
    if xp is torch:
        return torch.maximum(*_tensors(a, b))
    return xp.maximum(a, b)


def _tensors(a: Any, b: Any) -> tuple[Tensor, Tensor]:
    """a and b as tensors on the device of the tensor among them, in their promoted dtype."""
    return _tensors_like(a, b, a if isinstance(a, Tensor) else b)


def _tensors_like(a: Any, b: Any, like: Tensor) -> tuple[Tensor, Tensor]:
    dtype = torch.promote_types(_dtype(a, like), _dtype(b, like))
    return _on(a, dtype, like), _on(b, dtype, like)


def _on(value: Any, dtype: torch.dtype | None, like: Tensor) -> Tensor:
    """``value`` as a tensor on ``like``'s device. A Python number is written by a fill on
    that device, not copied from host memory (a host-to-device copy cannot be captured in a
    CUDA graph)."""
    if isinstance(value, Tensor):
        return value.to(device=like.device, dtype=dtype or value.dtype)
    return torch.full((), value, dtype=dtype, device=like.device)
