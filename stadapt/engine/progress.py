"""What a user watches while training: a rich progress bar on a terminal, plain lines otherwise.

Logs, CI and `sbatch` output files are not terminals; there a line per log step is
readable where a redrawn bar would be noise.
"""

from __future__ import annotations

import sys
import time
from typing import Optional

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class TrainProgress:
    """Step counter with loss, top-1, learning rate, clips/s and ETA (rank 0 only)."""

    def __init__(self, total_steps: int, start_step: int, enabled: bool = True,
                 console: Optional[Console] = None) -> None:
        self.total = total_steps
        self.enabled = enabled
        self.console = console or Console()
        self.live = enabled and self.console.is_terminal
        self._bar: Optional[Progress] = None
        self._task = None
        # The ETA's basis: the start, then the end of the first logged window, so that the
        # minute torch.compile takes before the first step does not inflate it for the rest.
        self._basis = (time.monotonic(), start_step)
        self._first_window_done = False
        if self.live:
            self._bar = Progress(
                TextColumn("[bold]step {task.completed}/{task.total}"), BarColumn(),
                TextColumn("{task.fields[stats]}"), console=self.console, transient=False)
            self._task = self._bar.add_task("train", total=total_steps, completed=start_step, stats="")
            self._bar.start()

    def eta(self, step: int, now: Optional[float] = None) -> float:
        """Seconds left at the average pace since the basis (evaluations included)."""
        started, start_step = self._basis
        done = step - start_step
        if done <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        return (now - started) / done * (self.total - step)

    def _windowed(self, step: int, now: float) -> None:
        """After the first logged window, measure the pace from there on."""
        if not self._first_window_done:
            self._first_window_done = True
            self._basis = (now, step)

    def advance(self, step: int, stats: Optional[dict[str, float]] = None) -> None:
        """Move to `step`; with `stats` (a log step) also show loss, top-1, lr and speed."""
        if not self.enabled:
            return
        text = None
        if stats is not None:
            now = time.monotonic()
            text = (f"loss {stats['loss']:.4f}  top-1 {100 * stats['top1']:5.1f}%  lr {stats['lr']:.2e}  "
                    f"{stats['clips_per_s']:.1f} clips/s  ETA {format_duration(self.eta(step, now))}")
            self._windowed(step, now)
        if self._bar is not None:
            fields = {"stats": text} if text is not None else {}
            self._bar.update(self._task, completed=step, **fields)
        elif text is not None:
            print(f"step {step}/{self.total}  {text}", flush=True)

    def note(self, message: str) -> None:
        """A line that stays (an evaluation, a skipped step), printed above a live bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.console.print(message, highlight=False)
        else:
            print(message, flush=True)
            sys.stdout.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


class CountProgress:
    """Videos done of a known total, videos/s and ETA: a rich bar on a terminal, else a line every
    `every_s` seconds (on stderr, so that stdout stays the results')."""

    def __init__(self, console: Console, every_s: float = 10.0, noun: str = "videos") -> None:
        self.console = console
        self.every_s = every_s
        self.noun = noun
        self._bar: Optional[Progress] = None
        self.total = self.done = 0
        self._started = self._printed = 0.0

    def start(self, total: int) -> None:
        self.total, self.done = total, 0
        self._started = self._printed = time.monotonic()
        if self.console.is_terminal:
            self._bar = Progress(TextColumn(f"[bold]{{task.completed}}/{{task.total}} {self.noun}"), BarColumn(),
                                 TextColumn("{task.fields[rate]}"), console=self.console, transient=False)
            self._task = self._bar.add_task(self.noun, total=total, rate="")
            self._bar.start()

    def status(self, now: Optional[float] = None) -> str:
        now = time.monotonic() if now is None else now
        rate = self.done / max(now - self._started, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        return f"{rate:.2f} {self.noun}/s  ETA {format_duration(eta)}"

    def advance(self) -> None:
        self.done += 1
        now = time.monotonic()
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, rate=self.status(now))
        elif now - self._printed >= self.every_s or self.done == self.total:
            self._printed = now
            self.console.print(f"{self.done}/{self.total} {self.noun}  {self.status(now)}", highlight=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
