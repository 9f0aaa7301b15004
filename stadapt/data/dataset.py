"""The video dataset the trainer and evaluator iterate: samples → uint8 clips and labels.

Randomness comes only from np.random.default_rng([seed, epoch, index]), so an item is a pure
function of (seed, epoch, index) whatever worker loads it, and a resumed run sees exactly the
clips it would have seen. An unreadable video in training is replaced by another sample
(chosen by the same rng) so batches stay full; `skipped` tells the trainer how many were
replaced so it can enforce data.max_bad_fraction. In testing the item says ok=False instead.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from stadapt.data.decode import VideoReadError, count_frames, read_frames
from stadapt.data.manifest import PreparedDataset, Sample
from stadapt.data.sampling import clip_indices
from stadapt.data.store import FrameStore
from stadapt.data.transforms import EvalTransform, Frames, TrainTransform
from stadapt.errors import DataError
from stadapt.recipe import DataConfig, Recipe, head_sizes

log = logging.getLogger("stadapt.data")
MAX_REPLACEMENTS = 20  # unreadable videos in a row before loading gives up
_warned: set[str] = set()  # files already warned about in this process


class VideoDataset(Dataset):
    """Items: {"clip", "label", "index", "ok", "skipped"}.

    clip is uint8 3×T×S×S in training and V×3×T×S×S in testing (V = temporal × spatial views,
    temporal-major); label is an int for the single head `label`, else {head: int}; index is
    the sample actually returned. Call `set_epoch` before each epoch; DataLoader workers hold a
    copy of the dataset, so do not keep workers alive (persistent_workers) across epochs.
    """

    def __init__(self, samples: list[Sample], class_names: dict[str, list[str]], data: DataConfig,
                 train: bool, seed: int = 0, store: Optional[FrameStore] = None):
        if not samples:
            raise DataError("the dataset has no samples")
        self.samples = samples
        self.class_names = class_names
        self.data = data
        self.train = train
        self.seed = seed
        self.store = store
        self.epoch = 0
        self.transform = TrainTransform(data) if train else None
        self.test_transform = None if train else EvalTransform(data)

    @property
    def num_samples(self) -> int:
        return len(self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.train:
            return self._train_item(index)
        return self._test_item(index)

    def _train_item(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        current = index
        for skipped in range(MAX_REPLACEMENTS + 1):
            sample = self.samples[current]
            try:
                frames = self._read(sample, lambda n, sample=sample, rng=rng: clip_indices(
                    self.data, n, rng, 1, sample.start_frame, sample.stop_frame)[0])
            except VideoReadError as exc:
                _warn_once(sample.path, exc)
                rng = np.random.default_rng([self.seed, self.epoch, index, skipped + 1])
                current = int(rng.integers(len(self.samples)))
                continue
            return self._item(current, self.transform(frames, rng), True, skipped)
        raise DataError(f"{MAX_REPLACEMENTS + 1} unreadable videos in a row while loading sample {index} "
                        f"(the last: {self.samples[current].path}); check the data set")

    def test_frames(self, sample: Sample) -> Callable[[int], np.ndarray]:
        """pick(number of frames) → the frames of a test item, its temporal views one after the other."""
        d = self.data
        return lambda n: clip_indices(d, n, None, d.test_views.temporal, sample.start_frame,
                                      sample.stop_frame).reshape(-1)

    def _test_item(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        d = self.data
        views = d.test_views.temporal * d.test_views.spatial
        try:
            frames = self._read(sample, self.test_frames(sample))
        except VideoReadError as exc:
            _warn_once(sample.path, exc)
            clip = torch.zeros((views, 3, d.num_frames, d.crop, d.crop), dtype=torch.uint8)
            return self._item(index, clip, False, 0)
        t = d.num_frames
        clip = torch.cat([self.test_transform(frames[k * t:(k + 1) * t]) for k in range(d.test_views.temporal)])
        return self._item(index, clip, True, 0)

    def _read(self, sample: Sample, pick: Callable[[int], np.ndarray]) -> Frames:
        """Frames chosen by pick(number of frames), each 3×H×W uint8, from the store or the video."""
        if self.store is not None:
            with self.store.open(sample.path) as entry:
                return entry.read(pick(entry.num_frames))
        n = sample.num_frames if sample.num_frames else count_frames(sample.path)
        return torch.from_numpy(read_frames(sample.path, pick(n))).permute(0, 3, 1, 2)

    def _item(self, index: int, clip: torch.Tensor, ok: bool, skipped: int) -> dict[str, Any]:
        labels = self.samples[index].labels
        return {"clip": clip, "label": {h: labels[h] for h in self.class_names}, "index": index, "ok": ok,
                "skipped": skipped}


def _warn_once(path: Path, exc: Exception) -> None:
    if str(path) not in _warned:
        _warned.add(str(path))
        log.warning("skipping unreadable video: %s", exc)


def stratified_subset(samples: list[Sample], fraction: float, seed: int) -> list[Sample]:
    """`fraction` of each class (at least one video), in manifest order.

    Each class's videos are ranked once by a permutation seeded with (seed, class), and the
    first fraction × n (rounded half up) are taken, so every method trained with the same seed sees the
    same subset, and the subset of a smaller fraction lies inside that of a larger one.
    """
    if fraction >= 1.0:
        return samples
    by_class: dict[int, list[int]] = {}
    for position, sample in enumerate(samples):
        by_class.setdefault(sample.labels["label"], []).append(position)
    chosen: set[int] = set()
    for label, positions in by_class.items():
        order = np.random.default_rng([seed, label]).permutation(len(positions))
        keep = max(1, math.floor(fraction * len(positions) + 0.5))
        chosen.update(positions[i] for i in order[:keep])
    return [sample for position, sample in enumerate(samples) if position in chosen]


def build_dataset(recipe: Recipe, split: str, train: bool) -> VideoDataset:
    """The dataset of `split` (train, val) of the prepared directory data.root, per the recipe."""
    d = recipe.data
    prepared = PreparedDataset.open(d.root)
    heads = head_sizes(recipe.model)
    class_names = {head: prepared.classes(head) for head in heads}
    for head, size in heads.items():
        if len(class_names[head]) != size:
            key = "model.num_classes" if head == "label" else f"model.num_classes.{head}"
            raise DataError(f"{key} = {size}, but {prepared.root} lists {len(class_names[head])} classes "
                            f"for {head!r} (set {key}={len(class_names[head])})")
    samples = prepared.samples(split, heads)
    if not samples:
        raise DataError(f"{prepared.root / (split + '.csv')}: no samples")
    if split == "train":
        samples = stratified_subset(samples, d.train_fraction, recipe.train.seed)
    store = FrameStore(prepared.root) if d.source == "prepared" else None
    return VideoDataset(samples, class_names, d, train, seed=recipe.train.seed, store=store)
