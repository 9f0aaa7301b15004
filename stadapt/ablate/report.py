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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import matplotlib

matplotlib.use("Agg")  # headless: clusters and CI have no display

import matplotlib.pyplot as plt  # noqa: E402
from rich.table import Table  # noqa: E402
from safetensors import safe_open  # noqa: E402

from stadapt.ablate.axes import Axis  # noqa: E402
from stadapt.ablate.runner import EVAL_FILE, Ablation, VariantRun, read_time  # noqa: E402
from stadapt.data.dataset import stratified_subset  # noqa: E402
from stadapt.data.manifest import PreparedDataset  # noqa: E402
from stadapt.errors import StadaptError  # noqa: E402
from stadapt.fileio import atomic_path, atomic_write_text  # noqa: E402
from stadapt.model.artifact import ADAPTER_FILE  # noqa: E402
from stadapt.recipe import Recipe, head_sizes, recipe_from_dict  # noqa: E402

CSV_FIELDS = ("variant", "trainable_params", "top1_pct", "top5_pct", "train_seconds")
ARCH_NAMES = {"sa": "SA", "sa_ta": "SA+TA", "sa_ts": "SA+TS"}  # Table 1's architecture column
STATUS = {"reused": "done earlier", "trained": "trained now", "failed": "failed", "interrupted": "interrupted",
          "pending": "not run", "mean": "mean of the finished"}
MEAN = "mean"  # the last row of a split ablation (Table 12 reports the three-split mean)
GFLOPS = "GFLOPs × views"  # the frames axis's cost column, as in Tables 2 and 3


@dataclass
class Row:
    variant: str  # the axis value
    status: str
    arch: str = "SA"
    method: Optional[str] = None  # with --methods
    trainable_params: Optional[int] = None
    top1: Optional[float] = None  # percent
    top5: Optional[float] = None
    train_seconds: Optional[float] = None
    x: Optional[float] = None  # where a line plot puts the value (steps, percent of data, frames)
    fields: dict[str, Any] = field(default_factory=dict)  # the axis's own CSV columns
    shown: dict[str, str] = field(default_factory=dict)  # ... and how the tables show them

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


def read_row(run: VariantRun, axis: Axis) -> Row:
    row = Row(run.variant.name, run.status, method=run.variant.method)
    timing = read_time(run.run_dir)
    if timing is not None:
        row.train_seconds = timing["train_seconds"]
    if run.finished:
        report = json.loads((run.run_dir / EVAL_FILE).read_text(encoding="utf-8"))
        row.top1, row.top5 = 100 * report["top1"], 100 * report["top5"]
        row.trainable_params = count_trainable(run.run_dir / ADAPTER_FILE)
    add_axis_columns(row, run, axis)
    return row


def add_axis_columns(row: Row, run: VariantRun, axis: Axis) -> None:
    """What the axis's value means for this run: steps trained, training videos, cost per view."""
    recipe = run.recipe
    if axis.name == "method":
        row.arch = ARCH_NAMES[recipe.model.arch]
        row.fields["arch"] = row.arch
        row.shown["architecture"] = row.arch
    elif axis.name == "steps":
        row.x = recipe.train.steps
        row.fields["steps"] = recipe.train.steps
        row.shown["train steps"] = f"{recipe.train.steps:,}"
    elif axis.name == "data":
        row.x = 100 * recipe.data.train_fraction
        videos = training_videos(recipe)
        row.fields["train_videos"] = videos
        row.shown["train videos"] = _fmt(videos, ",")
    elif axis.name == "frames":
        row.x = recipe.data.num_frames
        views = recipe.data.test_views.temporal * recipe.data.test_views.spatial
        gflops = gflops_per_view(recipe) if row.finished else None
        row.fields.update(gflops_per_view=gflops, views=views)
        row.shown[GFLOPS] = "-" if gflops is None else f"{gflops:,.4g} × {views}"


def training_videos(recipe: Recipe) -> Optional[int]:
    """Videos of the (sub)set the run trains on, from the prepared manifest."""
    try:
        samples = PreparedDataset.open(recipe.data.root).samples("train", head_sizes(recipe.model))
    except StadaptError:
        return None
    return len(stratified_subset(samples, recipe.data.train_fraction, recipe.train.seed))


def gflops_per_view(recipe: Recipe) -> float:
    """The paper's forward GFLOPs of one view (bench's FLOP counter; weights do not change it)."""
    import torch

    from stadapt.bench.model import model_cost
    from stadapt.model.build import build_model

    raw = recipe.to_dict()
    raw["model"].update(pretrained="none", init_from=None)
    counted = recipe_from_dict(raw, source="ablate frames")
    return model_cost(build_model(counted), counted, torch.device("cpu"))["gflops_per_view"]


def read_rows(ablation: Ablation) -> list[Row]:
    """One row per variant, then (split ablations) the mean per method over the finished splits."""
    rows = [read_row(run, ablation.axis) for run in ablation.runs]
    if ablation.axis.name == "split":
        rows += [mean_row(method, [r for r in rows if r.method == method]) for method in methods_of(rows)]
    return rows


