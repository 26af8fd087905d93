"""Plots of the synthetic experiments (matplotlib, Agg backend, PNG): Figs. 2-6 of the paper and
the occupation study.

Conventions: axes carry the paper's symbols (θ₁, θ₂, F, t = steps·Δt), colour maps have a
colorbar, basins are labelled I and II, a run that stopped before the last step is marked where
it stopped, curves that could hide one another get their own panel, and every measured ratio is
drawn with its 95% confidence band.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from ecdopt.landscapes import ackley, two_basin

__all__ = ["plot_ackley", "plot_basins", "plot_occupation", "plot_zakharov"]

_COLORS = {"bbi": "tab:blue", "sgdm": "tab:orange", "adam": "tab:green", "ecdsep": "tab:red"}
_NAMES = {"bbi": "BBI", "sgdm": "GDM", "sgdm_narrow": "GDM (small lr)", "adam": "Adam"}
_NAMES["ecdsep"] = "ECDSep"


def _grid(lo: float, hi: float, n: int = 300):
    xs = torch.linspace(lo, hi, n, dtype=torch.float64)
    gx, gy = torch.meshgrid(xs, xs, indexing="xy")
    return gx, gy, torch.stack([gx, gy], dim=-1)


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _label(name: str) -> str:
    return _NAMES.get(name, name)


# --------------------------------------------------------------------------------------------
# §4.1 Ackley
# --------------------------------------------------------------------------------------------


def plot_ackley(summary: dict, extras: dict, out: Path) -> list[Path]:
    """Fig. 2 (a BBI trajectory over Ackley's contours) and Fig. 3 (loss curves, one panel per
    optimizer so none hides another; × where a run reached the target and stopped)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    b, target = summary["ackley_b"], summary["target"]
    curves = extras.get("curves", {})
    steps = summary["protocol"]["steps"]
    if "bbi" in curves:
        gx, gy, pts = _grid(-5, 5)
        fig, ax = plt.subplots(figsize=(5.6, 4.6))
        cs = ax.contourf(gx, gy, ackley(pts, b=b), levels=40, cmap="viridis")
        fig.colorbar(cs, ax=ax, label="F(θ) (eq. 15)")
        traj = curves["bbi"][0]
        ax.plot(traj[:, 0], traj[:, 1], color="white", lw=0.9, alpha=0.9, label="BBI path")
        ax.plot(*traj[0], "o", color="red", label="start (−4, 3)")
        ax.plot(0, 0, "*", color="yellow", ms=12, mec="k", label="global minimum")
        if traj.shape[0] - 1 < steps:
            ax.plot(
                *traj[-1],
                "x",
                color="red",
                ms=9,
                label=f"F < {target:g} at step {traj.shape[0] - 1}",
            )
        ax.set_xlabel("θ₁")
        ax.set_ylabel("θ₂")
        lr = summary.get("hyperparameters", {}).get("bbi", {}).get("lr")
        ax.set_title(f"BBI on Ackley (b = {b})" + (f", Δt = {lr:.3g}" if lr else ""))
        ax.legend(loc="upper right", fontsize=7)
        paths.append(_save(fig, out / "ackley_trajectory.png"))
    if curves:
        names = list(curves)
        fig, axes = plt.subplots(
            len(names), 1, figsize=(6.4, 1.6 + 1.3 * len(names)), sharex=True, sharey=True
        )
        axes = [axes] if len(names) == 1 else list(axes)
        for ax, name in zip(axes, names, strict=True):
            values = curves[name][1]
            color = _COLORS.get(name, "k")
            ax.semilogy(values.clamp(min=1e-12), color=color, lw=0.8)
            ax.axhline(target, color="k", ls=":", lw=0.8)
            k = values.numel() - 1
            if k < steps:
                ax.plot(k, max(float(values[-1]), 1e-12), "x", color=color, ms=9)
                note = f"reached F < {target:g} at step {k}"
            else:
                note = f"F ≥ {target:g} for all {steps} steps (best {float(values.min()):.2g})"
            hp = summary.get("hyperparameters", {}).get(name, {})
            knobs = ", ".join(f"{k} = {hp[k]:.3g}" for k in ("lr", "momentum") if k in hp)
            ax.set_title(f"{_label(name)} ({knobs}): {note}", fontsize=8, loc="left")
            ax.set_ylabel("F(θ)")
        axes[-1].set_xlabel("step k")
        title = f"Ackley (b = {b}): one run per optimizer from (−4, 3); dotted: the target"
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        paths.append(_save(fig, out / "ackley_losses.png"))
    return paths


