"""Shared Optuna sweeps: many workers, one study in an SQL database (the ``ecdopt tune`` command).

- :mod:`.study`: tasks, objectives, the storage and one worker's loop;
- :mod:`.cli`: the ``ecdopt tune`` command.
"""

from ecdopt.experiments.tune.study import (
    DEFAULT_STORAGE,
    SPACES,
    TUNE_OPTIMIZERS,
    TuneConfig,
    TuneError,
    list_tasks,
    make_storage,
    mask_url,
    open_study,
    run_worker,
    study_summary,
)

__all__ = [
    "DEFAULT_STORAGE",
    "SPACES",
    "TUNE_OPTIMIZERS",
    "TuneConfig",
    "TuneError",
    "list_tasks",
    "make_storage",
    "mask_url",
    "open_study",
    "run_worker",
    "study_summary",
]
