"""Throughput of a real `stadapt train` run, loader included, from its metrics.jsonl.

The median clips/s of the logged windows after the first `skip` ones (compilation and
warm-up), for all processes together. With the JSON of `stadapt bench model` for the same
recipe and per-process batch, the ratio says whether the data pipeline keeps up with the
model; with the JSON of this command for a one-process run (`baseline`), the scaling
efficiency says what the extra processes bought: clips/s per process over the baseline's.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Optional

import torch
import yaml
from rich.table import Table

from stadapt.bench.results import device_name, now, ratio, read_result, round4, versions
from stadapt.errors import StadaptError
from stadapt.recipe import recipe_from_dict

TABLE_KEYS = ("world_size", "clips_per_s", "clips_per_s_per_process", "windows_used", "model_only_train_clips_s",
              "end_to_end_vs_model_only", "projected_gpu_hours_full_schedule", "baseline_clips_per_s_per_process",
              "scaling_efficiency")


def bench_run(run_dir: Path, skip: int = 1, model_result: Optional[Path] = None,
              baseline: Optional[Path] = None) -> dict[str, Any]:
    """Steady-state training throughput of the run in `run_dir`; see the module docstring."""
    metrics = run_dir / "metrics.jsonl"
    try:
        entries = [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines() if line.strip()]
        recipe = recipe_from_dict(yaml.safe_load((run_dir / "recipe.yaml").read_text(encoding="utf-8")),
                                  source=str(run_dir / "recipe.yaml"))
    except (OSError, json.JSONDecodeError, yaml.YAMLError) as exc:
        raise StadaptError(f"{run_dir}: not a readable run directory ({exc})") from None
    logged = [e for e in entries if "clips_per_s" in e]
    if len(logged) <= skip:
        raise StadaptError(f"{metrics}: {len(logged)} logged windows, need more than --skip {skip}")
    clips_per_s = statistics.median(e["clips_per_s"] for e in logged[skip:])
    world_size = logged[-1].get("world_size", 1)  # runs logged before world_size was recorded ran one process
    per_process = clips_per_s / world_size
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = {
        "benchmark": "run",
        "run_dir": str(run_dir),
        "recipe": recipe.to_dict(),
        "batch_size": recipe.train.batch_size,
        "world_size": world_size,
        "steps_logged": entries[-1].get("step"),
        "windows_used": len(logged) - skip,
        "clips_per_s": round4(clips_per_s),
        "clips_per_s_per_process": round4(per_process),
        "projected_gpu_hours_full_schedule": None,
        "model_only_train_clips_s": None,
        "end_to_end_vs_model_only": None,
        "baseline_clips_per_s_per_process": None,
        "scaling_efficiency": None,
        "device": device.type,
        "device_name": device_name(device),
        "versions": versions("stadapt", "torch", "cuda"),
        "date": now(),
    }
    if model_result is not None:
        model = read_result(model_result, "train_clips_s")
        result["model_only_train_clips_s"] = model["train_clips_s"]
        result["end_to_end_vs_model_only"] = ratio(per_process, model["train_clips_s"])
        full = model["resolved_recipe"]["train"]
        result["projected_gpu_hours_full_schedule"] = round4(full["steps"] * full["batch_size"] / per_process / 3600)
    if baseline is not None:
        base = read_result(baseline, "clips_per_s_per_process")
        result["baseline_clips_per_s_per_process"] = base["clips_per_s_per_process"]
        result["scaling_efficiency"] = ratio(per_process, base["clips_per_s_per_process"])
    return result


def run_table(result: dict[str, Any], run_dir: Path) -> Table:
    table = Table("metric", "value", title=f"training run {run_dir} on {result['device_name']}")
    for key in TABLE_KEYS:
        table.add_row(key, "-" if result[key] is None else str(result[key]))
    return table
