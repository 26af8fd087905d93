"""Image classification with ECD and baseline optimizers: the MNIST / CIFAR-10 study of §4.5.

- :mod:`.data`: offline loaders (digits, mnist5k, MNIST IDX files, CIFAR-10 binary batches);
- :mod:`.models`: the paper's networks; :mod:`.training`: the loop, checkpoints and protocols;
- :mod:`.plots`: the PNGs; :mod:`.cli`: the ``ecdopt train`` command.
"""

from ecdopt.experiments.vision.training import (
    CHECKPOINT_FORMAT,
    CURVE_KEYS,
    GRIDS,
    HYPERPARAMETERS,
    OPTIMIZERS,
    OPTUNA_SPACES,
    PRESETS,
    ExperimentConfig,
    ExperimentError,
    Preset,
    RunConfig,
    make_optimizer,
    resolve_device,
    resolve_hyperparameters,
    run_experiment,
    summarize,
    train_run,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "CURVE_KEYS",
    "GRIDS",
    "HYPERPARAMETERS",
    "OPTIMIZERS",
    "OPTUNA_SPACES",
    "PRESETS",
    "ExperimentConfig",
    "ExperimentError",
    "Preset",
    "RunConfig",
    "make_optimizer",
    "resolve_device",
    "resolve_hyperparameters",
    "run_experiment",
    "summarize",
    "train_run",
]
