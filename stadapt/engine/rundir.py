"""The run directory: its name, its lock, `runs/latest`, `recipe.yaml` and `metrics.jsonl`.

Layout (design.md): recipe.yaml, train-data.json, metrics.jsonl, checkpoints/last.pt,
adapter.safetensors, eval-<split>.json, confusion-<split>.csv/.png, curves.png, and with
train.tensorboard the same metrics as TensorBoard events in tensorboard/. Only rank 0 touches it.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml

from stadapt.errors import BusyError, RecipeError
from stadapt.fileio import FileLock, atomic_write_text
from stadapt.recipe import Recipe, recipe_differences, recipe_from_dict

RUNS_DIR = Path("runs")
LATEST = RUNS_DIR / "latest"
LOCK_FILE = ".train.lock"
RECIPE_FILE = "recipe.yaml"
METRICS_FILE = "metrics.jsonl"
TRAIN_DATA_FILE = "train-data.json"
TENSORBOARD_DIR = "tensorboard"
# Keys a resumed run may change: how often it reports, how it loads, and how long it goes on.
RESUMABLE_CHANGES = {"train.steps", "train.eval_every", "train.save_every", "train.log_every", "train.workers",
                     "train.tensorboard"}


def default_run_dir(recipe_path: Path) -> Path:
    return RUNS_DIR / f"{recipe_path.stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def lock_run_dir(run_dir: Path) -> FileLock:
    """Hold `run_dir/.train.lock` (flock: dropped by the kernel if this process dies) or fail in one line."""
    lock = FileLock(run_dir / LOCK_FILE)
    if not lock.acquire():
        raise BusyError(f"{run_dir} is in use by another `stadapt train` ({lock.owner()}); "
                        "choose another --out, or wait for that run to end")
    return lock


def point_latest(run_dir: Path) -> None:
    """Make `runs/latest` a symlink to `run_dir` (relative inside runs/), replacing it atomically."""
    RUNS_DIR.mkdir(parents=True, exist_ok=True)
    run_dir = run_dir.absolute()
    runs = RUNS_DIR.absolute()
    target = run_dir.relative_to(runs) if run_dir.is_relative_to(runs) else run_dir
    tmp = RUNS_DIR / f".latest.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target, target_is_directory=True)
    os.replace(tmp, LATEST)


def write_recipe(run_dir: Path, recipe: Recipe) -> None:
    atomic_write_text(run_dir / RECIPE_FILE, recipe.to_yaml())


def write_train_data(run_dir: Path, samples: Iterable[Any]) -> None:
    """train-data.json: how long the training videos are, so that `predict --timeline` can size
    its windows as one uniformly sampled clip (which spans a whole training video)."""
    samples = list(samples)
    durations = [s.num_frames / s.fps for s in samples if s.num_frames and s.fps]
    atomic_write_text(run_dir / TRAIN_DATA_FILE, json.dumps({
        "videos": len(samples),
        "videos_with_duration": len(durations),
        "median_duration_s": round(statistics.median(durations), 4) if durations else None,
    }, indent=2) + "\n")


def read_train_data(run_dir: Path) -> dict[str, Any]:
    """train-data.json of a run, or {} for a run trained before it was written."""
    try:
        return json.loads((Path(run_dir) / TRAIN_DATA_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return {}


def check_resumable(run_dir: Path, recipe: Recipe) -> None:
    """A resumed run must train what it started training; only RESUMABLE_CHANGES may differ."""
    path = run_dir / RECIPE_FILE
    try:
        saved = recipe_from_dict(yaml.safe_load(path.read_text(encoding="utf-8")), source=str(path)).to_dict()
    except FileNotFoundError:
        return
    differences = recipe_differences(saved, recipe.to_dict(), RESUMABLE_CHANGES)
    if differences:
        key, there, now = differences[0]
        raise RecipeError(f"--resume: {key} differs from {path} ({there!r} there, {now!r} now); "
                          "resuming would mix two recipes")


class MetricsLog:
    """Append-only `metrics.jsonl`: one JSON object per line, flushed as it is written; with
    `tensorboard`, every entry also goes to RUN/tensorboard as scalars."""

    def __init__(self, run_dir: Path, resume_step: Optional[int] = None, tensorboard: bool = False) -> None:
        """A new log, or with `resume_step` the existing one continued after that step."""
        self.path = run_dir / METRICS_FILE
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        self._fh = open(self.path, "a" if resume_step is not None else "w", encoding="utf-8")
        self._board = None
        if tensorboard:
            from stadapt.engine.board import TensorBoardSink

            self._board = TensorBoardSink(run_dir / TENSORBOARD_DIR, resume_step)

    def _truncate_after(self, step: int) -> None:
        """Drop lines logged after the checkpoint: the resumed run logs those steps again."""
        kept = [line for line in read_metrics(self.path) if line.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(line) + "\n" for line in kept))

    def write(self, entry: dict[str, Any]) -> None:
        self._fh.write(json.dumps(entry) + "\n")
        self._fh.flush()
        if self._board is not None:
            self._board.write(entry)

    def close(self) -> None:
        self._fh.close()
        if self._board is not None:
            self._board.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The entries of a metrics.jsonl; a torn last line (a killed process) is ignored."""
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return entries
