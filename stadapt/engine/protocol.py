"""What an accuracy was measured on: the test protocol and the exact videos, and `stadapt compare`.

Numbers of the field are often incomparable without anyone noticing: another copy of K400
(videos lost over the years), other views, another crop. Every eval-<split>.json therefore
carries `protocol` (how each video was sampled and what it cost) and `data_fingerprint`
(a SHA-256 over the evaluated manifest's rows), and `compare` refuses to call runs with
different fingerprints comparable.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml
from rich.table import Table
from torch import nn

from stadapt.data.manifest import read_classes
from stadapt.errors import DataError, StadaptError
from stadapt.model.artifact import read_adapter
from stadapt.recipe import Recipe, recipe_from_dict


def eval_protocol(model: nn.Module, recipe: Recipe) -> dict[str, Any]:
    """Views, sampling and crop of the evaluation, and its forward GFLOPs per view and per video."""
    from stadapt.bench.model import model_cost

    d = recipe.data
    device = next(model.parameters()).device
    per_view = model_cost(model, recipe, device, recipe.train.precision)["gflops_per_view"]
    views = d.test_views.temporal * d.test_views.spatial
    return {
        "views": {"temporal": d.test_views.temporal, "spatial": d.test_views.spatial},
        "num_frames": d.num_frames,
        "sampling": d.sampling,
        "stride": d.stride if d.sampling == "dense" else None,
        "crop": d.crop,
        "test_resize": d.test_resize,
        "gflops_per_view": per_view,
        "gflops_total": round(per_view * views, 3),
    }


def data_fingerprint(root: str | Path, split: str, unreadable: int) -> dict[str, Any]:
    """SHA-256 over the sorted (path, class name) rows of ROOT/<split>.csv, with the counts.

    Paths are as the manifest writes them (relative to the videos' root), so two machines
    holding the same videos in different places get the same fingerprint; labels are class
    names, so a reordered classes.txt does not change it.
    """
    path = Path(root) / f"{split}.csv"
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: missing (run `stadapt prepare` first)") from None
    classes = read_classes(Path(root))
    rows = []
    for row in csv.DictReader(io.StringIO(text, newline="")):
        label = row.get("label", "")
        name = classes[int(label)] if label.isdigit() and int(label) < len(classes) else label
        rows.append(f"{row.get('path', '')}\t{name}\n")
    digest = hashlib.sha256("".join(sorted(rows)).encode("utf-8")).hexdigest()
    return {"sha256": digest, "manifest": str(path), "num_videos": len(rows), "unreadable": unreadable}


# -- stadapt compare --------------------------------------------------------------------


def read_eval(run_dir: Path, split: str) -> dict[str, Any]:
    path = Path(run_dir) / f"eval-{split}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StadaptError(f"{path}: missing (run `stadapt eval {run_dir} --split {split}` first)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StadaptError(f"{path}: not valid JSON ({exc})") from None


def compare_row(run_dir: Path, split: str) -> dict[str, Any]:
    """One run's line of the comparison: its recipe's method and backbone, its eval numbers."""
    report = read_eval(run_dir, split)
    tensors, metadata = read_adapter(run_dir)
    recipe = recipe_from_dict(yaml.safe_load(metadata["recipe"]), source=f"{run_dir} (recipe in metadata)")
    protocol = report.get("protocol") or {}
    fingerprint = report.get("data_fingerprint") or {}
    views = protocol.get("views") or report.get("views") or {}
    return {
        "run": str(run_dir),
        "method": recipe.model.method,
        "arch": getattr(recipe.model, "arch", "sa"),
        "backbone": f"{recipe.model.backbone} ({recipe.model.pretrained})",
        "trainable_params": sum(t.numel() for t in tensors.values()),
        "top1": report.get("top1"),
        "top5": report.get("top5"),
        "mean_class_acc": report.get("mean_class_acc"),
        "views": f"{views.get('temporal', '?')}x{views.get('spatial', '?')}",
        "gflops_per_view": protocol.get("gflops_per_view"),
        "gflops_total": protocol.get("gflops_total"),
        "num_videos": report.get("num_videos"),
        "fingerprint": fingerprint.get("sha256"),
    }


def compare_runs(run_dirs: Iterable[Path], split: str = "val") -> dict[str, Any]:
    """Rows of every run and the groups of runs evaluated on the same videos (same fingerprint)."""
    rows = [compare_row(Path(r), split) for r in run_dirs]
    groups: dict[Optional[str], list[str]] = {}
    for row in rows:
        groups.setdefault(row["fingerprint"], []).append(row["run"])
    same = len(groups) == 1 and None not in groups
    return {"split": split, "runs": rows, "same_videos": same,
            "groups": [{"fingerprint": fp, "runs": runs} for fp, runs in groups.items()]}


def comparison_notes(result: dict[str, Any]) -> list[str]:
    """Plain sentences on which runs were not evaluated on the same videos."""
    if result["same_videos"]:
        return [f"all {len(result['runs'])} runs were evaluated on the same videos "
                f"(fingerprint {result['groups'][0]['fingerprint'][:12]})"]
    notes = []
    for group in result["groups"]:
        runs = ", ".join(group["runs"])
        if group["fingerprint"] is None:
            notes.append(f"no data fingerprint (evaluated before fingerprints were recorded): {runs}")
        else:
            notes.append(f"evaluated on videos {group['fingerprint'][:12]}: {runs}")
    return ["NOT comparable: these runs were not all evaluated on the same videos", *notes]


def comparison_table(result: dict[str, Any]) -> Table:
    """The rows of `compare_runs` side by side: a column per run (a row per run would not fit a terminal)."""
    runs = result["runs"]
    table = Table("", *(row["run"] for row in runs), title=f"runs compared on {result['split']}",
                  title_justify="left")

    def pct(value: Optional[float]) -> str:
        return "-" if value is None else f"{100 * value:.2f}%"

    lines = {
        "method": lambda r: r["method"],
        "arch": lambda r: r["arch"],
        "backbone": lambda r: r["backbone"],
        "trainable params": lambda r: f"{r['trainable_params']:,}",
        "top-1": lambda r: pct(r["top1"]),
        "top-5": lambda r: pct(r["top5"]),
        "mean class": lambda r: pct(r["mean_class_acc"]),
        "views": lambda r: r["views"],
        "GFLOPs per video": lambda r: "-" if r["gflops_total"] is None else f"{r['gflops_total']:,.4g}",
        "videos": lambda r: "-" if r["num_videos"] is None else f"{r['num_videos']:,}",
        "data fingerprint": lambda r: (r["fingerprint"] or "-")[:12],
    }
    for name, show in lines.items():
        table.add_row(name, *(show(r) for r in runs))
    return table
