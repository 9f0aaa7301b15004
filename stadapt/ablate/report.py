"""The results of an ablation: a rich table, ablate-<axis>.csv and .md, and ablate-<axis>.png.

Numbers come from the run directories alone (eval-val.json, the tensors in
adapter.safetensors, ablate.json), so a report written after an interrupted sweep, or
again later, shows exactly what the runs hold.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")  # headless: clusters and CI have no display

import matplotlib.pyplot as plt  # noqa: E402
from rich.table import Table  # noqa: E402
from safetensors import safe_open  # noqa: E402

from stadapt.ablate.runner import EVAL_FILE, Ablation, VariantRun, read_time  # noqa: E402
from stadapt.fileio import atomic_path, atomic_write_text  # noqa: E402
from stadapt.model.artifact import ADAPTER_FILE  # noqa: E402
from stadapt.recipe import head_sizes  # noqa: E402

CSV_FIELDS = ("variant", "trainable_params", "top1_pct", "top5_pct", "train_seconds")
ARCH_NAMES = {"sa": "SA", "sa_ta": "SA+TA", "sa_ts": "SA+TS"}  # Table 1's architecture column
STATUS = {"reused": "done earlier", "trained": "trained now", "failed": "failed", "interrupted": "interrupted",
          "pending": "not run"}


@dataclass
class Row:
    variant: str
    status: str
    arch: str = "SA"
    trainable_params: Optional[int] = None
    top1: Optional[float] = None  # percent
    top5: Optional[float] = None
    train_seconds: Optional[float] = None

    @property
    def finished(self) -> bool:
        return self.top1 is not None


def count_trainable(adapter: Path) -> Optional[int]:
    """Elements of the tensors in an adapter file: exactly the parameters the run trained."""
    if not adapter.is_file():
        return None
    total = 0
    with safe_open(str(adapter), framework="pt") as fh:
        for key in fh.keys():
            count = 1
            for size in fh.get_slice(key).get_shape():
                count *= size
            total += count
    return total


def read_row(run: VariantRun) -> Row:
    row = Row(run.variant.name, run.status, ARCH_NAMES[run.recipe.model.arch])
    timing = read_time(run.run_dir)
    if timing is not None:
        row.train_seconds = timing["train_seconds"]
    if run.finished:
        report = json.loads((run.run_dir / EVAL_FILE).read_text(encoding="utf-8"))
        row.top1, row.top5 = 100 * report["top1"], 100 * report["top5"]
        row.trainable_params = count_trainable(run.run_dir / ADAPTER_FILE)
    return row


def read_rows(ablation: Ablation) -> list[Row]:
    return [read_row(run) for run in ablation.runs]


def human_count(n: int) -> str:
    """13380 → 13,380, 7417744 → 7.42M: parameter counts on plots, exact while they are short."""
    if n < 100_000:
        return f"{n:,}"
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= size:
            return f"{n / size:.3g}{suffix}"
    return str(n)


def _fmt(value: Optional[float], spec: str) -> str:
    return "-" if value is None else format(value, spec)


def results_table(ablation: Ablation, rows: list[Row]) -> Table:
    axis = ablation.axis
    arch = ["architecture"] if axis.name == "method" else []
    table = Table(axis.name, *arch, "trainable params", "top-1 %", "top-5 %", "train s", "status",
                  title=f"ablate {axis.name}: {ablation.recipe_path.name}, validation (paper {axis.paper})",
                  title_justify="left")
    for row in rows:
        table.add_row(row.variant, *([row.arch] if arch else []), _fmt(row.trainable_params, ","),
                      _fmt(row.top1, ".2f"), _fmt(row.top5, ".2f"), _fmt(row.train_seconds, ".0f"), STATUS[row.status])
    return table


def write_csv(path: Path, rows: list[Row], with_arch: bool = False) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_FIELDS + (("arch",) if with_arch else ()))
    for row in rows:
        if row.finished:
            writer.writerow([row.variant, row.trainable_params, f"{row.top1:.2f}", f"{row.top5:.2f}",
                             _fmt(row.train_seconds, ".1f"), *([row.arch] if with_arch else [])])
    atomic_write_text(path, buf.getvalue())


def describe(ablation: Ablation) -> str:
    """One sentence: recipe, overrides, what top-1 was measured on."""
    recipe = ablation.runs[0].recipe
    views = recipe.data.test_views
    sets = "".join(f" `--set {s}`" for s in ablation.overrides)
    return (f"Recipe `{ablation.recipe_path}`{sets}; top-1 and top-5 on the validation split of "
            f"`{recipe.data.root}`, {views.temporal}×{views.spatial} views of {recipe.data.num_frames} frames. "
            "Train time is the wall-clock of the variant's `stadapt train` processes, "
            "start-up and final evaluation included.")


def write_markdown(path: Path, ablation: Ablation, rows: list[Row]) -> None:
    axis = ablation.axis
    arch = axis.name == "method"
    lines = [f"# stadapt ablate {axis.name}: {axis.title} (paper {axis.paper})", "", describe(ablation), "",
             f"| {axis.name} |{' architecture |' if arch else ''} trainable params | top-1 (%) | top-5 (%) "
             "| train time (s) |",
             f"| --- |{' --- |' if arch else ''} ---: | ---: | ---: | ---: |"]
    for row in rows:
        if row.finished:
            lines.append(f"| {row.variant} |{f' {row.arch} |' if arch else ''} {_fmt(row.trainable_params, ',')} | "
                         f"{row.top1:.2f} | {row.top5:.2f} | {_fmt(row.train_seconds, '.0f')} |")
    missing = [row.variant for row in rows if not row.finished]
    notes = [ablation.note] if ablation.note else []
    if missing:
        notes.append(f"Not finished yet: {', '.join(missing)} (run the same command again to complete them).")
    if notes:
        lines += ["", *(f"Note: {n}" for n in notes)]
    atomic_write_text(path, "\n".join(lines) + "\n")


def chance_percent(ablation: Ablation) -> Optional[float]:
    sizes = head_sizes(ablation.runs[0].recipe.model)
    return 100.0 / next(iter(sizes.values())) if len(sizes) == 1 else None


def plot(path: Path, ablation: Ablation, rows: list[Row]) -> None:
    """Accuracy against trainable parameters (log x, as the paper's Fig. 2a), or bars per variant."""
    done = [row for row in rows if row.finished]
    axis = ablation.axis
    fig, ax = plt.subplots(figsize=(7.5, 4.8), constrained_layout=True)
    if axis.by_params:
        _params_plot(ax, done, axis.name)
    else:
        _bar_plot(ax, done, axis.name)
    chance = chance_percent(ablation)
    if chance is not None:  # labelled in the right margin, where no bar or point can hide it
        ax.axhline(chance, color="0.5", ls="--", lw=1)
        ax.annotate(f"chance\n{chance:.1f}%", xy=(1, chance), xycoords=("axes fraction", "data"),
                    xytext=(4, 0), textcoords="offset points", ha="left", va="center", fontsize=8, color="0.4")
    ax.set_ylim(0, 105)
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title(f"{ablation.recipe_path.stem}: {axis.title} (paper {axis.paper})", fontsize=11)
    ax.grid(axis="y", alpha=0.3)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def _params_plot(ax: plt.Axes, rows: list[Row], axis_name: str) -> None:
    rows = sorted((r for r in rows if r.trainable_params is not None), key=lambda r: r.trainable_params)
    x = [r.trainable_params for r in rows]
    y = [r.top1 for r in rows]
    if axis_name == "width":  # one method at several widths: a curve, as in Fig. 2a
        ax.plot(x, y, "o-", color="tab:red", lw=1.5, ms=7, zorder=3)
        labels = [f"width {r.variant}: {r.top1:.1f}%" for r in rows]
    else:
        # As Fig. 2a: ST-Adapter in red; methods with temporal modelling (SA+TA, SA+TS) as triangles.
        for temporal, marker in ((False, "o"), (True, "^")):
            picked = [r for r in rows if (r.arch != "SA") == temporal]
            ax.scatter([r.trainable_params for r in picked], [r.top1 for r in picked], marker=marker, s=55,
                       zorder=3, c=["tab:red" if r.variant == "st_adapter" else "tab:blue" for r in picked])
        labels = [f"{r.variant}: {r.top1:.1f}%" for r in rows]
    for xi, yi, ly, label in zip(x, y, _label_heights(x, y), labels):
        ax.annotate(label, (xi, yi), xytext=(xi * 1.25, ly), ha="left", va="center", fontsize=8, zorder=4,
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.85),
                    arrowprops=dict(arrowstyle="-", color="0.6", lw=0.6) if abs(ly - yi) > 0.5 else None)
    ax.set_xscale("log")
    if x:
        ax.set_xlim(min(x) / 2, max(x) * 8)  # room on the right for the last label
    ax.set_xlabel("trainable parameters (log scale)")
    ax.grid(axis="x", which="major", alpha=0.3)


