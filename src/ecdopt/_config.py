"""The one validated configuration of an ECD particle, shared by the optimizers, the ensemble
and the optax port, and the table of presets (BBI, ECDSep, unit-speed ECD).

Validation is strict: bools must be bools, counts must be ints (not bools, not floats), numbers
must be finite real numbers inside the documented range. Every error names the argument, what is
allowed and the value given. Hyperparameters are limited to |x| ≤ 1e100 (:data:`LIMIT`): their
squares then stay far inside float64's range, so the scalars of a step stay finite.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from .chaos import BOUNCE_DIRECTIONS, RNGS
from .hamiltonians import HAMILTONIANS, OFF_SHELL_MODES

__all__ = [
    "LIMIT",
    "PRESETS",
    "ECDConfig",
    "Preset",
    "check_bool",
    "check_choice",
    "check_count",
    "check_lr",
    "check_number",
    "check_seed",
]

LIMIT = 1e100
_MAX_COUNT = 2**62


def _fail(name: str, allowed: str, value: Any) -> None:
    raise ValueError(f"{name} must be {allowed}, got {value!r}")


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_number(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    positive: bool = False,
    meaning: str = "",
    tensor_ok: bool = False,
) -> float | Tensor:
    """``value`` as a float if it is a finite real number in the range (a floating tensor of
    such numbers when ``tensor_ok``: one value per particle of an ensemble)."""
    low = "> 0" if positive else (f">= {minimum:g}" if minimum is not None else "")
    allowed = f"a finite number {low} and at most {LIMIT:g} in size".replace("  ", " ")
    if meaning:
        allowed += f" ({meaning})"
    if tensor_ok and isinstance(value, Tensor) and value.dtype.is_floating_point:
        values = value.detach().double().cpu()
    elif _is_real(value):
        values = torch.tensor(float(value), dtype=torch.float64)
    else:
        _fail(name, allowed, value)
    ok = bool(torch.isfinite(values).all()) and bool((values.abs() <= LIMIT).all())
    if positive:
        ok = ok and bool((values > 0).all())
    elif minimum is not None:
        ok = ok and bool((values >= minimum).all())
    if not ok:
        _fail(name, allowed, value)
    return value if isinstance(value, Tensor) else float(value)


def check_count(name: str, value: Any, *, minimum: int, none_ok: bool, meaning: str) -> int | None:
    """``value`` as an int ≥ ``minimum`` (None allowed when ``none_ok``); bools are refused."""
    if value is None and none_ok:
        return None
    allowed = f"an int >= {minimum}" + (" or None" if none_ok else "") + f" ({meaning})"
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        _fail(name, allowed, value)
    if not minimum <= int(value) < _MAX_COUNT:
        _fail(name, allowed, value)
    return int(value)


def check_bool(name: str, value: Any, *, none_ok: bool = False) -> bool | None:
    """``value`` if it is a bool (or None when ``none_ok``): "no" or 0 are refused."""
    if value is None and none_ok:
        return None
    if not isinstance(value, bool):
        _fail(name, "True, False or None" if none_ok else "True or False", value)
    return value


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        _fail(name, "one of " + ", ".join(repr(c) for c in choices), value)
    return value


def check_seed(value: Any) -> int | None:
    """A seed: an int with 0 <= seed < 2**63, or None."""
    if value is None:
        return None
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        _fail("seed", "an int with 0 <= seed < 2**63, or None", value)
    if not 0 <= int(value) < 2**63:
        _fail("seed", "an int with 0 <= seed < 2**63, or None", value)
    return int(value)


def check_lr(value: Any, name: str = "lr") -> float | Tensor:
    """Δt: a finite number > 0, or a 1-element tensor holding one (returned 0-dim, as torch
    reads a tensor lr)."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        check_number(name, value.detach().reshape(()).item(), positive=True, meaning="Δt")
        return value.reshape(())
    return check_number(name, value, positive=True, meaning="the time step Δt")


