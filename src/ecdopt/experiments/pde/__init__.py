"""The PDE experiment of §4.4 and App. B: the nonlinear Poisson equation Δu + u² = f (eq. 53).

- :mod:`.problem`: eq. 53 for a manufactured radial solution and the shooting method (Fig. 7);
- :mod:`.model`: the ResNet ansatz of eq. 56, its Laplacian three ways, the loss of eq. 19;
- :mod:`.experiment`: presets, training runs and their classification by nearest solution;
- :mod:`.plots`: the PNGs; :mod:`.cli`: the ``ecdopt pde solutions|train`` command.

Everything public is importable from here, e.g. ``from ecdopt.experiments.pde import PRESETS``.
"""

from ecdopt.experiments.pde.experiment import (
    LAPLACIANS,
    OPTIMIZERS,
    PRESETS,
    GraphedIteration,
    PDELoss,
    PDEPreset,
    RadialProblem,
    RadialSolution,
    ResNetAnsatz,
    RunResult,
    SinSquaredProfile,
    bracket_bound,
    classify,
    double_backward_laplacian,
    find_radial_solutions,
    forward_laplacian,
    functorch_laplacian,
    graph_settings,
    make_optimizer,
    paper_source_eq55,
    profile_description,
    reference_solutions,
    relative_l2_errors,
    sample_ball,
    sample_sphere,
    shifted_preset,
    shoot,
    smoke_preset,
    train_run,
    train_runs,
)
from ecdopt.experiments.pde.plots import plot_losses, plot_sections, plot_solutions, plot_traces

__all__ = [
    "LAPLACIANS",
    "OPTIMIZERS",
    "PRESETS",
    "GraphedIteration",
    "PDELoss",
    "PDEPreset",
    "RadialProblem",
    "RadialSolution",
    "ResNetAnsatz",
    "RunResult",
    "SinSquaredProfile",
    "bracket_bound",
    "classify",
    "double_backward_laplacian",
    "find_radial_solutions",
    "forward_laplacian",
    "functorch_laplacian",
    "graph_settings",
    "make_optimizer",
    "paper_source_eq55",
    "plot_losses",
    "plot_sections",
    "plot_solutions",
    "plot_traces",
    "profile_description",
    "reference_solutions",
    "relative_l2_errors",
    "sample_ball",
    "sample_sphere",
    "shifted_preset",
    "shoot",
    "smoke_preset",
    "train_run",
    "train_runs",
]
