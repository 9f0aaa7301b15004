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
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from torch.nn.parallel import DistributedDataParallel

from stadapt.data.dataset import build_dataset
from stadapt.engine import distributed
from stadapt.engine.board import require_tensorboard
from stadapt.engine.checkpoint import CHECKPOINT_FILE, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from stadapt.engine.distributed import DistContext
from stadapt.engine.evaluate import check_input_size, evaluate_model
from stadapt.engine.interrupt import StopRequest
from stadapt.engine.metrics import batch_correct
from stadapt.engine.paths import as_run, fused_adamw
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


class TrainingDiverged(StadaptError):
    """Too many non-finite losses in a row: the recipe (lr, precision) needs changing."""

    exit_code = 1


@dataclass
class StreamPosition:
    """Where the run is: the counters a checkpoint restores besides weights and RNG."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches this rank took from `epoch`
    skipped_in_epoch: int = 0  # unreadable videos replaced during `epoch`, all ranks
    bad_steps: int = 0  # non-finite losses in a row

    def took_batch(self, epoch: int) -> None:
        """Count a micro-batch of `epoch`; a new epoch starts its counters at zero."""
        if epoch != self.epoch:
            self.epoch, self.batches_in_epoch, self.skipped_in_epoch = epoch, 0, 0
        self.batches_in_epoch += 1


@dataclass
class StepStats:
    """What training steps saw, summed over micro-batches, then over ranks (`all_reduced`).

    Before the reduction the figures may be tensors on the device, so that adding them
    does not wait for the GPU; after it they are floats.
    """

    loss_sum: torch.Tensor | float = 0.0  # loss × clips; a non-finite loss counts 0
    correct: torch.Tensor | float = 0.0  # clips whose every head's top-1 is right
    clips: float = 0.0
    skipped: float = 0.0  # unreadable videos replaced by others
    nonfinite: torch.Tensor | float = 0.0  # micro-batches whose loss was NaN or infinite
    stop: float = 0.0  # ranks asked to stop by a signal

    def values(self) -> list[torch.Tensor | float]:
        return [getattr(self, f.name) for f in fields(self)]

    def __add__(self, other: StepStats) -> StepStats:
        return StepStats(*(a + b for a, b in zip(self.values(), other.values())))

    def all_reduced(self, ctx: DistContext) -> StepStats:
        values = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=ctx.device) for v in self.values()])
        return StepStats(*distributed.all_reduce_sum(ctx, values).tolist())


def micro_batch_stats(batch: dict[str, Any], logits: Any, loss: torch.Tensor) -> StepStats:
    clips = batch["clip"].shape[0]
    loss = loss.detach()
    with torch.no_grad():
        correct = batch_correct(logits, batch["label"])
    return StepStats(loss_sum=torch.nan_to_num(loss.double(), nan=0.0, posinf=0.0, neginf=0.0) * clips,
                     correct=correct, clips=float(clips), skipped=float(batch["skipped"].sum().item()),
                     nonfinite=(~torch.isfinite(loss)).double())


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


def classification_loss(logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy, summed over heads (EPIC-Kitchens: verb + noun)."""
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
        recipe = as_run(recipe)  # model.impl=reference trains with the published code's settings
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
        self.optimizer = build_optimizer(self.model, t, self.device, fused=fused_adamw(recipe))
        self.scheduler = build_scheduler(self.optimizer, t)
        self.scaler = grad_scaler(self.device, t.precision)

        self.pos = StreamPosition()
        torch.manual_seed(t.seed + ctx.rank)  # dropout differs across ranks, as samples do
        np.random.seed(t.seed + ctx.rank)
        random.seed(t.seed + ctx.rank)
        if checkpoint is not None:
            self._restore(checkpoint)
        stream = StepStream(self.train_set.num_samples, self.micro, ctx, t.seed, self.pos.epoch,
                            self.pos.batches_in_epoch * self.micro * ctx.world_size)
        self.loader = train_loader(self.train_set, stream, t.workers, pin_memory=self.device.type == "cuda")
        self.stop = StopRequest()
        self.resumed = checkpoint is not None
        self.log: Optional[MetricsLog] = None  # opened by run(): building a Trainer writes nothing

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
        self.pos = StreamPosition(**state["position"])
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
        if self.ctx.is_main:
            self.log = MetricsLog(self.run_dir, resume_step=self.pos.step if self.resumed else None,
                                  tensorboard=t.tensorboard)
            write_train_data(self.run_dir, self.train_set.samples)
        self.describe()
        progress = TrainProgress(t.steps, self.pos.step, enabled=self.ctx.is_main, console=self.console)
        window = StepStats()  # the steps since the last log line
        window_start = time.monotonic()
        batches = DevicePrefetcher(iter(self.loader), self.device)
        signum = None
        try:
            with self.stop:
                while self.pos.step < t.steps:
                    stats = self._step(batches)
                    window += stats
                    stopping = stats.stop > 0
                    at_log = self.pos.step % t.log_every == 0 or self.pos.step == t.steps or stopping
                    entry = None
                    if at_log:
                        elapsed = max(time.monotonic() - window_start, 1e-9)
                        entry = self._log_entry(window, elapsed)
                        window = StepStats()
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

    def _step(self, batches: DevicePrefetcher) -> StepStats:
        """One optimizer step over `accumulation` micro-batches; returns its stats summed over ranks."""
        self.net.train()
        stats = StepStats()
        for i in range(self.accumulation):
            batch = next(batches)
            self.pos.took_batch(int(batch["epoch"][0]))
            logits, loss = self._forward_backward(batch, last=i == self.accumulation - 1)
            batches.prefetch()  # the next micro-batch's copy overlaps this one's work
            stats += micro_batch_stats(batch, logits, loss)
        stats.stop = float(self.stop.requested)
        stats = stats.all_reduced(self.ctx)
        if stats.nonfinite:
            self._skip_update()
        else:
            self._update()
        with warnings.catch_warnings():  # a skipped first update is not the misuse PyTorch warns about
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            self.scheduler.step()
        self.pos.step += 1
        self.pos.skipped_in_epoch += int(stats.skipped)
        self._check_unreadable()
        return stats

    def _forward_backward(self, batch: dict[str, Any], last: bool) -> tuple[Any, torch.Tensor]:
        """Gradients of one micro-batch's share of the step's loss (DDP syncs them on the last)."""
        sync = contextlib.nullcontext() if last or not self.ctx.distributed else self.net.no_sync()
        with sync:
            with autocast(self.device, self.recipe.train.precision):
                logits = self.forward(batch["clip"])
            loss = classification_loss(logits, batch["label"])
            scaled = loss / self.accumulation
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        return logits, loss

    def _update(self) -> None:
        self.pos.bad_steps = 0
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _skip_update(self) -> None:
        """Drop a step whose loss was not finite; too many in a row end the run."""
        t = self.recipe.train
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

    def _check_unreadable(self) -> None:
        """Stop when more of the training set than data.max_bad_fraction could not be read this epoch."""
        limit = self.recipe.data.max_bad_fraction * self.train_set.num_samples
        if self.pos.skipped_in_epoch > limit:
            raise DataError(
                f"{self.pos.skipped_in_epoch} of the {self.train_set.num_samples} training videos could not be read "
                f"in epoch {self.pos.epoch}, more than data.max_bad_fraction = {self.recipe.data.max_bad_fraction}; "
                f"see {Path(self.recipe.data.root) / 'report.json'} and re-run `stadapt prepare`, or raise the limit")

    def _log_entry(self, window: StepStats, elapsed: float) -> dict[str, Any]:
        clips = max(window.clips, 1.0)
        entry = {
            "step": self.pos.step,
            "epoch": self.pos.epoch,
            "loss": window.loss_sum / clips,
            "lr": self._lr_of_last_step(),
            "top1": window.correct / clips,
            "clips_per_s": clips / elapsed,  # all processes together
            "world_size": self.ctx.world_size,
            "skipped": int(window.skipped),
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
    """`stadapt train RECIPE [--set ...] [--out RUN_DIR] [--resume]`, in this process (one rank).

    Everything that can make a start fail (the recipe, the run directory's state, the data,
    the model and its files, the checkpoint) is checked before the run directory is created,
    recipe.yaml written or runs/latest re-pointed: a failed start changes nothing on disk.
    """
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

        def check_run_dir() -> None:
            """Read-only, but for the lock of a directory that exists (its file goes with the lock)."""
            nonlocal lock
            if run_dir.exists() and not run_dir.is_dir():
                raise StadaptError(f"--out {run_dir} is a file, not a directory")
            if run_dir.is_dir():
                lock = lock_run_dir(run_dir)
            if checkpoint_path.exists() and not resume:
                raise StadaptError(f"{run_dir} already holds a run ({CHECKPOINT_FILE}); pass --resume to continue "
                                   "it, or choose another --out")
            if resuming:
                check_resumable(run_dir, recipe)

        def start_run_dir() -> None:
            nonlocal lock
            if lock is None:
                lock = lock_run_dir(run_dir)  # creates the directory
            if resume and not resuming:
                console.print(f"[yellow]note:[/] nothing to resume in {run_dir}; starting a new run")
            write_recipe(run_dir, recipe)
            point_latest(run_dir)

        _on_main(ctx, check_run_dir)
        checkpoint = load_checkpoint(checkpoint_path) if resuming else None
        hint = shlex.join(["stadapt", "train", recipe_arg, *[a for s in overrides for a in ("--set", s)],
                           "--out", str(run_dir), "--resume"])
        try:
            trainer = Trainer(recipe, run_dir, ctx, checkpoint, hint, console)
            _on_main(ctx, start_run_dir)
            return trainer.run()
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
