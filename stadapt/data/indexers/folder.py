"""Your own videos in class folders, `ROOT/{class}/{video}`, split by a seeded draw.

No annotation file says which videos are for validation, so each class gives the same
fraction of its videos (`--val-fraction`) to `val`, drawn with `--seed`: the split is
stratified (every class is in both splits once it has two videos) and reproducible.
Each class draws from its own generator, so adding a class leaves the others' split alone.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from stadapt.data import is_video_file
from stadapt.data.indexers.base import Candidate, Index, IndexOptions
from stadapt.errors import DataError


def list_videos(root: Path) -> list[tuple[Path, str]]:
    """(path relative to ROOT, class) for every video file under ROOT/{class}/, at any depth."""
    found = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(class_dir.rglob("*")):
            if is_video_file(path):
                found.append((path.relative_to(root), class_dir.name))
    return found


def val_count(n: int, fraction: float) -> int:
    """How many of a class's `n` videos go to val: the rounded share, but at least one
    (when the class has two videos and fraction > 0) and never all of them."""
    if n < 2 or fraction <= 0:
        return 0
    return min(max(int(n * fraction + 0.5), 1), n - 1)


def index_files(videos_root: Path, files: list[tuple[Path, str]], options: IndexOptions) -> Index:
    """Split (video, class name) pairs into train and val, stratified by class and seeded."""
    if not 0 <= options.val_fraction < 1:
        raise DataError(f"--val-fraction must be at least 0 and below 1, got {options.val_fraction}")
    classes = sorted({name for _, name in files})
    by_class: dict[str, list[Path]] = {name: [] for name in classes}
    for path, name in files:
        by_class[name].append(path)
    result = Index(videos_root, {"label": classes}, {"train": [], "val": []})
    for label, name in enumerate(classes):
        paths = sorted(by_class[name])
        random.Random(f"{options.seed}/{name}").shuffle(paths)
        cut = val_count(len(paths), options.val_fraction)
        result.splits["val"] += [Candidate(p, {"label": label}) for p in sorted(paths[:cut])]
        result.splits["train"] += [Candidate(p, {"label": label}) for p in sorted(paths[cut:])]
    return result


def index(root: Path, options: IndexOptions) -> Index:
    files, unnamed = [], []
    for path, name in list_videos(root):
        (files if utf8_name(str(path)) else unnamed).append((path, name))
    if not files and not unnamed:
        raise DataError(f"{root}: no videos in class folders (expected ROOT/CLASS/VIDEO with a suffix like .mp4)")
    result = index_files(root, files, options)
    for path, _ in unnamed:  # listed under train: no split was drawn for them
        result.skip("train", printable(path), "the file or folder name is not UTF-8 (manifests are UTF-8); rename it")
    return result


def utf8_name(text: str) -> bool:
    """False for a name read from disk that holds bytes invalid in UTF-8 (Python keeps them as surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(path: Path) -> str:
    """A name from disk with its non-UTF-8 bytes written as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")
