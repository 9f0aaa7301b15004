"""Shared fixtures: tiny synthetic prepared data sets written the way `stadapt prepare` does."""

from __future__ import annotations

from pathlib import Path

import pytest

import stadapt.data  # noqa: F401  (PyAV's FFmpeg before decord's)
from stadapt.data.manifest import Sample, write_classes, write_manifest, write_report
from stadapt.data.synthetic import SYNTHETIC_CLASSES, generate_synthetic
from stadapt.data.store import write_store


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
        samples = [Sample(videos_dir / r["path"], {"label": r["label"]}) for split_rows in rows.values() for r in split_rows]
        write_store(prepared, samples, short_side=64)
    return prepared


@pytest.fixture(scope="session")
def prepared_dir(tmp_path_factory) -> Path:
    return make_prepared(tmp_path_factory.mktemp("synthetic"))
