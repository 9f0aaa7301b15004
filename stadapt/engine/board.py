"""TensorBoard events of a run (`train.tensorboard: true`): the lines of metrics.jsonl as scalars.

Training lines become `train/<metric>`, evaluations `<split>/<metric>`, at their step. A
resumed run drops the events logged after its checkpoint (`purge_step`), as metrics.jsonl does.
TensorBoard is an optional extra (`pip install 'stadapt[tensorboard]'`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from stadapt.errors import RecipeError

TRAIN_SCALARS = ("loss", "lr", "top1", "clips_per_s", "skipped")
EVAL_SCALARS = ("top1", "top5", "mean_class_acc")


def require_tensorboard() -> None:
    """Fail at start, before anything is written, when the recipe asks for TensorBoard it cannot have."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise RecipeError("train.tensorboard = true, but the tensorboard package is not installed "
                          "(pip install 'stadapt[tensorboard]', or set train.tensorboard=false)") from None


class TensorBoardSink:
    """Writes metric entries as scalars under `log_dir`."""

    def __init__(self, log_dir: Path, resume_step: Optional[int] = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir), purge_step=None if resume_step is None else resume_step + 1)

    def write(self, entry: dict[str, Any]) -> None:
        step = entry.get("step")
        if step is None or "event" in entry:
            return
        prefix, keys = (entry["eval"], EVAL_SCALARS) if "eval" in entry else ("train", TRAIN_SCALARS)
        for key in keys:
            if isinstance(entry.get(key), (int, float)):
                self.writer.add_scalar(f"{prefix}/{key}", entry[key], step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
