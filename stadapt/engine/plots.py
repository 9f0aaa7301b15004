"""Pictures of a run: training curves and confusion matrices (matplotlib, no display needed)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: clusters and CI have no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from stadapt.fileio import atomic_path, atomic_write_text  # noqa: E402

NAMED_AXES_MAX = 30  # above this many classes, tick labels would be unreadable


def plot_curves(entries: Sequence[dict[str, Any]], path: Path) -> None:
    """Loss, learning rate and top-1 (training batches, and evaluations) against the step."""
    train = [e for e in entries if "loss" in e and "eval" not in e]
    evals = [e for e in entries if "eval" in e and "top1" in e]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), constrained_layout=True)
    steps = [e["step"] for e in train]
    axes[0].plot(steps, [e["loss"] for e in train], lw=1.2)
    axes[0].set(title="training loss", xlabel="step")
    axes[1].plot(steps, [e["lr"] for e in train], lw=1.2, color="tab:orange")
    axes[1].set(title="learning rate (base group)", xlabel="step")
    axes[1].ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    axes[2].plot(steps, [100 * e["top1"] for e in train], lw=1.0, alpha=0.6, label="train batches")
    for split in sorted({e["eval"] for e in evals}):
        points = [e for e in evals if e["eval"] == split]
        axes[2].plot([e["step"] for e in points], [100 * e["top1"] for e in points], "o-", label=split)
    axes[2].set(title="top-1 (%)", xlabel="step", ylim=(0, 100))
    axes[2].legend(loc="lower right")
    for ax in axes:
        ax.grid(alpha=0.3)
    _save(fig, path)


def write_confusion(matrix: np.ndarray, names: Sequence[str], csv_path: Path, png_path: Path, title: str) -> None:
    """The matrix (rows: true class, columns: predicted) as CSV with names, and as a picture."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["true \\ predicted", *names])
    for name, row in zip(names, matrix):
        writer.writerow([name, *row.tolist()])
    atomic_write_text(csv_path, buf.getvalue())

    n = len(names)
    size = min(14.0, 3.0 + 0.35 * n)
    fig, ax = plt.subplots(figsize=(size + 1.5, size), constrained_layout=True)
    image = ax.imshow(matrix, cmap="Blues", interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="videos")
    ax.set(title=title, xlabel="predicted", ylabel="true")
    if n <= NAMED_AXES_MAX:
        ax.set_xticks(range(n), names, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n), names, fontsize=8)
        if n <= 12:
            for i in range(n):
                for j in range(n):
                    if matrix[i, j]:
                        ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                                color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    _save(fig, png_path)


def _save(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def plot_timeline(times: Sequence[tuple[float, float]], probs: Sequence[Optional[dict[str, Any]]],
                  names: dict[str, Sequence[str]], path: Path, title: str, top: int = 5) -> None:
    """Probabilities over time of each head's `top` classes (highest peak first), a point per
    window at its centre; windows that could not be read leave a gap."""
    heads = list(names)
    fig, axes = plt.subplots(len(heads), 1, figsize=(10, 3.2 * len(heads)), constrained_layout=True, squeeze=False)
    centres = np.array([(a + b) / 2 for a, b in times])
    for ax, head in zip(axes[:, 0], heads):
        rows = np.array([p[head].numpy() if p is not None else np.full(len(names[head]), np.nan) for p in probs])
        order = np.argsort(-np.nan_to_num(rows, nan=-1.0).max(axis=0))[:top]
        for c in order:
            ax.plot(centres, 100 * rows[:, c], "o-", ms=3, lw=1.4, label=names[head][c])
        ax.set(xlabel="time (s), window centres", ylabel="probability (%)", ylim=(0, 100),
               xlim=(0, max(b for _, b in times)), title=title if len(heads) == 1 else f"{title}: {head}")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    _save(fig, path)
