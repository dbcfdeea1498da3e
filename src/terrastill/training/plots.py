"""Training curves and confusion-matrix PNGs (matplotlib, Agg backend)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from terrastill.atomic import atomic_path


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: Sequence[dict[str, Any]], path: str | os.PathLike[str],
                metric: str = "miou") -> Path:
    """Loss (train/val) and the validation metric per epoch."""
    plt = _plt()
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for key, style in (("train_loss", "-o"), ("val_loss", "-s")):
        ys = [h.get(key) for h in history]
        if any(y is not None for y in ys):
            axes[0].plot(epochs, [np.nan if y is None else y for y in ys], style, label=key,
                         ms=3)
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("loss")
    axes[0].legend()
    axes[0].grid(alpha=0.3)
    ys = [h.get(f"val_{metric}") for h in history]
    axes[1].plot(epochs, [np.nan if y is None else y for y in ys], "-o", color="tab:green", ms=3)
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel(f"val {metric}")
    axes[1].grid(alpha=0.3)
    return save_figure(fig, path)


def plot_confusion(confusion: Sequence[Sequence[int]], class_names: Sequence[str],
                   path: str | os.PathLike[str], title: str = "confusion") -> Path:
    """Row-normalised confusion matrix (rows = truth) with the counts written in."""
    plt = _plt()
    conf = np.asarray(confusion, dtype=np.float64)
    k = conf.shape[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = conf / conf.sum(axis=1, keepdims=True)
    norm = np.nan_to_num(norm)
    size = max(3.5, 0.7 * k + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    names = list(class_names) or [str(i) for i in range(k)]
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("truth")
    ax.set_title(title)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{norm[i, j]:.2f}\n{int(conf[i, j])}", ha="center", va="center",
                    fontsize=8, color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return save_figure(fig, path)


def save_figure(fig: Any, path: str | os.PathLike[str]) -> Path:
    """Lay out, write (atomically, PNG) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
