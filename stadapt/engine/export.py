"""`stadapt export`: a trained run as one ONNX or TorchScript file, plus a JSON sidecar.

The file holds the whole classifier (frozen backbone, adapters, heads) in fp32 with its
input `video`: float32 N×3×T×H×W, normalised as `stadapt.load_model(RUN)(x)` expects (the
sidecar gives mean and std), and a dynamic batch. Its output is the logits, or one output
per head (EPIC-Kitchens: verb, noun), named as the heads. The sidecar (FILE.json) holds
what a deployment needs to feed it: class names, mean/std, frames, crop, sampling and the
backbone's identity. Both model paths export: the fast path's time-shifted sums and the
reference path's Conv3d are standard operators.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

import stadapt
from stadapt.errors import StadaptError
from stadapt.fileio import atomic_path, atomic_write_text
from stadapt.model.artifact import ADAPTER_FILE
from stadapt.model.video_vit import VideoClassifier

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
ONNX_OPSET = 17
INPUT_NAME = "video"


class ExportError(StadaptError):
    """An export that cannot be made as asked (format, output path)."""


class ExportedClassifier(nn.Module):
    """The classifier with a fixed output structure: the logits of one head, or a tuple of them in head order."""

    def __init__(self, model: VideoClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, video: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        logits = tuple(self.model.logits(video).values())
        return logits[0] if len(logits) == 1 else logits


@dataclass
class Exported:
    path: Path
    sidecar: Path
    metadata: dict[str, Any]


def default_path(run_dir: Path, fmt: str) -> Path:
    return Path(run_dir) / f"model{FORMATS[fmt]}"


def output_names(model: VideoClassifier) -> list[str]:
    heads = list(model.class_names)
    return ["logits"] if heads == ["label"] else heads


def example_input(model: VideoClassifier, batch: int = 1) -> torch.Tensor:
    d = model.recipe.data
    return torch.randn(batch, 3, d.num_frames, d.crop, d.crop, generator=torch.Generator().manual_seed(0))


def export_run(run_dir: Path, fmt: str, out: Optional[Path] = None) -> Exported:
    """Export the run's model as `fmt` to `out` (default RUN/model.onnx or RUN/model.torchscript.pt)."""
    from stadapt.model.artifact import load_model

    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401
        except ImportError:
            raise ExportError("--format onnx needs the onnx package (pip install 'stadapt[export]')") from None
    out = Path(out) if out is not None else default_path(run_dir, fmt)
    sidecar = sidecar_path(out)
    _check_writable(out)
    model = load_model(run_dir).eval()  # the path (fast or reference) is the recipe's model.impl
    metadata = sidecar_metadata(model, run_dir, fmt, out)
    with atomic_path(out) as tmp:
        EXPORTERS[fmt](model, tmp)
    atomic_write_text(sidecar, json.dumps(metadata, indent=2) + "\n")
    return Exported(out, sidecar, metadata)


def sidecar_path(out: Path) -> Path:
    return out.with_name(out.name + ".json")


def _check_writable(out: Path) -> None:
    """Fail before the (long) export when the file cannot be written where asked."""
    if out.is_dir():
        raise ExportError(f"--out {out}: is a directory; name the file to write (e.g. {out / 'model.onnx'})")
    folder = out.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".probe", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ExportError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None


def sidecar_metadata(model: VideoClassifier, run_dir: Path, fmt: str, out: Path) -> dict[str, Any]:
    """What a deployment needs beside the file: how to make the input, what the outputs mean."""
    r = model.recipe
    d = r.data
    adapter = Path(run_dir) / ADAPTER_FILE if Path(run_dir).is_dir() else Path(run_dir)
    heads = list(model.class_names)
    return {
        "format": fmt,
        "file": out.name,
        "stadapt_version": stadapt.__version__,
        "source": {"run": str(run_dir), "adapter_sha256": hashlib.sha256(adapter.read_bytes()).hexdigest()},
        "input": {"name": INPUT_NAME, "dtype": "float32", "shape": ["N", 3, d.num_frames, d.crop, d.crop],
                  "layout": "N×C×T×H×W, RGB in [0, 1], then (x - mean) / std per channel"},
        "outputs": [{"name": name, "head": head, "num_classes": len(model.class_names[head])}
                    for name, head in zip(output_names(model), heads)],
        "class_names": model.class_names,
        "mean": list(model.image_mean),
        "std": list(model.image_std),
        "num_frames": d.num_frames,
        "sampling": d.sampling,
        "stride": d.stride if d.sampling == "dense" else None,
        "crop": d.crop,
        "test_resize": d.test_resize,
        "test_views": {"temporal": d.test_views.temporal, "spatial": d.test_views.spatial},
        "backbone": {"backbone": r.model.backbone, "pretrained": r.model.pretrained, **model.backbone_identity},
        "method": r.model.method,
        "impl": model.impl,
    }


def export_onnx(model: VideoClassifier, path: Path) -> None:
    names = output_names(model)
    wrapper = ExportedClassifier(model).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on shape arithmetic; the batch axis is declared dynamic
        torch.onnx.export(wrapper, (example_input(model),), str(path), dynamo=False, opset_version=ONNX_OPSET,
                          input_names=[INPUT_NAME], output_names=names,
                          dynamic_axes={INPUT_NAME: {0: "batch"}, **{n: {0: "batch"} for n in names}})


def export_torchscript(model: VideoClassifier, path: Path) -> None:
    wrapper = ExportedClassifier(model).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(wrapper, (example_input(model, batch=2),), check_trace=False)
    traced.save(str(path))


EXPORTERS = {"onnx": export_onnx, "torchscript": export_torchscript}
