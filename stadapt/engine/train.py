"""`stadapt train`: AdamW on the trainable parameters, step-based, resumable, on 1 to N GPUs.

One optimizer step consumes `train.batch_size` clips over all ranks: each rank runs
`accumulation` micro-batches of `device_batch_size` clips and DDP averages the gradients.
Everything that decides the next step (trainable weights, optimizer and scheduler state,
RNG states, the data position) goes into the checkpoint, so a resumed run continues
exactly where the stopped one was; on CPU the final weights are bitwise the same.
"""

from __future__ import annotations

import contextlib
import random
import shlex
import signal
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from torch.nn.parallel import DistributedDataParallel

from stadapt.data.dataset import build_dataset
from stadapt.data.transforms import normalize
from stadapt.engine import distributed
from stadapt.engine.board import require_tensorboard
from stadapt.engine.checkpoint import CHECKPOINT_FILE, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from stadapt.engine.distributed import DistContext
from stadapt.engine.evaluate import check_input_size, evaluate_model
from stadapt.engine.interrupt import StopRequest
from stadapt.engine.metrics import batch_correct
from stadapt.engine.plots import plot_curves
from stadapt.engine.progress import TrainProgress
from stadapt.engine.rundir import (
    MetricsLog,
    check_resumable,
    default_run_dir,
    lock_run_dir,
    point_latest,
    read_metrics,
    write_recipe,
    write_train_data,
)
from stadapt.engine.schedule import build_optimizer, build_scheduler
from stadapt.engine.stream import DevicePrefetcher, StepStream, train_loader
from stadapt.errors import DataError, RecipeError, StadaptError
from stadapt.fileio import FileLock
from stadapt.model.artifact import ADAPTER_FILE, init_from, load_trainable, save_adapter, trainable_state
from stadapt.model.build import build_model, count_parameters
from stadapt.model.runtime import autocast, configure_backends, grad_scaler, maybe_compile, place_model
from stadapt.recipe import Recipe, load_recipe, resolve_recipe_path

STATS = ("loss_sum", "correct", "clips", "skipped", "nonfinite", "stop")


class TrainingDiverged(StadaptError):
    """Too many non-finite losses in a row: the recipe (lr, precision) needs changing."""

    exit_code = 1


@dataclass
class Position:
    """Where the run is: the counters a checkpoint restores besides weights and RNG."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches this rank took from `epoch`
    skipped_in_epoch: int = 0  # unreadable videos replaced during `epoch`, all ranks
    bad_steps: int = 0  # non-finite losses in a row


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    completed: bool
    signum: Optional[int] = None
    report: Optional[dict[str, Any]] = None

    @property
    def exit_code(self) -> int:
        """0 when training finished; 128 + signal number when a signal stopped it (checkpoint saved)."""
        return 0 if self.completed else 128 + (self.signum or signal.SIGTERM)


def batch_geometry(recipe: Recipe, world_size: int) -> tuple[int, int]:
    """(micro-batch per device, accumulation steps) that make up the recipe's global batch."""
    t = recipe.train
    if t.batch_size % world_size:
        raise RecipeError(f"train.batch_size = {t.batch_size} cannot be shared evenly by {world_size} processes")
    per_rank = t.batch_size // world_size
    micro = t.device_batch_size or per_rank
    if per_rank % micro:
        raise RecipeError(f"train.device_batch_size = {micro} does not divide the {per_rank} clips that each of "
                          f"{world_size} processes takes per step (train.batch_size = {t.batch_size})")
    return micro, per_rank // micro