@dataclass(frozen=True)
class ECDConfig:
    """The particle-wide hyperparameters (per-group ``lr`` and ``weight_decay`` live in the
    optimizer's ``param_groups``). Meanings and paper symbols: see :class:`ecdopt.ECD`.

    ``loss_floor``, ``extra_energy``, ``loss_power`` and ``chaos`` may be tensors with one value
    per particle of an ensemble (``per_particle=True``); the optimizer takes numbers only.
    """

    hamiltonian: str = "born_infeld"
    loss_power: float | Tensor = 1.0
    loss_floor: float | Tensor = 0.0
    extra_energy: float | Tensor = 0.0
    bounce_period: int | None = 1000
    n_bounces: int = 1
    bounce_patience: int | None = 3000
    chaos: float | Tensor = 0.0
    rotation_every: int = 1
    kinetic_offset: float = 1.0
    conserve_energy: bool = True
    energy_tol: float = 1e-10
    stop_tol: float = 1e-40
    adapt_floor: bool = False
    bounce_direction: str = "gaussian"
    off_shell: str = "rescale"
    rng: str = "torch"
    per_particle: bool = False

    def __post_init__(self) -> None:
        tensors = check_bool("per_particle", self.per_particle)
        set_ = object.__setattr__
        set_(self, "hamiltonian", check_choice("hamiltonian", self.hamiltonian, _NAMES))
        for name, meaning, kind in _NUMBERS:
            value = check_number(
                name,
                getattr(self, name),
                positive=kind == "positive",
                minimum=0.0 if kind == "nonnegative" else None,
                meaning=meaning,
                tensor_ok=tensors and name in _PER_PARTICLE,
            )
            set_(self, name, value)
        for name, minimum, meaning in _COUNTS:
            none_ok = name not in ("n_bounces", "rotation_every")
            value = check_count(
                name, getattr(self, name), minimum=minimum, none_ok=none_ok, meaning=meaning
            )
            set_(self, name, value)
        for name in ("conserve_energy", "adapt_floor"):
            check_bool(name, getattr(self, name))
        check_choice("bounce_direction", self.bounce_direction, BOUNCE_DIRECTIONS)
        check_choice("off_shell", self.off_shell, OFF_SHELL_MODES)
        check_choice("rng", self.rng, RNGS)

    @property
    def has_bounces(self) -> bool:
        """Whether any bounce can happen (fixed with N_b > 0, or progress)."""
        fixed = self.bounce_period is not None and self.n_bounces > 0
        return fixed or self.bounce_patience is not None

    @property
    def has_rotation(self) -> bool:
        """Whether Π is rotated every step (ν > 0 for some particle)."""
        if isinstance(self.chaos, Tensor):
            return bool((self.chaos > 0).any())
        return self.chaos > 0

    @classmethod
    def from_arguments(cls, arguments: dict[str, Any], **extra: Any) -> ECDConfig:
        """The config of a call's arguments (``locals()``): the fields found among them."""
        names = [f.name for f in fields(cls) if f.name in arguments]
        return cls(**{name: arguments[name] for name in names}, **extra)

    def as_dict(self) -> dict[str, Any]:
        """The fields as plain values (for ``state_dict()`` and result files)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


_NAMES = tuple(HAMILTONIANS)
_PER_PARTICLE = ("loss_floor", "extra_energy", "loss_power", "chaos")
_NUMBERS = (
    ("loss_power", "η in V = F_eff**η", "positive"),
    ("loss_floor", "ΔV = F0, the loss value treated as zero", "any"),
    ("extra_energy", "δE, the energy above the initial potential", "nonnegative"),
    ("chaos", "ν, the rotation strength", "nonnegative"),
    ("kinetic_offset", "s, the separable Hamiltonian's offset", "positive"),
    ("energy_tol", "ε1", "nonnegative"),
    ("stop_tol", "ε2", "nonnegative"),
)
_COUNTS = (
    ("bounce_period", 1, "T0, steps between fixed bounces; None: none"),
    ("n_bounces", 0, "N_b, the number of fixed bounces"),
    ("bounce_patience", 1, "T1, steps without a new minimum before a bounce; None: never"),
    ("rotation_every", 1, "k, steps between rotations of strength ν·sqrt(k)"),
)


@dataclass(frozen=True)
class Preset:
    """A named member of the family: the options it fixes and the defaults it changes."""

    fixed: dict[str, Any]
    defaults: dict[str, Any]


_NO_BOUNCES = {"bounce_period": None, "n_bounces": 0, "bounce_patience": None}

#: The optimizer classes as presets of :class:`ecdopt.ECD` (one table; docs/api.md shows it).
PRESETS: dict[str, Preset] = {
    "BBI": Preset(
        fixed={"hamiltonian": "born_infeld", "chaos": 0.0, "rotation_every": 1}, defaults={}
    ),
    "ECDSep": Preset(
        fixed={"hamiltonian": "separable", **_NO_BOUNCES, "bounce_direction": "gaussian"},
        defaults={"chaos": 1e-5},
    ),
    "UnitSpeedECD": Preset(
        fixed={"hamiltonian": "unit_speed", "extra_energy": 0.0, "kinetic_offset": 1.0},
        defaults={**_NO_BOUNCES, "chaos": 0.0},
    ),
}


def finite_or_none(value: Any) -> float | None:
    """A float for a finite number, None otherwise (for strict JSON)."""
    value = float(value)
    return value if math.isfinite(value) else None