def _label_heights(x: list[int], y: list[float], gap: float = 5.0, span: float = 0.8) -> list[float]:
    """Heights for labels right of their points, moved up where two would overlap.

    Two labels overlap when their points are less than `span` decades apart in x (a label
    is about that wide) and less than `gap` percentage points apart in y.
    """
    heights = list(y)
    placed: list[int] = []
    for i in sorted(range(len(y)), key=lambda k: y[k]):
        for j in sorted(placed, key=lambda k: heights[k]):
            if abs(math.log10(x[i]) - math.log10(x[j])) < span and abs(heights[i] - heights[j]) < gap:
                heights[i] = heights[j] + gap
        placed.append(i)
    return heights


def _bar_plot(ax: plt.Axes, rows: list[Row], axis_name: str) -> None:
    positions = range(len(rows))
    bars = ax.bar(positions, [r.top1 for r in rows], color="tab:blue", width=0.6)
    ax.bar_label(bars, [f"{r.top1:.1f}%" for r in rows], padding=2, fontsize=9)
    ax.set_xticks(list(positions), [_tick_label(r) for r in rows], fontsize=8)
    ax.set_xlabel(axis_name)


def _tick_label(row: Row) -> str:
    name = row.variant.replace("+", " +\n")  # before_attn+after_attn would run into its neighbours
    params = "" if row.trainable_params is None else f"\n{human_count(row.trainable_params)} params"
    return name + params


def write_reports(ablation: Ablation, rows: list[Row]) -> list[Path]:
    """ablate-<axis>.csv, .md and .png in the ablation's directory; returns their paths."""
    stem = ablation.out / f"ablate-{ablation.axis.name}"
    paths = [stem.with_suffix(".csv"), stem.with_suffix(".md"), stem.with_suffix(".png")]
    write_csv(paths[0], rows, with_arch=ablation.axis.name == "method")
    write_markdown(paths[1], ablation, rows)
    plot(paths[2], ablation, rows)
    return paths
