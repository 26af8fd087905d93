"""The one registry of optimizers used by every experiment: names, hyperparameters and their
allowed ranges, the factory that builds them, and the Optuna search spaces and grids.

Names: ``bbi`` (:class:`ecdopt.BBI`, Born-Infeld ECD with bounces), ``ecdsep``
(:class:`ecdopt.ECDSep`, the separable Hamiltonian with chaotic rotations), ``sgdm``
(``torch.optim.SGD`` with momentum) and ``adam`` (``torch.optim.Adam``): :data:`OPTIMIZERS`, the
paper's experiments. :data:`ALL_OPTIMIZERS` adds ``unit_speed`` (:class:`ecdopt.UnitSpeedECD`)
and ``adamw`` (``torch.optim.AdamW``), used by the transformer experiment.

Hyperparameters keep the library's names; the paper's symbols are: ``lr`` = Δt (the time step),
``extra_energy`` = δE (energy above the initial loss), ``loss_floor`` = ΔV (the loss value treated
as zero), ``bounce_period`` = T0, ``n_bounces`` = N_b, ``bounce_patience`` = T1, ``loss_power`` =
η (V = F**η), ``chaos`` = ν (the rotation strength of ECDSep).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ACCEPTS",
    "ALL_OPTIMIZERS",
    "GRIDS",
    "HYPERPARAMETERS",
    "OPTIMIZERS",
    "SEARCH_SPACES",
    "Hyperparameter",
    "check_hyperparameter",
    "ensemble_off_shell_steps",
    "make_optimizer",
    "off_shell_steps",
    "sampler_seed",
    "seed_plus",
]

OPTIMIZERS: tuple[str, ...] = ("bbi", "ecdsep", "sgdm", "adam")
#: every optimizer :func:`make_optimizer` builds
ALL_OPTIMIZERS: tuple[str, ...] = (*OPTIMIZERS, "unit_speed", "adamw")


@dataclass(frozen=True)
class Hyperparameter:
    """One hyperparameter: its type, its allowed range and what it means.

    Allowed: ``low <= value`` (``low < value`` when ``low_open``) and ``value <= high``
    (``< high`` when ``high_open``); every value is finite.
    """

    name: str
    kind: type
    low: float
    high: float
    help: str
    low_open: bool = False
    high_open: bool = False

    def allowed(self) -> str:
        """The range in words, e.g. ``a finite number > 0``."""
        noun = "an integer" if self.kind is int else "a finite number"
        parts = []
        if math.isfinite(self.low):
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if math.isfinite(self.high):
            parts.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        return noun + (" " + " and ".join(parts) if parts else "")

    def contains(self, value: float) -> bool:
        """Whether ``value`` is of the right kind and in range."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.kind is int and not float(value).is_integer():
            return False
        if not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below


_INF = math.inf
HYPERPARAMETERS: dict[str, Hyperparameter] = {
    h.name: h
    for h in (
        Hyperparameter("lr", float, 0.0, _INF, "learning rate / time step [Δt]", low_open=True),
        Hyperparameter("momentum", float, 0.0, 1.0, "SGD momentum [μ] (sgdm)", high_open=True),
        Hyperparameter(
            "extra_energy", float, 0.0, _INF, "energy above the initial loss [δE] (bbi, ecdsep)"
        ),
        Hyperparameter("loss_floor", float, -_INF, _INF, "loss value treated as zero [ΔV]"),
        Hyperparameter("bounce_period", int, 1, _INF, "steps between fixed bounces [T0] (bbi)"),
        Hyperparameter("n_bounces", int, 0, _INF, "number of fixed bounces [N_b] (bbi)"),
        Hyperparameter(
            "bounce_patience", int, 1, _INF, "steps without progress before a bounce [T1] (bbi)"
        ),
        Hyperparameter(
            "loss_power", float, 0.0, _INF, "V = loss**η [η] (ecdsep, unit_speed)", low_open=True
        ),
        Hyperparameter("chaos", float, 0.0, _INF, "rotation strength [ν] (ecdsep, unit_speed)"),
        Hyperparameter("weight_decay", float, 0.0, _INF, "L2 weight decay"),
    )
}

