"""Plots of the transformer experiment (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["plot_curves", "plot_tuning"]

_TITLES = {
    "none": "no attention biases",
    "q": "query bias",
    "v": "value bias",
    "qv": "query + value biases",
}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(doc: Mapping[str, Any], path: str | Path) -> Path:
    """Held-out (test) loss against step: per optimizer the mean over seeds and a ±1 std band;
    one panel per bias setting."""
    plt = _pyplot()
    kinds = doc["bias_kinds"]
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 4), squeeze=False)
    top = 0.0
    for ax, kind in zip(axes[0], kinds, strict=True):
        for i, name in enumerate(doc["optimizers"]):
            cell = doc["cells"].get(f"{name}/{kind}")
            if not cell or "curves" not in cell:
                continue
            c = cell["curves"]
            pts = [
                (s, m, sd or 0.0)
                for s, m, sd in zip(c["step"], c["test_loss_mean"], c["test_loss_std"], strict=True)
                if m is not None
            ]
            if not pts:
                continue
            steps, mean, std = zip(*pts, strict=True)
            ax.plot(steps, mean, color=f"C{i}", lw=1.5, label=name)
            lo = [m - s for m, s in zip(mean, std, strict=True)]
            hi = [m + s for m, s in zip(mean, std, strict=True)]
            ax.fill_between(steps, lo, hi, color=f"C{i}", alpha=0.2, lw=0)
            top = max(top, *mean[1:]) if len(mean) > 1 else top
        ax.set(xlabel="step", ylabel="test loss (nats per byte)", title=_TITLES.get(kind, kind))
        if top > 0:
            ax.set_ylim(top=min(top * 1.05, 6.0))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    runs = doc["settings"]["runs"]
    fig.suptitle(f"byte-level transformer, tuned optimizers, mean ± std over {runs} seeds")
    fig.tight_layout()
    return _save(fig, plt, path)


def plot_tuning(doc: Mapping[str, Any], path: str | Path, ceiling: float = 6.0) -> Path:
    """Every tuning trial: final validation loss against its lr, per optimizer (columns) and
    bias setting (colour). Losses above ``ceiling`` (worse than a uniform guess, ln 256 = 5.5)
    are drawn at the ceiling as triangles; diverged trials are left out."""
    plt = _pyplot()
    names = list(doc["optimizers"])
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for j, kind in enumerate(doc["bias_kinds"]):
            tuning = (doc["cells"].get(f"{name}/{kind}") or {}).get("tuning") or {}
            pts = [
                (t["hyperparameters"]["lr"], t["val_loss"])
                for t in tuning.get("trials", [])
                if t.get("val_loss") is not None and t.get("hyperparameters")
            ]
            for high in (False, True):
                sel = [(lr, min(v, ceiling)) for lr, v in pts if (v > ceiling) == high]
                if sel:
                    lrs, losses = zip(*sel, strict=True)
                    ax.scatter(
                        lrs,
                        losses,
                        s=18,
                        color=f"C{j}",
                        marker="^" if high else "o",
                        label=None if high else kind,
                        alpha=0.8,
                    )
        ax.set(xscale="log", xlabel="lr", title=name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title="biases", title_fontsize=7)
    axes[0][0].set_ylabel("validation loss after tuning run")
    fig.tight_layout()
    return _save(fig, plt, path)


def _save(fig: Any, plt: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
