"""Run an ablation: one `stadapt train` process per variant, one variant per GPU at a time.

Each variant is a child process (`python -m stadapt train RECIPE --set ... --out DIR
--resume`), so a crash or an out-of-memory in one variant leaves the others running, GPU
memory is returned between variants, and placement is only `CUDA_VISIBLE_DEVICES`. The
run directories carry all state: a variant with `eval-val.json` and `adapter.safetensors`
is finished and is not run again; any other is started with `--resume`, which continues
from its checkpoint (or starts afresh when there is none). Children run in their own
session, so a Ctrl-C reaches only this process, which passes it on once; the children save
a checkpoint and stop, and the same command later continues where they were.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Optional, Sequence

import yaml

from stadapt.ablate.axes import (
    AblationError,
    Axis,
    Base,
    Variant,
    backbone_depth,
    check_recipe,
    crossed,
    get_axis,
    methods_list,
    variants,
)
from stadapt.engine.rundir import RECIPE_FILE
from stadapt.errors import StadaptError
from stadapt.fileio import atomic_write_text
from stadapt.model.artifact import ADAPTER_FILE
from stadapt.recipe import Recipe, load_recipe, recipe_differences, resolve_recipe_path

EVAL_FILE = "eval-val.json"
LOG_FILE = "train.log"
TIME_FILE = "ablate.json"  # wall-clock seconds and attempts of this variant's training processes
# Keys that do not change what a variant trains: a finished one is reused when only these differ.
COSMETIC_KEYS = frozenset({"train.eval_every", "train.save_every", "train.log_every", "train.workers"})


class AblationIncomplete(StadaptError):
    """Some variants failed; the others' results are written, and a re-run retries only the failed."""

    exit_code = 1


@dataclass
class VariantRun:
    """One variant's run directory and what happened to it in this invocation."""

    variant: Variant
    run_dir: Path
    recipe: Recipe
    status: str = "pending"  # pending | reused | trained | failed | interrupted

    @property
    def finished(self) -> bool:
        """Evaluated and saved (a kill between the two is finished by the next `--resume`)."""
        return (self.run_dir / EVAL_FILE).is_file() and (self.run_dir / ADAPTER_FILE).is_file()


@dataclass
class Ablation:
    """A planned or completed ablation over one axis."""

    axis: Axis
    recipe_path: Path
    overrides: list[str]
    out: Path
    runs: list[VariantRun]
    note: Optional[str] = None  # how default layer ranges were scaled, when they were
    signum: Optional[int] = None  # the signal that stopped it

    @property
    def failed(self) -> list[VariantRun]:
        return [r for r in self.runs if r.status == "failed"]


def default_out(recipe_path: Path, axis: Axis) -> Path:
    return Path("ablations") / f"{recipe_path.stem}-{axis.name}"


def plan(axis_name: str, recipe_arg: str, overrides: Sequence[str] = (), values: Optional[str] = None,
         out: Optional[str | Path] = None, methods: Optional[str] = None) -> Ablation:
    """Resolve and validate every variant's recipe, and check existing run directories, before training any.

    With `methods` (comma-separated), every value is trained once per method.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise AblationError("run stadapt ablate directly, not under torchrun: it places one variant per GPU itself")
    axis = get_axis(axis_name)
    recipe_path = resolve_recipe_path(recipe_arg)
    base = load_recipe(recipe_path, overrides)
    if methods is not None and axis.name == "method":
        raise AblationError("ablate method varies the method itself: give the methods with --values, not --methods")
    method_variants = methods_list(methods) if methods is not None else []
    if not method_variants:
        check_recipe(axis, base)
    depth = backbone_depth(base) if axis.name == "layers" else 0
    found, note = variants(axis, values, Base(base, depth))
    if method_variants:
        found = crossed(method_variants, found)
    out = Path(out) if out else default_out(recipe_path, axis)
    runs = []
    for variant in found:
        recipe = load_recipe(recipe_path, [*overrides, *variant.overrides])
        check_recipe(axis, recipe)
        run = VariantRun(variant, out / variant.key, recipe)
        check_same_recipe(run)
        runs.append(run)
    if axis.name == "split":
        check_split_roots(base, runs)
    return Ablation(axis, recipe_path, list(overrides), out, runs, note)


def check_split_roots(base: Recipe, runs: list[VariantRun]) -> None:
    """Each split's prepared directory must exist before any training starts."""
    for run in runs:
        root = Path(run.recipe.data.root)
        if not (root / "report.json").is_file():
            raise AblationError(
                f"ablate split trains on {root} (data.root/split{run.variant.name}), which is not a prepared "
                f"directory: run `stadapt prepare {base.data.dataset} ROOT --split all --out {base.data.root}`")


