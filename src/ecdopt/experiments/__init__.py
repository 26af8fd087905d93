"""The paper's experiments as importable code and ``ecdopt`` sub-commands.

This sub-package may import optuna, matplotlib, scipy and tqdm (the ``experiments`` extra);
the core ``ecdopt`` package never does.
"""
