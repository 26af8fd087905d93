"""The paper's synthetic experiments (§4.1 Ackley, §4.2 Zakharov, §4.3 two basins).

- :mod:`.protocols`: the three protocols (``*_protocol(cfg) -> (summary, extras)``);
- :mod:`.tuning`: the fair, batched Optuna search every optimizer gets;
- :mod:`.plots`: Figs. 2-6 as PNG;
- :mod:`.cli`: the ``ecdopt synthetic ackley|zakharov|basins`` command.
"""

from ecdopt.experiments.synthetic.protocols import (
    ACKLEY_START,
    AckleyConfig,
    BasinsConfig,
    ZakharovConfig,
    ackley_methods,
    ackley_protocol,
    basins_protocol,
    zakharov_methods,
    zakharov_protocol,
)

__all__ = [
    "ACKLEY_START",
    "AckleyConfig",
    "BasinsConfig",
    "ZakharovConfig",
    "ackley_methods",
    "ackley_protocol",
    "basins_protocol",
    "zakharov_methods",
    "zakharov_protocol",
]