#: the hyperparameters each optimizer takes
ACCEPTS: dict[str, tuple[str, ...]] = {
    "sgdm": ("lr", "momentum", "weight_decay"),
    "adam": ("lr", "weight_decay"),
    "bbi": (
        "lr",
        "extra_energy",
        "loss_floor",
        "bounce_period",
        "n_bounces",
        "bounce_patience",
        "weight_decay",
    ),
    "ecdsep": ("lr", "extra_energy", "loss_floor", "loss_power", "chaos", "weight_decay"),
    "unit_speed": ("lr", "loss_floor", "loss_power", "chaos", "weight_decay"),
    "adamw": ("lr", "weight_decay"),
}


def check_hyperparameter(name: str, value: Any) -> float | int:
    """``value`` as the hyperparameter's type; ``ValueError`` naming it and its range if not."""
    spec = HYPERPARAMETERS.get(name)
    if spec is None:
        raise ValueError(f"unknown hyperparameter {name!r}; known: {', '.join(HYPERPARAMETERS)}")
    if not spec.contains(value):
        raise ValueError(f"{name} must be {spec.allowed()}, got {value!r}")
    return int(value) if spec.kind is int else float(value)


def make_optimizer(
    name: str, params: Any, settings: Mapping[str, Any], *, seed: int | None = None
) -> Any:
    """Build optimizer ``name`` on ``params`` from ``settings`` (keyword arguments with ``lr``).

    ``seed`` seeds the ECD optimizers' randomness (bounces, rotations); SGD and Adam have none.
    The optimizers check their own arguments (``ValueError`` naming the argument).
    """
    kw = dict(settings)
    if name in ("bbi", "ecdsep", "unit_speed"):
        from ecdopt import BBI, ECDSep, UnitSpeedECD

        cls = {"bbi": BBI, "ecdsep": ECDSep, "unit_speed": UnitSpeedECD}[name]
        return cls(params, seed=seed, **kw)
    import torch

    if name == "sgdm":
        return torch.optim.SGD(params, **kw)
    if name == "adam":
        return torch.optim.Adam(params, **kw)
    if name == "adamw":
        return torch.optim.AdamW(params, **kw)
    raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(ALL_OPTIMIZERS)}")


# --------------------------------------------------------------------------------------------
# search spaces: (low, high, log) per hyperparameter; an int ``low`` and ``high`` mark an integer
# --------------------------------------------------------------------------------------------

Space = dict[str, tuple[float, float, bool]]

