"""A small decoder-only transformer trained byte-level with ECD and baselines: ``train gpt``.

- :mod:`.model`: the transformer and the random, non-learned attention biases;
- :mod:`.data`: the offline corpora (the Python standard library's source, or any file);
- :mod:`.training`: one training run, its held-out evaluation, the presets;
- :mod:`.experiment`: the protocol (tuning through ``ecdopt tune``'s machinery, seeds, table);
- :mod:`.plots`: the PNGs; :mod:`.cli`: the ``ecdopt train gpt`` command. See docs/gpt.md.
"""

from ecdopt.experiments.gpt.data import Corpus, DataError, load_corpus
from ecdopt.experiments.gpt.model import (
    GPT,
    AttentionBias,
    BiasSpec,
    GPTConfig,
    draw_biases,
    mean_biases,
)
from ecdopt.experiments.gpt.training import OPTIMIZERS, PRESETS, RunSpec, train_run

__all__ = [
    "GPT",
    "OPTIMIZERS",
    "PRESETS",
    "AttentionBias",
    "BiasSpec",
    "Corpus",
    "DataError",
    "GPTConfig",
    "RunSpec",
    "draw_biases",
    "load_corpus",
    "mean_biases",
    "train_run",
]