def mean_row(method: Optional[str], rows: list[Row]) -> Row:
    done = [r for r in rows if r.finished]
    row = Row(MEAN, "mean", method=method)
    if done:
        row.top1 = sum(r.top1 for r in done) / len(done)
        row.top5 = sum(r.top5 for r in done) / len(done)
        row.fields["splits"] = "+".join(r.variant for r in done)
    return row


def methods_of(rows: list[Row]) -> list[Optional[str]]:
    return list(dict.fromkeys(r.method for r in rows))


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


def _by_method(ablation: Ablation) -> bool:
    return any(run.variant.method is not None for run in ablation.runs)


def _value_columns(rows: list[Row]) -> list[str]:
    """The axis's own display columns that are the same for every method (steps, training videos)."""
    return [name for name in (rows[0].shown if rows else {}) if name != GFLOPS]


def _wide(rows: list[Row]) -> tuple[list[Optional[str]], dict[str, dict[Optional[str], Row]]]:
    """Methods in order, and per value its row for each method: one table row per value."""
    table: dict[str, dict[Optional[str], Row]] = {}
    for row in rows:
        table.setdefault(row.variant, {})[row.method] = row
    return methods_of(rows), table


def results_table(ablation: Ablation, rows: list[Row]) -> Table:
    axis = ablation.axis
    title = f"ablate {axis.name}: {ablation.recipe_path.name}, validation (paper {axis.paper})"
    if _by_method(ablation):
        return _wide_table(title, axis.name, rows)
    extra = list(rows[0].shown) if rows else []
    table = Table(axis.name, *extra, "trainable params", "top-1 %", "top-5 %", "train s", "status", title=title,
                  title_justify="left")
    for row in rows:
        table.add_row(row.variant, *(row.shown.get(name, "") for name in extra), _fmt(row.trainable_params, ","),
                      _fmt(row.top1, ".2f"), _fmt(row.top5, ".2f"), _fmt(row.train_seconds, ".0f"),
                      STATUS[row.status])
    return table


def _wide_grid(axis_name: str, rows: list[Row], percent: str) -> tuple[list[str], list[list[str]]]:
    """Column names and cells of a table with one row per value and each method's top-1, top-5
    (and GFLOPs) in its own columns; `percent` is how a column name says "percent"."""
    methods, by_value = _wide(rows)
    shared = _value_columns(rows)
    per_method = [GFLOPS] if any(GFLOPS in r.shown for r in rows) else []
    columns = [axis_name, *shared]
    for method in methods:
        columns += [f"{method} top-1 {percent}", f"{method} top-5 {percent}",
                    *(f"{method} {name}" for name in per_method)]
    lines = []
    for value, cells in by_value.items():
        first = next(iter(cells.values()))
        line = [value, *(first.shown.get(name, "") for name in shared)]
        for method in methods:
            row = cells.get(method)
            line += [_fmt(row and row.top1, ".2f"), _fmt(row and row.top5, ".2f"),
                     *((row.shown.get(name, "-") if row else "-") for name in per_method)]
        lines.append(line)
    return columns, lines


def _wide_table(title: str, axis_name: str, rows: list[Row]) -> Table:
    columns, lines = _wide_grid(axis_name, rows, "%")
    table = Table(*columns, title=title, title_justify="left", caption="- : not finished (run the command again)")
    for line in lines:
        table.add_row(*line)
    return table


def write_csv(path: Path, ablation: Ablation, rows: list[Row]) -> None:
    """One line per finished variant (and the split mean); with --methods a `method` column first."""
    done = [row for row in rows if row.finished]
    extra = list(dict.fromkeys(name for row in done for name in row.fields))
    by_method = _by_method(ablation)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*(["method"] if by_method else []), CSV_FIELDS[0], *extra, *CSV_FIELDS[1:]])
    for row in done:
        writer.writerow([*([row.method] if by_method else []), row.variant,
                         *("" if row.fields.get(name) is None else row.fields[name] for name in extra),
                         "" if row.trainable_params is None else row.trainable_params, f"{row.top1:.2f}",
                         f"{row.top5:.2f}", "" if row.train_seconds is None else f"{row.train_seconds:.1f}"])
    atomic_write_text(path, buf.getvalue())


def describe(ablation: Ablation) -> str:
    """One sentence: recipe, overrides, what top-1 was measured on."""
    recipe = ablation.runs[0].recipe
    views = recipe.data.test_views
    sets = "".join(f" `--set {s}`" for s in ablation.overrides)
    frames = "" if ablation.axis.name == "frames" else f" of {recipe.data.num_frames} frames"
    root = f"`{Path(recipe.data.root).parent}/splitN`" if ablation.axis.name == "split" else f"`{recipe.data.root}`"
    return (f"Recipe `{ablation.recipe_path}`{sets}; top-1 and top-5 on the validation split of "
            f"{root}, {views.temporal}×{views.spatial} views{frames}. "
            "Train time is the wall-clock of the variant's `stadapt train` processes, "
            "start-up and final evaluation included.")


