"""Shared fixtures: tiny real videos, and tiny synthetic prepared data sets written the way
`stadapt prepare` does."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

import stadapt.data  # noqa: F401  (loads PyAV's FFmpeg first)
from stadapt.data.encode import write_video
from stadapt.data.manifest import Sample, write_classes, write_manifest, write_report
from stadapt.data.store import write_store
from stadapt.data.synthetic import SYNTHETIC_CLASSES, generate_synthetic

FRAMES, SIZE = 6, 32
logging.getLogger().setLevel(logging.ERROR)  # open_clip warns about random weights at WARNING


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def encoded(tmp_path_factory) -> dict[str, bytes]:
    """Bytes of one 6-frame 32×32 video per container suffix."""
    folder = tmp_path_factory.mktemp("encoded")
    # Noise, so that the files are large enough for a cut to land in the frame data.
    noise = np.random.default_rng(0).integers(0, 256, (FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    return {suffix: write_video(folder / f"v{suffix}", noise).read_bytes()
            for suffix in (".mp4", ".webm", ".avi", ".mkv")}


@pytest.fixture
def make_video(encoded) -> Callable[..., Path]:
    """make_video(path, kind="ok"|"corrupt"|"empty"|"truncated") writes a file of that kind."""

    def make(path: Path, kind: str = "ok") -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = encoded.get(path.suffix.lower(), encoded[".mp4"])
        if kind == "corrupt":
            data = np.random.default_rng(len(str(path))).integers(0, 256, 4000, dtype=np.uint8).tobytes()
        elif kind == "empty":
            data = b""
        elif kind == "truncated":
            data = data[: len(data) // 2]
        path.write_bytes(data)
        return path

    return make


def make_prepared(root: Path, classes: int = 4, videos_per_class: int = 4, frames: int = 32,
                  size: tuple[int, int] = (80, 64), decode: bool = True) -> Path:
    """A prepared directory over synthetic videos: every fourth video of a class is validation."""
    videos_dir = root / "videos"
    videos = generate_synthetic(videos_dir, classes=classes, videos_per_class=videos_per_class,
                                frames=frames, size=size)
    names = SYNTHETIC_CLASSES[:classes]
    rows = {"train": [], "val": []}
    for i, (path, name) in enumerate(videos):
        split = "val" if i % 4 == 3 else "train"
        rows[split].append({"path": path.relative_to(videos_dir).as_posix(), "label": names.index(name),
                            "num_frames": frames})
    prepared = root / "prepared"
    write_classes(prepared, names)
    for split, split_rows in rows.items():
        write_manifest(prepared / f"{split}.csv", split_rows, ["path", "label", "num_frames"])
    write_report(prepared, {"dataset": "synthetic", "videos_root": str(videos_dir)})
    if decode:
        samples = [Sample(videos_dir / r["path"], {"label": r["label"]})
                   for split_rows in rows.values() for r in split_rows]
        write_store(prepared, samples, short_side=64)
    return prepared


@pytest.fixture(scope="session")
def prepared_dir(tmp_path_factory) -> Path:
    return make_prepared(tmp_path_factory.mktemp("synthetic"))