def classification_loss(logits: torch.Tensor | dict[str, torch.Tensor],
                        labels: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy, summed over heads (EPIC-Kitchens: verb + noun)."""
    if isinstance(logits, torch.Tensor):
        return F.cross_entropy(logits.float(), labels)
    return sum(F.cross_entropy(logits[h].float(), labels[h]) for h in logits)


def _on_main(ctx: DistContext, action) -> None:
    """Run `action` on rank 0 and raise its StadaptError on every rank, so no rank waits alone."""
    failure = None
    if ctx.is_main:
        try:
            action()
        except StadaptError as exc:
            failure = (type(exc), str(exc))
    failure = distributed.broadcast_object(ctx, failure)
    if failure is not None:
        raise failure[0](failure[1])


class Trainer:
    """One training run in one process (one rank); rank 0 logs and writes the run directory."""

    def __init__(self, recipe: Recipe, run_dir: Path, ctx: DistContext, checkpoint: Optional[dict[str, Any]],
                 resume_hint: str, console: Console) -> None:
        self.recipe, self.run_dir, self.ctx = recipe, run_dir, ctx
        self.resume_hint = resume_hint
        self.console = console
        t = recipe.train
        self.device = ctx.device
        configure_backends(self.device)
        self.micro, self.accumulation = batch_geometry(recipe, ctx.world_size)

        self.train_set = build_dataset(recipe, "train", train=True)
        self.val_set = build_dataset(recipe, "val", train=False)  # both check model.num_classes

        torch.manual_seed(t.seed)  # the same initial heads and adapters on every rank
        self.model = build_model(recipe)
        check_input_size(self.model, recipe)
        if recipe.model.init_from and checkpoint is None:
            for note in init_from(self.model, recipe.model.init_from):
                self.say(note)
        place_model(self.model, self.device, t.precision)  # on GPU: frozen weights in bf16/fp16
        self.net = self.model
        if ctx.distributed:
            self.net = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False, gradient_as_bucket_view=True)
        self.forward = maybe_compile(self.net, t.compile, self.device)  # CUDA only; eager on CPU
        self.optimizer = build_optimizer(self.model, t, self.device)
        self.scheduler = build_scheduler(self.optimizer, t)
        self.scaler = grad_scaler(self.device, t.precision)

        self.pos = Position()
        torch.manual_seed(t.seed + ctx.rank)  # dropout differs across ranks, as samples do
        np.random.seed(t.seed + ctx.rank)
        random.seed(t.seed + ctx.rank)
        if checkpoint is not None:
            self._restore(checkpoint)
        stream = StepStream(self.train_set.num_samples, self.micro, ctx, t.seed, self.pos.epoch,
                            self.pos.batches_in_epoch * self.micro * ctx.world_size)
        self.loader = train_loader(self.train_set, stream, t.workers, pin_memory=self.device.type == "cuda")
        self.stop = StopRequest()
        self.log: Optional[MetricsLog] = None
        if ctx.is_main:
            self.log = MetricsLog(run_dir, resume_step=self.pos.step if checkpoint is not None else None,
                                  tensorboard=t.tensorboard)
            write_train_data(run_dir, self.train_set.samples)

    # -- setup ---------------------------------------------------------------------------

    def say(self, message: str) -> None:
        if self.ctx.is_main:
            self.console.print(message, highlight=False)

    def _restore(self, state: dict[str, Any]) -> None:
        where = str(self.run_dir / CHECKPOINT_FILE)
        load_trainable(self.model, state["model"], where)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.pos = Position(**state["position"])
        same_layout = (state["world_size"], state["micro_batch"]) == (self.ctx.world_size, self.micro)
        if same_layout:
            set_rng_state(state["rng"][self.ctx.rank])
        else:
            self.say(f"[yellow]note:[/] the checkpoint ran {state['world_size']} process(es) × "
                     f"{state['micro_batch']} clips, this run {self.ctx.world_size} × {self.micro}: "
                     "training continues, but not on exactly the same data order and random draws")
        self.say(f"resumed from {where} at step {self.pos.step}")

    def describe(self) -> None:
        r, t = self.recipe, self.recipe.train
        trainable, total = count_parameters(self.model)
        precision = t.precision if self.device.type == "cuda" else "fp32"
        self.say(f"run directory  {self.run_dir}")
        self.say(f"model          {r.model.backbone} ({r.model.pretrained}), method {r.model.method}: "
                 f"{trainable:,} of {total:,} parameters train ({100 * trainable / total:.2f}%)")
        self.say(f"data           {self.train_set.num_samples} train / {self.val_set.num_samples} val videos "
                 f"from {r.data.root}, {r.data.num_frames} frames at {r.data.crop}²")
        self.say(f"batch          {t.batch_size} = {self.ctx.world_size} process(es) × {self.micro} clips × "
                 f"{self.accumulation} accumulation step(s); {t.steps} steps on {self.device.type} {precision}")

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> TrainResult:
        t = self.recipe.train
        self.describe()
        progress = TrainProgress(t.steps, self.pos.step, enabled=self.ctx.is_main, console=self.console)
        window = torch.zeros(len(STATS), dtype=torch.float64)
        window_start = time.monotonic()
        batches = DevicePrefetcher(iter(self.loader), self.device)
        signum = None
        try:
            with self.stop:
                while self.pos.step < t.steps:
                    stats = self._step(batches)
                    window += stats
                    stopping = stats[STATS.index("stop")] > 0
                    at_log = self.pos.step % t.log_every == 0 or self.pos.step == t.steps or stopping
                    entry = None
                    if at_log:
                        elapsed = max(time.monotonic() - window_start, 1e-9)
                        entry = self._log_entry(window, elapsed)
                        window.zero_()
                        window_start = time.monotonic()
                    progress.advance(self.pos.step, entry)
                    if self.pos.step % t.eval_every == 0 and self.pos.step < t.steps and not stopping:
                        self._evaluate(progress)
                        window_start = time.monotonic()
                    if stopping:
                        signum = self.stop.signum or signal.SIGTERM
                        break
                    if self.pos.step % t.save_every == 0 and self.pos.step < t.steps:
                        self.save()
        finally:
            progress.close()
            batches.close()  # the workers' CPUs and shared memory go to the evaluation that follows
        if signum is not None:
            return self._interrupted(signum)
        return self._finish()

    def _step(self, batches: DevicePrefetcher) -> torch.Tensor:
        """One optimizer step over `accumulation` micro-batches; returns the all-reduced stats."""
        self.net.train()
        stats = torch.zeros(len(STATS), dtype=torch.float64, device=self.device)
        for i in range(self.accumulation):
            batch = next(batches)
            self._advance_position(int(batch["epoch"][0]))
            clips, labels = batch["clip"], batch["label"]
            x = normalize(clips, self.model.image_mean, self.model.image_std)
            last = i == self.accumulation - 1
            sync = contextlib.nullcontext() if last or not self.ctx.distributed else self.net.no_sync()
            with sync:
                with autocast(self.device, self.recipe.train.precision):
                    logits = self.forward(x)
                loss = classification_loss(logits, labels)
                scaled = loss / self.accumulation
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            batches.prefetch()  # the next micro-batch's copy overlaps this one's work
            n = clips.shape[0]
            loss = loss.detach()
            stats[0] += torch.nan_to_num(loss.double(), nan=0.0, posinf=0.0, neginf=0.0) * n
            with torch.no_grad():
                stats[1] += batch_correct(logits, labels)
            stats[2] += n
            stats[3] += batch["skipped"].sum().item()
            stats[4] += (~torch.isfinite(loss)).double()
        stats[5] = float(self.stop.requested)
        stats = distributed.all_reduce_sum(self.ctx, stats)
        self._update(stats)
        return stats

    def _advance_position(self, epoch: int) -> None:
        if epoch != self.pos.epoch:
            self.pos.epoch, self.pos.batches_in_epoch, self.pos.skipped_in_epoch = epoch, 0, 0
        self.pos.batches_in_epoch += 1

    def _update(self, stats: torch.Tensor) -> None:
        t = self.recipe.train
        if stats[4] > 0:
            self.optimizer.zero_grad(set_to_none=True)
            self.pos.bad_steps += 1
            self.say(f"[yellow]step {self.pos.step + 1}: non-finite loss, update skipped "
                     f"({self.pos.bad_steps} in a row, at most {t.max_bad_steps})[/]")
            if self.log is not None:
                self.log.write({"step": self.pos.step + 1, "event": "nonfinite_loss"})
            if self.pos.bad_steps >= t.max_bad_steps:
                raise TrainingDiverged(
                    f"stopped at step {self.pos.step + 1}: {self.pos.bad_steps} non-finite losses in a row "
                    f"(train.max_bad_steps); lower train.lr or use precision bf16/fp32. The last checkpoint "
                    f"is in {self.run_dir / CHECKPOINT_FILE}")
        else:
            self.pos.bad_steps = 0
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():  # a skipped first update is not the misuse PyTorch warns about
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            self.scheduler.step()
        self.pos.step += 1
        self.pos.skipped_in_epoch += int(stats[3])
        limit = self.recipe.data.max_bad_fraction * self.train_set.num_samples
        if self.pos.skipped_in_epoch > limit:
            raise DataError(
                f"{self.pos.skipped_in_epoch} of the {self.train_set.num_samples} training videos could not be read "
                f"in epoch {self.pos.epoch}, more than data.max_bad_fraction = {self.recipe.data.max_bad_fraction}; "
                f"see {Path(self.recipe.data.root) / 'report.json'} and re-run `stadapt prepare`, or raise the limit")

    def _log_entry(self, window: torch.Tensor, elapsed: float) -> dict[str, Any]:
        clips = max(float(window[2]), 1.0)
        entry = {
            "step": self.pos.step,
            "epoch": self.pos.epoch,
            "loss": float(window[0]) / clips,
            "lr": self._lr_of_last_step(),
            "top1": float(window[1]) / clips,
            "clips_per_s": clips / elapsed,  # all processes together
            "world_size": self.ctx.world_size,
            "skipped": int(window[3]),
        }
        if self.log is not None:
            self.log.write(entry)
        return entry

    def _lr_of_last_step(self) -> float:
        """The base learning rate the last step used (the scheduler has moved on by one)."""
        return self.recipe.train.lr * self.scheduler.lr_lambdas[0](self.pos.step - 1)

    def _evaluate(self, progress: TrainProgress) -> None:
        report = evaluate_model(self.model, self.val_set, self.recipe, self.ctx, "val")
        entry = {"step": self.pos.step, "eval": "val", **{k: report[k] for k in ("top1", "top5", "mean_class_acc",
                                                                                 "num_videos")}}
        if self.log is not None:
            self.log.write(entry)
        progress.note(f"eval at step {self.pos.step}: val top-1 {100 * report['top1']:.1f}%  "
                      f"top-5 {100 * report['top5']:.1f}%  mean class {100 * report['mean_class_acc']:.1f}%  "
                      f"({report['num_videos']} videos)")

    # -- saving --------------------------------------------------------------------------

    def save(self) -> None:
        """Write checkpoints/last.pt (every rank contributes its RNG state; rank 0 writes)."""
        rngs = distributed.all_gather_object(self.ctx, rng_state())
        if not self.ctx.is_main:
            return
        save_checkpoint(self.run_dir / CHECKPOINT_FILE, {
            "step": self.pos.step,
            "model": {k: v.cpu() for k, v in trainable_state(self.model).items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "rng": rngs,
            "position": asdict(self.pos),
            "world_size": self.ctx.world_size,
            "micro_batch": self.micro,
            "recipe": self.recipe.to_yaml(),
        })

    def _interrupted(self, signum: int) -> TrainResult:
        self.save()
        if self.ctx.is_main:
            self.log.close()
            plot_curves(read_metrics(self.log.path), self.run_dir / "curves.png")
        self.say(f"[bold yellow]stopped by {StopRequest.name(signum)}[/] after step {self.pos.step}; checkpoint saved "
                 f"to {self.run_dir / CHECKPOINT_FILE}")
        self.say(f"resume with: {self.resume_hint}")
        return TrainResult(self.run_dir, self.pos.step, completed=False, signum=signum)

    def _finish(self) -> TrainResult:
        self.save()
        report = evaluate_model(self.model, self.val_set, self.recipe, self.ctx, "val", run_dir=self.run_dir)
        if self.ctx.is_main:
            self.log.write({"step": self.pos.step, "eval": "val", **{k: report[k] for k in (
                "top1", "top5", "mean_class_acc", "num_videos")}})
            self.log.close()
            save_adapter(self.model, self.run_dir / ADAPTER_FILE, self.recipe, self.train_set.class_names)
            plot_curves(read_metrics(self.log.path), self.run_dir / "curves.png")
            self.say(f"[bold green]done[/]: {self.pos.step} steps; val top-1 {100 * report['top1']:.2f}%, "
                     f"top-5 {100 * report['top5']:.2f}% on {report['num_videos']} videos")
            self.say(f"wrote {self.run_dir}/: {ADAPTER_FILE}, eval-val.json, metrics.jsonl, curves.png, "
                     f"{CHECKPOINT_FILE}")
        distributed.barrier(self.ctx)
        return TrainResult(self.run_dir, self.pos.step, completed=True, report=report)


def train(recipe_arg: str, overrides: Sequence[str] = (), out: Optional[str] = None, resume: bool = False,
          console: Optional[Console] = None) -> TrainResult:
    """`stadapt train RECIPE [--set ...] [--out RUN_DIR] [--resume]`, in this process (one rank)."""
    console = console or Console()
    ctx = distributed.setup()
    lock: Optional[FileLock] = None
    try:
        recipe_path = resolve_recipe_path(recipe_arg)
        recipe = load_recipe(recipe_path, overrides)
        if recipe.train.tensorboard:
            require_tensorboard()
        run_dir = Path(out) if out else Path(distributed.broadcast_object(ctx, str(default_run_dir(recipe_path))))
        checkpoint_path = run_dir / CHECKPOINT_FILE
        resuming = resume and checkpoint_path.exists()

        def prepare_run_dir() -> None:
            nonlocal lock
            if checkpoint_path.exists() and not resume:
                raise StadaptError(f"{run_dir} already holds a run ({CHECKPOINT_FILE}); pass --resume to continue "
                                   "it, or choose another --out")
            lock = lock_run_dir(run_dir)
            if resuming:
                check_resumable(run_dir, recipe)
            elif resume:
                console.print(f"[yellow]note:[/] nothing to resume in {run_dir}; starting a new run")
            write_recipe(run_dir, recipe)
            point_latest(run_dir)

        _on_main(ctx, prepare_run_dir)
        checkpoint = load_checkpoint(checkpoint_path) if resuming else None
        hint = shlex.join(["stadapt", "train", recipe_arg, *[a for s in overrides for a in ("--set", s)],
                           "--out", str(run_dir), "--resume"])
        try:
            return Trainer(recipe, run_dir, ctx, checkpoint, hint, console).run()
        except RuntimeError as exc:
            if not distributed.peer_failure(ctx, exc):
                raise
            saved = run_dir / CHECKPOINT_FILE
            where = f"resume from {saved} with: {hint}" if saved.exists() else "no checkpoint was saved yet"
            raise distributed.PeerLostError(f"lost contact with another training process ({distributed.reason(exc)}); "
                                            f"it died or hangs, see its log; {where}") from None
    finally:
        if lock is not None:
            lock.release()
        distributed.teardown(ctx)