def check_same_recipe(run: VariantRun) -> None:
    """A variant directory must hold a run of exactly this variant's recipe, or results would mix."""
    path = run.run_dir / RECIPE_FILE
    if not path.is_file():
        return
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        raw = None
    if not isinstance(raw, dict):
        raise AblationError(f"{path} is not a readable recipe: remove {run.run_dir} to retrain that variant")
    defaults = Recipe().to_dict()  # a key added since that run was made holds its default there
    saved = {section: {**defaults.get(section, {}), **values} if isinstance(values, dict) else values
             for section, values in raw.items()}
    differences = recipe_differences(saved, run.recipe.to_dict(), COSMETIC_KEYS)
    if differences:
        key, saved, wanted = differences[0]
        raise AblationError(f"{run.run_dir} holds a run with {key} = {saved!r}, this ablation asks for "
                            f"{wanted!r}: choose another --out, or remove that directory to retrain it")


def gpu_slots() -> list[Optional[str]]:
    """The CUDA_VISIBLE_DEVICES value of each GPU a variant may take; [None] without GPUs (one at a time)."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        return [None]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return [str(i) for i in range(count)]
    ids = [d.strip() for d in visible.split(",")]
    return ids[:count]


def train_command(ablation: Ablation, run: VariantRun) -> list[str]:
    sets = [item for s in [*ablation.overrides, *run.variant.overrides] for item in ("--set", s)]
    return [sys.executable, "-m", "stadapt", "train", str(ablation.recipe_path), *sets,
            "--out", str(run.run_dir), "--resume"]


def child_env(slot: Optional[str]) -> dict[str, str]:
    env = dict(os.environ)
    if slot is not None:
        env["CUDA_VISIBLE_DEVICES"] = slot
    return env


# ---------------------------------------------------------------------------------------
# Running


@dataclass
class Job:
    """A child process to run with its output in `log`."""

    name: str
    argv: list[str]
    log: Path
    process: Optional[subprocess.Popen] = None
    started: float = 0.0
    slot: Optional[str] = None


@dataclass
class SignalRelay:
    """Passes SIGINT and SIGTERM on to the running children (they save and stop) and records the first."""

    running: list[Job] = field(default_factory=list)
    signum: Optional[int] = None
    _previous: dict[int, Any] = field(default_factory=dict)

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        self.signum = self.signum or signum
        for job in self.running:
            if job.process is not None and job.process.poll() is None:
                job.process.send_signal(signum)

    def __enter__(self) -> "SignalRelay":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def run_jobs(jobs: Sequence[Job], slots: Sequence[Optional[str]], on_start: Callable[[Job], None],
             on_end: Callable[[Job, int, float], None], poll_s: float = 0.2) -> Optional[int]:
    """Run `jobs` in order, at most one per slot at a time; returns the signal that stopped launching, if any."""
    pending = list(jobs)
    free = list(slots)
    with SignalRelay() as relay:
        while pending or relay.running:
            while pending and free and relay.signum is None:
                job = pending.pop(0)
                job.slot = free.pop(0)
                job.log.parent.mkdir(parents=True, exist_ok=True)
                relay.running.append(job)
                with open(job.log, "a", encoding="utf-8") as log:
                    log.write(f"\n$ {' '.join(job.argv)}\n")
                    log.flush()
                    job.started = time.monotonic()
                    job.process = subprocess.Popen(job.argv, stdout=log, stderr=subprocess.STDOUT,
                                                   stdin=subprocess.DEVNULL, env=child_env(job.slot),
                                                   start_new_session=True)
                if relay.signum is not None:  # it came while the process was starting
                    job.process.send_signal(relay.signum)
                on_start(job)
            if relay.signum is not None and not relay.running:
                break
            time.sleep(poll_s)
            for job in [j for j in relay.running if j.process.poll() is not None]:
                relay.running.remove(job)
                free.append(job.slot)
                on_end(job, job.process.returncode, time.monotonic() - job.started)
        return relay.signum


def record_time(run_dir: Path, seconds: float) -> None:
    """Add one training process's wall-clock seconds to the variant's total (kept across resumes)."""
    record = read_time(run_dir) or {"train_seconds": 0.0, "attempts": 0}
    record = {"train_seconds": round(record["train_seconds"] + seconds, 1), "attempts": record["attempts"] + 1}
    atomic_write_text(run_dir / TIME_FILE, json.dumps(record) + "\n")


def read_time(run_dir: Path) -> Optional[dict[str, Any]]:
    try:
        return json.loads((run_dir / TIME_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def last_line(path: Path) -> str:
    """The last non-empty line of a log: usually the one-line error of a failed training."""
    try:
        lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


def run_ablation(ablation: Ablation, say: Callable[[str], None]) -> Ablation:
    """Train the variants that are not finished, spread over the GPUs; mark what happened to each."""
    todo = []
    for run in ablation.runs:
        if run.finished:
            run.status = "reused"
        else:
            todo.append(run)
    slots = gpu_slots() if todo else [None]
    where = "" if not todo else (" (one at a time on the CPU or one GPU)" if len(slots) == 1
                                 else f" (one per GPU on {len(slots)} GPUs)")
    count = f"{len(ablation.runs)} variant{'s' if len(ablation.runs) > 1 else ''}"
    say(f"ablate {ablation.axis.name}: {count} of {ablation.recipe_path} in {ablation.out}; "
        f"{len(ablation.runs) - len(todo)} finished earlier, {len(todo)} to train{where}")
    if ablation.note:
        say(f"note: {ablation.note}")
    by_name = {run.variant.key: run for run in todo}
    jobs = [Job(run.variant.key, train_command(ablation, run), run.run_dir / LOG_FILE) for run in todo]
    position = {run.variant.key: i + 1 for i, run in enumerate(ablation.runs)}

    def on_start(job: Job) -> None:
        gpu = f" on GPU {job.slot}" if job.slot is not None else ""
        say(f"[{position[job.name]}/{len(ablation.runs)}] {job.name}: training{gpu} (log: {job.log})")

    def on_end(job: Job, code: int, seconds: float) -> None:
        run = by_name[job.name]
        record_time(run.run_dir, seconds)
        label = f"[{position[job.name]}/{len(ablation.runs)}] {job.name}"
        if code == 0 and run.finished:
            run.status = "trained"
            top1 = json.loads((run.run_dir / EVAL_FILE).read_text(encoding="utf-8"))["top1"]
            say(f"{label}: val top-1 {100 * top1:.1f}% after {seconds:.0f} s")
        elif code < 0 or code in (128 + signal.SIGINT, 128 + signal.SIGTERM):
            run.status = "interrupted"
            say(f"{label}: stopped after {seconds:.0f} s; its checkpoint resumes on the next run")
        else:
            run.status = "failed"
            say(f"{label}: failed (exit {code}): {last_line(job.log)}")

    ablation.signum = run_jobs(jobs, slots, on_start, on_end)
    return ablation
