"""Plots of the synthetic experiments (matplotlib, Agg backend, PNG): Figs. 2-6 of the paper."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from ecdopt.landscapes import ackley, two_basin

__all__ = ["plot_ackley", "plot_basins", "plot_zakharov"]


def _grid(lo: float, hi: float, n: int = 300):
    xs = torch.linspace(lo, hi, n, dtype=torch.float64)
    gx, gy = torch.meshgrid(xs, xs, indexing="xy")
    return gx, gy, torch.stack([gx, gy], dim=-1)


def plot_ackley(summary: dict, extras: dict, out: Path) -> list[Path]:
    """Fig. 2 (a BBI trajectory over Ackley's contours) and Fig. 3 (loss curves)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    b = summary["ackley_b"]
    curves = extras.get("curves", {})
    if "bbi" in curves:
        gx, gy, pts = _grid(-5, 5)
        fig, ax = plt.subplots(figsize=(5, 4.5))
        ax.contourf(gx, gy, ackley(pts, b=b), levels=40, cmap="viridis")
        traj = curves["bbi"][0]
        ax.plot(traj[:, 0], traj[:, 1], color="white", lw=0.5, alpha=0.8)
        ax.plot(*traj[0], "o", color="red", label="start")
        ax.plot(0, 0, "*", color="yellow", ms=12, label="global minimum")
        ax.set_title(f"BBI on Ackley (b = {b})")
        ax.legend(loc="upper right", fontsize=8)
        p = out / "ackley_trajectory.png"
        fig.savefig(p, dpi=120, bbox_inches="tight")
        plt.close(fig)
        paths.append(p)
    if curves:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, (_, values) in curves.items():
            ax.semilogy(values.clamp(min=1e-12), label=name, lw=0.8)
        ax.axhline(summary["target"], color="k", ls=":", lw=0.8, label="target")
        ax.set_xlabel("iteration")
        ax.set_ylabel("loss F")
        ax.set_title("Ackley: tuned optimizers from (−4, 3)")
        ax.legend(fontsize=8)
        p = out / "ackley_losses.png"
        fig.savefig(p, dpi=120, bbox_inches="tight")
        plt.close(fig)
        paths.append(p)
    return paths


def plot_zakharov(summary: dict, extras: dict, out: Path) -> list[Path]:
    """Fig. 4: loss curves of the tuned optimizers on 10-D Zakharov."""
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in extras["curves"].items():
        ax.semilogy(values.clamp(min=1e-30), label=name, lw=0.8)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss F")
    ax.set_title(f"Zakharov, n = {summary['dim']}, from (−1, …, −1)")
    ax.legend(fontsize=8)
    p = out / "zakharov_losses.png"
    fig.savefig(p, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return [p]


def _ellipse(center: torch.Tensor, hessian: torch.Tensor):
    """The curve |η| = 1, i.e. (Θ−c)ᵀH(Θ−c) = 1."""
    eig, u = torch.linalg.eigh(hessian)
    phi = torch.linspace(0, 2 * math.pi, 200, dtype=torch.float64)
    circle = torch.stack([torch.cos(phi), torch.sin(phi)], -1) / eig.sqrt()
    return center + circle @ u.T


def plot_basins(summary: dict, extras: dict, out: Path) -> list[Path]:
    """Fig. 5 (ten bounced trajectories) and Fig. 6 (running basin ratio vs prediction)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    eps = summary["protocol"]["epsilon"]
    if extras.get("trajectories") is not None:
        gx, gy, pts = _grid(-6, 11)
        fig, ax = plt.subplots(figsize=(5, 4.5))
        ax.contour(gx, gy, torch.log(two_basin(pts, epsilon=eps) + 1e-3), levels=25, cmap="gray")
        tr = extras["trajectories"]
        for m in range(tr.shape[1]):
            ax.plot(tr[:, m, 0], tr[:, m, 1], lw=0.7)
        for c, h in zip(extras["centers"], extras["hessians"], strict=True):
            e = _ellipse(c, h)
            ax.plot(e[:, 0], e[:, 1], "k", lw=1.5)
        ax.plot(*summary["protocol"]["start"], "o", color="red")
        ax.set_title(f"{tr.shape[1]} BBI runs from {tuple(summary['protocol']['start'])}")
        p = out / "basins_trajectories.png"
        fig.savefig(p, dpi=120, bbox_inches="tight")
        plt.close(fig)
        paths.append(p)
    fig, ax = plt.subplots(figsize=(6, 4))
    pred = summary["predicted_ratio"]
    for d, running in extras["running"].items():
        ax.plot(torch.arange(1, running.numel() + 1), running, lw=0.8, label=f"{d} bounces")
    ax.axhline(pred, color="green", label=f"predicted (eq. 10) {pred:.3f}")
    ax.axhspan(pred * 0.89, pred * 1.11, color="green", alpha=0.1, label="±11%")
    ax.set_xscale("log")
    ax.set_xlim(1, max(2, summary["runs"]))
    ax.set_xlabel("runs")
    ax.set_ylabel("basin I / basin II")
    ax.set_ylim(0, 4)
    ax.legend(fontsize=8)
    p = out / "basins_ratio.png"
    fig.savefig(p, dpi=120, bbox_inches="tight")
    plt.close(fig)
    paths.append(p)
    return paths