SEARCH_SPACES: dict[str, dict[str, Space]] = {
    # §4.1 Ackley (the authors' ranges); ``ecdopt synthetic ackley``
    "ackley": {
        "bbi": {"lr": (1e-6, 1e-2, True)},
        "sgdm": {"lr": (1e-4, 0.5, True), "momentum": (0.0, 1.0, False)},
        "adam": {"lr": (1e-4, 0.5, True)},
        "ecdsep": {"lr": (1e-5, 1e-1, True), "loss_power": (0.5, 2.0, False)},
    },
    # §4.2 Zakharov; ``sgdm_narrow`` is GDM searched at small steps only
    "zakharov": {
        "bbi": {"lr": (1e-6, 1e-2, True)},
        "sgdm": {"lr": (1e-10, 0.5, True), "momentum": (0.0, 1.0, False)},
        "sgdm_narrow": {"lr": (1e-10, 1e-5, True), "momentum": (0.0, 1.0, False)},
        "adam": {"lr": (1e-6, 1.0, True)},
        "ecdsep": {"lr": (1e-6, 1e-1, True), "loss_power": (0.5, 2.0, False)},
    },
    # §4.5 CIFAR search ranges; ``ecdopt train --protocol optuna`` and ``ecdopt tune digits``
    "vision": {
        "sgdm": {"lr": (1e-3, 0.2, True), "momentum": (0.8, 1.0, False)},
        "bbi": {"lr": (1e-3, 0.2, True)},
        "ecdsep": {"lr": (1e-3, 0.2, True)},
        "adam": {"lr": (1e-5, 1e-2, True)},
    },
    # wide ranges for any landscape of ecdopt.landscapes; ``ecdopt tune LANDSCAPE``
    "landscape": {
        "bbi": {
            "lr": (1e-4, 0.5, True),
            "extra_energy": (1e-3, 10.0, True),
            "bounce_period": (10, 2000, True),
            "n_bounces": (1, 100, True),
        },
        "ecdsep": {
            "lr": (1e-4, 0.5, True),
            "extra_energy": (1e-3, 10.0, True),
            "chaos": (1e-6, 1e-1, True),
            "loss_power": (1.0, 3.0, False),
        },
        "sgdm": {"lr": (1e-5, 0.5, True), "momentum": (0.0, 0.99, False)},
        "adam": {"lr": (1e-5, 0.5, True)},
    },
    # the byte-level transformer, ``ecdopt train gpt``: lr and one more knob each (ECD: the
    # floor F0; the rest at their defaults: BBI and ECDSep η = 1, unit speed η = 100, ν = 0)
    "gpt": {
        "bbi": {"lr": (1e-3, 1.0, True), "loss_floor": (0.0, 2.0, False)},
        "ecdsep": {"lr": (1e-3, 1.0, True), "loss_floor": (0.0, 2.0, False)},
        "unit_speed": {"lr": (0.03, 10.0, True), "loss_floor": (0.0, 2.0, False)},
        "adamw": {"lr": (1e-4, 3e-2, True), "weight_decay": (1e-4, 0.3, True)},
        "sgdm": {"lr": (1e-3, 3.0, True), "momentum": (0.5, 0.99, False)},
    },
}

# The paper's MNIST grid (§4.5); the same learning rates for the other optimizers.
_PAPER_LRS = (0.001, 0.01, 0.05, 0.1, 0.2, 0.3)
GRIDS: dict[str, dict[str, tuple[float, ...]]] = {
    "sgdm": {"lr": _PAPER_LRS, "momentum": (0.85, 0.9, 0.95, 0.99, 0.999)},
    "bbi": {"lr": _PAPER_LRS, "extra_energy": (0.0, 0.1, 0.5, 1.0, 2.0)},
    "ecdsep": {"lr": _PAPER_LRS, "extra_energy": (0.0, 0.1, 0.5, 1.0, 2.0)},
    "adam": {"lr": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)},
}


# --------------------------------------------------------------------------------------------
# diagnostics recorded in every result file
# --------------------------------------------------------------------------------------------


def off_shell_steps(optimizer: Any) -> int | None:
    """Steps on which an ECD optimizer left its energy shell (``diagnostics()["off_shell_steps"]``);
    None for optimizers without it (SGD, Adam, or a library version that does not count them)."""
    diagnostics = getattr(optimizer, "diagnostics", None)
    if not callable(diagnostics):
        return None
    value = diagnostics().get("off_shell_steps")
    if value is None or not math.isfinite(float(value)):
        return None
    return int(value)


def ensemble_off_shell_steps(result: Any) -> list[int] | None:
    """Per-particle off-shell step counts of an ensemble run (``EnsembleResult.off_shell_steps``),
    None when the result does not carry them."""
    value = getattr(result, "off_shell_steps", None)
    if value is None:
        return None
    return [int(v) for v in value.reshape(-1).tolist()]


def sampler_seed(value: int | None) -> int | None:
    """A seed Optuna's samplers accept (numpy's generators need 0 <= seed < 2**32): ``value``
    itself when it fits, else a 32-bit hash of it (so every 63-bit seed works)."""
    if value is None:
        return None
    if 0 <= value < 2**32:
        return value
    digest = hashlib.blake2b(str(value).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big")


def seed_plus(seed: int, offset: int) -> int:
    """``seed + offset`` wrapped into the seeds the library accepts (0 <= seed < 2**63): the
    derived seeds of run i, of a second phase, ... stay valid for any user seed, and equal
    ``seed + offset`` whenever that fits."""
    return (seed + offset) % 2**63