# --------------------------------------------------------------------------------------------
# §4.2 Zakharov
# --------------------------------------------------------------------------------------------


def plot_zakharov(summary: dict, extras: dict, out: Path) -> list[Path]:
    """Fig. 4: loss curves of the tuned optimizers on n-D Zakharov (distinct line styles; a
    curve that ends early — diverged — ends in ×)."""
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    styles = ["-", "--", "-.", ":", (0, (5, 1, 1, 1))]
    steps = summary["protocol"]["steps"]
    for i, (name, values) in enumerate(extras["curves"].items()):
        finite = torch.isfinite(values)
        last = int(finite.nonzero().max()) if bool(finite.any()) else 0
        shown = values[: last + 1].clamp(min=1e-45)
        ax.semilogy(shown, ls=styles[i % len(styles)], lw=1.1, label=_label(name))
        color = ax.lines[-1].get_color()
        if last + 1 < values.numel():  # non-finite from here on: diverged
            ax.plot(last, float(shown[-1]), "x", color=color, ms=9)
        elif values.numel() <= steps:  # the run stopped by itself (V ≤ 0: the floor)
            ax.plot(last, float(shown[-1]), "o", color=color, mfc="none", ms=7)
    ax.plot([], [], "kx", ls="none", label="diverged (non-finite after)")
    ax.plot([], [], "ko", mfc="none", ls="none", label="stopped at the floor ΔV")
    ax.set_xlabel("step k")
    ax.set_ylabel("F(θ) (eq. 16; minimum 0)")
    ax.set_title(f"Zakharov, n = {summary['dim']}, tuned optimizers from (−1, …, −1)")
    ax.legend(fontsize=8)
    return [_save(fig, out / "zakharov_losses.png")]


# --------------------------------------------------------------------------------------------
# §4.3 two basins: first passages
# --------------------------------------------------------------------------------------------


def _ellipse(center: torch.Tensor, hessian: torch.Tensor, radius: float = 1.0):
    """The curve |η| = r, i.e. (Θ−c)ᵀH(Θ−c) = r²."""
    eig, u = torch.linalg.eigh(hessian)
    phi = torch.linspace(0, 2 * math.pi, 200, dtype=torch.float64)
    circle = radius * torch.stack([torch.cos(phi), torch.sin(phi)], -1) / eig.sqrt()
    return center + circle @ u.T


def _draw_basins(ax, centers, hessians) -> None:
    for name, c, h in zip(("I", "II"), centers, hessians, strict=True):
        e = _ellipse(c, h)
        ax.plot(e[:, 0], e[:, 1], "k", lw=1.5)
        ax.annotate(
            f"basin {name}",
            (float(c[0]), float(c[1])),
            xytext=(float(c[0]) - 1.2, float(c[1]) + 1.3),
            fontsize=9,
            weight="bold",
        )