def write_markdown(path: Path, ablation: Ablation, rows: list[Row]) -> None:
    axis = ablation.axis
    lines = [f"# stadapt ablate {axis.name}: {axis.title} (paper {axis.paper})", "", describe(ablation), ""]
    if _by_method(ablation):
        lines += _wide_markdown(axis.name, rows)
    else:
        extra = list(rows[0].shown) if rows else []
        lines += [f"| {' | '.join([axis.name, *extra])} | trainable params | top-1 (%) | top-5 (%) | train time (s) |",
                  f"| {' | '.join(['---'] + ['---:'] * len(extra))} | ---: | ---: | ---: | ---: |"]
        for row in rows:
            if row.finished:
                cells = [row.variant, *(row.shown.get(name, "") for name in extra)]
                lines.append(f"| {' | '.join(cells)} | {_fmt(row.trainable_params, ',')} | {row.top1:.2f} | "
                             f"{row.top5:.2f} | {_fmt(row.train_seconds, '.0f')} |")
    missing = [f"{run.variant.key}" for run in ablation.runs if not run.finished]
    notes = [ablation.note] if ablation.note else []
    if missing:
        notes.append(f"Not finished yet: {', '.join(missing)} (run the same command again to complete them).")
    if notes:
        lines += ["", *(f"Note: {n}" for n in notes)]
    atomic_write_text(path, "\n".join(lines) + "\n")


def _wide_markdown(axis_name: str, rows: list[Row]) -> list[str]:
    """One row per value, top-1 (top-5) of each method in its own column."""
    heads, cells = _wide_grid(axis_name, rows, "(%)")
    lines = [f"| {' | '.join(heads)} |", f"| {' | '.join(['---'] + ['---:'] * (len(heads) - 1))} |"]
    return lines + [f"| {' | '.join(line)} |" for line in cells]


def chance_percent(ablation: Ablation) -> Optional[float]:
    sizes = head_sizes(ablation.runs[0].recipe.model)
    return 100.0 / next(iter(sizes.values())) if len(sizes) == 1 else None


X_LABELS = {"steps": "training steps", "data": "share of the training split (%, log scale)",
            "frames": "frames per view"}


def plot(path: Path, ablation: Ablation, rows: list[Row]) -> None:
    """Accuracy against trainable parameters (log x, as the paper's Fig. 2a), against the value
    (Figs. 2b, 2c), or bars per variant; with --methods one line per method."""
    done = [row for row in rows if row.finished]
    axis = ablation.axis
    fig, ax = plt.subplots(figsize=(7.5, 4.8), constrained_layout=True)
    if _by_method(ablation):
        _method_lines(ax, done, axis)
    elif axis.plot == "params":
        _params_plot(ax, done, axis.name)
    elif axis.plot == "line":
        _line_plot(ax, done, axis)
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


def _line_plot(ax: plt.Axes, rows: list[Row], axis: Axis) -> None:
    rows = sorted(rows, key=lambda r: r.x)
    x, y = [r.x for r in rows], [r.top1 for r in rows]
    ax.plot(x, y, "o-", color="tab:red", lw=1.5, ms=7, zorder=3)
    for xi, yi in zip(x, y):
        ax.annotate(f"{yi:.1f}%", (xi, yi), xytext=(0, 8), textcoords="offset points", ha="center", fontsize=8)
    _value_axis(ax, x, axis)


def _value_axis(ax: plt.Axes, x: list[float], axis: Axis) -> None:
    if axis.log_x:
        ax.set_xscale("log")
    ticks = sorted(set(x))
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel(X_LABELS.get(axis.name, axis.name))


def _method_lines(ax: plt.Axes, rows: list[Row], axis: Axis) -> None:
    """One line per method: over the value (steps, data, frames), trainable parameters, or the values in order."""
    values = list(dict.fromkeys(r.variant for r in rows))
    for method in methods_of(rows):
        mine = [r for r in rows if r.method == method]
        if axis.plot == "line":
            mine.sort(key=lambda r: r.x)
            x = [r.x for r in mine]
        elif axis.plot == "params":
            mine = sorted((r for r in mine if r.trainable_params is not None), key=lambda r: r.trainable_params)
            x = [r.trainable_params for r in mine]
        else:
            x = [values.index(r.variant) for r in mine]
        ax.plot(x, [r.top1 for r in mine], "o-", lw=1.5, ms=6, zorder=3, label=method,
                color="tab:red" if method == "st_adapter" else None)
    if axis.plot == "line":
        _value_axis(ax, [r.x for r in rows], axis)
    elif axis.plot == "params":
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters (log scale)")
    else:
        ax.set_xticks(range(len(values)), values, fontsize=8)
        ax.set_xlabel(axis.name)
    ax.legend(fontsize=8, loc="lower right")


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
    write_csv(paths[0], ablation, rows)
    write_markdown(paths[1], ablation, rows)
    plot(paths[2], ablation, rows)
    return paths
