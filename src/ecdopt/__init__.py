"""ecdopt: Energy-Conserving Descent (ECD) optimizers for PyTorch.

``BBI`` (Bouncing Born-Infeld, Algorithm 1 of De Luca & Silverstein, ICML 2022), ``ECDSep`` (the
separable Hamiltonian with rotations), ``UnitSpeedECD`` (unit-speed ECD) and the general ``ECD``.
``import ecdopt`` loads torch and numpy only.
"""

from .hamiltonians import HAMILTONIANS, get_hamiltonian
from .optimizer import BBI, ECD, ECDSep, MissingLossError, NonFiniteLossWarning, UnitSpeedECD

__version__ = "0.1.0"

__all__ = [
    "BBI",
    "ECD",
    "HAMILTONIANS",
    "ECDSep",
    "MissingLossError",
    "NonFiniteLossWarning",
    "UnitSpeedECD",
    "__version__",
    "get_hamiltonian",
]
