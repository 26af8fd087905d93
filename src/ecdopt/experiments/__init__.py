"""The paper's experiments as importable code and ``ecdopt`` sub-commands.

One sub-package per experiment, each with its protocol, its command (``cli.py``) and its plots:

- :mod:`.synthetic`: §4.1-4.3 (Ackley, Zakharov, two basins), ``ecdopt synthetic``;
- :mod:`.pde`: §4.4 / App. B (nonlinear Poisson), ``ecdopt pde``;
- :mod:`.vision`: §4.5 (MNIST, CIFAR-10, digits), ``ecdopt train``;
- :mod:`.tune`: shared Optuna sweeps in an SQL database, ``ecdopt tune``;
- :mod:`.demo`: the reduced synthetic experiments of ``make demo``.

Shared by all: :mod:`.registry` (optimizer names, hyperparameter ranges, the factory, search
spaces) and :mod:`.cli_common` (the one command-line convention).

This sub-package may import optuna, matplotlib, scipy and tqdm (the ``experiments`` extra);
the core ``ecdopt`` package never does.
"""
