"""Plots of the image-classification experiment (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["plot_curves", "plot_search"]


def plot_curves(result: Mapping[str, Any], path: str | Path) -> None:
    """Training loss and test accuracy against epoch, one line per run (PNG, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for i, run in enumerate(result["runs"]):
        c = run["curves"]
        kw = {"color": f"C{i % 10}", "alpha": 0.8, "lw": 1.2}
        ax_loss.plot(c["epoch"], c["train_loss"], label=f"seed {run['seed']}", **kw)
        ax_acc.plot(c["epoch"], c["test_accuracy"], **kw)
    ax_loss.set(xlabel="epoch", ylabel="training loss", yscale="log")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy")
    if len(result["runs"]) <= 10:
        ax_loss.legend(fontsize=8)
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.suptitle(
        f"{result['optimizer']} on {result['dataset']} ({result['model']}): final test accuracy "
        f"mean {result['test_accuracy']:.4f}, median {result['test_accuracy_median']:.4f}"
    )
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_search(search: Mapping[str, Any], path: str | Path) -> None:
    """Search results: test accuracy against the learning rate, coloured by the other axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = [t for t in search["trials"] if t["test_accuracy"] is not None]
    keys = [k for k in search["space"] if k != "lr"]
    fig, ax = plt.subplots(figsize=(6, 4))
    lrs = [t["hyperparameters"]["lr"] for t in trials]
    accs = [t["test_accuracy"] for t in trials]
    if keys:
        colours = [t["hyperparameters"][keys[0]] for t in trials]
        points = ax.scatter(lrs, accs, c=colours, cmap="viridis")
        fig.colorbar(points, ax=ax, label=keys[0])
    else:
        ax.scatter(lrs, accs)
    ax.set(xscale="log", xlabel="lr", ylabel=f"test accuracy after {search.get('epochs')} epochs")
    ax.set_title(f"{search['kind']} search, {search.get('optimizer')} on {search.get('dataset')}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
