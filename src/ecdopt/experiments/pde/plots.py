"""Plots of the PDE experiment (matplotlib, Agg backend, PNG): Fig. 7 and the training runs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ecdopt.experiments.pde.experiment import SECTION_T, RunResult
from ecdopt.experiments.pde.problem import RadialSolution

__all__ = ["plot_losses", "plot_sections", "plot_solutions", "plot_traces"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_solutions(solutions: Sequence[RadialSolution], path: Path, title: str = "") -> Path:
    """Fig. 7: the ``x2 = 0`` section ``u(|x1|)`` of every reference solution, one panel each."""
    plt = _pyplot()
    n = max(len(solutions), 1)
    fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 3.5), squeeze=False)
    for ax, (k, sol) in zip(axes[0], enumerate(solutions), strict=False):
        ax.plot(SECTION_T, sol(np.abs(SECTION_T)), color="C0")
        ax.set_title(f"solution {k}: u(0) = {sol.u0:.6g}")
        ax.set_xlabel("$x_1$ ($x_2 = 0$)")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _save(plt: Any, fig: Any, ax: Any, title: str, path: Path) -> Path:
    """Legend, grid and title on ``ax``, then write ``fig`` to ``path`` (PNG) and close it."""
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_sections(
    results: Sequence[RunResult], solutions: Sequence[RadialSolution], path: Path, title: str = ""
) -> Path:
    """The ``x2 = 0`` section of each trained network against the reference solutions."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for k, sol in enumerate(solutions):
        ax.plot(
            SECTION_T,
            sol(np.abs(SECTION_T)),
            "k--" if k == 0 else "k:",
            lw=2,
            label=f"reference {k} (u0 = {sol.u0:.4g})",
        )
    for i, r in enumerate(results):
        ax.plot(
            SECTION_T,
            r.section,
            lw=1,
            alpha=0.8,
            label=f"run {i}: → {r.nearest_solution}, err {r.relative_l2_error:.2g}",
        )
    ax.set_xlabel("$x_1$ ($x_2 = 0$)")
    ax.set_ylabel("u")
    return _save(plt, fig, ax, title, path)


def plot_traces(results: Sequence[RunResult], path: Path, title: str = "") -> Path:
    """Relative L2 error to each reference solution along each run (``trace_every``).

    One panel per reference solution, one line per run; a run that commits to solution k goes
    to zero in panel k.
    """
    plt = _pyplot()
    n_sol = max((len(r.trace_errors[0]) for r in results if r.trace_errors), default=1)
    fig, axes = plt.subplots(1, n_sol, figsize=(4.5 * n_sol, 3.8), squeeze=False, sharey=True)
    for k, ax in enumerate(axes[0]):
        for i, r in enumerate(results):
            if r.trace_errors:
                err = np.array([row[k] for row in r.trace_errors], dtype=float)
                ax.semilogy(r.trace_steps, err, lw=1, label=f"run {i} (→ {r.nearest_solution})")
        ax.set_xlabel("iteration")
        ax.set_title(f"error to solution {k}")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("relative L2 error")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_losses(results: Sequence[RunResult], path: Path, title: str = "") -> Path:
    """Loss curves (eq. 19) of the runs, log scale."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, r in enumerate(results):
        ax.semilogy(
            r.loss_steps,
            np.clip(r.loss_values, 1e-300, None),
            lw=1,
            label=f"run {i} (→ {r.nearest_solution})",
        )
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (eq. 19)")
    return _save(plt, fig, ax, title, path)