def plot_basins(summary: dict, extras: dict, out: Path) -> list[Path]:
    """Fig. 5 (bounced trajectories coloured by the basin they entered, × where each stopped)
    and Fig. 6 (running first-passage ratio with its 95% Wilson band, per direction)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    eps = summary["protocol"]["epsilon"]
    if extras.get("trajectories") is not None:
        tr = extras["trajectories"]
        reach = max(11.0, float(tr.abs().max()) + 0.5)
        gx, gy, pts = _grid(-reach, reach)
        fig, ax = plt.subplots(figsize=(6.0, 4.8))
        f = two_basin(pts, epsilon=eps)
        cs = ax.contourf(gx, gy, torch.log10(f - f.min() + 1e-3), levels=25, cmap="Greys_r")
        fig.colorbar(cs, ax=ax, label="log₁₀(F − F_min + 10⁻³) (eq. 17)")
        labels = extras.get("trajectory_labels", torch.zeros(tr.shape[1], dtype=torch.int64))
        colors = {0: "tab:gray", 1: "tab:blue", 2: "tab:orange"}
        for m in range(tr.shape[1]):
            lab = int(labels[m])
            ax.plot(tr[:, m, 0], tr[:, m, 1], lw=0.8, color=colors[lab])
            marker = dict(marker="x") if lab else dict(marker="o", mfc="none")
            ax.plot(*tr[-1, m], color=colors[lab], ms=7, ls="none", **marker)
        _draw_basins(ax, extras["centers"], extras["hessians"])
        ax.plot(*summary["protocol"]["start"], "o", color="red")
        for lab, text in ((1, "entered I"), (2, "entered II"), (0, "neither")):
            ax.plot([], [], color=colors[lab], label=f"{text} ({int((labels == lab).sum())})")
        ax.plot([], [], "kx", ls="none", label="stopped (entered |η| < 1)")
        if bool((labels == 0).any()):
            ax.plot([], [], "ko", mfc="none", ls="none", label="outside at the last step")
        ax.legend(fontsize=7, loc="lower right")
        ax.set_xlabel("θ₁")
        ax.set_ylabel("θ₂")
        ax.set_title(f"{tr.shape[1]} BBI runs from {tuple(summary['protocol']['start'])}")
        paths.append(_save(fig, out / "basins_trajectories.png"))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    pred = summary["predicted_ratio"]
    for d, run in extras["running"].items():
        x = run["runs"]
        ax.plot(x, run["ratio"], lw=1.0, label=f"{d} bounces (first passage)")
        ax.fill_between(x, run["low"], run["high"], alpha=0.25, color=ax.lines[-1].get_color())
    ax.axhline(pred, color="green", label=f"predicted (eq. 10) {pred:.3f}")
    ax.axhspan(pred * 0.89, pred * 1.11, color="green", alpha=0.1, label="±11% (the paper)")
    ax.set_xscale("log")
    ax.set_xlim(1, max(2, summary["runs"]))
    ax.set_xlabel("runs n (all from the same start)")
    ax.set_ylabel("N_I / N_II after n runs")
    ax.set_title("First-passage ratio; bands: 95% Wilson intervals")
    ax.set_ylim(0, 4)
    ax.legend(fontsize=8)
    paths.append(_save(fig, out / "basins_ratio.png"))
    return paths


# --------------------------------------------------------------------------------------------
# occupation
# --------------------------------------------------------------------------------------------


def _runs_by_dt(entry: dict) -> list[dict]:
    return sorted(entry["runs"], key=lambda r: r["dt"], reverse=True)


def plot_occupation(summary: dict, out: Path, radius: str = "1") -> list[Path]:
    """``occupation_convergence.png``: the running time-averaged ratio of the time in ellipse I
    to that in ellipse II against the measured time t, one panel per dynamics, a curve and 95%
    band per Δt, the predicted ratio (eq. 40 with the full potential; dashed: the quadratic
    approximation, eq. 47). ``occupation_dt.png``: the final ratio and the fractions of time in
    each ellipse against Δt, with the linear extrapolation to Δt = 0 and the predictions."""
    out.mkdir(parents=True, exist_ok=True)
    dyns = list(summary["dynamics"].items())
    cols = min(3, len(dyns))
    rows = math.ceil(len(dyns) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(7.0, 4.6 * cols), 3.6 * rows), squeeze=False)
    for ax, (name, entry) in zip(axes.flat, dyns, strict=False):
        pred = entry["predicted"][radius]
        for run in _runs_by_dt(entry):
            reg = run["regions"][radius]
            rr = reg["running"]
            if not rr["time"]:
                continue
            final = reg["ratio"]
            half = final["value"] - final["low"]
            ax.plot(
                rr["time"],
                rr["ratio"],
                lw=1.0,
                label=f"Δt = {run['dt']:g}: {final['value']:.3f} ± {half:.3f} (95%)",
            )
            ax.fill_between(
                rr["time"], rr["low"], rr["high"], alpha=0.2, color=ax.lines[-1].get_color()
            )
        ax.axhline(
            pred["ratio_full"],
            color="k",
            lw=1.2,
            label=f"eq. 40 (full V): {pred['ratio_full']:.3f}",
        )
        ax.axhline(
            pred["ratio_quadratic"],
            color="k",
            ls="--",
            lw=0.8,
            label=f"eq. 47 (quadratic): {pred['ratio_quadratic']:.3f}",
        )
        ax.set_title(f"{name}: {entry['description']}", fontsize=8)
        ax.set_xlabel("measured time t = steps·Δt (after the burn-in)")
        ax.set_ylabel("time in I / time in II")
        times = [t for run in entry["runs"] for t in run["regions"][radius]["running"]["time"]]
        if times and max(times) >= 10 * min(times):
            ax.set_xscale("log")  # a decade or more: show the early times too
        else:
            ax.set_xlim(left=0)
        lo = 0.7 * pred["ratio_full"]
        ax.set_ylim(lo, 1.45 * pred["ratio_full"])
        ax.legend(fontsize=6.5, loc="upper right")
    for ax in list(axes.flat)[len(dyns) :]:
        ax.axis("off")
    p = summary["protocol"]
    fig.suptitle(
        f"Time-averaged occupation of |η| < {radius} ({summary['landscape']}, "
        f"n = {summary['dim']}, {p['particles']} particles, V_I = {p['v_min']:g}); "
        "bands: 95% across particles",
        fontsize=9,
    )
    fig.tight_layout()
    paths = [_save(fig, out / "occupation_convergence.png")]
    paths.append(_plot_dt(summary, out, radius))
    return paths


def _plot_dt(summary: dict, out: Path, radius: str) -> Path:
    """Final ratio and fractions against Δt per dynamics, with the Δt → 0 extrapolation."""
    dyns = list(summary["dynamics"].items())
    has_fractions = summary["dim"] == 2
    ncols = 3 if has_fractions else 1
    fig, axes = plt.subplots(1, ncols, figsize=(4.6 * ncols, 3.8), squeeze=False)
    keys = ["ratio", "fraction_basin1", "fraction_basin2"][:ncols]
    titles = {
        "ratio": "time in I / time in II",
        "fraction_basin1": "fraction of time in I",
        "fraction_basin2": "fraction of time in II",
    }
    dts = sorted({r["dt"] for _, e in dyns for r in e["runs"]})
    width = (max(dts) - min(dts)) * 0.012 if len(dts) > 1 else max(dts) * 0.01
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, key in zip(axes[0], keys, strict=True):
        for i, (name, entry) in enumerate(dyns):
            color = palette[i % len(palette)]
            shift = (i - (len(dyns) - 1) / 2) * width
            pts = [
                (r["dt"], r["regions"][radius][key])
                for r in entry["runs"]
                if r["regions"][radius][key]
            ]
            if not pts:
                continue
            x = [dt + shift for dt, _ in pts]
            y = [iv["value"] for _, iv in pts]
            err = [
                [iv["value"] - iv["low"] for _, iv in pts],
                [iv["high"] - iv["value"] for _, iv in pts],
            ]
            ax.errorbar(x, y, yerr=err, fmt="o", ms=4, capsize=3, color=color, label=name)
            ext = (entry.get("extrapolated") or {}).get(radius) or {}
            if key in ext:
                at0, slope = ext[key]["at_zero"], ext[key]["slope"]
                xs = [0.0, max(dt for dt, _ in pts)]
                ax.plot(
                    [v + shift for v in xs],
                    [at0["value"] + slope["value"] * v for v in xs],
                    ls=":",
                    lw=0.8,
                    color=color,
                )
                ax.errorbar(
                    [shift],
                    [at0["value"]],
                    yerr=[[at0["value"] - at0["low"]], [at0["high"] - at0["value"]]],
                    fmt="s",
                    mfc="none",
                    ms=5,
                    capsize=3,
                    color=color,
                )
        pred_key = {"ratio": "ratio_full"}.get(key, key)
        preds = {e["predicted"][radius].get(pred_key) for _, e in dyns}
        for value in sorted(v for v in preds if v is not None):
            ax.axhline(value, color="k", lw=1.0)
        extrapolated = any((e.get("extrapolated") or {}).get(radius) for _, e in dyns)
        ax.set_xlabel("time step Δt" + (" (□: extrapolated to Δt = 0)" if extrapolated else ""))
        ax.set_title(titles[key] + " (line: prediction)", fontsize=9)
        ax.set_xlim(left=-3 * width - 1e-4)
    for ax in axes[0]:
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(4))
    entries: dict = {}
    for ax in axes[0]:
        handles, labels = ax.get_legend_handles_labels()
        for handle, label in zip(handles, labels, strict=True):
            entries.setdefault(label, handle)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    fig.legend(list(entries.values()), list(entries), fontsize=8, loc="upper center", ncols=6)
    return _save(fig, out / "occupation_dt.png")
